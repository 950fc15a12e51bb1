"""The Trainer: builds every component from a `Config` in dependency order, trains, evaluates, checkpoints.

Build order (torchtitan's): distributed -> run dir -> seed -> model (+ initial weights) -> device/memory format ->
EMA (after `.to(device)`, before DDP/compile, as timm's ModelEmaV3 asks) -> optimizer -> loaders -> scheduler
(per optimizer step, or per epoch) -> scaler -> loss/mixup -> DDP -> compile -> resume -> loggers.

The training state that `--resume` restores is one dict under constant keys (see `checkpoint.py`). A checkpoint
is only ever written on an optimizer-step boundary and only after the losses since the previous one were checked
to be finite, so the newest checkpoint is always a good one.
"""
import contextlib
import random
import shutil
import signal
import time
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from neatt.runtime import configure_cpu_allocator

from .build import (UserInputError, autocast_settings, build_loader_for, check_num_classes, create_model, to_device,
                    train_loss)
from .checkpoint import (BEST, HISTORY_GLOB, LAST, CheckpointError, capture_rng_state, history_name, load_checkpoint,
                         load_initial_checkpoint, resolve_checkpoint_path, restore_rng_state, save_checkpoint)
from .config import (CUDA_GRAPH_COMPILE_MODES, RESUME_MUTABLE_FIELDS, Config, config_diff, config_from_dict,
                     config_to_dict, flag_name)
from .distributed import (DistInfo, all_gather_object, all_reduce_max, all_reduce_sum, destroy_distributed,
                          init_distributed)
from .metrics import MetricLoggers, ThroughputMeter, evaluate, write_json_atomic
from .resolution import train_resolution, train_resolutions

