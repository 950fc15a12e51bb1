"""The Trainer on CPU with an in-memory loader: exact resume, SIGTERM, NaN stop, accumulation, DDP, transfer."""
import json
import math
import os
import signal
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from neatt.train.checkpoint import BEST, LAST, CheckpointError
from neatt.train.config import apply_overrides, config_from_dict
from neatt.train.loop import NonFiniteLossError, Trainer, UserInputError
from neatt.train.metrics import EvalAccumulator, topk_correct

from _cuda import no_host_sync
from _train_data import REPO, DigitsLoader, ResizingDigitsLoader, digits_tensors, tiny_config

N_TRAIN, N_VAL = 64, 37  # 37 val samples: uneven shards under 2 ranks


# For comparing different batchings of the same samples: SGD is linear in the gradient (Adam's first step is about
# sign(grad), which amplifies rounding), and Ne-Att's training noise (neatt_sigma) is drawn per micro-batch.
DETERMINISTIC = dict(opt='sgd', lr=0.05, model_kwargs={'neatt_sigma': 0.0})


@pytest.fixture(scope='module')
def digits():
    x, y = digits_tensors(N_TRAIN + N_VAL)
    return (x[:N_TRAIN], y[:N_TRAIN]), (x[N_TRAIN:], y[N_TRAIN:])


def _loaders(digits, batch_size, rank=0, world_size=1, train_cls=DigitsLoader, **kw):
    (xt, yt), (xv, yv) = digits
    return (train_cls(xt, yt, batch_size, rank=rank, world_size=world_size, **kw),
            DigitsLoader(xv, yv, 8, rank=rank, world_size=world_size, shuffle=False, drop_last=False))


def _train(cfg, digits, train_cls=DigitsLoader, **loader_kw):
    trainer = Trainer(cfg, loaders=_loaders(digits, cfg.optim.batch_size, train_cls=train_cls, **loader_kw),
                      log=lambda m: None)
    try:
        return trainer.train(), trainer
    finally:
        trainer.close()


def _ckpt(cfg):
    return torch.load(os.path.join(cfg.run.output, cfg.run_name, LAST), map_location='cpu', weights_only=False)


def _assert_same_tensors(a, b, exact=True):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same_tensors(a[k], b[k], exact)
    elif isinstance(a, (list, tuple)):
        for x, y in zip(a, b):
            _assert_same_tensors(x, y, exact)
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b) if exact else torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    else:
        assert a == b


def test_topk_correct_matches_timm_accuracy():
    from timm.utils import accuracy
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(50, 10, generator=g), torch.randint(0, 10, (50,), generator=g)
    top1, top5 = accuracy(logits, target, topk=(1, 5))
    counts = topk_correct(logits, target)
    assert counts[0].item() / 50 * 100 == pytest.approx(top1.item())
    assert counts[1].item() / 50 * 100 == pytest.approx(top5.item())


def test_eval_accumulator_sums_match_a_hand_count():
    g = torch.Generator().manual_seed(1)
    acc = EvalAccumulator(torch.device('cpu'))
    logits, target = torch.randn(30, 7, generator=g), torch.randint(0, 7, (30,), generator=g)
    for part in (slice(0, 12), slice(12, 30)):
        acc.update(logits[part], target[part], F.cross_entropy(logits[part], target[part], reduction='sum'))
    top1 = sum(int(logits[i].argmax() == target[i]) for i in range(30))
    top5 = sum(int(target[i] in logits[i].topk(5).indices) for i in range(30))
    got = acc.compute()
    assert got['count'] == 30 and got['top1'] == pytest.approx(100 * top1 / 30)
    assert got['top5'] == pytest.approx(100 * top5 / 30)
    assert got['loss'] == pytest.approx(float(F.cross_entropy(logits, target)))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_cuda_eval_accumulator_never_waits_for_the_gpu():
    """A sync per val batch would leave the GPU idle while the host fetches the next one."""
    acc = EvalAccumulator(torch.device('cuda'))
    logits, target = torch.randn(8, 10, device='cuda'), torch.randint(0, 10, (8,), device='cuda')
    with no_host_sync():
        acc.update(logits, target, F.cross_entropy(logits, target, reduction='sum'))
    assert acc.compute()['count'] == 8


