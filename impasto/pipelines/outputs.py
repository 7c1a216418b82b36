"""Pipeline outputs with diffusers' field names (attribute access, `out[0]`, `out["images"]`, `to_tuple()`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..outputs import BaseOutput


@dataclass
class ImagePipelineOutput(BaseOutput):
    """images: a list of PIL images, a (B, H, W, C) numpy array, or a (B, C, H, W) tensor."""

    images: Any


@dataclass
class StableDiffusionPipelineOutput(BaseOutput):
    """images as above; nsfw_content_detected: one bool per image, or None without a safety checker."""

    images: Any
    nsfw_content_detected: list[bool] | None = None


@dataclass
class StableDiffusionXLPipelineOutput(BaseOutput):
    images: Any
