"""Process-wide settings that make CPU training fast; called once by the trainer and the benchmarks.

glibc serves every allocation above its mmap threshold (at most 32 MiB, adapting upwards from 128 KiB) with a
fresh `mmap` and gives it back with `munmap` when freed. A training step allocates and frees tensors of tens of
MiB (a (64, 3, 224, 224) float batch is 38 MiB; Ne-Att's (B, H, N, N) logits more), so every step pays one page
fault per 4 KiB touched: on the 2-core development VM that made a plain normalize of one batch 3x slower (140 ms
vs 45 ms). Raising the mmap and trim thresholds keeps freed memory in the heap for reuse, the effect of
MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_, set from inside the process since glibc reads the
environment only at start-up. PyTorch's CUDA allocator caches on its own; this only concerns host memory.

`short_openmp_spin_by_default`: on CPU our compiled kernels (numba, on their own threads) alternate with torch's
OpenMP ops. After each op libgomp's threads spin-wait for the next one, by default for 300,000 spins (several ms
on the 2-core VM), on the cores our kernels then need: the head mix ran ~1.8x slower right after a torch op
than alone. GOMP_SPINCOUNT=30000 (well under a millisecond) still covers the gaps between torch's own ops. In
six alternating bench_model runs (ViT-Ti/16, batch 16, eager) vanilla's step was unchanged (median -4%), and
Ne-Att's was about 10% faster (docs/benchmarks.md).

`numba_wide_vectors_by_default`: LLVM compiles for AVX-512 CPUs with 256-bit vectors unless told otherwise (its
`prefer-256-bit` tuning, chosen for the Skylake-server cores that lower their clock under 512-bit code), while
MKL and oneDNN, which run the vanilla ViT's matmuls, use the full 512 bits. On the 2-core development VM (a Xeon
with AVX-512 and AMX, which LLVM names `rocketlake`), 512-bit vectors made the head-mix forward kernel twice as fast
and its backward 20% faster. Numba reads the CPU features once, when it sets up its compiler, so this too must run
before any numba function compiles: `neatt/__init__` calls it before importing the kernel modules.

`use_threadsafe_numba` is for the compiled CPU kernels (the head mix, the augmentation): FFCV runs its numba
`parallel` decoder in its own thread while the main thread runs theirs, and numba's last-resort threading layer
(workqueue, picked when neither TBB nor OpenMP is found) aborts the process on such concurrent launches.
"""
import ctypes
import ctypes.util
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor

__all__ = ['configure_cpu_allocator', 'short_openmp_spin_by_default', 'numba_wide_vectors_by_default',
           'use_threadsafe_numba', 'numba_threads_like_torch', 'compile_on_a_fresh_stack']

_logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
# allocations up to 1 GiB come from the heap; a glibc that refuses that (older ones cap it at 32 MiB) gets 32 MiB
_MMAP_THRESHOLDS = (1 << 30, 1 << 25)
_TRIM_THRESHOLD = (1 << 31) - 1  # never hand freed heap memory back to the OS between steps


def configure_cpu_allocator() -> bool:
    """Keep large freed host allocations for reuse (glibc only). Returns whether the setting took effect."""
    if not sys.platform.startswith('linux'):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    # mallopt returns 1 on success, 0 for a value it refuses
    ok = any(mallopt(_M_MMAP_THRESHOLD, t) == 1 for t in _MMAP_THRESHOLDS)
    ok = ok and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
    if not ok:
        _logger.debug('mallopt refused the thresholds; host allocations keep the default behaviour')
    return ok


def short_openmp_spin_by_default() -> None:
    """GOMP_SPINCOUNT=30000 unless the environment already sets it or OMP_WAIT_POLICY.

    libgomp reads it once, when torch loads it, so this must run before `import torch`: `neatt/__init__` calls it
    first thing, and the entry points (train_fast.py, tools/bench_*.py) import neatt before torch. A process
    that imported torch first keeps libgomp's default."""
    if 'OMP_WAIT_POLICY' not in os.environ:
        os.environ.setdefault('GOMP_SPINCOUNT', '30000')


