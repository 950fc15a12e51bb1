"""ViT-Ti/16 step (batch 16, 2 threads), vanilla against Ne-Att with its parts switched on one at a time, in
interleaved rounds (2026-11-28): what chaining, noise and the head mix each add to the step.

    .venv/bin/python docs/results/2026-11-28-avx512/step_variants.py
"""
import time
import neatt  # noqa: F401  (first: its settings precede torch and numba)
import torch, timm
from neatt.runtime import configure_cpu_allocator; configure_cpu_allocator()
x = torch.randn(16, 3, 224, 224)
variants = {
    'vanilla': ('vit_tiny_patch16_224', {}),
    'chain only': ('neatt_vit_tiny_patch16_224', dict(neatt_mix=False, neatt_sigma=0.)),
    'chain+noise': ('neatt_vit_tiny_patch16_224', dict(neatt_mix=False)),
    'chain+mix': ('neatt_vit_tiny_patch16_224', dict(neatt_sigma=0.)),
    'full': ('neatt_vit_tiny_patch16_224', {}),
}
models = {k: timm.create_model(n, **kw).train() for k, (n, kw) in variants.items()}
def step(m):
    m.zero_grad(set_to_none=True)
    m(x).float().logsumexp(-1).mean().backward()
res = {k: [] for k in models}
for m in models.values():
    for _ in range(2): step(m)
for r in range(10):
    for k, m in models.items():
        t = time.perf_counter(); step(m); res[k].append(time.perf_counter() - t)
base = sorted(res["vanilla"])[5]
for k, v in res.items():
    med = sorted(v)[5]
    print('%-12s %7.1f ms  ratio %.2f' % (k, 1e3 * med, med / base))
