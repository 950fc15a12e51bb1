"""Checkpoints: atomic timm-style `.pth.tar` files, RNG capture for exact resume, and initial-weight loading.

A checkpoint is one dict under constant keys (timm's `state_dict`, `state_dict_ema`, `optimizer`, `epoch`, `arch`,
plus `config` and the resume state `scheduler`, `scaler`, `loader`, `rng`, `step`), so timm's `load_checkpoint`
and the seed's transfer recipe read it, and `--resume` restores a run exactly. Files are written to a temporary
name and renamed (`os.replace`), so an interrupted write (Ctrl-C, preemption) never leaves a half-written
checkpoint behind: the previous one stays intact.
"""
import json
import os
import random
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

__all__ = ['CheckpointError', 'save_checkpoint', 'load_checkpoint', 'resolve_checkpoint_path', 'capture_rng_state',
           'restore_rng_state', 'load_initial_checkpoint', 'history_name', 'LAST', 'BEST']

LAST = 'last.pth.tar'
BEST = 'model_best.pth.tar'


HISTORY_GLOB = 'checkpoint-*.pth.tar'  # every history_name


def history_name(epoch: int) -> str:
    """File name of an epoch's checkpoint kept by --checkpoint-hist (timm's CheckpointSaver names them so)."""
    return HISTORY_GLOB.replace('*', str(epoch))


class CheckpointError(ValueError):
    """A checkpoint the user pointed at cannot be used; the message says which file and why."""


def save_checkpoint(state: dict, path: os.PathLike) -> Path:
    """Write `state` to `path` atomically: a temporary file in the same directory, fsync, then `os.replace`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.tmp-{os.getpid()}')
    try:
        with open(tmp, 'wb') as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only still there when the write was interrupted
    return path


def resolve_checkpoint_path(path: os.PathLike, in_run_dir: str = LAST, what: str = '--resume') -> Path:
    """A checkpoint file, or a run directory meaning its `in_run_dir` (last.pth.tar to resume)."""
    path = Path(path)
    if path.is_dir():
        path = path / in_run_dir
    if not path.is_file():
        raise CheckpointError(f'{what}: no checkpoint at {path}; pass a .pth.tar file or a run directory '
                              f'holding {in_run_dir}')
    return path


def load_checkpoint(path: os.PathLike, what: str = 'checkpoint') -> dict:
    """Load a checkpoint on the CPU. A missing or unreadable file is a CheckpointError naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'{what}: file not found: {path}')
    from neatt.models import read_checkpoint_file
    try:
        obj = read_checkpoint_file(path, weights_only=False)
    except Exception as e:  # torch raises many types for a corrupt or foreign file
        raise CheckpointError(f'{what}: cannot read {path} as a PyTorch or safetensors checkpoint '
                              f'({type(e).__name__}: {e})') from e
    if not isinstance(obj, dict):
        raise CheckpointError(f'{what}: {path} holds a {type(obj).__name__}, not a checkpoint dict')
    return obj


def capture_rng_state() -> dict:
    """Every RNG a training step can draw from: python, numpy, torch CPU and (if present) CUDA.

    Only tensors, ints, floats and strings, so `torch.load(weights_only=True)` (timm's loader) reads the file.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {'python': random.getstate(), 'torch': torch.get_rng_state(),
             'numpy': {'kind': kind, 'keys': torch.from_numpy(keys.astype(np.int64)), 'pos': int(pos),
                       'has_gauss': int(has_gauss), 'cached_gaussian': float(cached)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    random.setstate(state['python'])
    n = state['numpy']
    np.random.set_state((n['kind'], n['keys'].numpy().astype(np.uint32), n['pos'], n['has_gauss'],
                         n['cached_gaussian']))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def _head_keys(model: nn.Module) -> set[str]:
    head = model.get_classifier() if hasattr(model, 'get_classifier') else None
    if head is None:
        return set()
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)] for p in head.parameters() if id(p) in names}


WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin')  # a timm model folder (tools/export_model.py, the hub)


def initial_checkpoint_file(path: os.PathLike) -> Path:
    """The file --initial-checkpoint reads: the file given; in a folder, a timm model folder's weights
    (`local-dir:` prefix allowed) or a run directory's model_best.pth.tar."""
    path = Path(str(path).removeprefix('local-dir:'))
    if not path.is_dir():
        return path
    for name in (*WEIGHT_FILES, BEST):
        if (path / name).is_file():
            return path / name
    raise CheckpointError(f'--initial-checkpoint: {path} holds none of {", ".join((*WEIGHT_FILES, BEST))}; pass a '
                          f'checkpoint file, a folder written by tools/export_model.py, or a run directory')


