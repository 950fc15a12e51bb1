"""Batched random erasing against timm's RandomErasing: share erased, box areas and shapes, fill modes."""
import random

import numpy as np
import pytest
import torch
from scipy import stats
from timm.data.random_erasing import RandomErasing

from pipelines.augment import AugmentConfig, DeviceAugment, cpu_kernels
from pipelines.augment.erasing import BatchRandomErasing
from pipelines.augment.ops import affine_matrix
from tests._augment_data import photos, to_batch
from _noise_reference import GROUP, logit_noise

torch.set_num_threads(1)
N, H, W = 3000, 32, 40
BACKGROUND = 5.0  # no mode paints exactly this value


def _erased_masks(images: torch.Tensor) -> torch.Tensor:
    return (images != BACKGROUND).any(dim=1)  # (N, H, W)


def _ours(count=1, mode='const', channels=1, seed=0, batched=False):
    imgs = torch.full((N, channels, H, W), BACKGROUND).contiguous(memory_format=torch.channels_last)
    er = BatchRandomErasing(0.5, mode=mode, max_count=count)
    gen = torch.Generator().manual_seed(seed)
    er.paint(imgs, er.sample(N, channels, H, W, gen), gen, batched=batched)
    return imgs


def _timm(count=1, mode='const', channels=1, seed=0):
    imgs = torch.full((N, channels, H, W), BACKGROUND)
    random.seed(seed)
    torch.manual_seed(seed)
    return RandomErasing(0.5, mode=mode, max_count=count, device='cpu')(imgs)


def _stats(imgs):
    m = _erased_masks(imgs)
    erased = m.any(dim=(1, 2))
    frac = m.flatten(1).double().mean(1)[erased]
    return float(erased.double().mean()), frac.numpy()


@pytest.mark.parametrize('count', [1, 3])
def test_share_erased_and_area_distribution_match_timm(count):
    share, frac = _stats(_ours(count))
    share_t, frac_t = _stats(_timm(count))
    tol = 4.5 * np.sqrt(0.25 / N)
    assert abs(share - 0.5) < tol and abs(share_t - 0.5) < tol
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):  # erased-area quantiles agree with timm's
        assert abs(np.quantile(frac, q) - np.quantile(frac_t, q)) < 0.02, q


def test_single_box_is_a_rectangle_within_timm_area_and_aspect_bounds():
    m = _erased_masks(_ours(1))
    for mask in m[m.any(dim=(1, 2))]:
        rows, cols = torch.where(mask.any(dim=1))[0], torch.where(mask.any(dim=0))[0]
        h, w = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
        assert int(mask.sum()) == h * w  # one filled rectangle
        # timm: area in (0.02, 1/3) of the image, aspect h/w in (0.3, 1/0.3), h and w rounded to whole pixels
        assert 0.02 * H * W - (h + w) / 2 - 0.25 <= h * w <= H * W / 3 + (h + w) / 2 + 0.25
        assert 0.3 * (w - 1) <= h + 0.5 and h - 0.5 <= (w + 1) / 0.3


@pytest.mark.parametrize('mode', ['const', 'rand', 'pixel'])
def test_indexed_painting_equals_slice_painting(mode):
    """The accelerator path (one index_put per box slot) paints the boxes the CPU loop paints."""
    a, b = (_ours(3, mode, channels=3, batched=batched) for batched in (False, True))
    assert torch.equal(_erased_masks(a), _erased_masks(b))
    if mode != 'pixel':  # pixel noise is drawn in another order
        assert torch.equal(a, b)


def test_modes_fill_as_timm():
    pixel = _ours(1, 'pixel', channels=3)
    values = pixel[pixel != BACKGROUND]
    assert abs(float(values.mean())) < 0.01 and abs(float(values.std()) - 1) < 0.01  # N(0, 1) per pixel
    rand = _ours(1, 'rand', channels=3)
    m = _erased_masks(rand)
    i = int(torch.where(m.any(dim=(1, 2)))[0][0])
    box = rand[i][:, m[i]]  # (3, pixels of the box)
    assert (box == box[:, :1]).all() and len(set(box[:, 0].tolist())) == 3  # one N(0, 1) color per channel
    const = _ours(1, 'const', channels=3)
    assert (const[const != BACKGROUND] == 0).all()


def test_device_augment_erases_after_normalizing():
    """Const mode writes 0 = the normalized mean; every other pixel is the plain normalized image."""
    x = to_batch(photos() * 4)
    cfg = AugmentConfig(aa=None, reprob=1.0, remode='const', hflip=0.0)
    out = DeviceAugment(cfg)(x, torch.Generator().manual_seed(0))
    plain = DeviceAugment(AugmentConfig(aa=None, reprob=0.0, hflip=0.0))(x)
    erased = (out == 0).all(dim=1)
    assert erased.any(dim=(1, 2)).all()  # reprob 1: every image
    assert torch.equal(out.permute(0, 2, 3, 1)[~erased], plain.permute(0, 2, 3, 1)[~erased])


