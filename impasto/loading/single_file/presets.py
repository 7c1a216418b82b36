"""Bundled facts about each Stable Diffusion family that a checkpoint's shapes cannot tell.

They replace the hub repositories diffusers fetches configs from, so single files load offline.
"""
from __future__ import annotations

_SD_SCHEDULER = {  # what the SD 1.x / 2.x repositories ship (PNDM, as diffusers' pipelines expect)
    "_class_name": "PNDMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
    "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
    "trained_betas": None, "prediction_type": "epsilon", "timestep_spacing": "leading",
}
_SDXL_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
    "beta_end": 0.012, "num_train_timesteps": 1000, "steps_offset": 1, "prediction_type": "epsilon",
    "timestep_spacing": "leading", "interpolation_type": "linear", "use_karras_sigmas": False,
    "sample_max_value": 1.0, "set_alpha_to_one": False, "skip_prk_steps": True, "trained_betas": None,
}


def _open_clip_width(prefix):
    return lambda state: state[prefix + "text_projection"].shape[1]


FAMILIES = {
    # heads: fixed head count (SD 1.x); else head_dim: channels per head (SD 2.x, SDXL)
    "sd1": dict(heads=8, head_dim=None, sample_size=64, scaling_factor=0.18215, force_upcast=True,
                scheduler=_SD_SCHEDULER, text="clip", pad_token="<|endoftext|>"),
    "sd2": dict(heads=None, head_dim=64, sample_size=96, scaling_factor=0.18215, force_upcast=True,
                scheduler=_SD_SCHEDULER, text="open_clip", pad_token="!", upcast_attention=False),
    "sdxl": dict(heads=None, head_dim=64, sample_size=128, scaling_factor=0.13025, force_upcast=True,
                 scheduler=_SDXL_SCHEDULER, text="clip+open_clip", pad_token="!", n_time_ids=6,
                 pooled_dim=_open_clip_width("conditioner.embedders.1.model.")),
    "sdxl_refiner": dict(heads=None, head_dim=64, sample_size=128, scaling_factor=0.13025, force_upcast=True,
                         scheduler=_SDXL_SCHEDULER, text="open_clip", pad_token="!", n_time_ids=5,
                         pooled_dim=_open_clip_width("conditioner.embedders.0.model.")),
}

# where each family keeps its text encoders in the original layout
TEXT_PREFIX = {
    "sd1": {"text_encoder": "cond_stage_model.transformer."},
    "sd2": {"text_encoder": "cond_stage_model.model."},
    "sdxl": {"text_encoder": "conditioner.embedders.0.transformer.", "text_encoder_2": "conditioner.embedders.1.model."},
    "sdxl_refiner": {"text_encoder_2": "conditioner.embedders.0.model."},
}
