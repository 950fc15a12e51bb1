"""Each batched op against timm's PIL op (timm.data.auto_augment) on real photos, one argument per image."""
import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import auto_augment as taa

from pipelines.augment import ops
from tests._augment_data import HEIGHT, WIDTH, photos, to_arrays, to_batch

FILL = (124, 116, 104)  # timm's img_mean for the ImageNet mean, as create_transform computes it
torch.set_num_threads(1)


def _timm(name, args, **kwargs):
    """timm's PIL op per image (image i with args[i]) -> (N, H, W, 3) int array."""
    fn = taa.NAME_TO_OP[name]
    out = [fn(im, *([] if a is None else [a]), **kwargs) for im, a in zip(photos(), args)]
    return np.stack([np.asarray(im) for im in out]).astype(int)


def _ours(name, args):
    x = to_batch(photos())
    a = torch.tensor([0.0 if v is None else float(v) for v in args], dtype=torch.float64)
    return x, to_arrays(ops.COLOR_OPS[name](x, a)).astype(int)


# (op, one argument per photo, allowed difference): exact where PIL's integer or float32 arithmetic is
# reproduced step by step; 1 level on a few pixels where the last float rounding can differ (fused
# multiply-add in torch's vectorized loops vs PIL's scalar C, at values landing exactly on an integer).
COLOR_CASES = [
    ('Invert', [None] * 6, 'exact'),
    ('Posterize', [1, 2, 3, 4, 6, 8], 'exact'),
    ('Solarize', [0, 1, 77, 128, 255, 256], 'exact'),
    ('SolarizeAdd', [0, 1, 30, 60, 110, 128], 'exact'),
    ('Equalize', [None] * 6, 'exact'),
    ('AutoContrast', [None] * 6, 'one_level'),
    ('Color', [0.1, 0.46, 1.0, 1.27, 1.9, 0.73], 'one_level'),
    ('Contrast', [0.1, 0.46, 1.0, 1.27, 1.9, 0.73], 'one_level'),
    ('Brightness', [0.1, 0.46, 1.0, 1.27, 1.9, 0.73], 'one_level'),
    ('Sharpness', [0.1, 0.46, 1.0, 1.27, 1.9, 0.73], 'one_level'),
    ('Desaturate', [0.0, 0.3, 0.5, 0.75, 1.0, 1.2], 'one_level'),
    ('GaussianBlur', [0.1, 0.37, 1.0, 1.5, 2.0, 60.0], 'exact'),  # 60: the box is wider than the image
]


@pytest.mark.parametrize('name,args,tolerance', COLOR_CASES, ids=[c[0] for c in COLOR_CASES])
def test_color_op_matches_timm_pil(name, args, tolerance):
    x, ours = _ours(name, args)
    ref = _timm(name, args)
    diff = np.abs(ours - ref)
    if tolerance == 'exact':
        assert diff.max() == 0, f'{name}: {np.count_nonzero(diff)} values differ from timm'
    else:
        assert diff.max() <= 1 and np.mean(diff > 0) < 0.005, (name, diff.max(), np.mean(diff > 0))
    assert not np.array_equal(ours, to_arrays(x)) or name == 'SolarizeAdd'  # the op did something


def test_posterize_zero_bits_is_black():
    """v0 asks for 0 bits (Pillow >= 11 refuses them): keep no bit, as the TF EfficientNet posterize does."""
    x = to_batch(photos())
    bits = torch.tensor([0, 0, 1, 0, 2, 0], dtype=torch.float64)
    out = to_arrays(ops.posterize(x, bits))
    arrays = to_arrays(x)
    # reference without PIL: keep the high `bits` bits, mask 0 for 0 bits
    ref = np.stack([a & np.uint8((0xFF << (8 - int(b))) & 0xFF) for a, b in zip(arrays, bits.tolist())])
    np.testing.assert_array_equal(out, ref)
    assert out[0].max() == 0 and out[2].max() > 0


GEOMETRIC_CASES = [
    ('Rotate', [-30.0, -7.5, 0.5, 12.0, 27.0, 30.0]),
    ('ShearX', [-0.3, -0.1, 0.05, 0.15, 0.27, 0.3]),
    ('ShearY', [-0.3, -0.1, 0.05, 0.15, 0.27, 0.3]),
    ('TranslateXRel', [-0.45, -0.1, 0.02, 0.15, 0.333, 0.45]),
    ('TranslateYRel', [-0.45, -0.1, 0.02, 0.15, 0.333, 0.45]),
    ('TranslateX', [-25.0, -3.5, 0.25, 7.0, 11.25, 25.0]),
    ('TranslateY', [-25.0, -3.5, 0.25, 7.0, 11.25, 25.0]),
]


