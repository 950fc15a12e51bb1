"""Minor page faults, system and user CPU time, and wall time per ViT-Ti/16 step (batch 16, 2 threads): vanilla, and
Ne-Att with chaining only, chaining + head mix, and all parts (2026-11-28).

    .venv/bin/python docs/results/2026-11-28-avx512/faults.py
"""
import resource, time
import neatt  # noqa: F401  (first: its settings precede torch and numba)
import torch, timm
from neatt.runtime import configure_cpu_allocator; print('allocator', configure_cpu_allocator())
x = torch.randn(16, 3, 224, 224)
variants = (('vanilla', None), ('chain', dict(neatt_mix=False, neatt_sigma=0.)), ('mix', dict(neatt_sigma=0.)),
            ('full', {}))
for name, kw in variants:
    if kw is None:
        m = timm.create_model('vit_tiny_patch16_224').train()
    else:
        m = timm.create_model('neatt_vit_tiny_patch16_224', **kw).train()
    def step():
        m.zero_grad(set_to_none=True)
        m(x).float().logsumexp(-1).mean().backward()
    for _ in range(3): step()
    r0 = resource.getrusage(resource.RUSAGE_SELF); t = time.perf_counter()
    for _ in range(4): step()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    wall = (time.perf_counter() - t) / 4
    faults = (r1.ru_minflt - r0.ru_minflt) / 4
    sys_s, user_s = (r1.ru_stime - r0.ru_stime) / 4, (r1.ru_utime - r0.ru_utime) / 4
    print('%-8s minor faults per step %8d  sys s per step %.3f  user %.3f  wall %.3f' % (
        name, faults, sys_s, user_s, wall))
