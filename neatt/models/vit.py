"""The Ne-Att Vision Transformer: timm's `VisionTransformer` with `NestedAttention` blocks.

Registers `neatt_vit_{tiny,small,base,large}_patch16_224` and `neatt_vit_{tiny,small}_patch4_32` in timm. Every
weight except `blocks.{i}.attn.head_mix.*` has the name and shape of the matching timm `vit_*` model, so
checkpoints go both ways: `load_checkpoint` (or `timm.create_model(..., checkpoint_path=...)`) loads a vanilla
timm ViT, leaving only the head-mixing MLPs at their init, and `to_vanilla_state_dict` gives a timm state dict.
"""
import logging
import os
import re
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.data import IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD
from timm.layers import Attention
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, resolve_pretrained_cfg
from timm.models._manipulate import checkpoint
from timm.models.vision_transformer import Block, VisionTransformer
from timm.models.vision_transformer import checkpoint_filter_fn as timm_vit_filter_fn

from .attention import NestedAttention

__all__ = [
    'NeAttBlock', 'NeAttVisionTransformer', 'LoadReport', 'load_checkpoint', 'read_checkpoint_file',
    'to_vanilla_state_dict', 'is_head_mix_key', 'create_model',
]

_logger = logging.getLogger(__name__)

# matches the keys of the head-mixing MLPs, with any wrapper prefix ('module.', '_orig_mod.', 'ema.')
_HEAD_MIX_RE = re.compile(r'(^|\.)blocks\.\d+\.attn\.head_mix\.')
# prefixes that wrappers put in front of a model's own keys: DDP, torch.compile
_WRAPPER_PREFIXES = ('module.', '_orig_mod.')


def is_head_mix_key(key: str) -> bool:
    """True for a state-dict key of a head-mixing MLP (the only weights vanilla timm ViTs lack)."""
    return _HEAD_MIX_RE.search(key) is not None


class NeAttBlock(Block):
    """timm's pre-norm ViT `Block` whose attention is `NestedAttention`; forward is `(x, z) -> (x, z)`.

    The block's z_l (attention logits) is an explicit argument and return value, not module state, so that
    gradient checkpointing and torch.compile see it as an ordinary tensor.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            qkv_bias: bool = False,
            qk_norm: bool = False,
            scale_attn_norm: bool = False,
            proj_bias: bool = True,
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            norm_layer: Optional[type] = None,
            depth: int = 0,
            neatt_sigma: float = 1.0,
            neatt_mix: bool = True,
            neatt_chain: bool = True,
            attn_layer: Any = None,
            device=None,
            dtype=None,
            **kwargs,
    ) -> None:
        """Args are timm `Block`'s (`depth` is the block index) plus the Ne-Att ones of `NestedAttention`."""
        if attn_layer not in (None, Attention):
            raise ValueError(f'NeAttBlock builds its own NestedAttention; attn_layer={attn_layer!r} is not supported')
        dd = {'device': device, 'dtype': dtype}
        # nn.Identity swallows timm's Attention args, so Block builds everything but the attention, which
        # needs the Ne-Att args that Block cannot forward.
        super().__init__(
            dim, num_heads, qkv_bias=qkv_bias, qk_norm=qk_norm, scale_attn_norm=scale_attn_norm,
            proj_bias=proj_bias, proj_drop=proj_drop, attn_drop=attn_drop, norm_layer=norm_layer,
            depth=depth, attn_layer=nn.Identity, **dd, **kwargs,
        )
        self.attn = NestedAttention(
            dim, num_heads=num_heads, qkv_bias=qkv_bias, qk_norm=qk_norm, scale_norm=scale_attn_norm,
            proj_bias=proj_bias, attn_drop=attn_drop, proj_drop=proj_drop, norm_layer=norm_layer,
            neatt_sigma=neatt_sigma, neatt_mix=neatt_mix, neatt_chain=neatt_chain, first=depth == 0, **dd,
        )

    def forward(
            self,
            x: torch.Tensor,
            z: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        a, z = self.attn(self.norm1(x), z)
        x = x + self.drop_path1(self.ls1(a))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x, z


class NeAttVisionTransformer(VisionTransformer):
    """Vision Transformer with Ne-Att nested multi-head attention (NEATT.md).

    Takes every `VisionTransformer` kwarg plus:

    Args:
        neatt_sigma: std of the Gaussian noise on the attention logits in training (default 1.0; 0 disables).
        neatt_mix: cross-head MLP g_l in blocks 2..L (default True).
        neatt_chain: add block l-1's logits to block l's (default True).

    With `neatt_mix=False, neatt_chain=False, neatt_sigma=0` this is timm's vanilla ViT (same keys, same output).
    """

    def __init__(
            self,
            neatt_sigma: float = 1.0,
            neatt_mix: bool = True,
            neatt_chain: bool = True,
            **kwargs,
    ) -> None:
        if kwargs.get('block_fn', NeAttBlock) is not NeAttBlock:
            raise ValueError('NeAttVisionTransformer uses NeAttBlock; block_fn cannot be changed')
        if neatt_sigma < 0:
            raise ValueError(f'neatt_sigma must be >= 0, got {neatt_sigma}')
        kwargs['block_fn'] = partial(
            NeAttBlock, neatt_sigma=neatt_sigma, neatt_mix=neatt_mix, neatt_chain=neatt_chain)
        super().__init__(**kwargs)
        self.neatt_sigma = neatt_sigma
        self.neatt_mix = neatt_mix
        self.neatt_chain = neatt_chain
        self.register_load_state_dict_post_hook(_allow_missing_head_mix)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embed, blocks (passing z_l from block to block), final norm."""
        self._check_input(x)
        x = self.patch_embed(x)
        x = self._pos_embed(x)
        x = self.patch_drop(x)
        x = self.norm_pre(x)
        z = None
        for blk in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x, z = checkpoint(blk, x, z)
            else:
                x, z = blk(x, z)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, *args, **kwargs):
        """Not supported: timm's implementation calls blocks as `x -> x`, Ne-Att blocks are `(x, z) -> (x, z)`."""
        raise NotImplementedError(
            'NeAttVisionTransformer does not support forward_intermediates / features_only; '
            'use forward_features() for the final tokens')

    def _check_input(self, x: torch.Tensor) -> None:
        """Raise a ValueError naming the expected shape instead of timm's bare assert deep in PatchEmbed."""
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f'expected images of shape (B, {self.in_chans}, H, W), got {tuple(x.shape)}')
        if not self.dynamic_img_size and tuple(x.shape[-2:]) != tuple(self.patch_embed.img_size):
            h, w = self.patch_embed.img_size
            raise ValueError(
                f'this model expects {h}x{w} images, got {x.shape[-2]}x{x.shape[-1]}: resize the input, or create '
                f'the model with img_size={x.shape[-2]} (or dynamic_img_size=True)')


