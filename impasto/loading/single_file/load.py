"""Load a single-file checkpoint (CompVis / Stability layout) into diffusers-layout components, offline.

Configs come, in order of preference, from: a `config=` diffusers folder; the `impasto.configs` metadata
that `save_single_file` writes; inference from key names and shapes plus the family presets.
"""
from __future__ import annotations

import inspect
import json
import logging
import os
from pathlib import Path

from .. import weights as W
from ..hub import resolve_file
from . import keys as K
from .detect import clip_config, detect_family, unet_config, vae_config
from .presets import FAMILIES, TEXT_PREFIX

logger = logging.getLogger("impasto")
META_KEY = "impasto.configs"


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, dict]:
    """(state dict, embedded configs or {}) from .safetensors (mmap) or .ckpt/.pt/.bin (safe unpickling)."""
    state, configs, _ = read_checkpoint_with_step(path)
    return state, configs


def read_checkpoint_with_step(path: str | os.PathLike) -> tuple[dict, dict, int | None]:
    """read_checkpoint, plus the training step a .ckpt records (`global_step`), else None."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if path.suffix != ".safetensors":
        data = W.safe_torch_load(path)
        step = data.get("global_step")
        return W.state_dict_of(data), {}, step if isinstance(step, int) else None
    from safetensors import safe_open

    state = W.load_file(path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return state, json.loads(meta[META_KEY]) if META_KEY in meta else {}, None


def original_parameterization(original_config) -> str | None:
    """"v" or "eps" from an original (CompVis / A1111) YAML config: a dict, a path to the .yaml, or its text."""
    if original_config is None:
        return None
    if isinstance(original_config, dict):
        params = (original_config.get("model") or {}).get("params") or {}
        return params.get("parameterization")
    text = str(original_config)
    if "\n" not in text and Path(os.path.expanduser(text)).is_file():
        text = Path(os.path.expanduser(text)).read_text(encoding="utf-8")
    elif "\n" not in text:
        raise ValueError(f"original_config: {text!r} is no file; give a local .yaml path, its text or a dict "
                         "(impasto does not download it)")
    import re

    found = re.search(r"^\s*parameterization:\s*[\"']?(\w+)", text, re.MULTILINE)
    return found.group(1) if found else None


def default_prediction_type(family: str, original_config, global_step) -> str | None:
    """What diffusers assumes when neither the file nor the caller says: an original config's parameterization
    ("v" -> v_prediction), else SD 2.x is v-prediction (the 768-v models) unless the file says it stopped at
    step 875,000 (the 512-base model); None keeps the family preset."""
    parameterization = original_parameterization(original_config)
    if parameterization is not None:
        return "v_prediction" if parameterization == "v" else "epsilon"
    if family == "sd2":
        return "epsilon" if global_step == 875000 else "v_prediction"
    return None


def _folder_config(config_folder, subfolder, name="config.json"):
    if config_folder is None:
        return None
    file = resolve_file(config_folder, name, subfolder, required=False, local_files_only=True)
    return None if file is None else json.loads(Path(file).read_text(encoding="utf-8"))


def _text_encoders(state, family, configs, config_folder, dtype, source):
    import impasto

    out = {}
    for name, prefix in TEXT_PREFIX[family].items():
        if not any(k.startswith(prefix) for k in state):
            continue
        open_clip = prefix.endswith(".model.")
        with_projection = name == "text_encoder_2"
        cfg = configs.get(name) or _folder_config(config_folder, name)
        if open_clip:
            blocks = K.count_blocks(state, prefix + "transformer.resblocks.")
            layers = blocks - 1 if family == "sd2" else blocks  # SD 2.x reads the penultimate layer
            if cfg is not None:
                layers = cfg["num_hidden_layers"]
            text_state = K.open_clip_from_original(state, prefix, layers, with_projection)
        else:
            text_state = K.clip_from_original(state, prefix)
        cfg = cfg or clip_config(text_state, "gelu" if open_clip else "quick_gelu", with_projection)
        cls = impasto.CLIPTextModelWithProjection if with_projection else impasto.CLIPTextModel
        out[name] = cls.from_config_and_state(cfg, text_state, f"{source} ({name})", dtype=dtype).eval()
    return out


def _tokenizer(family: str, config_folder, subfolder: str):
    import impasto

    if config_folder is not None and resolve_file(config_folder, "tokenizer_config.json", subfolder, required=False,
                                                  local_files_only=True):
        return impasto.CLIPTokenizer.from_pretrained(config_folder, subfolder=subfolder)
    pad = FAMILIES[family]["pad_token"] if subfolder == "tokenizer_2" or family == "sd2" else "<|endoftext|>"
    return impasto.CLIPTokenizer.from_vendored(pad_token=pad)


def load_components(path, config=None, original_config=None, prediction_type=None, num_in_channels=None,
                    dtype=None, family=None) -> tuple[dict, str]:
    """Every component of the checkpoint at `path`, plus the detected family."""
    import impasto

    source = str(path)
    state, configs, step = read_checkpoint_with_step(path)
    family = family or configs.get("family") or detect_family(state)
    if family not in FAMILIES:
        raise ValueError(f"family: expected one of {sorted(FAMILIES)}, got {family!r}")
    ucfg = configs.get("unet") or _folder_config(config, "unet") or unet_config(state, family, num_in_channels)
    if num_in_channels is not None:
        ucfg = {**ucfg, "in_channels": num_in_channels}
    unet = impasto.UNet2DConditionModel.from_config_and_state(
        ucfg, K.from_original(state, K.unet_pairs(ucfg), K.UNET_PREFIX), f"{source} (unet)", dtype=dtype)
    vcfg = configs.get("vae") or _folder_config(config, "vae") or vae_config(state, family)
    vae = impasto.AutoencoderKL.from_config_and_state(vcfg, K.vae_from_original(state, vcfg), f"{source} (vae)",
                                                      dtype=dtype)
    components = {"unet": unet.eval(), "vae": vae.eval()}
    components.update(_text_encoders(state, family, configs, config, dtype, source))
    for name, sub in (("tokenizer", "tokenizer"), ("tokenizer_2", "tokenizer_2")):
        if name.replace("tokenizer", "text_encoder") in components:
            components[name] = _tokenizer(family, config, sub)
    scfg = configs.get("scheduler") or _folder_config(config, "scheduler", "scheduler_config.json")
    if scfg is None:
        scfg = dict(FAMILIES[family]["scheduler"])
        guess = default_prediction_type(family, original_config, step) if prediction_type is None else None
        if guess is not None:
            logger.info("%s: prediction_type %r (%s); pass prediction_type= to choose", source, guess,
                        "from original_config" if original_config is not None else
                        f"SD 2.x, global_step {step}: diffusers' default")
            scfg["prediction_type"] = guess
    if prediction_type is not None:
        scfg = {**scfg, "prediction_type": prediction_type}
    components["scheduler"] = getattr(impasto, scfg.get("_class_name", "PNDMScheduler")).from_config(scfg)
    return components, family


def _dtype(dtype, torch_dtype):
    """dtype= or torch_dtype= as a torch.dtype ("float16" and the like too), or None."""
    from ...models.modeling import parse_dtype

    return parse_dtype(dtype if dtype is not None else torch_dtype)


def pipeline_from_single_file(cls, path, **kwargs):
    """`cls.from_single_file`: build the pipeline class `cls` from one checkpoint file."""
    overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in inspect.signature(cls.__init__).parameters}
    dtype = _dtype(kwargs.pop("dtype", None), kwargs.pop("torch_dtype", None))
    known = {"config", "original_config", "prediction_type", "num_in_channels", "family"}
    for ignored in ("local_files_only", "use_safetensors", "load_safety_checker", "cache_dir", "token", "revision",
                    "low_cpu_mem_usage", "device_map", "force_download", "proxies"):
        kwargs.pop(ignored, None)
    unknown = set(kwargs) - known
    if unknown:
        raise ValueError(f"{cls.__name__}.from_single_file: unexpected arguments {sorted(unknown)}")
    components, family = load_components(path, dtype=dtype, **kwargs)
    params = inspect.signature(cls.__init__).parameters
    args = {k: v for k, v in components.items() if k in params}
    for optional in ("safety_checker", "feature_extractor", "image_encoder", "text_encoder", "tokenizer"):
        if optional in params and optional not in args:
            args[optional] = None
    if "requires_safety_checker" in params:
        args["requires_safety_checker"] = False
    if "requires_aesthetics_score" in params and family == "sdxl_refiner":
        args["requires_aesthetics_score"] = True
    if "force_zeros_for_empty_prompt" in params and family == "sdxl_refiner":
        args["force_zeros_for_empty_prompt"] = False
    args.update(overrides)
    return cls(**args)


def model_from_single_file(cls, path, config=None, dtype=None, torch_dtype=None, subfolder=None, **kwargs):
    """`UNet2DConditionModel.from_single_file` / `AutoencoderKL.from_single_file`."""
    dtype = _dtype(dtype, torch_dtype)
    state, configs = read_checkpoint(path)
    name = "unet" if cls.__name__ == "UNet2DConditionModel" else "vae"
    if name == "vae" and not any(k.startswith(K.VAE_PREFIX) for k in state):
        state = {K.VAE_PREFIX + k: v for k, v in state.items()}  # a bare VAE file in the original layout
    family = configs.get("family") or (detect_family(state) if name == "unet" or any(
        k.startswith(("cond_stage_model.", "conditioner.")) for k in state) else "sd1")
    cfg = configs.get(name) or _folder_config(config, subfolder or name)
    if name == "unet":
        cfg = cfg or unet_config(state, family, kwargs.get("num_in_channels"))
        sub = K.from_original(state, K.unet_pairs(cfg), K.UNET_PREFIX)
    else:
        cfg = cfg or vae_config(state, family)
        sub = K.vae_from_original(state, cfg)
    return cls.from_config_and_state(cfg, sub, str(path), dtype=dtype).eval()
