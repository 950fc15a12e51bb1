"""Sweep the fused kernels' launch settings on one ViT-B/16 block of logits (H=12, B=64, N=197, bf16), then run
tools/bench_model.py with the best ones (same process)."""
import sys, os, time, json
sys.path.insert(0, os.getcwd()); sys.path.insert(0, os.path.join(os.getcwd(), 'tools'))
import neatt, torch
from neatt.models import mix_softmax_triton as mst
from neatt.models.attention import HeadMix
OUT = os.environ['OUT']
H, B, N = 12, 64, 197
hm = HeadMix(H).cuda()
w = [hm.fc1.weight, hm.fc1.bias, hm.fc2.weight, hm.fc2.bias, hm.fc3.weight, hm.fc3.bias]
s0 = torch.randn(H, B, N, N, device='cuda', dtype=torch.bfloat16) * 3
gz, ga = torch.randn(2, H, B, N, N, device='cuda', dtype=torch.bfloat16)
SIGMA = [1.0]
def fused():
    s = s0.detach().requires_grad_()
    z, a = mst.mix_noise_softmax(s, *w, SIGMA[0], 0.2, torch.bfloat16)
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
    torch.cuda.synchronize(); ts = []
    for _ in range(n):
        t = time.perf_counter()
        s, z, a = fn()
        if bwd: torch.autograd.backward([z, a], [gz, ga])
        torch.cuda.synchronize(); ts.append((time.perf_counter() - t) * 1e3)
    return sorted(ts)[n // 2]
res = {'matmul_fwd': timeit(matmul, False), 'matmul_fwd_bwd': timeit(matmul, True)}
print(f"one block of logits, B={B}: median ms; matmul path fwd {res['matmul_fwd']:.3f}, fwd+bwd {res['matmul_fwd_bwd']:.3f}")
tunable = isinstance(mst._BLOCK_J, tuple)
if tunable:
    best_f = None
    for bjf in (16, 32, 64):
        for wf in (2, 4):
            mst._BLOCK_J, mst._NUM_WARPS = (bjf, 64), (wf, 4)
            try:
                t = timeit(fused, False); print(f'  fwd BLOCK_J {bjf} warps {wf}: {t:.3f}'); res[f'fwd_{bjf}_{wf}'] = t
                if best_f is None or t < best_f[0]: best_f = (t, bjf, wf)
            except Exception as e: print('  failed', bjf, wf, repr(e)[:200])
    best_b = None
    for bjb, wb, pps in [(32, 4, 4), (64, 4, 4), (64, 4, 2), (64, 4, 8), (64, 8, 4), (128, 8, 4), (128, 4, 2)]:
        mst._BLOCK_J, mst._NUM_WARPS, mst._PROGRAMS_PER_SM = (best_f[1], bjb), (best_f[2], wb), pps
        try:
            t = timeit(fused, True); print(f'  fwd+bwd, bwd BLOCK_J {bjb} warps {wb} programs/SM {pps}: {t:.3f}'); res[f'fb_{bjb}_{wb}_{pps}'] = t
            if best_b is None or t < best_b[0]: best_b = (t, bjb, wb, pps)
        except Exception as e: print('  failed', bjb, wb, pps, repr(e)[:200])
    mst._BLOCK_J, mst._NUM_WARPS, mst._PROGRAMS_PER_SM = (best_f[1], best_b[1]), (best_f[2], best_b[2]), best_b[3]
    print(f'BEST: _BLOCK_J={mst._BLOCK_J} _NUM_WARPS={mst._NUM_WARPS} _PROGRAMS_PER_SM={mst._PROGRAMS_PER_SM}: fwd {best_f[0]:.3f} fwd+bwd {best_b[0]:.3f}')
    SIGMA[0] = 0.0; res['best_fwd_no_noise'] = timeit(fused, False); SIGMA[0] = 1.0
    print(f"  same without noise: fwd {res['best_fwd_no_noise']:.3f}")
    res['best'] = [mst._BLOCK_J, mst._NUM_WARPS, mst._PROGRAMS_PER_SM]
json.dump(res, open(f'{OUT}/kernel_sweep.json', 'w'), indent=1)
del s0, gz, ga
torch.cuda.empty_cache()
import bench_model
print('### bench_model b64'); bench_model.main(['--device', 'cuda', '--amp', 'bf16', '--batch-size', '64', '--warmup', '5', '--repeats', '20', '--json', f'{OUT}/model_b64.json'])
torch._dynamo.reset(); torch.cuda.empty_cache()
print('### bench_model b128'); bench_model.main(['--device', 'cuda', '--amp', 'bf16', '--batch-size', '128', '--warmup', '5', '--repeats', '10', '--json', f'{OUT}/model_b128.json'])