def test_run_trains_evaluates_and_writes_its_files(tmp_path, digits):
    cfg = tiny_config(tmp_path, epochs=2)
    summary, _ = _train(cfg, digits)
    run = tmp_path / 'runs' / 't'
    assert {LAST, BEST, 'config.json', 'metrics.jsonl', 'summary.json', 'tb'} <= {p.name for p in run.iterdir()}
    ckpt = _ckpt(cfg)
    assert ckpt['step'] == summary['steps'] == 2 * (N_TRAIN // 16) and ckpt['arch'] == cfg.model.model
    assert ckpt['epoch'] == 1 and ckpt['state_dict_ema'] is not None  # timm: the last epoch trained on
    records = [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines()]
    evals = [r for r in records if r['kind'] == 'eval']
    assert len(evals) == 2 and {'top1', 'top5', 'loss', 'ema_top1', 'ema_top5', 'ema_loss'} <= evals[0].keys()
    assert summary['best_top1'] == max(max(r['top1'], r['ema_top1']) for r in evals)
    # timm itself loads our checkpoint (the seed's transfer recipe relies on it)
    import timm
    model = timm.create_model(cfg.model.model, num_classes=10, img_size=32, **cfg.model.model_kwargs)
    timm.models.load_checkpoint(model, str(run / LAST), use_ema=True)
    _assert_same_tensors(model.state_dict(), ckpt['state_dict_ema'])


@pytest.mark.parametrize('stop_at', [3, 4])  # mid-epoch, and exactly at an epoch end
def test_resume_is_bitwise_identical(tmp_path, digits, stop_at):
    straight = tiny_config(tmp_path / 'a', epochs=2, checkpoint_interval=1)
    _train(straight, digits)
    part = tiny_config(tmp_path / 'b', epochs=2, max_steps=stop_at)
    assert _train(part, digits)[0]['status'] == 'max_steps'
    assert _ckpt(part)['step'] == stop_at
    resumed = apply_overrides(part, {'resume': str(tmp_path / 'b' / 'runs' / 't'), 'max_steps': 0})
    _train(resumed, digits)
    a, b = _ckpt(straight), _ckpt(resumed)
    for key in ('state_dict', 'state_dict_ema', 'optimizer', 'scheduler', 'step', 'train_state'):
        _assert_same_tensors(a[key], b[key])


def test_per_epoch_schedule_follows_timm_cosine_formula(tmp_path, digits):
    """--no-sched-on-updates (the seed's timm default): one lr per epoch, warmup then cosine, by hand:
    epoch 0 at warmup_lr; epoch t >= warmup at min + (lr - min) (1 + cos(pi t / epochs)) / 2 (timm's
    CosineLRScheduler with warmup_prefix=False); then --cooldown-epochs more epochs at min_lr."""
    lr, lo, warm, epochs = 0.05, 1e-4, 1e-3, 3
    cfg = tiny_config(tmp_path, epochs=epochs, cooldown_epochs=1, warmup_epochs=1, sched_on_updates=False,
                      opt='sgd', lr=lr, min_lr=lo, warmup_lr=warm, log_interval=1)
    summary, _ = _train(cfg, digits)
    assert summary['epochs_done'] == epochs + 1
    records = [json.loads(line) for line in (tmp_path / 'runs' / 't' / 'metrics.jsonl').read_text().splitlines()]
    seen = {}
    for r in records:
        if r['kind'] == 'train':
            seen.setdefault(r['epoch'], set()).add(r['lr'])
    want = {0: warm, **{t: lo + (lr - lo) * (1 + math.cos(math.pi * t / epochs)) / 2 for t in range(1, epochs)},
            epochs: lo}
    assert seen.keys() == want.keys()
    for t, lrs in seen.items():
        assert len(lrs) == 1 and lrs.pop() == pytest.approx(want[t], rel=1e-9), t


@pytest.mark.parametrize('flags,formula', [
    ({'smoothing': 0.0}, 'ce'), ({'smoothing': 0.1}, 'smoothed_ce'), ({'mixup': 0.8}, 'soft_ce'),
    ({'bce_loss': True, 'smoothing': 0.1}, 'bce_smoothed'), ({'bce_loss': True, 'smoothing': 0.0}, 'bce_smoothed'),
    ({'bce_loss': True, 'mixup': 0.8}, 'bce_soft'), ({'bce_loss': True, 'mixup': 0.8, 'bce_target_thresh': 0.2},
                                                    'bce_thresholded'),
    ({'bce_loss': True, 'mixup': 0.8, 'bce_sum': True}, 'bce_summed'),
    ({'bce_loss': True, 'mixup': 0.8, 'bce_pos_weight': 3.0}, 'bce_pos_weighted'),
])
def test_train_loss_is_the_one_timm_train_py_picks(tmp_path, flags, formula):
    """Each loss against its formula, written here: x (4, 5) logits, y labels, T soft targets (mixup's)."""
    from neatt.train.build import train_loss
    cfg = tiny_config(tmp_path, **flags).aug
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 5, generator=g), torch.tensor([0, 3, 1, 3])
    soft = torch.softmax(3 * torch.randn(4, 5, generator=g), 1)
    logp, s, C = torch.log_softmax(x, 1), cfg.smoothing, 5
    one_hot = torch.nn.functional.one_hot(y, C).float()

    def bce_terms(t, pos_weight=1.0):
        return -(pos_weight * t * torch.nn.functional.logsigmoid(x) + (1 - t) * torch.nn.functional.logsigmoid(-x))

    def bce(t):
        return bce_terms(t).mean()

    want = {'ce': lambda: -logp[range(4), y].mean(),
            'smoothed_ce': lambda: ((1 - s) * -logp[range(4), y] - s * logp.mean(1)).mean(),
            'soft_ce': lambda: -(soft * logp).sum(1).mean(),
            'bce_smoothed': lambda: bce(one_hot * (1 - s) + s / C),
            'bce_soft': lambda: bce(soft),
            'bce_thresholded': lambda: bce((soft > 0.2).float()),
            'bce_summed': lambda: bce_terms(soft).sum(1).mean(),
            'bce_pos_weighted': lambda: bce_terms(soft, pos_weight=3.0).mean()}[formula]()
    target = soft if 'mixup' in flags else y
    torch.testing.assert_close(train_loss(cfg)(x, target), want, rtol=1e-6, atol=1e-7)


def test_train_loader_gets_the_aa_and_color_jitter_and_val_neither(tmp_path, monkeypatch):
    """--aa 3a --color-jitter 0.3 (DeiT III) and --train-interpolation reach the train loader's augmentation; the
    val loader gets none of them."""
    import neatt.train.build as build
    import pipelines.base
    from neatt.train.distributed import DistInfo
    seen = {}
    monkeypatch.setattr(pipelines.base, 'build_loader',
                        lambda data_dir, split, **kw: seen.setdefault(split, kw['augment']))
    cfg = tiny_config(tmp_path, aa='3a', color_jitter=0.3, train_interpolation='random')
    model = build.create_model(cfg.model)
    dist = DistInfo(0, 0, 1, torch.device('cpu'))
    build.build_loader_for(cfg, 'train', model, dist, 16, train=True)
    build.build_loader_for(cfg, 'val', model, dist, 16, train=False)
    assert (seen['train'].aa, seen['train'].color_jitter, seen['train'].interpolation) == ('3a', 0.3, 'random')
    assert (seen['val'].aa, seen['val'].color_jitter, seen['val'].interpolation) == (None, 0.0, 'bicubic')


@pytest.mark.parametrize('sched,flags,factors', [
    ('step', dict(decay_epochs=2, decay_rate=0.5), [1, 1, 0.5, 0.5, 0.25, 0.25]),
    # timm's documented convention (its multistep_lr.py): milestone m takes effect at epoch m - 1
    ('multistep', dict(decay_milestones=(2, 4), decay_rate=0.1), [1, 0.1, 0.1, 0.01, 0.01, 0.01]),
    # warmup_prefix: the step count starts after the 1 warmup epoch, so the first decay comes one epoch later
    ('step', dict(decay_epochs=1, decay_rate=0.5, warmup_epochs=1, warmup_prefix=True),
     [None, 1, 0.5, 0.25, 0.125, 0.0625]),
    ('step', dict(decay_epochs=1, decay_rate=0.5, warmup_epochs=1), [None, 0.5, 0.25, 0.125, 0.0625, 0.03125]),
    # warmup-stable-decay: the lr holds, then falls as 1 - sqrt(progress) over the last --decay-epochs (a fraction
    # of the 6 epochs: 3 here), or by default over 0.2 of them (2 of 10)
    ('wsd', dict(decay_epochs=0.5, min_lr=0.0), [1, 1, 1, 1, 1 - math.sqrt(1 / 3), 1 - math.sqrt(2 / 3)]),
    ('wsd', dict(min_lr=0.0, epochs=10), [1] * 9 + [1 - math.sqrt(1 / 2)]),
])
def test_step_schedules_decay_as_the_flags_say(tmp_path, digits, sched, flags, factors):
    """--decay-epochs/--decay-milestones/--decay-rate/--warmup-prefix reach timm's scheduler: the lr at each epoch
    (per-epoch schedule) is lr * the factor written here by hand (None: a warmup epoch)."""
    lr = 0.04
    cfg = tiny_config(tmp_path, sched=sched, lr=lr, sched_on_updates=False, max_steps=1,
                      **{'warmup_epochs': 0, 'epochs': 6, **flags})
    _, trainer = _train(cfg, digits)
    for epoch, factor in enumerate(factors):
        trainer.scheduler.step(epoch)
        got = trainer.optimizer.param_groups[0]['lr']
        if factor is not None:
            assert got == pytest.approx(lr * factor, rel=1e-9), (epoch, got)


