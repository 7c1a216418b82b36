"""Helpers for the scheduler tests: a fixed fake model and a loop that drives any scheduler."""
from __future__ import annotations

import inspect

import torch

SHAPE = (2, 3, 4, 4)


def fake_model(x: torch.Tensor, t) -> torch.Tensor:
    """A fixed, smooth, seeded function of (x, t), standing in for a UNet."""
    g = torch.Generator().manual_seed(1234)
    w = torch.randn(x.shape[1:], generator=g)
    tt = float(t) / 1000.0
    return 0.7 * torch.tanh(x) + 0.3 * w * torch.cos(torch.tensor(3.0 * tt)) + 0.05 * tt


def run_loop(scheduler, num_inference_steps=None, seed=0, begin_index=None, set_kwargs=None, step_kwargs=None,
             dtype=torch.float32):
    """Drive `scheduler` as a pipeline would; returns (timesteps, sigmas or None, final sample, pred x0 list)."""
    set_kwargs = dict(set_kwargs or {})
    if num_inference_steps is not None:
        set_kwargs["num_inference_steps"] = num_inference_steps
    scheduler.set_timesteps(**set_kwargs)
    timesteps = scheduler.timesteps.clone()
    sigmas = scheduler.sigmas.clone() if isinstance(getattr(scheduler, "sigmas", None), torch.Tensor) else None
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    x = x * scheduler.init_noise_sigma
    gen = torch.Generator().manual_seed(seed + 1)
    step_kwargs = dict(step_kwargs or {})
    if "generator" in inspect.signature(scheduler.step).parameters:
        step_kwargs["generator"] = gen
    run = timesteps
    if begin_index is not None:
        scheduler.set_begin_index(begin_index)
        run = timesteps[begin_index:]
    x0s = []
    for t in run:
        inp = scheduler.scale_model_input(x, t)
        out = fake_model(inp, t).to(dtype)
        res = scheduler.step(out, t, x, **step_kwargs)
        x = res.prev_sample
        x0s.append(res[1] if len(res) > 1 else None)
    return timesteps, sigmas, x, x0s


def compare(ours, theirs, num_inference_steps=None, atol=1e-5, **kw):
    """Run both schedulers through the same loop and assert equal schedules and samples."""
    t1, s1, x1, p1 = run_loop(ours, num_inference_steps, **kw)
    t2, s2, x2, p2 = run_loop(theirs, num_inference_steps, **kw)
    assert t1.shape == t2.shape, (t1, t2)
    torch.testing.assert_close(t1.double(), t2.double(), atol=1e-4, rtol=0)
    if s2 is not None:
        assert s1 is not None
        torch.testing.assert_close(s1.double(), s2.double(), atol=atol, rtol=1e-6, equal_nan=True)
    assert torch.isfinite(x1).all()
    diff = (x1 - x2).abs().max().item()
    assert diff <= atol * max(1.0, x2.abs().max().item()), diff
    for a, b in zip(p1, p2):
        if a is not None and b is not None:
            torch.testing.assert_close(a, b, atol=atol * max(1.0, b.abs().max().item()), rtol=0)
    return diff


def diffusers_lms():
    """diffusers' LMSDiscreteScheduler, usable without scipy: its `integrate.quad` is replaced by a
    Gauss-Legendre rule, exact for the cubic integrands LMS needs (quad is exact on them as well)."""
    import types

    import numpy as np
    from diffusers.schedulers import scheduling_lms_discrete as mod

    if not hasattr(mod, "integrate"):
        def quad(f, a, b, epsrel=None):
            x, w = np.polynomial.legendre.leggauss(8)
            a, b = float(a), float(b)
            vals = [float(f(0.5 * (b - a) * xi + 0.5 * (a + b))) for xi in x]
            return 0.5 * (b - a) * float(np.dot(w, vals)), 0.0

        mod.integrate = types.SimpleNamespace(quad=quad)
    return mod.LMSDiscreteScheduler
