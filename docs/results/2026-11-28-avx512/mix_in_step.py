"""Time inside the head-mix and noise ops during ViT-Ti/16 training steps (batch 16, 2 threads; 2026-11-28): ms
per step in the kernels (`_in_parallel`), in the mix ops forward and backward, and in the noise op, beside the
step's mean.

    .venv/bin/python docs/results/2026-11-28-avx512/mix_in_step.py
"""
import time, collections
import neatt  # noqa: F401  (first: its settings precede torch and numba)
import torch, timm
from neatt.runtime import configure_cpu_allocator; configure_cpu_allocator()
from neatt.models import attention as A, head_mix_cpu as HM
T = collections.defaultdict(float)
def timed(name, f):
    def g(*a, **k):
        t = time.perf_counter(); r = f(*a, **k); T[name] += time.perf_counter() - t; return r
    return g
HM._in_parallel = timed('kernels', HM._in_parallel)
A._fused_head_mix = timed('mix op fwd', A._fused_head_mix)
HM._head_mix_backward = timed('mix op bwd', HM._head_mix_backward)
A.add_logit_noise = timed('noise op', A.add_logit_noise)
torch.manual_seed(0)
m = timm.create_model('neatt_vit_tiny_patch16_224').train()
x = torch.randn(16, 3, 224, 224)
def step():
    m.zero_grad(set_to_none=True)
    m(x).float().logsumexp(-1).mean().backward()
for _ in range(3): step()
T.clear(); n = 5
t = time.perf_counter()
for _ in range(n): step()
tot = (time.perf_counter() - t) / n
print('step ms %.1f' % (1e3 * tot), {k: round(1e3 * v / n, 1) for k, v in T.items()})
