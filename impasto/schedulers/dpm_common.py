"""What DPMSolverMultistepScheduler, DPMSolverSinglestepScheduler, UniPCMultistepScheduler and
DEISMultistepScheduler share: the training tables (alphas_cumprod, alpha_t, sigma_t, lambda_t), sigma ladders
for `set_timesteps`, model-output conversion, the multistep order rule, noise drawing, `add_noise` and
diffusers' step-index rules for this family.
"""
from __future__ import annotations


import numpy as np
import torch

from ..core import dpm_solver as dpm
from ..core import schedule
from ..core.noise import randn_tensor
from .base import SchedulerMixin

FINAL_SIGMAS_TYPES = ("zero", "sigma_min")


class SolverSchedulerBase(SchedulerMixin):
    """Base of the DPM-Solver family facades (not a public scheduler)."""

    order = 1

    # ---- construction -----------------------------------------------------------------------------------
    def _init_tables(self) -> None:
        self._init_train_schedule(zero_snr_floor=True)
        self.alpha_t = torch.sqrt(self.alphas_cumprod)
        self.sigma_t = torch.sqrt(1 - self.alphas_cumprod)
        self.lambda_t = torch.log(self.alpha_t) - torch.log(self.sigma_t)
        self.sigmas = schedule.sigmas_from_alphas_cumprod(self.alphas_cumprod).to("cpu")
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        total = self.config.num_train_timesteps
        self.timesteps = torch.from_numpy(np.linspace(0, total - 1, total, dtype=np.float32)[::-1].copy())
        self._step_index = None
        self._begin_index = None

    def _check_final_sigmas_type(self) -> None:
        schedule.check_choice(type(self).__name__, "final_sigmas_type", self.config.final_sigmas_type, FINAL_SIGMAS_TYPES)

    # ---- schedule helpers ---------------------------------------------------------------------------------
    def _train_sigmas(self) -> np.ndarray:
        return (((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5).numpy()

    def _ladder(self, kind: str, in_sigmas: np.ndarray, n: int) -> np.ndarray:
        # sigma_min / sigma_max may come from a swapped-in config (diffusers reads them the same way)
        return schedule.ladder(
            kind, in_sigmas, n, getattr(self.config, "sigma_min", None), getattr(self.config, "sigma_max", None)
        )

    def _ladder_kind(self) -> str | None:
        """'karras', 'exponential' or 'beta' where the config asks for that sigma ladder, else None."""
        for kind in ("karras", "exponential", "beta"):
            if self.config.get(f"use_{kind}_sigmas"):
                return kind
        return None

    def _schedule(self, timesteps: np.ndarray, n: int, rounded: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(sigmas, timesteps) for `n` steps, without the final sigma: the config's ladder (karras / exponential /
        beta, or use_lu_lambdas where the class has it) with timesteps read back from it (karras and lu ones
        rounded where `rounded`), flow-matching sigmas, or else the training sigmas interpolated at `timesteps`."""
        sigmas = self._train_sigmas()
        log_sigmas = np.log(sigmas)
        kind = self._ladder_kind() or ("lu" if self.config.get("use_lu_lambdas") else None)
        if kind is not None:
            if kind == "lu":
                sigmas = dpm.lu_sigmas(np.flip(log_sigmas.copy()), n)
            else:
                sigmas = self._ladder(kind, np.flip(sigmas).copy(), n)
            timesteps = schedule.sigma_to_t(sigmas, log_sigmas)
            if rounded and kind in ("karras", "lu"):
                timesteps = timesteps.round()
            return sigmas, timesteps
        if self.config.use_flow_sigmas:
            return self._flow_sigmas(n)
        return schedule.interp_sigmas(timesteps, sigmas), timesteps

    def _set_schedule(self, sigmas: np.ndarray, last: float, timesteps: np.ndarray, device=None) -> None:
        """Store `sigmas` + the final sigma `last` (float32) and int64 `timesteps`, and start a fresh run."""
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [last]]).astype(np.float32))
        self.timesteps = torch.from_numpy(np.asarray(timesteps)).to(device=device, dtype=torch.int64)
        self.num_inference_steps = len(timesteps)
        self._reset_run(self.config.solver_order)

    def _sigma_min_train(self) -> torch.Tensor:
        return ((1 - self.alphas_cumprod[0]) / self.alphas_cumprod[0]) ** 0.5

    def _flow_sigmas(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        total, shift = self.config.num_train_timesteps, self.config.flow_shift
        sigmas = 1.0 - np.linspace(1, 1 / total, n + 1)
        sigmas = np.flip(shift * sigmas / (1 + (shift - 1) * sigmas))[:-1].copy()
        return sigmas, (sigmas * total).copy()

    def _apply_mu(self, mu) -> None:
        if mu is None:
            return
        if not (self.config.use_dynamic_shifting and self.config.time_shift_type == "exponential"):
            raise ValueError("mu: only valid with use_dynamic_shifting=True and time_shift_type='exponential'")
        self.register_to_config(flow_shift=float(np.exp(mu)))

    def _check_custom_timesteps(self, timesteps, keys) -> None:
        for key in keys:
            if timesteps is not None and self.config.get(key):
                raise ValueError(f"timesteps: custom timesteps cannot be used with config {key}=True")

    def _reset_run(self, solver_order: int) -> None:
        self.model_outputs = [None] * solver_order
        self.lower_order_nums = 0
        self._step_index = None
        self._begin_index = None

    def _multistep_order(self, first_at_end: bool = False) -> int:
        """Order of this step's multistep update (1-3): lower while the history fills up; with lower_order_final
        and fewer than 15 steps, first and second order on the last two steps; first order on the last step
        wherever `first_at_end` says so."""
        cfg, n, i = self.config, len(self.timesteps), self.step_index
        short = cfg.lower_order_final and n < 15
        if cfg.solver_order == 1 or self.lower_order_nums < 1 or (i == n - 1 and (short or first_at_end)):
            return 1
        if cfg.solver_order == 2 or self.lower_order_nums < 2 or (i == n - 2 and short):
            return 2
        return 3

    # ---- points of the schedule ----------------------------------------------------------------------------
    def _alpha_sigma(self, sigma):
        return dpm.alpha_sigma(sigma, flow=self.config.use_flow_sigmas)

    def _point(self, index: int, device=None):
        """(alpha, sigma, lambda) at sigmas[index]."""
        sigma = self.sigmas[index] if device is None else self.sigmas[index].to(device)
        alpha, sigma_vp = self._alpha_sigma(sigma)
        return alpha, sigma_vp, dpm.half_log_snr(alpha, sigma_vp)

    # ---- model outputs -----------------------------------------------------------------------------------
    def _threshold(self, x0: torch.Tensor) -> torch.Tensor:
        return dpm.dynamic_threshold(x0, self.config.dynamic_thresholding_ratio, self.config.sample_max_value)

    def _learned_split(self, model_output: torch.Tensor) -> torch.Tensor:
        if self.config.prediction_type == "epsilon" and self.config.get("variance_type") in ("learned", "learned_range"):
            return model_output[:, :3]
        return model_output

    def _x0_prediction(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        sigma = self.sigmas[self.step_index]
        alpha, sigma_vp = self._alpha_sigma(sigma)
        if self.config.prediction_type == "flow_prediction":
            sigma_vp = sigma
        x0 = dpm.predict_x0(self._learned_split(model_output), sample, alpha, sigma_vp, self.config.prediction_type)
        return self._threshold(x0) if self.config.thresholding else x0

    def _eps_prediction(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        alpha, sigma_vp = self._alpha_sigma(self.sigmas[self.step_index])
        eps = dpm.predict_eps(self._learned_split(model_output), sample, alpha, sigma_vp, self.config.prediction_type)
        if self.config.thresholding:
            x0 = self._threshold((sample - sigma_vp * eps) / alpha)
            eps = (sample - alpha * x0) / sigma_vp
        return eps

    @staticmethod
    def _sample_argument(args: tuple, sample):
        """diffusers' old call style convert_model_output(model_output, timestep, sample) is still accepted."""
        if sample is not None:
            return sample
        if len(args) > 1:
            return args[1]
        raise ValueError("sample: convert_model_output needs the current sample (sample=...)")

    @staticmethod
    def _noise(shape, generator, device, dtype) -> torch.Tensor:
        return randn_tensor(shape, generator=generator, device=device, dtype=dtype)

    def _require_timesteps(self) -> None:
        if self.num_inference_steps is None:
            raise ValueError(f"{type(self).__name__}: call set_timesteps(num_inference_steps) before step()")

    # ---- diffusers' step-index rules for this family ---------------------------------------------------------
    def index_for_timestep(self, timestep, schedule_timesteps: torch.Tensor | None = None) -> int:
        """Position of `timestep` (the second one where it repeats); a timestep not in the schedule maps to the
        last step, as diffusers does for these schedulers."""
        if schedule_timesteps is None:
            schedule_timesteps = self.timesteps
        candidates = (schedule_timesteps == timestep).nonzero()
        if len(candidates) == 0:
            return len(self.timesteps) - 1
        return candidates[1 if len(candidates) > 1 else 0].item()

    def scale_model_input(self, sample: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """These solvers take the model input unscaled (init_noise_sigma is 1)."""
        return sample

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """alpha_t * x0 + sigma_t * noise at each sample's timestep (or at the begin/current index once set)."""
        device = original_samples.device
        timesteps = torch.as_tensor(timesteps, device=device).reshape(-1)
        sigmas = self.sigmas.to(device=device, dtype=original_samples.dtype)
        if self.begin_index is None:
            schedule_timesteps = self.timesteps.to(device)
            indices = [self.index_for_timestep(t, schedule_timesteps) for t in timesteps]
        elif self.step_index is not None:
            indices = [self.step_index] * timesteps.shape[0]
        else:
            indices = [self.begin_index] * timesteps.shape[0]
        sigma = sigmas[indices].flatten()
        sigma = sigma.reshape(sigma.shape + (1,) * (original_samples.ndim - 1))
        alpha, sigma = self._alpha_sigma(sigma)
        return alpha * original_samples + sigma * noise
