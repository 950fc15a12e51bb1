#!/usr/bin/env python
"""Evaluate a checkpoint on a converted dataset: top-1, top-5 and mean cross-entropy, of its weights and its EMA.

    python tools/validate.py --data-dir /data/neatt/imagenet --checkpoint runs/vitb16_300ep
    torchrun --nproc_per_node 8 tools/validate.py --data-dir /data/neatt/imagenet --checkpoint model_best.pth.tar
    python tools/validate.py --data-dir /data/neatt/imagenet --checkpoint vit_b16.pth.tar --model vit_base_patch16_224
    python tools/validate.py --data-dir /data/neatt/imagenet --model local-dir:exported/neatt-vitb16 --pretrained

It reads the val split as the trainer's epoch-end evaluation does (same loaders, resize + center crop), so a
train_fast.py checkpoint gives the figures its run logged. A train_fast.py checkpoint brings its own settings
(model, image size, crop_pct, backend); a timm train.py checkpoint needs only --model when it has no `arch`, and
takes timm's crop_pct for that model. --pretrained evaluates the weights timm's pretrained config names instead,
with its image size and crop_pct: a folder written by tools/export_model.py (`local-dir:PATH`), or a hub model.
timm's validate.py is the reference for what this does; it is rewritten here because it reads images through
timm's loaders, not the converted FFCV/DALI files.

Exit codes: 0 done, 2 a user mistake (missing file, weights that do not fit the model, bad flag), printed without
a traceback.
"""
import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

EXIT_USER_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    from neatt.train.config import AMP_DTYPES, BACKENDS, parse_kwarg

    p = argparse.ArgumentParser(
        prog='validate.py', description=__doc__.split('\n\n')[0],
        epilog='Settings not given come from the checkpoint\'s saved config (train_fast.py checkpoints), else from '
               'the model\'s timm defaults.')
    p.add_argument('--data-dir', required=True, help='dataset directory written by tools/convert_datasets.py')
    weights = p.add_mutually_exclusive_group(required=True)
    weights.add_argument('--checkpoint',
                         help='a .pth.tar from train_fast.py or timm train.py, a raw state dict, or a train_fast.py '
                              'run directory (its model_best.pth.tar)')
    weights.add_argument('--pretrained', action='store_true',
                         help="--model's own pretrained weights (timm's flag): e.g. --model local-dir:PATH, a "
                              "folder written by tools/export_model.py, or hf-hub:ID; with their image size and "
                              "crop_pct unless given")
    p.add_argument('--split', default='val', help='split of the dataset to evaluate, with the eval transform '
                                                  '(default: val)')
    p.add_argument('--weights', choices=('auto', 'model', 'ema'), default='auto',
                   help='which weights: the trained ones (state_dict), the EMA (state_dict_ema), or auto: both '
                        'when the checkpoint has an EMA (default)')
    p.add_argument('--model', help='timm model name (default: the checkpoint\'s config or arch)')
    p.add_argument('--model-kwargs', nargs='*', type=parse_kwarg, metavar='KEY=VALUE',
                   help='extra keyword args for timm.create_model (default: the checkpoint\'s)')
    p.add_argument('--img-size', type=int, help='eval image size (default: the checkpoint\'s; another size '
                                                 'resamples the position embedding)')
    p.add_argument('--crop-pct', type=float, help='resize to img_size / crop_pct, then center crop')
    p.add_argument('--backend', choices=BACKENDS, help='loader backend (default: the checkpoint\'s, else ffcv)')
    p.add_argument('-b', '--batch-size', type=int, default=128, help='batch size per process (default: 128)')
    p.add_argument('-j', '--workers', type=int, help='loader workers per process (default: the checkpoint\'s, '
                                                     'else 2)')
    p.add_argument('--device', default='auto', help='cuda / cpu / auto (cuda:LOCAL_RANK when CUDA is available)')
    p.add_argument('--amp', action=argparse.BooleanOptionalAction, default=None,
                   help='autocast (default: on with a GPU, off on CPU)')
    p.add_argument('--amp-dtype', choices=AMP_DTYPES, default='bfloat16', help='autocast dtype')
    p.add_argument('--flip-tta', action='store_true',
                   help='score the mean of the logits of each image and of its mirror image (ffcv-imagenet\'s '
                        'lr_tta: twice the compute)')
    p.add_argument('--json', metavar='PATH', help='also write the results as JSON (atomically)')
    return p


