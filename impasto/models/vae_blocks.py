"""Building blocks of the autoencoders (AutoencoderKL, VQModel), with diffusers' parameter names.

Encoder: conv_in -> down blocks (resnets [+ attentions], stride-2 conv) -> mid block -> norm/act/conv_out.
Decoder: the mirror image, with one extra resnet per up block and nearest-upsample + conv.
Also: the diagonal Gaussian posterior, the vector quantizer, the tiled apply-and-blend used by
tiled encode/decode, and the rename of old attention weight names.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from ..core.noise import randn_tensor
from .attention import Attention
from .layers import Conv2d, Embedding
from .resnet import Downsample2D, ResnetBlock2D, Upsample2D


def vae_attention(channels: int, head_dim: int, groups: int | None, eps: float, rescale: float = 1.0) -> Attention:
    """The spatial self-attention of the VAE / UNet2DModel blocks (group norm inside, residual added)."""
    return Attention(channels, heads=channels // head_dim, dim_head=head_dim, bias=True, norm_num_groups=groups,
                     eps=eps, residual_connection=True, rescale_output_factor=rescale, upcast_softmax=True)


class UNetMidBlock2D(nn.Module):
    """resnet, then (attention, resnet) x num_layers; `add_attention=False` keeps only the resnets."""

    def __init__(self, in_channels: int, temb_channels: int | None, dropout: float = 0.0, num_layers: int = 1,
                 resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish",
                 resnet_groups: int | None = 32, attn_groups: int | None = None, resnet_pre_norm: bool = True,
                 add_attention: bool = True, attention_head_dim: int | None = 1, output_scale_factor: float = 1.0):
        super().__init__()
        if resnet_time_scale_shift == "spatial":
            raise ValueError("resnet_time_scale_shift: 'spatial' (MoVQ spatial norm) is not supported")
        groups = resnet_groups if resnet_groups is not None else min(in_channels // 4, 32)
        if attn_groups is None:
            attn_groups = groups if resnet_time_scale_shift == "default" else None
        head_dim = attention_head_dim or in_channels

        def resnet():
            return ResnetBlock2D(in_channels=in_channels, out_channels=in_channels, temb_channels=temb_channels,
                                 eps=resnet_eps, groups=groups, dropout=dropout, non_linearity=resnet_act_fn,
                                 time_embedding_norm=resnet_time_scale_shift, output_scale_factor=output_scale_factor)

        self.add_attention = add_attention
        self.attentions = nn.ModuleList(
            [vae_attention(in_channels, head_dim, attn_groups, resnet_eps, output_scale_factor) if add_attention
             else None for _ in range(num_layers)])
        self.resnets = nn.ModuleList([resnet() for _ in range(num_layers + 1)])

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        hidden_states = self.resnets[0](hidden_states, temb)
        for attn, resnet in zip(self.attentions, self.resnets[1:]):
            if attn is not None:
                hidden_states = attn(hidden_states)
            hidden_states = resnet(hidden_states, temb)
        return hidden_states


class _ResamplingBlock(nn.Module):
    """`num_layers` resnets (each optionally followed by an attention), then an optional resampler."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, eps: float, act_fn: str,
                 groups: int, attention: bool):
        super().__init__()
        self.attentions = nn.ModuleList([vae_attention(out_channels, out_channels, groups, eps)
                                         for _ in range(num_layers)]) if attention else None
        self.resnets = nn.ModuleList([
            ResnetBlock2D(in_channels=in_channels if i == 0 else out_channels, out_channels=out_channels,
                          temb_channels=None, eps=eps, groups=groups, non_linearity=act_fn)
            for i in range(num_layers)])

    def _layers(self, hidden_states):
        for i, resnet in enumerate(self.resnets):
            hidden_states = resnet(hidden_states, None)
            if self.attentions is not None:
                hidden_states = self.attentions[i](hidden_states)
        return hidden_states


class DownEncoderBlock2D(_ResamplingBlock):
    def __init__(self, in_channels, out_channels, num_layers=1, resnet_eps=1e-6, resnet_act_fn="swish",
                 resnet_groups=32, add_downsample=True, downsample_padding=1, attention=False):
        super().__init__(in_channels, out_channels, num_layers, resnet_eps, resnet_act_fn, resnet_groups, attention)
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels, use_conv=True, out_channels=out_channels,
                                                        padding=downsample_padding, name="op")]) \
            if add_downsample else None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self._layers(hidden_states)
        for down in self.downsamplers or ():
            hidden_states = down(hidden_states)
        return hidden_states


class UpDecoderBlock2D(_ResamplingBlock):
    def __init__(self, in_channels, out_channels, num_layers=1, resnet_eps=1e-6, resnet_act_fn="swish",
                 resnet_groups=32, add_upsample=True, attention=False):
        super().__init__(in_channels, out_channels, num_layers, resnet_eps, resnet_act_fn, resnet_groups, attention)
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels, use_conv=True, out_channels=out_channels)]) \
            if add_upsample else None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self._layers(hidden_states)
        for up in self.upsamplers or ():
            hidden_states = up(hidden_states)
        return hidden_states


