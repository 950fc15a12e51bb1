"""Config, presets and CLI: the seed's recipe field by field, overrides, and clear errors for bad flags."""
import dataclasses
import json
import warnings

import pytest
import timm
import torch
from timm.data import resolve_data_config

import neatt  # noqa: F401  (registers the neatt_vit_* models)
from neatt.train.build import autocast_settings
from neatt.train.config import (PRESETS, REQUIRED, SECTIONS, Config, apply_overrides, build_parser, config_diff,
                                config_from_args, config_from_dict, config_to_dict)

from _train_data import run_cli

# The seed's from-scratch command line (shared/reference/seed-readme.md), flag by flag, as the seed wrote it.
# `--model` is the Ne-Att twin of the seed's vit_base_patch16_224_in21k; the seed's 8 processes x -b 64 give the
# global batch 512 that --lr 5e-3 is quoted for (--lr-base-size). timm's SGD momentum default is 0.9.
SEED_SCRATCH = {
    '-b': 64, '--img-size': 224, '--epochs': 300, '--color-jitter': 0.0, '--sched': 'cosine',
    '--model-ema': True, '--model-ema-decay': 0.995, '--reprob': 0.5, '--smoothing': 0.1, '--min-lr': 1e-7,
    '--warmup-epochs': 3, '--train-interpolation': 'bicubic', '--aa': 'v0', '--lr': 5e-3,
    '--model': 'neatt_vit_base_patch16_224', '--opt': 'sgd', '--weight-decay': 1e-4, '--num-classes': 1000,
    '--momentum': 0.9, '--lr-base-size': 8 * 64,
    # What the seed left to its train.py: the one that torch.distributed.launch passes --local_rank to (timm
    # <= 0.6), whose defaults were --warmup-lr 1e-4 and --cooldown-epochs 10 (310 epochs in all), with the lr
    # stepped once per epoch.
    '--warmup-lr': 1e-4, '--cooldown-epochs': 10, '--sched-on-updates': False,
}
# The seed's CIFAR-100 transfer command: the same flags except these (one process, so lr is quoted for batch 64).
SEED_TRANSFER = {**SEED_SCRATCH, '--epochs': 100, '--lr': 5e-4, '--num-classes': 100, '--lr-base-size': 64}


def _value_of_flag(cfg: Config, flag: str):
    """The config value a flag sets, found through the parser (so the flag names themselves are tested)."""
    action = next(a for a in build_parser()._actions if flag in a.option_strings)
    for section in SECTIONS:
        sub = getattr(cfg, section)
        if action.dest in {f.name for f in dataclasses.fields(sub)}:
            return getattr(sub, action.dest)
    raise AssertionError(f'{flag} sets no config field')


@pytest.mark.parametrize('preset,table', [('vitb16_300ep', SEED_SCRATCH), ('cifar100_transfer', SEED_TRANSFER)])
def test_presets_match_the_seed_recipe(preset, table):
    cfg = PRESETS[preset]()
    for flag, expected in table.items():
        assert _value_of_flag(cfg, flag) == expected, flag


@pytest.mark.parametrize('preset', ['vitb16_300ep', 'cifar100_transfer'])
def test_presets_autocast_on_a_gpu_as_the_seed_did_and_not_on_a_cpu(preset):
    """The seed passed --amp, on GPUs. On an AVX2 CPU bf16 matmuls are emulated (a step 10x slower), so the
    presets leave autocast to the device; --amp still forces it."""
    cfg = PRESETS[preset]()
    assert autocast_settings(cfg.run, torch.device('cuda')) == (True, torch.bfloat16)
    assert autocast_settings(cfg.run, torch.device('cpu'))[0] is False
    forced = config_from_args(['--preset', preset, '--data-dir', 'd', '--initial-checkpoint', 'x', '--amp'])[0]
    assert autocast_settings(forced.run, torch.device('cpu'))[0] is True