def test_a_wsd_decay_longer_than_the_run_is_a_user_error(tmp_path, digits):
    with pytest.raises(UserInputError, match='--sched wsd: wsd schedule requires 0 < decay_epochs <= epochs'):
        _train(tiny_config(tmp_path, sched='wsd', decay_epochs=90, epochs=4), digits)


@pytest.mark.parametrize('opt,message', [('nonexistent_opt', 'not found in registry'),
                                         ('adamw_bogus', 'not found in registry')])
def test_an_unknown_optimizer_is_a_user_error(tmp_path, digits, opt, message):
    with pytest.raises(UserInputError, match=f'--opt {opt}: .*{message}.*; timm has .*adamw.*sgd'):
        _train(tiny_config(tmp_path, opt=opt), digits)


def test_mixup_off_epoch_mode_and_cutmix_minmax_reach_timms_mixup(tmp_path, digits, monkeypatch):
    """--mixup-off-epoch 1: epoch 0 mixes, epoch 1 does not (timm's train.py switches Mixup.mixup_enabled off);
    --mixup-mode elem and --cutmix-minmax go to timm's Mixup."""
    from timm.data import Mixup
    calls, real = [], Mixup.__call__

    def spy(self, x, target):
        calls.append(self.mixup_enabled)
        return real(self, x, target)
    monkeypatch.setattr(Mixup, '__call__', spy)
    cfg = tiny_config(tmp_path, mixup=0.8, cutmix=1.0, mixup_off_epoch=1, mixup_mode='elem', cutmix_minmax=(0.3, 0.6),
                      epochs=2)
    _, trainer = _train(cfg, digits)
    n = trainer.updates_per_epoch
    assert calls == [True] * n + [False] * n
    assert trainer.mixup.mode == 'elem' and trainer.mixup.cutmix_minmax == (0.3, 0.6)


@pytest.mark.parametrize('warmup,decays', [(False, [0.0, 0.995, 0.995, 0.995]),
                                           (True, [0.0, 1 - 2 ** (-2 / 3), 1 - 3 ** (-2 / 3), 1 - 4 ** (-2 / 3)])])
def test_model_ema_warmup_ramps_the_decay(tmp_path, digits, monkeypatch, warmup, decays):
    """--model-ema-warmup (timm's): the EMA decay at optimizer step s is 1 - s^(-2/3), capped at
    --model-ema-decay, instead of the decay itself (both copy the model at the first step)."""
    from timm.utils import ModelEmaV3
    seen, real = [], ModelEmaV3.get_decay
    monkeypatch.setattr(ModelEmaV3, 'get_decay', lambda self, step=None: seen.append(real(self, step)) or seen[-1])
    _train(tiny_config(tmp_path, model_ema_warmup=warmup, model_ema_decay=0.995, max_steps=4), digits)
    assert seen == pytest.approx(decays, rel=1e-12)


def _script_val_top1(monkeypatch, scores: list) -> None:
    """The trainer's evaluation gives val top-1 `scores[epoch]`, to the model and the EMA alike."""
    monkeypatch.setattr(Trainer, 'evaluate', lambda self, model: {'top1': scores[self.epoch], 'top5': 100.0,
                                                                  'loss': 1.0, 'count': 1})


def test_checkpoint_hist_keeps_the_best_epochs(tmp_path, digits, monkeypatch):
    """--checkpoint-hist 2 with val top-1 50, 70, 60, 80, 65 over five epochs: checkpoint-3 and checkpoint-1 stay
    (epoch 0's and 2's were deleted when they fell out; epoch 4's never made it), each the checkpoint of its epoch
    with its top-1 as timm's 'metric', and the last checkpoint records that ranking for a resume."""
    _script_val_top1(monkeypatch, [50.0, 70.0, 60.0, 80.0, 65.0])
    cfg = tiny_config(tmp_path, checkpoint_hist=2, epochs=5, model_ema=False)
    _train(cfg, digits)
    run_dir = tmp_path / 'runs' / 't'
    assert sorted(p.name for p in run_dir.glob('checkpoint-*')) == ['checkpoint-1.pth.tar', 'checkpoint-3.pth.tar']
    for epoch, top1 in ((1, 70.0), (3, 80.0)):  # timm's keys: its avg_checkpoints.py ranks the files by 'metric'
        ckpt = torch.load(run_dir / f'checkpoint-{epoch}.pth.tar', map_location='cpu', weights_only=False)
        assert (ckpt['epoch'], ckpt['metric']) == (epoch, top1)
    assert (_ckpt(cfg)['metric'], torch.load(run_dir / BEST, weights_only=False)['metric']) == (65.0, 80.0)
    assert _ckpt(cfg)['train_state']['history'] == [[80.0, 3], [70.0, 1]]
    resumed = Trainer(apply_overrides(cfg, {'resume': str(run_dir)}), loaders=_loaders(digits, 16),
                      log=lambda m: None)
    assert resumed.history == [(80.0, 3), (70.0, 1)]
    resumed.close()


