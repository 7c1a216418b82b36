"""CLIP's vision tower (ViT) with transformers' parameter names; `CLIPVisionModelWithProjection` is the IP-Adapter
image encoder, and the same tower sits inside the safety checker. The encoder layers are the text model's."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..outputs import BaseOutput
from .clip_text import TransformersFormatMixin, encoder_from_config
from .config import FrozenDict, check_type, register_to_config
from .layers import Conv2d, Embedding, Linear

# CLIPVisionConfig's defaults (ViT-B/32), used where a config leaves a key out
VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, projection_dim=512, num_hidden_layers=12,
                       num_attention_heads=12, num_channels=3, image_size=224, patch_size=32,
                       hidden_act="quick_gelu", layer_norm_eps=1e-5)


def vision_settings(config: dict | None, owner: str) -> FrozenDict:
    """A complete vision config from a possibly partial one, type-checked."""
    cfg = {**VISION_DEFAULTS, **{k: v for k, v in (config or {}).items() if k in VISION_DEFAULTS}}
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_channels",
                "image_size", "patch_size"):
        check_type(owner, key, cfg[key], int)
    if cfg["image_size"] % cfg["patch_size"]:
        raise ValueError(f"{owner}: image_size {cfg['image_size']} is not a multiple of patch_size {cfg['patch_size']}")
    return FrozenDict(cfg)


class CLIPVisionEmbeddings(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.image_size, self.patch_size = cfg.image_size, cfg.patch_size
        self.class_embedding = nn.Parameter(torch.empty(cfg.hidden_size))
        self.patch_embedding = Conv2d(cfg.num_channels, cfg.hidden_size, cfg.patch_size, cfg.patch_size,
                                      bias=False)
        self.position_embedding = Embedding((cfg.image_size // cfg.patch_size) ** 2 + 1, cfg.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"pixel_values: expected (batch, channels, {self.image_size}, {self.image_size}) "
                             f"images, got shape {tuple(pixel_values.shape)}")
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight.to(patches.dtype)


class CLIPVisionTransformer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embeddings = CLIPVisionEmbeddings(cfg)
        self.pre_layrnorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)  # (sic) transformers' name
        self.encoder = encoder_from_config(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = False):
        """(last hidden state, pooled = post-norm class token, hidden states or None)."""
        x = self.pre_layrnorm(self.embeddings(pixel_values))
        last, hidden = self.encoder(x, None, output_hidden_states)
        return last, self.post_layernorm(last[:, 0]), hidden


class CLIPVisionModel(nn.Module):
    """transformers' CLIPVisionModel layout (`vision_model.*`), as nested in the safety checker."""

    def __init__(self, cfg):
        super().__init__()
        self.vision_model = CLIPVisionTransformer(cfg)

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = False):
        return self.vision_model(pixel_values, output_hidden_states)


@dataclass
class CLIPVisionModelOutput(BaseOutput):
    image_embeds: torch.Tensor = None
    last_hidden_state: torch.Tensor = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None


class CLIPVisionModelWithProjection(TransformersFormatMixin):
    """Image encoder: `out.image_embeds` (projected, pooled) and, when asked, every hidden state
    (IP-Adapter Plus reads `hidden_states[-2]`)."""

    model_type = "clip_vision_model"
    config_section = "vision_config"
    weight_prefix = "vision_model."
    dropped_weights = ("vision_model.embeddings.position_ids", "embeddings.position_ids")
    other_tower = ("text_model.", "text_projection.", "logit_scale")
    main_input_name = "pixel_values"

    @register_to_config
    def __init__(self, hidden_size: int = 768, intermediate_size: int = 3072, projection_dim: int = 512,
                 num_hidden_layers: int = 12, num_attention_heads: int = 12, num_channels: int = 3,
                 image_size: int = 224, patch_size: int = 32, hidden_act: str = "quick_gelu",
                 layer_norm_eps: float = 1e-5):
        super().__init__()
        cfg = vision_settings(dict(self.config), type(self).__name__)
        check_type(type(self).__name__, "projection_dim", projection_dim, int)
        self.vision_model = CLIPVisionTransformer(cfg)
        self.visual_projection = Linear(hidden_size, projection_dim, bias=False)

    def get_input_embeddings(self) -> nn.Module:
        return self.vision_model.embeddings.patch_embedding

    def forward(self, pixel_values: torch.Tensor = None, output_hidden_states: bool = False,
                return_dict: bool = True, output_attentions: bool = False):
        if output_attentions:
            raise ValueError("output_attentions: attention weights are not returned by impasto's CLIP models")
        if not torch.is_tensor(pixel_values):
            raise ValueError(f"pixel_values: expected a tensor, got {type(pixel_values).__name__}")
        last, pooled, hidden = self.vision_model(pixel_values, output_hidden_states)
        out = CLIPVisionModelOutput(image_embeds=self.visual_projection(pooled), last_hidden_state=last,
                                    hidden_states=hidden)
        return out if return_dict else out.to_tuple()
