"""Name maps between diffusers' module names and the original CompVis / Stability checkpoint layout.

Each map is a list of (diffusers_prefix, original_prefix) module pairs derived from a model's config, so
the same table converts in both directions. Tensors whose layout differs (OpenCLIP's fused in_proj, its
transposed text_projection, the VAE's 1x1-conv attention) are reshaped by the functions below.
"""
from __future__ import annotations

import torch

RESNET_INNER = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
                ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")]
VAE_ATTN_INNER = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]
CLIP_LAYER_INNER = [("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"),
                    ("mlp.fc2", "mlp.c_proj"), ("self_attn.out_proj", "attn.out_proj")]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."


def _resnet(pairs, d, o):
    pairs += [(f"{d}.{a}", f"{o}.{b}") for a, b in RESNET_INNER]


def unet_pairs(config: dict) -> list[tuple[str, str]]:
    """(diffusers, original) module prefixes for a UNet2DConditionModel config."""
    pairs = [("time_embedding.linear_1", "time_embed.0"), ("time_embedding.linear_2", "time_embed.2"),
             ("conv_in", "input_blocks.0.0"), ("conv_norm_out", "out.0"), ("conv_out", "out.2"),
             ("add_embedding.linear_1", "label_emb.0.0"), ("add_embedding.linear_2", "label_emb.0.2")]
    n = len(config["block_out_channels"])
    layers = config["layers_per_block"]
    down_attn = ["CrossAttn" in t for t in config["down_block_types"]]
    up_attn = ["CrossAttn" in t for t in config["up_block_types"]]
    for b in range(n):
        for l in range(layers):
            i = 1 + b * (layers + 1) + l
            _resnet(pairs, f"down_blocks.{b}.resnets.{l}", f"input_blocks.{i}.0")
            if down_attn[b]:
                pairs.append((f"down_blocks.{b}.attentions.{l}", f"input_blocks.{i}.1"))
        if b < n - 1:
            pairs.append((f"down_blocks.{b}.downsamplers.0.conv", f"input_blocks.{1 + b * (layers + 1) + layers}.0.op"))
    _resnet(pairs, "mid_block.resnets.0", "middle_block.0")
    pairs.append(("mid_block.attentions.0", "middle_block.1"))
    _resnet(pairs, "mid_block.resnets.1", "middle_block.2")
    for b in range(n):
        for l in range(layers + 1):
            i = b * (layers + 1) + l
            _resnet(pairs, f"up_blocks.{b}.resnets.{l}", f"output_blocks.{i}.0")
            if up_attn[b]:
                pairs.append((f"up_blocks.{b}.attentions.{l}", f"output_blocks.{i}.1"))
        if b < n - 1:
            i = b * (layers + 1) + layers
            pairs.append((f"up_blocks.{b}.upsamplers.0.conv", f"output_blocks.{i}.{2 if up_attn[b] else 1}.conv"))
    return pairs


def vae_pairs(config: dict) -> list[tuple[str, str]]:
    pairs = [("encoder.conv_norm_out", "encoder.norm_out"), ("decoder.conv_norm_out", "decoder.norm_out")]
    n = len(config["block_out_channels"])
    layers = config["layers_per_block"]
    for part in ("encoder", "decoder"):
        for k in (0, 1):
            pairs += [(f"{part}.mid_block.resnets.{k}.{a}", f"{part}.mid.block_{k + 1}.{a}")
                      for a in ("norm1", "conv1", "norm2", "conv2")]
        pairs += [(f"{part}.mid_block.attentions.0.{a}", f"{part}.mid.attn_1.{b}") for a, b in VAE_ATTN_INNER]
    for i in range(n):
        for j in range(layers):
            d, o = f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}"
            pairs += [(f"{d}.{a}", f"{o}.{a}") for a in ("norm1", "conv1", "norm2", "conv2")]
            pairs.append((f"{d}.conv_shortcut", f"{o}.nin_shortcut"))
        if i < n - 1:
            pairs.append((f"encoder.down_blocks.{i}.downsamplers.0.conv", f"encoder.down.{i}.downsample.conv"))
        o_i = n - 1 - i
        for j in range(layers + 1):
            d, o = f"decoder.up_blocks.{i}.resnets.{j}", f"decoder.up.{o_i}.block.{j}"
            pairs += [(f"{d}.{a}", f"{o}.{a}") for a in ("norm1", "conv1", "norm2", "conv2")]
            pairs.append((f"{d}.conv_shortcut", f"{o}.nin_shortcut"))
        if i < n - 1:
            pairs.append((f"decoder.up_blocks.{i}.upsamplers.0.conv", f"decoder.up.{o_i}.upsample.conv"))
    return pairs


def _rename(key: str, table: dict[str, str]) -> str | None:
    """Rename `key` by the longest module prefix in `table`; identity when no prefix matches."""
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:cut])
        if head in table:
            return ".".join([table[head]] + parts[cut:])
    return key