@pytest.mark.parametrize('preset', ['vitb16_300ep', 'cifar100_transfer'])
def test_presets_evaluate_as_timm_train_py_did_for_the_seed_model(preset):
    """The seed passed no eval flags: timm's train.py resolved them from the model, vit_base_patch16_224_in21k."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the seed's model name is a deprecated alias in timm 1.x
        seed_model = timm.create_model('vit_base_patch16_224_in21k', num_classes=1000)
    timm_eval = resolve_data_config({}, model=seed_model)
    cfg = PRESETS[preset]()
    assert cfg.data.crop_pct == timm_eval['crop_pct'] and cfg.data.train_interpolation == timm_eval['interpolation']
    ours = timm.create_model(cfg.model.model, num_classes=cfg.model.num_classes).pretrained_cfg
    assert (ours['mean'], ours['std']) == (timm_eval['mean'], timm_eval['std'])


@pytest.mark.parametrize('preset', ['vitb16_300ep', 'cifar100_transfer'])
def test_gpu_presets_compile_a_channels_last_model(preset):
    cfg = PRESETS[preset]()
    assert cfg.model.compile and cfg.model.channels_last
    eager = config_from_args(['--preset', preset, '--data-dir', 'd', '--initial-checkpoint', 'x', '--no-compile'])[0]
    assert not eager.model.compile and eager.model.channels_last


def test_vitb16_lr_scales_linearly_with_world_size():
    cfg = PRESETS['vitb16_300ep']()
    assert cfg.effective_lr(8)[0] == pytest.approx(5e-3)  # the seed's 8 x 64
    assert cfg.effective_lr(1)[0] == pytest.approx(5e-3 / 8)
    assert cfg.effective_lr(16)[0] == pytest.approx(1e-2)
    kept = config_from_args(['--preset', 'vitb16_300ep', '--data-dir', 'd', '--lr-base-size', '0'])[0]
    assert kept.effective_lr(3)[0] == 5e-3


def test_flags_override_only_what_they_name():
    cfg, _ = config_from_args(['--preset', 'vitb16_300ep', '--data-dir', 'd', '-b', '32', '--lr', '0.1',
                               '--no-model-ema', '--model-kwargs', 'depth=6', 'neatt_sigma=0.5', '--backend', 'dali',
                               '--opt-eps', 'none', '--grad-accum-steps', '2', '--opt-betas', '0.9', '0.95'])
    base = PRESETS['vitb16_300ep']()
    changed = {k for k, _, _ in config_diff(base, cfg)}
    assert changed == {'data_dir', 'batch_size', 'lr', 'model_ema', 'model_kwargs', 'backend', 'grad_accum_steps',
                       'opt_betas'}
    assert cfg.optim.opt_betas == (0.9, 0.95)
    assert cfg.optim.batch_size == 32 and cfg.optim.lr == 0.1 and cfg.ema.model_ema is False
    assert cfg.model.model_kwargs == {'depth': 6, 'neatt_sigma': 0.5}
    assert cfg.data.backend == 'dali' and cfg.optim.opt_eps is None
    cfg, _ = config_from_args(['--data-dir', 'd', '--aa', '3a', '--color-jitter', '0.3'])   # DeiT III's pair
    assert (cfg.aug.aa, cfg.data.color_jitter) == ('3a', 0.3)
    cfg, _ = config_from_args(['--data-dir', 'd', '--sched', 'multistep', '--decay-milestones', '30', '60',
                               '--cutmix-minmax', '0.2', '0.8', '--mixup-mode', 'pair'])
    assert cfg.optim.decay_milestones == (30, 60) and cfg.aug.cutmix_minmax == (0.2, 0.8)
    assert cfg.aug.mixup_mode == 'pair'


def test_default_preset_is_demo_and_data_dir_is_required(capsys):
    with pytest.raises(SystemExit) as e:
        config_from_args([])
    assert e.value.code == 2
    assert '--data-dir required' in capsys.readouterr().err
    cfg, _ = config_from_args(['--data-dir', 'd'])
    assert cfg.preset == 'demo' and cfg.model.model.startswith('neatt_')


@pytest.mark.parametrize('argv,message', [
    (['--preset', 'nope'], "invalid choice: 'nope'"),
    (['--data-dir', 'd', '-b', 'many'], "-b/--batch-size: invalid int value: 'many'"),
    (['--data-dir', 'd', '--lr', 'fast'], "--lr: invalid float value: 'fast'"),
    (['--data-dir', 'd', '--backend', 'jax'], "invalid choice: 'jax'"),
    (['--data-dir', 'd', '--frobnicate'], 'unrecognized arguments: --frobnicate'),
    (['--preset', 'cifar100_transfer', '--data-dir', 'd'],
     "--initial-checkpoint required by preset 'cifar100_transfer'"),
    (['--data-dir', 'd', '--resume', 'r', '--initial-checkpoint', 'c'], '--resume and --initial-checkpoint clash'),
    (['--data-dir', 'd', '--mixup', '0.8', '-b', '33'], 'need an even -b/--batch-size'),
    (['--data-dir', 'd', '--aa', 'v0', '--color-jitter', '0.4'], '--color-jitter does nothing with --aa v0'),
    (['--data-dir', 'd', '--color-jitter', '-0.1'], '--color-jitter must be >= 0'),
    (['--data-dir', 'd', '--aa', 'bogus'], "--aa 'bogus' is not a timm auto-augment string"),
    (['--data-dir', 'd', '--aa', 'rand-m9-x3'], "--aa 'rand-m9-x3' is not a timm auto-augment string"),
    (['--data-dir', 'd', '--aa', 'augmix-m3-w3'], 'AugMix mixes whole augmentation chains and is not supported'),
    (['--data-dir', 'd', '--reprob', '1.5'], '--reprob must be in [0, 1], got 1.5'),
    (['--data-dir', 'd', '--hflip', '-1'], '--hflip must be in [0, 1], got -1'),
    (['--data-dir', 'd', '--recount', '0'], '--recount must be >= 1, got 0'),
    (['--data-dir', 'd', '--warmup-epochs', '20', '--epochs', '10'], '--warmup-epochs must be in [0, --epochs)'),
    (['--data-dir', 'd', '--sched', 'none'], 'use --sched constant'),
    (['--data-dir', 'd', '--model-kwargs', 'depth'], 'expected key=value'),
    (['--data-dir', 'd', '--scale', '0.5'], '--scale: expected 2 arguments'),
    (['--data-dir', 'd', '--scale', '0.6', '0.5'], '--scale must be two numbers MIN MAX with 0 < MIN <= MAX <= 1'),
    (['--data-dir', 'd', '--layer-decay', '1.5'], '--layer-decay must be in (0, 1], got 1.5'),
    (['--data-dir', 'd', '--bce-target-thresh', '0.2'], '--bce-target-thresh needs --bce-loss'),
    (['--data-dir', 'd', '--bce-sum'], '--bce-sum needs --bce-loss'),
    (['--data-dir', 'd', '--bce-loss', '--bce-pos-weight', '0'], '--bce-pos-weight must be > 0'),
    (['--data-dir', 'd', '--aug-repeats', '-1'], '--aug-repeats must be >= 0, got -1'),
    (['--data-dir', 'd', '--opt-betas', '0.9'], '--opt-betas: expected 2 arguments'),
    (['--data-dir', 'd', '--decay-milestones'], '--decay-milestones: expected at least one argument'),
    (['--data-dir', 'd', '--decay-rate', '0'], '--decay-epochs and --decay-rate must be > 0'),
    (['--data-dir', 'd', '--cutmix-minmax', '0.5', '0.2'], '--cutmix-minmax must be two numbers MIN MAX'),
    (['--data-dir', 'd', '--mixup-mode', 'row'], "invalid choice: 'row'"),
    (['--data-dir', 'd', '--opt-betas', '0.9', '1.0'], '--opt-betas must be two numbers B1 B2 in [0, 1)'),
    (['--data-dir', 'd', '--min-res', '8'], '--min-res needs --end-ramp'),
    (['--data-dir', 'd', '--min-res', '8', '--start-ramp', '5', '--end-ramp', '4'], '--min-res needs --end-ramp'),
    (['--data-dir', 'd', '--min-res', '24', '--end-ramp', '4'], '--min-res 24 is above the last train resolution 16'),
    (['--data-dir', 'd', '--min-res', '8', '--max-res', '4', '--end-ramp', '4'], 'last train resolution 4 (--max-res'),
    (['--data-dir', 'd', '--res-step', '0'], '--res-step must be >= 1'),
])
def test_bad_flags_are_parser_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        config_from_args(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_transfer_preset_accepts_initial_checkpoint():
    cfg, _ = config_from_args(['--preset', 'cifar100_transfer', '--data-dir', 'd', '--initial-checkpoint', 'x.pth'])
    assert cfg.model.initial_checkpoint == 'x.pth'


def test_config_dict_round_trip_and_unknown_keys():
    for make in PRESETS.values():
        cfg = make()
        d = json.loads(json.dumps(config_to_dict(cfg)))
        assert config_from_dict(d) == cfg
    cfg = apply_overrides(PRESETS['demo'](), {'opt_betas': (0.9, 0.95), 'decay_milestones': (3, 5),
                                              'cutmix_minmax': (0.2, 0.8)})   # JSON holds the tuples as lists
    assert config_from_dict(json.loads(json.dumps(config_to_dict(cfg)))) == cfg
    d = config_to_dict(PRESETS['demo']())
    d['optim']['learning_rate'] = 1.0
    with pytest.raises(ValueError, match="unknown config keys in 'optim': learning_rate"):
        config_from_dict(d)


def test_every_field_is_documented():
    for section in SECTIONS:
        cls = Config.__dataclass_fields__[section].default_factory
        for f in dataclasses.fields(cls):
            assert len(f.metadata.get('help', '')) > 10, f'{section}.{f.name} has no help text'


def test_help_states_the_world_size_policy():
    text = build_parser().format_help()
    assert 'World size != 8' in text and 'scales linearly' in text and '--rdzv_endpoint' in text


def test_print_config_cli_prints_the_resolved_config():
    r = run_cli('--preset', 'vitb16_300ep', '--print-config', '-b', '16', timeout=120)
    assert r.returncode == 0, r.stderr
    cfg = config_from_dict(json.loads(r.stdout))
    assert cfg.optim.batch_size == 16 and cfg.model.model == 'neatt_vit_base_patch16_224'
    assert cfg.data.data_dir == REQUIRED  # --print-config shows what is still missing instead of failing


def test_progressive_resizing_follows_ffcv_imagenets_rule():
    """ffcv-imagenet's rule, values worked out by hand. Its ResNet-50 88-epoch config (160 -> 192, ramp over epochs
    65..76, multiples of 32): 160 + 32 (e - 65) / 11 is 174.5 at epoch 70 (rounds to 160) and 177.5 at 71 (192).
    A ramp over 0..4 from 160 to 224 crosses 176 and 208, i.e. 5.5 and 6.5 steps of 32: numpy rounds halves to
    even, so both are 192. --min-res itself is not rounded. Without --min-res every epoch trains at --max-res,
    else at --img-size."""
    from neatt.train.resolution import train_resolution, train_resolutions
    from neatt.train.config import DataConfig
    rn50 = DataConfig(data_dir='d', min_res=160, max_res=192, start_ramp=65, end_ramp=76)
    assert [train_resolution(rn50, 224, e) for e in (0, 65, 66, 70, 71, 75, 76, 87)] == \
        [160, 160, 160, 160, 192, 192, 192, 192]
    assert train_resolutions(rn50, 224, 88) == {160: list(range(71)), 192: list(range(71, 88))}
    halves = DataConfig(data_dir='d', min_res=160, start_ramp=0, end_ramp=4)  # --max-res 0: --img-size
    assert [train_resolution(halves, 224, e) for e in range(6)] == [160, 192, 192, 192, 224, 224]
    off_step = DataConfig(data_dir='d', min_res=176, start_ramp=2, end_ramp=4)  # 176 kept through epoch 2, as is
    assert [train_resolution(off_step, 224, e) for e in range(5)] == [176, 176, 176, 192, 224]
    fine = dataclasses.replace(halves, res_step=16)
    assert [train_resolution(fine, 224, e) for e in range(5)] == [160, 176, 192, 208, 224]
    assert {train_resolution(DataConfig(data_dir='d', max_res=192), 224, e) for e in range(3)} == {192}
    assert {train_resolution(DataConfig(data_dir='d'), 224, e) for e in range(3)} == {224}
