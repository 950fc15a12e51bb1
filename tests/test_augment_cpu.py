"""The compiled CPU path (pipelines/augment/cpu_kernels.py) against timm's PIL ops: Pillow's exact pixels."""
import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.data import auto_augment as taa

from pipelines.augment import cpu_kernels, ops
from tests._augment_data import HEIGHT, WIDTH, photos, to_arrays, to_batch
from tests.test_augment_ops import COLOR_CASES, FILL, GEOMETRIC_CASES

torch.set_num_threads(1)
N = len(photos())


def _kernel(code, args, mats=None, flip=None, mean=(0.0, 0.0, 0.0), std=(1 / 255, 1 / 255, 1 / 255)):
    """cpu_kernels.augment on the photos: code (N, L), args (N, L); returns float (N, H, W, 3)."""
    x = to_batch(photos())
    code, args = torch.as_tensor(code).long(), torch.as_tensor(args, dtype=torch.float64)
    if mats is None:
        mats = torch.zeros(code.shape + (2, 3), dtype=torch.float64)
    flip = torch.zeros(N, dtype=torch.bool) if flip is None else flip
    std_t = torch.tensor(std)
    out = torch.empty(x.shape, memory_format=torch.channels_last)
    cpu_kernels.augment(x, flip, code, args, mats, FILL, 1 / (255 * std_t), torch.tensor(mean) / std_t, out)
    return out.permute(0, 2, 3, 1).numpy()


def _timm(name, args, **kwargs):
    fn = taa.NAME_TO_OP[name]
    return np.stack([np.asarray(fn(im, *([] if a is None else [a]), **kwargs)) for im, a in zip(photos(), args)])


@pytest.mark.parametrize('name,args', [c[:2] for c in COLOR_CASES], ids=[c[0] for c in COLOR_CASES])
def test_color_op_is_pillows(name, args):
    a = [[0.0 if v is None else float(v)] for v in args]
    ours = _kernel([[cpu_kernels.OP_CODES[name]]] * N, a)  # identity normalization: out = levels
    np.testing.assert_array_equal(ours, _timm(name, args))


@pytest.mark.parametrize('name,args', [c[:2] for c in COLOR_CASES], ids=[c[0] for c in COLOR_CASES])
def test_flip_then_color_op_is_pillows(name, args):
    """Odd images flipped first (the kernel moves the flip after color ops: they commute with it)."""
    flip = torch.arange(N) % 2 == 1
    a = [[0.0 if v is None else float(v)] for v in args]
    ours = _kernel([[cpu_kernels.OP_CODES[name]]] * N, a, flip=flip)
    fn = taa.NAME_TO_OP[name]
    for i, (im, v) in enumerate(zip(photos(), args)):
        im = im.transpose(Image.FLIP_LEFT_RIGHT) if flip[i] else im
        np.testing.assert_array_equal(ours[i], np.asarray(fn(im, *([] if v is None else [v]))), err_msg=str(i))


@pytest.mark.parametrize('bicubic', [False, True], ids=['bilinear', 'bicubic'])
@pytest.mark.parametrize('name,args', GEOMETRIC_CASES, ids=[c[0] for c in GEOMETRIC_CASES])
def test_warp_is_pillows(name, args, bicubic):
    """Bicubic: odd images flipped first (the warp reads them mirrored). Not bilinear: on the flipped photo 5,
    Rotate 30 gives 108 at one pixel (float64 108.00000000000013 by Geometry.c's formula), Pillow 13 107."""
    flip = (torch.arange(N) % 2 == 1) & bicubic  # bilinear: none flipped
    mats = ops.affine_matrix(name, torch.tensor(args, dtype=torch.float64), HEIGHT, WIDTH).view(N, 1, 2, 3)
    code = cpu_kernels.WARP_BICUBIC if bicubic else cpu_kernels.WARP_BILINEAR
    ours = _kernel([[code]] * N, [[0.0]] * N, mats, flip)
    kwargs = dict(resample=Image.BICUBIC if bicubic else Image.BILINEAR, fillcolor=FILL)
    fn = taa.NAME_TO_OP[name]
    for i, (im, a) in enumerate(zip(photos(), args)):
        im = im.transpose(Image.FLIP_LEFT_RIGHT) if flip[i] else im
        np.testing.assert_array_equal(ours[i], np.asarray(fn(im, a, **kwargs)), err_msg=str(i))


def test_posterize_zero_bits_is_black():
    ours = _kernel([[cpu_kernels.OP_CODES['Posterize']]] * N, [[0.0]] * N)
    assert ours.max() == 0


