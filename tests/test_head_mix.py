"""The fused CPU head mix (neatt/models/head_mix_cpu.py) against a float64 plain-torch re-computation of g_l."""
import numba
import pytest
import torch
import torch.nn.functional as F

from neatt.models.attention import HeadMix
from neatt.models.head_mix_cpu import _FORWARD_TILE, _backward_tile, _kernels, head_mix


def _weights(H: int, seed: int):
    """fc1..fc3 weights and biases (nn.Linear layout), std 0.5 so that every layer visibly acts."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(4 * H, H), (4 * H,), (4 * H, 4 * H), (4 * H,), (H, 4 * H), (H,)]
    return [(torch.randn(s, generator=g) * 0.5).requires_grad_() for s in shapes]


def _reference(x: torch.Tensor, w):
    """y = x + g(x) written per position: a (P, H) view of the (H, P) logits through F.linear / F.leaky_relu."""
    p = x.t()
    h = F.leaky_relu(F.linear(p, w[0], w[1]), 0.2)
    h = F.leaky_relu(F.linear(h, w[2], w[3]), 0.2)
    return (p + F.linear(h, w[4], w[5])).t()


def _close(ours: torch.Tensor, ref: torch.Tensor, msg: str):
    # float32 kernel vs float64 reference: sums of up to 4H terms per layer (P terms for weight grads), reordered
    # by fastmath; 1e-4 of the largest magnitude covers float32 rounding there with room
    scale = ref.abs().max().item()
    torch.testing.assert_close(ours.double(), ref, rtol=1e-4, atol=1e-4 * scale, msg=msg)


@pytest.mark.parametrize('H,P', [(3, 1000 + 7), (3, 5 * 512), (5, 37), (5, 2 * 64 + 3), (12, 2 * 256 + 129)])
def test_forward_and_gradients_match_reference(H, P):
    """Odd P (not a multiple of the tile, smaller than one tile), H = 3, 5, 12 (the kernels pad H to a multiple
    of 4 and take F = 4H > 16 inputs in blocks: of 4 at H = 5, five of them, of 8 at H = 12); every input and
    weight grad. Each H compiles its own kernels (~10 s cold), hence no more of them."""
    w = _weights(H, seed=H)
    x = (torch.randn(H, P, generator=torch.Generator().manual_seed(1)) * 2).requires_grad_()
    gy = torch.randn(H, P, generator=torch.Generator().manual_seed(2))
    y = head_mix(x, *w, 0.2)
    y.backward(gy)
    ours = [x.grad] + [p.grad for p in w]

    x64 = x.detach().double().requires_grad_()
    w64 = [p.detach().double().requires_grad_() for p in w]
    ref = _reference(x64, w64)
    ref.backward(gy.double())
    _close(y, ref.detach(), 'y')
    for name, a, b in zip(['x', 'fc1.weight', 'fc1.bias', 'fc2.weight', 'fc2.bias', 'fc3.weight', 'fc3.bias'],
                          ours, [x64.grad] + [p.grad for p in w64]):
        _close(a, b, f'grad {name}')
    # compiled once, ahead of the call (runtime.compile_on_a_fresh_stack), for exactly the types the call dispatches
    assert len(_kernels(H, _FORWARD_TILE)[0].signatures) == 1
    assert len(_kernels(H, _backward_tile(H))[1].signatures) == 1


def test_head_mix_module_uses_the_fused_op_on_cpu_float32():
    """HeadMix on (H, B, N, N) logits: the fused op's backward in the graph, and the reference's values."""
    torch.manual_seed(0)
    mix = HeadMix(3)
    w = [mix.fc1.weight, mix.fc1.bias, mix.fc2.weight, mix.fc2.bias, mix.fc3.weight, mix.fc3.bias]
    with torch.no_grad():
        for p in w:
            p.normal_(0, 0.5)
    s = torch.randn(3, 2, 17, 17, requires_grad=True)
    z = mix(s)
    assert 'head_mix' in z.grad_fn.name()  # the op's own output: no view node for the in-place noise to copy
    ref = _reference(s.detach().double().reshape(3, -1), [p.detach().double() for p in w]).reshape(s.shape)
    _close(z.detach(), ref, 'z')


def test_bf16_autocast_keeps_the_gemm_path():
    """Under autocast the mix runs in bf16 GEMMs (the fused kernel is float32 only), close to the reference."""
    torch.manual_seed(0)
    mix = HeadMix(3)
    s = torch.randn(3, 2, 17, 17)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        z = mix(s)
    assert z.dtype == torch.bfloat16
    w = [p.detach().double() for p in (mix.fc1.weight, mix.fc1.bias, mix.fc2.weight, mix.fc2.bias,
                                       mix.fc3.weight, mix.fc3.bias)]
    ref = _reference(s.double().reshape(3, -1), w).reshape(s.shape)
    torch.testing.assert_close(z.double(), ref, rtol=2e-2, atol=2e-2)


def test_numba_threads_follow_torch():
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        head_mix(torch.randn(3, 100), *[p.detach() for p in _weights(3, 0)], 0.2)
        assert numba.get_num_threads() == 1
    finally:
        torch.set_num_threads(old)


@pytest.mark.slow
def test_compiled_module_equals_eager_in_one_graph():
    """torch.compile(fullgraph=True) keeps the op as one opaque call (a graph break would raise): same values
    and grads as eager."""
    torch.manual_seed(0)
    mix = HeadMix(3)
    s = torch.randn(3, 2, 17, 17)

    def run(fn):
        mix.zero_grad()
        x = s.clone().requires_grad_()
        out = fn(x)
        out.square().sum().backward()
        return out.detach(), x.grad, [p.grad.clone() for p in mix.parameters()]

    compiled = run(torch.compile(lambda x: mix(x) * 2, fullgraph=True))
    eager = run(lambda x: mix(x) * 2)
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(compiled[1], eager[1], rtol=1e-5, atol=1e-5)
    for a, b in zip(compiled[2], eager[2]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_flop_counter_counts_the_fused_op():
    """FlopCounterMode sees the custom ops: H = 3, F = 12 over 16 positions is 16 * (3*12 + 12*12 + 12*3) = 3456
    multiply-adds, 6912 FLOPs forward, twice that backward (hand-computed)."""
    from torch.utils.flop_counter import FlopCounterMode
    hm = HeadMix(3)
    s = torch.randn(3, 1, 4, 4, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        hm(s).sum().backward()
    assert counter.get_total_flops() == 6912 + 2 * 6912
