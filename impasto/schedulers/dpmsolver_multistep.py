"""DPMSolverMultistepScheduler: DPM-Solver / DPM-Solver++ (ODE and SDE), orders 1-3, with diffusers' config and
step semantics (same timesteps, sigmas and, for a given generator, same samples)."""
from __future__ import annotations

import warnings

import numpy as np
import torch

from ..core import dpm_solver as dpm
from ..models.config import register_to_config
from .base import SchedulerOutput
from .dpm_common import SolverSchedulerBase


class DPMSolverMultistepScheduler(SolverSchedulerBase):
    """Multistep DPM-Solver(++): each step reuses the converted model outputs of the previous 1-2 steps.

    `algorithm_type` picks data prediction ("dpmsolver++", "sde-dpmsolver++": recommended) or noise prediction
    ("dpmsolver", "sde-dpmsolver"); the "sde-" variants add fresh noise each step, drawn from `generator`.
    """

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
        algorithm_type: str = "dpmsolver++",
        solver_type: str = "midpoint",
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_lu_lambdas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        final_sigmas_type: str = "zero",
        lambda_min_clipped: float = -float("inf"),
        variance_type: str | None = None,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
    ):
        owner = type(self).__name__
        # names of sibling solvers map onto this one, so swapping configs works as in diffusers
        if algorithm_type == "deis":
            self.register_to_config(algorithm_type="dpmsolver++")
        if solver_type in ("logrho", "bh1", "bh2"):
            self.register_to_config(solver_type="midpoint")
        self._check_config(
            prediction_types=dpm.PREDICTION_TYPES,
            algorithm_type=dpm.ALGORITHMS,
            solver_type=("midpoint", "heun"),
        )
        self._check_final_sigmas_type()
        algorithm = self.config.algorithm_type
        if solver_order not in (1, 2, 3):
            raise ValueError(f"{owner}: solver_order={solver_order!r} is not supported; expected 1, 2 or 3")
        if algorithm == "sde-dpmsolver" and solver_order == 3:
            raise ValueError(f"{owner}: solver_order=3 is not supported with algorithm_type='sde-dpmsolver'; use 1 or 2")
        if not dpm.uses_data_prediction(algorithm):
            if final_sigmas_type == "zero":
                raise ValueError(
                    f"{owner}: final_sigmas_type='zero' is not supported with algorithm_type={algorithm!r}; "
                    "use final_sigmas_type='sigma_min'"
                )
            if prediction_type == "flow_prediction":
                raise ValueError(f"{owner}: prediction_type='flow_prediction' needs algorithm_type 'dpmsolver++' or "
                                 "'sde-dpmsolver++'")
        if algorithm in ("dpmsolver", "sde-dpmsolver"):
            warnings.warn(f"{owner}: algorithm_type {algorithm!r} is deprecated in diffusers; prefer 'dpmsolver++' "
                          "or 'sde-dpmsolver++'", FutureWarning, stacklevel=3)
        self._init_tables()
        self._reset_run(solver_order)

    # ---- schedule ------------------------------------------------------------------------------------------
    def set_timesteps(self, num_inference_steps: int | None = None, device=None, mu: float | None = None,
                      timesteps: list[int] | None = None) -> None:
        """Pick the inference timesteps and sigmas (one more sigma than timesteps: the final one)."""
        cfg = self.config
        self._apply_mu(mu)
        self._check_set_timesteps(num_inference_steps, timesteps=timesteps)
        self._check_custom_timesteps(
            timesteps, ("use_karras_sigmas", "use_lu_lambdas", "use_exponential_sigmas", "use_beta_sigmas")
        )
        if timesteps is not None:
            timesteps = np.array(timesteps).astype(np.int64)
        else:
            clipped = torch.searchsorted(torch.flip(self.lambda_t, [0]), cfg.lambda_min_clipped).item()
            timesteps = dpm.solver_timesteps(
                cfg.timestep_spacing, num_inference_steps, cfg.num_train_timesteps - clipped,
                cfg.num_train_timesteps, cfg.steps_offset,
            )
        last = self._sigma_min_train().item() if cfg.final_sigmas_type == "sigma_min" else 0.0
        sigmas, timesteps = self._schedule(timesteps, num_inference_steps, cfg.beta_schedule != "squaredcos_cap_v2")
        self._set_schedule(sigmas, last, timesteps, device)

    # ---- stepping ------------------------------------------------------------------------------------------
    def convert_model_output(self, model_output: torch.Tensor, *args, sample: torch.Tensor | None = None,
                             **kwargs) -> torch.Tensor:
        """The quantity the solver integrates: x0 for the '++' algorithms, eps for the others."""
        sample = self._sample_argument(args, sample)
        if dpm.uses_data_prediction(self.config.algorithm_type):
            return self._x0_prediction(model_output, sample)
        return self._eps_prediction(model_output, sample)

    def _update(self, order: int, sample: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        i = self.step_index
        algorithm = self.config.algorithm_type
        alpha_t, sigma_t, lambda_t = self._point(i + 1)
        points = [self._point(i - k) for k in range(order - 1, -1, -1)]  # oldest first
        alpha_s, sigma_s, _ = points[-1]
        ratio = sigma_t / sigma_s if dpm.uses_data_prediction(algorithm) else alpha_t / alpha_s
        h, d0, d1, d2 = dpm.multistep_differences(self.model_outputs[-order:], [p[2] for p in points], lambda_t)
        heun = self.config.solver_type == "heun" or order == 3
        return dpm.dpm_step(algorithm, sample, ratio, h, alpha_t, sigma_t, d0, d1, d2, heun=heun, noise=noise)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None,
             variance_noise: torch.Tensor | None = None, return_dict: bool = True):
        """Advance `sample` from `timestep` to the next timestep of the schedule."""
        self._require_timesteps()
        if self.step_index is None:
            self._init_step_index(timestep)
        cfg = self.config
        model_output = self.convert_model_output(model_output, sample=sample)
        self.model_outputs = self.model_outputs[1:] + [model_output]
        sample = sample.to(torch.float32)
        noise = None
        if cfg.algorithm_type.startswith("sde-"):
            if variance_noise is None:
                noise = self._noise(model_output.shape, generator, model_output.device, torch.float32)
            else:
                noise = variance_noise.to(device=model_output.device, dtype=torch.float32)

        order = self._multistep_order(first_at_end=cfg.euler_at_final or cfg.final_sigmas_type == "zero")
        prev_sample = self._update(order, sample, noise)
        self.lower_order_nums = min(self.lower_order_nums + 1, cfg.solver_order)
        prev_sample = prev_sample.to(model_output.dtype)
        self._step_index += 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)
