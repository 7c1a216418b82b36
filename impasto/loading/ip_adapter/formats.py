"""IP-Adapter weight files: the two layouts, the format their image_proj keys tell, and the image projection
module (with diffusers' parameter names) each format needs."""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from .. import weights as W
from ..hub import resolve_file

ARG = "pretrained_model_name_or_path_or_dict"
FULL_FACE_TOKENS = 257  # diffusers' fixed count for Full Face (256 patches + CLS); informational only
DIM_HEAD = 64  # the Plus resampler's head width (fixed in the released models and in diffusers)

# image_proj keys of the formats impasto refuses (FaceID needs insightface embeddings and LoRA weights)
REFUSED = (("perceiver_resampler.proj_in.weight", "FaceID Plus"), ("norm.weight", "FaceID"))

# Plus resampler: released names -> diffusers' (the attention's to_kv is split into to_k / to_v)
PLUS_RENAMES = ((r"^layers\.(\d+)\.0\.norm1\.", r"layers.\1.ln0."),
                (r"^layers\.(\d+)\.0\.norm2\.", r"layers.\1.ln1."),
                (r"^layers\.(\d+)\.0\.to_q\.", r"layers.\1.attn.to_q."),
                (r"^layers\.(\d+)\.0\.to_out\.", r"layers.\1.attn.to_out.0."),
                (r"^layers\.(\d+)\.1\.0\.", r"layers.\1.ff.0."),
                (r"^layers\.(\d+)\.1\.1\.", r"layers.\1.ff.1.net.0.proj."),
                (r"^layers\.(\d+)\.1\.3\.", r"layers.\1.ff.1.net.2."))
FULL_RENAMES = ((r"^proj\.0\.", "ff.net.0.proj."), (r"^proj\.2\.", "ff.net.2."), (r"^proj\.3\.", "norm."))


def as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def split_state(state: dict, source: str) -> dict:
    """{"image_proj": {...}, "ip_adapter": {...}} from the nested (.bin) or flat (.safetensors) layout."""
    if isinstance(state.get("image_proj"), dict) and isinstance(state.get("ip_adapter"), dict):
        return {"image_proj": dict(state["image_proj"]), "ip_adapter": dict(state["ip_adapter"])}
    out = {"image_proj": {}, "ip_adapter": {}}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head in out and rest:
            out[head][rest] = value
    if not out["image_proj"] or not out["ip_adapter"]:
        missing = [k for k in out if not out[k]]
        raise ValueError(f"{ARG}: {source} has no {' / '.join(missing)} weights; an IP-Adapter file holds "
                         f"'image_proj.*' and 'ip_adapter.*' keys (found e.g. {sorted(state)[:4]})")
    return out


def format_of(image_proj: dict, source: str) -> str:
    """"basic", "plus" or "full"; ValueError naming the format for FaceID files and unknown layouts."""
    if "proj.weight" in image_proj:
        return "basic"
    if "proj.3.weight" in image_proj:
        return "full"
    for key, name in REFUSED:
        if key in image_proj:
            raise ValueError(f"{ARG}: {source} is an IP-Adapter {name} file; impasto supports the basic, Plus and "
                             "Full Face IP-Adapter formats (FaceID needs insightface embeddings and LoRA weights)")
    if "latents" in image_proj:
        return "plus"
    raise ValueError(f"{ARG}: {source}: unknown IP-Adapter image_proj layout (keys {sorted(image_proj)[:6]}); "
                     "expected the basic (proj, norm), Plus (latents, proj_in, ...) or Full Face (proj.0 ... proj.3) "
                     "format")


def _renamed(state: dict, renames) -> dict:
    out = {}
    for key, value in state.items():
        for pattern, repl in renames:
            key = re.sub(pattern, repl, key)
        if key.endswith(".0.to_kv.weight"):  # the Plus attention's fused key/value projection
            head = re.sub(r"\.0\.to_kv\.weight$", ".attn.", key)
            out[head + "to_k.weight"], out[head + "to_v.weight"] = value.chunk(2, dim=0)
        else:
            out[key] = value
    return out


