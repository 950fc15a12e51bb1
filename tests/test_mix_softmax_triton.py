"""The Triton head mix + noise and softmax(z) @ v (neatt/models/mix_softmax_triton.py) against a float64
re-computation.

On a CPU machine the kernels run under TRITON_INTERPRET=1 (Triton's interpreter, numpy underneath), in a pytest
subprocess, since the variable must be set before Triton is imported; with a GPU they run compiled on it, also
in bfloat16. The reference is written here from NEATT.md's equations: the head MLP applied per (query, key)
position over the head axis, the noise, the softmax over keys, its product with v, and autograd through them for
the gradients.
"""
import math
import os
import subprocess
import sys

import pytest
import torch

triton = pytest.importorskip('triton')
from neatt.models import mix_softmax_triton as mst  # noqa: E402
from _noise_reference import philox_normals  # noqa: E402

INTERPRETED = os.environ.get('TRITON_INTERPRET') == '1'
DEVICES = ['cpu'] if INTERPRETED else (['cuda'] if torch.cuda.is_available() else [])
SLOPE = 0.2


@pytest.mark.skipif(INTERPRETED, reason='this test launches the interpreted run')
def test_kernels_under_the_interpreter():
    """Runs this file's tests again in a process with TRITON_INTERPRET=1: the kernels on CPU tensors."""
    env = {**os.environ, 'TRITON_INTERPRET': '1'}
    run = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', __file__],
                         env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert ' passed' in run.stdout and ' failed' not in run.stdout


def _mlp(H, seed=0):
    g = torch.Generator().manual_seed(seed)
    F = 4 * H
    shapes = [(F, H), (F,), (F, F), (F,), (H, F), (H,)]
    return [torch.randn(*sh, generator=g) / math.sqrt(sh[-1]) for sh in shapes]


def _reference(s, v, weights, eps, sigma, n_keys=None):
    """float64: z = s + g(s) + sigma * eps, g per position over the head axis; o = softmax(z over the first
    n_keys keys, all by default) @ v for the first n_keys queries, laid out (B, n_keys, H, D) as the op returns
    it."""
    x = s.movedim(0, -1)  # (..., T, H): heads last, as features
    if weights is not None:
        w1, b1, w2, b2, w3, b3 = weights
        h = torch.nn.functional.leaky_relu(x @ w1.T + b1, SLOPE)
        h = torch.nn.functional.leaky_relu(h @ w2.T + b2, SLOPE)
        x = x + h @ w3.T + b3
    z = x.movedim(-1, 0) + sigma * eps
    n_keys = z.shape[-1] if n_keys is None else n_keys
    o = torch.softmax(z[:, :, :n_keys, :n_keys], dim=-1) @ v[:, :, :n_keys]
    return z, o.permute(1, 2, 0, 3)


def _inputs(H, B, N, D, seed):
    """Logits s, values v, and the loss's weights on z and o, float32 on the CPU."""
    g = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(H, B, N, N, generator=g), torch.randn(H, B, N, D, generator=g),
            torch.randn(H, B, N, N, generator=g), torch.randn(B, N, H, D, generator=g))