def _allow_missing_head_mix(module: nn.Module, incompatible_keys) -> None:
    """load_state_dict post-hook: a checkpoint without head-mixing MLPs (a vanilla timm ViT) is still a full load.

    The head_mix keys are dropped from `missing_keys` (so `strict=True` passes, as in
    `timm.create_model(..., checkpoint_path=...)`), and one warning says that they keep their initialisation.
    """
    missing = [k for k in incompatible_keys.missing_keys if is_head_mix_key(k)]
    if not missing:
        return
    for k in missing:
        incompatible_keys.missing_keys.remove(k)
    blocks = sorted({int(m.group(1)) for m in (re.search(r'blocks\.(\d+)\.', k) for k in missing)})
    _logger.warning(
        'checkpoint has no Ne-Att head-mixing weights for blocks %s (%d tensors): they keep their '
        'initialisation; every other weight was loaded', blocks, len(missing))


@dataclass
class LoadReport:
    """What `load_checkpoint` did: which entry it read and which keys it could not match."""
    source: str
    missing_head_mix: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    mismatched: List[str] = field(default_factory=list)


def _select_state_dict(checkpoint: Mapping[str, Any], use_ema: bool) -> Tuple[Dict[str, torch.Tensor], str]:
    """Pick the weights out of a timm `.pth.tar` dict (EMA first when `use_ema`), or take a raw state dict."""
    keys = (['state_dict_ema', 'model_ema'] if use_ema else []) + ['state_dict', 'model']
    for key in keys:
        if isinstance(checkpoint.get(key), Mapping):
            return dict(checkpoint[key]), key
    if not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ValueError(
            f'checkpoint is neither a state dict nor a timm checkpoint dict: expected tensors or one of the keys '
            f'{keys}, found keys {sorted(checkpoint)[:10]}')
    return dict(checkpoint), 'raw state dict'


