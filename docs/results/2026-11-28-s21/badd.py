"""The q k^T logits of 12 blocks (ViT-Ti/16, batch 16, 2 threads) with the previous block's logits added: an
out-of-place baddbmm (as NestedAttention does it), an in-place baddbmm_, and baddbmm with beta = 0 (no chain);
ms per step of 12 calls, five rounds (2026-11-28, twenty-first session).

    .venv/bin/python docs/results/2026-11-28-s21/badd.py
"""
import time
import neatt  # noqa: F401  (first: its settings precede torch)
import torch
from neatt.runtime import configure_cpu_allocator; configure_cpu_allocator()
H, B, N, d = 3, 16, 197, 64
q = torch.randn(H * B, N, d); k = torch.randn(H * B, N, d).transpose(1, 2)
zs = [torch.randn(H * B, N, N) for _ in range(12)]
def oop():
    for z in zs: torch.baddbmm(z, q, k, alpha=.125)
def inp():
    for z in zs: z.baddbmm_(q, k, alpha=.125)
def zero():
    for z in zs: torch.baddbmm(z, q, k, beta=0., alpha=.125)
for r in range(5):
    for f in (oop, inp, zero):
        f()
        t = time.perf_counter(); f(); f()
        print(f.__name__, '%.2f ms/step' % ((time.perf_counter() - t) / 2 * 1e3), end='  ')
    print()
