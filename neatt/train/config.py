"""The trainer's one config: nested dataclasses, presets as functions, timm-named CLI flags.

A run is described completely by a `Config`. Presets are functions that return a full `Config`; command-line
flags only override its fields (timm's flag names where timm has one). The resolved config is printed with
`--print-config` and saved as `config.json` beside the checkpoints, so a run can be reproduced and resumed.

Each field's `help` metadata is its documentation and its `--help` text; `flags` names its command-line spelling
when that differs from `--field-name`.
"""
import argparse
import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from pipelines.augment import AugmentConfig
from pipelines.base import BACKENDS as LOADER_BACKENDS
from pipelines.crop import INTERPOLATIONS

__all__ = [
    'Config', 'ModelConfig', 'DataConfig', 'AugConfig', 'OptimConfig', 'EmaConfig', 'RunConfig',
    'AMP_DTYPES', 'BACKENDS', 'PRESETS', 'REQUIRED', 'build_parser', 'config_from_args', 'config_from_dict',
    'config_to_dict', 'config_diff', 'flag_name', 'parse_kwarg', 'RESUME_MUTABLE_FIELDS',
]

REQUIRED = '???'  # OmegaConf's marker for a value the user must supply; checked by `Config.check_required`.
BACKENDS = tuple(LOADER_BACKENDS)  # the loader registry's names: a new backend needs no edit here
COMPILE_MODES = ('default', 'max-autotune-no-cudagraphs', 'max-autotune', 'reduce-overhead')
CUDA_GRAPH_COMPILE_MODES = ('max-autotune', 'reduce-overhead')
AMP_DTYPES = ('bfloat16', 'float16')


def _opt(default: Any = dataclasses.MISSING, help: str = '', *flags: str, choices=None, factory=None):
    """A config field with its documentation (`help`), optional flag spellings and allowed values."""
    meta = {'help': help, 'flags': flags, 'choices': choices}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _check_choice(name: str, value: Any, choices) -> None:
    if value not in choices:
        raise ValueError(f'{flag_name(name)} must be one of {", ".join(map(str, choices))}, got {value!r}')


@dataclass(kw_only=True, slots=True)
class ModelConfig:
    model: str = _opt('neatt_vit_tiny_patch4_32', 'timm model name (`import neatt` registers the neatt_vit_* ones)')
    num_classes: int = _opt(1000, 'number of classes; must match the dataset manifest')
    img_size: int = _opt(224, 'train and eval image size in pixels (square)')
    drop: float = _opt(0.0, "dropout rate (timm's --drop: the model's drop_rate; a ViT's head dropout)")
    drop_path: float = _opt(0.0, 'stochastic depth rate')
    model_kwargs: dict = _opt(
        help='extra keyword args for timm.create_model, as key=value (e.g. depth=6 neatt_sigma=1.0)',
        factory=dict)
    initial_checkpoint: str = _opt(
        '', 'weights to start from: a neatt or timm checkpoint (state_dict_ema, state_dict or raw), timm\'s '
            'model.safetensors from the Hugging Face hub, a folder written by tools/export_model.py, or a run '
            'directory (its model_best.pth.tar); position embedding resampled and head re-initialised when image '
            'size / class count differ')
    channels_last: bool = _opt(False, 'use channels-last memory format for the model and the batches')
    compile: bool = _opt(False, 'torch.compile the model (falls back to eager with a warning if it cannot)')
    torchcompile_mode: str = _opt(
        'default', "torch.compile's mode with --compile (timm's flag): default, max-autotune-no-cudagraphs, "
                   'max-autotune or reduce-overhead. The last two replay CUDA graphs, which would replay one draw '
                   "of Ne-Att's logit noise at every step, so they need neatt_sigma=0")
    grad_checkpointing: bool = _opt(
        False, 'recompute each block in the backward (timm set_grad_checkpointing): Ne-Att\'s (B, H, N, N) logits '
               'are its memory cost; this trades about a third more compute for most of that memory. The '
               'recompute draws the same noise, so the result does not change')

    def __post_init__(self):
        _check_choice('torchcompile_mode', self.torchcompile_mode, COMPILE_MODES)
        if self.num_classes < 1:
            raise ValueError(f'--num-classes must be >= 1, got {self.num_classes}')
        if self.img_size < 1:
            raise ValueError(f'--img-size must be >= 1, got {self.img_size}')


