"""Shared pieces of the pipeline tests: tiny folders, the diffusers reference, impasto's pipeline, comparisons."""
from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import numpy as np
import torch

import tiny

SCHEDULERS = [
    "DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
    "DPMSolverSDEScheduler", "UniPCMultistepScheduler",
]
# config a scheduler needs for two runs to be comparable: DPMSolverSDE's default Brownian seed is drawn from
# torch's global generator at each run's first step, so the pair gets a fixed one
COMPARABLE = {"DPMSolverSDEScheduler": {"noise_sampler_seed": 0}}
TOL = 1e-3  # on [0, 1] pixels


def impasto_class(name: str):
    """impasto's class of that name, or None while it is not written yet."""
    import impasto

    try:
        return getattr(impasto, name)
    except (AttributeError, ImportError):
        return None


def scheduler_pair(name: str, config):
    """(diffusers scheduler, impasto scheduler or — if impasto lacks the class — a second diffusers one)."""
    import diffusers
    import pytest

    config = {**config, **COMPARABLE.get(name, {})}
    try:
        ref = getattr(diffusers, name).from_config(config)
    except ImportError as e:  # LMS needs scipy, DPMSolverSDE torchsde in diffusers
        pytest.skip(f"diffusers' {name} unavailable here: {str(e).strip().splitlines()[0]}")
    cls = impasto_class(name)
    mine = cls.from_config(dict(config)) if cls is not None else getattr(diffusers, name).from_config(config)
    return ref, mine


def gen(seed: int = 0):
    return torch.Generator().manual_seed(seed)


def max_diff(a, b) -> float:
    a = a.detach().float().cpu().numpy() if torch.is_tensor(a) else np.asarray(a, dtype=np.float32)
    b = b.detach().float().cpu().numpy() if torch.is_tensor(b) else np.asarray(b, dtype=np.float32)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max())


class Pair:
    """A tiny variant as (diffusers pipeline, impasto pipeline) sharing weights; img2img twins on demand."""

    def __init__(self, root, variant: str):
        import impasto

        self.variant = variant
        self.ref = tiny.make_sd_pipeline(variant)
        self.folder = tiny.save_folder(self.ref, root / variant)
        self.scheduler_config = dict(self.ref.scheduler.config)
        over = {}
        name = type(self.ref.scheduler).__name__
        if impasto_class(name) is None:  # impasto's scheduler not written yet: use diffusers' object
            over["scheduler"] = self.ref.scheduler
        if variant == "sd1-safety" and impasto_class("StableDiffusionSafetyChecker") is None:
            over["safety_checker"] = self.ref.safety_checker
        self.mine = impasto.DiffusionPipeline.from_pretrained(self.folder, **over)
        self.mine.set_progress_bar_config(disable=True)

    def set_scheduler(self, name: str):
        ref, mine = scheduler_pair(name, self.scheduler_config)
        self.ref.scheduler, self.mine.scheduler = ref, mine

    def img2img(self):
        import diffusers
        import impasto

        ref = diffusers.StableDiffusionImg2ImgPipeline(**self.ref.components)
        ref.set_progress_bar_config(disable=True)
        mine = impasto.StableDiffusionImg2ImgPipeline(**self.mine.components)
        mine.set_progress_bar_config(disable=True)
        return ref, mine

    def run_both(self, ref=None, mine=None, seed=0, n_generators: int | None = None, **kwargs):
        """Run both pipelines with identical arguments and fresh identically seeded generator(s)."""
        ref = ref or self.ref
        mine = mine or self.mine
        kwargs.setdefault("output_type", "np")
        kwargs.setdefault("num_inference_steps", 3)

        def gens():
            return [gen(seed + i) for i in range(n_generators)] if n_generators else gen(seed)

        return ref(**kwargs, generator=gens()), mine(**kwargs, generator=gens())


@functools.lru_cache(maxsize=None)
def shared_pair(variant: str) -> Pair:
    """One Pair per variant for the whole test session (tests set the scheduler they need)."""
    return Pair(Path(tempfile.mkdtemp(prefix="impasto-pipe-")), variant)
