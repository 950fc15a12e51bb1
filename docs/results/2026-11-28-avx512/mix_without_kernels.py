"""The head-mix path's cost outside its kernels (2026-11-28): the chain-only model against chain + mix, with the
real kernels, or (argument `noop`) with kernels that only copy x to y and gy to gx.

    .venv/bin/python docs/results/2026-11-28-avx512/mix_without_kernels.py [noop]
"""
import sys, time
import neatt  # noqa: F401  (first: its settings precede torch and numba)
import torch, timm

from numba import njit
from neatt.runtime import configure_cpu_allocator; configure_cpu_allocator()
from neatt.models import head_mix_cpu as HM
noop = len(sys.argv) > 1
if noop:
    @njit(nogil=True)
    def fwd(x, w1, b1, w2, b2, w3, b3, slope, y, i0, i1):
        tile = 128
        for h in range(x.shape[0]):
            y[h, i0 * tile:min(i1 * tile, x.shape[1])] = x[h, i0 * tile:min(i1 * tile, x.shape[1])]
    @njit(nogil=True)
    def bwd(gy, x, w1, b1, w2, b2, w1t, w2t, w3t, slope, gx, gw1, gb1, gw2, gb2, gw3, gb3, i0, i1):
        tile = 128
        for h in range(x.shape[0]):
            gx[h, i0 * tile:min(i1 * tile, x.shape[1])] = gy[h, i0 * tile:min(i1 * tile, x.shape[1])]
    HM._kernels = lambda H, tile: (fwd, bwd)
x = torch.randn(16, 3, 224, 224)
ms = {'chain': timm.create_model('neatt_vit_tiny_patch16_224', neatt_mix=False, neatt_sigma=0.).train(),
      'chain+mix': timm.create_model('neatt_vit_tiny_patch16_224', neatt_sigma=0.).train()}
def step(m):
    m.zero_grad(set_to_none=True)
    m(x).float().logsumexp(-1).mean().backward()
res = {k: [] for k in ms}
for m in ms.values():
    for _ in range(2): step(m)
for r in range(10):
    for k, m in ms.items():
        t = time.perf_counter(); step(m); res[k].append(time.perf_counter() - t)
print('noop kernels' if noop else 'real kernels', {k: round(1e3 * sorted(v)[5], 1) for k, v in res.items()})
