"""Checkpoints both ways between timm's vanilla ViT and Ne-Att, and the errors for ones that don't fit."""
import logging

import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

import neatt  # noqa: F401  (registers the models)
from neatt.models import NeAttVisionTransformer, load_checkpoint, to_vanilla_state_dict
from _model_data import TINY, real_images


def _vanilla(seed: int = 1, **kwargs) -> VisionTransformer:
    torch.manual_seed(seed)
    return VisionTransformer(**dict(TINY, **kwargs)).eval()


def _neatt(seed: int = 2, **kwargs) -> NeAttVisionTransformer:
    torch.manual_seed(seed)
    return NeAttVisionTransformer(**dict(TINY, **kwargs)).eval()


def _head_mix_init(model):
    return {k: v.clone() for k, v in model.state_dict().items() if '.head_mix.' in k}


def test_vanilla_state_dict_loads_and_only_head_mix_keeps_init(caplog):
    vanilla, model = _vanilla(), _neatt()
    before = _head_mix_init(model)
    with caplog.at_level(logging.WARNING, logger='neatt.models.vit'):
        report = load_checkpoint(model, vanilla.state_dict())
    assert report.source == 'raw state dict'
    assert sorted(report.missing_head_mix) == sorted(before)
    assert not report.missing and not report.unexpected and not report.mismatched
    assert 'keep their initialisation' in caplog.text
    ours = model.state_dict()
    for k, v in vanilla.state_dict().items():
        torch.testing.assert_close(ours[k], v, rtol=0, atol=0, msg=k)
    for k, v in before.items():
        torch.testing.assert_close(ours[k], v, rtol=0, atol=0, msg=k)
    # with the Ne-Att parts off, the loaded model is the vanilla one
    off = _neatt(neatt_mix=False, neatt_chain=False, neatt_sigma=0.0)
    load_checkpoint(off, vanilla.state_dict())
    x = real_images(2)
    with torch.no_grad():
        torch.testing.assert_close(off(x), vanilla(x), rtol=1e-5, atol=1e-6)


def test_pth_tar_prefers_ema_and_strips_module_prefix(tmp_path):
    """A timm train.py style checkpoint: DDP 'module.' keys, state_dict and state_dict_ema with other values."""
    plain, ema = _vanilla(seed=3), _vanilla(seed=4)
    path = tmp_path / 'model_best.pth.tar'
    torch.save({
        'epoch': 5, 'arch': 'vit_tiny',
        'state_dict': {'module.' + k: v for k, v in plain.state_dict().items()},
        'state_dict_ema': ema.state_dict(),
    }, path)
    model = _neatt()
    assert load_checkpoint(model, path).source == 'state_dict_ema'
    torch.testing.assert_close(model.pos_embed, ema.pos_embed, rtol=0, atol=0)
    assert load_checkpoint(model, path, use_ema=False).source == 'state_dict'
    torch.testing.assert_close(model.pos_embed, plain.pos_embed, rtol=0, atol=0)


def test_timm_create_model_with_checkpoint_path(tmp_path, caplog):
    """timm's own loader (strict) accepts a vanilla vit_* file for a neatt_vit_* model and says what it left."""
    vanilla = timm.create_model('vit_tiny_patch16_224', depth=2, img_size=32, patch_size=4, num_classes=10)
    path = tmp_path / 'vit.pth'
    torch.save(vanilla.state_dict(), path)
    with caplog.at_level(logging.WARNING, logger='neatt.models.vit'):
        model = timm.create_model('neatt_vit_tiny_patch4_32', depth=2, num_classes=10, checkpoint_path=str(path))
    assert 'blocks [1]' in caplog.text
    torch.testing.assert_close(model.blocks[1].attn.qkv.weight, vanilla.blocks[1].attn.qkv.weight, rtol=0, atol=0)


def test_neatt_to_vanilla_round_trip():
    """Drop head_mix: timm's VisionTransformer loads the rest strictly, and equals Ne-Att with its parts off."""
    model = _neatt()
    sd = to_vanilla_state_dict(model.state_dict())
    assert not any('head_mix' in k for k in sd) and len(sd) < len(model.state_dict())
    vanilla = _vanilla()
    vanilla.load_state_dict(sd, strict=True)
    off = _neatt(neatt_mix=False, neatt_chain=False, neatt_sigma=0.0)
    off.load_state_dict(sd, strict=True)
    x = real_images(2)
    with torch.no_grad():
        torch.testing.assert_close(vanilla(x), off(x), rtol=1e-5, atol=1e-6)


def test_neatt_pth_tar_loads_into_timm_vit(tmp_path):
    """The reverse with the helper: a Ne-Att training checkpoint into timm's vanilla ViT."""
    model = _neatt()
    path = tmp_path / 'neatt.pth.tar'
    torch.save({'state_dict': model.state_dict(), 'state_dict_ema': model.state_dict(), 'epoch': 1}, path)
    vanilla = _vanilla()
    report = load_checkpoint(vanilla, path)
    assert report.source == 'state_dict_ema' and not report.missing and not report.unexpected
    torch.testing.assert_close(vanilla.blocks[2].mlp.fc1.weight, model.blocks[2].mlp.fc1.weight, rtol=0, atol=0)


def test_full_neatt_checkpoint_round_trip():
    src, dst = _neatt(seed=5), _neatt(seed=6)
    report = load_checkpoint(dst, {'state_dict': src.state_dict()})
    assert not report.missing_head_mix
    x = real_images(2)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)


def test_pos_embed_resampled_with_timm_helper():
    """A checkpoint at a 4x4 grid loads into a 6x6 model with pos_embed resampled as timm resamples it."""
    vanilla = _vanilla()
    model = _neatt(img_size=48)
    load_checkpoint(model, vanilla.state_dict())
    expected = resample_abs_pos_embed(vanilla.pos_embed.detach(), new_size=(6, 6), old_size=(4, 4),
                                      num_prefix_tokens=1, interpolation='bicubic', antialias=True)
    torch.testing.assert_close(model.pos_embed.detach(), expected)


def test_mismatched_shapes_name_key_and_shapes():
    wide = _vanilla(embed_dim=64, num_heads=4)
    with pytest.raises(ValueError, match=r'shape mismatch: pos_embed: checkpoint \(1, 17, 64\), model \(1, 17, 48\)'):
        load_checkpoint(_neatt(), wide.state_dict())


def test_other_num_classes_hints_and_non_strict_keeps_new_head():
    src = _vanilla(num_classes=7)
    model = _neatt()
    head = model.head.weight.detach().clone()
    with pytest.raises(ValueError, match='num_classes'):
        load_checkpoint(model, src.state_dict())
    report = load_checkpoint(model, src.state_dict(), strict=False)
    assert sorted(m.split(':')[0] for m in report.mismatched) == ['head.bias', 'head.weight']
    torch.testing.assert_close(model.head.weight, head, rtol=0, atol=0)
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight, rtol=0, atol=0)


def test_head_mix_into_model_without_mixing_is_explained():
    with pytest.raises(ValueError, match='neatt_mix=False'):
        load_checkpoint(_neatt(neatt_mix=False), _neatt().state_dict())


def test_bad_checkpoint_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        load_checkpoint(_neatt(), tmp_path / 'nope.pth')
    junk = tmp_path / 'junk.pth'
    junk.write_bytes(b'not a checkpoint')
    with pytest.raises(ValueError, match='junk.pth'):
        load_checkpoint(_neatt(), junk)
    with pytest.raises(ValueError, match='neither a state dict nor a timm checkpoint'):
        load_checkpoint(_neatt(), {'epoch': 3, 'optimizer': {}})
