"""Flax schedulers (DDIM, PNDM, LMS, DPM-Solver multistep, Euler) as pure-functional state objects.

No schedule or step maths is written twice: on the host, `set_timesteps` runs impasto's torch scheduler of the
same config over the whole ladder once, feeding it basis vectors instead of latents. Each deterministic step of
these samplers is linear in the starting sample and the model outputs, so this trace yields, for every step k,
the coefficients of x_{k+1} over (x_start, eps_0, ..., eps_k), plus the model-input scales, the model
timesteps, `init_noise_sigma` and the `add_noise` weights. On the device a step is then one weighted sum over
a history buffer of the model outputs: cheap, jit- and `lax.fori_loop`-friendly, and equal to the torch
scheduler to float rounding.

    scheduler, state = FlaxDDIMScheduler.from_pretrained(path, subfolder="scheduler")
    state = scheduler.set_timesteps(state, num_inference_steps, shape=latents.shape)
    latents = latents * state.init_noise_sigma
    x = scheduler.scale_model_input(state, latents, t)
    latents, state = scheduler.step(state, model_output, t, latents).to_tuple()

The state's step counter (not the `timestep` argument, kept for diffusers' signature) decides which step
runs. Only deterministic configurations are linear: clip_sample, thresholding and the SDE variants of
DPM-Solver are refused with a ValueError.
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from ..outputs import BaseOutput

logger = logging.getLogger("impasto")


@struct.dataclass
class FlaxSchedulerState:
    """Tables for one run (from `set_timesteps`) and the run's progress (step counter, model-output history)."""

    alphas_cumprod: jnp.ndarray
    timesteps: jnp.ndarray  # (m,) the model's timesteps for the steps that run, float32
    input_scales: jnp.ndarray  # (m,) scale_model_input factors
    coefficients: jnp.ndarray  # (m, m + 1) x_{k+1} over (x_start, eps_0, ..., eps_{m-1})
    init_noise_sigma: jnp.ndarray
    noise_weights: jnp.ndarray  # (2,) add_noise: x0 weight, noise weight at the first step that runs
    step_index: jnp.ndarray
    history: jnp.ndarray | None = None  # (m + 1, *shape) float32: x_start, then the model outputs
    # plain leaves, not static fields: runs of equal length share one compiled program whatever their settings
    num_inference_steps: jnp.ndarray = 0
    begin_index: jnp.ndarray = 0

    @property
    def num_steps(self) -> int:
        """How many steps run (len(timesteps): fewer than num_inference_steps after a begin index)."""
        return int(self.timesteps.shape[0])


@dataclass
class FlaxSchedulerOutput(BaseOutput):
    prev_sample: jnp.ndarray
    state: FlaxSchedulerState


def _scalar(value) -> float:
    return float(value.item() if hasattr(value, "item") else value)


