"""StableDiffusionSafetyChecker: CLIP image embeddings compared with 17 concept and 3 "special care" embeddings.

Weights and config are diffusers' (a transformers CLIPConfig with `vision_config`; weights
`vision_model.vision_model.*`, `visual_projection`, `concept_embeds(_weights)`, `special_care_embeds(_weights)`).
The decision is diffusers': cosine similarity minus each concept's threshold, rounded to 3 decimals; once a
special-care score is positive, 0.01 is added to the following special scores and to every concept score;
an image with any positive concept score is replaced by a black image.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .clip_text import IGNORED_CONFIG_KEYS, TransformersFormatMixin
from .clip_vision import VISION_DEFAULTS, CLIPVisionModel, vision_settings
from .config import check_type, register_to_config
from .layers import Linear

logger = logging.getLogger("impasto")

SPECIAL_CARE_ADJUSTMENT = 0.01


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """(n, d) x (m, d) -> (n, m) cosine similarities as float32 numpy."""
    return (F.normalize(a) @ F.normalize(b).t()).cpu().float().numpy()


def concept_flags(special_cos: np.ndarray, concept_cos: np.ndarray, special_thresholds: np.ndarray,
                  concept_thresholds: np.ndarray) -> list[bool]:
    """Which images show a flagged concept, with diffusers' rounding and special-care adjustment."""
    flags = []
    for special_row, concept_row in zip(special_cos, concept_cos):
        adjustment = np.float32(0.0)
        for cos, threshold in zip(special_row, special_thresholds):
            if np.round(cos - threshold + adjustment, 3) > 0:
                adjustment = np.float32(SPECIAL_CARE_ADJUSTMENT)
        scores = np.round(concept_row - concept_thresholds + adjustment, 3)
        flags.append(bool((scores > 0).any()))
    return flags


def black_out(images, flags: list[bool]):
    """Replace flagged images (tensor batch, numpy batch or list of either) by zeros, in place."""
    for i, flagged in enumerate(flags):
        if flagged:
            images[i] = torch.zeros_like(images[i]) if torch.is_tensor(images[i]) else np.zeros(np.shape(images[i]))
    return images


class StableDiffusionSafetyChecker(TransformersFormatMixin):
    model_type = "clip"
    main_input_name = "clip_input"
    dropped_weights = ("vision_model.vision_model.embeddings.position_ids", "vision_model.embeddings.position_ids")

    @register_to_config
    def __init__(self, vision_config: dict | None = None, projection_dim: int = 768, text_config: dict | None = None):
        super().__init__()
        check_type(type(self).__name__, "projection_dim", projection_dim, int)
        cfg = vision_settings(vision_config, type(self).__name__)
        self.vision_model = CLIPVisionModel(cfg)
        self.visual_projection = Linear(cfg.hidden_size, projection_dim, bias=False)
        self.concept_embeds = nn.Parameter(torch.empty(17, projection_dim), requires_grad=False)
        self.special_care_embeds = nn.Parameter(torch.empty(3, projection_dim), requires_grad=False)
        self.concept_embeds_weights = nn.Parameter(torch.empty(17), requires_grad=False)
        self.special_care_embeds_weights = nn.Parameter(torch.empty(3), requires_grad=False)

    @classmethod
    def from_config(cls, config: dict | None = None, return_unused_kwargs: bool = False, **kwargs):
        config = dict(config or {})
        vision = {**(config.get("vision_config") or {}), **(config.get("vision_config_dict") or {})}
        unknown = sorted(k for k in vision if k not in VISION_DEFAULTS and k not in IGNORED_CONFIG_KEYS)
        if unknown:
            logger.info("%s: vision_config keys not used: %s", cls.__name__, ", ".join(unknown))
        config["vision_config"] = {k: v for k, v in vision.items() if k in VISION_DEFAULTS}
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    def transformers_config(self) -> dict:
        data = super().transformers_config()
        vision = dict(vision_settings(self.config.vision_config, type(self).__name__))
        data["vision_config"] = {**vision, "model_type": "clip_vision_model"}
        if data.get("text_config") is None:
            data.pop("text_config", None)
        return data

    def convert_state_dict(self, state: dict) -> dict:
        # transformers 5 saves the nested vision model without its inner `vision_model.`
        flat = "vision_model."
        if not any(k.startswith(flat + flat) for k in state):
            state = {flat + k if k.startswith(flat) else k: v for k, v in state.items()}
        return super().convert_state_dict(state)

    @torch.no_grad()
    def forward(self, clip_input: torch.Tensor, images):
        """Returns (images with flagged ones blacked out, list of per-image flags)."""
        if not torch.is_tensor(clip_input) or clip_input.ndim != 4:
            raise ValueError("clip_input: expected a (batch, 3, H, W) tensor from the feature extractor")
        if len(images) != clip_input.shape[0]:
            raise ValueError(f"images: {len(images)} images for {clip_input.shape[0]} clip_input rows")
        _, pooled, _ = self.vision_model(clip_input)
        embeds = self.visual_projection(pooled)
        flags = concept_flags(cosine_similarity(embeds, self.special_care_embeds),
                              cosine_similarity(embeds, self.concept_embeds),
                              self.special_care_embeds_weights.detach().cpu().float().numpy(),
                              self.concept_embeds_weights.detach().cpu().float().numpy())
        images = black_out(images, flags)
        if any(flags):
            logger.warning("Potential NSFW content was detected in %d of %d images; a black image is returned "
                           "instead. Try again with a different prompt and/or seed.", sum(flags), len(flags))
        return images, flags