def resolve_config(args, ckpt: dict, num_classes: int):
    """The run config to evaluate with: the checkpoint's own (if train_fast.py wrote it), then the flags."""
    from neatt.train.build import UserInputError
    from neatt.train.config import Config, DataConfig, ModelConfig, apply_overrides, config_from_dict

    saved = ckpt.get('config')
    if isinstance(saved, dict):
        cfg = config_from_dict(saved)
    else:
        model = args.model or ckpt.get('arch')
        if not model:
            raise UserInputError(f'--checkpoint {args.checkpoint} names no model (no config, no arch): pass --model')
        cfg = Config(model=ModelConfig(model=model), data=DataConfig(data_dir=args.data_dir))
    given = {'model': args.model, 'model_kwargs': dict(args.model_kwargs) if args.model_kwargs else None,
             'img_size': args.img_size, 'crop_pct': args.crop_pct, 'backend': args.backend,
             'workers': args.workers}
    overrides = {k: v for k, v in given.items() if v is not None}
    try:
        return apply_overrides(cfg, {**overrides, 'data_dir': args.data_dir, 'num_classes': num_classes,
                                     'device': args.device, 'amp': args.amp, 'amp_dtype': args.amp_dtype})
    except ValueError as e:  # the config's own checks (e.g. --crop-pct out of range)
        raise UserInputError(str(e)) from None


def weight_entries(ckpt: dict, which: str, path: Path) -> list:
    """[(name, state dict)] to evaluate, in the order printed. timm-style keys (`state_dict`, `state_dict_ema`;
    also `model`, `model_ema`); a checkpoint with neither is a raw state dict."""
    from neatt.train.checkpoint import CheckpointError

    def entry(*keys):
        return next((ckpt[k] for k in keys if isinstance(ckpt.get(k), dict)), None)

    weights, ema = entry('state_dict', 'model'), entry('state_dict_ema', 'model_ema')
    if weights is None and ema is None:
        weights = ckpt
    if which == 'ema' and ema is None:
        raise CheckpointError(f'--weights ema: {path} has no EMA weights (state_dict_ema)')
    entries = [] if which == 'ema' else [('model', weights)]
    if which != 'model' and ema is not None:
        entries.append(('ema', ema))
    return entries


def load_weights(model, state_dict: dict, name: str, path: Path, model_name: str) -> None:
    """All of `state_dict` into `model`, or a CheckpointError: evaluating a partly loaded model means nothing."""
    import torch

    from neatt.models import NeAttVisionTransformer, is_head_mix_key, load_checkpoint
    from neatt.train.checkpoint import CheckpointError

    head = state_dict.get('head.weight')
    if isinstance(head, torch.Tensor) and head.shape[0] != model.num_classes:
        raise CheckpointError(f'--checkpoint: the classifier of {path} has {head.shape[0]} classes, the dataset has '
                              f'{model.num_classes}; evaluate it on the dataset it was trained for')
    if not isinstance(model, NeAttVisionTransformer) and any(is_head_mix_key(k) for k in state_dict):
        raise CheckpointError(f'--checkpoint: {path} holds a Ne-Att model (head-mixing MLPs), --model {model_name} '
                              f'is a vanilla ViT; pass the neatt_vit_* model it was trained as')
    try:
        report = load_checkpoint(model, {'state_dict': state_dict}, use_ema=False, strict=True)
    except ValueError as e:
        raise CheckpointError(f'--checkpoint: the {name} weights of {path} do not fit --model {model_name}: {e}')
    if report.missing_head_mix:
        raise CheckpointError(f'--checkpoint: {path} has no head-mixing MLPs (a vanilla ViT checkpoint); validate '
                              f'it with its timm model, e.g. --model {model_name.replace("neatt_", "")}')


def pretrained_model(args, num_classes: int):
    """(config, model with its pretrained weights) for --pretrained: timm.create_model(--model, pretrained=True),
    at its own image size unless --img-size; the classifier must have the dataset's classes."""
    import timm

    import neatt  # noqa: F401  (registers the neatt_vit_* models, also for local-dir: and hf-hub: folders)
    from neatt.train.build import UserInputError
    from neatt.train.config import Config, DataConfig, ModelConfig, RunConfig

    if not args.model:
        raise UserInputError('--pretrained needs --model: a timm name, local-dir:PATH or hf-hub:ID')
    if args.weights != 'auto':
        raise UserInputError(f'--weights {args.weights} picks among a checkpoint\'s weights; --pretrained has one set')
    kwargs = dict(args.model_kwargs or {}, **({'img_size': args.img_size} if args.img_size else {}))
    try:
        model = timm.create_model(args.model, pretrained=True, **kwargs)
    except (RuntimeError, ValueError, OSError, TypeError) as e:  # unknown name, no weights, missing folder, kwarg
        raise UserInputError(f'--model {args.model} --pretrained: {e}') from None
    if model.num_classes != num_classes:
        raise UserInputError(f'--model {args.model}: its classifier has {model.num_classes} classes, the dataset has '
                             f'{num_classes}; evaluate it on the dataset it was trained for')
    pretrained = model.pretrained_cfg
    try:
        cfg = Config(model=ModelConfig(model=pretrained.get('architecture', args.model), num_classes=num_classes,
                                       img_size=args.img_size or pretrained['input_size'][-1]),
                     data=DataConfig(data_dir=args.data_dir, crop_pct=args.crop_pct or pretrained.get('crop_pct'),
                                     backend=args.backend or 'ffcv',
                                     workers=2 if args.workers is None else args.workers),
                     run=RunConfig(device=args.device, amp=args.amp, amp_dtype=args.amp_dtype))
    except ValueError as e:  # the config's own checks (e.g. --crop-pct out of range)
        raise UserInputError(str(e)) from None
    return cfg, model