def _run_both(H, B, N, device, dtype=torch.float32, mix=True, sigma=0.0, seed=0, n_keys=None, o_loss=True, D=8):
    """(ours, reference, eps): z, o and the grads of one loss through both, on the same s, v, weights and eps;
    the loss reads o too unless `o_loss` is False."""
    s, v, gz, go = _inputs(H, B, N, D, seed)
    go = go[:, :n_keys]  # o is the first n_keys queries
    s, v, gz, go = s.to(device, dtype), v.to(device, dtype), gz.to(device), go.to(device) * o_loss
    weights = _mlp(H, seed) if mix else None

    s_ours, v_ours = s.clone().requires_grad_(), v.clone().requires_grad_()
    w_ours = [w.to(device, copy=True).requires_grad_() for w in weights] if mix else [None] * 6
    torch.manual_seed(seed)
    z, o, *_ = mst.mix_noise_attend(s_ours, v_ours, *w_ours, sigma, SLOPE, n_keys=n_keys)
    ((z.float() * gz).sum() + ((o * go).sum() if o_loss else 0)).backward()

    s_ref, v_ref = (t.detach().double().cpu().requires_grad_() for t in (s, v))
    w_ref = [w.detach().double().requires_grad_() for w in weights] if mix else None
    # the noise ours drew, recovered from z (exact without a mix: z - s), or 0
    eps = torch.zeros_like(s_ref)
    if sigma > 0:
        z_clean, _ = _reference(s_ref.detach(), v_ref.detach(), w_ref and [w.detach() for w in w_ref], 0., 0.)
        eps = (z.detach().double().cpu() - z_clean) / sigma
    z_ref, o_ref = _reference(s_ref, v_ref, w_ref, eps, sigma, n_keys)
    ((z_ref * gz.double().cpu()).sum() + (o_ref * go.double().cpu()).sum()).backward()
    weight_grads = lambda ws: {f'w{i}': w.grad for i, w in enumerate(ws)} if mix else {}  # noqa: E731
    ours = {'z': z, 'o': o, 'ds': s_ours.grad, 'dv': v_ours.grad, **weight_grads(w_ours)}
    ref = {'z': z_ref, 'o': o_ref, 'ds': s_ref.grad, 'dv': v_ref.grad, **weight_grads(w_ref)}
    return ours, ref, eps


