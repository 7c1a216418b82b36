"""Shared pieces of the SDXL and inpainting tests: tiny (diffusers, impasto) pipeline pairs built once per session."""
from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import numpy as np
import PIL.Image
import torch

import tiny
from pipeline_utils import gen, shared_pair


class XLPair:
    """(diffusers pipeline, impasto pipeline) on the same tiny weights; `twin(name)` gives other pipeline
    classes over the same components; `use_scheduler` swaps both schedulers from the original config."""

    def __init__(self, ref, mine):
        self.ref, self.mine = ref, mine
        self.scheduler_config = dict(ref.scheduler.config)

    @classmethod
    def from_ref(cls, ref, name: str) -> "XLPair":
        import impasto

        folder = tiny.save_folder(ref, Path(tempfile.mkdtemp(prefix="impasto-sdxl-")) / name)
        mine = impasto.DiffusionPipeline.from_pretrained(folder)
        mine.set_progress_bar_config(disable=True)
        return cls(ref, mine)

    def twin(self, name: str, **config):
        import diffusers
        import impasto

        ref = getattr(diffusers, name)(**self.ref.components, **config)
        mine = getattr(impasto, name)(**self.mine.components, **config)
        for p in (ref, mine):
            p.set_progress_bar_config(disable=True)
        return ref, mine

    def use_scheduler(self, name: str, *pipes):
        import diffusers
        import impasto

        pipes = pipes or (self.ref, self.mine)
        for p in pipes:
            lib = impasto if type(p).__module__.startswith("impasto") else diffusers
            p.scheduler = getattr(lib, name).from_config(dict(self.scheduler_config))


def run_both(ref, mine, seed: int = 0, n_generators: int | None = None, **kwargs):
    kwargs.setdefault("output_type", "np")
    kwargs.setdefault("num_inference_steps", 3)

    def gens():
        return [gen(seed + i) for i in range(n_generators)] if n_generators else gen(seed)

    return ref(**kwargs, generator=gens()), mine(**kwargs, generator=gens())


@functools.lru_cache(maxsize=None)
def sdxl_pair() -> XLPair:
    pair = shared_pair("sdxl")
    out = XLPair(pair.ref, pair.mine)
    out.scheduler_config = pair.scheduler_config
    out.use_scheduler("EulerDiscreteScheduler")
    return out


@functools.lru_cache(maxsize=None)
def refiner_pair() -> XLPair:
    return XLPair.from_ref(tiny.make_sdxl_refiner_pipeline(), "refiner")


@functools.lru_cache(maxsize=None)
def inpaint9_pair() -> XLPair:
    return XLPair.from_ref(tiny.make_sdxl_inpaint_pipeline(in_channels=9), "sdxl-inpaint")


@functools.lru_cache(maxsize=None)
def sd_inpaint_pair() -> XLPair:
    pair = shared_pair("sd-inpaint")
    out = XLPair(pair.ref, pair.mine)
    out.scheduler_config = pair.scheduler_config
    out.use_scheduler("PNDMScheduler")
    return out


@functools.lru_cache(maxsize=None)
def sd1_pair() -> XLPair:
    pair = shared_pair("sd1")
    out = XLPair(pair.ref, pair.mine)
    out.scheduler_config = pair.scheduler_config
    return out


def image_tensor(seed: int = 1, size: int = 32) -> torch.Tensor:
    return torch.rand(1, 3, size, size, generator=gen(seed))


def mask_tensor(size: int = 32, box=(8, 24, 4, 20)) -> torch.Tensor:
    mask = torch.zeros(1, 1, size, size)
    mask[..., box[0]:box[1], box[2]:box[3]] = 1
    return mask


def to_pil(t: torch.Tensor) -> PIL.Image.Image:
    arr = (t[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return PIL.Image.fromarray(arr.squeeze(-1) if arr.shape[-1] == 1 else arr)


def pil_array(images) -> np.ndarray:
    return np.stack([np.asarray(i, dtype=np.float32) / 255 for i in images])
