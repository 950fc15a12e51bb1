#!/usr/bin/env python
"""Export a checkpoint's weights as a timm model folder (Hugging Face hub layout): model.safetensors + config.json.

    python tools/export_model.py --checkpoint runs/vitb16_300ep --output exported/neatt-vitb16
    python -c "import timm, neatt; m = timm.create_model('local-dir:exported/neatt-vitb16', pretrained=True)"
    huggingface-cli upload USER/neatt-vitb16 exported/neatt-vitb16   # then 'hf-hub:USER/neatt-vitb16'

The folder is what timm's `save_for_hf` writes (what `push_to_hf_hub` uploads): the weights of one model (by
default those that scored best, the EMA or the trained ones), and a config.json with the architecture, its
constructor arguments (depth, img_size, ...), the eval preprocessing (image size, crop_pct, mean/std, bicubic) and
the class names of the dataset when it can be read. `import neatt` registers the Ne-Att architectures, so timm
rebuilds the model from the folder alone. A timm train.py checkpoint exports too (--model when it has no `arch`).

Exit codes: 0 done, 2 a user mistake (missing checkpoint, an existing --output, weights that do not fit), printed
without a traceback.
"""
import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'tools'))

EXIT_USER_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='export_model.py', description=__doc__.split('\n\n')[0])
    p.add_argument('--checkpoint', required=True,
                   help='a .pth.tar from train_fast.py or timm train.py, or a train_fast.py run directory (its '
                        'model_best.pth.tar)')
    p.add_argument('--output', required=True, help='the folder to write; it must not exist yet')
    p.add_argument('--weights', choices=('best', 'model', 'ema'), default='best',
                   help='the trained weights (state_dict), the EMA (state_dict_ema), or best: those that scored '
                        'best in the run (train_fast.py checkpoints), else the EMA when there is one (default)')
    p.add_argument('--model', help="timm model name, for a checkpoint with no config and no arch")
    p.add_argument('--data-dir', help="dataset directory whose manifest names the classes (default: the "
                                      "checkpoint's --data-dir, when it can be read)")
    return p


def choose_weights(ckpt: dict, which: str, path: Path):
    """(name, state dict) of the weights to export."""
    from validate import weight_entries

    entries = dict(weight_entries(ckpt, 'ema' if which == 'ema' else 'auto', path))
    if which == 'best':
        best = (ckpt.get('train_state') or {}).get('best', {}).get('which')
        which = best if best in entries else ('ema' if 'ema' in entries else 'model')
    return which, entries[which]


def class_names(data_dir, num_classes: int):
    """The manifest's class names, or None when it cannot be read or has another class count."""
    from neatt.datasets.manifest import ManifestError, read_manifest

    if not data_dir:
        return None
    try:
        classes = read_manifest(data_dir)['classes']
    except ManifestError:
        return None
    return list(classes) if len(classes) == num_classes else None


def export(args, log) -> Path:
    import torch
    from timm.models import get_pretrained_cfg_value, save_for_hf

    from neatt.train.build import UserInputError, create_model
    from neatt.train.checkpoint import BEST, load_checkpoint, resolve_checkpoint_path
    from neatt.train.config import Config, DataConfig, ModelConfig, apply_overrides, config_from_dict
    from validate import load_weights

    out = Path(args.output)
    if out.exists():
        raise UserInputError(f'--output {out} exists; remove it or pick another folder')
    path = resolve_checkpoint_path(args.checkpoint, in_run_dir=BEST, what='--checkpoint')
    ckpt = load_checkpoint(path, what='--checkpoint')
    name, state_dict = choose_weights(ckpt, args.weights, path)
    head = state_dict.get('head.weight')
    if isinstance(ckpt.get('config'), dict):
        cfg = config_from_dict(ckpt['config'])
        if args.model:
            cfg = apply_overrides(cfg, {'model': args.model})
    else:
        model_name = args.model or ckpt.get('arch')
        if not model_name or not isinstance(head, torch.Tensor):
            raise UserInputError(f'--checkpoint {path} names no model (no config, no arch) or has no classifier '
                                 f'(head.weight): pass --model')
        try:  # a timm checkpoint exports at its architecture's image size and crop_pct
            img_size = get_pretrained_cfg_value(model_name, 'input_size')[-1]
            crop_pct = get_pretrained_cfg_value(model_name, 'crop_pct')
        except RuntimeError as e:  # not a registered architecture
            raise UserInputError(f'--model {model_name}: {e}') from None
        cfg = Config(model=ModelConfig(model=model_name, num_classes=head.shape[0], img_size=img_size),
                     data=DataConfig(crop_pct=crop_pct))
    # training-only settings stay out of the exported constructor arguments
    cfg = apply_overrides(cfg, {'drop': 0.0, 'drop_path': 0.0, 'grad_checkpointing': False})
    model = create_model(cfg.model).eval()
    load_weights(model, state_dict, name, path, cfg.model.model)
    labels = class_names(args.data_dir or cfg.data.data_dir, model.num_classes)
    crop_pct = cfg.data.crop_pct
    # written next to --output, then renamed: no half-written folder under the name asked for
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{out.name}.', dir=out.parent))
    try:
        save_for_hf(model, tmp, model_config={'label_names': labels} if labels else None,
                    safe_serialization=True, data_config={'crop_pct': crop_pct})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's folder is private; the export is meant to be shared
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~umask)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f'{path} ({name} weights, epoch {ckpt.get("epoch", "?")}): {cfg.model.model}, {model.num_classes} classes'
        f'{" named" if labels else ""}, {cfg.model.img_size} px, crop_pct {crop_pct} -> {out}; load it with '
        f'`import timm, neatt; timm.create_model("local-dir:{out}", pretrained=True)`')
    return out


def main(argv=None) -> int:
    from neatt.train.build import UserInputError
    from neatt.train.checkpoint import CheckpointError

    args = build_parser().parse_args(argv)
    try:
        export(args, log=print)
    except (UserInputError, CheckpointError) as e:
        print(f'export_model.py: error: {e}', file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


if __name__ == '__main__':
    sys.exit(main())
