"""Ne-Att nested multi-head attention (see ../shared/reference/NEATT.md, the CODA formulation).

One block, H heads, N tokens::

    a_l = q_l k_l^T / sqrt(d)                        (H, B, N, N), head-major (see NestedAttention.forward)
    z_1 = a_l                                        first block
    s_l = a_l + z_{l-1};  z_l = s_l + g_l(s_l)       later blocks, g_l mixes across heads
    z_l = z_l + sigma * eps                          training only, eps ~ N(0, 1)
    out = proj(dropout(softmax(z_l)) @ v_l)          z_l (noise included) goes to block l + 1

`NestedAttention` takes timm `Attention`'s constructor args, keeps its submodule names (`qkv`, `q_norm`, `k_norm`,
`norm`, `proj`) so that a vanilla `vit_*` state dict loads, and adds `head_mix` (g_l) as the only new weights.
"""
import math
from typing import Optional, Tuple, Type

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import mix_softmax_triton
from .head_mix_cpu import head_mix as _fused_head_mix
from .logit_noise import add_logit_noise

__all__ = ['HeadMix', 'NestedAttention']

# Tokens on the fused GPU path are padded to a multiple of this: rows of 8 bf16/fp16 values are 16-byte aligned,
# which cuBLAS's fast batched-GEMM kernels need (with N = 197 it ran q k^T, and its gradients, on sm75-era kernels).
_TOKEN_ALIGN = 8


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


