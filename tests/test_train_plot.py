"""tools/plot_run.py draws a run's metrics.jsonl to a PNG, and refuses a directory that is not a run."""
import json
import subprocess
import sys

from PIL import Image

from _train_data import REPO


def _write_run(run):
    run.mkdir()
    lines = [{'kind': 'train', 'step': s, 'time': 0, 'loss': 2.0 / s, 'lr': 1e-3 * s} for s in range(1, 9)]
    lines += [{'kind': 'eval', 'step': 4, 'time': 0, 'epoch': 0, 'loss': 1.0, 'top1': 50.0, 'top5': 90.0,
               'ema_top1': 40.0, 'ema_top5': 80.0, 'ema_loss': 1.2},
              {'kind': 'eval', 'step': 8, 'time': 0, 'epoch': 1, 'loss': 0.5, 'top1': 80.0, 'top5': 99.0,
               'ema_top1': 70.0, 'ema_top5': 95.0, 'ema_loss': 0.7},
              {'kind': 'summary', 'step': 8, 'time': 0, 'best_top1': 80.0}]
    (run / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in lines))


def test_plot_run_writes_a_png(tmp_path):
    run = tmp_path / 'run'
    _write_run(run)
    r = subprocess.run([sys.executable, str(REPO / 'tools' / 'plot_run.py'), str(run)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f'curves: {run / "curves.png"}, best val top-1 80.00%' in r.stdout
    with Image.open(run / 'curves.png') as im:
        assert im.format == 'PNG' and im.size == (1500, 400)


def test_plot_run_refuses_a_directory_without_metrics(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / 'tools' / 'plot_run.py'), str(tmp_path)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and 'has no metrics.jsonl' in r.stderr and 'Traceback' not in r.stderr
