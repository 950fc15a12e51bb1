"""The numerics of the fused path's softmax(z) @ v in bf16 (neatt/models/mix_softmax_triton.py, _attend_fwd and
_attend_bwd), emulated in float64 with bf16 and float32 rounding where the kernels round, against autocast's
matmul path on the same inputs: the largest error of o, dv and dz (the gradient of the logits through the
softmax, before the head MLP's backward) against float64, relative to the largest value of each. Shapes of the
bf16 GPU test (tests/test_mix_softmax_triton.py: H = 12, B = 2, N = 197), head dims 64 (the test's) and 8.
The test allows each tensor twice the matmul path's error plus 0.001.

    python docs/results/2026-11-28-attend/attend_bf16.py
"""
import torch


def bf(t):
    return t.bfloat16().double()


def f32(t):
    return t.float().double()


def err(ours, ref):
    return float((ours - ref).abs().max() / ref.abs().max())


def main():
    H, B, N = 12, 2, 197
    for d in (64, 8):
        torch.manual_seed(0)
        z = bf(3 * torch.randn(H, B, N, N, dtype=torch.float64))  # stored bf16 logits
        v = bf(torch.randn(H, B, N, d, dtype=torch.float64))
        go = bf(torch.randn(H, B, N, d, dtype=torch.float64))  # d o, bf16 as the dots take it

        p = torch.softmax(z, -1)  # float64 reference
        o_ref = p @ v
        g = go @ v.transpose(-1, -2)
        dz_ref = p * (g - (p * g).sum(-1, keepdim=True))
        dv_ref = p.transpose(-1, -2) @ go

        # autocast: float32 softmax, bf16 attn for the matmuls, bf16 outputs and gradients
        p32 = f32(p)
        p16 = bf(p32)
        g16 = bf(go @ v.transpose(-1, -2))
        matmul = {'o': bf(p16 @ v), 'dv': bf(p16.transpose(-1, -2) @ go),
                  'dz': bf(f32(p32 * (g16 - (p32 * g16).sum(-1, keepdim=True))))}

        # fused: p = exp(z - m) in float32, rounded to bf16 for the dot, o = acc / l in float32; the backward
        # recomputes p in float32 from lse, dp in float32, delta = d o . o with float32 o; dz rounded to bf16
        # (the tile maximum m is the row's here: the online rescaling is exact up to float32 rounding)
        m = z.amax(-1, keepdim=True)
        e = f32(torch.exp(z - m))
        l = f32(e.sum(-1, keepdim=True))
        o = f32((bf(e) @ v) / l)
        p_bwd = f32(torch.exp(z - f32(m + torch.log(l))))
        dp = f32(go @ v.transpose(-1, -2))
        delta = f32((go * o).sum(-1, keepdim=True))
        fused = {'o': o, 'dv': f32(bf(p_bwd).transpose(-1, -2) @ go), 'dz': bf(f32(p_bwd * (dp - delta)))}

        refs = {'o': o_ref, 'dv': dv_ref, 'dz': dz_ref}
        print(f'head dim {d}: error relative to the largest value (fused / autocast matmul path / test bound)')
        for k, ref in refs.items():
            mm = err(matmul[k], ref)
            print(f'  {k:3s} {err(fused[k], ref):.4f} / {mm:.4f} / {2 * mm + 1e-3:.4f}')


if __name__ == '__main__':
    main()
