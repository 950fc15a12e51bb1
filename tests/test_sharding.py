"""pipelines.sharding: disjoint, complete, deterministic per (seed, epoch), different across epochs, resumable."""
import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from pipelines.sharding import ShardedOrder, epoch_permutation

WORLD_SIZES = [1, 2, 3]


def _ranks(n, world_size, **kw):
    return [ShardedOrder(n, rank=r, world_size=world_size, **kw) for r in range(world_size)]


@pytest.mark.parametrize("world_size", WORLD_SIZES)
@pytest.mark.parametrize("n", [1, 10, 11, 37])
def test_val_covers_every_sample_exactly_once(world_size, n):
    ranks = _ranks(n, world_size, batch_size=4, shuffle=False, pad=False, drop_last=False)
    parts = [s.indices(epoch=3) for s in ranks]
    together = np.concatenate(parts)
    assert sorted(together.tolist()) == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    for s, p in zip(ranks, parts):  # the batch count covers the partial last batch
        assert s.num_batches == -(-len(p) // 4)


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_train_shards_match_distributed_sampler(world_size):
    """Padding and slicing are DistributedSampler's (shuffle=False isolates them from the permutation)."""
    n = 23
    data = list(range(n))
    for r, s in enumerate(_ranks(n, world_size, batch_size=1, shuffle=False, pad=True, drop_last=False)):
        ref = list(DistributedSampler(data, num_replicas=world_size, rank=r, shuffle=False))
        assert s.indices(0).tolist() == ref


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_train_disjoint_complete_and_padded(world_size):
    n, bs = 50, 4
    ranks = _ranks(n, world_size, batch_size=bs, seed=7, shuffle=True, pad=True, drop_last=False)
    parts = [s.indices(epoch=1) for s in ranks]
    assert len({len(p) for p in parts}) == 1  # equal per-rank counts
    together = np.concatenate(parts)
    assert set(together.tolist()) == set(range(n))
    assert len(together) - n == (-n) % world_size  # only the wrap-around padding repeats
    values, counts = np.unique(together, return_counts=True)
    assert counts.max() <= 2  # the repeats are the first samples of the permutation (wrap-around)
    assert set(values[counts > 1].tolist()) == set(epoch_permutation(n, 7, 1)[:(-n) % world_size].tolist())


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_drop_last_trims_to_whole_batches(world_size):
    n, bs = 50, 4
    for s in _ranks(n, world_size, batch_size=bs, seed=0):
        idx = s.indices(0)
        assert len(idx) == s.num_batches * bs == (-(-n // world_size) // bs) * bs


def test_order_deterministic_and_changes_with_epoch_and_seed():
    s = ShardedOrder(100, batch_size=10, seed=3)
    assert np.array_equal(s.indices(5), ShardedOrder(100, batch_size=10, seed=3).indices(5))
    assert not np.array_equal(s.indices(5), s.indices(6))
    assert not np.array_equal(s.indices(5), ShardedOrder(100, batch_size=10, seed=4).indices(5))
    assert sorted(s.indices(5).tolist()) == list(range(100))


def test_permutation_independent_of_global_rng():
    np.random.seed(1)
    torch.manual_seed(1)
    a = epoch_permutation(64, 0, 2)
    np.random.seed(2)
    torch.manual_seed(2)
    assert np.array_equal(a, epoch_permutation(64, 0, 2))


def test_remaining_is_the_tail_of_the_epoch():
    s = ShardedOrder(30, rank=1, world_size=2, batch_size=4, seed=0)
    full = s.indices(2)
    assert np.array_equal(s.remaining(2, 2), full[8:])
    assert len(s.remaining(2, s.num_batches)) == 0
    with pytest.raises(ValueError, match="batches_done"):
        s.remaining(2, s.num_batches + 1)


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_repeated_augmentation_spreads_each_samples_copies_over_ranks(world_size):
    """repeats=3, by hand: the epoch permutation with each sample written 3 times in a row, cut to the length of
    an epoch without repeats, dealt to the ranks in turn; with 3 ranks or more no rank reads a sample twice, with
    fewer a rank reads it at most ceil(3 / ranks) times; copy c of sample i has the crop key i + c n; a resumed
    epoch's keys are the tail."""
    n, r, seed, epoch = 37, 3, 5, 2
    ranks = _ranks(n, world_size, seed=seed, repeats=r)
    plain = ShardedOrder(n, world_size=world_size, seed=seed)
    total = world_size * plain.samples_per_rank
    stream = np.repeat(epoch_permutation(n, seed, epoch), r)[:total]
    copy = np.tile(np.arange(r), n)[:total]
    for k, o in enumerate(ranks):
        assert o.num_batches == plain.num_batches  # an epoch takes as long as without repeats
        idx, keys = o.indices(epoch), o.remaining_with_keys(epoch, 0)[1]
        assert np.array_equal(idx, stream[k::world_size])
        assert np.array_equal(keys, (stream + copy * n)[k::world_size])
        assert np.bincount(idx).max() <= -(-r // world_size)
        rest, rest_keys = o.remaining_with_keys(epoch, 4)
        assert np.array_equal(rest_keys, keys[4:]) and np.array_equal(rest, idx[4:])
        assert np.array_equal(o.remaining(epoch, 4), idx[4:])
    keys = np.concatenate([o.remaining_with_keys(epoch, 0)[1] for o in ranks])
    assert len(set(keys.tolist())) == len(keys)  # every copy its own crop
    assert len(set(stream.tolist())) < n  # fewer distinct samples per epoch
    for o in _ranks(n, world_size, seed=seed):  # without repeats the keys are the sample indices
        assert np.array_equal(o.remaining_with_keys(epoch, 0)[1], o.indices(epoch))


@pytest.mark.parametrize("kw, match", [(dict(num_samples=0), "num_samples"),
                                       (dict(num_samples=5, rank=2, world_size=2), "rank"),
                                       (dict(num_samples=5, batch_size=0), "batch_size"),
                                       (dict(num_samples=5, world_size=3, repeats=3, pad=False), "pad=True")])
def test_bad_arguments_are_named(kw, match):
    with pytest.raises(ValueError, match=match):
        ShardedOrder(**kw)
