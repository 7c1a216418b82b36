"""PNDMScheduler: pseudo numerical methods (arXiv:2202.09778); with skip_prk_steps it is "PLMS"."""
from __future__ import annotations

import numpy as np
import torch

from ..core.samplers import adams_bashforth, pndm_transfer
from ..core.schedule import spaced_timesteps
from ..models.config import register_to_config
from .base import SchedulerOutput
from .ddim import AlphaScheduler


class PNDMScheduler(AlphaScheduler):
    """PNDM with diffusers' config keys: three Runge-Kutta warm-up steps (12 model calls) then linear
    multistep (PLMS); `skip_prk_steps=True` warms up with a second-order step instead, as Stable Diffusion does.

    The schedule and the eps history live on the instance; use `copy()` / `fresh()` for each concurrent run.
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
        skip_prk_steps: bool = False,
        set_alpha_to_one: bool = False,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
    ):
        self._check_config(prediction_types=("epsilon", "v_prediction"))
        self._init_train_schedule()
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.pndm_order = 4
        self._reset()
        self.num_inference_steps = None
        self._timesteps = np.arange(0, num_train_timesteps)[::-1].copy()
        self.prk_timesteps = None
        self.plms_timesteps = None
        self.timesteps = None

    def _reset(self) -> None:
        self.cur_model_output = 0
        self.counter = 0
        self.cur_sample = None
        self.ets = []

    def set_timesteps(self, num_inference_steps: int, device=None):
        """PRK timesteps (unless skip_prk_steps) followed by PLMS timesteps; resets the eps history."""
        self._check_set_timesteps(num_inference_steps)
        c = self.config
        self.num_inference_steps = num_inference_steps
        ts = spaced_timesteps(c.timestep_spacing, num_inference_steps, c.num_train_timesteps, c.steps_offset,
                              owner=type(self).__name__)
        self._timesteps = np.round(ts[::-1]).astype(np.int64)  # ascending, as diffusers keeps it
        base = self._timesteps
        if c.skip_prk_steps:
            self.prk_timesteps = np.array([])
            self.plms_timesteps = np.concatenate([base[:-1], base[-2:-1], base[-1:]])[::-1].copy()
        else:
            if num_inference_steps < self.pndm_order:
                raise ValueError(f"PNDMScheduler: num_inference_steps={num_inference_steps} must be at least "
                                 f"{self.pndm_order} for the Runge-Kutta warm-up (or set skip_prk_steps=True)")
            half = c.num_train_timesteps // num_inference_steps // 2
            prk = np.array(base[-self.pndm_order:]).repeat(2) + np.tile(np.array([0, half]), self.pndm_order)
            self.prk_timesteps = prk[:-1].repeat(2)[1:-1][::-1].copy()
            self.plms_timesteps = base[:-3][::-1].copy()
        ts = np.concatenate([self.prk_timesteps, self.plms_timesteps]).astype(np.int64)
        self.timesteps = torch.from_numpy(ts).to(device)
        self._reset()

    def step(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor, return_dict: bool = True):
        """A Runge-Kutta stage while warming up, then a linear multistep update."""
        if self.counter < len(self.prk_timesteps) and not self.config.skip_prk_steps:
            return self.step_prk(model_output, timestep, sample, return_dict)
        return self.step_plms(model_output, timestep, sample, return_dict)

    def _require_steps(self) -> None:
        if self.num_inference_steps is None:
            raise ValueError("PNDMScheduler.step: call set_timesteps(num_inference_steps) first")

    def step_prk(self, model_output, timestep, sample, return_dict: bool = True):
        """One of the four stages of a Runge-Kutta step (classic RK4 weights 1/6, 1/3, 1/3, 1/6)."""
        self._require_steps()
        diff_to_prev = 0 if self.counter % 2 else self.config.num_train_timesteps // self.num_inference_steps // 2
        prev_timestep = timestep - diff_to_prev
        timestep = self.prk_timesteps[self.counter // 4 * 4]
        stage = self.counter % 4
        if stage == 0:
            self.cur_model_output += 1 / 6 * model_output
            self.ets.append(model_output)
            self.cur_sample = sample
        elif stage in (1, 2):
            self.cur_model_output += 1 / 3 * model_output
        else:
            model_output = self.cur_model_output + 1 / 6 * model_output
            self.cur_model_output = 0
        cur_sample = self.cur_sample if self.cur_sample is not None else sample
        prev_sample = self._get_prev_sample(cur_sample, timestep, prev_timestep, model_output)
        self.counter += 1
        return SchedulerOutput(prev_sample=prev_sample) if return_dict else (prev_sample,)

    def step_plms(self, model_output, timestep, sample, return_dict: bool = True):
        """Adams-Bashforth over the last (up to) four eps; the first two calls form a second-order warm-up
        when the PRK steps are skipped."""
        self._require_steps()
        if not self.config.skip_prk_steps and len(self.ets) < 3:
            raise ValueError("PNDMScheduler.step_plms: run the 12 PRK warm-up calls first (or skip_prk_steps=True)")
        stride = self.config.num_train_timesteps // self.num_inference_steps
        prev_timestep = timestep - stride
        if self.counter != 1:
            self.ets = self.ets[-3:]
            self.ets.append(model_output)
        else:
            prev_timestep, timestep = timestep, timestep + stride
        if len(self.ets) == 1 and self.counter == 0:
            self.cur_sample = sample
        elif len(self.ets) == 1 and self.counter == 1:
            model_output = (model_output + self.ets[-1]) / 2
            sample, self.cur_sample = self.cur_sample, None
        else:
            model_output = adams_bashforth(self.ets)
        prev_sample = self._get_prev_sample(sample, timestep, prev_timestep, model_output)
        self.counter += 1
        return SchedulerOutput(prev_sample=prev_sample) if return_dict else (prev_sample,)

    def _get_prev_sample(self, sample, timestep, prev_timestep, model_output):
        alpha_prod_t = self.alphas_cumprod[timestep]
        alpha_prod_t_prev = self._alpha_prev(prev_timestep)
        if self.config.prediction_type == "v_prediction":
            model_output = alpha_prod_t**0.5 * model_output + (1 - alpha_prod_t) ** 0.5 * sample
        return pndm_transfer(sample, model_output, alpha_prod_t, alpha_prod_t_prev)
