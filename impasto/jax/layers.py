"""flax.linen building blocks shared by the Flax UNet and VAE, with diffusers' Flax parameter names.

Tensors are NHWC inside the models (the models transpose NCHW inputs at their edges). Every layer computes in
`dtype` (float32 or bfloat16); softmax and normalisation statistics run in float32.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def conv(features: int, kernel: int = 3, stride: int = 1, pad: int | None = None, dtype=jnp.float32, name=None):
    """A 2-d convolution with symmetric padding (`kernel // 2` unless given), as torch's Conv2d."""
    pad = kernel // 2 if pad is None else pad
    return nn.Conv(features, kernel_size=(kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                   dtype=dtype, name=name)


def group_norm(groups: int, eps: float, name=None):
    return nn.GroupNorm(num_groups=groups, epsilon=eps, name=name)


def sinusoidal_embedding(timesteps: jnp.ndarray, dim: int, flip_sin_to_cos: bool, freq_shift: float) -> jnp.ndarray:
    """diffusers' `get_timestep_embedding`: (N,) timesteps -> (N, dim) sin/cos features (exponent in float32)."""
    half = dim // 2
    exponent = -math.log(10000) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
    args = timesteps.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
    sin, cos = jnp.sin(args), jnp.cos(args)
    emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class FlaxTimestepEmbedding(nn.Module):
    """linear_1 -> SiLU -> linear_2."""

    time_embed_dim: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, temb):
        temb = nn.Dense(self.time_embed_dim, dtype=self.dtype, name="linear_1")(temb)
        return nn.Dense(self.time_embed_dim, dtype=self.dtype, name="linear_2")(nn.silu(temb))


class FlaxUpsample2D(nn.Module):
    """Nearest x2, then a 3x3 conv."""

    out_channels: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)
        return conv(self.out_channels, dtype=self.dtype, name="conv")(x)


class FlaxDownsample2D(nn.Module):
    """Stride-2 3x3 conv; `padding=0` pads only bottom/right by one (diffusers' VAE encoder)."""

    out_channels: int
    padding: int = 1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        if self.padding == 0:
            x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return conv(self.out_channels, stride=2, pad=self.padding, dtype=self.dtype, name="conv")(x)


class FlaxResnetBlock2D(nn.Module):
    """GroupNorm-SiLU-conv twice, with the time embedding added between, and a 1x1 shortcut when widths differ."""

    in_channels: int
    out_channels: int
    groups: int = 32
    eps: float = 1e-5
    use_temb: bool = True
    output_scale_factor: float = 1.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, temb=None):
        h = nn.silu(group_norm(self.groups, self.eps, "norm1")(x))
        h = conv(self.out_channels, dtype=self.dtype, name="conv1")(h)
        if self.use_temb:
            temb = nn.Dense(self.out_channels, dtype=self.dtype, name="time_emb_proj")(nn.silu(temb))
            h = h + temb[:, None, None, :]
        h = nn.silu(group_norm(self.groups, self.eps, "norm2")(h))
        h = conv(self.out_channels, dtype=self.dtype, name="conv2")(h)
        if self.in_channels != self.out_channels:
            x = conv(self.out_channels, kernel=1, dtype=self.dtype, name="conv_shortcut")(x)
        return (x + h) / self.output_scale_factor


def attend(q, k, v, heads: int) -> jnp.ndarray:
    """Scaled dot-product attention over (B, L, heads * d) projections; softmax in float32."""
    b, lq, inner = q.shape
    d = inner // heads
    q = q.reshape(b, lq, heads, d)
    k = k.reshape(b, k.shape[1], heads, d)
    v = v.reshape(b, v.shape[1], heads, d)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * (d ** -0.5)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, lq, inner)


class FlaxAttention(nn.Module):
    """Multi-head (cross-)attention: to_q, to_k, to_v (no bias) and to_out_0."""

    query_dim: int
    heads: int
    dim_head: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, context=None):
        context = x if context is None else context
        inner = self.heads * self.dim_head
        q = nn.Dense(inner, use_bias=False, dtype=self.dtype, name="to_q")(x)
        k = nn.Dense(inner, use_bias=False, dtype=self.dtype, name="to_k")(context)
        v = nn.Dense(inner, use_bias=False, dtype=self.dtype, name="to_v")(context)
        return nn.Dense(self.query_dim, dtype=self.dtype, name="to_out_0")(attend(q, k, v, self.heads))


class FlaxGEGLU(nn.Module):
    dim: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        h, gate = jnp.split(nn.Dense(self.dim * 8, dtype=self.dtype, name="proj")(x), 2, axis=-1)
        return h * nn.gelu(gate, approximate=False)


class FlaxFeedForward(nn.Module):
    dim: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.dim, dtype=self.dtype, name="net_2")(FlaxGEGLU(self.dim, self.dtype, name="net_0")(x))


class FlaxBasicTransformerBlock(nn.Module):
    """Self-attention, cross-attention, GEGLU feed-forward; pre-LayerNorm residuals."""

    dim: int
    heads: int
    dim_head: int
    only_cross_attention: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, context):
        norm = lambda name: nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name=name)  # noqa: E731
        h = norm("norm1")(x)
        x = x + FlaxAttention(self.dim, self.heads, self.dim_head, self.dtype, name="attn1")(
            h, context if self.only_cross_attention else None)
        x = x + FlaxAttention(self.dim, self.heads, self.dim_head, self.dtype, name="attn2")(norm("norm2")(x), context)
        return x + FlaxFeedForward(self.dim, self.dtype, name="ff")(norm("norm3")(x))


class FlaxTransformer2DModel(nn.Module):
    """GroupNorm, proj_in (1x1 conv or linear), transformer blocks, proj_out, residual."""

    in_channels: int
    heads: int
    dim_head: int
    depth: int = 1
    use_linear_projection: bool = False
    only_cross_attention: bool = False
    groups: int = 32
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, context):
        b, h, w, c = x.shape
        inner = self.heads * self.dim_head
        residual = x
        x = group_norm(self.groups, 1e-6, "norm")(x)
        proj = (lambda name: nn.Dense(inner, dtype=self.dtype, name=name)) if self.use_linear_projection else \
            (lambda name: conv(inner, kernel=1, dtype=self.dtype, name=name))
        if self.use_linear_projection:
            x = proj("proj_in")(x.reshape(b, h * w, c))
        else:
            x = proj("proj_in")(x).reshape(b, h * w, inner)
        for i in range(self.depth):
            x = FlaxBasicTransformerBlock(inner, self.heads, self.dim_head, self.only_cross_attention, self.dtype,
                                          name=f"transformer_blocks_{i}")(x, context)
        if self.use_linear_projection:
            x = proj("proj_out")(x).reshape(b, h, w, inner)
        else:
            x = proj("proj_out")(x.reshape(b, h, w, inner))
        return x + residual