def test_avg_checkpoints_averages_the_best_epochs_ema_weights(tmp_path, digits, monkeypatch, capsys):
    """tools/avg_checkpoints.py on a --checkpoint-hist 3 run scored 50, 70, 60, 80: -n 2 averages the EMA weights
    of epochs 3 and 1 (the mean written out in float64 here), into a checkpoint that timm's load_checkpoint and
    Ne-Att's model read; user mistakes exit 2 and write nothing."""
    import sys
    import timm
    sys.path.insert(0, str(REPO / 'tools'))
    import avg_checkpoints
    _script_val_top1(monkeypatch, [50.0, 70.0, 60.0, 80.0])
    cfg = tiny_config(tmp_path, checkpoint_hist=3, epochs=4)
    _train(cfg, digits)
    run_dir = tmp_path / 'runs' / 't'
    out = tmp_path / 'avg.pth.tar'
    assert avg_checkpoints.main(['--input', str(run_dir), '-n', '2', '--output', str(out)]) == 0
    emas = [torch.load(run_dir / f'checkpoint-{e}.pth.tar', weights_only=False)['state_dict_ema'] for e in (1, 3)]
    avg = torch.load(out, weights_only=False)
    assert avg['arch'] == cfg.model.model and avg['config']['model']['img_size'] == 32
    for name, tensor in avg['state_dict'].items():
        want = (emas[0][name].double() + emas[1][name].double()) / 2
        assert tensor.dtype == torch.float32 and torch.equal(tensor, want.float()), name
    model = timm.create_model(cfg.model.model, num_classes=10, img_size=32, **cfg.model.model_kwargs)
    timm.models.load_checkpoint(model, str(out))
    _assert_same_tensors(model.state_dict(), avg['state_dict'])
    assert '80.0' in capsys.readouterr().out
    # --no-use-ema --no-sort: the trained weights of all three kept files
    trained = [torch.load(run_dir / f'checkpoint-{e}.pth.tar', weights_only=False)['state_dict'] for e in (1, 2, 3)]
    assert avg_checkpoints.main(['--input', str(run_dir), '--no-use-ema', '--no-sort', '--output',
                                 str(tmp_path / 'all.pth.tar')]) == 0
    name = 'blocks.0.attn.qkv.weight'
    torch.testing.assert_close(torch.load(tmp_path / 'all.pth.tar', weights_only=False)['state_dict'][name],
                               sum(t[name].double() for t in trained).float() / 3, rtol=0, atol=1e-7)
    for argv, message in ((['--input', str(run_dir), '--output', str(out)], 'already exists'),
                          (['--input', str(tmp_path), '--output', str(tmp_path / 'x.pth.tar')], 'no file matches'),
                          (['--input', str(run_dir), '-n', '0', '--output', str(tmp_path / 'y.pth.tar')],
                           '-n must be >= 1')):
        assert avg_checkpoints.main(argv) == 2
        assert message in capsys.readouterr().err
    other = torch.load(run_dir / 'checkpoint-1.pth.tar', weights_only=False)
    other['state_dict'] = {**other['state_dict'], 'extra.weight': torch.zeros(2)}
    other['state_dict_ema'] = None
    torch.save(other, run_dir / 'checkpoint-9.pth.tar')
    assert avg_checkpoints.main(['--input', str(run_dir), '--output', str(tmp_path / 'z.pth.tar')]) == 2
    assert 'hold different weights' in capsys.readouterr().err and not (tmp_path / 'z.pth.tar').exists()


def test_drop_is_timms_drop_rate(tmp_path):
    from neatt.train.build import create_model
    model = create_model(tiny_config(tmp_path, drop=0.25).model)
    assert model.head_drop.p == 0.25 and create_model(tiny_config(tmp_path).model).head_drop.p == 0.0


def test_layer_decay_scales_each_layer_as_timm_does_for_vits(tmp_path, digits):
    """--layer-decay d on the 2-block model, by hand (BEiT's rule as timm groups a ViT): the head at the scheduled
    lr, block 1 and the final norm at d, block 0 at d^2, patch/position embeddings and cls token at d^3; the
    head-mixing MLPs with their block. The logged lr is the schedule's (the head's), not a scaled group's."""
    d, lr = 0.5, 0.05
    cfg = tiny_config(tmp_path, layer_decay=d, lr=lr, sched='constant', warmup_epochs=0, max_steps=2, log_interval=1)
    summary, trainer = _train(cfg, digits)
    group_of = {id(p): g for g in trainer.optimizer.param_groups for p in g['params']}
    want = {'cls_token': d ** 3, 'pos_embed': d ** 3, 'patch_embed.proj.weight': d ** 3,
            'blocks.0.attn.qkv.weight': d ** 2, 'blocks.0.mlp.fc2.bias': d ** 2,
            'blocks.1.attn.head_mix.fc1.weight': d, 'blocks.1.norm1.weight': d,
            'norm.weight': d, 'head.weight': 1.0, 'head.bias': 1.0}
    params = dict(trainer.model.named_parameters())
    for name, scale in want.items():
        assert group_of[id(params[name])]['lr'] == pytest.approx(lr * scale, rel=1e-12), name
    assert {round(g['lr'] / lr, 12) for g in trainer.optimizer.param_groups} == {1.0, d, d ** 2, d ** 3}
    records = [json.loads(line) for line in (tmp_path / 'runs' / 't' / 'metrics.jsonl').read_text().splitlines()]
    assert [r['lr'] for r in records if r['kind'] == 'train'] == [pytest.approx(lr)] * 2


def test_opt_betas_reach_the_optimizer_and_are_refused_where_they_do_nothing(tmp_path, digits):
    """--opt-betas as timm's train.py passes them (to create_optimizer_v2): every AdamW group uses them, and after
    one step the first moment is (1 - B1) * grad, by AdamW's definition. With SGD, which has no betas, timm would
    drop them silently; the trainer says so instead."""
    cfg = tiny_config(tmp_path, opt='adamw', opt_betas=(0.5, 0.9), max_steps=1, log_interval=1)
    _, trainer = _train(cfg, digits)
    assert {g['betas'] for g in trainer.optimizer.param_groups} == {(0.5, 0.9)}
    head = trainer.model.head.weight
    state = trainer.optimizer.state[head]
    grad_from_second_moment = (state['exp_avg_sq'] / (1 - 0.9)).sqrt() * torch.sign(state['exp_avg'])
    assert state['exp_avg'].abs().max() > 0
    assert torch.allclose(state['exp_avg'], (1 - 0.5) * grad_from_second_moment, rtol=1e-4, atol=1e-12)
    with pytest.raises(UserInputError, match=r'--opt-betas: --opt sgd has no betas'):
        _train(tiny_config(tmp_path / 'sgd', opt='sgd', opt_betas=(0.5, 0.9), max_steps=1), digits)


def test_resume_mid_epoch_with_a_per_epoch_schedule_is_bitwise_identical(tmp_path, digits):
    common = dict(epochs=2, sched_on_updates=False, warmup_epochs=1)
    straight = tiny_config(tmp_path / 'a', checkpoint_interval=1, **common)
    _train(straight, digits)
    part = tiny_config(tmp_path / 'b', max_steps=3, **common)
    _train(part, digits)
    _train(apply_overrides(part, {'resume': str(tmp_path / 'b' / 'runs' / 't'), 'max_steps': 0}), digits)
    a, b = _ckpt(straight), _ckpt(part)
    for key in ('state_dict', 'optimizer', 'scheduler', 'step', 'train_state'):
        _assert_same_tensors(a[key], b[key])


