"""VQModel: the vector-quantised autoencoder of the LDM super-resolution and VQ-diffusion checkpoints.

encode(x) -> VQEncoderOutput(latents) (before quantisation); decode(h) quantises to the nearest codebook
entry unless `force_not_quantize`, then decodes -> DecoderOutput(sample, commit_loss).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..outputs import BaseOutput
from .autoencoder_kl import DecoderOutput, check_autoencoder_config, check_image
from .attention_processor import AttentionProcessorMixin
from .config import register_to_config
from .layers import Conv2d
from .modeling import ModelMixin
from .vae_blocks import Decoder, Encoder, VectorQuantizer, rename_legacy_attention


@dataclass
class VQEncoderOutput(BaseOutput):
    latents: torch.Tensor


class VQModel(AttentionProcessorMixin, ModelMixin):
    @register_to_config
    def __init__(self, in_channels: int = 3, out_channels: int = 3, down_block_types=("DownEncoderBlock2D",),
                 up_block_types=("UpDecoderBlock2D",), block_out_channels=(64,), layers_per_block: int = 1,
                 act_fn: str = "silu", latent_channels: int = 3, sample_size: int = 32, num_vq_embeddings: int = 256,
                 norm_num_groups: int = 32, vq_embed_dim: int | None = None, scaling_factor: float = 0.18215,
                 norm_type: str = "group", mid_block_add_attention: bool = True, lookup_from_codebook: bool = False,
                 force_upcast: bool = False):
        super().__init__()
        if norm_type != "group":
            raise ValueError(f"norm_type: only 'group' is supported (spatial norm / MoVQ is not), got {norm_type!r}")
        check_autoencoder_config(type(self).__name__, block_out_channels, layers_per_block, norm_num_groups)
        embed_dim = vq_embed_dim if vq_embed_dim is not None else latent_channels
        self.encoder = Encoder(in_channels, latent_channels, down_block_types, block_out_channels, layers_per_block,
                               norm_num_groups, act_fn, double_z=False, mid_block_add_attention=mid_block_add_attention)
        self.quant_conv = Conv2d(latent_channels, embed_dim, 1)
        self.quantize = VectorQuantizer(num_vq_embeddings, embed_dim, beta=0.25)
        self.post_quant_conv = Conv2d(embed_dim, latent_channels, 1)
        self.decoder = Decoder(latent_channels, out_channels, up_block_types, block_out_channels, layers_per_block,
                               norm_num_groups, act_fn, mid_block_add_attention=mid_block_add_attention)

    def convert_state_dict(self, state):
        return rename_legacy_attention(state)

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        check_image(x, self.config.in_channels, "x")
        h = self.quant_conv(self.encoder(x))
        return VQEncoderOutput(latents=h) if return_dict else (h,)

    def decode(self, h: torch.Tensor, force_not_quantize: bool = False, return_dict: bool = True, shape=None):
        """Quantise `h` (unless `force_not_quantize`) and decode it. With `lookup_from_codebook` in the config
        and `force_not_quantize`, `h` holds codebook indices and `shape` the (b, h, w, c) latent shape."""
        if not force_not_quantize:
            quant, commit_loss, _ = self.quantize(h)
        else:
            if self.config.lookup_from_codebook:
                quant = self.quantize.get_codebook_entry(h, shape)
            else:
                quant = h
            commit_loss = torch.zeros(h.shape[0], device=h.device, dtype=h.dtype)
        dec = self.decoder(self.post_quant_conv(quant))
        return DecoderOutput(sample=dec, commit_loss=commit_loss) if return_dict else (dec, commit_loss)

    def forward(self, sample: torch.Tensor, return_dict: bool = True):
        dec = self.decode(self.encode(sample).latents)
        return dec if return_dict else (dec.sample, dec.commit_loss)
