"""The parallel CPU logit noise (neatt/models/logit_noise.py) against its definition, re-derived in numpy, and
against the normal distribution."""
import numpy as np
import pytest
import torch
from numba import njit
from scipy import stats

from neatt.models import logit_noise
from neatt.models.logit_noise import add_logit_noise
from _noise_reference import GROUP, LANES, next_logit_noise, philox4x32_10

# Random123's known-answer vectors for philox4x32-10 (kat_vectors): counter, key -> output
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8)),
    ((0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344), (0xa4093822, 0x299f31d0),
     (0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1)),
]


def test_reference_philox_is_random123s():
    for ctr, key, expected in PHILOX_KAT:
        assert [int(w) for w in philox4x32_10(ctr, *key)] == list(expected)


def test_kernel_philox_matches_known_answers_and_the_reference():
    """The kernel's counters have the form (c, 0, 0, 0): the zero vector, then other c under a non-zero key."""
    kernel = njit(lambda c, k0, k1: logit_noise._philox4x32_10(c, k0, k1))
    assert [int(w) for w in kernel(np.uint64(0), np.uint64(0), np.uint64(0))] == list(PHILOX_KAT[0][2])
    for c in (1, 12345, 2 ** 32 - 1):
        ours = kernel(np.uint64(c), np.uint64(0xDEADBEEF), np.uint64(0x01234567))
        assert [int(w) for w in ours] == [int(w) for w in philox4x32_10((c, 0, 0, 0), 0xDEADBEEF, 0x01234567)]


def test_layout_constants_are_the_documented_ones():
    assert (logit_noise.GROUP, logit_noise.LANES) == (GROUP, LANES)


@pytest.mark.parametrize('shape', [(3, 2, 17, 17), (5, GROUP + 3), (7,)])
def test_noise_is_the_documented_sample(shape):
    """z + sigma * eps with eps re-derived in numpy (float64 libm) from the same seed; odd sizes end mid-group."""
    z = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(42)
    out = add_logit_noise(z, 0.7)
    torch.manual_seed(42)
    eps = next_logit_noise(shape)
    # Cephes float32 polynomials vs float64 libm: |eps| <= 5.8 with ~1e-7 relative error, plus float32 rounding
    torch.testing.assert_close(out, z + 0.7 * eps, rtol=0, atol=2e-5)


def test_noise_is_standard_normal():
    """One million values: mean, std, tails and the Kolmogorov-Smirnov distance against N(0, 1)."""
    torch.manual_seed(0)
    eps = add_logit_noise(torch.zeros(10 ** 6), 1.0).numpy().astype(np.float64)
    assert abs(eps.mean()) < 5e-3 and abs(eps.std() - 1) < 5e-3  # 5 standard errors
    assert abs((np.abs(eps) > 3).mean() - 2 * stats.norm.sf(3)) < 5e-4  # 2.7e-3 expected, se 5e-5
    assert stats.kstest(eps, 'norm').pvalue > 1e-3
    # neighbours in memory (same counter, other word; next counter) are uncorrelated
    groups = eps[:len(eps) // GROUP * GROUP].reshape(-1, 4, LANES)
    assert abs(np.corrcoef(groups[:, 0].ravel(), groups[:, 1].ravel())[0, 1]) < 5e-3
    assert abs(np.corrcoef(eps[:-1], eps[1:])[0, 1]) < 5e-3


def test_seeded_by_the_global_generator():
    z = torch.zeros(4, 100)
    torch.manual_seed(3)
    a = add_logit_noise(z, 1.0)
    b = add_logit_noise(z, 1.0)
    torch.manual_seed(3)
    assert torch.equal(add_logit_noise(z, 1.0), a) and not torch.equal(a, b)


def test_gradient_passes_through_and_compile_keeps_it():
    z = torch.randn(2, 3, 5, 5, requires_grad=True)
    g = torch.randn(2, 3, 5, 5)
    add_logit_noise(z, 1.0).backward(g)
    assert torch.equal(z.grad, g)
    torch.manual_seed(9)
    compiled = torch.compile(lambda t: add_logit_noise(t * 2, 0.5), fullgraph=True)(z.detach())
    torch.manual_seed(9)
    torch.testing.assert_close(compiled, add_logit_noise(z.detach() * 2, 0.5))
