"""Shared fixtures for the Flax tests: one tiny SD folder (tests/tiny.py, "sd1") per process, loaded once by
impasto's torch pipelines and by the Flax pipeline; jitted model calls (eager Flax is slow on CPU)."""
from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import jax
import numpy as np
import pytest
import torch

# tests compile many small programs: XLA's optimisation passes cost more time here than they save
jax.config.update("jax_disable_most_optimizations", True)

PROMPTS = ["a red cube on a table", "two blue spheres"]
SCHEDULERS = ("PNDMScheduler", "DDIMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
              "DPMSolverMultistepScheduler")


@pytest.fixture(autouse=True)
def one_torch_thread():
    """torch on one thread beside XLA's (two pools on 2 cores thrash), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.lru_cache(maxsize=None)
def sd_folder() -> Path:
    from tiny import make_sd_folder

    return make_sd_folder(Path(tempfile.mkdtemp(prefix="impasto-jax-")), "sd1")


@functools.lru_cache(maxsize=None)
def flax_pipeline():
    """(FlaxStableDiffusionPipeline, params) of `sd_folder()` in float32."""
    from impasto.jax.pipeline import FlaxStableDiffusionPipeline

    return FlaxStableDiffusionPipeline.from_pretrained(sd_folder())


@functools.lru_cache(maxsize=None)
def torch_pipeline():
    import impasto

    pipe = impasto.StableDiffusionPipeline.from_pretrained(sd_folder())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def scheduler_config(**overrides) -> dict:
    """The folder's scheduler config, with DDIM's clip_sample off (as the pipelines' config fix-up does)."""
    return dict(torch_pipeline().scheduler.config, clip_sample=False, **overrides)


def seeded(shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())