_DOWN_TYPES = {"DownEncoderBlock2D": False, "AttnDownEncoderBlock2D": True}
_UP_TYPES = {"UpDecoderBlock2D": False, "AttnUpDecoderBlock2D": True}


def _block_kind(name: str, known: dict, arg: str) -> bool:
    name = name[7:] if name.startswith("UNetRes") else name
    if name not in known:
        raise ValueError(f"{arg}: expected entries among {sorted(known)}, got {name!r}")
    return known[name]


def _check_blocks(block_types, block_out_channels, arg: str):
    if len(block_types) != len(block_out_channels):
        raise ValueError(f"{arg}: expected one entry per block_out_channels ({len(block_out_channels)}), "
                         f"got {len(block_types)}")


class Encoder(nn.Module):
    """Image -> latent moments (2 * out_channels channels with `double_z`, for the KL autoencoder)."""

    def __init__(self, in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                 block_out_channels=(64,), layers_per_block=2, norm_num_groups=32, act_fn="silu", double_z=True,
                 mid_block_add_attention=True):
        super().__init__()
        _check_blocks(down_block_types, block_out_channels, "down_block_types")
        self.conv_in = Conv2d(in_channels, block_out_channels[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        prev = block_out_channels[0]
        for i, (kind, ch) in enumerate(zip(down_block_types, block_out_channels)):
            self.down_blocks.append(DownEncoderBlock2D(
                prev, ch, layers_per_block, 1e-6, act_fn, norm_num_groups,
                add_downsample=i < len(block_out_channels) - 1, downsample_padding=0,
                attention=_block_kind(kind, _DOWN_TYPES, "down_block_types")))
            prev = ch
        top = block_out_channels[-1]
        self.mid_block = UNetMidBlock2D(top, None, resnet_eps=1e-6, resnet_act_fn=act_fn, resnet_groups=norm_num_groups,
                                        attention_head_dim=top, add_attention=mid_block_add_attention)
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, top, eps=1e-6)
        self.conv_act = nn.SiLU()
        self.conv_out = Conv2d(top, 2 * out_channels if double_z else out_channels, 3, padding=1)

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        sample = self.conv_in(sample)
        for block in self.down_blocks:
            sample = block(sample)
        sample = self.mid_block(sample)
        return self.conv_out(self.conv_act(self.conv_norm_out(sample)))


class Decoder(nn.Module):
    """Latent -> image."""

    def __init__(self, in_channels=3, out_channels=3, up_block_types=("UpDecoderBlock2D",), block_out_channels=(64,),
                 layers_per_block=2, norm_num_groups=32, act_fn="silu", norm_type="group",
                 mid_block_add_attention=True):
        super().__init__()
        if norm_type != "group":
            raise ValueError(f"norm_type: only 'group' is supported, got {norm_type!r}")
        _check_blocks(up_block_types, block_out_channels, "up_block_types")
        top = block_out_channels[-1]
        self.conv_in = Conv2d(in_channels, top, 3, padding=1)
        self.up_blocks = nn.ModuleList()  # registered before mid_block: diffusers' state-dict key order
        self.mid_block = UNetMidBlock2D(top, None, resnet_eps=1e-6, resnet_act_fn=act_fn, resnet_groups=norm_num_groups,
                                        attention_head_dim=top, add_attention=mid_block_add_attention)
        channels = list(reversed(block_out_channels))
        prev = channels[0]
        for i, (kind, ch) in enumerate(zip(up_block_types, channels)):
            self.up_blocks.append(UpDecoderBlock2D(
                prev, ch, layers_per_block + 1, 1e-6, act_fn, norm_num_groups,
                add_upsample=i < len(channels) - 1, attention=_block_kind(kind, _UP_TYPES, "up_block_types")))
            prev = ch
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, block_out_channels[0], eps=1e-6)
        self.conv_act = nn.SiLU()
        self.conv_out = Conv2d(block_out_channels[0], out_channels, 3, padding=1)

    def forward(self, sample: torch.Tensor, latent_embeds: torch.Tensor | None = None) -> torch.Tensor:
        sample = self.mid_block(self.conv_in(sample))
        for block in self.up_blocks:
            sample = block(sample)
        return self.conv_out(self.conv_act(self.conv_norm_out(sample)))


class DiagonalGaussianDistribution:
    """The encoder's posterior: `parameters` holds mean and log-variance stacked on dim 1."""

    def __init__(self, parameters: torch.Tensor, deterministic: bool = False):
        self.parameters = parameters
        self.deterministic = deterministic
        self.mean, logvar = parameters.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        if deterministic:
            self.std = self.var = torch.zeros_like(self.mean)
        else:
            self.std = torch.exp(0.5 * self.logvar)
            self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | list | None = None) -> torch.Tensor:
        noise = randn_tensor(self.mean.shape, generator, self.parameters.device, self.parameters.dtype)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self, other: "DiagonalGaussianDistribution | None" = None) -> torch.Tensor:
        if self.deterministic:
            return torch.Tensor([0.0])
        if other is None:
            terms = self.mean.pow(2) + self.var - 1.0 - self.logvar
        else:
            terms = (self.mean - other.mean).pow(2) / other.var + self.var / other.var - 1.0 - self.logvar \
                + other.logvar
        return 0.5 * terms.sum(dim=[1, 2, 3])

    def nll(self, sample: torch.Tensor, dims=(1, 2, 3)) -> torch.Tensor:
        if self.deterministic:
            return torch.Tensor([0.0])
        log_two_pi = 1.8378770664093453
        return 0.5 * (log_two_pi + self.logvar + (sample - self.mean).pow(2) / self.var).sum(dim=list(dims))


