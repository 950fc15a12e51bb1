"""The command-line tools as a user runs them: `--help` works for each, and a mistake is a usage error (exit 2)
that says what is wrong, not a traceback."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = sorted(f for f in os.listdir(os.path.join(ROOT, 'tools')) if f.endswith('.py'))


def _run(script, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)


@pytest.mark.parametrize('tool', TOOLS + ['train_fast.py'])
def test_help(tool):
    script = tool if tool == 'train_fast.py' else os.path.join('tools', tool)
    r = _run(script, '--help')
    assert r.returncode == 0 and r.stdout.startswith('usage:'), r.stdout[-2000:] + r.stderr[-2000:]


@pytest.mark.parametrize('args,message', [
    (['--data', 'nowhere'], 'dataset dir nowhere does not exist; convert a dataset first'),
    (['--data', 'nowhere', '--aa', 'v9'], "--aa 'v9' is not a timm auto-augment string"),
    (['--data', 'nowhere', '--backends', 'torch,jax'], "--backends: unknown ['jax']"),
])
def test_bench_loader_mistakes_are_usage_errors(args, message):
    r = _run('tools/bench_loader.py', *args)
    assert r.returncode == 2 and message in r.stderr and 'Traceback' not in r.stderr, r.stderr[-3000:]
