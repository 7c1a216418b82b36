"""IP-Adapters on a UNet: processors with to_k_ip / to_v_ip on the cross-attention layers and the image
projections as `encoder_hid_proj` (attach / detach), and each adapter's per-layer scale."""
from __future__ import annotations

import logging
from numbers import Real

import torch

from .formats import ARG, output_dim, projection

logger = logging.getLogger("impasto")


def cross_attention_layers(unet) -> list[tuple[str, torch.nn.Module]]:
    """The layers that get the image branch: every attn2, in diffusers' attn_processors order."""
    from ...models.attention import Attention

    return [(name, m) for name, m in unet.named_modules() if isinstance(m, Attention) and name.endswith("attn2")]


def attach(unet, adapters: list[tuple[dict, str]]) -> None:
    """Put the adapters (each (state, source)) on `unet`: processors with to_k_ip.i / to_v_ip.i on the
    cross-attention layers and the image projections as `unet.encoder_hid_proj` (config
    encoder_hid_dim_type="ip_image_proj"). Everything is checked before the UNet changes."""
    from ...models.ip_adapter import IPAdapterAttnProcessor2_0, MultiIPAdapterImageProjection

    dtype, device = unet.dtype, unet.device
    targets = cross_attention_layers(unet)
    if not targets:
        raise ValueError("unet: this UNet has no cross-attention layers for an IP-Adapter")
    cross = targets[0][1].to_k.weight.shape[1]
    projections, num_tokens = [], []
    for state, source in adapters:
        module, proj_state, tokens = projection(state["image_proj"], source)
        if output_dim(module) != cross:
            raise ValueError(f"{ARG}: {source}: image_proj makes tokens of {output_dim(module)} channels, but the "
                             f"UNet's cross-attention takes {cross}: is the adapter for another model?")
        try:
            module.load_state_dict({k: v.to(device, dtype) for k, v in proj_state.items()}, assign=True)
        except RuntimeError as e:
            raise ValueError(f"{ARG}: {source}: image_proj weights do not fit the projection they describe: "
                             f"{str(e).splitlines()[0]} {' '.join(str(e).split()[1:12])}") from None
        projections.append(module)
        num_tokens.append(tokens)
    processors = []
    for i, (name, attn) in enumerate(targets):
        key = 2 * i + 1
        expected = tuple(attn.to_k.weight.shape)
        found = {}
        for j, (state, source) in enumerate(adapters):
            layers = state["ip_adapter"]
            for kv in "kv":
                value = layers.get(f"{key}.to_{kv}_ip.weight")
                if value is None:
                    raise ValueError(f"{ARG}: {source} has no to_k_ip / to_v_ip weights for layer {key} ({name}); "
                                     f"it has {len(layers) // 2} layers, this UNet {len(targets)} cross-attention "
                                     "layers: is the adapter for another model (SD 1.x / 2.x / XL)?")
                if tuple(value.shape) != expected:
                    raise ValueError(f"{ARG}: {source}: ip_adapter.{key}.to_{kv}_ip.weight has shape "
                                     f"{tuple(value.shape)}, but {name} needs {expected}: is the adapter for another "
                                     "model?")
                found[f"to_{kv}_ip.{j}.weight"] = value.to(device, dtype)
        with torch.device("meta"):
            proc = IPAdapterAttnProcessor2_0(expected[0], expected[1], num_tokens=num_tokens, scale=1.0)
        proc.load_state_dict(found, assign=True)
        processors.append((attn, proc))
    used = {f"{2 * i + 1}.to_{kv}_ip.weight" for i in range(len(targets)) for kv in "kv"}
    for state, source in adapters:
        extra = sorted(set(state["ip_adapter"]) - used)
        if extra:
            logger.warning("%s: ip_adapter weights not used: %s", source, ", ".join(extra[:8]))
    for attn, proc in processors:
        if attn.processor is not None and not isinstance(attn.processor, IPAdapterAttnProcessor2_0):
            logger.warning("load_ip_adapter: the custom attention processor of a cross-attention layer is replaced")
        attn.set_processor(proc)
    unet.encoder_hid_proj = MultiIPAdapterImageProjection(projections)
    unet.register_to_config(encoder_hid_dim_type="ip_image_proj")


def detach(unet) -> None:
    from ...models.attention_processor import builtin_processor
    from ...models.ip_adapter import IPAdapterAttnProcessor2_0

    for _, attn in cross_attention_layers(unet):
        if isinstance(attn.processor, IPAdapterAttnProcessor2_0):
            attn.set_processor(builtin_processor(attn.attn_backend))  # keeps slicing / xformers
    unet.encoder_hid_proj = None
    unet.register_to_config(encoder_hid_dim_type=None)


def ip_processors(unet) -> list[tuple[str, object]]:
    from ...models.ip_adapter import IPAdapterAttnProcessor2_0

    return [(name, a.processor) for name, a in cross_attention_layers(unet)
            if isinstance(a.processor, IPAdapterAttnProcessor2_0)]


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"scale: expected a number{where}, got {value!r}")
    return float(value)


def layer_scales(unet, scale, names: list[str]) -> list[float]:
    """One adapter's scale for each cross-attention layer in `names`: a number for all, or diffusers' per-block
    dict ({"down": {"block_2": [0.0, 1.0]}, "up": {"block_0": [0.0, 1.0, 0.0]}}; unnamed blocks get 0)."""
    from ..lora.block_weights import expand_unet_weights

    if not isinstance(scale, dict):
        return [_number(scale, "")] * len(names)
    try:
        prefixes = expand_unet_weights(unet, scale, default=0.0)
    except ValueError as e:  # the LoRA helper names its own argument
        raise ValueError("scale" + str(e).removeprefix("adapter_weights")) from None
    out = []
    for name in names:
        prefix = next((p for p in prefixes if name.startswith(p + ".")), None)
        out.append(0.0 if prefix is None else _number(prefixes[prefix], f" for {prefix}"))
    return out
