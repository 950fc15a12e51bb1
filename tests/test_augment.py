"""DeviceAugment end to end: normalization, flip, the drawn ops replayed with timm's PIL ops, determinism."""
import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.data import auto_augment as taa

from pipelines.augment import AugmentConfig, DeviceAugment
from tests._augment_data import photos, to_batch
from tests._cuda import no_host_sync

torch.set_num_threads(1)
EVAL = dict(aa=None, reprob=0.0, hflip=0.0)


def _batch(repeat=1):
    return to_batch(photos() * repeat)


def _to_levels(out: torch.Tensor, cfg: AugmentConfig) -> np.ndarray:
    """Undo the normalization: float (N, 3, H, W) -> 0..255 levels (N, H, W, 3) as floats."""
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std).view(1, 3, 1, 1)
    return ((out.cpu() * std + mean) * 255).permute(0, 2, 3, 1).numpy()


def test_normalize_only_matches_hand_computation():
    x = _batch()
    cfg = AugmentConfig(**EVAL)
    out = DeviceAugment(cfg)(x)
    ref = np.stack([np.asarray(im) for im in photos()]).astype(np.float64) / 255.0
    ref = (ref - np.array(IMAGENET_DEFAULT_MEAN)) / np.array(IMAGENET_DEFAULT_STD)
    np.testing.assert_allclose(out.permute(0, 2, 3, 1).numpy(), ref, rtol=0, atol=2e-6)


def test_output_is_float_channels_last_on_input_device_and_input_untouched():
    x = _batch()
    before = x.clone()
    out = DeviceAugment(AugmentConfig(aa='v0', reprob=0.5))(x, torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32 and out.device == x.device and out.shape == x.shape
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x, before)