def to_original(state: dict, pairs, prefix: str) -> dict:
    table = dict(pairs)
    return {prefix + _rename(k, table): v for k, v in state.items()}


def from_original(state: dict, pairs, prefix: str) -> dict:
    table = {o: d for d, o in pairs}
    return {_rename(k[len(prefix):], table): v for k, v in state.items() if k.startswith(prefix)}


def vae_to_original(state: dict, config: dict) -> dict:
    out = to_original(state, vae_pairs(config), VAE_PREFIX)
    for k, v in out.items():  # attention projections are 1x1 convolutions in the original layout
        if ".mid.attn_1." in k and k.endswith("weight") and v.ndim == 2:
            out[k] = v[:, :, None, None]
    return out


def vae_from_original(state: dict, config: dict) -> dict:
    out = from_original(state, vae_pairs(config), VAE_PREFIX)
    for k, v in out.items():
        if ".attentions.0." in k and k.endswith("weight") and v.ndim > 2:
            out[k] = v.reshape(v.shape[0], v.shape[1])
    return out


# ---- text encoders -------------------------------------------------------------------------------------
def clip_to_original(state: dict, prefix: str) -> dict:
    """transformers CLIPTextModel keys -> `prefix` + the same keys (SD 1.x, SDXL's first encoder)."""
    return {prefix + k: v for k, v in state.items()}


def clip_from_original(state: dict, prefix: str) -> dict:
    out = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if out and not any(k.startswith("text_model.") for k in out):  # very old files lack the text_model level
        out = {("text_model." + k if not k.startswith("text_projection") else k): v for k, v in out.items()}
    out.pop("text_model.embeddings.position_ids", None)
    return out


def open_clip_to_original(state: dict, prefix: str, num_layers: int, extra_last_layer: bool = False) -> dict:
    """transformers-layout keys -> OpenCLIP keys under `prefix` (q/k/v fused into in_proj, projection transposed).

    SD 2.x files carry one more residual block than the text encoder uses (it reads the penultimate layer);
    `extra_last_layer` writes a copy of the last layer in that slot so the file has the standard layout.
    """
    s = {k: v for k, v in state.items()}
    out = {prefix + "token_embedding.weight": s["text_model.embeddings.token_embedding.weight"],
           prefix + "positional_embedding": s["text_model.embeddings.position_embedding.weight"],
           prefix + "ln_final.weight": s["text_model.final_layer_norm.weight"],
           prefix + "ln_final.bias": s["text_model.final_layer_norm.bias"]}
    if "text_projection.weight" in s:
        out[prefix + "text_projection"] = s["text_projection.weight"].T.contiguous()
    layers = list(range(num_layers)) + ([num_layers - 1] if extra_last_layer else [])
    for slot, i in enumerate(layers):
        d, o = f"text_model.encoder.layers.{i}.", f"{prefix}transformer.resblocks.{slot}."
        for a, b in CLIP_LAYER_INNER:
            for p in ("weight", "bias"):
                out[f"{o}{b}.{p}"] = s[f"{d}{a}.{p}"]
        for p in ("weight", "bias"):
            out[f"{o}attn.in_proj_{p}"] = torch.cat([s[f"{d}self_attn.{x}_proj.{p}"] for x in "qkv"])
    if extra_last_layer and prefix + "text_projection" not in out:
        hidden = out[prefix + "ln_final.weight"].shape[0]
        out[prefix + "text_projection"] = torch.eye(hidden, dtype=out[prefix + "ln_final.weight"].dtype)
    return out


def open_clip_from_original(state: dict, prefix: str, num_layers: int, with_projection: bool) -> dict:
    g = lambda name: state[prefix + name]  # noqa: E731
    out = {"text_model.embeddings.token_embedding.weight": g("token_embedding.weight"),
           "text_model.embeddings.position_embedding.weight": g("positional_embedding"),
           "text_model.final_layer_norm.weight": g("ln_final.weight"),
           "text_model.final_layer_norm.bias": g("ln_final.bias")}
    if with_projection:
        out["text_projection.weight"] = g("text_projection").T.contiguous()
    for i in range(num_layers):
        d, o = f"text_model.encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for a, b in CLIP_LAYER_INNER:
            for p in ("weight", "bias"):
                out[f"{d}{a}.{p}"] = g(f"{o}{b}.{p}")
        for p in ("weight", "bias"):
            q, k, v = g(f"{o}attn.in_proj_{p}").chunk(3, dim=0)
            out[f"{d}self_attn.q_proj.{p}"], out[f"{d}self_attn.k_proj.{p}"], out[f"{d}self_attn.v_proj.{p}"] = \
                q.clone(), k.clone(), v.clone()
    return out


def count_blocks(state: dict, prefix: str) -> int:
    """Number of residual blocks `prefix{i}.` present (e.g. OpenCLIP transformer.resblocks.)."""
    ids = {int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix)}
    return max(ids) + 1 if ids else 0
