"""UNet2DModel: the unconditional / image-conditioned pixel or latent UNet (LDM super-resolution, DDPM).

Config keys and parameter names equal diffusers'. Here `attention_head_dim` is the size of ONE head
(heads = channels // attention_head_dim; None = one head per layer). Supported: positional time embedding,
DownBlock2D / AttnDownBlock2D, UpBlock2D / AttnUpBlock2D with conv resampling, UNetMidBlock2D or none,
`num_class_embeds`. Checkpoints saved before diffusers renamed its attention weights (query / key / value /
proj_attn) are read too.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from ..outputs import BaseOutput
from .config import register_to_config
from .embeddings import TimestepEmbedding, Timesteps
from .layers import Conv2d, Embedding
from .modeling import ModelMixin
from .unet_2d_condition import UNetAttentionMixin, _require, timesteps_for_batch
from .unet_blocks import AttnDownBlock2D, AttnUpBlock2D, DownBlock2D, UNetMidBlock2D, UpBlock2D

_OLD_ATTENTION = re.compile(r"^(.*attentions\.\d+\.)(query|key|value|proj_attn)\.(weight|bias)$")
_NEW_NAME = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


@dataclass
class UNet2DOutput(BaseOutput):
    sample: torch.Tensor


class UNet2DModel(ModelMixin, UNetAttentionMixin):

    @register_to_config
    def __init__(self, sample_size=None, in_channels: int = 3, out_channels: int = 3, center_input_sample: bool = False,
                 time_embedding_type: str = "positional", time_embedding_dim=None, freq_shift: int = 0,
                 flip_sin_to_cos: bool = True,
                 down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                 mid_block_type: str | None = "UNetMidBlock2D",
                 up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                 block_out_channels=(224, 448, 672, 896), layers_per_block: int = 2,
                 mid_block_scale_factor: float = 1, downsample_padding: int = 1, downsample_type: str = "conv",
                 upsample_type: str = "conv", dropout: float = 0.0, act_fn: str = "silu", attention_head_dim=8,
                 norm_num_groups: int = 32, attn_norm_num_groups=None, norm_eps: float = 1e-5,
                 resnet_time_scale_shift: str = "default", add_attention: bool = True, class_embed_type=None,
                 num_class_embeds=None, num_train_timesteps=None):
        super().__init__()
        self.sample_size = sample_size
        n = len(down_block_types)
        if len(up_block_types) != n:
            raise ValueError(f"up_block_types: expected {n} entries like down_block_types, got {list(up_block_types)}")
        if len(block_out_channels) != n:
            raise ValueError(f"block_out_channels: expected {n} entries (one per block), got {list(block_out_channels)}")
        for t in down_block_types:
            _require("down_block_types", t, ("DownBlock2D", "AttnDownBlock2D"))
        for t in up_block_types:
            _require("up_block_types", t, ("UpBlock2D", "AttnUpBlock2D"))
        _require("mid_block_type", mid_block_type, ("UNetMidBlock2D", None))
        _require("time_embedding_type", time_embedding_type, ("positional",))
        _require("downsample_type", downsample_type, ("conv",))
        _require("upsample_type", upsample_type, ("conv",))
        _require("class_embed_type", class_embed_type, (None,), "; `num_class_embeds` alone gives a label embedding")
        _require("resnet_time_scale_shift", resnet_time_scale_shift, ("default", "scale_shift"))
        if not isinstance(layers_per_block, int):
            raise ValueError(f"layers_per_block: expected an int, got {layers_per_block!r}")

        time_embed_dim = time_embedding_dim or block_out_channels[0] * 4
        self.conv_in = Conv2d(in_channels, block_out_channels[0], kernel_size=3, padding=1)
        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], time_embed_dim)
        self.class_embedding = Embedding(num_class_embeds, time_embed_dim) if num_class_embeds is not None else None

        common = dict(temb_channels=time_embed_dim, resnet_eps=norm_eps, resnet_act_fn=act_fn,
                      resnet_groups=norm_num_groups, resnet_time_scale_shift=resnet_time_scale_shift)
        head_dim = lambda channels: attention_head_dim if attention_head_dim is not None else channels  # noqa: E731
        self.down_blocks = nn.ModuleList()
        self.up_blocks = nn.ModuleList()  # registered before mid_block: diffusers' state-dict order
        for i, kind in enumerate(down_block_types):
            cout = block_out_channels[i]
            args = dict(in_channels=block_out_channels[max(i - 1, 0)], out_channels=cout, num_layers=layers_per_block,
                        add_downsample=i < n - 1, downsample_padding=downsample_padding, **common)
            if kind == "AttnDownBlock2D":
                self.down_blocks.append(AttnDownBlock2D(attention_head_dim=head_dim(cout), **args))
            else:
                self.down_blocks.append(DownBlock2D(**args))

        mid = block_out_channels[-1]
        self.mid_block = None if mid_block_type is None else UNetMidBlock2D(
            mid, output_scale_factor=mid_block_scale_factor, attention_head_dim=head_dim(mid),
            attn_groups=attn_norm_num_groups, add_attention=add_attention, **common)

        rev = block_out_channels[::-1]
        for i, kind in enumerate(up_block_types):
            args = dict(in_channels=rev[min(i + 1, n - 1)], prev_output_channel=rev[max(i - 1, 0)],
                        out_channels=rev[i], resolution_idx=i, num_layers=layers_per_block + 1,
                        add_upsample=i < n - 1, **common)
            if kind == "AttnUpBlock2D":
                self.up_blocks.append(AttnUpBlock2D(attention_head_dim=head_dim(rev[i]), **args))
            else:
                self.up_blocks.append(UpBlock2D(**args))

        self.conv_norm_out = nn.GroupNorm(norm_num_groups, block_out_channels[0], eps=norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = Conv2d(block_out_channels[0], out_channels, kernel_size=3, padding=1)

    def convert_state_dict(self, state: dict) -> dict:
        """Rename the attention weights of checkpoints written before diffusers 0.14 (query/key/value/proj_attn)."""
        out = {}
        for key, value in state.items():
            m = _OLD_ATTENTION.match(key)
            out[f"{m.group(1)}{_NEW_NAME[m.group(2)]}.{m.group(3)}" if m else key] = value
        return out

    def forward(self, sample: torch.Tensor, timestep, class_labels: torch.Tensor | None = None,
                return_dict: bool = True):
        """Predict from `sample` (B, C, H, W) at `timestep` (a number, 0-d or 1-d tensor)."""
        if sample.ndim != 4:
            raise ValueError(f"sample: expected (batch, channels, height, width), got shape {tuple(sample.shape)}")
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0
        dtype = self.conv_in.weight.dtype
        t_emb = self.time_proj(timesteps_for_batch(timestep, sample.shape[0], sample.device)).to(dtype)
        emb = self.time_embedding(t_emb)
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("class_labels: required, this model has a class embedding (num_class_embeds)")
            emb = emb + self.class_embedding(class_labels).to(dtype)
        elif class_labels is not None:
            raise ValueError("class_labels: this model has no class embedding (num_class_embeds is None)")

        sample = self.conv_in(sample)
        skips = [sample]
        for block in self.down_blocks:
            sample, states = block(sample, emb)
            skips.extend(states)
        if self.mid_block is not None:
            sample = self.mid_block(sample, emb)
        for block in self.up_blocks:
            k = len(block.resnets)
            res, skips = skips[-k:], skips[:-k]
            sample = block(sample, tuple(res), emb)
        sample = self.conv_out(self.conv_act(self.conv_norm_out(sample)))
        return UNet2DOutput(sample=sample) if return_dict else (sample,)
