"""Tiny SD pipelines whose shapes follow the real families' conventions (heads, groups, head size 64),
so a checkpoint without impasto's embedded configs can be read back by inference from shapes alone."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import tiny  # noqa: E402


def conforming_components(family: str, seed: int = 0, in_channels: int = 4) -> dict:
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    if family == "sd1":
        unet = diffusers.UNet2DConditionModel(
            block_out_channels=(32, 64), layers_per_block=1, sample_size=64, in_channels=in_channels, out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=64, attention_head_dim=8)
        act, pad = "quick_gelu", "<|endoftext|>"
    else:
        unet = diffusers.UNet2DConditionModel(
            block_out_channels=(64, 128), layers_per_block=1, sample_size=96, in_channels=in_channels, out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=64, attention_head_dim=(1, 2), use_linear_projection=True)
        act, pad = "gelu", "!"
    vae = diffusers.AutoencoderKL(block_out_channels=(32, 64), down_block_types=["DownEncoderBlock2D"] * 2,
                                  up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=32,
                                  sample_size=512 if family == "sd1" else 768, scaling_factor=0.18215)
    te = CLIPTextModel(CLIPTextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1,
                                      vocab_size=49408, max_position_embeddings=77, hidden_act=act,
                                      bos_token_id=49406, eos_token_id=49407, pad_token_id=1))
    sched = diffusers.PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                    skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    return dict(unet=unet.eval(), vae=vae.eval(), text_encoder=te.eval(), tokenizer=tiny.make_tokenizer(pad),
                scheduler=sched, safety_checker=None, feature_extractor=None)


def conforming_folder(tmp_path, family: str, in_channels: int = 4) -> Path:
    import diffusers

    comps = conforming_components(family, in_channels=in_channels)
    cls = diffusers.StableDiffusionInpaintPipeline if in_channels == 9 else diffusers.StableDiffusionPipeline
    pipe = cls(**comps, requires_safety_checker=False)
    return tiny.save_folder(pipe, Path(tmp_path) / f"{family}-{in_channels}")
