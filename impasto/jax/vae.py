"""FlaxAutoencoderKL: the Stable Diffusion VAE in flax.linen with diffusers' Flax param names.

As diffusers' Flax VAE: `encode` takes NCHW images and returns a latent distribution over NHWC latents;
`decode` takes NCHW (or NHWC) latents and returns NCHW images; use `apply(..., method=model.encode)`.
"""
from __future__ import annotations

from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp

from ..outputs import BaseOutput
from .layers import FlaxDownsample2D, FlaxResnetBlock2D, FlaxUpsample2D, attend, conv, group_norm
from .modeling import FlaxModelMixin

VAE_EPS = 1e-6


@dataclass
class FlaxDecoderOutput(BaseOutput):
    sample: jnp.ndarray


@dataclass
class FlaxAutoencoderKLOutput(BaseOutput):
    latent_dist: "FlaxDiagonalGaussianDistribution"


class FlaxDiagonalGaussianDistribution:
    """Mean and log-variance (clipped to [-30, 20]) split from the encoder's moments along the last axis."""

    def __init__(self, moments, deterministic: bool = False):
        self.mean, logvar = jnp.split(moments, 2, axis=-1)
        self.logvar = jnp.clip(logvar, -30.0, 20.0)
        self.deterministic = deterministic
        self.std = jnp.zeros_like(self.mean) if deterministic else jnp.exp(0.5 * self.logvar)
        self.var = self.std ** 2

    def sample(self, key):
        return self.mean + self.std * jax.random.normal(key, self.mean.shape, dtype=self.mean.dtype)

    def mode(self):
        return self.mean


class FlaxAttentionBlock(nn.Module):
    """Single-head self-attention over all pixels: group_norm, query/key/value, proj_attn, residual."""

    channels: int
    groups: int = 32
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        y = group_norm(self.groups, VAE_EPS, "group_norm")(x).reshape(b, h * w, c)
        dense = lambda name: nn.Dense(c, dtype=self.dtype, name=name)  # noqa: E731
        y = attend(dense("query")(y), dense("key")(y), dense("value")(y), heads=1)
        return dense("proj_attn")(y).reshape(b, h, w, c) + x


class FlaxUNetMidBlock2D(nn.Module):
    channels: int
    groups: int = 32
    add_attention: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = self.channels
        x = FlaxResnetBlock2D(c, c, self.groups, VAE_EPS, use_temb=False, dtype=self.dtype, name="resnets_0")(x)
        if self.add_attention:
            x = FlaxAttentionBlock(c, self.groups, self.dtype, name="attentions_0")(x)
        return FlaxResnetBlock2D(c, c, self.groups, VAE_EPS, use_temb=False, dtype=self.dtype, name="resnets_1")(x)


class FlaxVaeBlock(nn.Module):
    """DownEncoderBlock2D (resnets, then a stride-2 downsampler) or UpDecoderBlock2D (resnets, then x2 up)."""

    in_channels: int
    out_channels: int
    num_layers: int
    groups: int
    resample: str | None  # "down", "up" or None
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        for j in range(self.num_layers):
            cin = self.in_channels if j == 0 else self.out_channels
            x = FlaxResnetBlock2D(cin, self.out_channels, self.groups, VAE_EPS, use_temb=False, dtype=self.dtype,
                                  name=f"resnets_{j}")(x)
        if self.resample == "down":
            x = FlaxDownsample2D(self.out_channels, padding=0, dtype=self.dtype, name="downsamplers_0")(x)
        elif self.resample == "up":
            x = FlaxUpsample2D(self.out_channels, self.dtype, name="upsamplers_0")(x)
        return x


class FlaxEncoder(nn.Module):
    out_channels: int
    block_out_channels: tuple
    layers_per_block: int
    groups: int
    add_attention: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        ch = self.block_out_channels
        x = conv(ch[0], dtype=self.dtype, name="conv_in")(x)
        for i, c in enumerate(ch):
            x = FlaxVaeBlock(ch[max(i - 1, 0)], c, self.layers_per_block, self.groups,
                             "down" if i < len(ch) - 1 else None, self.dtype, name=f"down_blocks_{i}")(x)
        x = FlaxUNetMidBlock2D(ch[-1], self.groups, self.add_attention, self.dtype, name="mid_block")(x)
        x = nn.silu(group_norm(self.groups, VAE_EPS, "conv_norm_out")(x))
        return conv(self.out_channels, dtype=self.dtype, name="conv_out")(x)