# progressive resizing of the tiny model (4 px patches, 32 px): epochs 0-1 at 16 px, 2 at 24, 3 at 32
PROGRESSIVE = dict(epochs=4, min_res=16, start_ramp=1, end_ramp=3, res_step=8)


def test_progressive_resizing_trains_each_epoch_at_its_resolution(tmp_path, digits):
    """The train batches each epoch (what the model's forward receives) follow the schedule; eval stays at
    --img-size; the train metrics record the resolution."""
    cfg = tiny_config(tmp_path, **PROGRESSIVE)
    trainer = Trainer(cfg, loaders=_loaders(digits, 16, train_cls=ResizingDigitsLoader), log=lambda m: None)
    seen = set()
    trainer.model.register_forward_pre_hook(lambda m, args: seen.add((trainer.epoch, m.training, args[0].shape[-1])))
    try:
        trainer.train()
    finally:
        trainer.close()
    assert {(e, s) for e, training, s in seen if training} == {(0, 16), (1, 16), (2, 24), (3, 32)}
    assert {s for _, training, s in seen if not training} == {32}
    with open(os.path.join(cfg.run.output, cfg.run_name, 'metrics.jsonl')) as f:
        rows = [json.loads(line) for line in f]
    assert {(r['epoch'], r['train_res']) for r in rows if r['kind'] == 'train'} == \
        {(0, 16), (1, 16), (2, 24), (3, 32)}


def test_progressive_resizing_resumes_bitwise_identical(tmp_path, digits):
    """Stopped in epoch 2 (24 px), resumed: the same weights, optimizer and loader state as a straight run."""
    straight = tiny_config(tmp_path / 'a', checkpoint_interval=1, **PROGRESSIVE)
    _train(straight, digits, train_cls=ResizingDigitsLoader)
    part = tiny_config(tmp_path / 'b', max_steps=10, **PROGRESSIVE)
    _train(part, digits, train_cls=ResizingDigitsLoader)
    _train(apply_overrides(part, {'resume': str(tmp_path / 'b' / 'runs' / 't'), 'max_steps': 0}), digits,
           train_cls=ResizingDigitsLoader)
    a, b = _ckpt(straight), _ckpt(part)
    for key in ('state_dict', 'state_dict_ema', 'optimizer', 'scheduler', 'step', 'train_state'):
        _assert_same_tensors(a[key], b[key])


def test_an_image_size_of_partial_patches_is_a_user_error(tmp_path, digits):
    with pytest.raises(UserInputError, match=r'--img-size 30 is not a multiple of the patch size 4 of --model '
                                             r'neatt_vit_tiny_patch4_32; use 28 or 32'):
        _train(tiny_config(tmp_path, img_size=30), digits)


def test_progressive_resizing_needs_whole_patches(tmp_path, digits):
    cfg = tiny_config(tmp_path, **dict(PROGRESSIVE, res_step=5))  # epoch 2: 24 px rounded to 25
    with pytest.raises(UserInputError, match=r'trains at 25 px in epoch 2, not a multiple of the patch size 4'):
        _train(cfg, digits, train_cls=ResizingDigitsLoader)


def _signal_at_batch_5(signum):
    class SignalAt(DigitsLoader):
        """Signals this process while handing out batch 5 of epoch 0 (as a cluster's preemption would)."""

        def __iter__(self):
            for batch in super().__iter__():
                if self.epoch == 0 and self.batches_done == 5:
                    os.kill(os.getpid(), signum)
                yield batch
    return SignalAt


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGUSR1])
def test_preemption_signal_checkpoints_then_stops_and_resume_finishes_exactly(tmp_path, digits, signum):
    before = signal.getsignal(signum)
    cfg = tiny_config(tmp_path / 'p', epochs=2, batch_size=8)
    summary, _ = _train(cfg, digits, train_cls=_signal_at_batch_5(signum))
    assert summary['status'] == 'preempted'
    assert _ckpt(cfg)['step'] == 5  # the step in flight finishes, is checkpointed, and the run stops
    assert signal.getsignal(signum) == before  # handler restored
    _train(apply_overrides(cfg, {'resume': str(tmp_path / 'p' / 'runs' / 't')}), digits)
    straight = tiny_config(tmp_path / 's', epochs=2, batch_size=8)
    _train(straight, digits)
    _assert_same_tensors(_ckpt(straight)['state_dict'], _ckpt(cfg)['state_dict'])


class _NanAt(DigitsLoader):
    """Batch 3 (0-based) of epoch 0 is all NaN, so step 4 has a NaN loss."""

    def __iter__(self):
        for images, labels in super().__iter__():
            if self.epoch == 0 and self.batches_done == 4:
                images = torch.full_like(images, float('nan'))
            yield images, labels


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, digits):
    cfg = tiny_config(tmp_path, epochs=1, batch_size=8, checkpoint_interval=2, log_interval=3)
    with pytest.raises(NonFiniteLossError, match=r'non-finite loss at step 4 \(epoch 0\).*last good checkpoint'):
        _train(cfg, digits, train_cls=_NanAt)
    ckpt = _ckpt(cfg)
    assert ckpt['step'] == 2
    assert all(torch.isfinite(v).all() for v in ckpt['state_dict'].values())


def test_grad_accumulation_equals_the_big_batch(tmp_path, digits):
    sgd = dict(DETERMINISTIC, max_steps=2)
    big = tiny_config(tmp_path / 'big', batch_size=16, **sgd)
    acc = tiny_config(tmp_path / 'acc', batch_size=8, grad_accum_steps=2, **sgd)
    _train(big, digits)
    _train(acc, digits)
    _assert_same_tensors(_ckpt(big)['state_dict'], _ckpt(acc)['state_dict'], exact=False)


def test_grad_checkpointing_trains_the_same_weights(tmp_path, digits):
    """--grad-checkpointing recomputes the blocks in the backward with the same training noise (on here: sigma 1):
    the weights after two SGD steps are those of the run without it."""
    weights = {}
    for on in (False, True):
        cfg = tiny_config(tmp_path / str(on), grad_checkpointing=on, opt='sgd', lr=0.05, max_steps=2)
        _, trainer = _train(cfg, digits)
        assert trainer.model.grad_checkpointing is on
        weights[on] = _ckpt(cfg)['state_dict']
    _assert_same_tensors(weights[False], weights[True], exact=False)


