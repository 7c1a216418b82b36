"""EulerDiscreteScheduler: Euler's method on the probability-flow ODE (Karras et al. 2022, algorithm 2)."""
from __future__ import annotations

import numpy as np
import torch

from ..core.noise import randn_tensor
from ..core.samplers import euler_step, sigma_x0
from ..core.schedule import ladder, sigma_to_t
from ..models.config import register_to_config
from .base import SchedulerOutput
from .discrete import SigmaScheduler


class EulerDiscreteScheduler(SigmaScheduler):
    """Euler sampler with diffusers' config keys (`use_karras_sigmas`, `final_sigmas_type`, `timestep_type`...)
    and optional churn (`s_churn` in `step`).

    Per-run state (`timesteps`, `sigmas`, `step_index`) lives on the instance as in diffusers; call `copy()`
    (or `fresh()`) to get an independent scheduler for each concurrent run.
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
        interpolation_type: str = "linear",
        use_karras_sigmas: bool | None = False,
        use_exponential_sigmas: bool | None = False,
        use_beta_sigmas: bool | None = False,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        timestep_spacing: str = "linspace",
        timestep_type: str = "discrete",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        final_sigmas_type: str = "zero",
    ):
        self._check_config(
            prediction_types=("epsilon", "v_prediction", "sample", "original_sample"),
            interpolation_type=("linear", "log_linear"),
            timestep_type=("discrete", "continuous"),
            final_sigmas_type=("zero", "sigma_min"),
        )
        self._init_train_schedule(zero_snr_floor=True)
        self._initial_sigmas()
        sigmas = self.sigmas[:-1]
        if self._continuous_v():
            self.timesteps = torch.Tensor([0.25 * s.log() for s in sigmas])
        self.use_karras_sigmas = use_karras_sigmas
        self.use_exponential_sigmas = use_exponential_sigmas
        self.use_beta_sigmas = use_beta_sigmas

    def _continuous_v(self) -> bool:
        return self.config.timestep_type == "continuous" and self.config.prediction_type == "v_prediction"

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, timesteps=None, sigmas=None):
        """Build the sigma ladder for `num_inference_steps`, or from custom descending `timesteps` or `sigmas`
        (the latter including the final sigma)."""
        self._check_set_timesteps(num_inference_steps, timesteps, sigmas)
        c = self.config
        if timesteps is not None:
            if self._ladder_kind() is not None:
                raise ValueError(f"timesteps: cannot be given with use_{self._ladder_kind()}_sigmas=True")
            if self._continuous_v():
                raise ValueError("timesteps: cannot be given with timestep_type='continuous' and v_prediction")
        if num_inference_steps is None:
            num_inference_steps = len(timesteps) if timesteps is not None else len(sigmas) - 1
        self.num_inference_steps = num_inference_steps

        if sigmas is not None:
            log_sigmas = np.log(self._train_sigmas())
            sigmas = np.array(sigmas).astype(np.float32)
            timesteps = sigma_to_t(sigmas[:-1], log_sigmas)
        else:
            if timesteps is not None:
                timesteps = np.array(timesteps).astype(np.float32)
            else:
                timesteps = self._spaced(num_inference_steps)
            if c.interpolation_type == "log_linear":
                train = self._train_sigmas()
                sigmas = torch.linspace(np.log(train[-1]), np.log(train[0]), num_inference_steps + 1).exp().numpy()
                kind = self._ladder_kind()
                if kind is not None:
                    sigmas = ladder(kind, sigmas, num_inference_steps, c.sigma_min, c.sigma_max)
                    timesteps = sigma_to_t(sigmas, np.log(train))
            else:
                sigmas, timesteps = self._ladder(timesteps, num_inference_steps)
            if c.final_sigmas_type == "sigma_min":
                a0 = self.alphas_cumprod[0]
                last = float(((1 - a0) / a0) ** 0.5)
            else:
                last = 0.0
            sigmas = np.concatenate([sigmas, [last]]).astype(np.float32)

        sigmas = torch.from_numpy(sigmas).to(dtype=torch.float32, device=device)
        if self._continuous_v():
            self.timesteps = torch.Tensor([0.25 * s.log() for s in sigmas[:-1]]).to(device=device)
        else:
            self.timesteps = torch.from_numpy(np.asarray(timesteps).astype(np.float32)).to(device=device)
        self._step_index = None
        self._begin_index = None
        self.sigmas = sigmas.to("cpu")

    def step(
        self,
        model_output: torch.Tensor,
        timestep,
        sample: torch.Tensor,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        generator=None,
        return_dict: bool = True,
    ):
        """One Euler step from sigmas[i] (raised by churn gamma when s_churn > 0) to sigmas[i + 1]."""
        self._check_float_timestep(timestep)
        self._warn_unscaled()
        if self.step_index is None:
            self._init_step_index(timestep)
        sample = sample.to(torch.float32)
        sigma = self.sigmas[self.step_index]
        gamma = min(s_churn / (len(self.sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (gamma + 1)
        if gamma > 0:
            noise = randn_tensor(model_output.shape, dtype=model_output.dtype, device=model_output.device,
                                 generator=generator)
            sample = sample + noise * s_noise * (sigma_hat**2 - sigma**2) ** 0.5
        # v-prediction is defined at the unchurned sigma, as in diffusers
        x0_sigma = sigma if self.config.prediction_type == "v_prediction" else sigma_hat
        x0 = sigma_x0(model_output, sample, x0_sigma, self.config.prediction_type)
        prev_sample = euler_step(sample, x0, sigma_hat, self.sigmas[self.step_index + 1]).to(model_output.dtype)
        self._step_index += 1
        if not return_dict:
            return prev_sample, x0
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)