class FlaxSchedulerMixin:
    """Shared by the Flax schedulers: built from the same config keys as the torch scheduler named by
    `torch_class`; see the module docstring."""

    torch_class = ""
    config_name = "scheduler_config.json"
    refused: dict[str, tuple] = {}  # config key -> values that make a step non-linear

    def __init__(self, dtype=jnp.float32, **config):
        module, _, name = self.torch_class.partition(":")
        torch_cls = getattr(importlib.import_module(module), name)
        self._torch = torch_cls.from_config(config)
        cfg = self._torch.config
        for key, bad in self.refused.items():
            if cfg.get(key) in bad:
                raise ValueError(f"{type(self).__name__}: config {key}={cfg.get(key)!r} is not supported by the "
                                 f"Flax scheduler (its steps would not be linear); use another value")
        self.dtype = dtype
        self.order = self._torch.order

    @property
    def config(self):
        return self._torch.config

    @classmethod
    def from_config(cls, config: dict, **overrides):
        return cls(**{**dict(config), **overrides})

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, subfolder: str | None = None, **kwargs):
        """(scheduler, state) from a scheduler_config.json, as diffusers' Flax schedulers return them."""
        from ..loading.hub import resolve_file
        from ..models.config import read_json

        hub = {k: kwargs.pop(k) for k in ("local_files_only", "cache_dir", "revision", "token") if k in kwargs}
        config = read_json(resolve_file(pretrained_model_name_or_path, cls.config_name, subfolder, **hub))
        scheduler = cls.from_config(config, **kwargs)
        return scheduler, scheduler.create_state()

    def torch_scheduler(self):
        """A fresh impasto torch scheduler with this config (the source of every table)."""
        return self._torch.copy()

    # ---- state ------------------------------------------------------------------------------------------
    def create_state(self) -> FlaxSchedulerState:
        """A state with the training schedule and no ladder yet (call `set_timesteps`)."""
        empty = jnp.zeros((0,), jnp.float32)
        return FlaxSchedulerState(
            alphas_cumprod=jnp.asarray(self._torch.alphas_cumprod.numpy(), jnp.float32), timesteps=empty,
            input_scales=empty, coefficients=jnp.zeros((0, 1), jnp.float32),
            init_noise_sigma=jnp.asarray(_scalar(self._torch.init_noise_sigma), jnp.float32),
            noise_weights=jnp.ones((2,), jnp.float32), step_index=jnp.zeros((), jnp.int32),
            num_inference_steps=jnp.zeros((), jnp.int32), begin_index=jnp.zeros((), jnp.int32))

    def set_timesteps(self, state: FlaxSchedulerState, num_inference_steps: int, shape: tuple = (),
                      begin_index: int = 0) -> FlaxSchedulerState:
        """The state for a run of `num_inference_steps` (host-side; the number is static under jit), starting at
        ladder position `begin_index` (img2img). `shape` (the latents') sizes the model-output history."""
        if not isinstance(num_inference_steps, (int, np.integer)) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps: expected a positive int, got {num_inference_steps!r}")
        tables = self._trace(int(num_inference_steps), int(begin_index))
        m = len(tables["timesteps"])
        history = jnp.zeros((m + 1, *shape), jnp.float32) if shape else None
        return state.replace(
            timesteps=jnp.asarray(tables["timesteps"], jnp.float32),
            input_scales=jnp.asarray(tables["input_scales"], jnp.float32),
            coefficients=jnp.asarray(tables["coefficients"], jnp.float32),
            init_noise_sigma=jnp.asarray(tables["init_noise_sigma"], jnp.float32),
            noise_weights=jnp.asarray(tables["noise_weights"], jnp.float32),
            step_index=jnp.zeros((), jnp.int32), history=history,
            num_inference_steps=jnp.asarray(num_inference_steps, jnp.int32),
            begin_index=jnp.asarray(begin_index, jnp.int32))

    def set_begin_index(self, state: FlaxSchedulerState, begin_index: int) -> FlaxSchedulerState:
        """Re-plan the current run to start at ladder position `begin_index`."""
        shape = () if state.history is None else state.history.shape[1:]
        return self.set_timesteps(state, int(state.num_inference_steps), shape, begin_index)

    def _trace(self, n: int, begin: int) -> dict:
        import torch

        sched = self.torch_scheduler()
        sched.set_timesteps(n)
        ladder = sched.timesteps
        if not 0 <= begin < len(ladder):
            raise ValueError(f"begin_index: expected 0 <= begin_index < {len(ladder)}, got {begin}")
        if begin:
            sched.set_begin_index(begin)
        steps = ladder[begin:]
        m, dim = len(steps), len(steps) + 1
        f64 = dict(dtype=torch.float64)
        one, zero = torch.ones(1, 1, **f64), torch.zeros(1, 1, **f64)
        noise_weights = [_scalar(sched.add_noise(one, zero, steps[:1])), _scalar(sched.add_noise(zero, one, steps[:1]))]
        init_noise_sigma = _scalar(sched.init_noise_sigma)
        x = torch.zeros(1, dim, **f64)
        x[0, 0] = 1.0
        scales, coefficients = np.zeros(m), np.zeros((m, dim))
        for k, t in enumerate(steps):
            scales[k] = _scalar(sched.scale_model_input(one.clone(), t))
            eps = torch.zeros(1, dim, **f64)
            eps[0, k + 1] = 1.0
            x = sched.step(eps, t, x, return_dict=False)[0].to(torch.float64)
            coefficients[k] = x[0].numpy()
        return dict(timesteps=steps.to(torch.float32).numpy(), input_scales=scales, coefficients=coefficients,
                    init_noise_sigma=init_noise_sigma, noise_weights=noise_weights)

    # ---- stepping (traceable; the same for every class, so one compiled loop serves them all) ---------------
    def scale_model_input(self, state: FlaxSchedulerState, sample, timestep=None):
        """The model input at the current step (sample / sqrt(sigma^2 + 1) for the sigma samplers)."""
        return scale_input(state, sample)

    def step(self, state: FlaxSchedulerState, model_output, timestep, sample, return_dict: bool = True):
        """Advance the sample by the state's current step; returns (prev_sample, new state)."""
        prev, state = advance(state, model_output, sample)
        return FlaxSchedulerOutput(prev_sample=prev, state=state) if return_dict else (prev, state)

    def add_noise(self, state: FlaxSchedulerState, original_samples, noise):
        """The image latents noised to the level of the run's first step (as torch's add_noise at the begin
        index)."""
        return add_noise(state, original_samples, noise)


