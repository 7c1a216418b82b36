"""The spatial transformer of the Stable Diffusion UNets (diffusers' `Transformer2DModel`, continuous input).

    Transformer2DModel     GroupNorm -> proj_in (1x1 conv, or linear for SD 2.x) -> BasicTransformerBlock xN
                           -> proj_out, plus the input (residual)
    BasicTransformerBlock  LayerNorm -> self-attention (attn1), LayerNorm -> cross-attention (attn2),
                           LayerNorm -> FeedForward (GEGLU), each added back to the tokens
Only the configuration the UNets build is provided (layer_norm blocks, geglu, no patches / ada norms).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import Attention
from .layers import Checkpointed, Conv2d, Linear


def mask_to_bias(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A (batch, keys) keep-mask (1 keep, 0 drop) -> additive bias (batch, 1, keys) of 0 / -10000, as diffusers."""
    if mask is None:
        return None
    return ((1 - mask.to(dtype)) * -10000.0).unsqueeze(1)


class GEGLU(nn.Module):
    """Linear to 2 * dim_out, then value * gelu(gate)."""

    def __init__(self, dim_in: int, dim_out: int, bias: bool = True):
        super().__init__()
        self.proj = Linear(dim_in, dim_out * 2, bias=bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(hidden_states).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """net.0 = GEGLU(dim -> mult * dim), net.1 = dropout (identity at inference), net.2 = Linear back to dim."""

    def __init__(self, dim: int, dim_out: int | None = None, mult: int = 4, dropout: float = 0.0,
                 activation_fn: str = "geglu", inner_dim: int | None = None, bias: bool = True):
        super().__init__()
        if activation_fn != "geglu":
            raise ValueError(f"activation_fn: only 'geglu' (the UNets' feed-forward) is supported, got {activation_fn!r}")
        inner_dim = inner_dim or int(dim * mult)
        self.net = nn.ModuleList([GEGLU(dim, inner_dim, bias=bias), nn.Dropout(dropout),
                                  Linear(inner_dim, dim_out or dim, bias=bias)])

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            hidden_states = layer(hidden_states)
        return hidden_states


class BasicTransformerBlock(Checkpointed):
    """Pre-norm transformer layer over (batch, tokens, dim).

    `only_cross_attention`: attn1 also attends to the text (no self-attention anywhere).
    `attention_mask` goes to attn1 and `encoder_attention_mask` to attn2, as in diffusers.
    """

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int, dropout: float = 0.0,
                 cross_attention_dim: int | None = None, activation_fn: str = "geglu", attention_bias: bool = False,
                 only_cross_attention: bool = False, upcast_attention: bool = False,
                 norm_elementwise_affine: bool = True, norm_eps: float = 1e-5):
        super().__init__()
        self.only_cross_attention = only_cross_attention
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=norm_elementwise_affine)
        self.attn1 = Attention(dim, cross_attention_dim=cross_attention_dim if only_cross_attention else None,
                               heads=num_attention_heads, dim_head=attention_head_dim, bias=attention_bias,
                               upcast_attention=upcast_attention)
        if cross_attention_dim is not None:
            self.norm2 = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=norm_elementwise_affine)
            self.attn2 = Attention(dim, cross_attention_dim=cross_attention_dim, heads=num_attention_heads,
                                   dim_head=attention_head_dim, bias=attention_bias, upcast_attention=upcast_attention)
        else:
            self.norm2 = None
            self.attn2 = None
        self.norm3 = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=norm_elementwise_affine)
        self.ff = FeedForward(dim, dropout=dropout, activation_fn=activation_fn)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None,
                encoder_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        context = encoder_hidden_states if self.only_cross_attention else None
        hidden_states = hidden_states + self.attn1(self.norm1(hidden_states), context, attention_mask)
        if self.attn2 is not None:
            hidden_states = hidden_states + self.attn2(self.norm2(hidden_states), encoder_hidden_states,
                                                       encoder_attention_mask)
        return hidden_states + self.ff(self.norm3(hidden_states))


class Transformer2DModel(nn.Module):
    """Transformer over the pixels of a feature map (B, C, H, W) -> same shape (residual included).

    Built by the UNet blocks with diffusers' positional arguments (num_attention_heads, attention_head_dim).
    Returns the tensor itself (diffusers returns an output object; the blocks take `[0]` of it).
    """

    def __init__(self, num_attention_heads: int = 16, attention_head_dim: int = 88, in_channels: int | None = None,
                 out_channels: int | None = None, num_layers: int = 1, dropout: float = 0.0, norm_num_groups: int = 32,
                 cross_attention_dim: int | None = None, attention_bias: bool = False,
                 use_linear_projection: bool = False, only_cross_attention: bool = False,
                 upcast_attention: bool = False, norm_elementwise_affine: bool = True, norm_eps: float = 1e-5):
        super().__init__()
        if in_channels is None:
            raise ValueError("in_channels: Transformer2DModel needs the channel count of its feature map")
        inner = num_attention_heads * attention_head_dim
        out_channels = out_channels or in_channels
        self.in_channels = in_channels
        self.use_linear_projection = use_linear_projection
        self.norm = nn.GroupNorm(norm_num_groups, in_channels, eps=1e-6, affine=True)
        linear = use_linear_projection
        self.proj_in = Linear(in_channels, inner) if linear else Conv2d(in_channels, inner, kernel_size=1)
        self.transformer_blocks = nn.ModuleList([
            BasicTransformerBlock(inner, num_attention_heads, attention_head_dim, dropout=dropout,
                                  cross_attention_dim=cross_attention_dim, attention_bias=attention_bias,
                                  only_cross_attention=only_cross_attention, upcast_attention=upcast_attention,
                                  norm_elementwise_affine=norm_elementwise_affine, norm_eps=norm_eps)
            for _ in range(num_layers)])
        self.proj_out = Linear(inner, out_channels) if linear else Conv2d(inner, out_channels, kernel_size=1)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None,
                encoder_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is not None and attention_mask.ndim == 2:
            attention_mask = mask_to_bias(attention_mask, hidden_states.dtype)
        if encoder_attention_mask is not None and encoder_attention_mask.ndim == 2:
            encoder_attention_mask = mask_to_bias(encoder_attention_mask, hidden_states.dtype)
        b, _, h, w = hidden_states.shape
        residual = hidden_states
        x = self.norm(hidden_states)
        if self.use_linear_projection:
            x = self.proj_in(x.permute(0, 2, 3, 1).reshape(b, h * w, -1))
        else:
            x = self.proj_in(x)
            x = x.permute(0, 2, 3, 1).reshape(b, h * w, -1)
        for block in self.transformer_blocks:
            x = block(x, attention_mask, encoder_hidden_states, encoder_attention_mask)
        if self.use_linear_projection:
            x = self.proj_out(x).reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()
        else:
            x = self.proj_out(x.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous())
        return x + residual
