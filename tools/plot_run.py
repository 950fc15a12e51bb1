#!/usr/bin/env python
"""Draw a run's curves to a PNG: train loss, val top-1 (model and EMA), learning rate, all against the optimizer step.

    python tools/plot_run.py runs/demo                 # writes runs/demo/curves.png
    python tools/plot_run.py runs/demo --out demo.png

Reads `<run>/metrics.jsonl` (written by train_fast.py). Units: loss in nats, accuracy in %, lr per step. When a
resumed run logged a step twice, the later record wins.
"""
import argparse
import json
import os
import sys
from pathlib import Path


def read_metrics(run_dir: Path) -> dict:
    """{kind: [records sorted by step]}, keeping the last record for each (kind, step)."""
    path = run_dir / 'metrics.jsonl'
    latest: dict = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f'{path}:{n}: not JSON (a truncated write?)') from None
        latest[(rec['kind'], rec['step'])] = rec
    out: dict = {}
    for (kind, _), rec in sorted(latest.items(), key=lambda kv: kv[0][1]):
        out.setdefault(kind, []).append(rec)
    return out


def plot(metrics: dict, out: Path, title: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    train, evals = metrics.get('train', []), metrics.get('eval', [])
    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(15, 4))
    ax_loss.plot([r['step'] for r in train], [r['loss'] for r in train], label='train')
    if evals:
        ax_loss.plot([r['step'] for r in evals], [r['loss'] for r in evals], 'o-', label='val')
        ax_acc.plot([r['step'] for r in evals], [r['top1'] for r in evals], 'o-', label='model top-1')
        if 'ema_top1' in evals[0]:
            ax_acc.plot([r['step'] for r in evals], [r['ema_top1'] for r in evals], 's--', label='EMA top-1')
    ax_lr.plot([r['step'] for r in train], [r['lr'] for r in train])
    for ax, name in ((ax_loss, 'loss'), (ax_acc, 'val accuracy (%)'), (ax_lr, 'learning rate')):
        ax.set_xlabel('optimizer step')
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    ax_loss.legend()
    ax_acc.legend()
    fig.suptitle(title)
    fig.tight_layout()
    tmp = out.with_name(f'.{out.name}.tmp-{os.getpid()}.png')
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
        plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('run_dir', type=Path, help='run directory written by train_fast.py')
    parser.add_argument('--out', type=Path, default=None, help='PNG path (default: RUN_DIR/curves.png)')
    args = parser.parse_args(argv)
    if not (args.run_dir / 'metrics.jsonl').is_file():
        parser.error(f'{args.run_dir} has no metrics.jsonl; pass a run directory written by train_fast.py '
                     f'(e.g. runs/demo)')
    try:
        metrics = read_metrics(args.run_dir)
    except ValueError as e:
        parser.error(str(e))
    if not metrics.get('train'):
        parser.error(f'{args.run_dir}/metrics.jsonl has no train records yet (lower --log-interval or train longer)')
    out = args.out or args.run_dir / 'curves.png'
    plot(metrics, out, title=str(args.run_dir))
    summary = metrics.get('summary', [{}])[-1]
    best = f', best val top-1 {summary["best_top1"]:.2f}%' if 'best_top1' in summary else ''
    print(f'curves: {out}{best}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