@dataclass(kw_only=True, slots=True)
class DataConfig:
    data_dir: str = _opt(REQUIRED, 'dataset directory written by tools/convert_datasets.py (has manifest.json)')
    backend: str = _opt('ffcv', 'data loader backend', choices=BACKENDS)
    workers: int = _opt(2, 'loader worker processes / threads per rank', '-j', '--workers')
    crop_pct: float = _opt(0.875, 'eval: resize to img_size / crop_pct, then center crop')
    train_interpolation: str = _opt(
        'bicubic', "train resize filter (timm's --train-interpolation), of the crops and of the aa's geometric ops: "
                   "bicubic (the seed recipe, DeiT), bilinear, or random (one of the two per image, timm's default). "
                   "Eval resizes bicubic", choices=INTERPOLATIONS)
    color_jitter: float = _opt(0.0, "color jitter strength x (timm's): brightness, contrast and saturation at "
                                    "factors U(1 - x, 1 + x) in random order, after the aa (torchvision's "
                                    "ColorJitter). timm applies it without --aa or with --aa 3a only (DeiT III: "
                                    "--aa 3a --color-jitter 0.3). The seed recipe uses none")

    min_res: int = _opt(0, 'progressive resizing (ffcv-imagenet\'s): train at this side length up to epoch '
                           '--start-ramp, then at linearly more, rounded to multiples of --res-step, up to --max-res '
                           'from epoch --end-ramp on. Early epochs then cost less (fewer tokens: Ne-Att\'s logits '
                           'shrink with their square). Eval stays at --img-size. 0: off')
    max_res: int = _opt(0, 'progressive resizing: the train side length from epoch --end-ramp on (0: --img-size). '
                           'Alone, every epoch trains at it: below --img-size, eval then sees the objects larger, as '
                           'the train crops showed them (the FixRes effect, ffcv-imagenet\'s 192 train / 256 eval)')
    start_ramp: int = _opt(0, 'progressive resizing: the last epoch at --min-res (epochs count from 0)')
    end_ramp: int = _opt(0, 'progressive resizing: the first epoch at --max-res')
    res_step: int = _opt(32, 'progressive resizing: the resolutions between --min-res and --max-res are multiples '
                             'of this (ffcv-imagenet: 32); each one is another torch.compile graph')

    @property
    def progressive(self) -> bool:
        """Whether the train resolution may differ from --img-size."""
        return bool(self.min_res or self.max_res)

    def __post_init__(self):
        _check_choice('backend', self.backend, BACKENDS)
        for name in ('min_res', 'max_res', 'start_ramp', 'end_ramp'):
            if getattr(self, name) < 0:
                raise ValueError(f'{flag_name(name)} must be >= 0, got {getattr(self, name)}')
        if self.res_step < 1:
            raise ValueError(f'--res-step must be >= 1, got {self.res_step}')
        if self.min_res and (self.end_ramp < self.start_ramp or not self.end_ramp):
            raise ValueError(f'--min-res needs --end-ramp, the first epoch at --max-res, at or after --start-ramp '
                             f'(got --start-ramp {self.start_ramp} --end-ramp {self.end_ramp})')
        _check_choice('train_interpolation', self.train_interpolation, INTERPOLATIONS)
        if self.workers < 0:
            raise ValueError(f'-j/--workers must be >= 0, got {self.workers}')
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f'--crop-pct must be in (0, 1], got {self.crop_pct}')


