"""Ne-Att model: against timm's vanilla ViT, against a naive re-computation of NEATT.md, and its training hooks."""
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

import neatt  # noqa: F401  (registers the models)
from neatt.models import NeAttVisionTransformer
from neatt.models.attention import HeadMix
from _model_data import TINY, randomize_head_mix, real_images
from _noise_reference import next_logit_noise


def _model(**kwargs) -> NeAttVisionTransformer:
    torch.manual_seed(0)
    return NeAttVisionTransformer(**dict(TINY, **kwargs))


def _naive_forward(model: NeAttVisionTransformer, images: torch.Tensor, noise: bool) -> torch.Tensor:
    """NEATT.md written out directly: a python loop over blocks, g_l applied position by position.

    Uses only the model's weights (and timm's embedding/head, checked against timm in the vanilla test).
    Noise is drawn in block order as the model documents, on head-major (H, B, N, N) logits: on CPU the
    Philox/Box-Muller sample of neatt/models/logit_noise.py, re-derived in numpy by tests/_noise_reference.py.
    """
    x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))
    B, N, C = x.shape
    H = model.blocks[0].attn.num_heads
    d = C // H
    z_prev = None
    for layer, blk in enumerate(model.blocks):
        attn = blk.attn
        h = blk.norm1(x)
        qkv = h @ attn.qkv.weight.t() + attn.qkv.bias
        q, k, v = (qkv[..., i * C:(i + 1) * C].reshape(B, N, H, d).transpose(1, 2) for i in range(3))
        a = torch.einsum('bhnd,bhmd->bhnm', q, k) / math.sqrt(d)
        if layer == 0:
            z = a
        else:
            s = a + z_prev if model.neatt_chain else a
            z = s.clone()
            if model.neatt_mix:
                g = attn.head_mix
                for i in range(N):
                    for j in range(N):
                        u = F.leaky_relu(g.fc1(s[:, :, i, j]), 0.2)
                        u = F.leaky_relu(g.fc2(u), 0.2)
                        z[:, :, i, j] = s[:, :, i, j] + g.fc3(u)
        if noise:
            z = z + model.neatt_sigma * next_logit_noise((H, B, N, N)).transpose(0, 1)
        p = torch.softmax(z, dim=-1)
        o = (p @ v).transpose(1, 2).reshape(B, N, C)
        x = x + attn.proj(o)
        x = x + blk.mlp(blk.norm2(x))
        z_prev = z
    return model.forward_head(model.norm(x))


def test_registered_models_build_and_match_timm_keys():
    """Every neatt_vit_* builds (depth cut to 1), runs forward + backward, and has its vit_* keys and shapes."""
    names = timm.list_models('neatt_vit_*')
    assert {'neatt_vit_tiny_patch16_224', 'neatt_vit_small_patch16_224', 'neatt_vit_base_patch16_224',
            'neatt_vit_large_patch16_224', 'neatt_vit_tiny_patch4_32'} <= set(names)
    for name in names:
        model = timm.create_model(name, depth=2, num_classes=3)
        vanilla = timm.create_model(name.replace('neatt_', '').replace('_patch4_32', '_patch16_224'),
                                    depth=2, num_classes=3, img_size=model.patch_embed.img_size,
                                    patch_size=model.patch_embed.patch_size)
        ours = {k: v.shape for k, v in model.state_dict().items() if '.head_mix.' not in k}
        assert ours == {k: v.shape for k, v in vanilla.state_dict().items()}, name
        assert any('.head_mix.' in k for k in model.state_dict()), name
        size = model.pretrained_cfg['input_size']
        out = model(torch.randn(1, *size))
        out.sum().backward()
        assert out.shape == (1, 3)


@pytest.mark.parametrize('train', [False, True])
def test_all_off_equals_timm_vanilla_vit(train):
    """Mixing, chaining and noise off: same logits as timm's own VisionTransformer with the same weights."""
    model = _model(neatt_mix=False, neatt_chain=False, neatt_sigma=0.0)
    vanilla = VisionTransformer(**TINY)
    vanilla.load_state_dict(model.state_dict(), strict=True)  # identical keys: no head_mix at all
    model.train(train), vanilla.train(train)
    x = real_images(2)
    torch.testing.assert_close(model(x), vanilla(x), rtol=1e-5, atol=1e-6)


