"""DEISMultistepScheduler: the diffusion exponential integrator sampler (Zhang & Chen 2022), log-rho multistep
variant, orders 1-3, with diffusers' config and step semantics. It runs on the DPM-Solver family's machinery
(tables, sigma ladders, model-output conversion, order rule); only the higher-order weights are its own
(`core.dpm_solver.deis_coefficients`). First order is DDIM, i.e. first-order DPM-Solver on noise predictions."""
from __future__ import annotations

import torch

from ..core import dpm_solver as dpm
from ..models.config import register_to_config
from .base import SchedulerOutput
from .dpm_common import SolverSchedulerBase


class DEISMultistepScheduler(SolverSchedulerBase):
    """Multistep DEIS: each step integrates a polynomial in log(sigma / alpha) through the noise predictions of
    the current and previous 1-2 steps (`solver_order` 2 or 3; 2 is recommended for guided sampling).

    DPM-Solver and UniPC configs swap in: their algorithm_type ('dpmsolver', 'dpmsolver++') and solver_type
    ('midpoint', 'heun', 'bh1', 'bh2') read as 'deis' and 'logrho', as in diffusers. The run ends on the
    smallest training sigma, or on the last sigma of a karras / exponential / beta / flow ladder.
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
        algorithm_type: str = "deis",
        solver_type: str = "logrho",
        lower_order_final: bool = True,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
    ):
        if algorithm_type in ("dpmsolver", "dpmsolver++"):
            self.register_to_config(algorithm_type="deis")
        if solver_type in ("midpoint", "heun", "bh1", "bh2"):
            self.register_to_config(solver_type="logrho")
        self._check_config(prediction_types=dpm.PREDICTION_TYPES, algorithm_type=("deis",), solver_type=("logrho",))
        if isinstance(solver_order, bool) or solver_order not in (1, 2, 3):
            raise ValueError(
                f"{type(self).__name__}: solver_order={solver_order!r} is not supported; expected 1, 2 or 3"
            )
        self._init_tables()
        self._reset_run(solver_order)

    # ---- schedule ------------------------------------------------------------------------------------------
    def set_timesteps(self, num_inference_steps: int | None = None, device=None, mu: float | None = None) -> None:
        """Pick the inference timesteps and sigmas (one more sigma than timesteps: the final one)."""
        cfg = self.config
        self._apply_mu(mu)
        self._check_set_timesteps(num_inference_steps)
        timesteps = dpm.solver_timesteps(cfg.timestep_spacing, num_inference_steps, cfg.num_train_timesteps,
                                         cfg.num_train_timesteps, cfg.steps_offset)
        sigmas, timesteps = self._schedule(timesteps, num_inference_steps)
        ladder = self._ladder_kind() is not None or cfg.use_flow_sigmas
        last = sigmas[-1] if ladder else self._sigma_min_train().item()
        self._set_schedule(sigmas, last, timesteps, device)

    # ---- stepping ------------------------------------------------------------------------------------------
    def convert_model_output(self, model_output: torch.Tensor, *args, sample: torch.Tensor | None = None,
                             **kwargs) -> torch.Tensor:
        """The noise prediction DEIS integrates, taken through x0 (so thresholding applies to it)."""
        sample = self._sample_argument(args, sample)
        x0 = self._x0_prediction(model_output, sample)
        alpha, sigma = self._alpha_sigma(self.sigmas[self.step_index])
        return (sample - alpha * x0) / sigma

    def _update(self, order: int, sample: torch.Tensor) -> torch.Tensor:
        i = self.step_index
        alpha_t, sigma_t, lambda_t = self._point(i + 1)
        points = [self._point(i - k) for k in range(order)]  # newest first
        alpha_s, _, lambda_s = points[0]
        if order == 1:
            return dpm.dpm_step("dpmsolver", sample, alpha_t / alpha_s, lambda_t - lambda_s, alpha_t, sigma_t,
                                self.model_outputs[-1])
        weights = dpm.deis_coefficients(sigma_t / alpha_t, [sigma / alpha for alpha, sigma, _ in points])
        x = sample / alpha_s
        for weight, eps in zip(weights, reversed(self.model_outputs[-order:])):
            x = x + weight * eps
        return alpha_t * x

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True):
        """Advance `sample` from `timestep` to the next timestep of the schedule."""
        self._require_timesteps()
        if self.step_index is None:
            self._init_step_index(timestep)
        converted = self.convert_model_output(model_output, sample=sample)
        self.model_outputs = self.model_outputs[1:] + [converted]
        prev_sample = self._update(self._multistep_order(), sample)
        self.lower_order_nums = min(self.lower_order_nums + 1, self.config.solver_order)
        self._step_index += 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)