def test_resume_with_a_changed_config_is_refused(tmp_path, digits):
    cfg = tiny_config(tmp_path, max_steps=1)
    _train(cfg, digits)
    changed = apply_overrides(cfg, {'resume': str(tmp_path / 'runs' / 't'), 'lr': 0.5, 'batch_size': 8})
    expected = rf'--lr 0.5 \(checkpoint: {cfg.optim.lr}\).*-b/--batch-size 8 \(checkpoint: {cfg.optim.batch_size}\)'
    with pytest.raises(UserInputError, match=expected):
        Trainer(changed, loaders=_loaders(digits, 8), log=lambda m: None)


def test_resume_with_more_epochs_goes_on_with_the_longer_schedule(tmp_path, digits):
    """A finished run of 2 epochs (4 steps each), resumed with --epochs 3: it trains epoch 2 on the cosine schedule
    of 3 epochs, which by hand is lr_min + (lr - lr_min) (1 + cos(pi 8 / 12)) / 2 at step 8 of 12, says so, and
    its checkpoint then holds 3 epochs. --epochs 1 on that run is refused, naming what it has trained."""
    settings = dict(DETERMINISTIC, warmup_epochs=0, sched_on_updates=True, min_lr=1e-4)
    cfg = tiny_config(tmp_path, **settings)
    _train(cfg, digits)
    run = str(tmp_path / 'runs' / 't')
    longer = apply_overrides(cfg, {'resume': run, 'epochs': 3})
    lines = []
    trainer = Trainer(longer, loaders=_loaders(digits, 16), log=lines.append)
    try:
        assert (trainer.epoch, trainer.batches_done, trainer.step, trainer.updates_per_epoch) == (2, 0, 8, 4)
        lr, lo = DETERMINISTIC['lr'], settings['min_lr']
        want = lo + (lr - lo) * (1 + math.cos(math.pi * 8 / 12)) / 2
        assert trainer.optimizer.param_groups[0]['lr'] == pytest.approx(want, rel=1e-9)
        assert any('--epochs 3 (checkpoint: 2): the lr schedule goes on' in line for line in lines), lines
        summary = trainer.train()
    finally:
        trainer.close()
    assert (summary['epochs_done'], summary['steps']) == (3, 12)
    assert config_from_dict(_ckpt(longer)['config']).optim.epochs == 3
    with pytest.raises(UserInputError, match=r'--epochs 1: .* has trained 3 epochs already \(of 3\)'):
        Trainer(apply_overrides(cfg, {'resume': run, 'epochs': 1}), loaders=_loaders(digits, 16), log=lambda m: None)


def test_fresh_run_into_an_existing_run_dir_needs_overwrite(tmp_path, digits):
    cfg = tiny_config(tmp_path, max_steps=1, overwrite=False)
    _train(cfg, digits)
    with pytest.raises(UserInputError, match='already holds a run.*--resume.*--overwrite'):
        Trainer(cfg, loaders=_loaders(digits, 16), log=lambda m: None)


def test_overwrite_replaces_the_old_run_only_once_the_new_one_is_built(tmp_path, digits):
    """--overwrite (the demo preset's default): a new run that stops on a mistake (here an unknown --opt) leaves
    the old run as it was; one that starts deletes every file of the old run, its --checkpoint-hist ones too,
    after reading its --initial-checkpoint, which may be one of the old run's files."""
    run_dir = tmp_path / 'runs' / 't'
    _train(tiny_config(tmp_path, checkpoint_hist=2, epochs=1, overwrite=False), digits)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    assert {LAST, 'checkpoint-0.pth.tar', 'metrics.jsonl'} <= set(before)
    with pytest.raises(UserInputError, match='--opt bogus'):
        _train(tiny_config(tmp_path, opt='bogus', overwrite=True), digits)
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before
    _train(tiny_config(tmp_path, max_steps=1, overwrite=True, initial_checkpoint=str(run_dir / LAST)), digits)
    assert not list(run_dir.glob('checkpoint-*')) and (run_dir / LAST).read_bytes() != before[LAST]


def test_transfer_from_a_checkpoint_with_another_class_count_and_image_size(tmp_path, digits):
    from timm.layers import resample_abs_pos_embed
    (xt, yt), val = digits
    five = ((xt, yt % 5), val)
    src = tiny_config(tmp_path / 'src', num_classes=5, max_steps=2)
    _train(src, five)
    src_ckpt = _ckpt(src)['state_dict_ema']
    path = tmp_path / 'src' / 'runs' / 't' / LAST
    lines = []
    dst = tiny_config(tmp_path / 'dst', num_classes=10, img_size=48, initial_checkpoint=str(path))
    trainer = Trainer(dst, loaders=_loaders(digits, 16), log=lines.append)
    trainer.close()
    sd = trainer.model.state_dict()
    for k, v in src_ckpt.items():
        if k.startswith('blocks.') or k in ('cls_token', 'norm.weight', 'patch_embed.proj.weight'):
            assert torch.equal(sd[k], v), k
    expected_pos = resample_abs_pos_embed(src_ckpt['pos_embed'], new_size=[12, 12], num_prefix_tokens=1)
    assert torch.allclose(sd['pos_embed'], expected_pos, atol=1e-6)
    assert sd['head.weight'].shape == (10, 48)
    text = '\n'.join(lines)
    assert 'loaded state_dict_ema' in text and 'classifier re-initialised' in text and 'head.weight' in text
    assert 'missing keys (0)' in text and 'unexpected keys (0)' in text


def test_initial_checkpoint_from_a_timm_safetensors_file(tmp_path, digits):
    """timm's weights as the Hugging Face hub ships them: a vanilla timm ViT's state dict in a .safetensors file
    (written by safetensors itself) starts a Ne-Att run; every weight but the head-mixing MLPs is timm's. A
    damaged file is a CheckpointError naming it."""
    import timm
    from safetensors.torch import save_file
    vanilla = timm.create_model('vit_tiny_patch16_224', img_size=32, patch_size=4, depth=2, embed_dim=48,
                                num_heads=3, num_classes=10)
    path = tmp_path / 'model.safetensors'
    save_file(vanilla.state_dict(), str(path))
    lines = []
    trainer = Trainer(tiny_config(tmp_path, initial_checkpoint=str(path)), loaders=_loaders(digits, 16),
                      log=lines.append)
    trainer.close()
    sd = trainer.model.state_dict()
    for k, v in vanilla.state_dict().items():
        assert torch.equal(sd[k], v), k
    assert sorted(k for k in sd if k not in vanilla.state_dict()) == sorted(
        f'blocks.1.attn.head_mix.fc{i}.{p}' for i in (1, 2, 3) for p in ('weight', 'bias'))
    assert any(f'loaded raw state dict of {path}' in line for line in lines), lines
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r'cannot read .*model\.safetensors as a PyTorch or safetensors'):
        Trainer(tiny_config(tmp_path / 'b', initial_checkpoint=str(path)), loaders=_loaders(digits, 16),
                log=lambda m: None)


