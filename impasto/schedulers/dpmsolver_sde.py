"""DPMSolverSDEScheduler: k-diffusion's DPM-Solver++ SDE (A1111's "DPM++ SDE" / "DPM++ SDE Karras").

Each step makes two model calls: an ancestral DPM-Solver++ step to the log-sigma midpoint, then one over the
whole step from the midpoint's prediction; both add Brownian noise. The noise comes from
`impasto.core.brownian`, which draws it exactly as torchsde's Brownian interval does in diffusers, so a
`noise_sampler_seed` gives diffusers' images without torchsde.
"""
from __future__ import annotations

import numbers

import numpy as np
import torch

from ..core.brownian import BrownianNoiseSampler
from ..core.samplers import euler_step, sigma_x0
from ..core.schedule import sigma_to_t, spaced_timesteps
from ..models.config import register_to_config
from .base import SchedulerOutput
from .discrete import SigmaScheduler


def _check_seed(seed) -> None:
    ok = seed is None or (isinstance(seed, numbers.Integral) and not isinstance(seed, bool) and seed >= 0)
    if not ok and isinstance(seed, (list, tuple)):
        ok = all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 0 for s in seed)
    if not ok:
        raise ValueError(f"noise_sampler_seed: expected None, a non-negative int or a list of them (one per "
                         f"sample), got {seed!r}")


class DPMSolverSDEScheduler(SigmaScheduler):
    """DPM-Solver++ SDE sampler with diffusers' config keys. `timesteps` interleaves each step's timestep with
    its midpoint's (`order` = 2); the last step, to sigma 0, is a single Euler call.

    The Brownian noise is fixed by `noise_sampler_seed` (the config key, or the attribute of the same name);
    None draws a seed from torch's global generator at the first step, as diffusers does.
    Per-run state (sigmas, step index, the pending first half, the noise sampler) lives on the instance; use
    `copy()` / `fresh()` for each concurrent run.
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
        noise_sampler_seed: int | None = None,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ):
        self._check_config(prediction_types=("epsilon", "v_prediction"))
        _check_seed(noise_sampler_seed)
        self._init_train_schedule()
        self.set_timesteps(num_train_timesteps, None, num_train_timesteps)
        self.noise_sampler_seed = noise_sampler_seed

    def copy(self):
        """An independent scheduler of the same class, config and `noise_sampler_seed`, with no per-run state."""
        new = super().copy()
        new.noise_sampler_seed = self.noise_sampler_seed
        return new

    fresh = copy

    @property
    def state_in_first_order(self) -> bool:
        """True before the first half of a step (at sigma), False before the midpoint half."""
        return self.sample is None

    def _input_sigma(self) -> torch.Tensor:
        return self.sigmas[self.step_index] if self.state_in_first_order else self.mid_point_sigma

    def set_timesteps(self, num_inference_steps: int, device=None, num_train_timesteps: int | None = None):
        """Sigma ladder (each inner sigma twice) and timesteps (float64, as diffusers keeps them) with each
        step's log-sigma midpoint timestep between its two neighbours."""
        if num_train_timesteps is None:
            self._check_set_timesteps(num_inference_steps)
        self.num_inference_steps = num_inference_steps
        c = self.config
        timesteps = spaced_timesteps(c.timestep_spacing, num_inference_steps, num_train_timesteps or
                                     c.num_train_timesteps, c.steps_offset, owner=type(self).__name__)
        sigmas, timesteps = self._ladder(timesteps, num_inference_steps)
        log_t = -np.log(sigmas)
        mid_timesteps = sigma_to_t(np.exp(-(log_t[:-1] + np.diff(log_t) * 0.5)), np.log(self._train_sigmas()))
        sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))
        self.sigmas = torch.cat([sigmas[:1], sigmas[1:-1].repeat_interleave(2), sigmas[-1:]])
        timesteps = torch.from_numpy(np.asarray(timesteps))
        timesteps = torch.cat([timesteps[:1], timesteps[1:].repeat_interleave(2)])
        timesteps[1::2] = torch.from_numpy(mid_timesteps)
        dtype = torch.float32 if str(device).startswith("mps") else timesteps.dtype
        self.timesteps = timesteps.to(device=device, dtype=dtype)
        self.sample = None
        self.mid_point_sigma = None
        self.noise_sampler = None
        self._step_index = None
        self._begin_index = None

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True,
             s_noise: float = 1.0):
        """First half: ancestral DPM-Solver++ step to the midpoint; second half: from the step's start to the
        next sigma with the midpoint's x0. Each adds `s_noise` times Brownian noise of std sigma_up."""
        if self.step_index is None:
            self._init_step_index(timestep)
        if self.noise_sampler is None:
            seed = self.noise_sampler_seed
            _check_seed(seed)
            positive = self.sigmas[self.sigmas > 0]
            self.noise_sampler = BrownianNoiseSampler(sample, positive.min().item(), self.sigmas.max().item(), seed)
        first = self.state_in_first_order
        i = self.step_index
        sigma, sigma_next = (self.sigmas[i], self.sigmas[i + 1]) if first else (self.sigmas[i - 1], self.sigmas[i])
        # k-diffusion's time is t = -log(sigma); the midpoint is half way in t
        t, t_next = sigma.log().neg(), sigma_next.log().neg()
        t_mid = t + (t_next - t) * 0.5
        x0 = sigma_x0(model_output, sample, sigma if first else t_mid.neg().exp(), self.config.prediction_type)
        if sigma_next == 0:
            prev_sample = euler_step(sample, x0, sigma, sigma_next)
        else:
            if first:
                t_next = t_mid
            else:
                sample = self.sample
            sigma_from, sigma_to = t.neg().exp(), t_next.neg().exp()
            sigma_up = min(sigma_to, (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
            sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
            t_down = sigma_down.log().neg()
            prev_sample = (t_down.neg().exp() / t.neg().exp()) * sample - (t - t_down).expm1() * x0
            prev_sample = prev_sample + self.noise_sampler(sigma_from, sigma_to) * s_noise * sigma_up
            if first:
                self.sample, self.mid_point_sigma = sample, sigma_to
            else:
                self.sample = self.mid_point_sigma = None
        self._step_index += 1
        if not return_dict:
            return prev_sample, x0
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)
