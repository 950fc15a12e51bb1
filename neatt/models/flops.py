"""FLOP formulas of the head-mix custom ops, so that torch's FlopCounterMode (tools/bench_model.py) counts them.

Model FLOPs, as for matmuls: 2 per multiply-add of the MLP over every position, its real (unpadded) sizes; a
backward counts twice the forward (input and weight gradients), not the forward it recomputes.
"""
import math
from typing import Optional, Sequence

__all__ = ['head_mix_flops']


def head_mix_flops(s_shape: Sequence[int], w1_shape: Optional[Sequence[int]], backward: bool = False) -> int:
    """FLOPs of the head MLP (H -> F -> F -> H) applied over the head axis of logits of shape `s_shape` (H, ...);
    0 without an MLP (`w1_shape` None)."""
    if w1_shape is None:
        return 0
    F, H = w1_shape
    forward = 2 * (math.prod(s_shape) // H) * (H * F + F * F + F * H)
    return 2 * forward if backward else forward
