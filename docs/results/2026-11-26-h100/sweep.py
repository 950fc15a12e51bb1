"""Fused mix+noise+softmax vs the matmul path, one ViT-B/16 block's logits (H=12, B=64, N=197), bf16; fwd and fwd+bwd."""
import sys, os, time
sys.path.insert(0, os.getcwd())
import neatt, torch
from neatt.models import mix_softmax_triton as mst
from neatt.models.attention import HeadMix
H, B, N = 12, int(sys.argv[1]) if len(sys.argv) > 1 else 64, 197
hm = HeadMix(H).cuda()
w = [hm.fc1.weight, hm.fc1.bias, hm.fc2.weight, hm.fc2.bias, hm.fc3.weight, hm.fc3.bias]
s0 = torch.randn(H, B, N, N, device='cuda', dtype=torch.bfloat16) * 3
gz, ga = torch.randn(2, H, B, N, N, device='cuda', dtype=torch.bfloat16)
SIGMA = 1.0
def fused():
    s = s0.detach().requires_grad_()
    z, a = mst.mix_noise_softmax(s, *w, SIGMA, 0.2, torch.bfloat16)
    return s, z, a
def matmul():
    s = s0.detach().requires_grad_()
    with torch.autocast('cuda', dtype=torch.bfloat16):
        z = hm(s)
        z = z.add_(torch.randn_like(z))
        a = torch.softmax(z, -1, dtype=torch.float32).to(torch.bfloat16)
    return s, z, a
def timeit(fn, bwd, n=20):
    for _ in range(3):
        s, z, a = fn()
        if bwd: torch.autograd.backward([z, a], [gz, ga])
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(n):
        s, z, a = fn()
        if bwd: torch.autograd.backward([z, a], [gz, ga])
    torch.cuda.synchronize(); return (time.perf_counter() - t) / n * 1e3
print(f'B={B}: one block of logits, {s0.numel()/1e6:.1f} M values; ms per call (median-free mean of 20)')
print(f'matmul path: fwd {timeit(matmul, False):.3f}, fwd+bwd {timeit(matmul, True):.3f}')
for bjf, bjb, wb, pps, sigma in [(32, 64, 4, 4, 1.0), (32, 64, 4, 4, 0.0), (64, 64, 4, 4, 1.0), (32, 128, 8, 4, 1.0), (32, 64, 4, 2, 1.0)]:
    mst._BLOCK_J, mst._NUM_WARPS, mst._PROGRAMS_PER_SM, SIGMA = (bjf, bjb), (4, wb), pps, sigma
    try:
        print(f'fused BLOCK_J fwd/bwd {bjf}/{bjb}, bwd warps {wb}, programs/SM {pps}, sigma {sigma}: '
              f'fwd {timeit(fused, False):.3f}, fwd+bwd {timeit(fused, True):.3f}')
    except Exception as e:
        print('failed:', repr(e)[:300])
