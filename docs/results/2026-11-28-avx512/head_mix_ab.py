"""Paired A/B of two versions of neatt/models/head_mix_cpu.py, loaded side by side in one process, one thread,
thread CPU time (2026-11-28): forward and backward alternate between the versions, and the median of the paired
ratios B/A is printed with its quartiles. Both must give the same outputs (printed first).

    .venv/bin/python docs/results/2026-11-28-avx512/head_mix_ab.py A.py B.py H [rounds]
"""
import importlib.util, sys, time
import neatt  # noqa: F401  (first: its settings precede torch and numba)
import torch, numpy as np
torch.set_num_threads(1)
import neatt.models.attention as A
def load(path, name):
    spec = importlib.util.spec_from_file_location('neatt.models.' + name, path)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod); return mod
a, b = load(sys.argv[1], 'hm_a'), load(sys.argv[2], 'hm_b')
H = int(sys.argv[3]); rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 15
B = {3: 8, 5: 4, 6: 4, 8: 3, 12: 2, 16: 1}[H]
x = torch.randn(H, B * 197 * 197); gy = torch.randn_like(x)
hm = A.HeadMix(H)
w = (hm.fc1.weight, hm.fc1.bias, hm.fc2.weight, hm.fc2.bias, hm.fc3.weight, hm.fc3.bias)
ya, yb = a.head_mix(x, *w, 0.2), b.head_mix(x, *w, 0.2)
ga, gb = a._head_mix_backward(gy, x, *w[:5], 0.2), b._head_mix_backward(gy, x, *w[:5], 0.2)
with torch.no_grad():
    print('max diff fwd %.2e' % (ya - yb).abs().max(),
          'bwd', ['%.1e' % ((p - q).abs().max() / q.abs().max()) for p, q in zip(ga, gb)])
def t(f):
    s = time.thread_time(); f(); return time.thread_time() - s
for name, fa, fb in (('fwd', lambda: a.head_mix(x, *w, 0.2), lambda: b.head_mix(x, *w, 0.2)),
                     ('bwd', lambda: a._head_mix_backward(gy, x, *w[:5], 0.2),
                      lambda: b._head_mix_backward(gy, x, *w[:5], 0.2))):
    ta, tb = [], []
    for _ in range(rounds):
        ta.append(t(fa)); tb.append(t(fb))
    r = sorted(q / p for p, q in zip(ta, tb))
    print('H %d %s: A %.2f ms, B %.2f ms (medians), B/A paired median %.3f [%.3f..%.3f]' % (
        H, name, 1e3 * np.median(ta), 1e3 * np.median(tb), r[len(r) // 2], r[len(r) // 4], r[3 * len(r) // 4]))