def test_contiguous_and_channels_last_inputs_give_the_same_result():
    x = _batch(2)
    aug = DeviceAugment(AugmentConfig(aa='rand-m9-mstd0.5-inc1', reprob=0.5, remode='const'))
    a = aug(x, torch.Generator().manual_seed(5))
    b = aug(x.contiguous(), torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_hflip_one_flips_every_image():
    x = _batch()
    cfg = AugmentConfig(**dict(EVAL, hflip=1.0))
    out = DeviceAugment(cfg)(x, torch.Generator().manual_seed(0))
    ref = DeviceAugment(AugmentConfig(**EVAL))(x.flip(3))
    assert torch.equal(out, ref)


def _timm_op(im: Image.Image, name: str, arg: float, **kwargs) -> Image.Image:
    """timm's PIL op `name` at the argument DeviceAugment drew for it."""
    if name.startswith('Posterize') and arg == 0:
        return Image.new('RGB', im.size)  # 0 bits: black (Pillow refuses 0 bits)
    if name == 'GaussianBlurRand':
        return taa.gaussian_blur(im, arg)  # the radius timm's op would draw (its law: test_augment_policy)
    if taa.LEVEL_TO_ARG[name] is None:
        return taa.NAME_TO_OP[name](im, **kwargs)
    return taa.NAME_TO_OP[name](im, int(arg) if name.startswith(('Posterize', 'Solarize')) else arg, **kwargs)


def _replay_with_timm(aug: DeviceAugment, x: torch.Tensor, seed: int, resample) -> list:
    """Every image's drawn ops (no flip, no erasing) replayed one by one with timm's PIL op functions."""
    draw = aug.policy.sample(x.shape[0], torch.Generator().manual_seed(seed))
    kwargs = dict(fillcolor=aug.cfg.fill, resample=resample)
    images, applied = [], 0
    for i, im in enumerate(photos() * (x.shape[0] // len(photos()))):
        for slot in range(aug.policy.num_layers):
            if draw.apply[i, slot]:
                im = _timm_op(im, aug.policy.op_names[int(draw.op[i, slot])], float(draw.arg[i, slot]), **kwargs)
                applied += 1
        images.append(np.asarray(im, dtype=np.float64))
    assert applied >= x.shape[0] // 2
    return images


@pytest.mark.parametrize('aa', ['v0', 'rand-m9-mstd0.5-inc1', '3a', 'rand-m9-n2-mstd0.5-t3a'])
def test_drawn_ops_replayed_with_timm_pil_ops_give_the_same_images(aa):
    """The batched torch path: every image's drawn ops, replayed one by one with timm's PIL op functions, give
    our output.

    Bilinear warps (each within 1 level of PIL); where a warp precedes a histogram op (Equalize,
    AutoContrast) a 1-level difference can move a pixel to the next histogram step, hence the quantile bound.
    """
    x = _batch(8)
    cfg = AugmentConfig(aa=aa, reprob=0.0, hflip=0.0, interpolation='bilinear')
    aug = DeviceAugment(cfg, compiled_cpu=False)
    out = _to_levels(aug(x, torch.Generator().manual_seed(11)), cfg)
    # with no flip and no erasing, the policy's draws are the only ones taken from the generator
    for i, ref in enumerate(_replay_with_timm(aug, x, 11, Image.BILINEAR)):
        diff = np.abs(out[i] - ref)
        assert diff.max() < 2.5 or np.quantile(diff, 0.99) < 2.5, (i, diff.max())


@pytest.mark.parametrize('interpolation,resample', [('bicubic', Image.BICUBIC), ('bilinear', Image.BILINEAR)])
@pytest.mark.parametrize('aa', ['v0', 'rand-m9-mstd0.5-inc1', '3a', 'rand-m9-n2-mstd0.5-t3a'])
def test_compiled_cpu_path_gives_timm_pil_images(aa, interpolation, resample):
    """The compiled CPU path (the default on CPU) does Pillow's arithmetic: the replayed PIL chain exactly,
    up to the float32 normalization (1e-3 levels)."""
    x = _batch(8)
    cfg = AugmentConfig(aa=aa, reprob=0.0, hflip=0.0, interpolation=interpolation)
    aug = DeviceAugment(cfg)
    out = _to_levels(aug(x, torch.Generator().manual_seed(11)), cfg)
    for i, ref in enumerate(_replay_with_timm(aug, x, 11, resample)):
        np.testing.assert_allclose(out[i], ref, rtol=0, atol=1e-3, err_msg=f'image {i}')


_JITTER_TV = {'Brightness': 'adjust_brightness', 'Contrast': 'adjust_contrast', 'Color': 'adjust_saturation'}


@pytest.mark.parametrize('compiled', [True, False], ids=['compiled', 'batched'])
@pytest.mark.parametrize('aa', [None, '3a'])
def test_color_jitter_replayed_with_torchvision_pil_ops(aa, compiled):
    """--color-jitter 0.4 (alone, and after DeiT III's 3a): each image's drawn plan replayed with timm's PIL aa
    ops, then torchvision's PIL adjust_brightness/contrast/saturation in the drawn order. The compiled CPU path
    gives those pixels (float32 normalization aside); the batched torch ops come within a level or two."""
    import torchvision.transforms.functional as TF
    x = _batch(2)
    cfg = AugmentConfig(aa=aa, color_jitter=0.4, reprob=0.0, hflip=0.0)
    aug = DeviceAugment(cfg, compiled_cpu=compiled)
    out = _to_levels(aug(x, torch.Generator().manual_seed(5)), cfg)
    plan = aug._draw_ops(x.shape[0], x.shape[2], x.shape[3], torch.Generator().manual_seed(5))  # the same draws
    n_aa = aug.policy.num_layers if aa else 0
    assert plan.key.shape[1] == n_aa + 3
    jittered = set()
    for i, im in enumerate(photos() * 2):
        for slot in range(plan.key.shape[1]):
            key = int(plan.key[i, slot])
            if key < 0:
                continue
            name, arg = aug.op_names[key], float(plan.arg[i, slot])
            if slot >= n_aa:
                im = getattr(TF, _JITTER_TV[name])(im, arg)
                jittered.add(name)
            else:
                im = _timm_op(im, name, arg)
        diff = np.abs(out[i] - np.asarray(im, dtype=np.float64))
        assert diff.max() < (1e-3 if compiled else 2.5), (i, diff.max())
    assert jittered == set(_JITTER_TV)


def test_color_jitter_draws_follow_torchvision():
    """The factors and the order of the three ops follow torchvision's ColorJitter(0.3, 0.3, 0.3).get_params:
    each of the 6 orders about 1/6 of the time, and the factors' quantiles alike."""
    from torchvision.transforms import ColorJitter
    n = 12000
    aug = DeviceAugment(AugmentConfig(color_jitter=0.3, reprob=0.0, hflip=0.0))
    plan = aug._draw_ops(n, 8, 8, torch.Generator().manual_seed(0))
    ours_order = [tuple(aug.op_names[k] for k in row) for row in plan.key.tolist()]
    ours_factor = plan.arg[plan.key == aug.op_names.index('Contrast')].numpy()
    cj = ColorJitter(0.3, 0.3, 0.3)
    torch.manual_seed(0)
    ref_order, ref_factor = [], []
    for _ in range(n):
        fn_idx, b, c, s, _ = cj.get_params(cj.brightness, cj.contrast, cj.saturation, cj.hue)
        ref_order.append(tuple(('Brightness', 'Contrast', 'Color')[int(i)] for i in fn_idx if int(i) < 3))
        ref_factor.append(c)
    for order in set(ref_order):
        for got in (ours_order.count(order) / n, ref_order.count(order) / n):
            assert abs(got - 1 / 6) < 4.5 * (5 / 36 / n) ** 0.5, (order, got)
    assert set(ours_order) == set(ref_order) and len(set(ours_order)) == 6
    for q in (0.05, 0.25, 0.5, 0.75, 0.95):
        assert abs(np.quantile(ours_factor, q) - np.quantile(ref_factor, q)) < 0.6 * 4.5 * (q * (1 - q) / n) ** 0.5
    assert 0.7 <= ours_factor.min() and ours_factor.max() <= 1.3


def test_compiled_and_batched_paths_draw_the_same_choices():
    """Same seed, both CPU paths: the same flips, ops and erasing boxes (so CPU and GPU runs agree); pixels
    within the batched path's bilinear tolerance (see above), the erased boxes ('const': 0) identical."""
    x = _batch(8)
    cfg = AugmentConfig(aa='v0', reprob=0.5, remode='const', hflip=0.5, interpolation='bilinear')
    a = DeviceAugment(cfg)(x, torch.Generator().manual_seed(3))
    b = DeviceAugment(cfg, compiled_cpu=False)(x, torch.Generator().manual_seed(3))
    assert torch.equal(a == 0, b == 0)
    diff = np.abs(_to_levels(a, cfg) - _to_levels(b, cfg))
    assert np.quantile(diff, 0.99) < 2.5, np.quantile(diff, 0.99)


def test_images_in_one_batch_get_different_ops():
    x = to_batch([photos()[0]] * 32)  # the same photo 32 times
    out = DeviceAugment(AugmentConfig(aa='v0', reprob=0.0, hflip=0.0))(x, torch.Generator().manual_seed(0))
    distinct = {out[i].numpy().tobytes() for i in range(32)}
    assert len(distinct) >= 16


def test_same_seed_same_batch_other_seed_other_batch():
    x = _batch(2)
    aug = DeviceAugment(AugmentConfig(aa='rand-m9-mstd0.5-inc1', reprob=0.5, remode='pixel'))
    a, b = (aug(x, torch.Generator().manual_seed(7)) for _ in range(2))
    c = aug(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_chunk_size_does_not_change_the_result():
    x = _batch(3)
    cfg = AugmentConfig(aa='v0', reprob=0.5, remode='const', recount=2)
    a = DeviceAugment(cfg, chunk_size=5, compiled_cpu=False)(x, torch.Generator().manual_seed(2))
    b = DeviceAugment(cfg, chunk_size=64, compiled_cpu=False)(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b)


def test_out_buffer_receives_the_result():
    x = _batch()
    aug = DeviceAugment(AugmentConfig(aa='v0', reprob=0.5))
    buf = torch.empty(x.shape, memory_format=torch.channels_last)
    res = aug(x, torch.Generator().manual_seed(4), out=buf)
    assert res is buf and torch.equal(buf, aug(x, torch.Generator().manual_seed(4)))
    with pytest.raises(ValueError, match='out must be'):
        aug(x, out=torch.empty(x.shape))  # not channels_last


@pytest.mark.parametrize('images,fragment', [
    (torch.zeros(2, 3, 8, 8), 'uint8'),
    (torch.zeros(3, 8, 8, dtype=torch.uint8), 'uint8'),
    (torch.zeros(2, 1, 8, 8, dtype=torch.uint8), 'channels'),
])
def test_bad_batches_raise_a_clear_error(images, fragment):
    with pytest.raises(ValueError, match=fragment):
        DeviceAugment(AugmentConfig(aa='v0'))(images)


@pytest.mark.parametrize('kwargs,flag', [
    (dict(reprob=1.5), '--reprob'), (dict(remode='gauss'), '--remode'), (dict(recount=0), '--recount'),
    (dict(hflip=-0.1), '--hflip'), (dict(interpolation='lanczos'), '--train-interpolation'),
    (dict(aa='rand-z3'), '--aa'),
])
def test_bad_config_names_the_flag(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        DeviceAugment(AugmentConfig(**kwargs))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
@pytest.mark.parametrize('aa,color_jitter', [('rand-m9-mstd0.5-inc1', 0.0), ('3a', 0.3)])
def test_cuda_matches_cpu(aa, color_jitter):
    """Same CPU generator seed: the same choices on both devices, same pixels up to the warps' float math."""
    x = _batch(4)
    cfg = AugmentConfig(aa=aa, color_jitter=color_jitter, reprob=0.5, remode='const', interpolation='bilinear')
    aug = DeviceAugment(cfg)
    cpu = aug(x, torch.Generator().manual_seed(3))
    cuda = aug(x.cuda(), torch.Generator().manual_seed(3))
    assert cuda.device.type == 'cuda' and cuda.is_contiguous(memory_format=torch.channels_last)
    diff = np.abs(_to_levels(cuda, cfg) - _to_levels(cpu, cfg))
    assert np.quantile(diff, 0.99) < 1.5
    with pytest.raises(ValueError, match='CPU torch.Generator'):
        aug(x.cuda(), torch.Generator(device='cuda'))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
@pytest.mark.parametrize('aa,color_jitter,remode', [('v0', 0.0, 'pixel'), ('rand-m9-mstd0.5-inc1', 0.0, 'rand'),
                                                    ('3a', 0.3, 'const'), ('original', 0.4, 'pixel')])
def test_cuda_augment_never_waits_for_the_gpu(aa, color_jitter, remode):
    """A GPU batch's augmentation makes no host-device synchronization (torch's sync debug mode raises on one).
    In a train step a sync would drain the GPU's queue, the previous step, before the augmentation is launched,
    and the trainer would log that wait as data stall. The first call may sync (it caches constants)."""
    x = _batch(16).cuda()
    aug = DeviceAugment(AugmentConfig(aa=aa, color_jitter=color_jitter, reprob=1.0, recount=2, remode=remode,
                                      interpolation='random'))
    aug(x, torch.Generator().manual_seed(0))
    torch.cuda.synchronize()
    with no_host_sync():
        for seed in range(1, 9):
            aug(x, torch.Generator().manual_seed(seed))
