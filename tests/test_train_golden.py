"""Golden losses (torchtitan's practice): the first steps of the demo preset on CPU must keep their values.

The run is fully seeded: in-memory digits (tests/_train_data.py), the demo preset's model and optimizer (no
warmup, so the steps move the weights), one thread. A change to the model, the loss, the optimizer or the schedule moves these numbers; if the change is
intended, regenerate the file and commit it with the change:

    NEATT_UPDATE_GOLDEN=1 python -m pytest tests/test_train_golden.py
"""
import json
import os
from pathlib import Path

import pytest
import torch

from neatt.train.config import PRESETS, apply_overrides
from neatt.train.loop import Trainer

from _train_data import DigitsLoader, digits_tensors

GOLDEN = Path(__file__).parent / 'assets' / 'losses' / 'train_demo_cpu.json'
STEPS = 8


def _demo_losses(tmp_path) -> list:
    cfg = PRESETS['demo']()
    cfg = apply_overrides(cfg, dict(data_dir='unused', output=str(tmp_path), experiment='golden', batch_size=16, warmup_epochs=0,
                                    max_steps=STEPS, log_interval=1))
    x, y = digits_tensors(160, size=cfg.model.img_size)
    loaders = (DigitsLoader(x[:128], y[:128], 16), DigitsLoader(x[128:], y[128:], 16, shuffle=False,
                                                                   drop_last=False))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # reductions split across threads round differently
    trainer = Trainer(cfg, loaders=loaders, log=lambda m: None)
    try:
        trainer.train()
    finally:
        trainer.close()
        torch.set_num_threads(threads)
    records = [json.loads(line) for line in (tmp_path / 'golden' / 'metrics.jsonl').read_text().splitlines()]
    return [r['loss'] for r in records if r['kind'] == 'train']


def test_demo_preset_first_steps_match_the_golden_losses(tmp_path):
    losses = _demo_losses(tmp_path)
    assert len(losses) == STEPS
    if os.environ.get('NEATT_UPDATE_GOLDEN'):
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps({'preset': 'demo', 'steps': STEPS, 'losses': losses}, indent=1) + '\n')
        pytest.skip(f'wrote {GOLDEN}')
    golden = json.loads(GOLDEN.read_text())
    # 1e-4 relative: far above CPU rounding differences between machines, far below any real change
    assert losses == pytest.approx(golden['losses'], rel=1e-4)
