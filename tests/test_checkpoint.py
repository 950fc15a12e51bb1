"""Checkpoint files: atomic writes survive an interrupted save, RNG states round-trip, timm can read the files."""
import random

import numpy as np
import pytest
import torch

from neatt.train import checkpoint as ckpt_mod
from neatt.train.checkpoint import (CheckpointError, capture_rng_state, load_checkpoint, resolve_checkpoint_path,
                                    restore_rng_state, save_checkpoint)


def test_interrupted_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / 'last.pth.tar'
    save_checkpoint({'step': 1, 'w': torch.ones(3)}, path)

    def torch_save_then_ctrl_c(obj, f):
        f.write(b'half a checkpoint')
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_mod.torch, 'save', torch_save_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({'step': 2, 'w': torch.zeros(3)}, path)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ['last.pth.tar']  # no temporary file left behind
    restored = load_checkpoint(path)
    assert restored['step'] == 1 and torch.equal(restored['w'], torch.ones(3))


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    save_checkpoint({'rng': capture_rng_state()}, tmp_path / 'c.pth.tar')
    first = (random.random(), np.random.rand(4).tolist(), torch.rand(4).tolist())
    state = torch.load(tmp_path / 'c.pth.tar', weights_only=True)['rng']  # what timm's loader uses
    restore_rng_state(state)
    assert (random.random(), np.random.rand(4).tolist(), torch.rand(4).tolist()) == first


def test_unreadable_or_missing_files_are_named(tmp_path):
    bad = tmp_path / 'bad.pth.tar'
    bad.write_bytes(b'not a checkpoint')
    with pytest.raises(CheckpointError, match=f'--resume: cannot read {bad}'):
        load_checkpoint(bad, what='--resume')
    with pytest.raises(CheckpointError, match='no checkpoint at .*last.pth.tar'):
        resolve_checkpoint_path(tmp_path)
    save_checkpoint({'step': 0}, tmp_path / 'last.pth.tar')
    assert resolve_checkpoint_path(tmp_path) == tmp_path / 'last.pth.tar'