@dataclass(kw_only=True, slots=True)
class AugConfig:
    aa: Optional[str] = _opt(None, 'AutoAugment policy as timm spells it (v0, original, 3a, rand-m9-mstd0.5, ...)')
    reprob: float = _opt(0.0, 'random erasing probability')
    remode: str = _opt('pixel', 'random erasing fill mode', choices=('const', 'rand', 'pixel'))
    recount: int = _opt(1, 'random erasing count')
    hflip: float = _opt(0.5, 'horizontal flip probability')
    scale: tuple[float, float] = _opt((0.08, 1.0), 'random-resized-crop area range, as fractions of the image')
    ratio: tuple[float, float] = _opt((3 / 4, 4 / 3), 'random-resized-crop aspect ratio range')
    aug_repeats: int = _opt(0, "repeated augmentation (timm's RepeatAugSampler, DeiT's recipe: 3): each epoch "
                               "reads about 1/N of the samples N times each, every copy with its own crop, on "
                               "another process while there are N or more. 0: off")
    smoothing: float = _opt(0.1, 'label smoothing')
    mixup: float = _opt(0.0, 'mixup alpha; mixup is on when > 0')
    cutmix: float = _opt(0.0, 'cutmix alpha; cutmix is on when > 0')
    mixup_prob: float = _opt(1.0, 'probability of applying mixup or cutmix to a batch')
    mixup_switch_prob: float = _opt(0.5, 'probability of cutmix instead of mixup when both are on')
    mixup_mode: str = _opt('batch', "how mixup/cutmix parameters are drawn: per batch, per pair or per element "
                                    "(timm's Mixup)", choices=('batch', 'pair', 'elem'))
    cutmix_minmax: Optional[tuple[float, float]] = _opt(
        None, 'cutmix box size as MIN MAX fractions of the image (timm: overrides the --cutmix alpha)')
    mixup_off_epoch: int = _opt(0, 'turn mixup/cutmix off from this epoch on (timm; 0: never); the targets stay '
                                   'smoothed')
    bce_loss: bool = _opt(False, "binary cross-entropy per class (timm's BinaryCrossEntropy, as DeiT III trains) "
                                 "on the one-hot targets smoothed by --smoothing, or on mixup/cutmix's soft targets, "
                                 "instead of the softmax cross-entropy")
    bce_target_thresh: Optional[float] = _opt(None, 'with --bce-loss: targets above this become 1, the others 0')
    bce_sum: bool = _opt(False, "with --bce-loss: sum the loss over the classes, then average over the batch "
                                "(timm's --bce-sum), instead of averaging over both")
    bce_pos_weight: Optional[float] = _opt(None, "with --bce-loss: weight of the positive term (timm's "
                                                 "--bce-pos-weight, torch's pos_weight)")

    def __post_init__(self):
        # --reprob, --remode, --recount, --hflip: checked by Config.train_augment (pipelines.augment.AugmentConfig)
        for name in ('mixup_prob', 'mixup_switch_prob'):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f'{flag_name(name)} must be in [0, 1], got {getattr(self, name)}')
        if not 0.0 <= self.smoothing < 1.0:
            raise ValueError(f'--smoothing must be in [0, 1), got {self.smoothing}')
        if self.aug_repeats < 0:
            raise ValueError(f'--aug-repeats must be >= 0, got {self.aug_repeats}')
        _check_choice('mixup_mode', self.mixup_mode, ('batch', 'pair', 'elem'))
        if self.mixup_off_epoch < 0:
            raise ValueError(f'--mixup-off-epoch must be >= 0, got {self.mixup_off_epoch}')
        if self.cutmix_minmax is not None:
            self.cutmix_minmax = tuple(self.cutmix_minmax)  # config.json stores a list
            if len(self.cutmix_minmax) != 2 or not 0.0 < self.cutmix_minmax[0] <= self.cutmix_minmax[1] <= 1.0:
                raise ValueError(f'--cutmix-minmax must be two numbers MIN MAX with 0 < MIN <= MAX <= 1, got '
                                 f'{self.cutmix_minmax}')
        for name in ('bce_target_thresh', 'bce_pos_weight', 'bce_sum'):
            if getattr(self, name) not in (None, False) and not self.bce_loss:
                raise ValueError(f'{flag_name(name)} needs --bce-loss')
        if self.bce_pos_weight is not None and self.bce_pos_weight <= 0:
            raise ValueError(f'--bce-pos-weight must be > 0, got {self.bce_pos_weight}')
        self.scale, self.ratio = tuple(self.scale), tuple(self.ratio)  # config.json stores them as lists
        if len(self.scale) != 2 or not 0.0 < self.scale[0] <= self.scale[1] <= 1.0:
            raise ValueError(f'--scale must be two numbers MIN MAX with 0 < MIN <= MAX <= 1, got {self.scale}')
        if len(self.ratio) != 2 or not 0.0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f'--ratio must be two numbers MIN MAX with 0 < MIN <= MAX, got {self.ratio}')