def test_initial_checkpoint_from_an_exported_folder_or_a_run_directory(tmp_path, digits):
    """--initial-checkpoint takes a folder: one written by tools/export_model.py (its model.safetensors, also as
    local-dir:PATH) or a run directory (its model_best.pth.tar, EMA weights first); a folder with neither is
    named."""
    import sys
    sys.path.insert(0, str(REPO / 'tools'))
    import export_model
    src = tiny_config(tmp_path / 'src', epochs=1)
    _train(src, digits)
    run_dir = tmp_path / 'src' / 'runs' / 't'
    best = torch.load(run_dir / BEST, map_location='cpu', weights_only=False)
    assert export_model.main(['--checkpoint', str(run_dir), '--output', str(tmp_path / 'shared'),
                              '--weights', 'model']) == 0
    for start, want in ((tmp_path / 'shared', best['state_dict']), (f'local-dir:{tmp_path / "shared"}',
                        best['state_dict']), (run_dir, best['state_dict_ema'])):
        lines = []
        trainer = Trainer(tiny_config(tmp_path / 'dst', initial_checkpoint=str(start), overwrite=True),
                          loaders=_loaders(digits, 16), log=lines.append)
        trainer.close()
        got = trainer.model.state_dict()
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got), start
        assert any('(arch neatt_vit_tiny_patch4_32)' in line for line in lines), lines  # the folder's config.json
    (tmp_path / 'empty').mkdir()
    with pytest.raises(CheckpointError, match='empty holds none of model.safetensors, pytorch_model.bin, '
                                              'model_best.pth.tar'):
        Trainer(tiny_config(tmp_path / 'e', initial_checkpoint=str(tmp_path / 'empty')),
                loaders=_loaders(digits, 16), log=lambda m: None)


def test_checkpoint_of_another_architecture_is_refused(tmp_path, digits):
    src = tiny_config(tmp_path / 'src', max_steps=1)
    _train(src, digits)
    deeper = dict(src.model.model_kwargs, depth=3)
    dst = tiny_config(tmp_path / 'dst', model_kwargs=deeper,
                      initial_checkpoint=str(tmp_path / 'src' / 'runs' / 't' / LAST))
    with pytest.raises(CheckpointError, match=r'from another architecture.*weights missing \(e.g. blocks\.2\.'):
        Trainer(dst, loaders=_loaders(digits, 16), log=lambda m: None)


# ------------------------------------------------------------------------------------------------------- DDP

DDP_SETTINGS = dict(DETERMINISTIC, epochs=1)


def _ddp_worker(rank, world_size, port, root, result_queue, settings=DDP_SETTINGS):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), MASTER_ADDR='127.0.0.1',
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    x, y = digits_tensors(N_TRAIN + N_VAL)
    digits = ((x[:32], y[:32]), (x[N_TRAIN:], y[N_TRAIN:]))
    cfg = tiny_config(root, experiment='ddp', **settings, batch_size=8)  # 2 ranks x 8 = the global batch 16
    summary, trainer = _train(cfg, digits, rank=rank, world_size=world_size, shuffle=False)
    if rank == 0:
        result_queue.put(summary)


def _eval_record(run_dir):
    records = [json.loads(line) for line in (run_dir / 'metrics.jsonl').read_text().splitlines()]
    return next(r for r in records if r['kind'] == 'eval')


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process_with_the_same_global_batch(tmp_path, digits):
    ctx = mp.get_context('spawn')
    queue = ctx.Queue()
    mp.start_processes(_ddp_worker, args=(2, _free_port(), tmp_path, queue), nprocs=2, join=True,
                       start_method='spawn')
    ddp_summary = queue.get(timeout=10)
    (xt, yt), val = digits
    single = tiny_config(tmp_path, experiment='single', **DDP_SETTINGS, batch_size=16)
    summary, _ = _train(single, ((xt[:32], yt[:32]), val), shuffle=False)
    ddp = torch.load(tmp_path / 'runs' / 'ddp' / LAST, map_location='cpu', weights_only=False)
    one = _ckpt(single)
    assert ddp['step'] == one['step'] == 2
    _assert_same_tensors(ddp['state_dict'], one['state_dict'], exact=False)
    _assert_same_tensors(ddp['state_dict_ema'], one['state_dict_ema'], exact=False)
    # eval over 37 val samples split 19/18 across ranks: the sums across ranks give the single-process numbers
    ddp_eval, one_eval = (_eval_record(tmp_path / 'runs' / name) for name in ('ddp', 'single'))
    for key in ('top1', 'top5', 'ema_top1', 'ema_top5'):
        assert ddp_eval[key] == one_eval[key], key
    for key in ('loss', 'ema_loss'):
        assert ddp_eval[key] == pytest.approx(one_eval[key], rel=1e-5), key
    assert ddp_summary['best_top1'] == summary['best_top1']
    assert len(ddp['loader']) == len(ddp['rng']) == 2  # per-rank resume state


