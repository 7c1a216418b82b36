"""AutoencoderKL: the KL-regularised VAE of Stable Diffusion (config.json and weight names as diffusers').

encode(x) -> AutoencoderKLOutput(latent_dist=DiagonalGaussianDistribution); decode(z) -> DecoderOutput(sample).
Slicing runs a batch one sample at a time; tiling runs overlapping tiles and blends their seams, so memory
stays bounded for any image size (results then differ slightly from the untiled ones, as in diffusers).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..outputs import BaseOutput
from .attention_processor import AttentionProcessorMixin
from .config import check_type, register_to_config
from .layers import Conv2d
from .modeling import ModelMixin
from .vae_blocks import Decoder, DiagonalGaussianDistribution, Encoder, rename_legacy_attention, tiled_map


@dataclass
class AutoencoderKLOutput(BaseOutput):
    latent_dist: DiagonalGaussianDistribution


@dataclass
class DecoderOutput(BaseOutput):
    sample: torch.Tensor
    commit_loss: torch.Tensor | None = None


def check_image(x: torch.Tensor, channels: int, arg: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != channels:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{arg}: expected a (batch, {channels}, height, width) tensor, got {got}")


def check_autoencoder_config(owner: str, block_out_channels, layers_per_block, norm_num_groups) -> None:
    check_type(owner, "block_out_channels", block_out_channels, (list, tuple))
    check_type(owner, "layers_per_block", layers_per_block, int)
    check_type(owner, "norm_num_groups", norm_num_groups, int)
    if not block_out_channels:
        raise ValueError(f"{owner}: config key 'block_out_channels' must not be empty")
    bad = [c for c in block_out_channels if not isinstance(c, int) or c % norm_num_groups]
    if bad:
        raise ValueError(f"{owner}: block_out_channels {list(block_out_channels)} must be ints divisible by "
                         f"norm_num_groups={norm_num_groups}")


class SlicingTilingMixin:
    """enable/disable_slicing and enable/disable_tiling with diffusers' names and tile-size attributes."""

    use_slicing = False
    use_tiling = False

    def _init_tiling(self, sample_size) -> None:
        size = sample_size[0] if isinstance(sample_size, (list, tuple)) else sample_size
        self.tile_sample_min_size = int(size)
        self.tile_latent_min_size = int(size / 2 ** (len(self.config.block_out_channels) - 1))
        self.tile_overlap_factor = 0.25

    def enable_slicing(self) -> None:
        self.use_slicing = True

    def disable_slicing(self) -> None:
        self.use_slicing = False

    def enable_tiling(self, tile_sample_min_size: int | None = None, tile_latent_min_size: int | None = None,
                      tile_overlap_factor: float | None = None, use_tiling: bool = True) -> None:
        """Tile sizes default to config.sample_size and its latent size; giving only the sample size
        derives the latent one from the downsampling factor."""
        factor = 2 ** (len(self.config.block_out_channels) - 1)
        if tile_sample_min_size is not None:
            if not isinstance(tile_sample_min_size, int) or tile_sample_min_size < factor:
                raise ValueError(f"tile_sample_min_size: expected an int >= {factor}, got {tile_sample_min_size!r}")
            self.tile_sample_min_size = tile_sample_min_size
            if tile_latent_min_size is None:
                tile_latent_min_size = tile_sample_min_size // factor
        if tile_latent_min_size is not None:
            if not isinstance(tile_latent_min_size, int) or tile_latent_min_size < 1:
                raise ValueError(f"tile_latent_min_size: expected a positive int, got {tile_latent_min_size!r}")
            self.tile_latent_min_size = tile_latent_min_size
            if tile_sample_min_size is None:
                self.tile_sample_min_size = tile_latent_min_size * factor
        if tile_overlap_factor is not None:
            if not 0 <= tile_overlap_factor < 1:
                raise ValueError(f"tile_overlap_factor: expected a number in [0, 1), got {tile_overlap_factor!r}")
            self.tile_overlap_factor = float(tile_overlap_factor)
        self.use_tiling = use_tiling

    def disable_tiling(self) -> None:
        self.use_tiling = False

    def _per_sample(self, fn, x: torch.Tensor) -> torch.Tensor:
        if self.use_slicing and x.shape[0] > 1:
            return torch.cat([fn(part) for part in x.split(1)])
        return fn(x)