@dataclass(kw_only=True, slots=True)
class OptimConfig:
    opt: str = _opt('sgd', 'optimizer name for timm.optim.create_optimizer_v2 (sgd, adamw, lamb, ...)')
    lr: float = _opt(5e-3, 'learning rate at lr_base_size images per step (see --lr-base-size)')
    lr_base_size: int = _opt(
        0, 'global batch size that --lr is quoted for. When > 0 the lr is scaled linearly: '
           'lr * (batch_size * world_size * grad_accum_steps) / lr_base_size, and the trainer prints the result; '
           '0 uses --lr as is at any world size')
    momentum: float = _opt(0.9, 'SGD momentum')
    weight_decay: float = _opt(1e-4, 'weight decay')
    layer_decay: Optional[float] = _opt(
        None, 'layer-wise lr decay (timm, as in BEiT/MAE fine-tuning): the head trains at the lr, block i of L at '
              'lr * decay^(L - i) (the final norm with the last block), the embeddings at lr * decay^(L + 1); '
              'None: every layer at the lr')
    opt_eps: Optional[float] = _opt(None, 'optimizer epsilon (None: the optimizer default)')
    opt_betas: Optional[tuple[float, float]] = _opt(
        None, 'optimizer betas B1 B2 of the Adam family (adamw, lamb, ...), e.g. 0.9 0.95 (None: the optimizer '
              'default, 0.9 0.999 for adamw)')
    clip_grad: Optional[float] = _opt(None, 'clip gradients to this norm/value (None: no clipping)')
    clip_mode: str = _opt('norm', 'gradient clipping mode', choices=('norm', 'value', 'agc'))
    sched: str = _opt('cosine', 'timm scheduler name (cosine, step, multistep, poly, wsd, rsqrt, constant, ...)')
    decay_epochs: Optional[float] = _opt(
        None, "--sched step: epochs between lr decays (None: 90); --sched wsd/rsqrt (warmup-stable-decay): the length "
              "of the final decay, in epochs, or as a fraction of the schedule when below 1 (None: 0.2); timm's "
              "defaults")
    decay_milestones: tuple[int, ...] = _opt(
        (90, 180, 270), "--sched multistep: epochs at which the lr decays (timm's convention: milestone m takes "
                        "effect at epoch m - 1)")
    decay_rate: float = _opt(0.1, '--sched step/multistep: lr factor at each decay (timm; poly: its power)')
    warmup_prefix: bool = _opt(False, "timm's warmup_prefix: the schedule starts after the warmup instead of "
                                      "counting the warmup epochs as its own")
    sched_on_updates: bool = _opt(
        True, 'update the lr every optimizer step; --no-sched-on-updates updates it once per epoch, as timm\'s '
              'train.py does by default (and the seed recipe did)')
    warmup_epochs: float = _opt(3, 'linear warmup epochs (fractions allowed)')
    warmup_lr: float = _opt(1e-6, 'learning rate at the start of warmup')
    min_lr: float = _opt(1e-7, 'lower lr bound of the schedule')
    epochs: int = _opt(300, 'number of epochs of the schedule')
    cooldown_epochs: int = _opt(0, 'epochs at --min-lr after the schedule (timm): the run trains --epochs + '
                                   '--cooldown-epochs epochs')
    batch_size: int = _opt(64, 'batch size per process (rank)', '-b', '--batch-size')
    grad_accum_steps: int = _opt(1, 'micro-batches accumulated per optimizer step')

    def __post_init__(self):
        _check_choice('clip_mode', self.clip_mode, ('norm', 'value', 'agc'))
        for name in ('batch_size', 'grad_accum_steps', 'epochs'):
            if getattr(self, name) < 1:
                raise ValueError(f'{flag_name(name)} must be >= 1, got {getattr(self, name)}')
        if self.sched in ('none', 'plateau'):
            raise ValueError(f'--sched {self.sched} is not supported (the trainer steps the schedule with no eval '
                             f'metric); use --sched constant for a fixed lr')
        if self.lr <= 0:
            raise ValueError(f'--lr must be > 0, got {self.lr}')
        if self.opt_betas is not None:
            self.opt_betas = tuple(self.opt_betas)  # config.json stores a list
            if len(self.opt_betas) != 2 or not all(0.0 <= b < 1.0 for b in self.opt_betas):
                raise ValueError(f'--opt-betas must be two numbers B1 B2 in [0, 1), got {self.opt_betas}')
        self.decay_milestones = tuple(self.decay_milestones)  # config.json stores a list
        if (self.decay_epochs is not None and self.decay_epochs <= 0) or self.decay_rate <= 0 or \
                not self.decay_milestones or \
                any(m < 0 for m in self.decay_milestones):
            raise ValueError(f'--decay-epochs and --decay-rate must be > 0 and --decay-milestones epochs >= 0, got '
                             f'{self.decay_epochs}, {self.decay_rate}, {list(self.decay_milestones)}')
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ValueError(f'--layer-decay must be in (0, 1], got {self.layer_decay}')
        if self.lr_base_size < 0:
            raise ValueError(f'--lr-base-size must be >= 0 (0 = no scaling), got {self.lr_base_size}')
        if self.cooldown_epochs < 0:
            raise ValueError(f'--cooldown-epochs must be >= 0, got {self.cooldown_epochs}')
        if self.warmup_epochs < 0 or self.warmup_epochs >= self.epochs:
            raise ValueError(f'--warmup-epochs must be in [0, --epochs), got {self.warmup_epochs} '
                             f'with --epochs {self.epochs}')


