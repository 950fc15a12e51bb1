"""train_fast.py on the real converted digits dataset: every backend end to end, exact resume through the real
loaders, SIGTERM from outside, and the messages (not tracebacks) for bad input."""
import json
import os
import signal
import subprocess
import time

import pytest
import torch

from neatt.train.checkpoint import LAST
from neatt.train.config import PRESETS, apply_overrides
from neatt.train.loop import Trainer

from _train_data import PYTHON, REPO, TINY_MODEL, convert_digits, run_cli

def tiny_flags(depth=2):
    return ['--model-kwargs', f'depth={depth}', 'embed_dim=48', 'num_heads=3', '--img-size', '16', '-b', '128',
            '--warmup-epochs', '0', '-j', '1']


TINY_FLAGS = tiny_flags()


@pytest.fixture(scope='module')
def digits_dir(tmp_path_factory):
    return convert_digits(tmp_path_factory.mktemp('data'))


def _summary(run_dir):
    return json.loads((run_dir / 'summary.json').read_text())


@pytest.mark.slow
@pytest.mark.parametrize('backend', ['ffcv', 'dali', 'torch'])
def test_end_to_end_run_per_backend(digits_dir, tmp_path, backend):
    r = run_cli('--data-dir', digits_dir, '--output', tmp_path, '--experiment', backend, '--backend', backend,
                '--epochs', '2', *TINY_FLAGS)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / backend
    summary = _summary(run)
    assert summary['status'] == 'completed' and summary['epochs_done'] == 2 and summary['steps'] == 2 * (1437 // 128)
    assert 0.0 <= summary['best_top1'] <= 100.0 and summary['img_s'] > 0 and 0.0 <= summary['data_stall'] < 1.0
    assert 'completed: best val top-1' in r.stdout + r.stderr
    evals = [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines()]
    assert [e['epoch'] for e in evals if e['kind'] == 'eval'] == [0, 1]
    assert (run / 'model_best.pth.tar').is_file() and any((run / 'tb').iterdir())


def _in_process_cfg(digits_dir, root, backend, **overrides):
    cfg = apply_overrides(PRESETS['demo'](), dict(
        TINY_MODEL, img_size=16, data_dir=str(digits_dir), backend=backend, output=str(root), experiment='r',
        batch_size=128, warmup_epochs=0, workers=1, epochs=2, log_interval=5, **overrides))
    return cfg


def _run(cfg):
    trainer = Trainer(cfg, log=lambda m: None)
    try:
        return trainer.train()
    finally:
        trainer.close()


@pytest.mark.slow
@pytest.mark.parametrize('backend,flags', [
    ('ffcv', {}), ('torch', {}),
    ('ffcv', dict(min_res=8, start_ramp=0, end_ramp=1, res_step=8)),  # progressive: epoch 0 at 8 px, 1 at 16
], ids=['ffcv', 'torch', 'ffcv-progressive'])
def test_resume_through_the_real_loader_is_bitwise_identical(digits_dir, tmp_path, backend, flags):
    n, k = 14, 5  # 11 steps per epoch: the stop is mid-epoch 0, the end crosses into epoch 1
    straight = _in_process_cfg(digits_dir, tmp_path / 'a', backend, max_steps=n, **flags)
    _run(straight)
    part = _in_process_cfg(digits_dir, tmp_path / 'b', backend, max_steps=k, **flags)
    _run(part)
    _run(apply_overrides(part, {'resume': str(tmp_path / 'b' / 'r'), 'max_steps': n}))
    a, b = (torch.load(root / 'r' / LAST, map_location='cpu', weights_only=False)
            for root in (tmp_path / 'a', tmp_path / 'b'))
    assert a['step'] == b['step'] == n
    for key in ('state_dict', 'state_dict_ema'):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f'{backend}: {key}.{name} differs after resume'


@pytest.mark.slow
def test_sigterm_from_outside_checkpoints_and_exits_zero(digits_dir, tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1')
    log = open(tmp_path / 'out.log', 'w')  # a file, not a pipe: an undrained pipe would block the child
    proc = subprocess.Popen([PYTHON, str(REPO / 'train_fast.py'), '--data-dir', str(digits_dir), '--output',
                             str(tmp_path), '--experiment', 'p', '--backend', 'torch', '--epochs', '50',
                             '--log-interval', '1', *TINY_FLAGS], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    metrics = tmp_path / 'p' / 'metrics.jsonl'
    deadline = time.time() + 240
    while not (metrics.exists() and metrics.read_text().count('"train"') >= 3) and time.time() < deadline:
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    log.close()
    out = (tmp_path / 'out.log').read_text()
    assert proc.returncode == 0, out[-3000:]
    assert 'signal SIGTERM: checkpointed step' in out and 'preempted' in out
    ckpt = torch.load(tmp_path / 'p' / LAST, map_location='cpu', weights_only=False)
    assert ckpt['step'] >= 3 and _summary(tmp_path / 'p')['status'] == 'preempted'


@pytest.mark.slow
def test_torchrun_two_processes_through_ffcv_equal_one_process_with_the_same_global_batch(digits_dir, tmp_path):
    """The README's torchrun command on CPU (gloo): 2 processes x 64 images through the FFCV loader train the
    weights that 1 process x 128 trains, since each global batch holds the same samples with the same crops
    (pipelines.sharding, pipelines.crop) and DDP averages the gradients; with SGD, no noise and no augmentation
    the two runs differ only by float summation order. Rank 0 alone writes the run directory."""
    flags = ['--data-dir', digits_dir, '--output', tmp_path, '--backend', 'ffcv', '--epochs', '1', '--opt', 'sgd',
             '--lr', '0.05', '--no-model-ema', *tiny_flags(), '--model-kwargs', 'neatt_sigma=0.0']
    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1')
    two = subprocess.run([PYTHON, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                          str(REPO / 'train_fast.py'), *map(str, flags), '--experiment', 'two', '-b', '64'],
                         capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert two.returncode == 0, two.stderr[-3000:]
    one = run_cli(*flags, '--experiment', 'one', '-b', '128', timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    assert '2 process(es) on cpu' in two.stdout + two.stderr and 'global batch 128' in two.stdout + two.stderr
    a, b = (torch.load(tmp_path / name / LAST, map_location='cpu', weights_only=False) for name in ('two', 'one'))
    assert a['step'] == b['step'] == 1437 // 128 and len(a['loader']) == 2 and len(b['loader']) == 1
    for name, tensor in b['state_dict'].items():
        torch.testing.assert_close(a['state_dict'][name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    assert _summary(tmp_path / 'two')['best_top1'] == pytest.approx(_summary(tmp_path / 'one')['best_top1'], abs=0.3)


# ------------------------------------------------------------------------------------------------ bad input

def _assert_user_error(r, *fragments):
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert 'Traceback' not in r.stderr, r.stderr[-2000:]
    for fragment in fragments:
        assert fragment in r.stderr, (fragment, r.stderr[-2000:])


def test_missing_data_dir(tmp_path):
    r = run_cli('--data-dir', tmp_path / 'nope', '--output', tmp_path, *TINY_FLAGS)
    _assert_user_error(r, f'{tmp_path / "nope"} does not exist', 'convert_datasets.py')


def test_unknown_preset(tmp_path):
    _assert_user_error(run_cli('--preset', 'imagenet_fast', '--data-dir', tmp_path), "invalid choice: 'imagenet_fast'")


def test_dataset_without_the_backends_format(tmp_path):
    from neatt.datasets.manifest import new_manifest, write_manifest
    data = tmp_path / 'digits'
    data.mkdir()
    manifest = new_manifest('digits', None, [str(i) for i in range(10)], {'max_resolution': 32})
    manifest['splits'] = {s: {'count': 10, 'label_counts': [1] * 10} for s in ('train', 'val')}
    write_manifest(str(data), manifest)  # converted splits, but no format files at all
    r = run_cli('--data-dir', data, '--output', tmp_path, '--backend', 'dali', *TINY_FLAGS)
    _assert_user_error(r, '--data-dir/--backend', "backend 'dali'", 'not converted')


@pytest.mark.slow
def test_checkpoint_of_another_architecture_and_resume_with_a_changed_config(digits_dir, tmp_path):
    r = run_cli('--data-dir', digits_dir, '--output', tmp_path, '--experiment', 'src', '--backend', 'torch',
                '--max-steps', '1', *TINY_FLAGS)
    assert r.returncode == 0, r.stderr[-2000:]
    src = tmp_path / 'src' / LAST
    r = run_cli('--data-dir', digits_dir, '--output', tmp_path, '--experiment', 'dst', '--backend', 'torch',
                *tiny_flags(depth=4), '--initial-checkpoint', src)
    _assert_user_error(r, f'--initial-checkpoint: {src} is from another architecture', 'blocks.2.')
    assert (tmp_path / 'dst' / LAST).exists() is False
    r = run_cli('--resume', tmp_path / 'src', '--lr', '0.1')
    _assert_user_error(r, '--resume: the config differs', f'--lr 0.1 (checkpoint: {PRESETS["demo"]().optim.lr})')
    r = run_cli('--resume', tmp_path / 'nowhere')
    _assert_user_error(r, '--resume: no checkpoint at')
