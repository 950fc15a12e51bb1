"""FLOP formulas of the Ne-Att custom ops (the head mix; on a GPU, the mix fused with softmax(z) @ v), so that
torch's FlopCounterMode (tools/bench_model.py) counts them.

Model FLOPs, as for matmuls: 2 per multiply-add, the MLP at its real (unpadded) sizes over every position; a
backward counts twice the forward (input and weight gradients), not the forward it recomputes.
"""
import math
from typing import Optional, Sequence

__all__ = ['attend_flops', 'head_mix_flops']


def head_mix_flops(s_shape: Sequence[int], w1_shape: Optional[Sequence[int]], backward: bool = False) -> int:
    """FLOPs of the head MLP (H -> F -> F -> H) applied over the head axis of logits of shape `s_shape` (H, ...);
    0 without an MLP (`w1_shape` None)."""
    if w1_shape is None:
        return 0
    F, H = w1_shape
    forward = 2 * (math.prod(s_shape) // H) * (H * F + F * F + F * H)
    return 2 * forward if backward else forward


def attend_flops(z_shape: Sequence[int], v_shape: Sequence[int], backward: bool = False) -> int:
    """FLOPs of softmax(z) @ v for logits (H, B, T, T) and values (H, B, T, D), as the batched matmul counts
    them; the backward's two products (d attn and dv) twice that."""
    forward = 2 * math.prod(z_shape) * v_shape[-1]
    return 2 * forward if backward else forward
