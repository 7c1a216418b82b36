"""Write a pipeline's weights as one checkpoint in the original (CompVis / Stability) layout."""
from __future__ import annotations

import json
from pathlib import Path

from .. import weights as W
from . import keys as K
from .load import META_KEY
from .presets import TEXT_PREFIX


def family_of(components: dict) -> str:
    if components.get("text_encoder_2") is not None:
        return "sdxl" if components.get("text_encoder") is not None else "sdxl_refiner"
    act = components["text_encoder"].config.get("hidden_act", "quick_gelu")
    return "sd1" if act == "quick_gelu" else "sd2"


def checkpoint_state(components: dict) -> tuple[dict, dict, str]:
    family = family_of(components)
    unet, vae = components["unet"], components["vae"]
    state = K.to_original(unet.state_dict(), K.unet_pairs(unet.config), K.UNET_PREFIX)
    state.update(K.vae_to_original(vae.state_dict(), vae.config))
    configs = {"family": family, "unet": dict(unet.config), "vae": dict(vae.config)}
    for name, prefix in TEXT_PREFIX[family].items():
        enc = components[name]
        text = enc.state_dict()
        if prefix.endswith(".model."):
            state.update(K.open_clip_to_original(text, prefix, enc.config["num_hidden_layers"],
                                                 extra_last_layer=family == "sd2"))
        else:
            state.update(K.clip_to_original(text, prefix))
        configs[name] = enc.config_dict() if hasattr(enc, "config_dict") else dict(enc.config)
    sched = components.get("scheduler")
    if sched is not None:
        configs["scheduler"] = {"_class_name": type(sched).__name__, **dict(sched.config)}
    return state, configs, family


def save_single_file(pipeline_or_components, path, dtype=None) -> Path:
    """Save as `.safetensors` (configs embedded as metadata, so the round trip is exact) or `.ckpt`."""
    components = pipeline_or_components if isinstance(pipeline_or_components, dict) \
        else pipeline_or_components.components
    state, configs, _ = checkpoint_state(components)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    path = Path(path)
    text = json.dumps(configs, default=lambda o: str(o).replace("torch.", ""))
    if path.suffix == ".safetensors":
        W.save_file(state, path, metadata={"format": "pt", META_KEY: text})
    else:
        import torch

        torch.save({"state_dict": {k: v.contiguous() for k, v in state.items()}}, path)
    return path