class VectorQuantizer(nn.Module):
    """Nearest-codebook-entry quantisation (straight-through). `legacy` swaps where `beta` weighs the loss."""

    def __init__(self, n_e: int, vq_embed_dim: int, beta: float, legacy: bool = True):
        super().__init__()
        self.n_e, self.vq_embed_dim, self.beta, self.legacy = n_e, vq_embed_dim, beta, legacy
        self.embedding = Embedding(n_e, vq_embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_e, 1.0 / n_e)  # the training init (no-op on meta)

    def forward(self, z: torch.Tensor):
        z = z.permute(0, 2, 3, 1).contiguous()
        flat = z.view(-1, self.vq_embed_dim)
        indices = torch.cdist(flat, self.embedding.weight).argmin(dim=1)
        z_q = self.embedding(indices).view(z.shape)
        to_code = torch.mean((z_q.detach() - z) ** 2)
        to_input = torch.mean((z_q - z.detach()) ** 2)
        loss = to_code + self.beta * to_input if self.legacy else self.beta * to_code + to_input
        z_q = z + (z_q - z).detach()
        return z_q.permute(0, 3, 1, 2).contiguous(), loss, (None, None, indices)

    def get_codebook_entry(self, indices: torch.Tensor, shape=None) -> torch.Tensor:
        z_q = self.embedding(indices)
        if shape is not None:
            z_q = z_q.view(shape).permute(0, 3, 1, 2).contiguous()
        return z_q


def tiled_map(x: torch.Tensor, fn, tile: int, out_tile: int, overlap: float) -> torch.Tensor:
    """Apply `fn` to overlapping `tile`-sized squares of a 4-D tensor and stitch the `out_tile`-sized results.

    Tiles start every `tile * (1 - overlap)` pixels; each output tile is blended linearly with its already
    stitched upper and left neighbours over `out_tile * overlap` rows/columns, then cropped to the stride.
    Only the previous row of full output tiles is kept, so memory grows with one row, not the whole grid.
    """
    stride = int(tile * (1 - overlap))
    blend = int(out_tile * overlap)
    keep = out_tile - blend
    if stride <= 0 or keep <= 0:
        raise ValueError(f"tile_overlap_factor: leaves no stride for tiles of {tile} (got {overlap})")
    stitched, above = [], []
    for i in range(0, x.shape[2], stride):
        row = []
        for j in range(0, x.shape[3], stride):
            out = fn(x[:, :, i:i + tile, j:j + tile])
            if above:
                _blend(above[len(row)], out, blend, dim=2)
            if row:
                _blend(row[-1], out, blend, dim=3)
            row.append(out)
        stitched.append(torch.cat([t[:, :, :keep, :keep] for t in row], dim=3))
        above = row
    return torch.cat(stitched, dim=2)


def _blend(prev: torch.Tensor, cur: torch.Tensor, extent: int, dim: int) -> None:
    """In place: fade the first `extent` lines of `cur` (along `dim`) in from the last lines of `prev`."""
    extent = min(prev.shape[dim], cur.shape[dim], extent)
    if extent <= 0:
        return
    w = torch.arange(extent, dtype=torch.float64) / extent
    shape = [1, 1, 1, 1]
    shape[dim] = extent
    w_cur = w.to(cur.device, cur.dtype).view(shape)
    w_prev = (1 - w).to(cur.device, cur.dtype).view(shape)
    head = cur.narrow(dim, 0, extent)
    head.copy_(prev.narrow(dim, prev.shape[dim] - extent, extent) * w_prev + head * w_cur)


_LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_LEGACY_KEY = re.compile(r"^(.*attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$")
_PROJ_WEIGHT = re.compile(r"attentions\.\d+\.(to_q|to_k|to_v|to_out\.0)\.weight$")


def rename_legacy_attention(state: dict) -> dict:
    """Old diffusers names of the VAE attention (query/key/value/proj_attn) -> to_q/to_k/to_v/to_out.0,
    and 1x1-conv projection weights (C, C, 1, 1) -> linear weights (C, C)."""
    out = {}
    for key, value in state.items():
        m = _LEGACY_KEY.match(key)
        if m:
            key = f"{m.group(1)}.{_LEGACY_ATTENTION[m.group(2)]}.{m.group(3)}"
        if value.ndim == 4 and value.shape[2:] == (1, 1) and _PROJ_WEIGHT.search(key):
            value = value[:, :, 0, 0]
        out[key] = value
    return out