class FlaxDecoder(nn.Module):
    out_channels: int
    block_out_channels: tuple
    layers_per_block: int
    groups: int
    add_attention: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, z):
        rev = self.block_out_channels[::-1]
        x = conv(rev[0], dtype=self.dtype, name="conv_in")(z)
        x = FlaxUNetMidBlock2D(rev[0], self.groups, self.add_attention, self.dtype, name="mid_block")(x)
        for i, c in enumerate(rev):
            x = FlaxVaeBlock(rev[max(i - 1, 0)], c, self.layers_per_block + 1, self.groups,
                             "up" if i < len(rev) - 1 else None, self.dtype, name=f"up_blocks_{i}")(x)
        x = nn.silu(group_norm(self.groups, VAE_EPS, "conv_norm_out")(x))
        return conv(self.out_channels, dtype=self.dtype, name="conv_out")(x)


class FlaxAutoencoderKL(nn.Module, FlaxModelMixin):
    """The KL autoencoder (diffusers' AutoencoderKL config keys)."""

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple = ("DownEncoderBlock2D",)
    up_block_types: tuple = ("UpDecoderBlock2D",)
    block_out_channels: tuple = (64,)
    layers_per_block: int = 1
    act_fn: str = "silu"
    latent_channels: int = 4
    norm_num_groups: int = 32
    sample_size: int = 32
    scaling_factor: float = 0.18215
    shift_factor: float | None = None
    force_upcast: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True
    dtype: jnp.dtype = jnp.float32

    torch_class = "impasto.models.autoencoder_kl:AutoencoderKL"
    unsupported = {"act_fn": ("silu",), "latents_mean": (None,), "latents_std": (None,), "shift_factor": (None,)}

    def setup(self):
        n = len(self.block_out_channels)
        if tuple(self.down_block_types) != ("DownEncoderBlock2D",) * n or \
                tuple(self.up_block_types) != ("UpDecoderBlock2D",) * n:
            raise ValueError(f"FlaxAutoencoderKL: config down/up_block_types must be {n} DownEncoderBlock2D / "
                             f"UpDecoderBlock2D, got {self.down_block_types} / {self.up_block_types}")
        common = dict(block_out_channels=tuple(self.block_out_channels), layers_per_block=self.layers_per_block,
                      groups=self.norm_num_groups, add_attention=self.mid_block_add_attention, dtype=self.dtype)
        self.encoder = FlaxEncoder(2 * self.latent_channels, **common)
        self.decoder = FlaxDecoder(self.out_channels, **common)
        if self.use_quant_conv:
            self.quant_conv = conv(2 * self.latent_channels, kernel=1, dtype=self.dtype)
        if self.use_post_quant_conv:
            self.post_quant_conv = conv(self.latent_channels, kernel=1, dtype=self.dtype)

    def dummy_inputs(self) -> tuple:
        size = 2 ** len(self.block_out_channels)
        return (jnp.zeros((1, self.in_channels, size, size), jnp.float32),)

    def encode(self, sample, deterministic: bool = True, return_dict: bool = True):
        x = jnp.transpose(sample, (0, 2, 3, 1)).astype(self.dtype)
        moments = self.encoder(x)
        if self.use_quant_conv:
            moments = self.quant_conv(moments)
        dist = FlaxDiagonalGaussianDistribution(moments)
        return FlaxAutoencoderKLOutput(latent_dist=dist) if return_dict else (dist,)

    def decode(self, latents, deterministic: bool = True, return_dict: bool = True):
        if latents.shape[-1] != self.latent_channels:
            latents = jnp.transpose(latents, (0, 2, 3, 1))
        z = latents.astype(self.dtype)
        if self.use_post_quant_conv:
            z = self.post_quant_conv(z)
        image = jnp.transpose(self.decoder(z), (0, 3, 1, 2))
        return FlaxDecoderOutput(sample=image) if return_dict else (image,)

    def __call__(self, sample, sample_posterior: bool = False, deterministic: bool = True, return_dict: bool = True,
                 rng=None):
        dist = self.encode(sample).latent_dist
        if sample_posterior:
            if rng is None:
                raise ValueError("rng: sample_posterior=True needs a jax PRNG key")
            z = dist.sample(rng)
        else:
            z = dist.mode()
        return self.decode(z, return_dict=return_dict)

    def flax_key(self, torch_stem: str) -> str:
        key = super().flax_key(torch_stem)
        for old, new in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out_0", "proj_attn")):
            if key.endswith("." + old):
                return key[: -len(old)] + new
        return key