def scale_input(state: FlaxSchedulerState, sample):
    return sample * state.input_scales[state.step_index].astype(sample.dtype)


def advance(state: FlaxSchedulerState, model_output, sample):
    """(x_{k+1}, state after step k): store the output in the history, take row k of the coefficients."""
    k = state.step_index
    history = state.history
    if history is None:
        history = jnp.zeros((state.coefficients.shape[1], *sample.shape), jnp.float32)
    history = jnp.where(k == 0, history.at[0].set(sample.astype(jnp.float32)), history)
    history = jax.lax.dynamic_update_index_in_dim(history, model_output.astype(jnp.float32), k + 1, axis=0)
    prev = jnp.tensordot(state.coefficients[k], history, axes=1).astype(sample.dtype)
    return prev, state.replace(history=history, step_index=k + 1)


def add_noise(state: FlaxSchedulerState, original_samples, noise):
    w = state.noise_weights.astype(original_samples.dtype)
    return w[0] * original_samples + w[1] * noise


class FlaxDDIMScheduler(FlaxSchedulerMixin):
    """DDIM (eta = 0), with DDIMScheduler's config keys."""

    torch_class = "impasto.schedulers.ddim:DDIMScheduler"
    refused = {"clip_sample": (True,), "thresholding": (True,)}


class FlaxPNDMScheduler(FlaxSchedulerMixin):
    """PNDM (PLMS, with or without the Runge-Kutta warm-up), with PNDMScheduler's config keys."""

    torch_class = "impasto.schedulers.pndm:PNDMScheduler"


class FlaxLMSDiscreteScheduler(FlaxSchedulerMixin):
    """k-diffusion's linear multistep sampler (order 4), with LMSDiscreteScheduler's config keys."""

    torch_class = "impasto.schedulers.lms:LMSDiscreteScheduler"


class FlaxEulerDiscreteScheduler(FlaxSchedulerMixin):
    """Euler (no churn), with EulerDiscreteScheduler's config keys."""

    torch_class = "impasto.schedulers.euler:EulerDiscreteScheduler"


class FlaxDPMSolverMultistepScheduler(FlaxSchedulerMixin):
    """DPM-Solver / DPM-Solver++ multistep (ODE variants), with DPMSolverMultistepScheduler's config keys."""

    torch_class = "impasto.schedulers.dpmsolver_multistep:DPMSolverMultistepScheduler"
    refused = {"thresholding": (True,), "algorithm_type": ("sde-dpmsolver", "sde-dpmsolver++")}


FLAX_SCHEDULERS = {cls.torch_class.rpartition(":")[2]: cls for cls in (
    FlaxDDIMScheduler, FlaxPNDMScheduler, FlaxLMSDiscreteScheduler, FlaxEulerDiscreteScheduler,
    FlaxDPMSolverMultistepScheduler)}


def scheduler_class(class_name: str):
    """The Flax scheduler for a scheduler_config.json `_class_name` (torch or Flax spelling)."""
    name = class_name.removeprefix("Flax")
    if name not in FLAX_SCHEDULERS:
        raise ValueError(f"scheduler: {class_name!r} has no Flax version; expected one of "
                         f"{', '.join(sorted(FLAX_SCHEDULERS))}")
    return FLAX_SCHEDULERS[name]