def test_cpu_pixel_noise_is_the_documented_philox_stream():
    """CPU 'pixel' boxes hold logit_noise's Philox/Box-Muller stream (re-derived in numpy by _noise_reference)
    from one seed drawn from the generator after the boxes: box after box in (image, slot) order, each starting
    on a whole group, values in (row, column, channel) order; the same seed paints the same batch."""
    n, c, h, w = 40, 3, 32, 40
    er = BatchRandomErasing(0.7, mode='pixel', max_count=3)
    gen = torch.Generator().manual_seed(7)
    draw = er.sample(n, c, h, w, gen)
    seed = int(torch.randint(0, 2 ** 63 - 1, (), generator=torch.Generator().set_state(gen.get_state())))
    ours = torch.full((n, c, h, w), BACKGROUND).contiguous(memory_format=torch.channels_last)
    er.paint(ours, draw, gen)
    expected = torch.full((n, h, w, c), BACKGROUND)
    boxes = [(b, k) for b in range(n) for k in range(3) if draw.active[b, k]]
    sizes = [int(draw.h[b, k] * draw.w[b, k]) * c for b, k in boxes]
    stream = logit_noise(sum(-(-s // GROUP) * GROUP for s in sizes), seed)
    start = 0
    for (b, k), size in zip(boxes, sizes):
        t, l, bh, bw = (int(v[b, k]) for v in (draw.top, draw.left, draw.h, draw.w))
        expected[b, t:t + bh, l:l + bw] = torch.from_numpy(stream[start:start + size]).float().view(bh, bw, c)
        start += -(-size // GROUP) * GROUP
    torch.testing.assert_close(ours.permute(0, 2, 3, 1), expected, rtol=0, atol=2e-5)  # float32 Cephes vs libm
    again = torch.full_like(ours, BACKGROUND)
    gen.manual_seed(7)
    er.paint(again, er.sample(n, c, h, w, gen), gen)
    assert torch.equal(again, ours)


def test_cpu_pixel_noise_is_standard_normal():
    values = _ours(3, 'pixel', channels=3)
    values = values[values != BACKGROUND].double().numpy()
    assert values.size > 10 ** 5
    assert abs(values.mean()) < 0.01 and abs(values.std() - 1) < 0.01
    assert stats.kstest(values, 'norm').pvalue > 1e-3


@pytest.mark.parametrize('ops', [False, True], ids=['normalize-only', 'flip-and-ops'])
def test_kernel_erases_as_paint_does(ops):
    """DeviceAugment's CPU kernel paints the 'pixel' boxes into each row as it normalizes (cpu_kernels.augment
    with `noise`): the same batch as normalizing first, then BatchRandomErasing.paint with the same draws."""
    x = to_batch(photos() * 4)
    n, c, h, w = x.shape
    g = torch.Generator().manual_seed(3)
    flip = torch.rand(n, generator=g) < 0.5 if ops else torch.zeros(n, dtype=torch.bool)
    # ops: Equalize, or a 2-D bicubic warp (Rotate 20 degrees), or nothing, per image
    code = torch.tensor([[(cpu_kernels.OP_CODES['Equalize'], cpu_kernels.WARP_BICUBIC, 0)[i % 3] if ops else 0]
                         for i in range(n)])
    mats = torch.zeros(n, 1, 2, 3, dtype=torch.float64)
    mats[:, 0] = affine_matrix('Rotate', torch.full((n,), 20.0, dtype=torch.float64), h, w)
    args = torch.zeros(n, 1, dtype=torch.float64)
    scale, shift = torch.full((c,), 1 / 64), torch.full((c,), 2.0)
    er = BatchRandomErasing(1.0, mode='pixel', max_count=3)

    def run(fused):
        gen = torch.Generator().manual_seed(11)
        draw = er.sample(n, c, h, w, gen)
        out = torch.empty(x.shape, memory_format=torch.channels_last)
        noise = er.noise_boxes(draw, c, gen) if fused else None
        cpu_kernels.augment(x, flip, code, args, mats, (128, 128, 128), scale, shift, out, noise)
        if not fused:
            er.paint(out, draw, gen)
        return out, draw

    fused, draw = run(True)
    reference, _ = run(False)
    assert int(draw.active.sum()) > n  # up to 3 boxes per image, a later one painting over an earlier one
    assert torch.equal(fused, reference)