def _warp(name, args, bicubic):
    x = to_batch(photos())
    a = torch.tensor(args, dtype=torch.float64)
    return to_arrays(ops.warp_affine(x, ops.affine_matrix(name, a, HEIGHT, WIDTH), FILL, bicubic)).astype(int)


@pytest.mark.parametrize('name,args', GEOMETRIC_CASES, ids=[c[0] for c in GEOMETRIC_CASES])
def test_geometric_op_bilinear_matches_timm_pil(name, args):
    """Bilinear: at most 1 level off (our sample points are float32, PIL's double), fill painted alike."""
    ref = _timm(name, args, resample=Image.BILINEAR, fillcolor=FILL)
    diff = np.abs(_warp(name, args, bicubic=False) - ref)
    assert diff.max() <= 1, (name, diff.max())
    assert np.mean(diff > 0) < 0.2, (name, np.mean(diff > 0))


@pytest.mark.parametrize('name,args', GEOMETRIC_CASES, ids=[c[0] for c in GEOMETRIC_CASES])
def test_geometric_op_bicubic_close_to_timm_pil(name, args):
    """Bicubic 2-D warp (DeviceAugment uses it for Rotate): torch's grid_sample uses the a = -0.75 cubic, PIL's
    affine transform the a = -1 one (sharper).

    Measured on these photos: mean difference <= 1.1 levels, 99th percentile <= 7; so the bounds are 1.5
    and 10 levels. The fill (out-of-image) region is the same up to pixels on its edge.
    """
    ref = _timm(name, args, resample=Image.BICUBIC, fillcolor=FILL)
    ours = _warp(name, args, bicubic=True)
    diff = np.abs(ours - ref)
    assert diff.mean() <= 1.5 and np.percentile(diff, 99) <= 10, (name, diff.mean(), np.percentile(diff, 99))
    fill_ref, fill_ours = (np.all(a == FILL, axis=-1) for a in (ref, ours))
    assert np.mean(fill_ref != fill_ours) < 0.02


AXIS_CASES = [c for c in GEOMETRIC_CASES if c[0] in ops.AXIS_OPS]


@pytest.mark.parametrize('bicubic', [False, True], ids=['bilinear', 'bicubic'])
@pytest.mark.parametrize('name,args', AXIS_CASES, ids=[c[0] for c in AXIS_CASES])
def test_shear_and_translate_match_timm_pil(name, args, bicubic):
    """The 1-D path DeviceAugment uses for shears and translations applies PIL's own filter (bicubic a = -1):
    at most 1 level off, on under 3% of values (float32 weights vs PIL's double)."""
    x = to_batch(photos())
    m = ops.affine_matrix(name, torch.tensor(args, dtype=torch.float64), HEIGHT, WIDTH)
    ours = to_arrays(ops.warp_axis(x, m, FILL, bicubic, ops.AXIS_OPS[name])).astype(int)
    ref = _timm(name, args, resample=Image.BICUBIC if bicubic else Image.BILINEAR, fillcolor=FILL)
    diff = np.abs(ours - ref)
    assert diff.max() <= 1 and np.mean(diff > 0) < 0.03, (name, diff.max(), np.mean(diff > 0))


def test_rotate_turns_counter_clockwise_about_the_centre():
    """A hand-made check independent of PIL: +90 degrees moves the top-right corner to the top-left."""
    x = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    x[:, :, 0, 7] = 200  # top-right pixel
    out = ops.warp_affine(x, ops.affine_matrix('Rotate', torch.tensor([90.0], dtype=torch.float64), 8, 8),
                          (0, 0, 0), bicubic=False)
    assert out[0, 0, 0, 0] == 200 and out[0, 0].sum() == 200


@pytest.mark.parametrize('name,arg', [('Rotate', 0.0), ('ShearX', 0.0), ('ShearY', 0.0), ('TranslateXRel', 0.0),
                                      ('Solarize', 256), ('SolarizeAdd', 0), ('Posterize', 8), ('Color', 1.0),
                                      ('Contrast', 1.0), ('Brightness', 1.0), ('Sharpness', 1.0)])
def test_identity_arguments_leave_timm_pil_images_unchanged(name, arg):
    """DeviceAugment skips ops at these arguments (ops.is_identity); PIL indeed returns the same pixels."""
    assert bool(ops.is_identity(name, torch.tensor([float(arg)], dtype=torch.float64)))
    kwargs = dict(resample=Image.BICUBIC, fillcolor=FILL) if name in ops.GEOMETRIC_OPS else {}
    ref = _timm(name, [arg] * 6, **kwargs)
    np.testing.assert_array_equal(ref, to_arrays(to_batch(photos())).astype(int))
