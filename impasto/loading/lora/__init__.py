"""LoRA: file formats, hooks on Linear/Conv2d layers, and the pipeline mixin."""
from .formats import LoraWeights
from .lycoris import DeltaWeights
from .mixin import LoraLoaderMixin

__all__ = ["DeltaWeights", "LoraLoaderMixin", "LoraWeights"]