def test_dynamic_img_size_other_resolutions_match_timm_and_the_equations():
    """timm's dynamic_img_size (progressive resizing trains with it): at 24 and 48 px, all parts off equals timm's
    own ViT with the same option (position embedding resampled to the input's grid); all parts on equals the
    naive re-computation. At the built size nothing changes."""
    model = _model(neatt_sigma=0.0, dynamic_img_size=True).eval()
    randomize_head_mix(model)
    fixed = _model(neatt_sigma=0.0).eval()
    fixed.load_state_dict(model.state_dict())
    off = _model(neatt_mix=False, neatt_chain=False, neatt_sigma=0.0, dynamic_img_size=True).eval()
    vanilla = VisionTransformer(**TINY, dynamic_img_size=True).eval()
    vanilla.load_state_dict(off.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(real_images(2)), fixed(real_images(2)), rtol=0, atol=0)
        for size in (24, 48):
            x = real_images(2, size=size)
            torch.testing.assert_close(model(x), _naive_forward(model, x, noise=False), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(off(x), vanilla(x), rtol=1e-5, atol=1e-6)


def test_all_off_in_eval_ignores_sigma():
    """Eval mode never samples noise, so a sigma > 0 model is still the vanilla ViT there."""
    model = _model(neatt_mix=False, neatt_chain=False, neatt_sigma=1.0).eval()
    vanilla = VisionTransformer(**TINY).eval()
    vanilla.load_state_dict(model.state_dict())
    x = real_images(2)
    torch.testing.assert_close(model(x), vanilla(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('mix,chain', [(True, True), (True, False), (False, True)])
def test_matches_naive_reference_without_noise(mix, chain):
    model = _model(neatt_mix=mix, neatt_chain=chain).eval()
    randomize_head_mix(model)
    x = real_images(2)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _naive_forward(model, x, noise=False), rtol=1e-4, atol=1e-5)


def test_gradients_match_naive_reference():
    """Backward (custom LeakyReLU, folded residual, head-major GEMMs) against autograd through the naive loop."""
    model = _model().train()
    randomize_head_mix(model)
    for blk in model.blocks:
        blk.attn.neatt_sigma = 0.0
    x = real_images(2)
    model(x).logsumexp(-1).sum().backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    _naive_forward(model, x, noise=False).logsumexp(-1).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(ours[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize('mix,chain', [(True, True), (False, False)])
def test_matches_naive_reference_with_seeded_noise(mix, chain):
    """Train mode, sigma 0.7: the same seed gives the model and the reference the same eps."""
    model = _model(neatt_mix=mix, neatt_chain=chain, neatt_sigma=0.7).train()
    randomize_head_mix(model)
    x = real_images(2)
    with torch.no_grad():
        torch.manual_seed(123)
        ours = model(x)
        torch.manual_seed(123)
        ref = _naive_forward(model, x, noise=True)
        torch.manual_seed(123)
        ref_other_model = _naive_forward(model, x, noise=False)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(ours, ref_other_model, atol=1e-3)  # the noise did change the output


def test_train_samples_noise_eval_does_not():
    model = _model()
    x = real_images(2)
    with torch.no_grad():
        model.eval()
        e1, e2 = model(x), model(x)
        model.train()
        t1, t2 = model(x), model(x)
        model.neatt_sigma = 0.0
        for blk in model.blocks:
            blk.attn.neatt_sigma = 0.0
        t0 = model(x)
    torch.testing.assert_close(e1, e2, rtol=0, atol=0)
    assert not torch.allclose(t1, t2, atol=1e-4)
    assert not torch.allclose(t1, e1, atol=1e-4)
    torch.testing.assert_close(t0, e1, rtol=1e-6, atol=1e-6)  # train without noise = eval (no dropout here)


def test_gradients_reach_every_head_mix():
    model = _model().train()
    model(real_images(2)).logsumexp(-1).sum().backward()
    mixes = {n: p for n, p in model.named_parameters() if '.head_mix.' in n}
    assert len(mixes) == 6 * (TINY['depth'] - 1)  # fc1-3 weight+bias in every block but the first
    for n, p in mixes.items():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n


@pytest.mark.parametrize('chain', [True, False])
def test_gradient_flows_through_the_chain(chain):
    """Block 3's output depends on block 2's head_mix only through z_2 when block 3's x input is detached."""
    model = _model(neatt_chain=chain).train()
    x = model._pos_embed(model.patch_embed(real_images(2)))
    x, z = model.blocks[0](x, None)
    x, z = model.blocks[1](x, z)
    out, _ = model.blocks[2](x.detach(), z)
    out.square().sum().backward()
    grad = model.blocks[1].attn.head_mix.fc1.weight.grad
    if chain:
        assert grad is not None and grad.abs().sum() > 0
    else:
        assert grad is None and z is None


def test_grad_checkpointing_gives_same_grads():
    """Checkpointed blocks recompute with the same noise (RNG state is restored) and pass z through."""
    x = real_images(2)
    grads = []
    for ckpt in (False, True):
        model = _model(neatt_sigma=0.5).train()
        model.set_grad_checkpointing(ckpt)
        torch.manual_seed(7)
        model(x).logsumexp(-1).sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for n, g in grads[0].items():
        torch.testing.assert_close(grads[1][n], g, rtol=1e-5, atol=1e-7, msg=n)


def test_channels_last_input():
    model = _model().eval()
    x = real_images(2)
    with torch.no_grad():
        torch.testing.assert_close(model(x.contiguous(memory_format=torch.channels_last)), model(x),
                                   rtol=1e-5, atol=1e-6)


def test_bf16_autocast_softmax_stays_finite():
    """Logits far beyond bf16's precision (chained, noisy, q scaled up) still give finite, fp32-like outputs."""
    model = _model(neatt_sigma=5.0).train()
    randomize_head_mix(model)
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.qkv.weight[:48].mul_(30.)  # q rows: logits in the thousands
    x = real_images(2)
    torch.manual_seed(3)
    ref = model(x)
    torch.manual_seed(3)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    out.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert torch.isfinite(ref).all()


@pytest.mark.slow
@pytest.mark.parametrize('sigma', [0.0, 0.5])
def test_compiled_equals_eager(sigma):
    """Train mode: same logits and same grads. With noise, the same seed must give the same eps: on CPU the noise
    is an opaque op that draws from the global RNG (inductor's own randn would draw other numbers)."""
    model = _model(depth=2, neatt_sigma=sigma).train()
    randomize_head_mix(model)
    x = real_images(2)
    torch.manual_seed(5)
    out = torch.compile(model)(x)
    out.logsumexp(-1).sum().backward()
    g_compiled = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    torch.manual_seed(5)
    ref = model(x)
    ref.logsumexp(-1).sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(g_compiled[n], p.grad, rtol=1e-3, atol=1e-5, msg=n)


@pytest.mark.slow
def test_compiled_with_a_graph_per_resolution_equals_eager():
    """What the trainer compiles under progressive resizing (dynamic=False: a static graph per train resolution):
    each resolution's logits and grads are eager's, and going back to a size reuses its graph."""
    model = _model(depth=2, neatt_sigma=0.0, dynamic_img_size=True).train()
    randomize_head_mix(model)
    compiled = torch.compile(model, dynamic=False)
    for size in (16, 32, 16):
        x = real_images(2, size=size)
        out = compiled(x)
        out.logsumexp(-1).sum().backward()
        g_compiled = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad()
        ref = model(x)
        ref.logsumexp(-1).sum().backward()
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
        for n, p in model.named_parameters():
            torch.testing.assert_close(g_compiled[n], p.grad, rtol=1e-3, atol=1e-5, msg=n)
        model.zero_grad()


def test_wrong_image_size_names_the_expected_size():
    model = _model().eval()
    with pytest.raises(ValueError, match=r'expects 32x32 images, got 48x48'):
        model(real_images(1, size=48))
    with pytest.raises(ValueError, match=r'\(B, 3, H, W\)'):
        model(torch.zeros(1, 1, 32, 32))


def test_unknown_model_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown Ne-Att model 'neatt_vit_huge_patch99'.*neatt_vit_tiny_patch4_32"):
        neatt.models.create_model('neatt_vit_huge_patch99')


def test_bad_constructor_args():
    with pytest.raises(ValueError, match='neatt_sigma'):
        _model(neatt_sigma=-1.0)
    with pytest.raises(ValueError, match=r'negative_slope must be in \[0, 1\], got 1.5'):
        HeadMix(4, negative_slope=1.5)
    with pytest.raises(ValueError, match='no released weights'):
        timm.create_model('neatt_vit_tiny_patch4_32', pretrained=True)