class AutoencoderKL(SlicingTilingMixin, AttentionProcessorMixin, ModelMixin):
    @register_to_config
    def __init__(self, in_channels: int = 3, out_channels: int = 3, down_block_types=("DownEncoderBlock2D",),
                 up_block_types=("UpDecoderBlock2D",), block_out_channels=(64,), layers_per_block: int = 1,
                 act_fn: str = "silu", latent_channels: int = 4, norm_num_groups: int = 32, sample_size: int = 32,
                 scaling_factor: float = 0.18215, shift_factor: float | None = None, latents_mean=None,
                 latents_std=None, force_upcast: bool = True, use_quant_conv: bool = True,
                 use_post_quant_conv: bool = True, mid_block_add_attention: bool = True):
        super().__init__()
        check_autoencoder_config(type(self).__name__, block_out_channels, layers_per_block, norm_num_groups)
        self.encoder = Encoder(in_channels, latent_channels, down_block_types, block_out_channels, layers_per_block,
                               norm_num_groups, act_fn, double_z=True, mid_block_add_attention=mid_block_add_attention)
        self.decoder = Decoder(latent_channels, out_channels, up_block_types, block_out_channels, layers_per_block,
                               norm_num_groups, act_fn, mid_block_add_attention=mid_block_add_attention)
        self.quant_conv = Conv2d(2 * latent_channels, 2 * latent_channels, 1) if use_quant_conv else None
        self.post_quant_conv = Conv2d(latent_channels, latent_channels, 1) if use_post_quant_conv else None
        self._init_tiling(sample_size)

    def convert_state_dict(self, state):
        return rename_legacy_attention(state)

    # ---- encode ---------------------------------------------------------------------------------------
    def _encode_tile(self, x: torch.Tensor) -> torch.Tensor:
        moments = self.encoder(x)
        return self.quant_conv(moments) if self.quant_conv is not None else moments

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_tiling and max(x.shape[-2:]) > self.tile_sample_min_size:
            return tiled_map(x, self._encode_tile, self.tile_sample_min_size, self.tile_latent_min_size,
                             self.tile_overlap_factor)
        return self._encode_tile(x)

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        check_image(x, self.config.in_channels, "x")
        posterior = DiagonalGaussianDistribution(self._per_sample(self._encode, x))
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def tiled_encode(self, x: torch.Tensor, return_dict: bool = True):
        posterior = DiagonalGaussianDistribution(tiled_map(x, self._encode_tile, self.tile_sample_min_size,
                                                           self.tile_latent_min_size, self.tile_overlap_factor))
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    # ---- decode ---------------------------------------------------------------------------------------
    def _decode_tile(self, z: torch.Tensor) -> torch.Tensor:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.use_tiling and max(z.shape[-2:]) > self.tile_latent_min_size:
            return tiled_map(z, self._decode_tile, self.tile_latent_min_size, self.tile_sample_min_size,
                             self.tile_overlap_factor)
        return self._decode_tile(z)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator=None):
        check_image(z, self.config.latent_channels, "z")
        sample = self._per_sample(self._decode, z)
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    def tiled_decode(self, z: torch.Tensor, return_dict: bool = True):
        sample = tiled_map(z, self._decode_tile, self.tile_latent_min_size, self.tile_sample_min_size,
                           self.tile_overlap_factor)
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    def forward(self, sample: torch.Tensor, sample_posterior: bool = False, return_dict: bool = True,
                generator: torch.Generator | None = None):
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        dec = self.decode(z).sample
        return DecoderOutput(sample=dec) if return_dict else (dec,)

    # ---- attention toggles diffusers exposes on the VAE -------------------------------------------------
    def fuse_qkv_projections(self) -> None:
        for m in self.modules():
            if hasattr(m, "fuse_projections"):
                m.fuse_projections()

    def unfuse_qkv_projections(self) -> None:
        for m in self.modules():
            if hasattr(m, "unfuse_projections"):
                m.unfuse_projections()
