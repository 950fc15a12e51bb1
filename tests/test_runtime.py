"""neatt.runtime: the host allocator's thresholds, numba's threading layer and vector width, libgomp's spin, where numba
compiles."""
import os
import subprocess
import sys
import textwrap
import threading

import numba
import numpy as np
import pytest

from neatt.runtime import compile_on_a_fresh_stack

# Prints whether a fresh 64 MiB numpy buffer lies inside the process's brk heap ([heap] in /proc/self/maps).
# glibc's default serves such a request with its own mmap (outside [heap]) and unmaps it on free.
_PROBE = textwrap.dedent("""
    import sys
    import numpy as np
    from neatt.runtime import configure_cpu_allocator
    if sys.argv[1] == 'tuned':
        assert configure_cpu_allocator()
    buf = np.empty(64 << 20, dtype=np.uint8)
    addr = buf.ctypes.data
    for line in open('/proc/self/maps'):
        if line.rstrip().endswith('[heap]'):
            lo, hi = (int(x, 16) for x in line.split()[0].split('-'))
            if lo <= addr < hi:
                print('heap'); break
    else:
        print('mmap')
""")


def _where(mode):
    out = subprocess.run([sys.executable, '-c', _PROBE, mode], capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc mallopt')
def test_large_allocations_come_from_the_heap_once_configured():
    assert _where('default') == 'mmap'
    assert _where('tuned') == 'heap'


_LAYER_PROBE = textwrap.dedent("""
    import numba
    import numpy as np
    import pipelines.augment.cpu_kernels  # noqa: F401  (a module with numba parallel kernels)

    @numba.njit(parallel=True)
    def bump(a):
        for i in numba.prange(a.shape[0]):
            a[i] += 1

    bump(np.zeros(4))
    print(numba.config.THREADING_LAYER, numba.threading_layer())
""")


@pytest.mark.parametrize('env, want_config', [(None, 'threadsafe'), ('omp', 'omp')])
def test_kernel_modules_ask_numba_for_a_threadsafe_layer(env, want_config):
    """FFCV's decoder thread and the main thread launch numba kernels at once; the workqueue layer aborts on that.
    A layer the user picked through NUMBA_THREADING_LAYER is kept."""
    environ = {k: v for k, v in os.environ.items() if k != 'NUMBA_THREADING_LAYER'}
    if env:
        environ['NUMBA_THREADING_LAYER'] = env
    out = subprocess.run([sys.executable, '-c', _LAYER_PROBE], capture_output=True, text=True, check=True,
                         env=environ).stdout.split()
    assert out[0] == want_config
    assert out[1] in ('tbb', 'omp')


@pytest.mark.parametrize('env, want', [({}, '30000'), ({'GOMP_SPINCOUNT': '5'}, '5'),
                                       ({'OMP_WAIT_POLICY': 'ACTIVE'}, None)])
def test_import_neatt_shortens_openmp_spin_unless_the_user_chose(env, want):
    """`import neatt` (before torch) sets GOMP_SPINCOUNT for libgomp to read when torch loads it; a spin count
    or wait policy from the user wins. The setting is visible to the process's OpenMP only as environment."""
    clean = {k: v for k, v in os.environ.items() if k not in ('GOMP_SPINCOUNT', 'OMP_WAIT_POLICY')}
    probe = "import neatt, os, sys; print(os.environ.get('GOMP_SPINCOUNT'), 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True, check=True,
                         env={**clean, **env}).stdout.split()
    assert out == [str(want), 'True']  # and torch was loaded by that import, after the setting


# Compiles a float32 loop after `import neatt` and prints whether its machine code uses 512-bit registers, whether
# numba compiled for the features that allow them, and what a second call of the setting returns.
_VECTOR_PROBE = textwrap.dedent("""
    import sys
    import numba
    import numpy as np

    if sys.argv[1] == 'numba-first':  # a numba function defined (which sets up numba's compiler) before neatt
        numba.njit(lambda x: x + 1)(1)
    import neatt  # noqa: F401
    from neatt.runtime import numba_wide_vectors_by_default

    @numba.njit(fastmath=True)
    def axpy(a, x, y):
        for i in range(x.size):
            y[i] += a * x[i]

    axpy(np.float32(2), np.ones(64, np.float32), np.ones(64, np.float32))
    asm = next(iter(axpy.inspect_asm().values()))
    codegen = numba.core.registry.cpu_target.target_context.codegen()
    print('zmm' in asm, codegen.magic_tuple()[2].endswith('-prefer-256-bit'), numba_wide_vectors_by_default())
""")