def _shape(proj: dict, keys, source: str, dim: int | None = None) -> int | tuple:
    """The shape (or one of its sizes) of the first of `keys` (a released name, then diffusers') in `proj`."""
    keys = as_list(keys)
    key = next((k for k in keys if k in proj), None)
    if key is None:
        raise ValueError(f"{ARG}: {source}: image_proj.{keys[0]} is missing")
    return tuple(proj[key].shape) if dim is None else proj[key].shape[dim]


def projection(proj: dict, source: str) -> tuple[torch.nn.Module, dict, int]:
    """(projection module on the meta device, its state dict in diffusers' names, image tokens it makes)."""
    from ...models import ip_adapter as M

    kind = format_of(proj, source)
    if kind == "basic":
        weight = proj["proj.weight"]
        with torch.device("meta"):
            module = M.ImageProjection(weight.shape[1], weight.shape[0] // 4, 4)
        return module, {k.replace("proj", "image_embeds", 1) if k.startswith("proj.") else k: v
                        for k, v in proj.items()}, 4
    if kind == "full":
        with torch.device("meta"):
            module = M.IPAdapterFullImageProjection(_shape(proj, "proj.0.weight", source, 0),
                                                    _shape(proj, "proj.3.weight", source, 0))
        return module, _renamed(proj, FULL_RENAMES), FULL_FACE_TOKENS
    latents = _shape(proj, "latents", source)
    if len(latents) != 3:
        raise ValueError(f"{ARG}: {source}: image_proj.latents has shape {latents}, expected (1, queries, width)")
    _, queries, hidden = latents
    embed, output = _shape(proj, "proj_in.weight", source, 1), _shape(proj, "proj_out.weight", source, 0)
    inner = _shape(proj, ("layers.0.0.to_q.weight", "layers.0.attn.to_q.weight"), source, 0)
    ffn = _shape(proj, ("layers.0.1.1.weight", "layers.0.ff.1.net.0.proj.weight"), source, 0)
    if inner % DIM_HEAD:
        raise ValueError(f"{ARG}: {source}: the Plus resampler's to_q has {inner} outputs, not a multiple of the "
                         f"{DIM_HEAD}-wide heads")
    depth = len({k.split(".")[1] for k in proj if k.startswith("layers.")})
    with torch.device("meta"):
        module = M.IPAdapterPlusImageProjection(embed_dims=embed, output_dims=output, hidden_dims=hidden, depth=depth,
                                                dim_head=DIM_HEAD, heads=inner // DIM_HEAD, num_queries=queries,
                                                ffn_ratio=ffn / hidden)
    return module, _renamed(proj, PLUS_RENAMES), queries


def output_dim(module) -> int:
    """The width of the tokens a projection makes (its last LayerNorm's)."""
    norm = module.norm_out if hasattr(module, "norm_out") else module.norm
    return norm.normalized_shape[0]


def read_ip_adapter(path_or_dict, subfolder, weight_name, **hub) -> tuple[dict, str]:
    """(state split into image_proj / ip_adapter, a name for messages)."""
    if isinstance(path_or_dict, dict):
        return split_state(path_or_dict, "the state dict"), "the state dict"
    if Path(os.path.expanduser(str(path_or_dict))).is_file():  # the weight file itself
        file = Path(os.path.expanduser(str(path_or_dict)))
    elif not weight_name:
        raise ValueError("weight_name: required, the IP-Adapter file in the folder or repo "
                         "(e.g. 'ip-adapter_sd15.safetensors')")
    else:
        file = resolve_file(path_or_dict, weight_name, subfolder or None, **hub)
    state = W.load_file(file)
    return split_state(state, str(file)), str(file)
