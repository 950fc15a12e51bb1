"""Non-temporal (streaming) stores for numba kernels: `stream_row(dst, src)` copies a float32 row with them.

Why hand-written: the augmentation kernel's last step writes each image once as float32 (602 KB at 224 px), to
memory that is not in the cache. Ordinary stores first read every line they write ("read for ownership"), which
on a 2-core VM costs more than the arithmetic: normalizing into a cache-resident slot takes 0.016 ms per image,
into a batch 0.053 ms. Streaming stores skip that read (0.034 ms). numba has no way to ask for them and LLVM does
not choose them by itself, so two small intrinsics emit them: a 32-byte vector store tagged `!nontemporal`
(vmovntps on x86, stnp on ARM) and, on x86, the `sfence` that orders such stores before anything that follows.
"""
import platform

from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

__all__ = ['stream_row', 'stream_fence']

_LANES = 8  # float32 values per streamed store
_BYTES = 4 * _LANES  # a streamed store's size, and the alignment it needs
_X86 = platform.machine().lower() in ('x86_64', 'amd64', 'i386', 'i686')


@intrinsic
def _address(typingctx, arr):
    """The address of arr's first element, as a (signed) integer."""
    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        return builder.ptrtoint(data, context.get_value_type(types.intp))
    return types.intp(arr), codegen


@intrinsic
def _stream8(typingctx, dst, i, src, j):
    """dst[i:i + 8] = src[j:j + 8] as one non-temporal 32-byte store; dst's address at i must be 32-byte aligned."""
    def codegen(context, builder, signature, args):
        dst_v, i_v, src_v, j_v = args
        dst_data = context.make_array(signature.args[0])(context, builder, dst_v).data
        src_data = context.make_array(signature.args[2])(context, builder, src_v).data
        vector = ir.VectorType(ir.FloatType(), _LANES).as_pointer()
        value = builder.load(builder.bitcast(builder.gep(src_data, [j_v]), vector), align=4)
        store = builder.store(value, builder.bitcast(builder.gep(dst_data, [i_v]), vector), align=_BYTES)
        store.set_metadata('nontemporal', builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))
        return context.get_dummy_value()
    return types.void(dst, i, src, j), codegen


@intrinsic
def stream_fence(typingctx):
    """Order the streamed stores before later ones (x86 `sfence`; elsewhere the threads' own sync suffices)."""
    def codegen(context, builder, signature, args):
        if _X86:
            module = builder.module
            name = 'llvm.x86.sse.sfence'
            fn = module.globals.get(name) or ir.Function(module, ir.FunctionType(ir.VoidType(), []), name=name)
            builder.call(fn, [])
        return context.get_dummy_value()
    return types.void(), codegen


@njit(inline='always')
def stream_row(dst, src):
    """dst[:] = src[:] (1-D float32, same size): plain stores up to dst's first 32-byte boundary and for the
    tail, streaming stores between. Call `stream_fence()` once the rows are written (the kernel: per image)."""
    n = dst.size
    address = _address(dst)
    head = min(((_BYTES - address % _BYTES) % _BYTES) // 4, n) if address % 4 == 0 else n
    for i in range(head):
        dst[i] = src[i]
    i = head
    while i + _LANES <= n:
        _stream8(dst, i, src, i)
        i += _LANES
    for k in range(i, n):
        dst[k] = src[k]