def _avx512_host_llvm_keeps_at_256_bits():
    import llvmlite.binding as llvm
    from neatt.runtime import _THROTTLED_BY_512_BIT
    return (llvm.get_host_cpu_features().get('avx512f', False)
            and llvm.get_host_cpu_name() not in _THROTTLED_BY_512_BIT)


def _vector_probe(order, **env):
    numba_target = ('NUMBA_CPU_NAME', 'NUMBA_CPU_FEATURES', 'NUMBA_ENABLE_AVX')  # the probe sets these itself
    clean = {k: v for k, v in os.environ.items() if k not in numba_target}
    out = subprocess.run([sys.executable, '-c', _VECTOR_PROBE, order], capture_output=True, text=True, check=True,
                         env={**clean, **env}).stdout.split()
    return [w == 'True' for w in out]


@pytest.mark.skipif(not _avx512_host_llvm_keeps_at_256_bits(),
                    reason='needs an AVX-512 CPU other than a Skylake-server core')
def test_numba_compiles_512_bit_vectors_after_import_neatt():
    """LLVM's default for AVX-512 CPUs is 256-bit vectors; after `import neatt` a vectorizable loop uses zmm
    registers. A second call changes nothing (numba's compiler exists by then)."""
    assert _vector_probe('neatt-first') == [True, True, False]


def test_numba_vector_width_is_left_alone_when_the_user_or_numba_decided():
    """NUMBA_CPU_FEATURES from the user is what numba compiles for, NUMBA_ENABLE_AVX=0 keeps AVX off; a numba
    function compiled before `import neatt` keeps LLVM's default: `import neatt` then finds numba's compiler set up,
    which has read the features."""
    import llvmlite.binding as llvm
    host = llvm.get_host_cpu_features().flatten()
    assert _vector_probe('neatt-first', NUMBA_CPU_FEATURES=host) == [False, False, False]
    assert _vector_probe('neatt-first', NUMBA_ENABLE_AVX='0') == [False, False, False]
    assert _vector_probe('numba-first') == [False, False, False]


class _RecordingDispatcher:
    """What compile_on_a_fresh_stack reads of a numba dispatcher (`overloads`, `compile`), recording each compile."""

    def __init__(self):
        self.overloads = {}
        self.compiles = []

    def compile(self, signature):
        self.compiles.append((signature, threading.get_ident()))
        self.overloads[signature] = object()


def test_compile_runs_once_in_another_thread():
    fake = _RecordingDispatcher()
    args = (np.zeros((2, 3), np.float32), np.float32(0.5), 7)
    compile_on_a_fresh_stack(fake, *args)
    compile_on_a_fresh_stack(fake, *args)  # compiled already: nothing to do
    assert len(fake.compiles) == 1
    signature, thread = fake.compiles[0]
    assert signature == (numba.types.float32[:, ::1], numba.types.float32, numba.types.int64)
    assert thread != threading.get_ident()


def test_the_compiled_version_is_the_one_calls_dispatch_to():
    @numba.njit
    def scaled_sum(x, scale, n):
        return x[:n].sum() * scale

    args = (np.arange(6, dtype=np.float32).reshape(2, 3), np.float32(0.5), 1)
    compile_on_a_fresh_stack(scaled_sum, *args)
    assert len(scaled_sum.signatures) == 1
    assert scaled_sum(*args) == 1.5  # (0 + 1 + 2) * 0.5
    assert len(scaled_sum.signatures) == 1  # the call found it: no second compile


def test_a_compile_error_reaches_the_caller():
    @numba.njit
    def needs_an_array(x):
        return x.shape[0]

    with pytest.raises(numba.core.errors.TypingError):
        compile_on_a_fresh_stack(needs_an_array, 'not an array')
