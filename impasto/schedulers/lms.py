"""LMSDiscreteScheduler: k-diffusion's linear multistep method (Adams-Bashforth in sigma, up to 4 steps)."""
from __future__ import annotations

import numpy as np
import torch

from ..core.samplers import lms_coefficient, sigma_x0
from ..models.config import register_to_config
from .base import SchedulerOutput
from .discrete import SigmaScheduler


class LMSDiscreteScheduler(SigmaScheduler):
    """Linear multistep sampler with diffusers' config keys. `step(..., order=4)` combines the last `order`
    slopes with coefficients integrated exactly over the sigma interval.

    Per-run state (sigmas, step index, the slope history) lives on the instance; use `copy()` / `fresh()`.
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
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ):
        self._check_config()
        self._init_train_schedule()
        self._initial_sigmas()
        self.use_karras_sigmas = use_karras_sigmas
        self.set_timesteps(num_train_timesteps, None)

    def set_timesteps(self, num_inference_steps: int, device=None):
        """Sigma ladder for `num_inference_steps`, ending in 0; clears the slope history."""
        self._check_set_timesteps(num_inference_steps)
        self.num_inference_steps = num_inference_steps
        sigmas, timesteps = self._ladder(self._spaced(num_inference_steps), num_inference_steps)
        sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
        self.sigmas = torch.from_numpy(sigmas).to(device=device).to("cpu")
        self.timesteps = torch.from_numpy(np.asarray(timesteps)).to(device=device, dtype=torch.float32)
        self._step_index = None
        self._begin_index = None
        self.derivatives = []

    def get_lms_coefficient(self, order: int, t: int, current_order: int) -> float:
        """Weight of the slope `current_order` steps back in an `order`-step update at sigma index t."""
        return lms_coefficient(self.sigmas.tolist(), order, t, current_order)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, order: int = 4,
             return_dict: bool = True):
        """x_next = x + sum_k c_k d_{i-k} over the last min(i + 1, order) slopes d = (x - x0) / sigma."""
        self._warn_unscaled()
        if self.step_index is None:
            self._init_step_index(timestep)
        sigma = self.sigmas[self.step_index]
        x0 = sigma_x0(model_output, sample, sigma, self.config.prediction_type)
        self.derivatives.append((sample - x0) / sigma)
        if len(self.derivatives) > order:
            self.derivatives.pop(0)
        order = min(self.step_index + 1, order)
        coeffs = [self.get_lms_coefficient(order, self.step_index, k) for k in range(order)]
        prev_sample = sample + sum(c * d for c, d in zip(coeffs, reversed(self.derivatives)))
        self._step_index += 1
        if not return_dict:
            return prev_sample, x0
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)
