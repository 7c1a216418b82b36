"""Tiny seeded-random UNets built with diffusers (the oracle), saved in its folder layout.

    CONFIGS            name -> UNet2DConditionModel config (one per checkpoint family)
    LDM_SR             UNet2DModel config shaped like LDM super-resolution (6 in, 3 out, attention blocks)
    make_reference(cls_name, config, folder, seed) -> the diffusers model (eval), saved to `folder`
    inputs(name, batch) -> forward kwargs for a CONFIGS model (sample, timestep, text states, added conds)
    max_diff(a, b)     -> float
"""
from __future__ import annotations

import torch

_BASE = dict(sample_size=16, block_out_channels=(32, 64), cross_attention_dim=32, norm_num_groups=8)

CONFIGS = {
    # SD 1.x: conv proj_in/out, attention_head_dim = heads (8), 2 layers per block
    "sd1": dict(_BASE, layers_per_block=2, attention_head_dim=8,
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
    # SD 2.x: linear projections, per-block head counts, upcast attention
    "sd2": dict(_BASE, layers_per_block=1, attention_head_dim=(2, 4), use_linear_projection=True,
                upcast_attention=True, down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D")),
    # SDXL: text_time added embedding, transformer depth per block, cross_attention_dim 48
    "sdxl": dict(_BASE, layers_per_block=2, attention_head_dim=(2, 4), use_linear_projection=True,
                 cross_attention_dim=48, transformer_layers_per_block=(1, 2), addition_embed_type="text_time",
                 addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 6 * 8,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")),
    # inpainting: 9 input channels
    "inpaint": dict(_BASE, in_channels=9, layers_per_block=1, attention_head_dim=4,
                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
    # LCM: guidance embedding through time_cond_proj_dim
    "lcm": dict(_BASE, layers_per_block=1, attention_head_dim=4, time_cond_proj_dim=16,
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
    # asymmetric transformer depths: per-layer counts for the down path, reversed ones given explicitly
    "asym": dict(_BASE, layers_per_block=1, attention_head_dim=4, transformer_layers_per_block=[[1], [2]],
                 reverse_transformer_layers_per_block=[[2, 1], [1, 2]],
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D")),
    # x4-upscaler-like and rarer keys: class labels, scale_shift resnets, only_cross_attention, per-block
    # cross_attention_dim list, resnet-only mid block, flipped/shifted sinusoids, extra time activations
    "misc": dict(_BASE, in_channels=7, layers_per_block=1, attention_head_dim=4, num_class_embeds=10,
                 resnet_time_scale_shift="scale_shift", only_cross_attention=(True, False),
                 cross_attention_dim=(32, 32), mid_block_type="UNetMidBlock2D", flip_sin_to_cos=False, freq_shift=1,
                 time_embedding_act_fn="silu", timestep_post_act="silu", center_input_sample=True,
                 conv_in_kernel=1, conv_out_kernel=1, down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D")),
}

LDM_SR = dict(sample_size=16, in_channels=6, out_channels=3, block_out_channels=(32, 64), layers_per_block=2,
              down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
              attention_head_dim=8, norm_num_groups=8)


def make_reference(cls_name: str, config: dict, folder, seed: int = 0):
    """Build the diffusers model under `seed`, jitter every parameter (so norms and biases matter), save it."""
    import diffusers

    torch.manual_seed(seed)
    model = getattr(diffusers, cls_name)(**config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(folder)
    return model


def inputs(name: str, batch: int = 2, size: int = 16, seed: int = 1) -> dict:
    cfg = CONFIGS[name]
    g = torch.Generator().manual_seed(seed)
    cross = cfg["cross_attention_dim"]
    cross = cross[0] if isinstance(cross, (list, tuple)) else cross
    kw = dict(sample=torch.randn(batch, cfg.get("in_channels", 4), size, size, generator=g),
              timestep=torch.tensor(37), encoder_hidden_states=torch.randn(batch, 7, cross, generator=g))
    if cfg.get("addition_embed_type") == "text_time":
        kw["added_cond_kwargs"] = {"text_embeds": torch.randn(batch, 32, generator=g),
                                   "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * batch)}
    if cfg.get("time_cond_proj_dim"):
        kw["timestep_cond"] = torch.randn(batch, cfg["time_cond_proj_dim"], generator=g)
    if cfg.get("num_class_embeds"):
        kw["class_labels"] = torch.tensor([3, 7][:batch])
    return kw


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()