def _folder_architecture(weights: Path) -> Optional[str]:
    """The architecture a timm model folder's config.json names, for the weights file in it."""
    config = weights.parent / 'config.json'
    if weights.name not in WEIGHT_FILES or not config.is_file():
        return None
    try:
        return json.loads(config.read_text()).get('architecture')
    except (ValueError, OSError):
        return None


def load_initial_checkpoint(model: nn.Module, path: os.PathLike, log=print):
    """Load starting weights from a neatt or timm checkpoint into `model` (before DDP/compile).

    The model engineer's `neatt.models.load_checkpoint` does the work: it picks `state_dict_ema`, else
    `state_dict`, else the raw dict, strips DDP/compile prefixes and resamples `pos_embed` with timm's ViT filter
    when the image size differs. A classifier of another class count is left at its fresh init. Missing and
    unexpected keys are printed. Anything else that does not fit means another architecture: a CheckpointError
    naming the file and the first offending keys.
    """
    from neatt.models import load_checkpoint as load_into_model

    path = initial_checkpoint_file(path)
    ckpt = load_checkpoint(path, what='--initial-checkpoint')
    arch = ckpt.get('arch') or _folder_architecture(path) or 'unknown'
    try:
        report = load_into_model(model, ckpt, use_ema=True, strict=False)
    except Exception as e:  # a foreign layout fails inside the filter's shape arithmetic
        raise CheckpointError(f'--initial-checkpoint: {path} (arch {arch}) does not fit model '
                              f'{type(model).__name__}: {type(e).__name__}: {e}') from e
    head = _head_keys(model)
    reinit_head = sorted(m.split(':')[0] for m in report.mismatched if m.split(':')[0] in head)
    mismatched = [m for m in report.mismatched if m.split(':')[0] not in head]
    foreign_missing = [k for k in report.missing if k not in head]
    if mismatched or foreign_missing or report.unexpected:
        parts = []
        if mismatched:
            parts.append(f'shape mismatches: {"; ".join(mismatched[:4])}')
        if foreign_missing:
            parts.append(f'{len(foreign_missing)} weights missing (e.g. {", ".join(foreign_missing[:3])})')
        if report.unexpected:
            parts.append(f'{len(report.unexpected)} unexpected weights (e.g. {", ".join(report.unexpected[:3])})')
        raise CheckpointError(f'--initial-checkpoint: {path} is from another architecture (arch {arch}) than '
                              f'the model being trained: {"; ".join(parts)}. Pass the --model (and '
                              f'--model-kwargs) the checkpoint was trained with.')
    log(f'initial checkpoint: loaded {report.source} of {path} (arch {arch})')
    if reinit_head:
        log(f'  classifier re-initialised (class count differs): {", ".join(reinit_head)}')
    missing = report.missing + report.missing_head_mix
    log(f'  missing keys ({len(missing)}): {", ".join(missing) or "none"}')
    log(f'  unexpected keys ({len(report.unexpected)}): {", ".join(report.unexpected) or "none"}')
    return report


def checkpoint_config(ckpt: dict, path: Optional[os.PathLike] = None) -> Any:
    """The config dict a checkpoint was trained with (for --resume without --preset)."""
    if not isinstance(ckpt.get('config'), dict):
        raise CheckpointError(f'--resume: {path} has no saved config; it was not written by train_fast.py')
    return ckpt['config']
