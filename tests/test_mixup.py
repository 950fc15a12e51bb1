"""neatt.train.mixup.Mixup against timm's own Mixup: the same numpy draws give the same images and targets."""
import numpy as np
import pytest
import torch
from timm.data import Mixup as TimmMixup

from neatt.train.mixup import Mixup

CASES = {
    'mixup': dict(mixup_alpha=0.8, cutmix_alpha=0.),
    'cutmix': dict(mixup_alpha=0., cutmix_alpha=1.0),
    'both, some images unmixed': dict(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, prob=0.6),
    'cutmix_minmax': dict(mixup_alpha=0., cutmix_alpha=1.0, cutmix_minmax=(0.2, 0.8)),
    'uncorrected lam': dict(mixup_alpha=0.8, cutmix_alpha=1.0, correct_lam=False),
}


def _batch(device, channels_last=False):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 20, 24, generator=g).to(device)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    return x, torch.randint(0, 10, (8,), generator=g).to(device)


def _mix(cls, x, target, seed, **kwargs):
    np.random.seed(seed)  # timm's draws come from numpy's global generator
    mixup = cls(label_smoothing=0.1, num_classes=10, **kwargs)
    x = x.clone()
    x_out, target_out = mixup(x, target)
    assert x_out is x  # mixed in place, as timm does
    return x_out, target_out


@pytest.mark.parametrize('mode', ['elem', 'pair'])
@pytest.mark.parametrize('case', list(CASES))
def test_same_images_and_targets_as_timm(mode, case):
    x, target = _batch('cpu', channels_last=case == 'cutmix')
    for seed in range(3):
        ours = _mix(Mixup, x, target, seed, mode=mode, **CASES[case])
        timm = _mix(TimmMixup, x, target, seed, mode=mode, **CASES[case])
        assert torch.equal(ours[0], timm[0]) and torch.equal(ours[1], timm[1])
        assert not torch.equal(ours[0], x)  # something was mixed


@pytest.mark.parametrize('mode', ['elem', 'pair'])
def test_mixing_switched_off_leaves_the_batch(mode):
    """With mixing off (the trainer's --mixup-off-epoch), timm's targets (smoothed one-hots) and the batch as it
    was."""
    x, target = _batch('cpu')
    results = []
    for cls in (Mixup, TimmMixup):
        np.random.seed(0)
        mixup = cls(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=10, mode=mode)
        mixup.mixup_enabled = False
        results.append(mixup(x.clone(), target))
    assert torch.equal(results[0][0], x) and torch.equal(results[1][0], x)
    assert torch.equal(results[0][1], results[1][1])


def test_batch_mode_is_timms():
    x, target = _batch('cpu')
    ours = _mix(Mixup, x, target, 0, mode='batch', mixup_alpha=0.8, cutmix_alpha=1.0)
    timm = _mix(TimmMixup, x, target, 0, mode='batch', mixup_alpha=0.8, cutmix_alpha=1.0)
    assert torch.equal(ours[0], timm[0]) and torch.equal(ours[1], timm[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
@pytest.mark.parametrize('mode', ['elem', 'pair'])
def test_cuda_mixing_never_waits_for_the_gpu(mode):
    """On a GPU the per-image modes queue their work without a host-device synchronization, and mix as on the
    CPU."""
    x, target = _batch('cuda')
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        ours = _mix(Mixup, x, target, 0, mode=mode, mixup_alpha=0.8, cutmix_alpha=1.0)
    finally:
        torch.cuda.set_sync_debug_mode('default')
    cpu = _mix(Mixup, x.cpu(), target.cpu(), 0, mode=mode, mixup_alpha=0.8, cutmix_alpha=1.0)
    torch.testing.assert_close(ours[0].cpu(), cpu[0])
    torch.testing.assert_close(ours[1].cpu(), cpu[1])
