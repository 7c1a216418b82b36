"""KDPM2AncestralDiscreteScheduler: DPM-2 towards sigma_down, plus fresh noise of std sigma_up ("DPM2 a")."""
from __future__ import annotations

import torch

from ..core.noise import randn_tensor
from ..core.samplers import ancestral_sigmas, sigma_x0
from .base import SchedulerOutput
from .kdpm2 import KDPM2DiscreteScheduler, _double_inner


class KDPM2AncestralDiscreteScheduler(KDPM2DiscreteScheduler):
    """Ancestral DPM-2 with diffusers' config keys (the same as KDPM2DiscreteScheduler). The second half of
    each step draws one noise tensor shaped like the model output from `generator`, as diffusers does.

    Per-run state lives on the instance; use `copy()` / `fresh()` for each concurrent run.
    """

    _ancestral = True

    def _midpoints_and_noise(self, sigmas: torch.Tensor) -> torch.Tensor:
        sigmas_next = sigmas.roll(-1)
        sigmas_next[-1] = 0.0
        sigmas_up, sigmas_down = ancestral_sigmas(sigmas, sigmas_next)
        sigmas_down[-1] = 0.0
        interpol = sigmas.log().lerp(sigmas_down.log(), 0.5).exp()
        interpol[-2:] = 0.0
        self.sigmas_up = _double_inner(sigmas_up)
        self.sigmas_down = _double_inner(sigmas_down)
        return interpol

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None,
             return_dict: bool = True):
        """First half: Euler to the midpoint towards sigma_down; second half: midpoint slope to sigma_down,
        then noise * sigma_up."""
        if self.step_index is None:
            self._init_step_index(timestep)
        i = self.step_index
        first = self.state_in_first_order
        j = i if first else i - 1
        sigma = self.sigmas[j]
        sigma_mid, sigma_up, sigma_down = self.sigmas_interpol[j], self.sigmas_up[j], self.sigmas_down[i - 1]
        x0 = sigma_x0(model_output, sample, sigma if first else sigma_mid, self.config.prediction_type)
        if first:
            derivative = (sample - x0) / sigma
            self.dt = sigma_mid - sigma
            self.sample = sample
            prev_sample = sample + derivative * self.dt
        else:
            derivative = (sample - x0) / sigma_mid
            sample, self.sample = self.sample, None
            prev_sample = sample + derivative * (sigma_down - sigma)
            noise = randn_tensor(model_output.shape, dtype=model_output.dtype, device=model_output.device,
                                 generator=generator)
            prev_sample = prev_sample + noise * sigma_up
        self._step_index += 1
        if not return_dict:
            return prev_sample, x0
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)
