"""UNet stages with diffusers' class names, constructor arguments and parameter names.

Down blocks return (hidden_states, skip states); up blocks consume skip states from the end of the tuple.
    DownBlock2D / UpBlock2D                   resnets only
    CrossAttnDownBlock2D / CrossAttnUpBlock2D resnet then Transformer2DModel per layer (text conditioning)
    AttnDownBlock2D / AttnUpBlock2D           resnet then a self-attention layer (UNet2DModel, LDM)
    UNetMidBlock2DCrossAttn / UNetMidBlock2D  resnet, then (attention, resnet) per layer
Up blocks carry the FreeU factors `s1, s2, b1, b2` (None = off) set by `UNet2DConditionModel.enable_freeu`.
Dropout is not built: these modules are for inference, where it is the identity.
"""
from __future__ import annotations

import torch
from torch import nn

from .attention import Attention
from .resnet import Downsample2D, ResnetBlock2D, Upsample2D
from .transformer_2d import Transformer2DModel

DOWN_BLOCKS = ("DownBlock2D", "CrossAttnDownBlock2D", "AttnDownBlock2D")
UP_BLOCKS = ("UpBlock2D", "CrossAttnUpBlock2D", "AttnUpBlock2D")


def _resnet(cin, cout, temb_channels, eps, act, groups, time_scale_shift, output_scale_factor=1.0, groups_out=None):
    return ResnetBlock2D(in_channels=cin, out_channels=cout, temb_channels=temb_channels, eps=eps, groups=groups,
                         groups_out=groups_out, non_linearity=act, time_embedding_norm=time_scale_shift,
                         output_scale_factor=output_scale_factor)


def _per_layer(value, num_layers: int, name: str) -> list[int]:
    """An int for every layer, or one value per layer."""
    if isinstance(value, int):
        return [value] * num_layers
    value = list(value)
    if len(value) != num_layers:
        raise ValueError(f"{name}: expected an int or {num_layers} values (one per layer), got {value}")
    return value


def _attentions_first(block: nn.Module) -> None:
    """Register `attentions` before `resnets` and the resamplers, so state-dict order equals diffusers'."""
    for name in ("resnets", "downsamplers", "upsamplers"):
        if name in block._modules:
            block._modules[name] = block._modules.pop(name)


def _fourier_filter(x: torch.Tensor, threshold: int, scale: float) -> torch.Tensor:
    """Scale the lowest frequencies (a 2*threshold square around the centre of the shifted spectrum)."""
    freq = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    h, w = freq.shape[-2:]
    mask = torch.ones((1, 1, h, w), device=x.device)
    mask[..., h // 2 - threshold:h // 2 + threshold, w // 2 - threshold:w // 2 + threshold] = scale
    freq = torch.fft.ifftshift(freq * mask, dim=(-2, -1))
    return torch.fft.ifftn(freq, dim=(-2, -1)).real.to(x.dtype)


class _FreeU:
    """FreeU (arXiv 2309.11497) for the two lowest-resolution up blocks: amplify the first half of the backbone
    channels by b1/b2 and damp the low frequencies of the skip features by s1/s2."""

    s1 = s2 = b1 = b2 = None
    resolution_idx: int | None = None

    def _freeu(self, hidden_states, skip):
        if not (self.s1 and self.s2 and self.b1 and self.b2) or self.resolution_idx not in (0, 1):
            return hidden_states, skip
        b, s = (self.b1, self.s1) if self.resolution_idx == 0 else (self.b2, self.s2)
        half = hidden_states.shape[1] // 2
        hidden_states = torch.cat([hidden_states[:, :half] * b, hidden_states[:, half:]], dim=1)
        return hidden_states, _fourier_filter(skip, threshold=1, scale=s)


class DownBlock2D(nn.Module):
    has_cross_attention = False

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, num_layers: int = 1,
                 resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish",
                 resnet_groups: int = 32, output_scale_factor: float = 1.0, add_downsample: bool = True,
                 downsample_padding: int = 1):
        super().__init__()
        self.resnets = nn.ModuleList([
            _resnet(in_channels if i == 0 else out_channels, out_channels, temb_channels, resnet_eps, resnet_act_fn,
                    resnet_groups, resnet_time_scale_shift, output_scale_factor) for i in range(num_layers)])
        self.downsamplers = (nn.ModuleList([Downsample2D(out_channels, use_conv=True, out_channels=out_channels,
                                                         padding=downsample_padding, name="op")])
                             if add_downsample else None)

    def _layer(self, i, hidden_states, temb, encoder_hidden_states, attention_mask, encoder_attention_mask):
        return self.resnets[i](hidden_states, temb)

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                encoder_attention_mask: torch.Tensor | None = None,
                additional_residuals: torch.Tensor | None = None):
        """`additional_residuals` (T2I-Adapter) is added to the output of the last layer (before downsampling)
        in cross-attention blocks and to the block's final output in the others, as diffusers does."""
        states = []
        cross = self.has_cross_attention
        for i in range(len(self.resnets)):
            hidden_states = self._layer(i, hidden_states, temb, encoder_hidden_states, attention_mask,
                                        encoder_attention_mask)
            if cross and additional_residuals is not None and i == len(self.resnets) - 1:
                hidden_states = hidden_states + additional_residuals
            states.append(hidden_states)
        if self.downsamplers is not None:
            hidden_states = self.downsamplers[0](hidden_states)
            states.append(hidden_states)
        if not cross and additional_residuals is not None:
            hidden_states = hidden_states + additional_residuals
            states[-1] = hidden_states
        return hidden_states, tuple(states)


