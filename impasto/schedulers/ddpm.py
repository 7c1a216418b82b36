"""DDPMScheduler: ancestral sampling of denoising diffusion probabilistic models (arXiv:2006.11239)."""
from __future__ import annotations

import numpy as np
import torch

from ..core.noise import randn_tensor
from ..core.samplers import alpha_predictions, clip_or_threshold, ddpm_posterior_mean
from ..models.config import register_to_config
from .base import SchedulerOutput
from .ddim import AlphaScheduler

VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")


class DDPMScheduler(AlphaScheduler):
    """DDPM with diffusers' config keys (`variance_type`, `clip_sample`, `thresholding`, ...). Every step but
    the last draws one noise tensor shaped like the model output from `generator`, as diffusers does.

    The schedule lives on the instance; use `copy()` / `fresh()` for each concurrent run.
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
        variance_type: str = "fixed_small",
        clip_sample: bool = True,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ):
        self._check_config(variance_type=VARIANCE_TYPES)
        self._init_train_schedule(allowed=("linear", "scaled_linear", "squaredcos_cap_v2", "laplace", "sigmoid"))
        self.one = torch.tensor(1.0)
        self.final_alpha_cumprod = self.one
        self.custom_timesteps = False
        self.num_inference_steps = None
        self.timesteps = torch.from_numpy(np.arange(0, num_train_timesteps)[::-1].copy())
        self.variance_type = variance_type

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, timesteps=None):
        """Spaced integer timesteps, or custom strictly descending `timesteps` below num_train_timesteps."""
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError("DDPMScheduler.set_timesteps: pass only one of num_inference_steps or timesteps")
        if timesteps is not None:
            if any(timesteps[i] >= timesteps[i - 1] for i in range(1, len(timesteps))):
                raise ValueError("timesteps: must be in strictly descending order")
            if timesteps[0] >= self.config.num_train_timesteps:
                raise ValueError(f"timesteps: must start below num_train_timesteps={self.config.num_train_timesteps}")
            ts = np.array(timesteps, dtype=np.int64)
            self.custom_timesteps = True
        else:
            self._check_set_timesteps(num_inference_steps)
            self.num_inference_steps = num_inference_steps
            self.custom_timesteps = False
            ts = self._int_timesteps(num_inference_steps)
        self.timesteps = torch.from_numpy(ts).to(device)

    def previous_timestep(self, timestep):
        """The timestep after `timestep` in the schedule (-1 at the end)."""
        if self.custom_timesteps or self.num_inference_steps:
            index = (self.timesteps == timestep).nonzero(as_tuple=True)[0][0]
            if index == self.timesteps.shape[0] - 1:
                return torch.tensor(-1)
            return self.timesteps[index + 1]
        return timestep - 1

    def _get_variance(self, t, predicted_variance=None, variance_type=None):
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self._alpha_prev(self.previous_timestep(t))
        beta_t = 1 - alpha_prod_t / alpha_prod_t_prev
        variance = torch.clamp((1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * beta_t, min=1e-20)
        kind = variance_type or self.config.variance_type
        if kind == "fixed_small_log":
            return torch.exp(0.5 * torch.log(variance))
        if kind == "fixed_large":
            return beta_t
        if kind == "fixed_large_log":
            return torch.log(beta_t)
        if kind == "learned":
            return predicted_variance
        if kind == "learned_range":
            frac = (predicted_variance + 1) / 2
            return frac * torch.log(beta_t) + (1 - frac) * torch.log(variance)
        return variance

    def step(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor, generator=None,
             return_dict: bool = True):
        """Posterior mean of x_prev given x0, plus noise of the configured variance (none at t = 0)."""
        t = timestep
        prev_t = self.previous_timestep(t)
        predicted_variance = None
        if model_output.shape[1] == sample.shape[1] * 2 and self.variance_type in ("learned", "learned_range"):
            model_output, predicted_variance = torch.split(model_output, sample.shape[1], dim=1)
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self._alpha_prev(prev_t)
        x0, _ = alpha_predictions(model_output, sample, alpha_prod_t, self.config.prediction_type)
        x0 = clip_or_threshold(x0, self.config)
        prev_sample = ddpm_posterior_mean(x0, sample, alpha_prod_t, alpha_prod_t_prev)
        if t > 0:
            noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                 dtype=model_output.dtype)
            variance = self._get_variance(t, predicted_variance=predicted_variance)
            if self.variance_type == "fixed_small_log":
                prev_sample = prev_sample + variance * noise
            elif self.variance_type == "learned_range":
                prev_sample = prev_sample + torch.exp(0.5 * variance) * noise
            else:
                prev_sample = prev_sample + variance**0.5 * noise
        if not return_dict:
            return prev_sample, x0
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)