@pytest.mark.slow
def test_resume_on_another_world_size_restarts_the_epoch_with_this_runs_schedule(tmp_path, digits):
    """Two gloo processes (global batch 16, 2 steps per epoch) stop at step 3, one batch into epoch 1; one process
    resumes it with -b 8 (global batch 8: 4 steps per epoch). By hand: weights, EMA and optimizer state as saved;
    epoch 1 again from its first batch, at step 1 x 4 = 4, where the cosine schedule over 3 x 4 steps gives
    lr_min + (lr - lr_min) (1 + cos(pi 4 / 12)) / 2; then epochs 1 and 2 to the end, step 12. A same-world resume
    may not change -b (the exact path)."""
    settings = dict(DETERMINISTIC, epochs=3, max_steps=3, warmup_epochs=0, sched_on_updates=True, min_lr=1e-4)
    ctx = mp.get_context('spawn')
    mp.start_processes(_ddp_worker, args=(2, _free_port(), tmp_path, ctx.Queue(), settings), nprocs=2, join=True,
                       start_method='spawn')
    run = tmp_path / 'runs' / 'ddp'
    saved = torch.load(run / LAST, map_location='cpu', weights_only=False)
    assert (saved['train_state']['epoch'], saved['train_state']['batches_done'], saved['step']) == (1, 1, 3)

    (xt, yt), val = digits
    digits32 = ((xt[:32], yt[:32]), val)
    cfg = tiny_config(tmp_path, experiment='ddp', **dict(settings, max_steps=0), batch_size=8, resume=str(run))
    lines = []
    trainer = Trainer(cfg, loaders=_loaders(digits32, 8, shuffle=False), log=lines.append)
    try:
        _assert_same_tensors(trainer.model.state_dict(), saved['state_dict'])
        _assert_same_tensors(trainer.model_ema.module.state_dict(), saved['state_dict_ema'])
        _assert_same_tensors(trainer.optimizer.state_dict()['state'], saved['optimizer']['state'])
        assert (trainer.epoch, trainer.batches_done, trainer.step, trainer.updates_per_epoch) == (1, 0, 4, 4)
        lr, lo = DETERMINISTIC['lr'], settings['min_lr']
        want = lo + (lr - lo) * (1 + math.cos(math.pi * 4 / 12)) / 2
        assert trainer.optimizer.param_groups[0]['lr'] == pytest.approx(want, rel=1e-9)
        assert any('elastically on 1: from the start of epoch 1 (its first 1 batches per rank trained again)' in line
                   for line in lines), lines
        summary = trainer.train()
    finally:
        trainer.close()
    assert (summary['epochs_done'], summary['steps']) == (3, 12)
    records = [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines()]
    assert [r['epoch'] for r in records if r['kind'] == 'eval'] == [0, 1, 2]

    same_world = tiny_config(tmp_path / 'one', experiment='x', **settings)
    _train(same_world, digits32)
    with pytest.raises(UserInputError, match=r'-b/--batch-size 8 \(checkpoint: 16\)'):
        Trainer(apply_overrides(same_world, {'resume': str(tmp_path / 'one' / 'runs' / 'x'), 'batch_size': 8}),
                loaders=_loaders(digits32, 8), log=lambda m: None)


def test_distributed_config_is_not_needed_for_a_single_process(monkeypatch):
    for var in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK'):
        monkeypatch.delenv(var, raising=False)
    from neatt.train.distributed import init_distributed
    info = init_distributed('cpu')
    assert (info.rank, info.world_size, info.distributed, info.device.type) == (0, 1, False, 'cpu')



def test_compile_failure_falls_back_to_eager_with_a_warning(tmp_path, digits, monkeypatch):
    def broken_compile(module, **kwargs):
        def fails_at_first_call(*args):
            raise RuntimeError('inductor: no C++ compiler')
        return fails_at_first_call

    monkeypatch.setattr(torch, 'compile', broken_compile)
    eager = tiny_config(tmp_path / 'eager', max_steps=2)
    compiled = tiny_config(tmp_path / 'compiled', max_steps=2, compile=True)
    _train(eager, digits)
    with pytest.warns(UserWarning, match='--compile: compiling the model failed at the first step.*eager'):
        _train(compiled, digits)
    _assert_same_tensors(_ckpt(eager)['state_dict'], _ckpt(compiled)['state_dict'])


def test_torchcompile_mode_reaches_torch_compile_and_cuda_graphs_need_no_noise(tmp_path, digits, monkeypatch):
    """--torchcompile-mode (timm's flag) is the mode torch.compile gets. The modes that replay CUDA graphs would
    replay one draw of the logit noise at every step: refused while the model has noise, taken without it. An
    unknown mode: a ValueError that lists the modes."""
    modes = []

    def recording_compile(module, **kwargs):
        modes.append(kwargs['mode'])
        return module

    monkeypatch.setattr(torch, 'compile', recording_compile)

    def build(**overrides):
        Trainer(tiny_config(tmp_path, max_steps=1, compile=True, **overrides), loaders=_loaders(digits, 16),
                log=lambda m: None).close()

    build(torchcompile_mode='max-autotune-no-cudagraphs')
    build()
    assert modes == ['max-autotune-no-cudagraphs', 'default']
    for mode in ('reduce-overhead', 'max-autotune'):
        with pytest.raises(UserInputError, match=rf'--torchcompile-mode {mode}: .*one draw of the logit noise'):
            build(torchcompile_mode=mode)
    quiet = {'depth': 2, 'embed_dim': 48, 'num_heads': 3, 'neatt_sigma': 0.0}
    build(torchcompile_mode='reduce-overhead', model_kwargs=quiet)
    assert modes[-1] == 'reduce-overhead'
    with pytest.raises(ValueError, match='--torchcompile-mode must be one of default, .*got .fast.'):
        tiny_config(tmp_path, torchcompile_mode='fast')


@pytest.mark.parametrize('dtype', ['bfloat16', 'float16'])
def test_amp_on_request_on_cpu(tmp_path, digits, dtype):
    cfg = tiny_config(tmp_path, max_steps=2, amp=True, amp_dtype=dtype)
    trainer = Trainer(cfg, loaders=_loaders(digits, 16), log=lambda m: None)
    try:
        assert trainer.amp and trainer.scaler.is_enabled() == (dtype == 'float16')  # GradScaler only for fp16
        trainer.train()
    finally:
        trainer.close()
    ckpt = _ckpt(cfg)
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in ckpt['state_dict'].values())
    assert (ckpt['scaler'] is not None) == (dtype == 'float16')


def test_no_autocast_on_cpu_unless_asked(tmp_path, digits):
    trainer = Trainer(tiny_config(tmp_path), loaders=_loaders(digits, 16), log=lambda m: None)
    trainer.close()
    assert trainer.amp is False and not trainer.scaler.is_enabled()


def test_mixup_cutmix_train_with_soft_targets(tmp_path, digits):
    from timm.loss import SoftTargetCrossEntropy
    cfg = tiny_config(tmp_path, max_steps=3, mixup=0.8, cutmix=1.0, log_interval=1)
    trainer = Trainer(cfg, loaders=_loaders(digits, 16), log=lambda m: None)
    try:
        assert isinstance(trainer.train_loss_fn, SoftTargetCrossEntropy)
        assert trainer.mixup.label_smoothing == cfg.aug.smoothing and trainer.mixup.num_classes == 10
        trainer.train()
    finally:
        trainer.close()
    losses = [json.loads(line)['loss'] for line in (tmp_path / 'runs' / 't' / 'metrics.jsonl').read_text().splitlines()
              if '"train"' in line]
    assert len(losses) == 3 and all(0 < x < 10 for x in losses)
