"""KDPM2DiscreteScheduler: k-diffusion's DPM-2, a midpoint method in log-sigma (Karras et al. 2022)."""
from __future__ import annotations

import numpy as np
import torch

from ..core.samplers import sigma_x0
from ..core.schedule import sigma_to_t
from ..models.config import register_to_config
from .base import SchedulerOutput
from .discrete import SigmaScheduler


def _double_inner(values: torch.Tensor) -> torch.Tensor:
    """[v0, v1, v1, v2, v2, ..., vn, vn, vn]: the layout of the two calls per step."""
    return torch.cat([values[:1], values[1:].repeat_interleave(2), values[-1:]])


class KDPM2DiscreteScheduler(SigmaScheduler):
    """DPM-2 sampler with diffusers' config keys: each step evaluates the model at sigma and at the geometric
    midpoint between sigma and the next sigma (`order` = 2, two entries per step in `timesteps`).

    Per-run state (sigmas, step index, the pending first-half sample) lives on the instance; use `copy()`.
    """

    order = 2
    _ancestral = False

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "linear",
        trained_betas=None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ):
        self._check_config(prediction_types=("epsilon", "v_prediction"))
        self._init_train_schedule()
        self.set_timesteps(num_train_timesteps, None, num_train_timesteps)

    @property
    def state_in_first_order(self) -> bool:
        """True before the first (sigma) half of a step, False before the midpoint half."""
        return self.sample is None

    def _input_sigma(self) -> torch.Tensor:
        if self.state_in_first_order:
            return self.sigmas[self.step_index]
        return self.sigmas_interpol[self.step_index - 1 if self._ancestral else self.step_index]

    def _midpoints(self, sigmas: torch.Tensor) -> torch.Tensor:
        """Geometric midpoints between each sigma and the previous one (index 0 is unused)."""
        return sigmas.log().lerp(sigmas.roll(1).log(), 0.5).exp()

    def set_timesteps(self, num_inference_steps: int, device=None, num_train_timesteps: int | None = None):
        """Sigma ladder and the interleaved (midpoint timestep, timestep) schedule."""
        if num_train_timesteps is None:
            self._check_set_timesteps(num_inference_steps)
        self.num_inference_steps = num_inference_steps
        timesteps = self._spaced(num_inference_steps, num_train_timesteps)
        sigmas, timesteps = self._ladder(timesteps, num_inference_steps)
        if self._ladder_kind() == "karras":
            timesteps = np.round(timesteps)
        log_sigmas = np.log(self._train_sigmas())
        self.log_sigmas = torch.from_numpy(log_sigmas).to(device=device)
        sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32)).to(device=device)
        interpol = self._midpoints_and_noise(sigmas)
        self.sigmas = _double_inner(sigmas).to("cpu")
        self.sigmas_interpol = _double_inner(interpol)
        timesteps = torch.from_numpy(np.asarray(timesteps)).to(device)
        t_interpol = sigma_to_t(interpol.cpu(), self.log_sigmas.cpu()).to(device, dtype=timesteps.dtype)
        mids = t_interpol[:-2] if self._ancestral else t_interpol[1:-1]
        self.timesteps = torch.cat([timesteps[:1], torch.stack((mids[:, None], timesteps[1:, None]), dim=-1).flatten()])
        self.sample = None
        self._step_index = None
        self._begin_index = None

    def _midpoints_and_noise(self, sigmas: torch.Tensor) -> torch.Tensor:
        return self._midpoints(sigmas)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True):
        """First half: Euler from sigma to the midpoint; second half: the midpoint slope over the whole step."""
        if self.step_index is None:
            self._init_step_index(timestep)
        i = self.step_index
        if self.state_in_first_order:
            sigma, sigma_mid, sigma_next = self.sigmas[i], self.sigmas_interpol[i + 1], self.sigmas[i + 1]
        else:
            sigma, sigma_mid, sigma_next = self.sigmas[i - 1], self.sigmas_interpol[i], self.sigmas[i]
        first = self.state_in_first_order
        x0 = sigma_x0(model_output, sample, sigma if first else sigma_mid, self.config.prediction_type)
        if first:
            derivative = (sample - x0) / sigma
            dt = sigma_mid - sigma
            self.sample = sample
        else:
            derivative = (sample - x0) / sigma_mid
            dt = sigma_next - sigma
            sample, self.sample = self.sample, None
        self._step_index += 1
        prev_sample = sample + derivative * dt
        if not return_dict:
            return prev_sample, x0
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)
