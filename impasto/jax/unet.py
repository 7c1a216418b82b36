"""FlaxUNet2DConditionModel: the Stable Diffusion 1.x/2.x UNet in flax.linen with diffusers' Flax param names.

Config keys are those of diffusers' UNet2DConditionModel (config.json); values beyond SD 1.x/2.x (class or
addition embeddings, LCM's time_cond_proj_dim, other time embeddings or block types) raise ValueError.
`attention_head_dim` is, as in diffusers, the number of heads.
"""
from __future__ import annotations

from dataclasses import dataclass

import flax.linen as nn
import jax.numpy as jnp

from ..outputs import BaseOutput
from .layers import (FlaxDownsample2D, FlaxResnetBlock2D, FlaxTimestepEmbedding, FlaxTransformer2DModel,
                     FlaxUpsample2D, conv, group_norm, sinusoidal_embedding)
from .modeling import FlaxModelMixin

DOWN_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D")


@dataclass
class FlaxUNet2DConditionOutput(BaseOutput):
    sample: jnp.ndarray


class FlaxDownBlock2D(nn.Module):
    """Resnets (each followed by a transformer when `attention`) and a stride-2 downsampler."""

    in_channels: int
    out_channels: int
    num_layers: int
    add_downsample: bool
    attention: bool = False
    heads: int = 8
    depth: int = 1
    use_linear_projection: bool = False
    only_cross_attention: bool = False
    groups: int = 32
    eps: float = 1e-5
    downsample_padding: int = 1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, temb, context=None):
        states = ()
        for i in range(self.num_layers):
            cin = self.in_channels if i == 0 else self.out_channels
            x = FlaxResnetBlock2D(cin, self.out_channels, self.groups, self.eps, dtype=self.dtype,
                                  name=f"resnets_{i}")(x, temb)
            if self.attention:
                x = FlaxTransformer2DModel(self.out_channels, self.heads, self.out_channels // self.heads, self.depth,
                                           self.use_linear_projection, self.only_cross_attention, self.groups,
                                           self.dtype, name=f"attentions_{i}")(x, context)
            states += (x,)
        if self.add_downsample:
            x = FlaxDownsample2D(self.out_channels, self.downsample_padding, self.dtype, name="downsamplers_0")(x)
            states += (x,)
        return x, states


class FlaxUpBlock2D(nn.Module):
    """Resnets over [x, skip] concatenations (each followed by a transformer when `attention`), then x2 up."""

    in_channels: int
    out_channels: int
    prev_output_channel: int
    num_layers: int
    add_upsample: bool
    attention: bool = False
    heads: int = 8
    depth: int = 1
    use_linear_projection: bool = False
    only_cross_attention: bool = False
    groups: int = 32
    eps: float = 1e-5
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, skips, temb, context=None):
        for i in range(self.num_layers):
            skip_channels = self.in_channels if i == self.num_layers - 1 else self.out_channels
            cin = self.prev_output_channel if i == 0 else self.out_channels
            x = jnp.concatenate([x, skips[-1 - i]], axis=-1)
            x = FlaxResnetBlock2D(cin + skip_channels, self.out_channels, self.groups, self.eps, dtype=self.dtype,
                                  name=f"resnets_{i}")(x, temb)
            if self.attention:
                x = FlaxTransformer2DModel(self.out_channels, self.heads, self.out_channels // self.heads, self.depth,
                                           self.use_linear_projection, self.only_cross_attention, self.groups,
                                           self.dtype, name=f"attentions_{i}")(x, context)
        if self.add_upsample:
            x = FlaxUpsample2D(self.out_channels, self.dtype, name="upsamplers_0")(x)
        return x


class FlaxUNetMidBlock2DCrossAttn(nn.Module):
    channels: int
    heads: int
    depth: int = 1
    use_linear_projection: bool = False
    groups: int = 32
    eps: float = 1e-5
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, temb, context):
        c = self.channels
        x = FlaxResnetBlock2D(c, c, self.groups, self.eps, dtype=self.dtype, name="resnets_0")(x, temb)
        x = FlaxTransformer2DModel(c, self.heads, c // self.heads, self.depth, self.use_linear_projection, False,
                                   self.groups, self.dtype, name="attentions_0")(x, context)
        return FlaxResnetBlock2D(c, c, self.groups, self.eps, dtype=self.dtype, name="resnets_1")(x, temb)


def _per_block(value, n: int, key: str) -> tuple:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"FlaxUNet2DConditionModel: config {key} has {len(value)} values for {n} blocks")
        return tuple(value)
    return (value,) * n


