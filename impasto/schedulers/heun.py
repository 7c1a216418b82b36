"""HeunDiscreteScheduler: Heun's second-order method (Karras et al. 2022, algorithm 1), two model calls a step."""
from __future__ import annotations

import numpy as np
import torch

from ..core.samplers import heun_correct, sigma_x0
from ..models.config import register_to_config
from .base import SchedulerOutput
from .discrete import SigmaScheduler


class HeunDiscreteScheduler(SigmaScheduler):
    """Heun sampler with diffusers' config keys. `timesteps` repeats every timestep but the first, so a loop
    over it makes the Euler predictor call and the corrector call in turn (`order` = 2).

    Per-run state (sigmas, step index, the pending predictor) lives on the instance; use `copy()` / `fresh()`.
    """

    order = 2

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "linear",
        trained_betas=None,
        prediction_type: str = "epsilon",
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ):
        self._check_config()
        self._init_train_schedule(allowed=("linear", "scaled_linear", "squaredcos_cap_v2", "exp"))
        self.set_timesteps(num_train_timesteps, None, num_train_timesteps)
        self.use_karras_sigmas = use_karras_sigmas

    @property
    def state_in_first_order(self) -> bool:
        """True before the predictor (Euler) half of a step, False before the corrector."""
        return self.dt is None

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, num_train_timesteps=None,
                      timesteps=None):
        """Sigma ladder for `num_inference_steps` (or custom descending `timesteps`), each inner sigma doubled."""
        if num_inference_steps is not None and timesteps is None and num_train_timesteps is None:
            self._check_set_timesteps(num_inference_steps)
        elif (num_inference_steps is None) == (timesteps is None):
            raise ValueError("HeunDiscreteScheduler.set_timesteps: pass exactly one of num_inference_steps or timesteps")
        if timesteps is not None and self._ladder_kind() is not None:
            raise ValueError(f"timesteps: cannot be given with use_{self._ladder_kind()}_sigmas=True")
        num_inference_steps = num_inference_steps or len(timesteps)
        self.num_inference_steps = num_inference_steps
        if timesteps is not None:
            timesteps = np.array(timesteps, dtype=np.float32)
        else:
            timesteps = self._spaced(num_inference_steps, num_train_timesteps)
        sigmas, timesteps = self._ladder(timesteps, num_inference_steps)
        sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32)).to(device=device)
        self.sigmas = torch.cat([sigmas[:1], sigmas[1:-1].repeat_interleave(2), sigmas[-1:]]).to("cpu")
        timesteps = torch.from_numpy(np.asarray(timesteps))
        timesteps = torch.cat([timesteps[:1], timesteps[1:].repeat_interleave(2)])
        self.timesteps = timesteps.to(device=device, dtype=torch.float32)
        self.prev_derivative = None
        self.dt = None
        self.sample = None
        self._step_index = None
        self._begin_index = None

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True):
        """Predictor (Euler to the next sigma) on even calls, corrector (average slope) on odd ones."""
        if self.step_index is None:
            self._init_step_index(timestep)
        first = self.state_in_first_order
        if first:
            sigma, sigma_next = self.sigmas[self.step_index], self.sigmas[self.step_index + 1]
        else:
            sigma, sigma_next = self.sigmas[self.step_index - 1], self.sigmas[self.step_index]
        x0_sigma = sigma if first else sigma_next
        x0 = sigma_x0(model_output, sample, x0_sigma, self.config.prediction_type)
        if self.config.clip_sample:
            x0 = x0.clamp(-self.config.clip_sample_range, self.config.clip_sample_range)
        if first:
            derivative = (sample - x0) / sigma
            dt = sigma_next - sigma
            self.prev_derivative, self.dt, self.sample = derivative, dt, sample
        else:
            derivative = heun_correct(self.prev_derivative, (sample - x0) / sigma_next)
            dt, sample = self.dt, self.sample
            self.prev_derivative = self.dt = self.sample = None
        prev_sample = sample + derivative * dt
        self._step_index += 1
        if not return_dict:
            return prev_sample, x0
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)
