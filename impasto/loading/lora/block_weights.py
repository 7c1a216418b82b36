"""Per-block LoRA weights on the UNet, as diffusers' `set_adapters` takes them.

`{"down": 0.5, "mid": 1.0, "up": {"block_0": 0.2, "block_1": [0.4, 0.6, 0.8]}}` names the UNet's transformer
layers by level: a number for a whole level, or per block (`block_i`, counting every down / up block) a number
or one per transformer layer in it. Unnamed levels and blocks keep weight 1. The result maps layer-name prefixes
("down_blocks.1.attentions.0", "mid_block.attentions.0") to weights; a LoRA layer takes the weight of the
prefix its name contains, else the one of its block's attention of the same index, else 1 (diffusers' rule).
"""
from __future__ import annotations


def expand_unet_weights(unet, weights: dict, default: float = 1.0) -> dict[str, float]:
    """{layer prefix: weight} from a per-level dict (module docstring); ValueError naming what does not fit."""
    unknown = set(weights) - {"down", "mid", "up"}
    if unknown:
        raise ValueError(f"adapter_weights: UNet block weights take keys 'down', 'mid', 'up', got {sorted(unknown)}")
    mid = weights.get("mid", default)
    if isinstance(mid, list):
        if len(mid) != 1:
            raise ValueError(f"adapter_weights: expected 1 weight for 'mid', got {len(mid)}")
        mid = mid[0]
    out = {"mid_block.attentions.0": mid}
    per_block = {"down": unet.config.layers_per_block, "up": unet.config.layers_per_block + 1}
    for level, blocks in (("down", unet.down_blocks), ("up", unet.up_blocks)):
        with_attention = [i for i, b in enumerate(blocks) if hasattr(b, "attentions")]
        given = weights.get(level, default)
        if not isinstance(given, dict):
            given = {f"block_{i}": given for i in with_attention}
        extra = set(given) - {f"block_{i}" for i in with_attention}
        if extra:
            raise ValueError(f"adapter_weights: {level} has no transformer layers in {sorted(extra)}; blocks with "
                             f"them: {[f'block_{i}' for i in with_attention]}")
        n = per_block[level]
        for i in with_attention:
            w = given.get(f"block_{i}", default)
            w = (w * n if len(w) == 1 else w) if isinstance(w, list) else [w] * n
            if len(w) != n:
                raise ValueError(f"adapter_weights: expected {n} weights for {level}.block_{i}, got {len(w)}")
            for j, value in enumerate(w):
                out[f"{level}_blocks.{i}.attentions.{j}"] = value
    return out


def layer_weight(weight, layer_name: str) -> float:
    """The weight of one LoRA layer: `weight` itself, or looked up in an expanded {prefix: weight} dict."""
    if not isinstance(weight, dict):
        return weight
    for prefix, value in weight.items():
        if prefix in layer_name:
            return value
    parts = layer_name.split(".")
    if len(parts) >= 4:  # e.g. a resnet's LoRA: the weight of its block's attention of the same index
        return weight.get(f"{parts[0]}.{parts[1]}.attentions.{parts[3]}", 1.0)
    return 1.0
