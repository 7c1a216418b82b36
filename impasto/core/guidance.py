"""Classifier-free guidance: one batched model call over [unconditional, conditional], then the mix.

    eps = eps_u + s * (eps_c - eps_u)
guidance_rescale (Lin et al. 2023, arXiv:2305.08891 §3.4) pulls the guided prediction's standard deviation
back to the conditional one's: eps' = r * eps * std(eps_c) / std(eps) + (1 - r) * eps.
"""
from __future__ import annotations

import math

import torch


def cfg_batch(x: torch.Tensor, enabled: bool) -> torch.Tensor:
    """The model input for one guided call: x twice along the batch (uncond half first) when enabled."""
    return torch.cat([x, x]) if enabled else x


def cfg_combine(pred: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a batched [uncond, cond] prediction and mix it; returns (guided, cond) — cond feeds rescaling."""
    uncond, cond = pred.chunk(2)
    return uncond + scale * (cond - uncond), cond


def rescale_noise_cfg(noise_cfg: torch.Tensor, noise_pred_text: torch.Tensor, guidance_rescale: float = 0.0):
    """Rescale a guided prediction towards the conditional prediction's per-sample standard deviation."""
    dims = list(range(1, noise_pred_text.ndim))
    std_text = noise_pred_text.std(dim=dims, keepdim=True)
    std_cfg = noise_cfg.std(dim=dims, keepdim=True)
    rescaled = noise_cfg * (std_text / std_cfg)
    return guidance_rescale * rescaled + (1 - guidance_rescale) * noise_cfg


def guidance_scale_embedding(w: torch.Tensor, embedding_dim: int = 512, dtype=torch.float32) -> torch.Tensor:
    """Sinusoidal embedding of guidance strengths (LCM-style UNets' `timestep_cond`): sin first, then cos."""
    if w.ndim != 1:
        raise ValueError(f"w: expected a 1-D tensor of guidance values, got shape {tuple(w.shape)}")
    w = w * 1000.0
    half = embedding_dim // 2
    freqs = torch.exp(torch.arange(half, dtype=dtype) * -(math.log(10000.0) / (half - 1)))
    args = w.to(dtype)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if embedding_dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb
