"""Embeddings of noise levels and scalar conditions for the UNets (diffusers' parameter names).

    timestep_embedding     sinusoidal features of a 1-d tensor of timesteps (flip_sin_to_cos, freq_shift)
    Timesteps              that function as a parameter-free module (`time_proj`, SDXL's `add_time_proj`)
    TimestepEmbedding      linear_1 -> act -> linear_2 (+ `cond_proj` for LCM's `time_cond_proj_dim`)
    guidance_scale_embedding  the w-embedding LCM pipelines feed as `timestep_cond`
    text_time_embedding    SDXL's added condition: pooled text embeds ++ sinusoidal(time_ids)
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Linear
from .resnet import get_activation


def timestep_embedding(timesteps: torch.Tensor, embedding_dim: int, flip_sin_to_cos: bool = False,
                       freq_shift: float = 1.0, scale: float = 1.0, max_period: int = 10000) -> torch.Tensor:
    """(N,) timesteps -> (N, embedding_dim) float32 features [sin | cos] (or [cos | sin] when flipped).

    Frequencies are max_period ** (-i / (half - freq_shift)) for i < half; an odd dim is zero-padded.
    """
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps: expected a 1-d tensor, got shape {tuple(timesteps.shape)}")
    half = embedding_dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=timesteps.device) * (-math.log(max_period))
    freqs = torch.exp(exponent / (half - freq_shift))
    args = scale * (timesteps[:, None].float() * freqs[None, :])
    sin, cos = torch.sin(args), torch.cos(args)
    emb = torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=-1)
    if embedding_dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


class Timesteps(nn.Module):
    """Parameter-free sinusoidal projection of timesteps (diffusers' `Timesteps`)."""

    def __init__(self, num_channels: int, flip_sin_to_cos: bool, downscale_freq_shift: float, scale: float = 1):
        super().__init__()
        self.num_channels = num_channels
        self.flip_sin_to_cos = flip_sin_to_cos
        self.downscale_freq_shift = downscale_freq_shift
        self.scale = scale

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        return timestep_embedding(timesteps, self.num_channels, self.flip_sin_to_cos, self.downscale_freq_shift,
                                  self.scale)


class TimestepEmbedding(nn.Module):
    """MLP on the sinusoidal features; `condition` (LCM's guidance embedding) is projected and added first."""

    def __init__(self, in_channels: int, time_embed_dim: int, act_fn: str = "silu", out_dim: int | None = None,
                 post_act_fn: str | None = None, cond_proj_dim: int | None = None, sample_proj_bias: bool = True):
        super().__init__()
        self.linear_1 = Linear(in_channels, time_embed_dim, sample_proj_bias)
        self.cond_proj = Linear(cond_proj_dim, in_channels, bias=False) if cond_proj_dim is not None else None
        self.act = get_activation(act_fn)
        self.linear_2 = Linear(time_embed_dim, out_dim or time_embed_dim, sample_proj_bias)
        self.post_act = get_activation(post_act_fn) if post_act_fn is not None else None

    def forward(self, sample: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        if condition is not None:
            if self.cond_proj is None:
                raise ValueError("timestep_cond: this model has no `time_cond_proj_dim`, so it takes no timestep_cond")
            sample = sample + self.cond_proj(condition)
        sample = self.linear_2(self.act(self.linear_1(sample)))
        return self.post_act(sample) if self.post_act is not None else sample


def guidance_scale_embedding(w: torch.Tensor, embedding_dim: int = 512,
                             dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(N,) guidance scales -> (N, embedding_dim) sinusoidal features of 1000*w (LCM's `timestep_cond`)."""
    if w.ndim != 1:
        raise ValueError(f"w: expected a 1-d tensor of guidance scales, got shape {tuple(w.shape)}")
    half = embedding_dim // 2
    step = math.log(10000.0) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=dtype, device=w.device) * -step)
    args = (w * 1000.0).to(dtype)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, 1)) if embedding_dim % 2 == 1 else emb


def text_time_embedding(add_time_proj: Timesteps, text_embeds: torch.Tensor, time_ids: torch.Tensor) -> torch.Tensor:
    """SDXL: concatenate pooled text embeddings (B, D) with the sinusoidal features of each of the
    time ids (B, 6: original size, crop top-left, target size) -> (B, D + 6 * addition_time_embed_dim)."""
    if time_ids.numel() % text_embeds.shape[0] != 0:
        raise ValueError(f"added_cond_kwargs['time_ids']: expected shape (batch={text_embeds.shape[0]}, n), "
                         f"got {tuple(time_ids.shape)}")
    time_embeds = add_time_proj(time_ids.flatten()).reshape(text_embeds.shape[0], -1)
    return torch.cat([text_embeds, time_embeds.to(text_embeds.dtype)], dim=-1)
