"""DPMSolverSinglestepScheduler: singlestep DPM-Solver(++) with diffusers' config and step semantics.

A k-th order singlestep update spans k schedule intervals: the model is evaluated at the intermediate
timesteps, and the whole span is integrated from the sample at its start (`self.sample`).
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from ..core import dpm_solver as dpm
from ..core import schedule
from ..models.config import register_to_config
from .base import SchedulerOutput
from .dpm_common import SolverSchedulerBase

logger = logging.getLogger("impasto")


def order_list(steps: int, order: int, lower_order_final: bool, final_sigmas_type: str) -> list[int]:
    """The order used at each step: repeating 1, 2, .., order cycles (shortened at the end when lower_order_final)."""
    if order not in (1, 2, 3):
        raise ValueError(f"solver_order: expected 1, 2 or 3, got {order!r}")
    cycle = list(range(1, order + 1))
    full, rest = divmod(steps, order)
    if not lower_order_final or order == 1:
        orders = cycle * full if order > 1 else [1] * steps
    elif rest == 0:
        # end on a cycle that drops its last point, then a first-order step: ... 1, 2, (3,) | 1, (2,) 1
        orders = cycle * (full - 1) + cycle[:-1] + [1]
    else:
        orders = cycle * full + cycle[:rest]
    if final_sigmas_type == "zero" and orders:
        orders[-1] = 1
    return orders


class DPMSolverSinglestepScheduler(SolverSchedulerBase):
    """Singlestep DPM-Solver: "dpmsolver++" (default), "dpmsolver" or "sde-dpmsolver++", orders 1-3."""

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
        lower_order_final: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        final_sigmas_type: str = "zero",
        lambda_min_clipped: float = -float("inf"),
        variance_type: str | None = None,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
    ):
        owner = type(self).__name__
        if algorithm_type == "deis":
            self.register_to_config(algorithm_type="dpmsolver++")
        if solver_type in ("logrho", "bh1", "bh2"):
            self.register_to_config(solver_type="midpoint")
        self._check_config(
            prediction_types=dpm.PREDICTION_TYPES,
            spacings=None,
            algorithm_type=("dpmsolver", "dpmsolver++", "sde-dpmsolver++"),
            solver_type=("midpoint", "heun"),
        )
        self._check_final_sigmas_type()
        algorithm = self.config.algorithm_type
        if not dpm.uses_data_prediction(algorithm):
            if final_sigmas_type == "zero":
                raise ValueError(
                    f"{owner}: final_sigmas_type='zero' is not supported with algorithm_type={algorithm!r}; "
                    "use final_sigmas_type='sigma_min'"
                )
            if prediction_type == "flow_prediction":
                raise ValueError(f"{owner}: prediction_type='flow_prediction' needs a '++' algorithm_type")
        self._init_tables()
        self._reset_run(solver_order)
        self.sample = None
        self.order_list = order_list(num_train_timesteps, solver_order, lower_order_final, final_sigmas_type)

    def get_order_list(self, num_inference_steps: int) -> list[int]:
        """The solver order of each of `num_inference_steps` steps under the current config."""
        cfg = self.config
        return order_list(num_inference_steps, cfg.solver_order, cfg.lower_order_final, cfg.final_sigmas_type)

    # ---- schedule ------------------------------------------------------------------------------------------
    def set_timesteps(self, num_inference_steps: int | None = None, device=None, mu: float | None = None,
                      timesteps: list[int] | None = None) -> None:
        """Pick the inference timesteps, sigmas and the per-step orders."""
        cfg = self.config
        self._apply_mu(mu)
        self._check_set_timesteps(num_inference_steps, timesteps=timesteps)
        self._check_custom_timesteps(timesteps, ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"))
        n = num_inference_steps or len(timesteps)
        if timesteps is not None:
            timesteps = np.array(timesteps).astype(np.int64)
        else:
            clipped = torch.searchsorted(torch.flip(self.lambda_t, [0]), cfg.lambda_min_clipped).item()
            total = cfg.num_train_timesteps
            timesteps = dpm.solver_timesteps("linspace", n, total - clipped, total)
        sigmas = self._train_sigmas()
        log_sigmas = np.log(sigmas)
        if cfg.use_karras_sigmas or cfg.use_exponential_sigmas or cfg.use_beta_sigmas:
            kind = "karras" if cfg.use_karras_sigmas else "exponential" if cfg.use_exponential_sigmas else "beta"
            sigmas = self._ladder(kind, np.flip(sigmas).copy(), n)
            timesteps = schedule.sigma_to_t(sigmas, log_sigmas)
            if kind == "karras":
                timesteps = timesteps.round()
        elif cfg.use_flow_sigmas:
            sigmas, timesteps = self._flow_sigmas(n)
        else:
            sigmas = schedule.interp_sigmas(timesteps, sigmas)
        last = self._sigma_min_train().item() if cfg.final_sigmas_type == "sigma_min" else 0.0
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [last]]).astype(np.float32))
        self.timesteps = torch.from_numpy(np.asarray(timesteps)).to(device=device, dtype=torch.int64)
        self.num_inference_steps = n
        self._reset_run(cfg.solver_order)
        self.sample = None
        # diffusers switches lower_order_final on (in the config) where the last cycle cannot be completed
        if not cfg.lower_order_final and n % cfg.solver_order != 0:
            logger.warning("%s: %d steps is not a multiple of solver_order=%d; setting lower_order_final=True",
                           type(self).__name__, n, cfg.solver_order)
            self.register_to_config(lower_order_final=True)
        if not self.config.lower_order_final and cfg.final_sigmas_type == "zero":
            logger.warning("%s: final_sigmas_type='zero' needs lower_order_final; setting lower_order_final=True",
                           type(self).__name__)
            self.register_to_config(lower_order_final=True)
        self.order_list = self.get_order_list(n)

    # ---- stepping ------------------------------------------------------------------------------------------
    def convert_model_output(self, model_output: torch.Tensor, *args, sample: torch.Tensor | None = None,
                             **kwargs) -> torch.Tensor:
        """x0 for the '++' algorithms, eps for "dpmsolver"."""
        sample = self._sample_argument(args, sample)
        if dpm.uses_data_prediction(self.config.algorithm_type):
            return self._x0_prediction(model_output, sample)
        return self._eps_prediction(model_output, sample)

    def _update(self, order: int, sample: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        i = self.step_index
        algorithm = self.config.algorithm_type
        alpha_t, sigma_t, lambda_t = self._point(i + 1)
        points = [self._point(i - k) for k in range(order - 1, -1, -1)]  # the span's start first
        alpha_s, sigma_s, _ = points[0]
        ratio = sigma_t / sigma_s if dpm.uses_data_prediction(algorithm) else alpha_t / alpha_s
        heun = self.config.solver_type == "heun"
        h, d0, d1, d2 = dpm.singlestep_differences(self.model_outputs[-order:], [p[2] for p in points], lambda_t, heun)
        # third order always weighs d1 with the "heun" coefficient (with the midpoint rule d1 is the latest difference)
        return dpm.dpm_step(algorithm, sample, ratio, h, alpha_t, sigma_t, d0, d1, d2, heun=heun or order == 3,
                            noise=noise)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None,
             return_dict: bool = True):
        """Advance `sample` from `timestep` to the next timestep of the schedule."""
        self._require_timesteps()
        if self.step_index is None:
            self._init_step_index(timestep)
        model_output = self.convert_model_output(model_output, sample=sample)
        self.model_outputs = self.model_outputs[1:] + [model_output]
        noise = None
        if self.config.algorithm_type == "sde-dpmsolver++":
            noise = self._noise(model_output.shape, generator, model_output.device, model_output.dtype)
        order = self.order_list[self.step_index]
        while self.model_outputs[-order] is None:
            order -= 1
        if order == 1:
            self.sample = sample
        prev_sample = self._update(order, self.sample, noise)
        self._step_index += 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)
