"""The model and the loaders of a run config, as the trainer and tools/validate.py both build them."""
import torch
from torch import nn

from .config import AugConfig, Config, ModelConfig, RunConfig
from .distributed import DistInfo

__all__ = ['UserInputError', 'check_num_classes', 'create_model', 'to_device', 'autocast_settings',
           'build_loader_for']


class UserInputError(ValueError):
    """A mistake in what the user asked for (paths, dataset, flags); the scripts print it without a traceback."""


def check_num_classes(cfg: Config) -> None:
    """The model's class count must be the dataset's (the loaders check the directory and the format)."""
    from neatt.datasets.manifest import read_manifest

    n = read_manifest(cfg.data.data_dir)['num_classes']
    if n != cfg.model.num_classes:
        raise UserInputError(f'--num-classes is {cfg.model.num_classes} but {cfg.data.data_dir} has {n} classes; '
                             f'pass --num-classes {n}')


def create_model(cfg: ModelConfig, dynamic_img_size: bool = False) -> nn.Module:
    """`timm.create_model` from the model section, on the CPU; a bad name or kwarg is a UserInputError.
    `dynamic_img_size`: timm's option for inputs of other sizes than `cfg.img_size` (the position embedding is
    resampled to each input's grid), which progressive resizing needs."""
    import timm

    import neatt  # noqa: F401  (registers the neatt_vit_* models)
    kwargs = dict(cfg.model_kwargs, **({'dynamic_img_size': True} if dynamic_img_size else {}))
    try:
        model = timm.create_model(cfg.model, num_classes=cfg.num_classes, img_size=cfg.img_size,
                                  drop_rate=cfg.drop, drop_path_rate=cfg.drop_path, **kwargs)
    except RuntimeError as e:
        if str(e).startswith("Unknown model") and cfg.model not in timm.list_models():
            raise UserInputError(f'--model {cfg.model}: {e}') from None
        raise
    except TypeError as e:
        raise UserInputError(f'--model {cfg.model} with --model-kwargs {cfg.model_kwargs}: {e}') from None
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model


def train_loss(cfg: AugConfig) -> nn.Module:
    """The training loss, as timm's train.py picks it: soft-target cross-entropy under mixup/cutmix (whose targets
    carry the label smoothing), label-smoothed cross-entropy, or plain; --bce-loss: timm's BinaryCrossEntropy on
    the same targets. One difference: with --bce-loss and neither smoothing nor mixup, timm's train.py falls back
    to the softmax cross-entropy; here the BCE applies."""
    from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    mixup = cfg.mixup > 0 or cfg.cutmix > 0
    if cfg.bce_loss:
        return BinaryCrossEntropy(smoothing=0.0 if mixup else cfg.smoothing, target_threshold=cfg.bce_target_thresh,
                                  sum_classes=cfg.bce_sum, pos_weight=cfg.bce_pos_weight)
    if mixup:
        return SoftTargetCrossEntropy()
    if cfg.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
    return nn.CrossEntropyLoss()


def autocast_settings(cfg: RunConfig, device: torch.device) -> tuple[bool, torch.dtype]:
    """(autocast on, its dtype): --amp/--no-amp when given, else on for a GPU and off on a CPU."""
    enabled = cfg.amp if cfg.amp is not None else device.type == 'cuda'
    return enabled, getattr(torch, cfg.amp_dtype)


def build_loader_for(cfg: Config, split: str, model: nn.Module, dist: DistInfo, batch_size: int, train: bool):
    """The loader of one split: shuffled with the train augmentation if `train`, else in order with resize +
    center crop. Normalised with the model's mean/std; this rank's shard. A bad dataset or backend is a
    UserInputError."""
    from pipelines.augment import AugmentConfig
    from pipelines.base import LoaderError, build_loader

    mean, std = model.pretrained_cfg.get('mean'), model.pretrained_cfg.get('std')
    if train:
        augment = cfg.train_augment(mean, std)
        crop = dict(drop_last=True, scale=cfg.aug.scale, ratio=cfg.aug.ratio, aug_repeats=cfg.aug.aug_repeats)
    else:
        augment = AugmentConfig(aa=None, reprob=0.0, hflip=0.0, mean=mean, std=std)
        crop = dict(drop_last=False)
    try:
        return build_loader(cfg.data.data_dir, split=split, backend=cfg.data.backend, batch_size=batch_size,
                            image_size=cfg.model.img_size, train=train, rank=dist.rank, world_size=dist.world_size,
                            seed=cfg.run.seed, device=dist.device, num_workers=cfg.data.workers,
                            crop_pct=cfg.data.crop_pct, augment=augment, **crop)
    except LoaderError as e:
        raise UserInputError(f'--data-dir/--backend: {e}') from None


def to_device(model: nn.Module, cfg: ModelConfig, device: torch.device) -> nn.Module:
    """Move the model to its device, channels-last when the config asks for it."""
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    return model
