"""UniPCMultistepScheduler: the unified predictor-corrector solver (Zhao et al. 2023) with diffusers' config and
step semantics. Each step first corrects the incoming sample with the new model output (UniC), then
predicts the next one (UniP); the coefficients come from `core.dpm_solver.unipc_update`."""
from __future__ import annotations

import math

import numpy as np
import torch

from ..core import dpm_solver as dpm
from ..core import schedule
from ..models.config import register_to_config
from .base import SchedulerOutput
from .dpm_common import SolverSchedulerBase


class UniPCMultistepScheduler(SolverSchedulerBase):
    """UniPC with B(h) variant `solver_type` ("bh1" or "bh2"), any `solver_order` >= 1, data prediction by
    default (`predict_x0`), the corrector skipped after the steps listed in `disable_corrector`, and an optional
    other scheduler `solver_p` as predictor."""

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas=None,
        solver_order: int = 2,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        predict_x0: bool = True,
        solver_type: str = "bh2",
        lower_order_final: bool = True,
        disable_corrector: list[int] = [],  # noqa: B006 - diffusers' default, never mutated
        solver_p=None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        final_sigmas_type: str = "zero",
        rescale_betas_zero_snr: bool = False,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        shift_terminal: float | None = None,
    ):
        owner = type(self).__name__
        if solver_type in ("midpoint", "heun", "logrho"):
            self.register_to_config(solver_type="bh2")  # DPM-Solver configs swap in as bh2
        self._check_config(prediction_types=dpm.PREDICTION_TYPES, solver_type=("bh1", "bh2"),
                           time_shift_type=("exponential", "linear"))
        self._check_final_sigmas_type()
        if not isinstance(solver_order, int) or solver_order < 1:
            raise ValueError(f"{owner}: solver_order must be a positive int, got {solver_order!r}")
        if shift_terminal is not None and not use_flow_sigmas:
            raise ValueError(f"{owner}: shift_terminal is only supported with use_flow_sigmas=True")
        if final_sigmas_type == "zero":
            # at sigma = 0 the step in lambda is infinite: these combinations have no finite update there
            if not predict_x0:
                raise ValueError(f"{owner}: predict_x0=False needs final_sigmas_type='sigma_min'")
            if self.config.solver_type == "bh1" and not lower_order_final and solver_order > 1:
                raise ValueError(f"{owner}: solver_type='bh1' with final_sigmas_type='zero' needs lower_order_final=True")
        if not predict_x0 and prediction_type == "flow_prediction":
            raise ValueError(f"{owner}: prediction_type='flow_prediction' needs predict_x0=True")
        self._init_tables()
        self.predict_x0 = predict_x0
        self.disable_corrector = list(disable_corrector)
        self.solver_p = solver_p
        self._reset_run(solver_order)

    def copy(self):
        """An independent scheduler with the same config; a `solver_p` predictor is copied too (it holds run state)."""
        fresh = super().copy()
        if self.solver_p is not None and hasattr(self.solver_p, "copy"):
            fresh.solver_p = self.solver_p.copy()
        return fresh

    fresh = copy

    def _reset_run(self, solver_order: int) -> None:
        super()._reset_run(solver_order)
        self.timestep_list = [None] * solver_order
        self.last_sample = None
        self.this_order = None

    # ---- schedule ------------------------------------------------------------------------------------------
    def _time_shift(self, mu: float, t: np.ndarray) -> np.ndarray:
        shift = math.exp(mu) if self.config.time_shift_type == "exponential" else mu
        return shift / (shift + (1 / t - 1))

    def _flow_schedule(self, n: int, sigmas, mu) -> np.ndarray:
        cfg = self.config
        if sigmas is None:
            sigmas = np.linspace(1, 1 / cfg.num_train_timesteps, n + 1)[:-1]
        if cfg.use_dynamic_shifting:
            sigmas = self._time_shift(mu, sigmas)
        else:
            sigmas = cfg.flow_shift * sigmas / (1 + (cfg.flow_shift - 1) * sigmas)
        if cfg.shift_terminal:
            one_minus = 1 - sigmas
            sigmas = 1 - one_minus / (one_minus[-1] / (1 - cfg.shift_terminal))
        sigmas = np.array(sigmas)
        if np.fabs(sigmas[0] - 1) < 1e-6:
            sigmas[0] -= 1e-6  # keep the first step off the pure-noise singularity
        return sigmas

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, sigmas=None,
                      mu: float | None = None) -> None:
        """Pick the inference timesteps and sigmas; custom `sigmas` (descending) need use_flow_sigmas=True."""
        cfg = self.config
        owner = type(self).__name__
        if cfg.use_dynamic_shifting and mu is None:
            raise ValueError(f"{owner}: mu must be passed to set_timesteps when use_dynamic_shifting=True")
        self._check_set_timesteps(num_inference_steps, sigmas=sigmas)
        if sigmas is not None:
            if not cfg.use_flow_sigmas:
                raise ValueError(f"{owner}: sigmas= needs use_flow_sigmas=True in the config")
            sigmas = np.array(sigmas)
            num_inference_steps = len(sigmas)
        n = num_inference_steps
        timesteps = dpm.solver_timesteps(cfg.timestep_spacing, n, cfg.num_train_timesteps, cfg.num_train_timesteps,
                                         cfg.steps_offset)
        kind = ("karras" if cfg.use_karras_sigmas else "exponential" if cfg.use_exponential_sigmas
                else "beta" if cfg.use_beta_sigmas else None)
        if kind is not None:
            base = self._train_sigmas() if sigmas is None else sigmas
            log_sigmas = np.log(base)
            sigmas = self._ladder(kind, np.flip(base).copy(), n)
            if kind == "karras" and cfg.use_flow_sigmas:
                sigmas = sigmas / (sigmas + 1)
                timesteps = (sigmas * cfg.num_train_timesteps).copy()
            else:
                timesteps = schedule.sigma_to_t(sigmas, log_sigmas)
                if kind == "karras":
                    timesteps = timesteps.round()
            last = sigmas[-1]
        elif cfg.use_flow_sigmas:
            sigmas = self._flow_schedule(n, sigmas, mu)
            timesteps = (sigmas * cfg.num_train_timesteps).copy()
            last = sigmas[-1]
        else:
            sigmas = schedule.interp_sigmas(timesteps, self._train_sigmas())
            last = self._sigma_min_train().item()
        last = last if cfg.final_sigmas_type == "sigma_min" else 0
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [last]]).astype(np.float32))
        self.timesteps = torch.from_numpy(np.asarray(timesteps)).to(device=device, dtype=torch.int64)
        self.num_inference_steps = len(timesteps)
        self._reset_run(cfg.solver_order)
        if self.solver_p:
            self.solver_p.set_timesteps(self.num_inference_steps, device=device)

    # ---- stepping ------------------------------------------------------------------------------------------
    def convert_model_output(self, model_output: torch.Tensor, *args, sample: torch.Tensor | None = None,
                             **kwargs) -> torch.Tensor:
        """x0 when predict_x0 (the default), else eps."""
        sample = self._sample_argument(args, sample)
        if self.predict_x0:
            return self._x0_prediction(model_output, sample)
        alpha, sigma = self._alpha_sigma(self.sigmas[self.step_index])
        return dpm.predict_eps(model_output, sample, alpha, sigma, self.config.prediction_type)

    def _unipc(self, x, start: int, end: int, order: int, corrector_output=None) -> torch.Tensor:
        """Update x from sigmas[start] to sigmas[end] with the stored outputs (model_outputs[-1] at `start`)."""
        device = x.device
        alpha_t, sigma_t, lambda_t = self._point(end, device)
        alpha_s, sigma_s, lambda_s = self._point(start, device)
        h = lambda_t - lambda_s
        m0 = self.model_outputs[-1]
        rks, diffs = [], []
        for k in range(1, order):
            rk = (self._point(start - k, device)[2] - lambda_s) / h
            rks.append(rk)
            diffs.append((self.model_outputs[-(k + 1)] - m0) / rk)
        if self.predict_x0:
            ratio, scale, hh = sigma_t / sigma_s, alpha_t, -h
        else:
            ratio, scale, hh = alpha_t / alpha_s, sigma_t, h
        x_t = dpm.unipc_update(x, ratio, scale, hh, m0, rks, diffs, self.config.solver_type, corrector_output)
        return x_t.to(x.dtype)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True):
        """Correct `sample` with this model output (UniC), then predict the next sample (UniP)."""
        self._require_timesteps()
        if self.step_index is None:
            self._init_step_index(timestep)
        cfg, i = self.config, self.step_index
        use_corrector = i > 0 and (i - 1) not in self.disable_corrector and self.last_sample is not None
        converted = self.convert_model_output(model_output, sample=sample)
        if use_corrector:
            sample = self._unipc(self.last_sample, i - 1, i, self.this_order, corrector_output=converted)
        self.model_outputs = self.model_outputs[1:] + [converted]
        self.timestep_list = self.timestep_list[1:] + [timestep]
        order = min(cfg.solver_order, len(self.timesteps) - i) if cfg.lower_order_final else cfg.solver_order
        self.this_order = min(order, self.lower_order_nums + 1)  # warm-up: only as many points as stored
        self.last_sample = sample
        if self.solver_p:
            prev_sample = self.solver_p.step(model_output, self.timestep_list[-1], sample).prev_sample
        else:
            prev_sample = self._unipc(sample, i, i + 1, self.this_order)
        self.lower_order_nums = min(self.lower_order_nums + 1, cfg.solver_order)
        self._step_index += 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)
