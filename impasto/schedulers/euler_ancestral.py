"""EulerAncestralDiscreteScheduler: Euler steps to sigma_down plus fresh noise of std sigma_up ("Euler a")."""
from __future__ import annotations

import torch

from ..core.noise import randn_tensor
from ..core.samplers import ancestral_sigmas, euler_step, sigma_x0
from ..models.config import register_to_config
from .base import SchedulerOutput
from .discrete import SigmaScheduler


class EulerAncestralDiscreteScheduler(SigmaScheduler):
    """Ancestral Euler sampler (k-diffusion's `sample_euler_ancestral`, eta = 1) with diffusers' config keys.

    Each step draws one noise tensor shaped like the model output from `generator`, as diffusers does, so a
    seed gives the same image. Per-run state lives on the instance; use `copy()` / `fresh()` per run.
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
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ):
        self._check_config(prediction_types=("epsilon", "v_prediction"))
        self._init_train_schedule(zero_snr_floor=True)
        self._initial_sigmas()

    def set_timesteps(self, num_inference_steps: int, device=None):
        """Interpolated sigmas at the spaced timesteps, then a final 0."""
        self._check_set_timesteps(num_inference_steps)
        self.num_inference_steps = num_inference_steps
        timesteps = self._spaced(num_inference_steps)
        sigmas, _ = self._ladder(timesteps, num_inference_steps)
        sigmas = torch.cat([torch.from_numpy(sigmas.astype("float32")), torch.zeros(1)])
        self.sigmas = sigmas.to(device=device).to("cpu")
        self.timesteps = torch.from_numpy(timesteps).to(device=device)
        self._step_index = None
        self._begin_index = None

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None,
             return_dict: bool = True):
        """Euler step to sigma_down, then add noise * sigma_up."""
        self._check_float_timestep(timestep)
        self._warn_unscaled()
        if self.step_index is None:
            self._init_step_index(timestep)
        sigma = self.sigmas[self.step_index]
        sample = sample.to(torch.float32)
        x0 = sigma_x0(model_output, sample, sigma, self.config.prediction_type)
        sigma_up, sigma_down = ancestral_sigmas(sigma, self.sigmas[self.step_index + 1])
        prev_sample = euler_step(sample, x0, sigma, sigma_down)
        noise = randn_tensor(model_output.shape, dtype=model_output.dtype, device=model_output.device,
                             generator=generator)
        prev_sample = (prev_sample + noise * sigma_up).to(model_output.dtype)
        self._step_index += 1
        if not return_dict:
            return prev_sample, x0
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)
