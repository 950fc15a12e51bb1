#!/usr/bin/env python
"""Average the weights of a run's best checkpoints into one checkpoint (timm's avg_checkpoints.py, for neatt runs).

    python train_fast.py ... --checkpoint-hist 10          # keeps the 10 best epochs' checkpoint-<epoch>.pth.tar
    python tools/avg_checkpoints.py --input runs/vitb16_300ep -n 5 --output runs/vitb16_300ep/avg5.pth.tar
    python tools/validate.py --data-dir /data/neatt/imagenet --checkpoint runs/vitb16_300ep/avg5.pth.tar

As timm's script does: the checkpoints under --input matching --filter are ranked by their 'metric' (the val
top-1 of their epoch), the -n best are kept, and their EMA weights (the trained ones with --no-use-ema, or where a
checkpoint has no EMA) are averaged in float64, then stored as float32. Two differences, on purpose:
- --filter defaults to the --checkpoint-hist files, 'checkpoint-*.pth.tar': timm's '*.pth.tar' would also take
  last.pth.tar and model_best.pth.tar, which repeat one of them.
- The output is a checkpoint, not a bare state dict: 'state_dict' holds the average, and 'arch' and 'config' come
  from the best checkpoint, so tools/validate.py and --initial-checkpoint read it without more flags (timm's
  load_checkpoint reads it too). It is written atomically, and an existing file is not replaced.

Exit codes: 0 done, 2 a user mistake (nothing matches, checkpoints of different models, an existing output).
"""
import argparse
import glob
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

EXIT_USER_ERROR = 2


class AveragingError(ValueError):
    """The checkpoints asked for cannot be averaged; the message says which file and why."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='avg_checkpoints.py', description=__doc__.split('\n\n')[0])
    p.add_argument('--input', required=True, metavar='PATH', help='run directory holding the checkpoints')
    p.add_argument('--filter', default='checkpoint-*.pth.tar', metavar='WILDCARD',
                   help='checkpoint file pattern under --input (default: %(default)s, the --checkpoint-hist files)')
    p.add_argument('--output', required=True, metavar='PATH', help='the averaged checkpoint to write (.pth.tar)')
    p.add_argument('--no-use-ema', dest='use_ema', action='store_false',
                   help='average the trained weights (state_dict) instead of the EMA (state_dict_ema)')
    p.add_argument('--no-sort', dest='sort', action='store_false',
                   help='average every matching checkpoint instead of the -n best by metric')
    p.add_argument('-n', type=int, default=10, metavar='N', help='how many of the best checkpoints (default 10)')
    return p


def _load(path: str) -> dict:
    import torch
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=False)
    except Exception as e:  # torch raises several types for a damaged file
        raise AveragingError(f'{path}: cannot be read ({type(e).__name__}: {e})') from None
    if not isinstance(ckpt, dict) or 'state_dict' not in ckpt:
        raise AveragingError(f'{path}: not a train_fast.py/timm checkpoint (no state_dict)')
    return ckpt


def select(paths: list, n: int, sort: bool) -> list:
    """[(metric, path)] to average: the `n` with the highest metric (timm's order), or all of them. Each file is
    read and dropped in turn (a ViT-B checkpoint with its optimizer state is about 1 GB)."""
    listed = [(_load(path).get('metric'), path) for path in sorted(paths)]
    if not sort:
        return listed
    ranked = sorted((c for c in listed if c[0] is not None), key=lambda c: (c[0], c[1]))
    if not ranked:
        raise AveragingError(f'none of {len(listed)} checkpoints has a metric to rank by; pass --no-sort to average '
                             f'them all')
    return ranked[-n:]


def average(chosen: list, use_ema: bool) -> tuple:
    """(mean of the chosen checkpoints' weights, the last one's checkpoint without them): float64 sums, float32
    result, integer tensors from the first; one checkpoint in memory at a time."""
    import torch
    total, names = None, None
    for _, path in chosen:
        ckpt = _load(path)
        weights = ckpt.get('state_dict_ema') if use_ema and ckpt.get('state_dict_ema') else ckpt['state_dict']
        if total is None:
            total = {k: v.to(torch.float64) if v.is_floating_point() else v.clone() for k, v in weights.items()}
            names, first = set(weights), path
            continue
        if set(weights) != names:
            raise AveragingError(f'{path} and {first} hold different weights (differing keys: '
                                 f'{sorted(set(weights) ^ names)[:5]}): average checkpoints of one model')
        for k, v in weights.items():
            if v.shape != total[k].shape:
                raise AveragingError(f'{path}: {k} has shape {tuple(v.shape)}, {first} {tuple(total[k].shape)}')
            if v.is_floating_point():
                total[k] += v.to(torch.float64)
    mean = {k: (v / len(chosen)).to(torch.float32) if v.is_floating_point() else v for k, v in total.items()}
    return mean, {k: ckpt.get(k) for k in ('arch', 'config', 'epoch')}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from neatt.train.checkpoint import save_checkpoint
    try:
        if args.n < 1:
            raise AveragingError(f'-n must be >= 1, got {args.n}')
        if os.path.exists(args.output):
            raise AveragingError(f'--output {args.output} already exists; pick another name (nothing was written)')
        paths = [p for p in glob.glob(os.path.join(args.input, args.filter)) if os.path.isfile(p)]
        if not paths:
            raise AveragingError(f'no file matches {os.path.join(args.input, args.filter)}; train with '
                                 f'--checkpoint-hist N to keep the N best epochs, or pass --filter')
        chosen = select(paths, args.n, args.sort)
        state_dict, best = average(chosen, args.use_ema)
    except AveragingError as e:
        print(f'avg_checkpoints.py: error: {e}', file=sys.stderr)
        return EXIT_USER_ERROR
    for metric, path in chosen:
        print(f'{metric if metric is not None else "-"}\t{path}')
    save_checkpoint({'state_dict': state_dict, **best, 'averaged': [str(path) for _, path in chosen]}, args.output)
    which = 'EMA' if args.use_ema else 'trained'
    print(f'averaged the {which} weights of {len(chosen)} checkpoint(s) into {args.output}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
