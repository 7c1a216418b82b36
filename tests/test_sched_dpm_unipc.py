"""UniPCMultistepScheduler against diffusers on the same model outputs."""
import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from impasto.schedulers.dpmsolver_multistep import DPMSolverMultistepScheduler  # noqa: E402
from impasto.schedulers.unipc import UniPCMultistepScheduler  # noqa: E402
from sched_utils import compare, run_loop  # noqa: E402


def pair(**config):
    return UniPCMultistepScheduler(**config), diffusers.UniPCMultistepScheduler(**config)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("solver_type", ["bh1", "bh2"])
@pytest.mark.parametrize("lower_order_final", [True, False])
def test_orders_and_variants(order, solver_type, lower_order_final):
    ours, theirs = pair(solver_order=order, solver_type=solver_type, lower_order_final=lower_order_final,
                        final_sigmas_type="sigma_min")
    compare(ours, theirs, 12)


@pytest.mark.parametrize(
    "config",
    [
        dict(),
        dict(solver_order=3),
        dict(solver_order=3, steps=25),
        dict(predict_x0=False, final_sigmas_type="sigma_min", solver_order=3),
        dict(disable_corrector=[0, 3], solver_order=3),
        dict(use_karras_sigmas=True, solver_order=3),
        dict(use_karras_sigmas=True, final_sigmas_type="sigma_min"),
        dict(use_exponential_sigmas=True),
        dict(prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing"),
        dict(timestep_spacing="leading", steps_offset=1),
        dict(prediction_type="sample", thresholding=True),
        dict(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0),
        dict(use_flow_sigmas=True, prediction_type="flow_prediction", use_karras_sigmas=True),
    ],
)
def test_options(config):
    steps = config.pop("steps", 10)
    ours, theirs = pair(**config)
    compare(ours, theirs, steps)


def test_custom_sigmas_and_dynamic_shift():
    sigmas = np.array([1.0, 0.8, 0.6, 0.4, 0.2, 0.1])
    ours, theirs = pair(use_flow_sigmas=True, prediction_type="flow_prediction")
    compare(ours, theirs, set_kwargs=dict(sigmas=sigmas))
    config = dict(use_flow_sigmas=True, prediction_type="flow_prediction", use_dynamic_shifting=True, shift_terminal=0.02)
    ours, theirs = pair(**config)
    compare(ours, theirs, set_kwargs=dict(num_inference_steps=8, mu=0.7))
    with pytest.raises(ValueError, match="sigmas"):
        UniPCMultistepScheduler().set_timesteps(sigmas=sigmas)


def test_solver_p():
    ours = UniPCMultistepScheduler(solver_p=DPMSolverMultistepScheduler())
    theirs = diffusers.UniPCMultistepScheduler(solver_p=diffusers.DPMSolverMultistepScheduler())
    compare(ours, theirs, 8)
    twin = ours.copy()
    assert twin.solver_p is not ours.solver_p and twin.solver_p.config == ours.solver_p.config


def test_bh1_final_zero_is_finite_where_diffusers_gives_nan():
    # B(h) = h is infinite on the final step to sigma 0; diffusers multiplies it by a zero term (NaN), impasto
    # drops the vanishing term. Every step before the last still equals diffusers.
    ours, theirs = pair(solver_type="bh1", solver_order=3)
    t1, s1, x1, _ = run_loop(ours, 8)
    t2, s2, x2, _ = run_loop(theirs, 8)
    assert torch.isnan(x2).all() and torch.isfinite(x1).all()
    before_ours, before_theirs = pair(solver_type="bh1", solver_order=3)
    for sched in (before_ours, before_theirs):
        sched.set_timesteps(8)
    x_a = x_b = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    from sched_utils import fake_model

    for t in before_ours.timesteps[:-1]:
        x_a = before_ours.step(fake_model(x_a, t), t, x_a).prev_sample
        x_b = before_theirs.step(fake_model(x_b, t), t, x_b).prev_sample
    torch.testing.assert_close(x_a, x_b, atol=1e-5, rtol=0)
    # the last step lands on the (corrected) data prediction, as with bh2
    t = before_ours.timesteps[-1]
    out = fake_model(x_a, t)
    last = before_ours.step(out, t, x_a).prev_sample
    torch.testing.assert_close(last, before_ours.model_outputs[-1], atol=1e-5, rtol=0)


def test_config_swap_and_errors():
    dpm = diffusers.DPMSolverMultistepScheduler(solver_type="heun", beta_schedule="scaled_linear",
                                                beta_start=0.00085, beta_end=0.012)
    ours = UniPCMultistepScheduler.from_config(dpm.config)
    theirs = diffusers.UniPCMultistepScheduler.from_config(dpm.config)
    assert ours.config.solver_type == theirs.config.solver_type == "bh2"
    compare(ours, theirs, 9)
    with pytest.raises(ValueError, match="solver_type"):
        UniPCMultistepScheduler(solver_type="bh3")
    with pytest.raises(ValueError, match="predict_x0"):
        UniPCMultistepScheduler(predict_x0=False)  # final sigma 0 has no finite noise-prediction step
    with pytest.raises(ValueError, match="shift_terminal"):
        UniPCMultistepScheduler(shift_terminal=0.1)
    with pytest.raises(ValueError, match="mu"):
        UniPCMultistepScheduler(use_flow_sigmas=True, use_dynamic_shifting=True).set_timesteps(5)


def test_repeated_final_sigma_is_a_no_op():
    sched = UniPCMultistepScheduler(use_karras_sigmas=True, final_sigmas_type="sigma_min", solver_order=3,
                                    lower_order_final=False)
    sched.set_timesteps(8)
    assert sched.sigmas[-1] == sched.sigmas[-2]
    from sched_utils import fake_model

    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    for t in sched.timesteps:
        before = x
        x = sched.step(fake_model(x, t), t, x).prev_sample
    assert torch.isfinite(x).all()
    assert torch.equal(x, sched.last_sample) and not torch.equal(x, before)  # corrected, then not moved
