"""Ne-Att models; importing this registers the `neatt_vit_*` names in timm's registry."""
from .attention import HeadMix, NestedAttention
from .vit import (
    LoadReport,
    NeAttBlock,
    NeAttVisionTransformer,
    create_model,
    is_head_mix_key,
    load_checkpoint,
    read_checkpoint_file,
    to_vanilla_state_dict,
)

__all__ = [
    'HeadMix', 'NestedAttention', 'NeAttBlock', 'NeAttVisionTransformer', 'LoadReport', 'create_model',
    'is_head_mix_key', 'load_checkpoint', 'read_checkpoint_file', 'to_vanilla_state_dict',
]
