"""LoRA: file formats, hooks on Linear/Conv2d layers, and the pipeline mixin."""
from .formats import LoraWeights  # noqa: F401
from .mixin import LoraLoaderMixin  # noqa: F401