# LLVM's names for the Skylake-server cores, whose clock drops under 512-bit code: they keep LLVM's default
_THROTTLED_BY_512_BIT = frozenset({'skylake-avx512', 'cascadelake', 'cooperlake'})


def numba_wide_vectors_by_default() -> bool:
    """Let numba compile with 512-bit vectors on an AVX-512 CPU (not one of the Skylake-server cores), unless
    NUMBA_CPU_NAME or NUMBA_CPU_FEATURES sets the target, or NUMBA_ENABLE_AVX=0 turns AVX off. Returns whether the
    setting took effect; it cannot once numba has set up its compiler, which the first `numba.njit` function does
    (e.g. `import ffcv` before neatt)."""
    if os.environ.get('NUMBA_CPU_NAME') or os.environ.get('NUMBA_CPU_FEATURES'):
        return False
    import llvmlite.binding as llvm
    import numba
    from numba.core.codegen import get_host_cpu_features as host_cpu_features
    from numba.core.registry import cpu_target
    if '_toplevel_target_context' in vars(cpu_target):  # the compiler exists, with the features it read
        _logger.debug('numba was set up before neatt was imported: its kernels keep 256-bit vectors')
        return False
    # numba's own reading of the host: '' where LLVM cannot tell, no AVX at all under NUMBA_ENABLE_AVX=0
    features = host_cpu_features()
    if '+avx512f' not in features.split(',') or llvm.get_host_cpu_name() in _THROTTLED_BY_512_BIT:
        return False
    numba.config.CPU_FEATURES = features + ',-prefer-256-bit'
    return True


def use_threadsafe_numba() -> None:
    """Make numba pick a threadsafe threading layer (TBB or OpenMP; an ImportError naming them if neither is
    installed) instead of aborting later. A layer chosen through NUMBA_THREADING_LAYER is left alone. Takes effect
    only before numba's first parallel launch, so the kernel modules call it when imported."""
    import numba
    if numba.config.THREADING_LAYER == 'default':
        numba.config.THREADING_LAYER = 'threadsafe'


def numba_threads_like_torch() -> int:
    """Set numba's thread count to torch's (within numba's pool size) so that the compiled kernels and torch's
    ops do not oversubscribe the cores; returns it. Called before each kernel launch: torch's count can change
    between calls (FFCV sets it while it iterates)."""
    import numba
    import torch
    n = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    return n


def compile_on_a_fresh_stack(dispatcher, *args) -> None:
    """Compile the numba `dispatcher` for the types of `args` (or load it from numba's disk cache) in a new thread,
    unless it has a compiled version already. For kernels that are always called with the same types, which is
    what the callers are: the check is then one attribute read per call, where typing every argument would cost
    about 300 us per call for the head-mix backward's 19 arguments.

    Why a new thread: CPython 3.11 and 3.12 keep the interpreter's frames in 16 KiB chunks and unmap a chunk as
    soon as the frames on it return (CPython gh-142183, fixed in later 3.13 and 3.14 releases). Numba's compiler
    recurses deeply, and where one of its hot calls sits on a chunk boundary, each call maps and unmaps a chunk.
    How deep the stack is when the compile starts decides whether that happens: inside pytest, compiling the
    head-mix kernels took twice as long as from a script, with 8,000 mmap/munmap pairs a second (2 min 47 s of
    system time in a 7-minute test). A new thread starts from an empty stack, so the compile runs at the same
    shallow depth wherever the first call comes from.
    """
    if dispatcher.overloads:
        return
    import numba
    signature = tuple(numba.typeof(a) for a in args)
    with ThreadPoolExecutor(1, thread_name_prefix='numba-compile') as pool:
        pool.submit(dispatcher.compile, signature).result()
