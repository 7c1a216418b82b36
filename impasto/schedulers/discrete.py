"""Common ground of the k-diffusion style ("sigma form") schedulers: Euler, Euler a, Heun, LMS, KDPM2 (a).

They sample x = x0 + sigma * eps over a descending ladder of sigmas ending in 0, feed the model
x / sqrt(sigma^2 + 1), and map each sigma back to a (fractional) training timestep for the model.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from ..core.samplers import add_noise_sigma
from ..core.schedule import interp_sigmas, ladder, sigma_to_t, sigmas_from_alphas_cumprod, spaced_timesteps
from .base import SchedulerMixin

logger = logging.getLogger("impasto")


class SigmaScheduler(SchedulerMixin):
    """Base for schedulers whose state is a sigma ladder (`self.sigmas`, on the CPU) and matching timesteps."""

    is_scale_input_called = False

    def _ladder_kind(self) -> str | None:
        # only this class's own keys count: a swapped-in config may carry keys meant for another class
        c, own = self.config, self.init_keys()
        for key, kind in (("use_karras_sigmas", "karras"), ("use_exponential_sigmas", "exponential"),
                          ("use_beta_sigmas", "beta")):
            if key in own and c.get(key, False):
                return kind
        return None

    def _train_sigmas(self) -> np.ndarray:
        """Training sigmas, ascending in t (float32)."""
        return sigmas_from_alphas_cumprod(self.alphas_cumprod).numpy()

    def _initial_sigmas(self) -> None:
        """State before `set_timesteps`: every training timestep, descending, as diffusers' __init__ leaves it."""
        sigmas = np.concatenate([self._train_sigmas()[::-1], [0.0]]).astype(np.float32)
        self.sigmas = torch.from_numpy(sigmas)
        total = self.config.num_train_timesteps
        self.timesteps = torch.from_numpy(np.linspace(0, total - 1, total, dtype=np.float32)[::-1].copy())
        self.num_inference_steps = None

    def _spaced(self, num_inference_steps: int, num_train_timesteps: int | None = None) -> np.ndarray:
        c = self.config
        total = num_train_timesteps or c.num_train_timesteps
        ts = spaced_timesteps(c.timestep_spacing, num_inference_steps, total, c.steps_offset, owner=type(self).__name__)
        return ts.astype(np.float32)

    def _ladder(self, timesteps: np.ndarray, n: int):
        """(sigmas, timesteps) for float32 timesteps: interpolated sigmas, replaced by the configured ladder
        (karras / exponential / beta) whose timesteps are then read back from the training log-sigmas."""
        train = self._train_sigmas()
        log_sigmas = np.log(train)
        sigmas = interp_sigmas(timesteps, train)
        kind = self._ladder_kind()
        if kind is not None:
            c = self.config
            sigmas = ladder(kind, sigmas, n, c.get("sigma_min"), c.get("sigma_max"))
            timesteps = sigma_to_t(sigmas, log_sigmas)
        return sigmas, timesteps

    @property
    def init_noise_sigma(self):
        """Standard deviation of the initial noise: the largest sigma (times sqrt(1 + sigma^2) for 'leading')."""
        max_sigma = self.sigmas.max()
        if self.config.timestep_spacing in ("linspace", "trailing"):
            return max_sigma
        return (max_sigma**2 + 1) ** 0.5

    def _input_sigma(self) -> torch.Tensor:
        return self.sigmas[self.step_index]

    def scale_model_input(self, sample: torch.Tensor, timestep) -> torch.Tensor:
        """Divide by sqrt(sigma^2 + 1) so the model sees a unit-variance input; call before the model."""
        if self.step_index is None:
            self._init_step_index(timestep)
        sigma = self._input_sigma()
        self.is_scale_input_called = True
        return sample / (sigma**2 + 1) ** 0.5

    def _warn_unscaled(self) -> None:
        if not self.is_scale_input_called:
            logger.warning("%s.step called before scale_model_input: the model input was not scaled",
                           type(self).__name__)

    def _check_float_timestep(self, timestep) -> None:
        if isinstance(timestep, (int, torch.IntTensor, torch.LongTensor)):
            raise ValueError(
                f"timestep: {type(self).__name__}.step needs one of scheduler.timesteps, not an integer index "
                "(e.g. from enumerate)"
            )

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x0 + sigma(t) noise, with sigma looked up for each timestep (or at begin_index / step_index once a
        pipeline has set them, as in img2img)."""
        sigmas = self.sigmas.to(device=original_samples.device, dtype=original_samples.dtype)
        schedule = self.timesteps.to(original_samples.device)
        timesteps = timesteps.to(original_samples.device)
        if self.begin_index is None:
            indices = [self.index_for_timestep(t, schedule) for t in timesteps]
        elif self.step_index is not None:
            indices = [self.step_index] * timesteps.shape[0]
        else:
            indices = [self.begin_index] * timesteps.shape[0]
        return add_noise_sigma(sigmas[indices], original_samples, noise)