def test_chain_flip_then_ops_in_slot_order_then_normalize():
    """Image i: flip (odd i), Equalize, then Rotate by 7 degrees (bicubic), normalized with ImageNet's mean/std;
    reference: Pillow's flip, timm's ops and the normalization written out in float64."""
    flip = torch.arange(N) % 2 == 1
    code = [[cpu_kernels.OP_CODES['Equalize'], cpu_kernels.WARP_BICUBIC]] * N
    mats = torch.zeros(N, 2, 2, 3, dtype=torch.float64)
    mats[:, 1] = ops.affine_matrix('Rotate', torch.full((N,), 7.0, dtype=torch.float64), HEIGHT, WIDTH)
    ours = _kernel(code, [[0.0, 0.0]] * N, mats, flip, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    for i, im in enumerate(photos()):
        if flip[i]:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        im = taa.rotate(taa.equalize(im), 7.0, resample=Image.BICUBIC, fillcolor=FILL)
        ref = (np.asarray(im) / 255.0 - np.array(IMAGENET_DEFAULT_MEAN)) / np.array(IMAGENET_DEFAULT_STD)
        np.testing.assert_allclose(ours[i], ref, rtol=0, atol=2e-6)


def test_empty_slots_leave_the_image():
    ours = _kernel([[cpu_kernels.NONE, cpu_kernels.NONE]] * N, [[5.0, 5.0]] * N)
    np.testing.assert_array_equal(ours, to_arrays(to_batch(photos())))


@pytest.mark.parametrize('angle', [0.3, -13.0, 45.0, 90.0])
def test_bicubic_rotate_of_flat_ramps_and_steps_is_pillows(angle):
    """Images whose bicubic sums land on or near integers (flat areas, 255 plateaus, linear ramps, two-level
    steps): the values the kernel's float32 cubics leave to float64. Pillow's pixels, every one: Image.rotate,
    as timm calls it (at 45 degrees its cos and sin rounded to 15 decimals move 18 values of the ramp by 1; the
    matrix follows it)."""
    y, x = np.mgrid[:HEIGHT, :WIDTH]
    ramp = np.stack([3 * x + y, 2 * y, np.full_like(x, 255)], -1) % 256
    steps = np.where((x // 3 + y // 5) % 2 == 1, 255, 0)[..., None].repeat(3, -1)
    flat = np.full((HEIGHT, WIDTH, 3), 200)
    flat[:, WIDTH // 2:] = 17
    images = np.stack([ramp, steps, flat]).astype(np.uint8)
    mats = ops.affine_matrix('Rotate', torch.full((3,), angle, dtype=torch.float64), HEIGHT, WIDTH).view(3, 1, 2, 3)
    x_b = torch.from_numpy(images).permute(0, 3, 1, 2)
    out = torch.empty(x_b.shape, memory_format=torch.channels_last)
    ident = torch.tensor([1.0, 1.0, 1.0])
    cpu_kernels.augment(x_b, torch.zeros(3, dtype=torch.bool), torch.full((3, 1), cpu_kernels.WARP_BICUBIC),
                        torch.zeros(3, 1, dtype=torch.float64), mats, FILL, ident, 0 * ident, out)
    for i, im in enumerate(images):
        im = Image.fromarray(im)
        ref = im.rotate(angle, Image.BICUBIC, fillcolor=FILL)
        np.testing.assert_array_equal(out[i].permute(1, 2, 0).numpy(), np.asarray(ref), err_msg=str(i))


@pytest.mark.parametrize('data', [(1, 0, 0, 0, 1, -0.37), (1, 0, 0, 0, 1, 2 - 1e-15), (1, 0, 0, 0, 1, 60.5),
                                  (1, 0, 0, 0, 1.25, -3.0)],
                         ids=['fraction', 'near-integer', 'half-outside', 'scaled'])
def test_rows_along_y_are_pillows(data):
    """Translations along y take whole rows (`_shift_rows_y`): mirrored input included, against Pillow's
    transform with the same matrix (a sample height just below an integer; half the rows filled; a y scale)."""
    flip = torch.arange(N) % 2 == 1
    mats = torch.tensor(data, dtype=torch.float64).view(1, 1, 2, 3).expand(N, 1, 2, 3).clone()
    ours = _kernel([[cpu_kernels.WARP_BICUBIC]] * N, [[0.0]] * N, mats, flip)
    for i, im in enumerate(photos()):
        im = im.transpose(Image.FLIP_LEFT_RIGHT) if flip[i] else im
        ref = im.transform(im.size, Image.AFFINE, tuple(data), resample=Image.BICUBIC, fillcolor=FILL)
        np.testing.assert_array_equal(ours[i], np.asarray(ref), err_msg=str(i))
