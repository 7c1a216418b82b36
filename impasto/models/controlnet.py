"""ControlNetModel: a trainable copy of the UNet's encoder half (conv_in, time embedding, down blocks, mid block)
that reads a control image and returns residuals for the UNet's skip connections and mid block.

Config keys and parameter names equal diffusers', so a `controlnet/` folder (lllyasviel/control_v11p_sd15_canny,
thibaud/controlnet-sd21-*) loads as it is. The UNet's construction is shared (`unet_2d_condition`), so the
block types, attention settings and embeddings a UNet supports are supported here in the same way; config values
outside that (other block types, `class_embed_type`, `encoder_hid_dim`, "text"/"text_image" added embeddings)
are refused with a ValueError naming the key.

    residual_k = zero_conv_k(feature_k) * scale_k
scale_k is `conditioning_scale` for every k, or in guess mode conditioning_scale * 10^(-1 + k/K) for the K down
residuals and the mid one (0.1 for the shallowest, 1.0 for the mid block), as the ControlNet paper's "guess mode".
`global_pool_conditions` (shuffle-type ControlNets) averages each residual over its pixels.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..outputs import BaseOutput
from .attention_processor import ProcessorKwargs
from .config import register_to_config
from .layers import Conv2d
from .modeling import ModelMixin
from .transformer_2d import mask_to_bias
from .unet_2d_condition import (TimeEmbeddingMixin, UNetAttentionMixin, _require, add_input_layers, block_settings,
                                make_down_blocks, make_mid_block)

_OWNER = "impasto's ControlNetModel"


@dataclass
class ControlNetOutput(BaseOutput):
    down_block_res_samples: tuple
    mid_block_res_sample: torch.Tensor


def _zero_conv(channels: int) -> Conv2d:
    conv = Conv2d(channels, channels, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class ControlNetConditioningEmbedding(nn.Module):
    """The control image (B, 3, H, W) -> features at latent resolution: a 3x3 conv, then per width step a 3x3
    conv and a stride-2 3x3 conv (SiLU after each), then a zero-initialised 3x3 conv to the UNet's first width."""

    def __init__(self, conditioning_embedding_channels: int, conditioning_channels: int = 3,
                 block_out_channels=(16, 32, 96, 256)):
        super().__init__()
        widths = list(block_out_channels)
        self.conv_in = Conv2d(conditioning_channels, widths[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        for cin, cout in zip(widths[:-1], widths[1:]):
            self.blocks.append(Conv2d(cin, cin, 3, padding=1))
            self.blocks.append(Conv2d(cin, cout, 3, padding=1, stride=2))
        self.conv_out = Conv2d(widths[-1], conditioning_embedding_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, conditioning: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.conv_in(conditioning))
        for conv in self.blocks:
            x = F.silu(conv(x))
        return self.conv_out(x)


class ControlNetModel(ModelMixin, UNetAttentionMixin, TimeEmbeddingMixin):
    # `addition_embed_type_num_heads` only matters for the refused "text" added embedding: recorded, unused

    @register_to_config
    def __init__(self, in_channels: int = 4, conditioning_channels: int = 3, flip_sin_to_cos: bool = True,
                 freq_shift: int = 0,
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                   "DownBlock2D"),
                 mid_block_type: str | None = "UNetMidBlock2DCrossAttn", only_cross_attention=False,
                 block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding: int = 1,
                 mid_block_scale_factor: float = 1, act_fn: str = "silu", norm_num_groups: int | None = 32,
                 norm_eps: float = 1e-5, cross_attention_dim=1280, transformer_layers_per_block=1,
                 encoder_hid_dim=None, encoder_hid_dim_type=None, attention_head_dim=8, num_attention_heads=None,
                 use_linear_projection: bool = False, class_embed_type=None, addition_embed_type=None,
                 addition_time_embed_dim=None, num_class_embeds=None, upcast_attention: bool = False,
                 resnet_time_scale_shift: str = "default", projection_class_embeddings_input_dim=None,
                 controlnet_conditioning_channel_order: str = "rgb",
                 conditioning_embedding_out_channels=(16, 32, 96, 256), global_pool_conditions: bool = False,
                 addition_embed_type_num_heads: int = 64):
        super().__init__()
        n = len(down_block_types)
        if len(block_out_channels) != n:
            raise ValueError(f"block_out_channels: expected {n} entries (one per block), "
                             f"got {list(block_out_channels)}")
        down_types = [t[7:] if t.startswith("UNetRes") else t for t in down_block_types]
        for t in down_types:
            _require("down_block_types", t, ("DownBlock2D", "CrossAttnDownBlock2D"), owner=_OWNER)
        _require("mid_block_type", mid_block_type, ("UNetMidBlock2DCrossAttn", "UNetMidBlock2D"), owner=_OWNER)
        _require("class_embed_type", class_embed_type, (None,), "; `num_class_embeds` alone gives a label embedding",
                 owner=_OWNER)
        _require("addition_embed_type", addition_embed_type, (None, "text_time"), owner=_OWNER)
        _require("encoder_hid_dim", encoder_hid_dim, (None,), owner=_OWNER)
        _require("encoder_hid_dim_type", encoder_hid_dim_type, (None,), owner=_OWNER)
        _require("resnet_time_scale_shift", resnet_time_scale_shift, ("default", "scale_shift"), owner=_OWNER)
        _require("controlnet_conditioning_channel_order", controlnet_conditioning_channel_order, ("rgb", "bgr"),
                 owner=_OWNER)
        if not isinstance(norm_num_groups, int):
            raise ValueError(f"norm_num_groups: expected an int, got {norm_num_groups!r}")
        if not conditioning_embedding_out_channels:
            raise ValueError("conditioning_embedding_out_channels: expected at least one width, got "
                             f"{conditioning_embedding_out_channels!r}")
        if addition_embed_type == "text_time" and (addition_time_embed_dim is None
                                                   or projection_class_embeddings_input_dim is None):
            raise ValueError("addition_time_embed_dim, projection_class_embeddings_input_dim: both are required "
                             "when addition_embed_type is 'text_time'")
        heads, cross_dims, layers, only_cross, depths = block_settings(
            n, num_attention_heads, attention_head_dim, cross_attention_dim, layers_per_block, only_cross_attention,
            transformer_layers_per_block)

        time_embed_dim = add_input_layers(self, in_channels, block_out_channels, 3, flip_sin_to_cos, freq_shift,
                                          act_fn, num_class_embeds=num_class_embeds,
                                          addition_embed_type=addition_embed_type,
                                          addition_time_embed_dim=addition_time_embed_dim,
                                          projection_class_embeddings_input_dim=projection_class_embeddings_input_dim)
        self.time_embed_act = None
        self.controlnet_cond_embedding = ControlNetConditioningEmbedding(block_out_channels[0], conditioning_channels,
                                                                         conditioning_embedding_out_channels)
        common = dict(temb_channels=time_embed_dim, resnet_eps=norm_eps, resnet_act_fn=act_fn,
                      resnet_groups=norm_num_groups, resnet_time_scale_shift=resnet_time_scale_shift)
        self.down_blocks = make_down_blocks(down_types, block_out_channels, layers, depths, heads, cross_dims,
                                            only_cross, downsample_padding, use_linear_projection, upcast_attention,
                                            common)
        # one zero conv per skip state the UNet's down path yields: conv_in, each layer, each downsampler
        widths = [block_out_channels[0]]
        for i, width in enumerate(block_out_channels):
            widths += [width] * (layers[i] + (1 if i < n - 1 else 0))
        self.controlnet_down_blocks = nn.ModuleList([_zero_conv(w) for w in widths])
        self.controlnet_mid_block = _zero_conv(block_out_channels[-1])
        self.mid_block = make_mid_block(mid_block_type, block_out_channels[-1], depths[-1], heads[-1], cross_dims[-1],
                                        mid_block_scale_factor, use_linear_projection, upcast_attention, common)

    @classmethod
    def from_unet(cls, unet, controlnet_conditioning_channel_order: str = "rgb",
                  conditioning_embedding_out_channels=(16, 32, 96, 256), load_weights_from_unet: bool = True,
                  conditioning_channels: int = 3) -> "ControlNetModel":
        """A ControlNet shaped like `unet` (config copied), its encoder weights copied when load_weights_from_unet;
        the conditioning embedding starts random and every zero conv at zero (as diffusers)."""
        cfg = unet.config
        keys = ("in_channels", "flip_sin_to_cos", "freq_shift", "down_block_types", "only_cross_attention",
                "block_out_channels", "layers_per_block", "downsample_padding", "mid_block_scale_factor", "act_fn",
                "norm_num_groups", "norm_eps", "cross_attention_dim", "attention_head_dim", "num_attention_heads",
                "use_linear_projection", "class_embed_type", "num_class_embeds", "upcast_attention",
                "resnet_time_scale_shift", "projection_class_embeddings_input_dim", "mid_block_type",
                "transformer_layers_per_block", "encoder_hid_dim", "encoder_hid_dim_type", "addition_embed_type",
                "addition_time_embed_dim")
        controlnet = cls(**{k: cfg[k] for k in keys if k in cfg},
                         controlnet_conditioning_channel_order=controlnet_conditioning_channel_order,
                         conditioning_embedding_out_channels=conditioning_embedding_out_channels,
                         conditioning_channels=conditioning_channels)
        if load_weights_from_unet:
            for name in ("conv_in", "time_embedding", "class_embedding", "add_embedding", "down_blocks", "mid_block"):
                mine = getattr(controlnet, name, None)
                if mine is None:
                    continue
                state = getattr(unet, name).state_dict()
                if name == "time_embedding":  # an LCM UNet's guidance projection has no place here
                    state = {k: v for k, v in state.items() if not k.startswith("cond_proj.")}
                mine.load_state_dict(state)
        return controlnet.to(device=unet.device, dtype=unet.dtype)

    @classmethod
    def from_single_file(cls, *args, **kwargs):
        raise ValueError("ControlNetModel.from_single_file: original-layout ControlNet checkpoints are not supported "
                         "by impasto; load a diffusers `controlnet/` folder with from_pretrained")

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                controlnet_cond: torch.Tensor, conditioning_scale: float = 1.0,
                class_labels: torch.Tensor | None = None, timestep_cond: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, added_cond_kwargs: dict | None = None,
                cross_attention_kwargs: dict | None = None, guess_mode: bool = False, return_dict: bool = True):
        """Residuals for the UNet from a noisy `sample` (B, 4, h, w), text states and `controlnet_cond`
        (B, 3, 8h, 8w in [0, 1]): returns (down residuals, one per UNet skip state; mid residual)."""
        extra = {k: v for k, v in cross_attention_kwargs.items() if k != "scale"} if cross_attention_kwargs else None
        custom = [layer for layer in self._attention_layers() if layer.processor is not None] if extra else []
        if custom:
            with ProcessorKwargs(custom, extra):
                return self._residuals(sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale,
                                       class_labels, timestep_cond, attention_mask, added_cond_kwargs, guess_mode,
                                       return_dict)
        return self._residuals(sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale,
                               class_labels, timestep_cond, attention_mask, added_cond_kwargs, guess_mode, return_dict)

    def _residuals(self, sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale, class_labels,
                   timestep_cond, attention_mask, added_cond_kwargs, guess_mode, return_dict):
        if sample.ndim != 4:
            raise ValueError(f"sample: expected (batch, channels, height, width), got shape {tuple(sample.shape)}")
        if self.config.controlnet_conditioning_channel_order == "bgr":
            controlnet_cond = torch.flip(controlnet_cond, dims=[1])
        emb = self._embed(sample, timestep, class_labels, timestep_cond, added_cond_kwargs)
        ctx = dict(encoder_hidden_states=encoder_hidden_states,
                   attention_mask=mask_to_bias(attention_mask, sample.dtype))
        sample = self.conv_in(sample)
        cond = self.controlnet_cond_embedding(controlnet_cond)
        if cond.shape[-2:] != sample.shape[-2:]:
            raise ValueError(f"controlnet_cond: its embedding is {tuple(cond.shape[-2:])} but the latents are "
                             f"{tuple(sample.shape[-2:])}; give the control image at the output size "
                             f"({2 ** (len(self.config.conditioning_embedding_out_channels) - 1)}x the latents)")
        sample = sample + cond
        skips = [sample]
        for block in self.down_blocks:
            if block.has_cross_attention:
                sample, states = block(sample, emb, **ctx)
            else:
                sample, states = block(sample, emb)
            skips.extend(states)
        if self.mid_block.has_cross_attention:
            sample = self.mid_block(sample, emb, **ctx)
        else:
            sample = self.mid_block(sample, emb)

        down = [conv(s) for conv, s in zip(self.controlnet_down_blocks, skips)]
        mid = self.controlnet_mid_block(sample)
        if guess_mode and not self.config.global_pool_conditions:
            scales = torch.logspace(-1, 0, len(down) + 1, device=sample.device) * conditioning_scale
            down = [d * s for d, s in zip(down, scales)]
            mid = mid * scales[-1]
        else:
            down = [d * conditioning_scale for d in down]
            mid = mid * conditioning_scale
        if self.config.global_pool_conditions:
            down = [d.mean(dim=(2, 3), keepdim=True) for d in down]
            mid = mid.mean(dim=(2, 3), keepdim=True)
        if not return_dict:
            return down, mid
        return ControlNetOutput(down_block_res_samples=down, mid_block_res_sample=mid)
