"""DPMSolverSinglestepScheduler against diffusers on the same model outputs."""
import pytest

diffusers = pytest.importorskip("diffusers")

from impasto.schedulers.dpmsolver_singlestep import DPMSolverSinglestepScheduler, order_list  # noqa: E402
from sched_utils import compare  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def pair(**config):
    return DPMSolverSinglestepScheduler(**config), diffusers.DPMSolverSinglestepScheduler(**config)


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("algorithm", ["dpmsolver++", "dpmsolver", "sde-dpmsolver++"])
@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
@pytest.mark.parametrize("steps", [9, 10, 11])
def test_orders_algorithms_solver_types(order, algorithm, solver_type, steps):
    config = dict(solver_order=order, algorithm_type=algorithm, solver_type=solver_type)
    if algorithm == "dpmsolver":
        config["final_sigmas_type"] = "sigma_min"
    ours, theirs = pair(**config)
    compare(ours, theirs, steps)
    assert ours.order_list == theirs.order_list


@pytest.mark.parametrize(
    "config,steps",
    [
        (dict(solver_order=3, final_sigmas_type="sigma_min", lower_order_final=False), 12),
        (dict(solver_order=2, final_sigmas_type="sigma_min", lower_order_final=False), 9),  # forced on, as diffusers
        (dict(solver_order=3, lower_order_final=True), 12),
        (dict(use_karras_sigmas=True, solver_order=3), 10),
        (dict(use_exponential_sigmas=True), 10),
        (dict(prediction_type="v_prediction", lambda_min_clipped=-5.1), 10),
        (dict(prediction_type="sample", thresholding=True), 8),
        (dict(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=2.0), 8),
    ],
)
def test_options(config, steps):
    ours, theirs = pair(**config)
    compare(ours, theirs, steps)
    assert ours.order_list == theirs.order_list
    assert ours.config.lower_order_final == theirs.config.lower_order_final


def test_custom_timesteps():
    ours, theirs = pair(solver_order=3)
    compare(ours, theirs, set_kwargs=dict(timesteps=[999, 850, 700, 501, 300, 120, 10]))


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("lower", [True, False])
@pytest.mark.parametrize("final", ["zero", "sigma_min"])
def test_order_lists(order, lower, final):
    sched = diffusers.DPMSolverSinglestepScheduler(solver_order=order, final_sigmas_type=final)
    sched.register_to_config(lower_order_final=lower)
    for steps in range(order if not lower else 1, 14):
        if not lower and steps % order:
            continue
        assert order_list(steps, order, lower, final) == sched.get_order_list(steps), steps


def test_bad_config_raises():
    with pytest.raises(ValueError, match="algorithm_type"):
        DPMSolverSinglestepScheduler(algorithm_type="sde-dpmsolver")
    with pytest.raises(ValueError, match="solver_order"):
        DPMSolverSinglestepScheduler(solver_order=4)
    with pytest.raises(ValueError, match="final_sigmas_type"):
        DPMSolverSinglestepScheduler(algorithm_type="dpmsolver")
