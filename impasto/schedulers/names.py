"""`scheduler_from_name`: a scheduler from an impasto/diffusers class name or an A1111 sampler name.

The A1111 names map to diffusers' equivalents as diffusers' documentation tabulates them, e.g.
"DPM++ 2M Karras" -> DPMSolverMultistepScheduler(use_karras_sigmas=True), "Euler a" ->
EulerAncestralDiscreteScheduler. Names are matched without regard to case or surrounding spaces.
"""
from __future__ import annotations

import importlib
import logging

logger = logging.getLogger("impasto")

# A1111 sampler name -> (impasto class name, config overrides)
A1111_SAMPLERS: dict[str, tuple[str, dict]] = {
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "LMS": ("LMSDiscreteScheduler", {}),
    "LMS Karras": ("LMSDiscreteScheduler", {"use_karras_sigmas": True}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "DPM2": ("KDPM2DiscreteScheduler", {}),
    "DPM2 Karras": ("KDPM2DiscreteScheduler", {"use_karras_sigmas": True}),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}),
    "DPM2 a Karras": ("KDPM2AncestralDiscreteScheduler", {"use_karras_sigmas": True}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler",
                        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "DPM++ 2M SDE Karras": ("DPMSolverMultistepScheduler",
                            {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
    "DPM++ SDE": ("DPMSolverSDEScheduler", {}),
    "DPM++ SDE Karras": ("DPMSolverSDEScheduler", {"use_karras_sigmas": True}),
    "DPM++ 2S a": ("DPMSolverSinglestepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "DPM++ 2S a Karras": ("DPMSolverSinglestepScheduler",
                          {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
    "DDIM": ("DDIMScheduler", {}),
    "PLMS": ("PNDMScheduler", {"skip_prk_steps": True}),
    "UniPC": ("UniPCMultistepScheduler", {}),
    "LCM": ("LCMScheduler", {}),
    "DDPM": ("DDPMScheduler", {}),
}

# A1111 names whose diffusers stand-in is an approximation (diffusers' table says "similar to")
_APPROXIMATE = {"DPM++ 2S a", "DPM++ 2S a Karras"}

SCHEDULER_CLASSES = (
    "DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
    "DPMSolverSDEScheduler", "UniPCMultistepScheduler", "DEISMultistepScheduler", "LCMScheduler", "TCDScheduler",
)


def _lookup(name: str) -> tuple[str, dict, str]:
    key = " ".join(str(name).split()).lower()
    for a1111, (cls_name, options) in A1111_SAMPLERS.items():
        if a1111.lower() == key:
            return cls_name, dict(options), a1111
    for cls_name in SCHEDULER_CLASSES:
        if cls_name.lower() == key:
            return cls_name, {}, cls_name
    known = ", ".join(repr(n) for n in (*A1111_SAMPLERS, *SCHEDULER_CLASSES))
    raise ValueError(f"name: unknown scheduler {name!r}; expected one of {known}")


def scheduler_from_name(name: str, config: dict | None = None, **overrides):
    """Build the scheduler `name` means (a class name such as "EulerDiscreteScheduler" or an A1111 sampler
    name such as "DPM++ 2M Karras") from `config` (typically `pipe.scheduler.config`; keys the class does not
    know are ignored), with the options the name implies and then `overrides` applied on top."""
    if not isinstance(name, str):
        raise ValueError(f"name: expected a scheduler name (str), got {type(name).__name__}")
    cls_name, options, canonical = _lookup(name)
    if canonical in _APPROXIMATE:
        logger.warning("scheduler %r: using %s, the closest diffusers-style equivalent", canonical, cls_name)
    package = importlib.import_module(__name__.split(".")[0])
    cls = getattr(package, cls_name)
    config = dict(config or {})
    config.pop("_class_name", None)
    options.update(overrides)
    return cls.from_config(config, **options)