class CrossAttnDownBlock2D(DownBlock2D):
    has_cross_attention = True

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, num_layers: int = 1,
                 transformer_layers_per_block=1, resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default",
                 resnet_act_fn: str = "swish", resnet_groups: int = 32, num_attention_heads: int = 1,
                 cross_attention_dim: int = 1280, output_scale_factor: float = 1.0, downsample_padding: int = 1,
                 add_downsample: bool = True, use_linear_projection: bool = False, only_cross_attention: bool = False,
                 upcast_attention: bool = False):
        super().__init__(in_channels, out_channels, temb_channels, num_layers, resnet_eps, resnet_time_scale_shift,
                         resnet_act_fn, resnet_groups, output_scale_factor, add_downsample, downsample_padding)
        self.num_attention_heads = num_attention_heads
        depth = _per_layer(transformer_layers_per_block, num_layers, "transformer_layers_per_block")
        self.attentions = nn.ModuleList([
            Transformer2DModel(num_attention_heads, out_channels // num_attention_heads, in_channels=out_channels,
                               num_layers=depth[i], cross_attention_dim=cross_attention_dim,
                               norm_num_groups=resnet_groups, use_linear_projection=use_linear_projection,
                               only_cross_attention=only_cross_attention, upcast_attention=upcast_attention)
            for i in range(num_layers)])
        _attentions_first(self)

    def _layer(self, i, hidden_states, temb, encoder_hidden_states, attention_mask, encoder_attention_mask):
        hidden_states = self.resnets[i](hidden_states, temb)
        return self.attentions[i](hidden_states, encoder_hidden_states, attention_mask, encoder_attention_mask)


def _pixel_attention(channels: int, attention_head_dim: int, eps: float, groups: int | None,
                     output_scale_factor: float = 1.0) -> Attention:
    """Self-attention over the pixels of a feature map, with its own GroupNorm and residual (LDM style)."""
    return Attention(channels, heads=channels // attention_head_dim, dim_head=attention_head_dim, bias=True,
                     norm_num_groups=groups, eps=eps, residual_connection=True,
                     rescale_output_factor=output_scale_factor, upcast_softmax=True)