def _assert_close(ours, ref, rtol, atol):
    """Each tensor within rtol, atol of the reference, atol in units of the tensor's largest value where that
    is above 1: a weight gradient sums its terms over every position in float32, so its rounding error follows
    the sum's scale (up to a few hundred here), not that of an element which the sum cancelled to near 0."""
    for k in ref:
        scale = max(1., float(ref[k].detach().abs().max()))
        torch.testing.assert_close(ours[k].detach().double().cpu(), ref[k].detach(), rtol=rtol, atol=atol * scale,
                                   msg=lambda m, k=k: f'{k}: {m}')


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('H,N,D', [(12, 17, 8), (3, 40, 20), (5, 70, 8), (16, 9, 16)])  # 16: no padding to fold
def test_matches_reference_without_noise(device, H, N, D):  # the biases into; 70: more than one tile of keys
    """Mix on, noise off, float32: z, o and every gradient (s, v and the six MLP tensors) as the reference."""
    ours, ref, _ = _run_both(H, B=2, N=N, device=device, D=D)
    _assert_close(ours, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('device', DEVICES)
def test_a_loss_of_z_alone(device):
    """Nothing reads o (its gradient arrives as None): the gradients through z alone, as the reference's."""
    ours, ref, _ = _run_both(H=12, B=2, N=17, device=device, o_loss=False)
    _assert_close(ours, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('device', DEVICES)
def test_keys_past_n_keys_leave_the_softmax(device):
    """n_keys < N (the token padding of NestedAttention): z everywhere as without it, the softmax over the first
    n_keys keys only, so that v's rows past them get no gradient, and the gradients through that."""
    ours, ref, _ = _run_both(H=5, B=2, N=72, device=device, n_keys=65)
    _assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    assert ours['dv'][:, :, :65].abs().min() > 0 and not ours['dv'][:, :, 65:].any()


@pytest.mark.parametrize('device', DEVICES)
def test_no_mix_is_noise_plus_softmax(device):
    """Without the MLP (a first block): z = s + sigma * eps with eps ~ N(0, 1), and the grads through it."""
    ours, ref, eps = _run_both(H=4, B=2, N=33, device=device, mix=False, sigma=0.7)
    _assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    e = eps.flatten()
    assert abs(e.mean()) < 0.03 and abs(e.std() - 1) < 0.03, (e.mean(), e.std())  # 8712 draws: 4-5 sigma bounds
    assert (e.abs() > 3).float().mean() < 0.01


def _zeros(H, B, N, device, D=8):
    return torch.zeros(H, B, N, N, device=device), torch.zeros(H, B, N, D, device=device)


@pytest.mark.parametrize('device', DEVICES)
def test_noise_is_the_documented_sample(device):
    """eps at position p = (b N + i) N + j of head h is normal p % 4 of Philox counter h ceil(P / 4) + p // 4
    (P = B N N positions per head) under the key of the seed the op drew, the four normals as logit_noise.py
    defines them: re-derived in numpy (float64 libm); N = 33, so that a head's last counter is cut short."""
    H, B, N = 3, 2, 33
    torch.manual_seed(7)
    z, *_ = mst.mix_noise_attend(*_zeros(H, B, N, device), *[None] * 6, 1.0, SLOPE)
    torch.manual_seed(7)
    seed = int(torch.randint(0, 2 ** 31 - 1, ()))  # the op's draw
    P = B * N * N
    h, p = torch.meshgrid(torch.arange(H), torch.arange(P), indexing='ij')
    counters = h * math.ceil(P / 4) + p // 4
    eps = philox_normals(counters.flatten().numpy(), seed)[torch.arange(counters.numel()), (p % 4).flatten()]
    # Cephes float32 polynomials vs float64 libm, as for the CPU noise
    torch.testing.assert_close(z.cpu().double().flatten(), torch.from_numpy(eps), rtol=0, atol=2e-5)


@pytest.mark.parametrize('device', DEVICES)
def test_noise_with_mix(device):
    """Mix and noise: the noise is N(0, sigma^2), a new draw per call, replayed by torch.manual_seed, and the
    gradients are the reference's at the noisy z."""
    ours, ref, eps = _run_both(H=3, B=2, N=40, device=device, sigma=1.0)
    _assert_close(ours, ref, rtol=1e-4, atol=2e-5)
    e = eps.flatten()
    assert abs(e.mean()) < 0.03 and abs(e.std() - 1) < 0.03, (e.mean(), e.std())

    s, v = torch.randn(3, 1, 20, 20, device=device), torch.randn(3, 1, 20, 8, device=device)
    w = [t.to(device) for t in _mlp(3)]
    torch.manual_seed(5)
    z1, o1, *_ = mst.mix_noise_attend(s, v, *w, 1.0, SLOPE)
    z2, o2, *_ = mst.mix_noise_attend(s, v, *w, 1.0, SLOPE)
    torch.manual_seed(5)
    z3, o3, *_ = mst.mix_noise_attend(s, v, *w, 1.0, SLOPE)
    assert torch.equal(z1, z3) and torch.equal(o1, o3) and not torch.allclose(z1, z2)


@pytest.mark.parametrize('device', DEVICES)
def test_flop_counter_counts_the_op(device):
    """FlopCounterMode, hand-computed: H = 3, F = 12 over B N N = 16 positions, D = 8: the MLP's 16 * 2 * (3*12
    + 12*12 + 12*3) = 6912 FLOPs and attn @ v's 2 * 3 * 16 * 8 = 768 forward, twice that backward."""
    from torch.utils.flop_counter import FlopCounterMode
    s, v = (t.requires_grad_() for t in _zeros(3, 1, 4, device))
    w = [t.to(device).requires_grad_() for t in _mlp(3)]
    with FlopCounterMode(display=False) as counter:
        z, o, *_ = mst.mix_noise_attend(s, v, *w, 0., SLOPE)
        (z.sum() + o.sum()).backward()
    assert counter.get_total_flops() == 3 * (6912 + 768)


@pytest.mark.parametrize('device', DEVICES)
def test_compiled_equals_eager(device):
    """torch.compile (fullgraph) keeps the op whole, with its fake shapes and its autograd: compiled, a loss of z
    and o gives eager's z, o and gradients, noise included (replayed by the same seed)."""
    s, v, gz, go = (t.to(device) for t in _inputs(3, 2, 16, 8, seed=0))
    go = go[:, :13]
    weights = [t.to(device) for t in _mlp(3)]

    def loss_of(s, v, *w):
        z, o, *_ = mst.mix_noise_attend(s, v, *w, 1.0, SLOPE, n_keys=13)
        return (z * gz).sum() + (o * go).sum(), z, o

    results = []
    for fn in (loss_of, torch.compile(loss_of, fullgraph=True)):
        torch.manual_seed(0)
        args = [t.clone().requires_grad_() for t in (s, v, *weights)]
        loss, z, o = fn(*args)
        loss.backward()
        results.append([z, o] + [a.grad for a in args])
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


def test_bad_arguments_are_refused():
    """A slope outside [0, 1] (the kernels compute LeakyReLU as max(a, slope a)), logits and values of other
    shapes, n_keys out of range: a ValueError that says what was expected."""
    s, v = _zeros(3, 1, 4, 'cpu')
    with pytest.raises(ValueError, match=r'slope in \[0, 1\].*got 1.5'):
        mst.mix_noise_attend(s, v, *_mlp(3), 0., 1.5)
    with pytest.raises(ValueError, match=r'\(H, B, T, T\).*\(H, B, T, D\), got \(3, 1, 4, 4\) and \(3, 1, 5, 8\)'):
        mst.mix_noise_attend(s, torch.zeros(3, 1, 5, 8), *_mlp(3), 0., SLOPE)
    with pytest.raises(ValueError, match=r'n_keys must be in \[1, 4\], got 5'):
        mst.mix_noise_attend(s, v, *_mlp(3), 0., SLOPE, n_keys=5)


def _errors(ours, ref):
    """max |ours - ref| / max |ref| per tensor, the denominator at least 1% of the largest of all tensors (a
    gradient that is 0 in exact arithmetic, e.g. the last block's fc3 bias, whose z feeds nothing, is then
    compared at the scale of the others, not at that of its rounding noise)."""
    floor = 1e-2 * max(float(r.abs().max()) for r in ref.values())
    return {k: float((ours[k].detach().double().cpu() - ref[k]).abs().max()) / max(float(ref[k].abs().max()), floor)
            for k in ref}


@pytest.mark.skipif(not torch.cuda.is_available(), reason='bfloat16 dots need a GPU (the interpreter has none)')
def test_bfloat16_no_worse_than_autocast_matmuls():
    """bfloat16 logits and values: every output and gradient is as close to the float64 reference as autocast's
    matmul path (HeadMix.forward, torch's noise-free float32 softmax, a bf16 batched matmul with v) gets on the
    same inputs, within a factor of 2."""
    from neatt.models.attention import HeadMix
    H, B, N, D = 12, 2, 197, 64
    ours, ref, _ = _run_both(H=H, B=B, N=N, device='cuda', dtype=torch.bfloat16, D=D)

    s, v, gz, go = (t.cuda() for t in _inputs(H, B, N, D, seed=0))
    s, v = (t.to(torch.bfloat16).requires_grad_() for t in (s, v))
    hm = HeadMix(H, negative_slope=SLOPE).cuda()
    params = [hm.fc1.weight, hm.fc1.bias, hm.fc2.weight, hm.fc2.bias, hm.fc3.weight, hm.fc3.bias]
    with torch.no_grad():
        for p, w in zip(params, _mlp(H)):
            p.copy_(w)
    with torch.autocast('cuda', dtype=torch.bfloat16):
        z = hm(s)
        attn = torch.softmax(z, dim=-1, dtype=torch.float32).to(torch.bfloat16)
        o = (attn @ v).permute(1, 2, 0, 3)
    ((z.float() * gz).sum() + (o.float() * go).sum()).backward()
    matmul = {'z': z, 'o': o, 'ds': s.grad, 'dv': v.grad, **{f'w{i}': p.grad for i, p in enumerate(params)}}
    ours_err, matmul_err = _errors(ours, ref), _errors(matmul, ref)
    print('relative errors, fused vs matmul path:', {k: (round(ours_err[k], 5), round(matmul_err[k], 5)) for k in ref})
    for k in ref:
        assert ours_err[k] <= 2 * matmul_err[k] + 1e-3, (k, ours_err[k], matmul_err[k])


def _model_run(model, x, monkeypatch, fused, amp=False):
    """Output and parameter gradients of one step with the fused path on or off, and the shapes of the logits
    that each block hands on."""
    monkeypatch.setattr(mst, 'available', lambda device, numel: fused)
    shapes = []
    hooks = [blk.attn.register_forward_hook(lambda mod, args, out: shapes.append(tuple(out[1].shape)))
             for blk in model.blocks]
    model.zero_grad()
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        out = model(x)
    out.float().square().mean().backward()
    for h in hooks:
        h.remove()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {'out': out.detach().float(), **grads}, shapes


@pytest.mark.parametrize('device', DEVICES)
def test_model_fused_padded_matches_matmul_path(device, monkeypatch):
    """A 3-block Ne-Att ViT on 32 px images (N = 65 tokens), float32, noise off: the fused path, whose logits
    are padded to 72 tokens, gives the matmul path's output and every parameter gradient (within 1e-4 of each
    tensor's scale)."""
    import timm
    import neatt  # noqa: F401  (registers the models)
    torch.manual_seed(0)
    model = timm.create_model('neatt_vit_tiny_patch4_32', depth=3, neatt_sigma=0.).to(device).train()
    x = torch.randn(2, 3, 32, 32, device=device)
    ref, ref_shapes = _model_run(model, x, monkeypatch, fused=False)
    fused, fused_shapes = _model_run(model, x, monkeypatch, fused=True)
    assert ref_shapes == [(3, 2, 65, 65)] * 3 and fused_shapes == [(3, 2, 72, 72)] * 3
    assert fused.keys() == ref.keys()
    ref = {k: v.double().cpu() for k, v in ref.items()}
    for k, e in _errors(fused, ref).items():
        assert e < 1e-4, (k, e)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='bfloat16 dots need a GPU (the interpreter has none)')
def test_model_bfloat16_fused_no_worse_than_matmul_path(monkeypatch):
    """ViT-Ti/16 at 224 px (N = 197, padded to 200 on the fused path), 3 blocks, noise off: under bf16 autocast
    the fused path is as close to the float32 matmul path's result as the matmul path under autocast is."""
    import timm
    import neatt  # noqa: F401  (registers the models)
    torch.manual_seed(0)
    model = timm.create_model('neatt_vit_tiny_patch16_224', depth=3, neatt_sigma=0.).cuda().train()
    x = torch.randn(4, 3, 224, 224, device='cuda')
    ref = {k: v.double().cpu() for k, v in _model_run(model, x, monkeypatch, fused=False)[0].items()}
    fused16 = _errors(_model_run(model, x, monkeypatch, fused=True, amp=True)[0], ref)
    matmul16 = _errors(_model_run(model, x, monkeypatch, fused=False, amp=True)[0], ref)
    worst = max(ref, key=lambda k: fused16[k] / (matmul16[k] + 1e-3))
    print('worst bf16 error, fused vs matmul:', worst, fused16[worst], matmul16[worst])
    for k in ref:
        assert fused16[k] <= 2 * matmul16[k] + 1e-3, (k, fused16[k], matmul16[k])


@pytest.mark.skipif(INTERPRETED or torch.cuda.is_available(),
                    reason='for machines without a GPU (with one, the tests above compile the kernels for it)')
@pytest.mark.parametrize('dtype', ['bf16', 'fp16', 'fp32'])
def test_kernels_compile_for_hopper(dtype):
    """The kernels in every combination that the op launches (the mix and the noise on or off, the biases
    folded into an MLP or not, with and without the next block's gradient of z), compiled for an H100 (sm_90)
    down to machine code by Triton's own ptxas, with no GPU needed: this catches what the interpreter runs but
    the compiler rejects (dot shapes, layouts, types)."""
    k = mst._kernels()

    def compile_for_sm90(kernel, settings, **constexprs):
        assert mst.compile_launch(kernel, settings, dtype=dtype, **constexprs).asm['cubin'], constexprs

    for mix, noise in ((True, True), (True, False), (False, True)):  # neither: z = s, no kernel
        for fold in (True, False) if mix else (False,):  # the biases are folded only into an MLP
            compile_for_sm90(k.mix_fwd, mst._MIX_FWD, HP=16, FP=64, MIX=mix, NOISE=noise, FOLD=fold)
    for fold in (True, False):
        compile_for_sm90(k.mix_bwd, mst._MIX_BWD, HP=16, FP=64, FOLD=fold)
    compile_for_sm90(k.attend_delta, {'num_warps': 4, 'BLOCK_R': mst._DELTA_ROWS}, DP=64)
    for align in (8, 1):  # token counts that are multiples of 8 (NestedAttention's), and others
        compile_for_sm90(k.attend_fwd, mst._ATTEND_FWD, ALIGN=align, DP=64)
        for has_gz in (True, False):
            compile_for_sm90(k.attend_bwd, mst._ATTEND_BWD, ALIGN=align, DP=64, HAS_GZ=has_gz)