__all__ = ['Trainer', 'UserInputError', 'NonFiniteLossError']


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the message names the step. The last checkpoint on disk predates it."""


def _seed_python_and_numpy(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)


def _epochs_text(epochs: list) -> str:
    return f'epochs {epochs[0]}-{epochs[-1]}' if len(epochs) > 1 else f'epoch {epochs[0]}'


@contextlib.contextmanager
def loader_rng_isolation():
    """Keep the loader from moving the global RNGs (torch CPU, numpy, python) that the model, mixup and dropout
    draw from. Our loaders seed their own randomness from (seed, epoch, rank, batch) and leave the global RNGs
    alone; this guard keeps that true whatever a backend library does (a DataLoader built without a generator
    draws its base seed from torch's global RNG at `iter()`), since a moved RNG makes a resumed run differ."""
    state = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    try:
        yield
    finally:
        torch.set_rng_state(state[0])
        np.random.set_state(state[1])
        random.setstate(state[2])


class Trainer:
    # config
    cfg: Config
    dist: DistInfo
    run_dir: Path
    # components
    model: nn.Module  # the bare model: state dicts, eval
    train_model: nn.Module  # what the train step calls: DDP and/or compiled wrapper of `model`
    model_ema: Optional[nn.Module]
    optimizer: torch.optim.Optimizer
    scheduler: Optional[object]
    scaler: torch.amp.GradScaler
    train_loader: object
    val_loader: object
    loggers: MetricLoggers
    # training state (checkpointed)
    epoch: int  # epoch in progress (or next to run)
    batches_done: int  # batches of `epoch` already trained on (a multiple of grad_accum_steps)
    step: int  # optimizer steps taken so far
    best: dict  # best eval so far: top1, epoch, which ('model' or 'ema')

    def __init__(self, cfg: Config, loaders: Optional[tuple] = None, log=None):
        """Build everything. `loaders` = (train, val) objects with the pipelines Loader interface; by default
        they come from `pipelines.build_loader` on `cfg.data`."""
        self.cfg = cfg
        self.dist = init_distributed(cfg.run.device)
        configure_cpu_allocator()  # reuse freed host memory: no page faults per step (neatt/runtime.py)
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        self._log = log or (lambda msg: tqdm.write(str(msg)))
        self.run_dir = Path(cfg.run.output) / cfg.run_name
        self._stop_signal: Optional[int] = None
        self._old_handlers: dict = {}

        resume_ckpt = self._read_resume_checkpoint() if cfg.run.resume else None
        self._check_run_dir(fresh=resume_ckpt is None)
        self._seed(cfg.run.seed)

        self.model = self._build_model()
        self.model_ema = None
        if cfg.ema.model_ema:
            from timm.utils import ModelEmaV3
            self.model_ema = ModelEmaV3(self.model, decay=cfg.ema.model_ema_decay, use_warmup=cfg.ema.model_ema_warmup)
        self.global_batch = cfg.optim.batch_size * self.dist.world_size * cfg.optim.grad_accum_steps
        self.lr, self._lr_note = cfg.effective_lr(self.dist.world_size)
        from timm.optim import create_optimizer_v2, list_optimizers
        opt_kwargs = {k: v for k, v in (('eps', cfg.optim.opt_eps), ('betas', cfg.optim.opt_betas)) if v is not None}
        try:
            self.optimizer = create_optimizer_v2(self.model, opt=cfg.optim.opt, lr=self.lr,
                                                 weight_decay=cfg.optim.weight_decay, momentum=cfg.optim.momentum,
                                                 layer_decay=cfg.optim.layer_decay, **opt_kwargs)
        except ValueError as e:  # timm's registry lookup (an unknown name) and torch's argument checks
            raise UserInputError(f'--opt {cfg.optim.opt}: {e}; timm has {", ".join(list_optimizers())} (and '
                                 f'lookahead_<name>)') from None
        if cfg.optim.opt_betas is not None and 'betas' not in self.optimizer.param_groups[0]:
            # timm drops betas for optimizers without them; a flag that silently does nothing is a trap
            raise UserInputError(f'--opt-betas: --opt {cfg.optim.opt} has no betas (the Adam family has: adamw, '
                                 f'lamb, lion, ...)')

        self.train_loader, self.val_loader = loaders if loaders is not None else self._build_loaders()
        self.updates_per_epoch = len(self.train_loader) // cfg.optim.grad_accum_steps
        if self.updates_per_epoch < 1:
            raise UserInputError(f'the train split gives {len(self.train_loader)} batches per rank, fewer than '
                                 f'--grad-accum-steps {cfg.optim.grad_accum_steps}: lower -b/--batch-size or it')
        from timm.scheduler import create_scheduler_v2
        try:
            self.scheduler, self.num_epochs = create_scheduler_v2(  # num_epochs: --epochs + --cooldown-epochs
                self.optimizer, sched=cfg.optim.sched, num_epochs=cfg.optim.epochs,
                warmup_epochs=cfg.optim.warmup_epochs, cooldown_epochs=cfg.optim.cooldown_epochs,
                decay_epochs=cfg.optim.decay_epochs, decay_milestones=list(cfg.optim.decay_milestones),
                decay_rate=cfg.optim.decay_rate, warmup_prefix=cfg.optim.warmup_prefix, warmup_lr=cfg.optim.warmup_lr,
                min_lr=cfg.optim.min_lr, step_on_epochs=not cfg.optim.sched_on_updates,
                updates_per_epoch=self.updates_per_epoch)
        except ValueError as e:  # timm's check of the schedule's lengths (wsd: the decay within the epochs)
            raise UserInputError(f'--sched {cfg.optim.sched}: {e}') from None

        device = self.dist.device
        self.amp, self.amp_dtype = autocast_settings(cfg.run, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp and self.amp_dtype == torch.float16)

        self.mixup = None
        if cfg.aug.mixup > 0 or cfg.aug.cutmix > 0:
            from .mixup import Mixup  # timm's, with its per-image modes as one blend of the batch
            self.mixup = Mixup(mixup_alpha=cfg.aug.mixup, cutmix_alpha=cfg.aug.cutmix, prob=cfg.aug.mixup_prob,
                               switch_prob=cfg.aug.mixup_switch_prob, label_smoothing=cfg.aug.smoothing,
                               num_classes=cfg.model.num_classes, mode=cfg.aug.mixup_mode,
                               cutmix_minmax=cfg.aug.cutmix_minmax)
        self.train_loss_fn = train_loss(cfg.aug)

        self.train_model = self.model
        if self.dist.distributed:
            ids = [device.index] if device.type == 'cuda' else None
            self.train_model = DistributedDataParallel(self.model, device_ids=ids)
        self._eager_train_model = self.train_model
        self._compile_unverified = False
        if cfg.model.compile:
            self._check_compile_mode()
            self.train_model = self._compile(self.train_model)

        self.epoch, self.batches_done, self.step = 0, 0, 0
        self.best = {'top1': -1.0, 'epoch': -1, 'which': None}
        self.epoch_metric = None  # val top-1 of the last evaluated epoch (the better of model and EMA)
        self.history = []  # [(top1, epoch)] of the checkpoint-<epoch>.pth.tar files kept, best first
        self._loader_state = None
        if resume_ckpt is not None:
            self._load_state(resume_ckpt)
        self._set_lr()

        self._prepare_run_dir(fresh=resume_ckpt is None)
        self.loggers = MetricLoggers(self.run_dir, enabled=self.dist.is_main, fresh=resume_ckpt is None)
        if self.dist.is_main:
            write_json_atomic(config_to_dict(cfg), self.run_dir / 'config.json')
        self._first_bad_step = torch.full((), -1, dtype=torch.long, device=device)
        self._loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self._loss_count = 0
        self.meter = ThroughputMeter()
        self.log(f'{cfg.model.model}: {sum(p.numel() for p in self.model.parameters()) / 1e6:.2f}M params, '
                 f'{self.dist.world_size} process(es) on {device.type}, amp={self._amp_desc()}, '
                 f'global batch {self.global_batch}, {self.updates_per_epoch} steps/epoch, {self._epochs_desc()}, '
                 f'lr {self.lr:.3g} = {self._lr_note}, run dir {self.run_dir}')

    # ------------------------------------------------------------------------------------------------- build

    def log(self, msg) -> None:
        if self.dist.is_main:
            self._log(msg)

    def _amp_desc(self) -> str:
        if not self.amp:
            return 'off'
        return f'{self.cfg.run.amp_dtype}' + (' + GradScaler' if self.scaler.is_enabled() else '')

    def _epochs_desc(self) -> str:
        cooldown = self.num_epochs - self.cfg.optim.epochs
        updated = 'per step' if self.cfg.optim.sched_on_updates else 'per epoch'
        return (f'{self.num_epochs} epochs' + (f' ({self.cfg.optim.epochs} + {cooldown} cooldown)' if cooldown else '')
                + f', lr updated {updated}')

    def _seed(self, seed: int) -> None:
        # The model is built under the same seed on every rank (DDP also broadcasts rank 0's weights); after it,
        # each rank reseeds with seed + rank so dropout and mixup differ across ranks (timm's random_seed).
        torch.manual_seed(seed)
        self._rank_seed = seed + self.dist.rank
        _seed_python_and_numpy(self._rank_seed)

    def _build_model(self) -> nn.Module:
        model = create_model(self.cfg.model, dynamic_img_size=self.cfg.data.progressive)
        patch, size = model.patch_embed.patch_size[0], self.cfg.model.img_size  # the trainer takes ViTs only
        if size % patch:  # timm would cut the last size % patch pixels of every row and column, unseen
            raise UserInputError(f'--img-size {size} is not a multiple of the patch size {patch} of --model '
                                 f'{self.cfg.model.model}; use {size - size % patch} or {size - size % patch + patch}')
        if self.cfg.data.progressive:
            self._check_train_resolutions(patch)
        if self.cfg.model.initial_checkpoint and not self.cfg.run.resume:
            load_initial_checkpoint(model, self.cfg.model.initial_checkpoint, log=self.log)
        torch.manual_seed(self._rank_seed)
        return to_device(model, self.cfg.model, self.dist.device)

    def _check_train_resolutions(self, patch: int) -> None:
        """Every train resolution of the schedule must cut into whole patches of side `patch`; torch.compile gets
        a graph each."""
        resolutions = train_resolutions(self.cfg.data, self.cfg.model.img_size,
                                        self.cfg.optim.epochs + self.cfg.optim.cooldown_epochs)
        bad = {res: epochs for res, epochs in resolutions.items() if res % patch}
        if bad:
            res, epochs = next(iter(bad.items()))
            raise UserInputError(f'progressive resizing trains at {res} px in {_epochs_text(epochs)}, not a multiple '
                                 f'of the patch size {patch}: make --min-res, --max-res and --res-step multiples of '
                                 f'{patch}')
        if self.cfg.model.compile:
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, len(resolutions) + 1)
        plan = ', '.join(f'{res} px in {_epochs_text(e)}' for res, e in resolutions.items())
        self.log(f'progressive resizing: {plan}; eval at {self.cfg.model.img_size} px')

    def _build_loaders(self):
        batch_size = self.cfg.optim.batch_size
        train = build_loader_for(self.cfg, 'train', self.model, self.dist, batch_size, train=True)
        val = build_loader_for(self.cfg, 'val', self.model, self.dist, batch_size, train=False)
        check_num_classes(self.cfg)
        return train, val

    def _check_compile_mode(self) -> None:
        """CUDA graphs replay the host's arguments of the graph's kernels as captured: the seed of Ne-Att's noise
        (drawn on the host per call, see mix_softmax_triton) would be the same at every step."""
        mode = self.cfg.model.torchcompile_mode
        noisy = any(getattr(m, 'neatt_sigma', 0) > 0 for m in self.model.modules())
        if mode in CUDA_GRAPH_COMPILE_MODES and noisy:
            raise UserInputError(f'--torchcompile-mode {mode}: its CUDA graphs would replay one draw of the logit '
                                 f'noise at every step; use --torchcompile-mode max-autotune-no-cudagraphs, or '
                                 f'--model-kwargs neatt_sigma=0 to train without the noise')

    def _compile(self, module: nn.Module) -> nn.Module:
        try:  # one static graph per train resolution
            compiled = torch.compile(module, dynamic=False, mode=self.cfg.model.torchcompile_mode)
        except Exception as e:  # backend missing or unsupported platform: train eagerly instead
            warnings.warn(f'--compile: torch.compile failed ({type(e).__name__}: {e}); training in eager mode')
            return module
        self._compile_unverified = True  # compilation happens at the first call; see _forward
        return compiled

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        if not self._compile_unverified:
            return self.train_model(images)
        try:
            out = self.train_model(images)
        except Exception as e:  # inductor/dynamo failure at the first call: fall back to eager, once
            warnings.warn(f'--compile: compiling the model failed at the first step ({type(e).__name__}: '
                          f'{str(e).splitlines()[0] if str(e) else ""}); training in eager mode')
            self.train_model = self._eager_train_model
            out = self.train_model(images)
        self._compile_unverified = False
        return out

    # ------------------------------------------------------------------------------------------ run dir, resume

    def _holds_run(self) -> bool:
        return (self.run_dir / LAST).exists() or (self.run_dir / 'metrics.jsonl').exists()

    def _check_run_dir(self, fresh: bool) -> None:
        """A fresh run into a run dir that holds one needs --overwrite; checked before anything is built."""
        if self.dist.is_main and fresh and self._holds_run() and not self.cfg.run.overwrite:
            raise UserInputError(
                f'{self.run_dir} already holds a run. Continue it with --resume {self.run_dir}, pick another '
                f'--experiment, or pass --overwrite to replace it.')

    def _prepare_run_dir(self, fresh: bool) -> None:
        """Create the run dir; with --overwrite, delete the old run's files. Called once everything that can
        refuse the run (the flags, the model, --initial-checkpoint, the dataset) is built, so that a mistake in
        the new command loses nothing of the old run."""
        if not self.dist.is_main:
            return
        if fresh and self._holds_run():
            self._log(f'--overwrite: replacing the run in {self.run_dir}')
            for path in [self.run_dir / name for name in (LAST, BEST, 'metrics.jsonl', 'summary.json', 'config.json')
                         ] + list(self.run_dir.glob(HISTORY_GLOB)):
                path.unlink(missing_ok=True)
            shutil.rmtree(self.run_dir / 'tb', ignore_errors=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def _read_resume_checkpoint(self) -> dict:
        path = resolve_checkpoint_path(self.cfg.run.resume)
        ckpt = load_checkpoint(path, what='--resume')
        if 'train_state' not in ckpt or 'config' not in ckpt:
            raise CheckpointError(f'--resume: {path} has no training state (train_state/config); it is a weights '
                                  f'file, not a train_fast.py checkpoint. Use --initial-checkpoint to start from it.')
        world = len(ckpt['loader']) if isinstance(ckpt.get('loader'), list) else 1
        # Another world size: the run goes on elastically (_resume_elastic), and may then pick the batch anew
        self._saved_world_size = world
        elastic = world != self.dist.world_size
        saved = config_from_dict(ckpt['config'])
        # --epochs may grow or shrink: the schedule is then rebuilt for the new length (_load_state)
        self._saved_epochs = saved.optim.epochs
        ignore = RESUME_MUTABLE_FIELDS | {'epochs'} | ({'batch_size', 'grad_accum_steps'} if elastic else set())
        diffs = config_diff(saved, self.cfg, ignore=ignore)
        if diffs:
            listed = '; '.join(f'{flag_name(k) if k != "preset" else "--preset"} {new!r} (checkpoint: {old!r})'
                               for k, old, new in diffs)
            raise UserInputError(f'--resume: the config differs from the one {path} was trained with: {listed}. '
                                 f'Resume with the same settings (omit --preset to reuse the saved config), or start '
                                 f'a fresh run.')
        self._resume_path = path
        return ckpt

    def _load_state(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt['state_dict'])
        if self.model_ema is not None:
            self.model_ema.module.load_state_dict(ckpt['state_dict_ema'])
        self.optimizer.load_state_dict(ckpt['optimizer'])
        if ckpt.get('scaler') is not None:
            self.scaler.load_state_dict(ckpt['scaler'])
        ts = ckpt['train_state']
        self.best = ts['best']
        self.history = [tuple(h) for h in ts.get('history', [])]
        self.epoch_metric = ckpt.get('metric')
        epochs_changed = self._saved_epochs != self.cfg.optim.epochs
        if epochs_changed and ts['epoch'] >= self.num_epochs:
            raise UserInputError(f'--epochs {self.cfg.optim.epochs}: {self._resume_path} has trained '
                                 f'{ts["epoch"]} epochs already (of {self._saved_epochs}); resume it with more epochs, '
                                 f'or evaluate it with tools/validate.py')
        if self._saved_world_size != self.dist.world_size:
            self._resume_elastic(ts)
        else:
            if not epochs_changed:  # else this run's schedule, built for its --epochs
                self.scheduler.load_state_dict(ckpt['scheduler'])
            self.epoch, self.batches_done, self.step = ts['epoch'], ts['batches_done'], ts['step']
            self._loader_state = ckpt['loader'][self.dist.rank] if self.batches_done else None
            restore_rng_state(ckpt['rng'][self.dist.rank])
            self.log(f'resumed from {self._resume_path}: epoch {self.epoch}, batch {self.batches_done}, '
                     f'step {self.step}')
        if epochs_changed:
            self.log(f'--epochs {self.cfg.optim.epochs} (checkpoint: {self._saved_epochs}): the lr schedule goes on '
                     f'as if built for {self.cfg.optim.epochs} epochs from the start, so the run no longer matches one '
                     f'that trained {self._saved_epochs}')

    def _resume_elastic(self, ts: dict) -> None:
        """Continue a run written by another number of processes (a node lost or added), as timm's train.py
        resumes at any world size: weights, EMA, optimizer and best metric as saved; the interrupted epoch starts
        again from its first batch, since the ranks' positions in it do not map to the new sharding; the step
        count and the schedule (built for this run's global batch and lr) restart at that epoch's start; the RNGs
        are reseeded from (seed, rank, epoch). Not bitwise identical to an uninterrupted run, and said so."""
        self.epoch, self.batches_done = ts['epoch'], 0
        self.step = self.epoch * self.updates_per_epoch
        seed = self._rank_seed + 10_000 * self.epoch
        torch.manual_seed(seed)
        _seed_python_and_numpy(seed)
        again = f' (its first {ts["batches_done"]} batches per rank trained again)' if ts['batches_done'] else ''
        self.log(f'resumed from {self._resume_path}, written by {self._saved_world_size} process(es), elastically on '
                 f'{self.dist.world_size}: from the start of epoch {self.epoch}{again}, at step {self.step} '
                 f'({self.updates_per_epoch} steps per epoch now), with the lr schedule of global batch '
                 f'{self.global_batch}. '
                 f'Not bitwise identical to an uninterrupted run; resume with {self._saved_world_size} process(es) '
                 f'for that.')

    def state_dict(self) -> dict:
        """The full checkpoint (collective: every rank must call it; rank 0 gets per-rank loader and RNG states)."""
        return {
            'arch': self.cfg.model.model,
            'epoch': self.epoch if self.batches_done else self.epoch - 1,  # timm: the last epoch trained on
            'step': self.step,
            'state_dict': self.model.state_dict(),
            'state_dict_ema': self.model_ema.module.state_dict() if self.model_ema is not None else None,
            'optimizer': self.optimizer.state_dict(),
            'scheduler': self.scheduler.state_dict(),
            'scaler': self.scaler.state_dict() if self.scaler.is_enabled() else None,
            'loader': all_gather_object(self.train_loader.state_dict()),
            'rng': all_gather_object(capture_rng_state()),
            'train_state': {'epoch': self.epoch, 'batches_done': self.batches_done, 'step': self.step,
                            'best': dict(self.best), 'history': [list(h) for h in self.history]},
            'config': config_to_dict(self.cfg),
            'metric': self.epoch_metric,  # timm's: the last evaluated epoch's top-1 (its avg_checkpoints ranks by it)
        }

    def save(self, *names: str) -> None:
        """Check the losses so far, then write the checkpoint under each name in the run dir (rank 0)."""
        self._check_finite()
        state = self.state_dict()
        if self.dist.is_main:
            for name in names:
                save_checkpoint(state, self.run_dir / name)

    # -------------------------------------------------------------------------------------------------- train

    def _check_finite(self) -> None:
        bad = int(all_reduce_max(self._first_bad_step.clone()).item())
        if bad > 0:
            last = self.run_dir / LAST
            kept = f'the last good checkpoint is {last}' if last.exists() else 'no checkpoint was written yet'
            raise NonFiniteLossError(f'non-finite loss at step {bad} (epoch {self.epoch}); stopping. {kept}. '
                                     f'Lower --lr, set --clip-grad, or check the data.')

    def _install_signal_handlers(self) -> None:
        def handler(signum, frame):
            self._stop_signal = signum
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            try:
                self._old_handlers[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread (e.g. an embedding application): no preemption handling
                pass

    def _restore_signal_handlers(self) -> None:
        for sig, old in self._old_handlers.items():
            signal.signal(sig, old)
        self._old_handlers = {}

    def _should_stop(self) -> Optional[str]:
        """'signal' / 'max_steps' / None. Under DDP the signal flag is agreed on at log intervals (a collective)."""
        if self.cfg.run.max_steps and self.step >= self.cfg.run.max_steps:
            return 'max_steps'
        if self.dist.distributed:
            if self.step % self.cfg.run.log_interval:
                return None
            flag = torch.tensor([1 if self._stop_signal else 0], device=self.dist.device)
            return 'signal' if all_reduce_sum(flag).item() else None
        return 'signal' if self._stop_signal else None

    def _set_lr(self) -> None:
        """The schedule's lr for where the run is: at its optimizer step, or its epoch (--no-sched-on-updates)."""
        if self.cfg.optim.sched_on_updates:
            self.scheduler.step_update(num_updates=self.step)
        else:
            self.scheduler.step(self.epoch)

    def _train_step(self, it) -> int:
        """One optimizer step over grad_accum_steps micro-batches; returns images seen by this rank."""
        accum = self.cfg.optim.grad_accum_steps
        images_seen = 0
        wait = 0.0
        t0 = time.perf_counter()
        for micro in range(accum):
            t_wait = time.perf_counter()
            with loader_rng_isolation():
                images, labels = next(it)
            wait += time.perf_counter() - t_wait
            if self.mixup is not None:
                images, labels = self.mixup(images, labels)
            sync = micro == accum - 1 or not self.dist.distributed
            ctx = contextlib.nullcontext() if sync else self._eager_train_model.no_sync()
            with ctx:
                with torch.autocast(self.dist.device.type, dtype=self.amp_dtype, enabled=self.amp):
                    loss = self.train_loss_fn(self._forward(images), labels)
                self.scaler.scale(loss / accum).backward()
            loss = loss.detach()
            self._loss_sum += loss.double()
            self._loss_count += 1
            finite_now = torch.isfinite(loss)
            self._first_bad_step = torch.where(finite_now | (self._first_bad_step >= 0), self._first_bad_step,
                                               torch.full_like(self._first_bad_step, self.step + 1))  # 1-based
            images_seen += images.shape[0]
        if self.cfg.optim.clip_grad is not None:
            from timm.utils import dispatch_clip_grad
            self.scaler.unscale_(self.optimizer)
            dispatch_clip_grad(self.model.parameters(), self.cfg.optim.clip_grad, mode=self.cfg.optim.clip_mode)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.batches_done += accum
        self._set_lr()
        if self.model_ema is not None:
            self.model_ema.update(self.model, step=self.step)
        if self.dist.device.type == 'cuda' and self.step % self.cfg.run.log_interval == 0:
            torch.cuda.synchronize()  # host timing then covers the GPU work of the window
        self.meter.update(images_seen * self.dist.world_size, time.perf_counter() - t0, wait)
        return images_seen

    def _log_train(self, bar) -> None:
        self._check_finite()
        loss = all_reduce_sum(self._loss_sum.clone()).item() / max(1, self._loss_count * self.dist.world_size)
        img_s, stall = self.meter.window()
        lr = max(group['lr'] for group in self.optimizer.param_groups)  # the schedule's: --layer-decay scales down
        values = {'epoch': self.epoch, 'loss': loss, 'lr': lr, 'img_s': img_s, 'data_stall': stall}
        if self.cfg.data.progressive:
            values['train_res'] = self.train_loader.image_size
        self.loggers.log('train', self.step, values)
        if bar is not None:
            bar.set_postfix(loss=f'{loss:.3f}', lr=f'{lr:.2e}', img_s=f'{img_s:.0f}', stall=f'{100 * stall:.0f}%')
        self._loss_sum.zero_()
        self._loss_count = 0
        self.meter.reset()

    def train_one_epoch(self) -> Optional[str]:
        """Train the rest of `self.epoch`; returns a stop reason ('signal', 'max_steps') or None at its end."""
        accum = self.cfg.optim.grad_accum_steps
        total = self.updates_per_epoch * accum
        if self.cfg.data.progressive:  # before a resumed position is loaded: it holds the size it was saved at
            self.train_loader.set_image_size(train_resolution(self.cfg.data, self.cfg.model.img_size, self.epoch))
        self.train_loader.set_epoch(self.epoch)
        if self.mixup is not None and self.cfg.aug.mixup_off_epoch:  # timm's train.py, per epoch (so on resume too)
            self.mixup.mixup_enabled = self.epoch < self.cfg.aug.mixup_off_epoch
        if self._loader_state is not None:
            self.train_loader.load_state_dict(self._loader_state)
            self._loader_state = None
        self.model.train()
        bar = tqdm(total=self.updates_per_epoch, initial=self.batches_done // accum, desc=f'epoch {self.epoch}',
                   disable=not self.dist.is_main, dynamic_ncols=True, leave=False)
        with loader_rng_isolation():
            it = iter(self.train_loader)
        try:
            while self.batches_done < total:
                self._train_step(it)
                bar.update(1)
                if self.step % self.cfg.run.log_interval == 0:
                    self._log_train(bar)
                stop = self._should_stop()
                if stop:
                    self.save(LAST)
                    return stop
                if self.cfg.run.checkpoint_interval and self.step % self.cfg.run.checkpoint_interval == 0:
                    self.save(LAST)
        finally:
            bar.close()
        return None

    def evaluate(self, model: nn.Module) -> dict:
        """Top-1, top-5 and mean cross-entropy over the whole val split (summed across ranks)."""
        return evaluate(model, self.val_loader, self.dist.device, amp=self.amp, amp_dtype=self.amp_dtype)

    def _end_epoch(self) -> None:
        metrics = {'model': self.evaluate(self.model)}
        if self.model_ema is not None:
            metrics['ema'] = self.evaluate(self.model_ema.module)
        values = {'epoch': self.epoch}
        for which, m in metrics.items():
            prefix = '' if which == 'model' else 'ema_'
            values.update({f'{prefix}{k}': v for k, v in m.items() if k != 'count'})
        self.loggers.log('eval', self.step, values)
        which, m = max(metrics.items(), key=lambda kv: kv[1]['top1'])
        self.epoch_metric = m['top1']
        improved = m['top1'] > self.best['top1']
        if improved:
            self.best = {'top1': m['top1'], 'top5': m['top5'], 'epoch': self.epoch, 'which': which}
        ema_note = f', EMA top-1 {metrics["ema"]["top1"]:.2f}%' if 'ema' in metrics else ''
        self.log(f'epoch {self.epoch}: val top-1 {metrics["model"]["top1"]:.2f}% top-5 {metrics["model"]["top5"]:.2f}% '
                 f'loss {metrics["model"]["loss"]:.4f}{ema_note}' + ('  (best)' if improved else ''))
        kept = self._update_history(m['top1'])
        self.epoch += 1
        self.batches_done = 0
        self._set_lr()
        self.save(LAST, *([BEST] if improved else []), *([history_name(kept)] if kept is not None else []))

    def _update_history(self, top1: float) -> Optional[int]:
        """--checkpoint-hist N: the epoch whose checkpoint joins the N best (None if it does not), after deleting
        the file that falls out (timm's CheckpointSaver; ties keep the earlier epoch)."""
        n = self.cfg.run.checkpoint_hist
        if not n:
            return None
        ranked = sorted(self.history + [(top1, self.epoch)], key=lambda h: (-h[0], h[1]))
        self.history, dropped = ranked[:n], ranked[n:]
        for _, epoch in dropped:
            if epoch != self.epoch and self.dist.is_main:
                (self.run_dir / history_name(epoch)).unlink(missing_ok=True)
        return self.epoch if (top1, self.epoch) in self.history else None

    def train(self) -> dict:
        """Train to the end (or until a stop signal / --max-steps); returns the summary that is also saved."""
        self._install_signal_handlers()
        start = time.perf_counter()
        status = 'completed'
        try:
            while self.epoch < self.num_epochs:
                stop = self.train_one_epoch()
                if stop:
                    status = 'preempted' if stop == 'signal' else 'max_steps'
                    if stop == 'signal':
                        self.log(f'signal {signal.Signals(self._stop_signal).name}: checkpointed step {self.step} to '
                                 f'{self.run_dir / LAST}; resume with --resume {self.run_dir}')
                    break
                self._end_epoch()
        finally:
            self._restore_signal_handlers()
        img_s, stall = self.meter.overall()
        summary = {'status': status, 'best_top1': self.best['top1'], 'best_epoch': self.best['epoch'],
                   'best_which': self.best['which'], 'epochs_done': self.epoch, 'steps': self.step,
                   'wall_time_s': time.perf_counter() - start, 'img_s': img_s, 'data_stall': stall,
                   'run_dir': str(self.run_dir)}
        self.loggers.log('summary', self.step, summary)
        if self.dist.is_main:
            write_json_atomic(summary, self.run_dir / 'summary.json')
        best = f'{summary["best_top1"]:.2f}% ({self.best["which"]}, epoch {self.best["epoch"]})' \
            if self.best['which'] else 'n/a (no epoch finished)'
        self.log(f'{status}: best val top-1 {best}, wall time {summary["wall_time_s"]:.1f} s, '
                 f'{img_s:.0f} img/s, data stall {100 * stall:.1f}% of step time; run dir {self.run_dir}')
        return summary

    def close(self) -> None:
        """Release loggers, loaders and the process group; safe to call after a failure."""
        loggers = getattr(self, 'loggers', None)
        if loggers is not None:
            loggers.close()
        for loader in (getattr(self, 'train_loader', None), getattr(self, 'val_loader', None)):
            if hasattr(loader, 'close'):
                loader.close()
        destroy_distributed()

