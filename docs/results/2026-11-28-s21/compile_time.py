"""Cold compile time of the head-mix kernels for H heads, one version of neatt/models/head_mix_cpu.py (its ops
renamed, as for head_mix_ab.py): the first forward and the first backward call (2026-11-28, twenty-first session).

    NUMBA_CACHE_DIR=$(mktemp -d) .venv/bin/python docs/results/2026-11-28-s21/compile_time.py VERSION.py H
"""
import importlib.util, sys, time
import neatt  # noqa: F401  (first: its settings precede torch and numba)
import torch
import neatt.models.attention as A
path, H = sys.argv[1], int(sys.argv[2])
spec = importlib.util.spec_from_file_location('neatt.models.hm_x', path)
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
x = torch.randn(H, 4 * 197 * 197); gy = torch.randn_like(x)
hm = A.HeadMix(H)
w = (hm.fc1.weight, hm.fc1.bias, hm.fc2.weight, hm.fc2.bias, hm.fc3.weight, hm.fc3.bias)
t = time.perf_counter(); mod.head_mix(x, *w, 0.2); t1 = time.perf_counter()
mod._head_mix_backward(gy, x, *w[:5], 0.2); t2 = time.perf_counter()
print('%s H %d: first forward %.1f s, first backward %.1f s' % (path.split('/')[-1], H, t1 - t, t2 - t1))
