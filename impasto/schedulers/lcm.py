"""LCMScheduler: multistep sampling of latent consistency models (arXiv:2310.04378)."""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch

from ..core.noise import randn_tensor
from ..core.samplers import alpha_predictions, clip_or_threshold
from ..models.config import register_to_config
from ..outputs import BaseOutput
from .ddim import AlphaScheduler

logger = logging.getLogger("impasto")


@dataclasses.dataclass
class LCMSchedulerOutput(BaseOutput):
    """`prev_sample`: the next loop input; `denoised`: the consistency model's x0 estimate."""

    prev_sample: torch.Tensor
    denoised: torch.Tensor | None = None


class LCMScheduler(AlphaScheduler):
    """LCM sampler with diffusers' config keys (`original_inference_steps`, `timestep_scaling`, ...): each step
    maps x_t to x0 with the consistency boundary scalings, then re-noises it to the next timestep with one
    noise tensor drawn from `generator` (not after the last step).

    The schedule and step index live on the instance; use `copy()` / `fresh()` for each concurrent run.
    """

    order = 1
    _compatibles: list[str] = []  # as in diffusers: LCM is not one of the Karras-swappable schedulers

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
        trained_betas=None,
        original_inference_steps: int = 50,
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        timestep_scaling: float = 10.0,
        rescale_betas_zero_snr: bool = False,
    ):
        self._check_config()
        self._init_train_schedule()
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.num_inference_steps = None
        self.timesteps = torch.from_numpy(np.arange(0, num_train_timesteps)[::-1].copy().astype(np.int64))
        self.custom_timesteps = False

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, original_inference_steps=None,
                      timesteps=None, strength: float = 1.0):
        """`num_inference_steps` evenly chosen from the `original_inference_steps` distillation timesteps
        (scaled by `strength` for img2img), or custom descending `timesteps`."""
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError(
                f"{type(self).__name__}.set_timesteps: pass exactly one of num_inference_steps or timesteps"
            )
        origin, original = self._origin_timesteps(original_inference_steps, strength)
        if timesteps is not None:
            self._check_custom(timesteps, origin, original, strength)
            timesteps = np.array(timesteps, dtype=np.int64)
            self.num_inference_steps = len(timesteps)
            self.custom_timesteps = True
            init = min(int(self.num_inference_steps * strength), self.num_inference_steps)
            timesteps = timesteps[max(self.num_inference_steps - init, 0) * self.order:]
        else:
            self._check_set_timesteps(num_inference_steps)
            if len(origin) // num_inference_steps < 1:
                raise ValueError(
                    f"num_inference_steps={num_inference_steps} exceeds the {len(origin)} timesteps of the "
                    f"distillation schedule (original_inference_steps={original}, strength={strength}); lower "
                    "num_inference_steps or raise strength"
                )
            if num_inference_steps > original:
                raise ValueError(f"num_inference_steps={num_inference_steps} must not exceed "
                                 f"original_inference_steps={original}")
            self.num_inference_steps = num_inference_steps
            origin = origin[::-1].copy()
            idx = np.floor(np.linspace(0, len(origin), num=num_inference_steps, endpoint=False)).astype(np.int64)
            timesteps = origin[idx]
        self.timesteps = torch.from_numpy(timesteps).to(device=device, dtype=torch.long)
        self._step_index = None
        self._begin_index = None

    def _origin_timesteps(self, original_inference_steps, strength: float) -> tuple[np.ndarray, int]:
        """(the ascending distillation timesteps that inference timesteps are picked from, their nominal count):
        every (num_train_timesteps // original)-th timestep, the first int(original x strength) of them."""
        total = self.config.num_train_timesteps
        original = original_inference_steps
        if original is None:
            original = self.config.original_inference_steps
        if original > total:
            raise ValueError(f"original_inference_steps={original} must not exceed num_train_timesteps={total}")
        k = total // original
        return np.asarray(list(range(1, int(original * strength) + 1))) * k - 1, original

    def _check_custom(self, timesteps, origin, original, strength) -> None:
        total = self.config.num_train_timesteps
        if any(timesteps[i] >= timesteps[i - 1] for i in range(1, len(timesteps))):
            raise ValueError("timesteps: must be in strictly descending order")
        if timesteps[0] >= total:
            raise ValueError(f"timesteps: must start below num_train_timesteps={total}")
        if strength == 1.0 and timesteps[0] != total - 1:
            logger.warning("%s: custom timesteps start at %s, not %s", type(self).__name__, timesteps[0], total - 1)
        outside = [t for t in timesteps[1:] if t not in set(origin)]
        if outside:
            logger.warning("%s: custom timesteps %s are not on the distillation schedule", type(self).__name__, outside)
        if len(timesteps) > original:
            logger.warning("%s: %d custom timesteps exceed original_inference_steps=%d", type(self).__name__,
                           len(timesteps), original)

    def _start_step(self, timestep) -> None:
        if self.num_inference_steps is None:
            raise ValueError(f"{type(self).__name__}.step: call set_timesteps(num_inference_steps) first")
        if self.step_index is None:
            self._init_step_index(timestep)

    def get_scalings_for_boundary_condition_discrete(self, timestep):
        """(c_skip, c_out) of the consistency parameterisation at `timestep` (sigma_data = 0.5)."""
        self.sigma_data = 0.5
        scaled = timestep * self.config.timestep_scaling
        c_skip = self.sigma_data**2 / (scaled**2 + self.sigma_data**2)
        c_out = scaled / (scaled**2 + self.sigma_data**2) ** 0.5
        return c_skip, c_out

    def step(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor, generator=None,
             return_dict: bool = True):
        """Consistency-model x0 estimate, re-noised to the next timestep (except at the last step)."""
        self._start_step(timestep)
        nxt = self.step_index + 1
        prev_timestep = self.timesteps[nxt] if nxt < len(self.timesteps) else timestep
        alpha_prod_t = self.alphas_cumprod[timestep]
        alpha_prod_t_prev = self._alpha_prev(prev_timestep)
        c_skip, c_out = self.get_scalings_for_boundary_condition_discrete(timestep)
        x0, _ = alpha_predictions(model_output, sample, alpha_prod_t, self.config.prediction_type)
        x0 = clip_or_threshold(x0, self.config)
        denoised = c_out * x0 + c_skip * sample
        if self.step_index != self.num_inference_steps - 1:
            noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                 dtype=denoised.dtype)
            prev_sample = alpha_prod_t_prev.sqrt() * denoised + (1 - alpha_prod_t_prev).sqrt() * noise
        else:
            prev_sample = denoised
        self._step_index += 1
        if not return_dict:
            return prev_sample, denoised
        return LCMSchedulerOutput(prev_sample=prev_sample, denoised=denoised)

    def previous_timestep(self, timestep):
        """The timestep after `timestep` in the schedule (-1 at the end)."""
        if self.custom_timesteps or self.num_inference_steps:
            index = (self.timesteps == timestep).nonzero(as_tuple=True)[0][0]
            if index == self.timesteps.shape[0] - 1:
                return torch.tensor(-1)
            return self.timesteps[index + 1]
        return timestep - 1