class _LeakyReLU(torch.autograd.Function):
    """LeakyReLU that saves only its output, with the fast backward kernel.

    `F.leaky_relu(inplace=True)` also saves only the output, but its backward (`self_is_result=True`) runs about
    3x slower on CPU than the input-based kernel. For a positive slope the output has the sign of the input, so
    the input-based kernel applied to the output gives the same gradient.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, negative_slope: float) -> torch.Tensor:
        out = F.leaky_relu(x, negative_slope)
        ctx.save_for_backward(out)
        ctx.negative_slope = negative_slope
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out, = ctx.saved_tensors
        return torch.ops.aten.leaky_relu_backward(grad, out, ctx.negative_slope, False), None


class HeadMix(nn.Module):
    """The cross-head MLP g_l, applied at every (query, key) position with the head axis as its features.

    Linear(H, 4H) -> LeakyReLU(0.2) -> Linear(4H, 4H) -> LeakyReLU(0.2) -> Linear(4H, H), xavier-uniform init
    with gain 1/sqrt(2) and zero biases (as CODA's `head_ffn`). The weights live in `nn.Linear`s (`fc1`, `fc2`,
    `fc3`) for readable state-dict keys. `forward` applies them over the head axis of the head-major (H, B*N*N)
    logits, with no permute to a (B, N, N, H) layout: on CPU float32 in one fused kernel (`head_mix_cpu`),
    elsewhere as matmuls with the residual `s + g(s)` folded into the last one. On a GPU with Triton,
    `NestedAttention` bypasses `forward` and hands the weights to `mix_softmax_triton`, which fuses the mix with
    the noise, then computes softmax(z) @ v flash-attention style.
    """

    def __init__(
            self,
            num_heads: int,
            hidden_ratio: int = 4,
            negative_slope: float = 0.2,
            device=None,
            dtype=None,
    ) -> None:
        """
        Args:
            num_heads: H, the feature size of the MLP.
            hidden_ratio: hidden width as a multiple of H (4 in NEATT.md).
            negative_slope: LeakyReLU slope (0.2 in NEATT.md), in [0, 1], which every implementation of the mix
                relies on: the fused GPU kernels compute max(a, slope a), the backward here reads the input's sign
                from the output.
        """
        super().__init__()
        if not 0 <= negative_slope <= 1:
            raise ValueError(f'negative_slope must be in [0, 1], got {negative_slope}')
        dd = {'device': device, 'dtype': dtype}
        hidden = hidden_ratio * num_heads
        self.negative_slope = negative_slope
        self.fc1 = nn.Linear(num_heads, hidden, **dd)
        self.fc2 = nn.Linear(hidden, hidden, **dd)
        self.fc3 = nn.Linear(hidden, num_heads, **dd)
        self.init_weights()

    def init_weights(self) -> None:
        """Xavier-uniform (gain 1/sqrt(2)), zero bias.

        Named `init_weights` so that timm's ViT init (`named_apply`, children first) calls it after its own
        trunc-normal init of every `nn.Linear`, and the NEATT.md init wins.
        """
        for fc in (self.fc1, self.fc2, self.fc3):
            nn.init.xavier_uniform_(fc.weight, gain=1. / math.sqrt(2.))
            nn.init.zeros_(fc.bias)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """Return `s + g(s)` for head-major logits `s` of shape (H, ...), e.g. (H, B, N, N).

        float32 on CPU goes to the fused kernel (`head_mix_cpu`), several times faster than the GEMMs there;
        autocast (bf16/fp16) on CPU, and GPUs without Triton, keep the GEMMs.
        """
        if (s.device.type == 'cpu' and s.dtype == torch.float32 and self.fc1.weight.dtype == torch.float32
                and not torch.is_autocast_enabled('cpu')):
            return _fused_head_mix(s, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias,
                                   self.fc3.weight, self.fc3.bias, self.negative_slope)
        x = s.reshape(s.shape[0], -1)
        h = _LeakyReLU.apply(torch.addmm(self.fc1.bias[:, None], self.fc1.weight, x), self.negative_slope)
        h = _LeakyReLU.apply(torch.addmm(self.fc2.bias[:, None], self.fc2.weight, h), self.negative_slope)
        # residual folded in: addmm computes x + W3 @ h in one pass over the logits
        z = torch.addmm(x, self.fc3.weight, h)
        z.add_(self.fc3.bias[:, None])  # in place: addmm's backward does not need its output
        return z.view(s.shape)


class NestedAttention(nn.Module):
    """Ne-Att self-attention: timm `Attention` plus head mixing, logit chaining and logit noise.

    `forward(x, z_prev)` returns `(out, z)`: `z` is this block's logits (noise included) for the next block, or
    None when chaining is off. With mixing, chaining and noise all off it is timm's `Attention` (fused SDPA).

    On the fused GPU path (`mix_softmax_triton`), q, k and v get zero tokens up to a multiple of `_TOKEN_ALIGN`,
    so z is (H, B, T, T) with T >= N. The softmax leaves the padding keys out (their attn is 0) and the padding
    queries' outputs are dropped, so nothing real depends on them: the padding rows and columns of z are finite
    values that only other padding reads, and their gradient is 0.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            qkv_bias: bool = False,
            qk_norm: bool = False,
            scale_norm: bool = False,
            proj_bias: bool = True,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            norm_layer: Optional[Type[nn.Module]] = None,
            neatt_sigma: float = 1.0,
            neatt_mix: bool = True,
            neatt_chain: bool = True,
            first: bool = False,
            device=None,
            dtype=None,
    ) -> None:
        """
        Args:
            dim: token width.
            num_heads: H.
            qkv_bias: bias in the qkv projection.
            qk_norm: normalize q and k with `norm_layer`.
            scale_norm: normalize the attention output with `norm_layer` before `proj`.
            proj_bias: bias in the output projection.
            attn_drop: dropout on the attention probabilities.
            proj_drop: dropout after the output projection.
            norm_layer: norm for `qk_norm` / `scale_norm`.
            neatt_sigma: std of the Gaussian noise added to the logits in training (0 disables it).
            neatt_mix: add the cross-head MLP g_l (`head_mix`); the first block never has one, since
                NEATT.md sets z_1 = a_1 there, and an unused parameter would break DDP.
            neatt_chain: add the previous block's logits z_{l-1} to this block's (and return z_l).
            first: this is the first block (no z_{l-1}, no g_l).
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if dim % num_heads:
            raise ValueError(f'dim ({dim}) must be divisible by num_heads ({num_heads})')
        if neatt_sigma < 0:
            raise ValueError(f'neatt_sigma must be >= 0, got {neatt_sigma}')
        if (qk_norm or scale_norm) and norm_layer is None:
            raise ValueError('norm_layer must be given when qk_norm or scale_norm is set')
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.neatt_sigma = neatt_sigma
        self.neatt_chain = neatt_chain
        self.first = first

        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **dd)
        self.q_norm = norm_layer(self.head_dim, **dd) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim, **dd) if qk_norm else nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        self.norm = norm_layer(dim, **dd) if scale_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=proj_bias, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        self.head_mix = HeadMix(num_heads, **dd) if neatt_mix and not first else None

    def forward(
            self,
            x: torch.Tensor,
            z_prev: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """x (B, N, C) and the previous block's logits -> (out (B, N, C), this block's logits or None).

        The logits are head-major, (H, B, N, N), from block to block: g_l is then a plain 2-D matmul over the
        head axis (one GEMM per layer, no permute copies, no per-batch weight-gradient reduction).
        """
        B, N, C = x.shape
        H = self.num_heads
        chain_in = z_prev is not None and self.neatt_chain and not self.first
        noisy = self.training and self.neatt_sigma > 0
        needs_logits = self.head_mix is not None or self.neatt_chain
        # GPU: mix and noise in one Triton kernel, softmax(z) @ v in another (mix_softmax_triton), over tokens
        # padded to a multiple of 8 (see the class docstring)
        padded = _round_up(N, _TOKEN_ALIGN)
        fused = (needs_logits and mix_softmax_triton.available(x.device, H * B * padded * padded)
                 and not (self.training and self.attn_drop.p > 0))
        T = padded if fused else N
        qkv = self.qkv(x).reshape(B, N, 3, H, self.head_dim).permute(2, 3, 0, 1, 4)
        if fused:
            qkv = F.pad(qkv, (0, 0, 0, T - N))  # zero tokens; also the copy to contiguous q, k, v
        q, k, v = qkv.unbind(0)  # (H, B, T, d) each
        q, k = self.q_norm(q), self.k_norm(k)

        if not needs_logits:
            # Nothing needs the logits: fused SDPA, with the noise (if any) as an additive mask.
            noise = self._add_noise(q.new_zeros(H, B, N, N)).transpose(0, 1) if noisy else None
            o = F.scaled_dot_product_attention(
                q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                attn_mask=noise,
                dropout_p=self.attn_drop.p if self.training else 0.,
            )  # (B, H, N, d)
            x = o.transpose(1, 2).reshape(B, N, C)
            z = None
        else:
            z = self._logits(q, k, z_prev if chain_in else None)
            if fused:
                hm = self.head_mix
                weights = [None] * 6 if hm is None else [hm.fc1.weight, hm.fc1.bias, hm.fc2.weight, hm.fc2.bias,
                                                         hm.fc3.weight, hm.fc3.bias]
                slope = 0. if hm is None else hm.negative_slope
                z, o, _, _ = mix_softmax_triton.mix_noise_attend(
                    z, v, *weights, self.neatt_sigma if noisy else 0., slope, n_keys=N)
                x = o.view(B, N, C)  # o is (B, N, H, d), the real tokens' outputs
            else:
                if self.head_mix is not None:
                    z = self.head_mix(z)
                if noisy:
                    z = self._add_noise(z)
                # softmax in fp32 whatever the autocast dtype: chained and noisy logits grow with depth
                attn = torch.softmax(z, dim=-1, dtype=torch.float32).to(v.dtype)
                attn = self.attn_drop(attn)
                o = torch.bmm(attn.view(H * B, N, N), v.reshape(H * B, N, self.head_dim))
                x = o.view(H, B, N, self.head_dim).permute(1, 2, 0, 3).reshape(B, N, C)
            z = z if self.neatt_chain else None

        x = self.norm(x)
        x = self.proj(x)
        x = self.proj_drop(x)
        return x, z

    def _logits(self, q: torch.Tensor, k: torch.Tensor, z_prev: Optional[torch.Tensor]) -> torch.Tensor:
        """a = q k^T * scale, plus z_prev when chaining (one baddbmm, no separate add over the logits)."""
        H, B, N, D = q.shape
        q = q.reshape(H * B, N, D)
        kt = k.reshape(H * B, N, D).transpose(1, 2)
        if z_prev is None:
            a = torch.baddbmm(q.new_zeros(()).expand(H * B, N, N), q, kt, beta=0., alpha=self.scale)
        else:
            a = torch.baddbmm(z_prev.reshape(H * B, N, N), q, kt, alpha=self.scale)
        return a.view(H, B, N, N)

    def _add_noise(self, z: torch.Tensor) -> torch.Tensor:
        """z + sigma * eps on the head-major (H, B, N, N) logits, seeded from the global RNG, so that a reseeded
        run (or a reference computation) draws the same eps. On CPU float32 the parallel generator of
        `logit_noise` (torch's CPU randn is single-threaded); elsewhere `torch.randn_like`, in place where
        autograd allows it (nothing saved for backward reads z before the softmax)."""
        if z.device.type == 'cpu' and z.dtype == torch.float32:
            return add_logit_noise(z, self.neatt_sigma)
        return z.add_(torch.randn_like(z), alpha=self.neatt_sigma)