def _strip_wrapper_prefixes(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    out = {}
    for k, v in state_dict.items():
        for prefix in _WRAPPER_PREFIXES:
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def read_checkpoint_file(path: Union[str, os.PathLike], weights_only: bool = True) -> Any:
    """The object in a checkpoint file, on the CPU: `torch.load` for a `torch.save`d file (.pth, .pth.tar, .bin),
    or the state dict of a `.safetensors` file, the format timm's weights come in on the Hugging Face hub."""
    if os.fspath(path).endswith('.safetensors'):
        from safetensors.torch import load_file
        return load_file(path, device='cpu')
    return torch.load(path, map_location='cpu', weights_only=weights_only)


def load_checkpoint(
        model: NeAttVisionTransformer,
        checkpoint: Union[str, os.PathLike, Mapping[str, Any]],
        use_ema: bool = True,
        strict: bool = True,
        weights_only: bool = True,
) -> LoadReport:
    """Load a vanilla timm ViT or a Ne-Att checkpoint into `model`.

    Args:
        model: the Ne-Att model, or a vanilla timm `VisionTransformer` (the reverse direction: the checkpoint's
            head-mixing MLPs are dropped, as `to_vanilla_state_dict` does).
        checkpoint: a path to a `torch.save`d or `.safetensors` file, or the loaded object: a raw state dict, or
            a timm-style `.pth.tar` dict with `state_dict` / `state_dict_ema` (also `model` / `model_ema`).
        use_ema: read `state_dict_ema` when the checkpoint has one (timm's default); otherwise `state_dict`.
        strict: raise on any key that does not fit (missing head-mixing MLPs are always allowed: they keep their
            init). With False, mismatched or unknown keys are skipped and listed in the report.
        weights_only: passed to `torch.load`; set False only for a file you trust that holds non-tensor state.

    `module.` (DDP) and `_orig_mod.` (torch.compile) prefixes are stripped; `pos_embed` and the patch embedding
    are resampled with timm's ViT filter when the checkpoint's grid differs from the model's.

    Returns:
        LoadReport: the entry read and the keys left at their initialisation or skipped.
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        path = os.fspath(checkpoint)
        if not os.path.isfile(path):
            raise FileNotFoundError(f'checkpoint file not found: {path}')
        try:
            checkpoint = read_checkpoint_file(path, weights_only=weights_only)
        except Exception as e:  # torch raises several types for a bad or unsafe pickle
            raise ValueError(
                f'cannot read checkpoint {path}: {e.__class__.__name__}: {str(e).splitlines()[0]} '
                f'(expected a file written by torch.save, or a .safetensors file; pass weights_only=False only '
                f'if you trust it)') from e
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f'checkpoint must be a dict (state dict or timm checkpoint), got {type(checkpoint).__name__}')
    state_dict, source = _select_state_dict(checkpoint, use_ema)
    state_dict = timm_vit_filter_fn(_strip_wrapper_prefixes(state_dict), model)
    if not isinstance(model, NeAttVisionTransformer):
        # the reverse direction: a vanilla timm ViT takes a Ne-Att checkpoint minus its head-mixing MLPs
        state_dict = to_vanilla_state_dict(state_dict)

    own = model.state_dict()
    report = LoadReport(source=source)
    for k in own:
        if k not in state_dict:
            (report.missing_head_mix if is_head_mix_key(k) else report.missing).append(k)
    report.unexpected = [k for k in state_dict if k not in own]
    report.mismatched = [
        f'{k}: checkpoint {tuple(v.shape)}, model {tuple(own[k].shape)}'
        for k, v in state_dict.items() if k in own and v.shape != own[k].shape]
    problems = report.missing + report.unexpected + report.mismatched
    if strict and problems:
        hints = []
        if any(is_head_mix_key(k) for k in report.unexpected):
            hints.append('the checkpoint has head_mix weights but the model was built with neatt_mix=False')
        if any(m.startswith('head.') for m in report.mismatched):
            hints.append('the classifier differs: create the model with the checkpoint\'s num_classes, or load '
                         'with strict=False to keep the new head at its initialisation')
        raise ValueError(
            'checkpoint does not fit the model ' + type(model).__name__ + ':\n'
            + ''.join(f'  missing: {k}\n' for k in report.missing[:20])
            + ''.join(f'  unexpected: {k}\n' for k in report.unexpected[:20])
            + ''.join(f'  shape mismatch: {m}\n' for m in report.mismatched[:20])
            + ''.join(f'  hint: {h}\n' for h in hints))
    skip = {m.split(':')[0] for m in report.mismatched} | set(report.unexpected)
    model.load_state_dict({k: v for k, v in state_dict.items() if k not in skip}, strict=False)
    if not strict and problems:
        _logger.warning('loaded %s with %d keys left at init or skipped: %s', source, len(problems), problems[:10])
    return report


def to_vanilla_state_dict(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A Ne-Att state dict as a timm `vit_*` state dict: the head-mixing MLPs are dropped, nothing else changes."""
    return {k: v for k, v in state_dict.items() if not is_head_mix_key(k)}


def create_model(model_name: str, **kwargs) -> NeAttVisionTransformer:
    """`timm.create_model` for Ne-Att names, with an error that lists the valid names for an unknown one."""
    import timm
    names = timm.list_models('neatt_*')
    if model_name not in names:
        raise ValueError(f'unknown Ne-Att model {model_name!r}; expected one of {names}')
    return timm.create_model(model_name, **kwargs)


def _has_weight_source(variant: str, kwargs: dict) -> bool:
    """Whether `pretrained=True` has weights to read: a file, url or hub id in the pretrained cfg that
    timm.create_model resolved (e.g. from `local-dir:PATH`, `hf-hub:ID` or `pretrained_cfg_overlay`)."""
    cfg = resolve_pretrained_cfg(variant, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay'))
    return cfg.source in ('local-dir', 'hf-hub') or any((cfg.file, cfg.url, cfg.hf_hub_id, cfg.state_dict))


def _create_neatt_vit(variant: str, pretrained: bool = False, **kwargs) -> NeAttVisionTransformer:
    """timm's builder; `pretrained=True` reads what the pretrained cfg points to, through timm's ViT filter (a
    vanilla ViT's weights load too: the head-mixing MLPs keep their initialisation, `_allow_missing_head_mix`)."""
    if pretrained and not _has_weight_source(variant, kwargs):
        raise ValueError(
            f'{variant} has no released weights: start from a vanilla timm ViT with '
            f'timm.create_model({variant!r}, checkpoint_path=...) or neatt.models.load_checkpoint(model, path), or '
            f'load a folder written by tools/export_model.py with timm.create_model("local-dir:PATH", '
            f'pretrained=True)')
    return build_model_with_cfg(
        NeAttVisionTransformer,
        variant,
        pretrained=pretrained,
        pretrained_filter_fn=timm_vit_filter_fn,
        feature_cfg=dict(out_indices=3, feature_cls='getter'),
        **kwargs,
    )


def _cfg(**kwargs) -> Dict[str, Any]:
    """timm's vit_* pretrained cfg (inception mean/std, bicubic), so vanilla ViT weights see the same inputs."""
    return {
        'url': '',
        'num_classes': 1000,
        'input_size': (3, 224, 224),
        'pool_size': None,
        'crop_pct': 0.9,
        'interpolation': 'bicubic',
        'fixed_input_size': True,
        'mean': IMAGENET_INCEPTION_MEAN,
        'std': IMAGENET_INCEPTION_STD,
        'first_conv': 'patch_embed.proj',
        'classifier': 'head',
        'license': 'apache-2.0',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'neatt_vit_tiny_patch16_224': _cfg(),
    'neatt_vit_small_patch16_224': _cfg(),
    'neatt_vit_base_patch16_224': _cfg(),
    'neatt_vit_large_patch16_224': _cfg(),
    # 32 px data (CIFAR, the digits demo) is used whole: no center crop
    'neatt_vit_tiny_patch4_32': _cfg(input_size=(3, 32, 32), crop_pct=1.0),
    'neatt_vit_small_patch4_32': _cfg(input_size=(3, 32, 32), crop_pct=1.0),
})


@register_model
def neatt_vit_tiny_patch16_224(pretrained: bool = False, **kwargs) -> NeAttVisionTransformer:
    """Ne-Att ViT-Ti/16 (weights match vit_tiny_patch16_224)."""
    model_args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3)
    return _create_neatt_vit('neatt_vit_tiny_patch16_224', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def neatt_vit_small_patch16_224(pretrained: bool = False, **kwargs) -> NeAttVisionTransformer:
    """Ne-Att ViT-S/16 (weights match vit_small_patch16_224)."""
    model_args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6)
    return _create_neatt_vit('neatt_vit_small_patch16_224', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def neatt_vit_base_patch16_224(pretrained: bool = False, **kwargs) -> NeAttVisionTransformer:
    """Ne-Att ViT-B/16 (weights match vit_base_patch16_224)."""
    model_args = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12)
    return _create_neatt_vit('neatt_vit_base_patch16_224', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def neatt_vit_large_patch16_224(pretrained: bool = False, **kwargs) -> NeAttVisionTransformer:
    """Ne-Att ViT-L/16 (weights match vit_large_patch16_224)."""
    model_args = dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16)
    return _create_neatt_vit('neatt_vit_large_patch16_224', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def neatt_vit_tiny_patch4_32(pretrained: bool = False, **kwargs) -> NeAttVisionTransformer:
    """Ne-Att ViT-Ti with 4x4 patches for 32 px images (65 tokens); the CPU demo model."""
    model_args = dict(img_size=32, patch_size=4, embed_dim=192, depth=12, num_heads=3)
    return _create_neatt_vit('neatt_vit_tiny_patch4_32', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def neatt_vit_small_patch4_32(pretrained: bool = False, **kwargs) -> NeAttVisionTransformer:
    """Ne-Att ViT-S with 4x4 patches for 32 px images (65 tokens)."""
    model_args = dict(img_size=32, patch_size=4, embed_dim=384, depth=12, num_heads=6)
    return _create_neatt_vit('neatt_vit_small_patch4_32', pretrained=pretrained, **dict(model_args, **kwargs))