class FlaxUNet2DConditionModel(nn.Module, FlaxModelMixin):
    """The conditional UNet: `apply({"params": p}, sample (B, C, H, W), timesteps, encoder_hidden_states)`."""

    sample_size: int | tuple = 64
    in_channels: int = 4
    out_channels: int = 4
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    down_block_types: tuple = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
    mid_block_type: str | None = "UNetMidBlock2DCrossAttn"
    up_block_types: tuple = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
    only_cross_attention: bool | tuple = False
    block_out_channels: tuple = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    downsample_padding: int = 1
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int = 1280
    transformer_layers_per_block: int | tuple = 1
    attention_head_dim: int | tuple = 8
    num_attention_heads: int | tuple | None = None
    use_linear_projection: bool = False
    upcast_attention: bool = False
    dtype: jnp.dtype = jnp.float32

    torch_class = "impasto.models.unet_2d_condition:UNet2DConditionModel"
    unsupported = {
        "center_input_sample": (False,), "class_embed_type": (None,), "addition_embed_type": (None,),
        "num_class_embeds": (None,), "encoder_hid_dim_type": (None,), "encoder_hid_dim": (None,),
        "time_cond_proj_dim": (None,), "time_embedding_type": ("positional",), "time_embedding_dim": (None,),
        "time_embedding_act_fn": (None,), "timestep_post_act": (None,), "resnet_time_scale_shift": ("default",),
        "resnet_skip_time_act": (False,), "resnet_out_scale_factor": (1.0, 1), "act_fn": ("silu",),
        "conv_in_kernel": (3,), "conv_out_kernel": (3,), "dual_cross_attention": (False,),
        "mid_block_type": ("UNetMidBlock2DCrossAttn",), "mid_block_scale_factor": (1, 1.0),
        "reverse_transformer_layers_per_block": (None,), "mid_block_only_cross_attention": (None, False),
        "cross_attention_norm": (None,), "attention_type": ("default",), "addition_embed_type_num_heads": (64,),
        "class_embeddings_concat": (False,), "projection_class_embeddings_input_dim": (None,),
    }

    def dummy_inputs(self) -> tuple:
        size = self.sample_size if isinstance(self.sample_size, int) else self.sample_size[0]
        size = min(size, 2 ** len(self.block_out_channels))
        return (jnp.zeros((1, self.in_channels, size, size), jnp.float32), jnp.ones((1,), jnp.float32),
                jnp.zeros((1, 1, self.cross_attention_dim), jnp.float32))

    @nn.compact
    def __call__(self, sample, timesteps, encoder_hidden_states, return_dict: bool = True):
        n = len(self.block_out_channels)
        for key, types, allowed in (("down_block_types", self.down_block_types, DOWN_TYPES),
                                    ("up_block_types", self.up_block_types, UP_TYPES)):
            if len(types) != n or any(t not in allowed for t in types):
                raise ValueError(f"FlaxUNet2DConditionModel: config {key}={types!r}: expected {n} of {allowed}")
        heads = _per_block(self.num_attention_heads or self.attention_head_dim, n, "attention_head_dim")
        depth = _per_block(self.transformer_layers_per_block, n, "transformer_layers_per_block")
        cross_only = _per_block(self.only_cross_attention, n, "only_cross_attention")
        channels = self.block_out_channels
        common = dict(groups=self.norm_num_groups, eps=self.norm_eps, dtype=self.dtype,
                      use_linear_projection=self.use_linear_projection)

        timesteps = jnp.asarray(timesteps, dtype=jnp.float32)
        timesteps = jnp.broadcast_to(timesteps.reshape(-1), (sample.shape[0],))
        temb = sinusoidal_embedding(timesteps, channels[0], self.flip_sin_to_cos, self.freq_shift).astype(self.dtype)
        temb = FlaxTimestepEmbedding(channels[0] * 4, self.dtype, name="time_embedding")(temb)
        context = encoder_hidden_states.astype(self.dtype)

        x = jnp.transpose(sample, (0, 2, 3, 1)).astype(self.dtype)
        x = conv(channels[0], dtype=self.dtype, name="conv_in")(x)
        skips = (x,)
        for i, kind in enumerate(self.down_block_types):
            block = FlaxDownBlock2D(channels[max(i - 1, 0)], channels[i], self.layers_per_block, i < n - 1,
                                    attention=kind == "CrossAttnDownBlock2D", heads=heads[i], depth=depth[i],
                                    only_cross_attention=cross_only[i], downsample_padding=self.downsample_padding,
                                    name=f"down_blocks_{i}", **common)
            x, states = block(x, temb, context)
            skips += states
        mid = FlaxUNetMidBlock2DCrossAttn(channels[-1], heads[-1], depth[-1], name="mid_block", **common)
        x = mid(x, temb, context)
        rev = channels[::-1]
        for i, kind in enumerate(self.up_block_types):
            take = self.layers_per_block + 1
            block_skips, skips = skips[-take:], skips[:-take]
            block = FlaxUpBlock2D(rev[min(i + 1, n - 1)], rev[i], rev[max(i - 1, 0)], take, i < n - 1,
                                  attention=kind == "CrossAttnUpBlock2D", heads=heads[::-1][i], depth=depth[::-1][i],
                                  only_cross_attention=cross_only[::-1][i], name=f"up_blocks_{i}", **common)
            x = block(x, block_skips, temb, context)
        x = nn.silu(group_norm(self.norm_num_groups, self.norm_eps, "conv_norm_out")(x))
        x = conv(self.out_channels, dtype=self.dtype, name="conv_out")(x)
        x = jnp.transpose(x, (0, 3, 1, 2))
        return FlaxUNet2DConditionOutput(sample=x) if return_dict else (x,)
