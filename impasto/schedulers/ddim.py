"""DDIMScheduler: denoising diffusion implicit models (arXiv:2010.02502), deterministic at eta = 0."""
from __future__ import annotations

import numpy as np
import torch

from ..core.noise import randn_tensor
from ..core.samplers import (
    add_noise_alpha,
    alpha_predictions,
    clip_or_threshold,
    ddim_step,
    ddim_variance,
    velocity_alpha,
)
from ..models.config import register_to_config
from .base import SchedulerMixin, SchedulerOutput


class AlphaScheduler(SchedulerMixin):
    """Shared by the alpha-form schedulers (DDIM, DDPM, PNDM, LCM): integer timesteps index alphas_cumprod."""

    init_noise_sigma = 1.0

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """The alpha-form model input is the sample itself."""
        return sample

    def _alpha_prev(self, prev_timestep):
        return self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod

    def _int_timesteps(self, num_inference_steps: int) -> np.ndarray:
        from ..core.schedule import spaced_timesteps

        c = self.config
        ts = spaced_timesteps(c.timestep_spacing, num_inference_steps, c.num_train_timesteps, c.steps_offset,
                              owner=type(self).__name__)
        return np.round(ts).astype(np.int64)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """q(x_t | x0): sqrt(a_t) x0 + sqrt(1 - a_t) noise at integer timesteps."""
        return add_noise_alpha(self.alphas_cumprod, original_samples, noise, timesteps)

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The v-prediction training target at integer timesteps."""
        return velocity_alpha(self.alphas_cumprod, sample, noise, timesteps)


class DDIMScheduler(AlphaScheduler):
    """DDIM with diffusers' config keys (`clip_sample`, `set_alpha_to_one`, `thresholding`,
    `rescale_betas_zero_snr`, ...); `step(..., eta=)` interpolates towards DDPM (eta = 1).

    The schedule lives on the instance (`timesteps`, `num_inference_steps`); use `copy()` / `fresh()` per run.
    """

    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas=None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
    ):
        self._check_config()
        self._init_train_schedule()
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.num_inference_steps = None
        self.timesteps = torch.from_numpy(np.arange(0, num_train_timesteps)[::-1].copy().astype(np.int64))

    def _get_variance(self, timestep, prev_timestep):
        return ddim_variance(self.alphas_cumprod[timestep], self._alpha_prev(prev_timestep))

    def set_timesteps(self, num_inference_steps: int, device=None):
        """Integer timesteps spaced by `timestep_spacing`."""
        self._check_set_timesteps(num_inference_steps)
        self.num_inference_steps = num_inference_steps
        self.timesteps = torch.from_numpy(self._int_timesteps(num_inference_steps)).to(device)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator=None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ):
        """One DDIM update from `timestep` to the previous one of the schedule (eta > 0 adds noise)."""
        if self.num_inference_steps is None:
            raise ValueError("DDIMScheduler.step: call set_timesteps(num_inference_steps) first")
        prev_timestep = timestep - self.config.num_train_timesteps // self.num_inference_steps
        alpha_prod_t = self.alphas_cumprod[timestep]
        alpha_prod_t_prev = self._alpha_prev(prev_timestep)
        x0, eps = alpha_predictions(model_output, sample, alpha_prod_t, self.config.prediction_type)
        x0 = clip_or_threshold(x0, self.config)
        std_dev_t = eta * self._get_variance(timestep, prev_timestep) ** 0.5
        if use_clipped_model_output:
            eps = (sample - alpha_prod_t**0.5 * x0) / (1 - alpha_prod_t) ** 0.5
        prev_sample = ddim_step(x0, eps, alpha_prod_t_prev, std_dev_t)
        if eta > 0:
            if variance_noise is not None and generator is not None:
                raise ValueError("variance_noise: pass either generator or variance_noise, not both")
            if variance_noise is None:
                variance_noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                              dtype=model_output.dtype)
            prev_sample = prev_sample + std_dev_t * variance_noise
        if not return_dict:
            return prev_sample, x0
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)
