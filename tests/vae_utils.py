"""Tiny seeded-random autoencoders built with diffusers (the oracle), saved in its folder layout.

    kl_config(name) / vq_config(name) -> config dicts (several block counts, group counts, latent widths)
    make_diffusers(cls_name, config, seed) -> diffusers model in eval mode, weights perturbed so every layer matters
    save(model, tmp_path) -> Path of a folder written by diffusers' save_pretrained
    max_diff(a, b) -> float
"""
from __future__ import annotations

from pathlib import Path

import torch

ENC1, DEC1 = "DownEncoderBlock2D", "UpDecoderBlock2D"

KL_CONFIGS = {
    # one block: no resampling at all
    "one_block": dict(block_out_channels=(8,), down_block_types=(ENC1,), up_block_types=(DEC1,), norm_num_groups=4,
                      latent_channels=4, layers_per_block=1, sample_size=16),
    # SD-like: 2 blocks, quant convs, force_upcast, shift_factor and latents_mean/std present
    "sd_like": dict(block_out_channels=(8, 16), down_block_types=(ENC1,) * 2, up_block_types=(DEC1,) * 2,
                    norm_num_groups=4, latent_channels=4, layers_per_block=1, sample_size=32, force_upcast=True,
                    scaling_factor=0.13025, shift_factor=0.1, latents_mean=[0.0, 0.1, 0.2, 0.3],
                    latents_std=[1.0, 1.1, 1.2, 1.3]),
    # 3 blocks, 16 latent channels, no quant convs, attention blocks in the encoder/decoder, no mid attention
    "wide_latent": dict(block_out_channels=(4, 8, 8), down_block_types=(ENC1, "AttnDownEncoderBlock2D", ENC1),
                        up_block_types=(DEC1, "AttnUpDecoderBlock2D", DEC1), norm_num_groups=2, latent_channels=16,
                        layers_per_block=2, sample_size=32, use_quant_conv=False, use_post_quant_conv=False,
                        force_upcast=False, mid_block_add_attention=False, act_fn="silu"),
    # 4 blocks, a single norm group, gelu activations
    "four_blocks": dict(block_out_channels=(4, 4, 8, 8), down_block_types=(ENC1,) * 4, up_block_types=(DEC1,) * 4,
                        norm_num_groups=1, latent_channels=4, layers_per_block=1, sample_size=32, act_fn="gelu"),
}

VQ_CONFIGS = {
    "vq_small": dict(block_out_channels=(8, 16), down_block_types=(ENC1,) * 2, up_block_types=(DEC1,) * 2,
                     norm_num_groups=4, latent_channels=3, layers_per_block=1, num_vq_embeddings=16, sample_size=32),
    "vq_embed_dim": dict(block_out_channels=(8, 8, 16), down_block_types=(ENC1,) * 3, up_block_types=(DEC1,) * 3,
                         norm_num_groups=2, latent_channels=4, vq_embed_dim=3, layers_per_block=1,
                         num_vq_embeddings=32, sample_size=32, mid_block_add_attention=False),
}


def make_diffusers(cls_name: str, config: dict, seed: int = 0):
    import diffusers

    torch.manual_seed(seed)
    model = getattr(diffusers, cls_name)(**config).eval()
    with torch.no_grad():  # random, not the library's init, so biases and norms are exercised too
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def save(model, folder: Path) -> Path:
    model.save_pretrained(folder)
    return Path(folder)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.double() - b.double()).abs().max().item()