@dataclass(kw_only=True, slots=True)
class EmaConfig:
    model_ema: bool = _opt(True, 'keep an EMA of the weights (timm ModelEmaV3), evaluated every epoch')
    model_ema_decay: float = _opt(0.995, 'EMA decay per optimizer step')
    model_ema_warmup: bool = _opt(False, "timm's --model-ema-warmup: the decay ramps up as 1 - step^(-2/3) to "
                                         "--model-ema-decay instead of starting there")

    def __post_init__(self):
        if not 0.0 <= self.model_ema_decay < 1.0:
            raise ValueError(f'--model-ema-decay must be in [0, 1), got {self.model_ema_decay}')


@dataclass(kw_only=True, slots=True)
class RunConfig:
    experiment: str = _opt('', 'run name; the run directory is <output>/<experiment> (default: the preset name)')
    output: str = _opt('runs', 'parent directory of run directories')
    overwrite: bool = _opt(False, 'start a fresh run in a run directory that already holds one (replaces it)')
    seed: int = _opt(0, 'seed of the data order, augmentation, init and dropout')
    amp: Optional[bool] = _opt(
        None, 'autocast: None = bf16 on GPU and off on CPU; --amp forces it on (also on CPU), --no-amp off')
    amp_dtype: str = _opt('bfloat16', 'autocast dtype; float16 adds a GradScaler', choices=AMP_DTYPES)
    threads: int = _opt(0, 'torch intra-op threads per process (torch.set_num_threads); 0 keeps torch\'s default. '
                           'On a small CPU, 1 leaves the other cores to the loader\'s decode threads')
    device: str = _opt('auto', 'cuda / cpu / auto (cuda:LOCAL_RANK when CUDA is available)')
    resume: str = _opt('', 'checkpoint (or run directory) to continue exactly: model, EMA, optimizer, scheduler, '
                           'scaler, RNG and loader position. With another number of processes than the run had, '
                           'it goes on from the start of the interrupted epoch with this run\'s lr schedule '
                           '(-b and --grad-accum-steps may then change, e.g. to keep the global batch). '
                           '--epochs may change too (train longer): the lr schedule is then that of the new length')
    checkpoint_interval: int = _opt(0, 'also checkpoint (last.pth.tar) every N optimizer steps; 0: epoch ends only')
    checkpoint_hist: int = _opt(0, "also keep the N best epochs' checkpoints, checkpoint-<epoch>.pth.tar by val "
                                   "top-1 (timm's --checkpoint-hist, whose default is 10; tools/avg_checkpoints.py "
                                   "averages them); 0: last and best only")
    log_interval: int = _opt(50, 'log train metrics every N optimizer steps')
    max_steps: int = _opt(0, 'stop after this many optimizer steps in total, checkpointing first (0: no limit)')

    def __post_init__(self):
        _check_choice('amp_dtype', self.amp_dtype, AMP_DTYPES)
        for name in ('checkpoint_interval', 'checkpoint_hist', 'max_steps', 'threads'):
            if getattr(self, name) < 0:
                raise ValueError(f'{flag_name(name)} must be >= 0, got {getattr(self, name)}')
        if self.log_interval < 1:
            raise ValueError(f'--log-interval must be >= 1, got {self.log_interval}')


@dataclass(kw_only=True, slots=True)
class Config:
    """A complete training run. `preset` records which preset function it started from."""
    preset: str = ''
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self):
        mixing = self.aug.mixup > 0 or self.aug.cutmix > 0
        if mixing and self.optim.batch_size % 2:
            raise ValueError(f'--mixup/--cutmix need an even -b/--batch-size (timm Mixup), got {self.optim.batch_size}')
        self.train_augment()  # the augmentation flags' checks (--aa, --reprob, --color-jitter, ...), made now
        if self.data.min_res > (self.data.max_res or self.model.img_size):
            raise ValueError(f'--min-res {self.data.min_res} is above the last train resolution '
                             f'{self.data.max_res or self.model.img_size} (--max-res, else --img-size)')
        if self.run.resume and self.model.initial_checkpoint not in ('', REQUIRED):
            raise ValueError('--resume and --initial-checkpoint clash: --initial-checkpoint only starts a fresh run; '
                             'drop one of them')

    def train_augment(self, mean: tuple = IMAGENET_DEFAULT_MEAN, std: tuple = IMAGENET_DEFAULT_STD) -> AugmentConfig:
        """The loader's on-device train augmentation, normalized with the model's `mean` and `std`."""
        a = self.aug
        return AugmentConfig(aa=a.aa, reprob=a.reprob, remode=a.remode, recount=a.recount, hflip=a.hflip, mean=mean,
                             std=std, interpolation=self.data.train_interpolation, color_jitter=self.data.color_jitter)

    def effective_lr(self, world_size: int) -> tuple[float, str]:
        """(lr the optimizer gets, how it was derived). Linear scaling when --lr-base-size > 0."""
        o = self.optim
        global_batch = o.batch_size * world_size * o.grad_accum_steps
        if o.lr_base_size:
            return (o.lr * global_batch / o.lr_base_size,
                    f'--lr {o.lr:g} x global batch {global_batch} / --lr-base-size {o.lr_base_size} (linear scaling)')
        return o.lr, f'--lr {o.lr:g} as given (--lr-base-size 0: no scaling)'

    @property
    def run_name(self) -> str:
        return self.run.experiment or self.preset or 'run'

    def check_required(self) -> None:
        """Raise naming every field the preset marked as REQUIRED and the user did not supply."""
        missing = [flag_name(name) for name, value in _leaves(self) if value == REQUIRED]
        if missing and self.run.resume and missing == ['--initial-checkpoint']:
            return  # a resumed run restores its weights from --resume
        if missing:
            preset = f' by preset {self.preset!r}' if self.preset else ''
            raise ValueError(f'{", ".join(missing)} required{preset}: pass a value on the command line')


SECTIONS = ('model', 'data', 'aug', 'optim', 'ema', 'run')

# Fields a resumed run may change: they steer the process, not the result.
RESUME_MUTABLE_FIELDS = frozenset({
    'resume', 'workers', 'threads', 'log_interval', 'checkpoint_interval', 'checkpoint_hist', 'max_steps', 'compile',
    'torchcompile_mode',
    'device',
    'grad_checkpointing',
    'output', 'overwrite', 'experiment', 'data_dir', 'initial_checkpoint',
})


def _section_fields(section_cls) -> list:
    hints = typing.get_type_hints(section_cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(section_cls)]


def _leaves(cfg: Config):
    for section in SECTIONS:
        sub = getattr(cfg, section)
        for f in dataclasses.fields(sub):
            yield f.name, getattr(sub, f.name)


def flag_name(name: str) -> str:
    """The command-line spelling of a field (`batch_size` -> `-b/--batch-size`)."""
    for section in SECTIONS:
        cls = Config.__dataclass_fields__[section].default_factory
        for f in dataclasses.fields(cls):
            if f.name == name and f.metadata.get('flags'):
                return '/'.join(f.metadata['flags'])
    return '--' + name.replace('_', '-')


# ---------------------------------------------------------------------------------------------------- presets


def vitb16_300ep() -> Config:
    """The seed's from-scratch ImageNet recipe (seed-readme.md): 8 GPUs x 64, SGD, 300 epochs at 224 px.

    At another world size the per-GPU batch stays 64 and the lr scales linearly with the global batch
    (lr_base_size=512 = 8 x 64), so 8 GPUs train with exactly the seed's lr 5e-3. The model is compiled and
    channels-last (a GPU recipe; the seed's timm ran eager): `--no-compile` trains eagerly, e.g. to debug.

    What the seed did not write, it took from the defaults of its timm train.py (the one that takes
    torch.distributed.launch's --local_rank, timm <= 0.6): the lr stepped once per epoch, warmup from 1e-4, 10
    cooldown epochs at min_lr after the 300 (310 in all), eval crop_pct 0.9 from the model's config. One
    deliberate change: autocast in bfloat16, where the seed's `--amp` meant float16 with loss scaling
    (`--amp-dtype float16` for that). Autocast follows the device (on a GPU, off on a CPU, where AVX2 machines
    emulate bf16 matmuls: a depth-1 ViT-Ti trained at 5-6 img/s with it on the 2-core VM, 76-83 without);
    `--amp` forces it.
    """
    return Config(
        preset='vitb16_300ep',
        model=ModelConfig(model='neatt_vit_base_patch16_224', num_classes=1000, img_size=224, channels_last=True,
                          compile=True),
        data=DataConfig(backend='ffcv', workers=8, crop_pct=0.9, train_interpolation='bicubic', color_jitter=0.0),
        aug=AugConfig(aa='v0', reprob=0.5, smoothing=0.1),
        optim=OptimConfig(opt='sgd', lr=5e-3, lr_base_size=512, momentum=0.9, weight_decay=1e-4, sched='cosine',
                          sched_on_updates=False, warmup_epochs=3, warmup_lr=1e-4, min_lr=1e-7, epochs=300,
                          cooldown_epochs=10, batch_size=64),
        ema=EmaConfig(model_ema=True, model_ema_decay=0.995),
        run=RunConfig(checkpoint_interval=2000),
    )


