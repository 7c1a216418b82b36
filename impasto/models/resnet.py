"""Residual block and 2x resamplers shared by the UNets and the autoencoders.

Attribute names equal diffusers' (norm1, conv1, time_emb_proj, norm2, conv2, conv_shortcut; conv / Conv2d_0)
so the state-dict keys of a checkpoint load as they are.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Checkpointed, Conv2d, Linear

_ACTIVATIONS = {"swish": nn.SiLU, "silu": nn.SiLU, "mish": nn.Mish, "gelu": nn.GELU, "relu": nn.ReLU}


def get_activation(name: str) -> nn.Module:
    """The activation module named by a diffusers config string (`act_fn`, `non_linearity`)."""
    cls = _ACTIVATIONS.get(str(name).lower())
    if cls is None:
        raise ValueError(f"act_fn: expected one of {sorted(_ACTIVATIONS)}, got {name!r}")
    return cls()


class Downsample2D(nn.Module):
    """Halve height and width: a stride-2 conv (`use_conv`) or 2x2 average pooling.

    `padding=0` means the asymmetric (0, 1, 0, 1) zero pad of the original SD VAE before the conv.
    """

    def __init__(self, channels: int, use_conv: bool = False, out_channels: int | None = None, padding: int = 1,
                 name: str = "conv", kernel_size: int = 3, bias: bool = True):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.padding = padding
        self.name = name
        if use_conv:
            conv = Conv2d(channels, self.out_channels, kernel_size, stride=2, padding=padding, bias=bias)
        else:
            if self.out_channels != channels:
                raise ValueError(f"out_channels: average pooling keeps {channels} channels, got {out_channels}")
            conv = nn.AvgPool2d(kernel_size=2, stride=2)
        if name == "conv":  # diffusers registers the same layer under both names in this case
            self.Conv2d_0 = conv
        self.conv = conv

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if hidden_states.shape[1] != self.channels:
            raise ValueError(f"hidden_states: expected {self.channels} channels, got {hidden_states.shape[1]}")
        if self.use_conv and self.padding == 0:
            hidden_states = F.pad(hidden_states, (0, 1, 0, 1))
        return self.conv(hidden_states)


class Upsample2D(nn.Module):
    """Double height and width by nearest-neighbour interpolation, then an optional 3x3 conv
    (or a transposed conv with `use_conv_transpose`)."""

    def __init__(self, channels: int, use_conv: bool = False, use_conv_transpose: bool = False,
                 out_channels: int | None = None, name: str = "conv", kernel_size: int | None = None,
                 padding: int = 1, bias: bool = True, interpolate: bool = True):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.use_conv_transpose = use_conv_transpose
        self.name = name
        self.interpolate = interpolate
        conv = None
        if use_conv_transpose:
            conv = nn.ConvTranspose2d(channels, self.out_channels, kernel_size or 4, stride=2, padding=padding,
                                      bias=bias)
        elif use_conv:
            conv = Conv2d(channels, self.out_channels, kernel_size or 3, padding=padding, bias=bias)
        if name == "conv":
            self.conv = conv
        else:
            self.Conv2d_0 = conv

    def forward(self, hidden_states: torch.Tensor, output_size=None, *args, **kwargs) -> torch.Tensor:
        if hidden_states.shape[1] != self.channels:
            raise ValueError(f"hidden_states: expected {self.channels} channels, got {hidden_states.shape[1]}")
        conv = self.conv if self.name == "conv" else self.Conv2d_0
        if self.use_conv_transpose:
            return conv(hidden_states)
        if self.interpolate:  # nearest copies values, so bfloat16 needs no float32 detour (torch >= 2.1)
            x = hidden_states
            if x.shape[0] >= 64 or x.numel() * 4 > 2**31:  # large nearest-upsample kernels need contiguous input
                x = x.contiguous()
            if output_size is None:
                hidden_states = F.interpolate(x, scale_factor=2.0, mode="nearest")
            else:
                hidden_states = F.interpolate(x, size=output_size, mode="nearest")
        if self.use_conv:
            hidden_states = conv(hidden_states)
        return hidden_states


class ResnetBlock2D(Checkpointed):
    """GroupNorm -> act -> conv -> (+ time embedding) -> GroupNorm -> act -> conv, plus a (1x1 conv) shortcut.

    `time_embedding_norm="scale_shift"` applies the embedding as h * (1 + scale) + shift after norm2;
    `temb_channels=None` builds no time projection (the autoencoders). `up`/`down` resample both paths.
    """

    def __init__(self, *, in_channels: int, out_channels: int | None = None, conv_shortcut: bool = False,
                 dropout: float = 0.0, temb_channels: int | None = 512, groups: int = 32,
                 groups_out: int | None = None, pre_norm: bool = True, eps: float = 1e-6,
                 non_linearity: str = "swish", skip_time_act: bool = False, time_embedding_norm: str = "default",
                 output_scale_factor: float = 1.0, use_in_shortcut: bool | None = None, up: bool = False,
                 down: bool = False, conv_shortcut_bias: bool = True, conv_2d_out_channels: int | None = None):
        super().__init__()
        if time_embedding_norm not in ("default", "scale_shift"):
            raise ValueError(f"time_embedding_norm: expected 'default' or 'scale_shift', got {time_embedding_norm!r}")
        out_channels = out_channels or in_channels
        conv2_out = conv_2d_out_channels or out_channels
        self.in_channels, self.out_channels = in_channels, out_channels
        self.time_embedding_norm = time_embedding_norm
        self.output_scale_factor = output_scale_factor
        self.skip_time_act = skip_time_act

        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps, affine=True)
        self.conv1 = Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = None
        if temb_channels is not None:
            width = 2 * out_channels if time_embedding_norm == "scale_shift" else out_channels
            self.time_emb_proj = Linear(temb_channels, width)
        self.norm2 = nn.GroupNorm(groups_out or groups, out_channels, eps=eps, affine=True)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = Conv2d(out_channels, conv2_out, 3, padding=1)
        self.nonlinearity = get_activation(non_linearity)
        self.upsample = Upsample2D(in_channels) if up else None
        self.downsample = Downsample2D(in_channels, padding=1, name="op") if down and not up else None
        needs_shortcut = in_channels != conv2_out if use_in_shortcut is None else use_in_shortcut
        self.conv_shortcut = (Conv2d(in_channels, conv2_out, 1, bias=conv_shortcut_bias)
                              if needs_shortcut else None)

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor | None = None, *args, **kwargs):
        h = self.nonlinearity(self.norm1(input_tensor))
        if self.upsample is not None:
            input_tensor, h = self.upsample(input_tensor), self.upsample(h)
        elif self.downsample is not None:
            input_tensor, h = self.downsample(input_tensor), self.downsample(h)
        h = self.conv1(h)
        if self.time_emb_proj is not None and temb is not None:
            if not self.skip_time_act:
                temb = self.nonlinearity(temb)
            temb = self.time_emb_proj(temb)[:, :, None, None]
        if self.time_embedding_norm == "scale_shift":
            if temb is None:
                raise ValueError("temb: required when time_embedding_norm is 'scale_shift'")
            scale, shift = temb.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h if temb is None else h + temb)
        h = self.conv2(self.dropout(self.nonlinearity(h)))
        if self.conv_shortcut is not None:
            input_tensor = self.conv_shortcut(input_tensor)
        out = input_tensor + h
        return out / self.output_scale_factor if self.output_scale_factor != 1.0 else out
