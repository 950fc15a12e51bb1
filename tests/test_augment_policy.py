"""--aa parsing, level -> argument, and op frequencies of the batched policy, against timm's own policy."""
import math
import random

import numpy as np
import pytest
import torch
from timm.data import auto_augment as taa

from pipelines.augment.policy import LEVEL_TO_ARG_BATCHED, BatchPolicy

HPARAMS = dict(translate_const=100, img_mean=(124, 116, 104))


@pytest.mark.parametrize('name', sorted(LEVEL_TO_ARG_BATCHED))
def test_level_to_arg_matches_timm(name, monkeypatch):
    """Our batched version of each LEVEL_TO_ARG function gives timm's value, for both outcomes of the sign."""
    levels = [i / 4 for i in range(0, 61)]  # 0 .. 15 (mmax lets magnitudes exceed 10)
    for draw, sign in ((0.0, 1.0), (1.0, -1.0)):  # timm negates when random.random() > 0.5
        monkeypatch.setattr(taa.random, 'random', lambda: draw)
        ref = [taa.LEVEL_TO_ARG[name](lv, HPARAMS)[0] for lv in levels]
        ours = LEVEL_TO_ARG_BATCHED[name](np.array(levels), np.full(len(levels), sign), HPARAMS)
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12, err_msg=name)


def test_every_timm_aa_op_with_an_argument_has_a_batched_level_function():
    used = {op.name for p in ('v0', 'v0r', 'original', 'originalr') for sp in taa.auto_augment_policy(p, HPARAMS)
            for op in sp} | set(taa._RAND_TRANSFORMS) | set(taa._RAND_INCREASING_TRANSFORMS)
    with_arg = {n for n in used if taa.LEVEL_TO_ARG[n] is not None}
    assert with_arg <= set(LEVEL_TO_ARG_BATCHED)


@pytest.mark.parametrize('aa,layers,mag_std,mag_max,ops', [
    ('v0', 2, 0.0, 10.0, None),
    ('original-mstd0.5', 2, 0.5, 10.0, None),
    ('rand-m9-mstd0.5-inc1', 2, 0.5, 10.0, taa._RAND_INCREASING_TRANSFORMS),
    ('rand-m9-n2-mstd0.5', 2, 0.5, 10.0, taa._RAND_TRANSFORMS),
    ('rand-m7-n3-p0.8-mmax12', 3, 0.0, 12.0, taa._RAND_TRANSFORMS),
    ('rand-m9-mstd101', 2, math.inf, 10.0, taa._RAND_TRANSFORMS),
    ('3a', 1, 0.0, 10.0, ['Desaturate', 'GaussianBlurRand', 'Solarize']),
    ('rand-m9-n2-mstd0.5-t3a', 2, 0.5, 10.0, taa._RAND_3A),
])
def test_parse_aa_strings_as_timm(aa, layers, mag_std, mag_max, ops):
    p = BatchPolicy(aa, HPARAMS)
    assert (p.num_layers, p.magnitude_std, p.magnitude_max) == (layers, mag_std, mag_max)
    if ops is not None:
        assert p.op_names == sorted(ops)


@pytest.mark.parametrize('aa,fragment', [
    ('rand-x9', '--aa'), ('v9', '--aa'), ('original-q3', '--aa'),
    ('augmix-m5', 'AugMix'),
])
def test_bad_aa_strings_raise_a_clear_error(aa, fragment):
    with pytest.raises(ValueError, match=fragment):
        BatchPolicy(aa, HPARAMS)


N = 20000  # images drawn for the frequency tests


def _touched(p: BatchPolicy, seed=0):
    """Share of images in which each op passed its probability test in at least one slot."""
    d = p.sample(N, torch.Generator().manual_seed(seed))
    return {name: float(((d.op == i) & d.apply).any(dim=1).double().mean()) for i, name in enumerate(p.op_names)}


def _within_binomial(share, expected, n=N, sigmas=4.5):
    return abs(share - expected) <= sigmas * math.sqrt(max(expected * (1 - expected), 1e-4) / n)


@pytest.mark.parametrize('aa', ['v0', 'original', '3a'])
def test_auto_augment_op_frequencies_follow_timm_policy(aa):
    """P(op applied) = mean over timm's sub-policies of 1 - prod(1 - p) over the sub-policy's entries of it."""
    policy = taa.auto_augment_policy(aa, HPARAMS)
    touched = _touched(BatchPolicy(aa, HPARAMS))
    for name, share in touched.items():
        expected = np.mean([1 - np.prod([1 - op.prob for op in sp if op.name == name]) for sp in policy])
        assert _within_binomial(share, expected), (name, share, expected)


