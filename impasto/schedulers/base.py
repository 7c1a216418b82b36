"""What every scheduler shares: config file handling, swapping (`compatibles`), step-index bookkeeping, checks.

Concurrency: like diffusers, a scheduler keeps per-run state on the instance (`timesteps`, `sigmas`,
`step_index`, multistep histories), which is what hand-written loops expect. Two runs must therefore not
share one instance: `copy()` (alias `fresh()`) returns an independent scheduler with the same config, and
impasto's pipelines call it at the start of every `__call__`, so concurrent calls never share state.
"""
from __future__ import annotations

import dataclasses
import importlib
import logging
import numbers
import os
from typing import Any, Sequence

import torch

from ..core.schedule import (
    BETA_SCHEDULES,
    PREDICTION_TYPES,
    TIMESTEP_SPACINGS,
    alphas_cumprod,
    check_choice,
    make_betas,
    rescale_zero_terminal_snr,
)
from ..models.config import ConfigMixin
from ..outputs import BaseOutput

logger = logging.getLogger("impasto")

SCHEDULER_CONFIG_NAME = "scheduler_config.json"

# diffusers' KarrasDiffusionSchedulers, in its order: the classes a Stable Diffusion pipeline can swap in
KARRAS_DIFFUSION_SCHEDULERS = [
    "DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
    "HeunDiscreteScheduler", "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
    "DEISMultistepScheduler", "UniPCMultistepScheduler", "DPMSolverSDEScheduler", "EDMEulerScheduler",
]

_HUB_KWARGS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision")