def cifar100_transfer() -> Config:
    """The seed's CIFAR-100 transfer recipe: one process x 64, lr 5e-4, 100 epochs at 224 px, from a checkpoint.

    `--initial-checkpoint` is required (the ImageNet model_best.pth.tar). lr scales linearly from a global batch
    of 64 (the seed ran one process).
    """
    cfg = vitb16_300ep()
    return dataclasses.replace(
        cfg, preset='cifar100_transfer',
        model=dataclasses.replace(cfg.model, num_classes=100, initial_checkpoint=REQUIRED),
        optim=dataclasses.replace(cfg.optim, lr=5e-4, lr_base_size=64, epochs=100),
        run=dataclasses.replace(cfg.run, checkpoint_interval=0),
    )


def demo() -> Config:
    """A small Ne-Att on the embedded digits dataset that trains on 2 CPU cores in minutes.

    Digits are 8x8 originals (stored upscaled to 32 px), so 16 px loses nothing: with 4 px patches that is
    16 tokens + cls, and 4 blocks of width 96 keep a step cheap on a CPU. Average pooling of the patch tokens
    (timm's global_pool='avg') learns much faster than the cls token on 1,437 images. Random-resized crops keep
    at least 35% of the image (--scale 0.35 1): with ImageNet's 8% many crops hold a fragment of the digit, and 40
    epochs ended at 93.9-96.4% val top-1 depending on the seed and float rounding, against 97.2% and 98.3% for
    seeds 0 and 1 here. Eval keeps timm's crop_pct 0.875: the train crops show digits enlarged, and the slightly
    zoomed eval view matches them (the FixRes effect). One torch thread leaves the second core to the loader.
    """
    return Config(
        preset='demo',
        model=ModelConfig(model='neatt_vit_tiny_patch4_32', num_classes=10, img_size=16,
                          model_kwargs={'depth': 4, 'embed_dim': 96, 'num_heads': 3, 'global_pool': 'avg'}),
        data=DataConfig(backend='ffcv', workers=1, crop_pct=0.875),
        aug=AugConfig(aa=None, reprob=0.0, hflip=0.0, scale=(0.35, 1.0), smoothing=0.1),
        optim=OptimConfig(opt='adamw', lr=1e-3, weight_decay=0.05, sched='cosine', warmup_epochs=1,
                          warmup_lr=1e-5, min_lr=1e-5, epochs=40, batch_size=32),
        ema=EmaConfig(model_ema=True, model_ema_decay=0.99),
        run=RunConfig(overwrite=True, log_interval=10, threads=1),
    )


PRESETS: dict[str, Callable[[], Config]] = {f.__name__: f for f in (vitb16_300ep, cifar100_transfer, demo)}


# ------------------------------------------------------------------------------------------- dict round trip


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def config_from_dict(d: dict) -> Config:
    """Rebuild a Config from `config_to_dict` output; unknown keys are an error naming them."""
    unknown = set(d) - {'preset', *SECTIONS}
    if unknown:
        raise ValueError(f'unknown config sections: {", ".join(sorted(unknown))}')
    sections = {}
    for section in SECTIONS:
        cls = Config.__dataclass_fields__[section].default_factory
        values = dict(d.get(section, {}))
        names = {f.name for f in dataclasses.fields(cls)}
        bad = set(values) - names
        if bad:
            raise ValueError(f'unknown config keys in {section!r}: {", ".join(sorted(bad))}')
        sections[section] = cls(**values)
    return Config(preset=d.get('preset', ''), **sections)


def config_diff(a: Config, b: Config, ignore=frozenset()) -> list[tuple[str, Any, Any]]:
    """(field, a value, b value) for every leaf field that differs, skipping names in `ignore`."""
    a_leaves, b_leaves = dict(_leaves(a)), dict(_leaves(b))
    diffs = [(k, a_leaves[k], b_leaves[k]) for k in a_leaves if k not in ignore and a_leaves[k] != b_leaves[k]]
    if a.preset != b.preset and 'preset' not in ignore:
        diffs.insert(0, ('preset', a.preset, b.preset))
    return diffs


# ------------------------------------------------------------------------------------------------------- CLI


def parse_kwarg(text: str) -> tuple[str, Any]:
    """argparse type of one `--model-kwargs` item: key=value, the value read as JSON when it parses (6, 0.5,
    true), else kept as a string."""
    if '=' not in text:
        raise argparse.ArgumentTypeError(f'expected key=value, got {text!r}')
    key, value = text.split('=', 1)
    try:
        value = json.loads(value)
    except json.JSONDecodeError:
        pass  # a plain string
    return key, value