def test_rand_augment_op_frequencies_follow_timm():
    """rand-m9-mstd0.5-inc1: 2 layers, each a uniform pick of 15 ops applied with p 0.5."""
    ra = taa.rand_augment_transform('rand-m9-mstd0.5-inc1', dict(HPARAMS))
    n_ops = len(ra.ops)
    p = ra.ops[0].prob
    expected = 1 - (1 - p / n_ops) ** ra.num_layers
    touched = _touched(BatchPolicy('rand-m9-mstd0.5-inc1', HPARAMS))
    assert set(touched) == {op.name for op in ra.ops}
    for name, share in touched.items():
        assert _within_binomial(share, expected), (name, share, expected)


def test_weighted_rand_augment_picks_distinct_ops_by_weight():
    """'tweights': timm picks without replacement, with _RAND_WEIGHTED_0's weights."""
    p = BatchPolicy('rand-m9-tweights', HPARAMS)
    d = p.sample(N, torch.Generator().manual_seed(0))
    assert (d.op[:, 0] != d.op[:, 1]).all()
    first = torch.bincount(d.op[:, 0], minlength=len(p.op_names)).double() / N
    weights = taa._RAND_WEIGHTED_0
    total = sum(weights.values())
    for i, name in enumerate(p.op_names):
        assert _within_binomial(float(first[i]), weights[name] / total), name


def test_magnitude_noise_and_sign_follow_timm():
    """Rotate under rand-m9-mstd0.5: |degrees| = 3 * clip(N(9, 0.5), 0, 10); sign +/- with p 1/2 (vs timm)."""
    p = BatchPolicy('rand-m9-mstd0.5', HPARAMS)
    d = p.sample(N, torch.Generator().manual_seed(1))
    rot = d.arg[d.op == p.op_names.index('Rotate')]
    op = taa.AugmentOp('Rotate', prob=1.0, magnitude=9, hparams=dict(HPARAMS, magnitude_std=0.5))
    random.seed(0)
    ref = []
    for _ in range(N):  # timm's draw, reproduced from AugmentOp.__call__
        m = max(0.0, min(random.gauss(op.magnitude, op.magnitude_std), 10.0))
        ref.append(taa.LEVEL_TO_ARG['Rotate'](m, HPARAMS)[0])
    ref = np.array(ref)
    assert abs(float(rot.abs().mean()) - np.abs(ref).mean()) < 0.05
    assert abs(float(rot.abs().std()) - np.abs(ref).std()) < 0.05
    assert _within_binomial(float((rot < 0).double().mean()), 0.5, n=rot.numel())


def test_3a_blur_radius_follows_timms_draw(monkeypatch):
    """--aa 3a's GaussianBlurRand: timm draws the radius inside the op (random.uniform(0.1, 2.0 * factor), factor
    1 at magnitude 10); the radii drawn here follow the same law as the ones timm's op passes to Pillow."""
    from PIL import Image
    p = BatchPolicy('3a', HPARAMS)
    d = p.sample(N, torch.Generator().manual_seed(2))
    ours = d.arg[d.op == p.op_names.index('GaussianBlurRand')].numpy()
    seen = []
    monkeypatch.setattr(taa.ImageFilter, 'GaussianBlur', lambda radius: seen.append(radius) or (lambda im: im))
    monkeypatch.setattr(Image.Image, 'filter', lambda im, f: f(im))
    (op,) = taa.auto_augment_policy('3a', HPARAMS)[2]
    random.seed(0)
    pixel = Image.new('RGB', (1, 1))
    for _ in range(N):
        op(pixel)
    ref = np.array(seen)
    assert ours.size > N / 4 and ref.size == N
    assert ours.min() >= 0.1 and ours.max() <= 2.0 and ref.min() >= 0.1 and ref.max() <= 2.0
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):   # quantiles within 4.5 binomial sigmas of each other
        assert abs(np.quantile(ours, q) - np.quantile(ref, q)) < 1.9 * 4.5 * math.sqrt(q * (1 - q) / ours.size), q


def test_sampling_is_deterministic_per_seed():
    p = BatchPolicy('rand-m9-mstd0.5-inc1', HPARAMS)
    a, b = (p.sample(64, torch.Generator().manual_seed(3)) for _ in range(2))
    c = p.sample(64, torch.Generator().manual_seed(4))
    assert torch.equal(a.op, b.op) and torch.equal(a.arg, b.arg) and torch.equal(a.apply, b.apply)
    assert not torch.equal(a.op, c.op)


def test_random_interpolation_picks_bilinear_or_bicubic_per_image_and_op():
    """--train-interpolation random: timm's AugmentOp picks from (BILINEAR, BICUBIC) at each call."""
    fixed = BatchPolicy('v0', HPARAMS, random_interpolation=False, bicubic_default=False)
    assert not fixed.sample(100, torch.Generator().manual_seed(0)).bicubic.any()
    p = BatchPolicy('v0', HPARAMS, random_interpolation=True)
    share = float(p.sample(N, torch.Generator().manual_seed(0)).bicubic.double().mean())
    assert _within_binomial(share, 0.5, n=2 * N)