@dataclasses.dataclass
class SchedulerOutput(BaseOutput):
    """Result of `step`: `prev_sample` is the next loop input; `pred_original_sample` the denoised estimate."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class SchedulerMixin(ConfigMixin):
    """Base of impasto's schedulers: `from_pretrained` / `save_pretrained` of `scheduler_config.json`,
    `from_config` swaps, `compatibles`, and the step-index bookkeeping of diffusers' schedulers.

    Per-run state (timesteps, sigmas, step index, histories) lives on the instance, as in diffusers; use
    `copy()` / `fresh()` to get an independent instance for each concurrent run.
    """

    config_name = SCHEDULER_CONFIG_NAME
    _compatibles: list[str] = list(KARRAS_DIFFUSION_SCHEDULERS)
    has_compatibles = True
    order = 1
    _step_index: int | None = None
    _begin_index: int | None = None

    # ---- files ------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        subfolder: str | None = None,
        return_unused_kwargs: bool = False,
        **kwargs: Any,
    ):
        """Build from `scheduler_config.json` in a folder (or hub id), optionally inside `subfolder`;
        other keyword arguments override config values."""
        hub = {k: kwargs.pop(k) for k in _HUB_KWARGS if k in kwargs}
        for key in ("force_download", "proxies"):
            if hub.pop(key, None):
                logger.warning("%s.from_pretrained: %s is not used (files come from the cache first)", cls.__name__, key)
        config = cls.load_config(pretrained_model_name_or_path, subfolder=subfolder, **hub)
        return cls.from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs: Any) -> None:
        """Write `scheduler_config.json` (readable by diffusers) into `save_directory`."""
        if push_to_hub:
            raise ValueError("push_to_hub: impasto does not upload; save locally and push with huggingface_hub")
        self.save_config(save_directory)

    # ---- swapping -----------------------------------------------------------------------------------------
    @property
    def compatibles(self) -> list[type]:
        """The scheduler classes that can be built from this one's config (this class included)."""
        return self._get_compatibles()

    @classmethod
    def _get_compatibles(cls) -> list[type]:
        package = importlib.import_module(__name__.split(".")[0])
        exports = getattr(package, "_EXPORTS", {})
        found = []
        for name in dict.fromkeys([cls.__name__] + list(cls._compatibles)):
            if name not in exports:
                continue
            try:
                found.append(getattr(package, name))
            except (ImportError, AttributeError):
                logger.debug("compatible scheduler %s is not available", name)
        return found

    def copy(self):
        """An independent scheduler of the same class and config, with no per-run state. Every value is passed on,
        defaulted ones too: one changed after construction (`register_to_config`, a pipeline's config fix-up)
        must not fall back to its default, which is what `_use_default_values` means to a class swap."""
        config = dict(self.config)
        defaulted = config.pop("_use_default_values", None)
        new = type(self).from_config(config)
        if defaulted:  # a swap from the copy still gives the other class its own defaults
            new.register_to_config(_use_default_values=defaulted)
        return new

    fresh = copy

    # ---- step index -----------------------------------------------------------------------------------------
    @property
    def step_index(self) -> int | None:
        """Index of the current timestep; None until the first `scale_model_input` / `step`."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """First index into `timesteps`, set by pipelines (img2img) through `set_begin_index`."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start stepping at `timesteps[begin_index]` (call before the first step)."""
        self._begin_index = begin_index

    def index_for_timestep(self, timestep, schedule_timesteps: torch.Tensor | None = None) -> int:
        """Position of `timestep` in the schedule; where it repeats (first-order/second-order pairs, or img2img
        starting in the middle), the second occurrence, so no step is skipped."""
        if schedule_timesteps is None:
            schedule_timesteps = self.timesteps
        indices = (schedule_timesteps == timestep).nonzero()
        if len(indices) == 0:
            raise ValueError(f"timestep: {float(timestep)} is not one of this scheduler's timesteps")
        return indices[1 if len(indices) > 1 else 0].item()

    def _init_step_index(self, timestep) -> None:
        if self.begin_index is None:
            if isinstance(timestep, torch.Tensor):
                timestep = timestep.to(self.timesteps.device)
            self._step_index = self.index_for_timestep(timestep)
        else:
            self._step_index = self._begin_index

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    # ---- training schedule ----------------------------------------------------------------------------------
    def _init_train_schedule(self, allowed: Sequence[str] = BETA_SCHEDULES, zero_snr_floor: bool = False) -> None:
        """Set `betas`, `alphas`, `alphas_cumprod` from the config (beta_schedule / trained_betas, optional
        rescale_betas_zero_snr; `zero_snr_floor` puts 2**-24 in place of the final 0 so sigmas stay finite)."""
        c = self.config
        betas = make_betas(c.beta_schedule, c.beta_start, c.beta_end, c.num_train_timesteps, c.trained_betas,
                           allowed=allowed, owner=type(self).__name__)
        zero_snr = bool(c.get("rescale_betas_zero_snr", False))
        if zero_snr:
            betas = rescale_zero_terminal_snr(betas)
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = alphas_cumprod(betas)
        if zero_snr and zero_snr_floor:
            self.alphas_cumprod[-1] = 2**-24

    # ---- checks ---------------------------------------------------------------------------------------------
    def _check_config(
        self,
        prediction_types: Sequence[str] | None = PREDICTION_TYPES,
        spacings: Sequence[str] | None = TIMESTEP_SPACINGS,
        **choices: Sequence,
    ) -> None:
        """Raise ValueError naming the key and allowed values for an unknown prediction_type, timestep_spacing
        or any other `key=allowed_values` given."""
        owner = type(self).__name__
        if prediction_types is not None:
            check_choice(owner, "prediction_type", self.config.prediction_type, prediction_types)
        if spacings is not None:
            check_choice(owner, "timestep_spacing", self.config.timestep_spacing, spacings)
        for key, allowed in choices.items():
            check_choice(owner, key, self.config[key], allowed)
        ladders = [k for k in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas") if self.config.get(k)]
        if len(ladders) > 1:
            raise ValueError(f"{owner}: only one of {', '.join(ladders)} can be True")

    def _check_set_timesteps(self, num_inference_steps, timesteps=None, sigmas=None) -> None:
        """Exactly one of num_inference_steps / timesteps / sigmas; steps within num_train_timesteps."""
        owner = type(self).__name__
        if timesteps is not None and sigmas is not None:
            raise ValueError(f"{owner}.set_timesteps: pass only one of timesteps= or sigmas=, not both")
        given = [n for n, v in (("num_inference_steps", num_inference_steps), ("timesteps", timesteps),
                                ("sigmas", sigmas)) if v is not None]
        if len(given) != 1:
            raise ValueError(
                f"{owner}.set_timesteps: pass exactly one of num_inference_steps, timesteps or sigmas, got "
                f"{', '.join(given) or 'none'}"
            )
        if num_inference_steps is not None:
            total = self.config.num_train_timesteps
            if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, numbers.Integral):
                raise ValueError(f"{owner}: num_inference_steps must be an int, got {num_inference_steps!r}")
            if not 1 <= num_inference_steps <= total:
                raise ValueError(
                    f"{owner}: num_inference_steps={num_inference_steps} must be between 1 and "
                    f"num_train_timesteps={total}"
                )