def _add_field(group, f, hint) -> None:
    flags = f.metadata.get('flags') or ('--' + f.name.replace('_', '-'),)
    help_text = f.metadata.get('help', '')
    kwargs: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS)
    union_args = typing.get_args(hint) if typing.get_origin(hint) is typing.Union else ()
    optional = type(None) in union_args
    base = next(a for a in union_args if a is not type(None)) if optional else hint
    origin, args = typing.get_origin(base), typing.get_args(base)
    if base is bool:
        kwargs['action'] = argparse.BooleanOptionalAction
    elif base is dict:
        kwargs.update(nargs='*', type=parse_kwarg, metavar='KEY=VALUE')
    elif origin is tuple and args[-1] is Ellipsis:  # any number of values, e.g. --decay-milestones 30 60 90
        kwargs.update(nargs='+', type=args[0], metavar='N')
    elif origin is tuple:  # a fixed-length pair such as --scale MIN MAX
        names = ('B1', 'B2') if f.name.endswith('betas') else ('MIN', 'MAX')
        kwargs.update(nargs=len(args), type=args[0], metavar=names if len(args) == 2 else None)
    else:
        kwargs['type'] = base
        if optional:
            kwargs['type'] = lambda s, _t=base: None if s.lower() == 'none' else _t(s)
            kwargs['type'].__name__ = base.__name__
        if f.metadata.get('choices'):
            kwargs['choices'] = f.metadata['choices']  # --help then shows them: --backend {ffcv,dali,torch}
        else:
            kwargs['metavar'] = f.name.upper()
    kwargs['help'] = help_text
    group.add_argument(*flags, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The train_fast.py parser: --preset, --print-config, and one flag per config field."""
    parser = argparse.ArgumentParser(
        prog='train_fast.py', usage='%(prog)s [--preset NAME] [--data-dir DIR] [options]',
        description='Train a (Ne-Att) ViT with timm. A preset gives every setting; flags override them. '
                    'See a preset\'s values with --preset NAME --print-config.',
        epilog='Distributed: torchrun --nproc_per_node 8 train_fast.py --preset vitb16_300ep --data-dir DIR. '
               'Multi-node: add torchrun --nnodes N --node_rank R --rdzv_backend c10d --rdzv_endpoint HOST:PORT '
               '(or --master_addr/--master_port). World size != 8 with vitb16_300ep: the per-GPU batch stays 64 and '
               'the lr scales linearly with the global batch (--lr-base-size 512); pass --lr-base-size 0 to keep '
               'the lr as given. The effective lr is printed at start.',
    )
    parser.add_argument('--preset', choices=sorted(PRESETS), default=None,
                        help='start from this preset (default: demo, or the config saved in the --resume checkpoint)')
    parser.add_argument('--print-config', action='store_true', help='print the resolved config as JSON and exit')
    for section in SECTIONS:
        cls = Config.__dataclass_fields__[section].default_factory
        group = parser.add_argument_group(section)
        for f, hint in _section_fields(cls):
            _add_field(group, f, hint)
    return parser


def apply_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """A new Config with leaf fields replaced by `overrides` (flat field names); validation re-runs."""
    sections = {}
    for section in SECTIONS:
        sub = getattr(cfg, section)
        names = {f.name for f in dataclasses.fields(sub)}
        changes = {k: v for k, v in overrides.items() if k in names}
        if 'model_kwargs' in changes:
            changes['model_kwargs'] = {**sub.model_kwargs, **dict(changes['model_kwargs'])}
        sections[section] = dataclasses.replace(sub, **changes)
    return dataclasses.replace(cfg, **sections)


def config_from_args(argv=None, base_for_resume: Optional[Callable[[str], Config]] = None):
    """Parse argv into (Config, print_config). Any mistake is a `parser.error` (exit code 2) with a message.

    Base config: --preset if given; else, with --resume, the config saved in that checkpoint (read through
    `base_for_resume(path)`); else the demo preset.
    """
    parser = build_parser()
    ns = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(ns).items() if k not in ('preset', 'print_config')}
    try:
        if ns.preset is not None:
            base = PRESETS[ns.preset]()
        elif overrides.get('resume') and base_for_resume is not None:
            base = base_for_resume(overrides['resume'])
        else:
            base = PRESETS['demo']()
        cfg = apply_overrides(base, overrides)
        if not ns.print_config:
            cfg.check_required()
    except (ValueError, TypeError) as e:
        parser.error(str(e))
    return cfg, ns.print_config