def validate(args, log) -> dict:
    from neatt.datasets.manifest import read_manifest
    from neatt.fileio import write_json_atomic
    from neatt.train.build import autocast_settings, build_loader_for, create_model, to_device
    from neatt.train.checkpoint import BEST, load_checkpoint, resolve_checkpoint_path
    from neatt.train.config import apply_overrides
    from neatt.train.distributed import init_distributed
    from neatt.train.metrics import evaluate

    num_classes = read_manifest(args.data_dir)['num_classes']
    if args.pretrained:
        cfg, model = pretrained_model(args, num_classes)
        path, ckpt, entries = args.model, {}, [('model', None)]
        dist = init_distributed(cfg.run.device)
    else:
        path = resolve_checkpoint_path(args.checkpoint, in_run_dir=BEST, what='--checkpoint')
        ckpt = load_checkpoint(path, what='--checkpoint')
        entries = weight_entries(ckpt, args.weights, path)
        cfg = resolve_config(args, ckpt, num_classes)
        dist = init_distributed(cfg.run.device)
        model = create_model(cfg.model)
        # every set of weights must fit before any data is read; the first is loaded last, so it stays for the loop
        for name, state_dict in reversed(entries):
            load_weights(model, state_dict, name, path, cfg.model.model)
        if args.crop_pct is None and not isinstance(ckpt.get('config'), dict):  # timm's choice for its checkpoints
            cfg = apply_overrides(cfg, {'crop_pct': model.pretrained_cfg.get('crop_pct', cfg.data.crop_pct)})
    to_device(model, cfg.model, dist.device)
    loader = build_loader_for(cfg, args.split, model, dist, args.batch_size, train=False)
    amp, amp_dtype = autocast_settings(cfg.run, dist.device)
    if dist.is_main:
        log(f'{path} (arch {ckpt.get("arch", "?")}, epoch {ckpt.get("epoch", "?")}): {cfg.model.model} at '
            f'{cfg.model.img_size} px, crop_pct {cfg.data.crop_pct}, {cfg.data.backend} loader, '
            f'{dist.world_size} process(es) on {dist.device.type}, amp {cfg.run.amp_dtype if amp else "off"}'
            + (', flip test-time augmentation' if args.flip_tta else ''))
    results = {}
    for i, (name, state_dict) in enumerate(entries):
        if i:  # the first set is still loaded from the check above
            load_weights(model, state_dict, name, path, cfg.model.model)
        results[name] = evaluate(model, loader, dist.device, amp=amp, amp_dtype=amp_dtype, flip_tta=args.flip_tta)
        r = results[name]
        if dist.is_main:
            log(f'{name:>5}: top-1 {r["top1"]:.3f}%  top-5 {r["top5"]:.3f}%  loss {r["loss"]:.4f}  '
                f'({r["count"]} images of {args.split})')
    if hasattr(loader, 'close'):
        loader.close()
    out = {'checkpoint': str(path), 'arch': ckpt.get('arch'), 'epoch': ckpt.get('epoch'),
           'model': cfg.model.model, 'img_size': cfg.model.img_size, 'crop_pct': cfg.data.crop_pct,
           'backend': cfg.data.backend, 'split': args.split, 'world_size': dist.world_size,
           'flip_tta': args.flip_tta, 'results': results}
    if args.json and dist.is_main:
        write_json_atomic(out, args.json)
    return out


def main(argv=None) -> int:
    from neatt.datasets.manifest import ManifestError
    from neatt.train.build import UserInputError
    from neatt.train.checkpoint import CheckpointError
    from neatt.train.distributed import destroy_distributed

    args = build_parser().parse_args(argv)
    try:
        validate(args, log=print)
    except (UserInputError, CheckpointError, ManifestError) as e:
        print(f'validate.py: error: {e}', file=sys.stderr)
        return EXIT_USER_ERROR
    finally:
        destroy_distributed()
    return 0


if __name__ == '__main__':
    sys.exit(main())
