"""Which model a single checkpoint holds, and the diffusers configs of its parts, from key names and shapes.

Real checkpoints follow fixed conventions that shapes alone do not reveal (heads per block, norm groups,
image size, VAE scaling factor, scheduler); those come from the family presets in `presets.py`.
"""
from __future__ import annotations

from . import keys as K
from .presets import FAMILIES

U = K.UNET_PREFIX


def detect_family(state: dict) -> str:
    """'sd1', 'sd2', 'sdxl', 'sdxl_refiner' (inpainting is a 9-channel variant of any of them)."""
    if any(k.startswith("conditioner.embedders.1.model.") for k in state):
        return "sdxl"
    if any(k.startswith("conditioner.embedders.0.model.") for k in state):
        return "sdxl_refiner"
    if any(k.startswith("cond_stage_model.model.") for k in state):
        return "sd2"
    if any(k.startswith("cond_stage_model.transformer.") for k in state):
        return "sd1"
    if any(k.startswith(U) for k in state):
        # UNet only: tell the families apart by the cross-attention width
        width = next((v.shape[-1] for k, v in state.items() if k.endswith("attn2.to_k.weight")), None)
        return {768: "sd1", 1024: "sd2", 2048: "sdxl", 1280: "sdxl_refiner"}.get(width, "sd1")
    raise ValueError("checkpoint: no Stable Diffusion UNet weights found (expected keys starting with "
                     f"{U!r}); is this a LoRA, an embedding or a VAE-only file?")


def _count(state, prefix):
    return K.count_blocks(state, prefix)


def unet_config(state: dict, family: str, num_in_channels: int | None = None) -> dict:
    preset = FAMILIES[family]
    conv_in = state[U + "input_blocks.0.0.weight"]
    n_inputs = _count(state, U + "input_blocks.")
    ops = sorted(int(k[len(U + "input_blocks."):].split(".")[0]) for k in state
                 if k.startswith(U + "input_blocks.") and ".op.weight" in k)
    layers = ops[0] - 1 if ops else n_inputs - 1
    n = n_inputs // (layers + 1) if ops else 1
    channels, down_types, up_types, depth, heads = [], [], [], [], []
    linear = None
    cross = None
    for b in range(n):
        first = 1 + b * (layers + 1)
        c = state[f"{U}input_blocks.{first}.0.out_layers.3.weight"].shape[0]
        channels.append(c)
        has_attn = f"{U}input_blocks.{first}.1.norm.weight" in state
        down_types.append("CrossAttnDownBlock2D" if has_attn else "DownBlock2D")
        depth.append(_count(state, f"{U}input_blocks.{first}.1.transformer_blocks.") if has_attn else 1)
        if has_attn:
            linear = state[f"{U}input_blocks.{first}.1.proj_in.weight"].ndim == 2
            cross = state[f"{U}input_blocks.{first}.1.transformer_blocks.0.attn2.to_k.weight"].shape[1]
        heads.append(preset["heads"] if preset["heads"] else max(1, c // preset["head_dim"]))
    for b in range(n):
        i = b * (layers + 1)
        up_types.append("CrossAttnUpBlock2D" if f"{U}output_blocks.{i}.1.norm.weight" in state else "UpBlock2D")
    config = {
        "sample_size": preset["sample_size"], "in_channels": num_in_channels or conv_in.shape[1],
        "out_channels": state[U + "out.2.weight"].shape[0], "block_out_channels": channels,
        "layers_per_block": layers, "down_block_types": down_types, "up_block_types": up_types,
        "cross_attention_dim": cross, "use_linear_projection": bool(linear),
        "attention_head_dim": heads[0] if preset["heads"] else heads,
        "transformer_layers_per_block": depth if len(set(depth)) > 1 else depth[0],
        "upcast_attention": preset.get("upcast_attention", False),
    }
    if U + "label_emb.0.0.weight" in state:  # SDXL micro-conditioning
        total = state[U + "label_emb.0.0.weight"].shape[1]
        pooled = preset["pooled_dim"](state)
        config.update(addition_embed_type="text_time", addition_time_embed_dim=(total - pooled) // preset["n_time_ids"],
                      projection_class_embeddings_input_dim=total)
    return config


def vae_config(state: dict, family: str) -> dict:
    preset = FAMILIES[family]
    p = K.VAE_PREFIX + "encoder.down."
    n = _count(state, p)
    layers = _count(state, p + "0.block.")
    channels = [state[f"{p}{i}.block.{layers - 1}.conv2.weight"].shape[0] for i in range(n)]
    return {
        "in_channels": state[K.VAE_PREFIX + "encoder.conv_in.weight"].shape[1],
        "out_channels": state[K.VAE_PREFIX + "decoder.conv_out.weight"].shape[0],
        "down_block_types": ["DownEncoderBlock2D"] * n, "up_block_types": ["UpDecoderBlock2D"] * n,
        "block_out_channels": channels, "layers_per_block": layers,
        "latent_channels": state[K.VAE_PREFIX + "decoder.conv_in.weight"].shape[1],
        "sample_size": preset["sample_size"] * 8, "scaling_factor": preset["scaling_factor"],
        "force_upcast": preset["force_upcast"], "norm_num_groups": 32,
    }


def clip_config(text_state: dict, hidden_act: str, with_projection: bool) -> dict:
    """transformers CLIPTextConfig for text-encoder weights already in transformers' layout."""
    emb = text_state["text_model.embeddings.token_embedding.weight"]
    hidden = emb.shape[1]
    config = {
        "vocab_size": emb.shape[0], "hidden_size": hidden,
        "intermediate_size": text_state["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        "num_hidden_layers": K.count_blocks(text_state, "text_model.encoder.layers."),
        "num_attention_heads": max(1, hidden // 64),
        "max_position_embeddings": text_state["text_model.embeddings.position_embedding.weight"].shape[0],
        "hidden_act": hidden_act, "layer_norm_eps": 1e-5, "bos_token_id": 49406, "eos_token_id": 49407,
        "pad_token_id": 1, "architectures": ["CLIPTextModelWithProjection" if with_projection else "CLIPTextModel"],
        "model_type": "clip_text_model",
    }
    if with_projection:
        config["projection_dim"] = text_state["text_projection.weight"].shape[0]
    return config