class AttnDownBlock2D(DownBlock2D):
    """`attention_head_dim` here is the size of one head (heads = out_channels // attention_head_dim)."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, num_layers: int = 1,
                 resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish",
                 resnet_groups: int = 32, attention_head_dim: int = 1, output_scale_factor: float = 1.0,
                 downsample_padding: int = 1, add_downsample: bool = True):
        super().__init__(in_channels, out_channels, temb_channels, num_layers, resnet_eps, resnet_time_scale_shift,
                         resnet_act_fn, resnet_groups, output_scale_factor, add_downsample, downsample_padding)
        self.attentions = nn.ModuleList([
            _pixel_attention(out_channels, attention_head_dim, resnet_eps, resnet_groups, output_scale_factor)
            for _ in range(num_layers)])
        _attentions_first(self)

    def _layer(self, i, hidden_states, temb, *unused):
        return self.attentions[i](self.resnets[i](hidden_states, temb))


class UpBlock2D(nn.Module, _FreeU):
    has_cross_attention = False

    def __init__(self, in_channels: int, prev_output_channel: int, out_channels: int, temb_channels: int,
                 resolution_idx: int | None = None, num_layers: int = 1, resnet_eps: float = 1e-6,
                 resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish", resnet_groups: int = 32,
                 output_scale_factor: float = 1.0, add_upsample: bool = True):
        super().__init__()
        self.resolution_idx = resolution_idx
        resnets = []
        for i in range(num_layers):
            skip = in_channels if i == num_layers - 1 else out_channels
            cin = prev_output_channel if i == 0 else out_channels
            resnets.append(_resnet(cin + skip, out_channels, temb_channels, resnet_eps, resnet_act_fn, resnet_groups,
                                   resnet_time_scale_shift, output_scale_factor))
        self.resnets = nn.ModuleList(resnets)
        self.upsamplers = (nn.ModuleList([Upsample2D(out_channels, use_conv=True, out_channels=out_channels)])
                           if add_upsample else None)

    def _layer(self, i, hidden_states, temb, encoder_hidden_states, attention_mask, encoder_attention_mask):
        return self.resnets[i](hidden_states, temb)

    def forward(self, hidden_states: torch.Tensor, res_hidden_states_tuple: tuple[torch.Tensor, ...],
                temb: torch.Tensor | None = None, encoder_hidden_states: torch.Tensor | None = None,
                upsample_size=None, attention_mask: torch.Tensor | None = None,
                encoder_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        skips = list(res_hidden_states_tuple)
        for i in range(len(self.resnets)):
            skip = skips.pop()
            hidden_states, skip = self._freeu(hidden_states, skip)
            hidden_states = torch.cat([hidden_states, skip], dim=1)
            hidden_states = self._layer(i, hidden_states, temb, encoder_hidden_states, attention_mask,
                                        encoder_attention_mask)
        if self.upsamplers is not None:
            hidden_states = self.upsamplers[0](hidden_states, upsample_size)
        return hidden_states


class CrossAttnUpBlock2D(UpBlock2D):
    has_cross_attention = True

    def __init__(self, in_channels: int, out_channels: int, prev_output_channel: int, temb_channels: int,
                 resolution_idx: int | None = None, num_layers: int = 1, transformer_layers_per_block=1,
                 resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish",
                 resnet_groups: int = 32, num_attention_heads: int = 1, cross_attention_dim: int = 1280,
                 output_scale_factor: float = 1.0, add_upsample: bool = True, use_linear_projection: bool = False,
                 only_cross_attention: bool = False, upcast_attention: bool = False):
        super().__init__(in_channels, prev_output_channel, out_channels, temb_channels, resolution_idx, num_layers,
                         resnet_eps, resnet_time_scale_shift, resnet_act_fn, resnet_groups, output_scale_factor,
                         add_upsample)
        self.num_attention_heads = num_attention_heads
        depth = _per_layer(transformer_layers_per_block, num_layers, "transformer_layers_per_block")
        self.attentions = nn.ModuleList([
            Transformer2DModel(num_attention_heads, out_channels // num_attention_heads, in_channels=out_channels,
                               num_layers=depth[i], cross_attention_dim=cross_attention_dim,
                               norm_num_groups=resnet_groups, use_linear_projection=use_linear_projection,
                               only_cross_attention=only_cross_attention, upcast_attention=upcast_attention)
            for i in range(num_layers)])
        _attentions_first(self)

    def _layer(self, i, hidden_states, temb, encoder_hidden_states, attention_mask, encoder_attention_mask):
        hidden_states = self.resnets[i](hidden_states, temb)
        return self.attentions[i](hidden_states, encoder_hidden_states, attention_mask, encoder_attention_mask)


class AttnUpBlock2D(UpBlock2D):
    """`attention_head_dim` is the size of one head. No FreeU here (as in diffusers)."""

    def __init__(self, in_channels: int, prev_output_channel: int, out_channels: int, temb_channels: int,
                 resolution_idx: int | None = None, num_layers: int = 1, resnet_eps: float = 1e-6,
                 resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish", resnet_groups: int = 32,
                 attention_head_dim: int = 1, output_scale_factor: float = 1.0, add_upsample: bool = True):
        super().__init__(in_channels, prev_output_channel, out_channels, temb_channels, resolution_idx, num_layers,
                         resnet_eps, resnet_time_scale_shift, resnet_act_fn, resnet_groups, output_scale_factor,
                         add_upsample)
        self.attentions = nn.ModuleList([
            _pixel_attention(out_channels, attention_head_dim, resnet_eps, resnet_groups, output_scale_factor)
            for _ in range(num_layers)])
        _attentions_first(self)

    def _freeu(self, hidden_states, skip):
        return hidden_states, skip

    def _layer(self, i, hidden_states, temb, *unused):
        return self.attentions[i](self.resnets[i](hidden_states, temb))

    def forward(self, hidden_states, res_hidden_states_tuple, temb=None, encoder_hidden_states=None,
                upsample_size=None, attention_mask=None, encoder_attention_mask=None) -> torch.Tensor:
        # diffusers' AttnUpBlock2D always doubles the size (no `upsample_size`)
        return super().forward(hidden_states, res_hidden_states_tuple, temb)


class UNetMidBlock2DCrossAttn(nn.Module):
    has_cross_attention = True

    def __init__(self, in_channels: int, temb_channels: int, num_layers: int = 1, transformer_layers_per_block=1,
                 resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish",
                 resnet_groups: int = 32, num_attention_heads: int = 1, output_scale_factor: float = 1.0,
                 cross_attention_dim: int = 1280, use_linear_projection: bool = False, upcast_attention: bool = False):
        super().__init__()
        self.num_attention_heads = num_attention_heads
        depth = _per_layer(transformer_layers_per_block, num_layers, "transformer_layers_per_block")
        res = lambda: _resnet(in_channels, in_channels, temb_channels, resnet_eps, resnet_act_fn, resnet_groups,  # noqa: E731
                              resnet_time_scale_shift, output_scale_factor)
        self.attentions = nn.ModuleList([
            Transformer2DModel(num_attention_heads, in_channels // num_attention_heads, in_channels=in_channels,
                               num_layers=depth[i], cross_attention_dim=cross_attention_dim,
                               norm_num_groups=resnet_groups, use_linear_projection=use_linear_projection,
                               upcast_attention=upcast_attention)
            for i in range(num_layers)])
        self.resnets = nn.ModuleList([res() for _ in range(num_layers + 1)])

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                encoder_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        hidden_states = self.resnets[0](hidden_states, temb)
        for attn, resnet in zip(self.attentions, self.resnets[1:]):
            hidden_states = attn(hidden_states, encoder_hidden_states, attention_mask, encoder_attention_mask)
            hidden_states = resnet(hidden_states, temb)
        return hidden_states


class UNetMidBlock2D(nn.Module):
    """Resnet, then (self-attention, resnet) x num_layers; `attention_head_dim` is the size of one head.
    The attention's GroupNorm uses `attn_groups` (default: resnet_groups, none with scale_shift)."""

    has_cross_attention = False

    def __init__(self, in_channels: int, temb_channels: int, num_layers: int = 1, resnet_eps: float = 1e-6,
                 resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish", resnet_groups: int = 32,
                 attn_groups: int | None = None, add_attention: bool = True, attention_head_dim: int = 1,
                 output_scale_factor: float = 1.0):
        super().__init__()
        resnet_groups = resnet_groups if resnet_groups is not None else min(in_channels // 4, 32)
        if attn_groups is None and resnet_time_scale_shift == "default":
            attn_groups = resnet_groups
        res = lambda: _resnet(in_channels, in_channels, temb_channels, resnet_eps, resnet_act_fn, resnet_groups,  # noqa: E731
                              resnet_time_scale_shift, output_scale_factor)
        self.add_attention = add_attention
        self.attentions = nn.ModuleList([
            _pixel_attention(in_channels, attention_head_dim or in_channels, resnet_eps, attn_groups,
                             output_scale_factor) for _ in range(num_layers if add_attention else 0)])
        self.resnets = nn.ModuleList([res() for _ in range(num_layers + 1)])

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        hidden_states = self.resnets[0](hidden_states, temb)
        for i, resnet in enumerate(self.resnets[1:]):
            if self.add_attention:
                hidden_states = self.attentions[i](hidden_states)
            hidden_states = resnet(hidden_states, temb)
        return hidden_states
