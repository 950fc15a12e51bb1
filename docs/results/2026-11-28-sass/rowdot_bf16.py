"""Why the fused backward keeps its own row-sum sweep: the softmax backward's row term sum_j p_ij g_ij (p = attn,
g = d attn) computed as d out_i . out_i (flash attention's identity, out = p @ v) is exact only for the g and out
that the identity assumes. On the fused path g = d out @ v^T comes from a bf16 cuBLAS matmul (rounded to bf16)
and out is bf16 too. Emulated here in float64 with bf16 rounding, at the shapes of the bf16 GPU test
(tests/test_mix_softmax_triton.py: H = 12, B = 2, N = 197, d = 8): the max error of dz = p (g - rowdot) against
float64, relative to the largest |dz|.

    python docs/results/2026-11-28-sass/rowdot_bf16.py
"""
import torch

torch.manual_seed(0)
H, B, N, d = 12, 2, 197, 8


def bf(t):
    return t.bfloat16().double()


z = 3 * torch.randn(H, B, N, N, dtype=torch.float64)
v = bf(torch.randn(H, B, N, d, dtype=torch.float64))
go = bf(torch.randn(H, B, N, d, dtype=torch.float64))  # d out
p = torch.softmax(z, -1)
g = go @ v.transpose(-1, -2)
dz_ref = p * (g - (p * g).sum(-1, keepdim=True))


def err(p_used, g_used, rowdot):
    dz = p_used * (g_used - rowdot)
    return float((dz - dz_ref).abs().max() / dz_ref.abs().max())


p32, p16 = p.float().double(), bf(p)
g16, g32 = bf(go @ v.transpose(-1, -2)), (go @ v.transpose(-1, -2)).float().double()
out16, out32 = bf(p16 @ v), (p16 @ v).float().double()
rows = {
    "autocast's matmul path (float32 softmax and its backward, bf16 d attn)": err(p32, g16, (p32 * g16).sum(-1, True)),
    'fused kernel, its own sweep (bf16 attn and d attn)': err(p16, g16, (p16 * g16).sum(-1, True)),
    'fused, d out . out, bf16 d attn and out (tried, reverted)': err(p16, g16, (go * out16).sum(-1, True)),
    'fused, d out . out, float32 d attn, bf16 out': err(p16, g32, (go * out16).sum(-1, True)),
    'fused, d out . out, float32 d attn and out': err(p16, g32, (go * out32).sum(-1, True)),
}
for name, e in rows.items():
    print(f'{e:.4f}  {name}')
