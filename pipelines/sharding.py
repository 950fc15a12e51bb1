"""Which samples each rank reads, and in which order, for a given (seed, epoch).

Every backend (ffcv, dali, torch) takes its epoch order from here, so they all read the same samples in the
same order, and a run resumed at batch ``k`` continues with exactly the samples it would have read.

Remainder handling (stated because every sample must be seen exactly once across ranks per epoch):

* ``pad=True`` (train): like ``torch.utils.data.DistributedSampler``, the permutation is padded by wrapping
  around to a multiple of ``world_size``, so every rank gets the same number of samples; a few samples are then
  read twice per epoch (at most ``world_size - 1``). With ``drop_last=True`` each rank also drops its final
  partial batch: those samples are skipped this epoch, and since the permutation changes every epoch, not the
  same ones next time.
* ``pad=False`` (val): no padding, ranks take ``order[rank::world_size]``, so counts differ by at most one and
  every sample is read exactly once across ranks. With ``drop_last=False`` the last batch may be partial;
  the evaluation code must sum counts, not average per-rank means.
* ``repeats=r > 1`` (train, repeated augmentation as DeiT trains, timm's ``RepeatAugSampler``): the permutation
  with each sample written ``r`` times in a row is cut to the same length as without repeats (``world_size``
  times the samples per rank), so an epoch takes as long but holds about ``1/r`` of the samples, each ``r``
  times. Ranks take every ``world_size``-th entry, so with ``r <= world_size`` a sample's copies go to
  different ranks, never twice to one rank in an epoch; with fewer ranks, a rank reads some samples up to
  ``ceil(r / world_size)`` times, one after another (on one process, all ``r`` copies), as timm's sampler does.
  Each copy has its own crop key (``remaining_with_keys``), hence its own crop and flip.
"""
from dataclasses import dataclass

import numpy as np

__all__ = ["epoch_permutation", "ShardedOrder"]


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> np.ndarray:
    """The global sample order of one epoch: a permutation of ``range(num_samples)`` fixed by (seed, epoch).

    numpy's PCG64 seeded with the sequence ``[seed, epoch]`` gives the same permutation on every platform and
    numpy version that keeps ``Generator.permutation`` stable (NEP 19), independent of any global RNG state.
    """
    return np.random.default_rng([int(seed), int(epoch)]).permutation(num_samples)


@dataclass(frozen=True)
class ShardedOrder:
    """One rank's part of every epoch, split into batches.

    Parameters
    ----------
    num_samples : int
        Samples in the split.
    rank, world_size : int
        This process's rank and the number of ranks.
    batch_size : int
        Samples per batch on this rank.
    seed : int
        Seed of the epoch permutations.
    shuffle : bool
        Permute every epoch (train); ``False`` keeps the stored order (val).
    pad : bool
        Pad the order by wrapping to a multiple of ``world_size`` (see the module docstring).
    drop_last : bool
        Drop each rank's final partial batch.
    repeats : int
        Copies of each sample per epoch (repeated augmentation, see the module docstring); 1: none.
    """
    num_samples: int
    rank: int = 0
    world_size: int = 1
    batch_size: int = 1
    seed: int = 0
    shuffle: bool = True
    pad: bool = True
    drop_last: bool = True
    repeats: int = 1

    def __post_init__(self):
        if self.num_samples < 1:
            raise ValueError(f"ShardedOrder: num_samples must be >= 1, got {self.num_samples}")
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"ShardedOrder: need 0 <= rank < world_size, got rank={self.rank} "
                             f"world_size={self.world_size}")
        if self.batch_size < 1:
            raise ValueError(f"ShardedOrder: batch_size must be >= 1, got {self.batch_size}")
        if self.repeats < 1 or (self.repeats > 1 and not self.pad):
            raise ValueError(f"ShardedOrder: repeats={self.repeats} needs repeats >= 1, and pad=True when > 1")

    @property
    def samples_per_rank(self) -> int:
        """Samples this rank is given per epoch, before dropping a partial batch."""
        if self.pad:
            return -(-self.num_samples // self.world_size)
        return len(range(self.rank, self.num_samples, self.world_size))

    @property
    def num_batches(self) -> int:
        """Batches per epoch on this rank (the same for every epoch)."""
        n = self.samples_per_rank
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _mine(self, epoch: int):
        """This rank's (sample indices, copy numbers) of ``epoch``, in reading order, trimmed as ``indices``."""
        order = epoch_permutation(self.num_samples, self.seed, epoch) if self.shuffle \
            else np.arange(self.num_samples)
        copies = np.zeros(len(order), dtype=np.int64)
        if self.repeats > 1:
            order = np.repeat(order, self.repeats)
            copies = np.tile(np.arange(self.repeats, dtype=np.int64), self.num_samples)
        if self.pad:
            total = self.samples_per_rank * self.world_size
            # np.resize repeats from the start: the wrap-around padding (with repeats, a cut: r N >= total)
            order, copies = np.resize(order, total), np.resize(copies, total)
        keep = self.num_batches * self.batch_size
        return (order[self.rank::self.world_size][:keep].astype(np.int64),
                copies[self.rank::self.world_size][:keep])

    def indices(self, epoch: int) -> np.ndarray:
        """This rank's sample indices for ``epoch``, in reading order, trimmed to whole batches if drop_last."""
        return self._mine(epoch)[0]

    def remaining(self, epoch: int, batches_done: int) -> np.ndarray:
        """The samples of ``epoch`` still to read after ``batches_done`` batches: what a resumed run reads."""
        return self.remaining_with_keys(epoch, batches_done)[0]

    def remaining_with_keys(self, epoch: int, batches_done: int):
        """``remaining(epoch, batches_done)`` and the keys their crops and flips are drawn from (``pipelines.crop``):
        the sample index, plus ``copy * num_samples`` for a repeated sample's later copies (without repeats, the
        sample indices themselves)."""
        if not 0 <= batches_done <= self.num_batches:
            raise ValueError(f"batches_done={batches_done} outside [0, {self.num_batches}] for this loader; "
                             "was the state saved with another batch size or world size?")
        indices, copies = self._mine(epoch)
        start = batches_done * self.batch_size
        return indices[start:], (indices + copies * self.num_samples)[start:]
