"""TCDScheduler: strategic stochastic sampling for trajectory consistency distillation (arXiv:2402.19159)."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..core.noise import randn_tensor
from ..core.samplers import alpha_predictions
from ..outputs import BaseOutput
from .lcm import LCMScheduler


@dataclasses.dataclass
class TCDSchedulerOutput(BaseOutput):
    """`prev_sample`: the next loop input; `pred_noised_sample`: the model's estimate moved to the intermediate
    timestep s = floor((1 - gamma) * t_prev)."""

    prev_sample: torch.Tensor
    pred_noised_sample: torch.Tensor | None = None


class TCDScheduler(LCMScheduler):
    """TCD sampler with diffusers' config keys (the same as LCMScheduler's) and schedule: each step moves the
    model's x0 / eps estimate to s = floor((1 - gamma) * t_prev), then re-noises it to t_prev with one noise tensor
    from `generator` (not after the last step). gamma is `step(..., eta=)`, as pipelines pass their `eta`:
    0 is deterministic (no noise is drawn), 1 is LCM-like multistep consistency sampling.

    As in diffusers, an explicit `set_timesteps(original_inference_steps=...)` picks from every training timestep
    rather than from that many distillation steps, and `clip_sample` / `thresholding` are accepted but not applied.
    """

    def _origin_timesteps(self, original_inference_steps, strength: float) -> tuple[np.ndarray, int]:
        if original_inference_steps is None:
            return super()._origin_timesteps(None, strength)
        # diffusers' TCD: a value passed here (not the config's) makes every training timestep a candidate
        total = self.config.num_train_timesteps
        return np.arange(int(total * strength)), original_inference_steps

    def step(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor, eta: float = 0.3,
             generator=None, return_dict: bool = True):
        """One TCD step from `timestep` to the next timestep of the schedule, with gamma = `eta` (0 to 1)."""
        if not 0 <= eta <= 1:
            raise ValueError(f"eta: TCD's gamma must be between 0 and 1, got {eta!r}")
        self._start_step(timestep)
        nxt = self.step_index + 1
        prev_timestep = self.timesteps[nxt] if nxt < len(self.timesteps) else torch.tensor(0)
        timestep_s = torch.floor((1 - eta) * prev_timestep).to(dtype=torch.long)
        alpha_prod_t = self.alphas_cumprod[timestep]
        alpha_prod_t_prev = self._alpha_prev(prev_timestep)
        alpha_prod_s = self.alphas_cumprod[timestep_s]
        x0, eps = alpha_predictions(model_output, sample, alpha_prod_t, self.config.prediction_type)
        pred_noised_sample = alpha_prod_s.sqrt() * x0 + (1 - alpha_prod_s).sqrt() * eps
        if eta > 0 and self.step_index != self.num_inference_steps - 1:
            noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                 dtype=pred_noised_sample.dtype)
            ratio = alpha_prod_t_prev / alpha_prod_s
            prev_sample = ratio.sqrt() * pred_noised_sample + (1 - ratio).sqrt() * noise
        else:
            prev_sample = pred_noised_sample
        self._step_index += 1
        if not return_dict:
            return prev_sample, pred_noised_sample
        return TCDSchedulerOutput(prev_sample=prev_sample, pred_noised_sample=pred_noised_sample)
