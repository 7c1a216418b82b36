"""UNet2DConditionModel: the text-conditioned denoiser of Stable Diffusion 1.x / 2.x / XL, inpainting, LCM.

Config keys and parameter names equal diffusers', so a `unet/` folder loads as it is. Supported:
down blocks DownBlock2D / CrossAttnDownBlock2D, up blocks UpBlock2D / CrossAttnUpBlock2D, mid block
UNetMidBlock2DCrossAttn / UNetMidBlock2D / None, positional time embedding (+ `time_cond_proj_dim`),
`num_class_embeds` (the x4 upscaler), `addition_embed_type="text_time"` (SDXL). Anything else a config asks
for is refused with a ValueError naming the key. In this class `attention_head_dim` is, as in diffusers, the
number of heads per block (`num_attention_heads` takes precedence when given).
"""
from __future__ import annotations

import logging
import numbers
from dataclasses import dataclass

import torch
from torch import nn

from ..outputs import BaseOutput
from .attention import AttentionBackend, xformers_usable
from .attention_processor import AttentionProcessorMixin, AttnProcessor2_0, ProcessorKwargs
from .config import register_to_config
from .embeddings import TimestepEmbedding, Timesteps, text_time_embedding
from .layers import Conv2d, Embedding
from .modeling import ModelMixin
from .resnet import get_activation
from .transformer_2d import mask_to_bias
from .unet_blocks import (CrossAttnDownBlock2D, CrossAttnUpBlock2D, DownBlock2D, UNetMidBlock2D,
                          UNetMidBlock2DCrossAttn, UpBlock2D)

logger = logging.getLogger("impasto")
_warned: set = set()


def _warn_once(key, message: str, *args) -> None:
    if key not in _warned:
        _warned.add(key)
        logger.warning(message, *args)


@dataclass
class UNet2DConditionOutput(BaseOutput):
    sample: torch.Tensor


def timesteps_for_batch(timestep, batch: int, device: torch.device) -> torch.Tensor:
    """A python number, 0-d or 1-d tensor -> a 1-d tensor of `batch` timesteps on `device`."""
    if not torch.is_tensor(timestep):
        if isinstance(timestep, numbers.Integral):
            return torch.tensor([int(timestep)], dtype=torch.int64, device=device).expand(batch)
        if isinstance(timestep, numbers.Real):
            return torch.tensor([float(timestep)], dtype=torch.float32, device=device).expand(batch)
        raise ValueError(f"timestep: expected a number or a tensor, got {type(timestep).__name__}")
    if timestep.ndim == 0:
        timestep = timestep[None]
    if timestep.ndim != 1 or timestep.shape[0] not in (1, batch):
        raise ValueError(f"timestep: expected a scalar or a 1-d tensor of 1 or {batch} values, "
                         f"got shape {tuple(timestep.shape)}")
    return timestep.to(device).expand(batch)


class UNetAttentionMixin(AttentionProcessorMixin):
    """Attention controls shared by the UNets (diffusers' method names); results do not change, memory does."""

    def _set_backends(self, kind: str, slice_sizes=None) -> None:
        layers = self._attention_layers()
        if any(layer.processor is not None and not getattr(layer.processor, "keeps_backend", False)
               for layer in layers):
            logger.warning("%s: custom attention processors are replaced by the %s backend (as diffusers does)",
                           type(self).__name__, kind)
        for i, layer in enumerate(layers):
            if not getattr(layer.processor, "keeps_backend", False):  # an IP-Adapter processor stays
                layer.set_processor(AttnProcessor2_0())
            size = None if slice_sizes is None else slice_sizes[i]
            layer_kind = "sdpa" if kind == "sliced" and size is None else kind  # slice size None = unsliced
            layer.attn_backend = AttentionBackend(layer_kind, size, layer.attn_backend.upcast)

    def set_attention_slice(self, slice_size="auto") -> None:
        """Compute attention in chunks of `slice_size` (batch x head) rows: "auto" = half the heads of each layer,
        "max" = one at a time, an int for every layer, a list with one size per attention layer, None = off."""
        heads = [layer.heads for layer in self._attention_layers()]
        if slice_size is None:
            sizes = [None] * len(heads)
        elif slice_size == "auto":
            sizes = [max(1, h // 2) for h in heads]
        elif slice_size == "max":
            sizes = [1] * len(heads)
        elif isinstance(slice_size, int) and not isinstance(slice_size, bool):
            sizes = [slice_size] * len(heads)
        elif isinstance(slice_size, (list, tuple)):
            if len(slice_size) != len(heads):
                raise ValueError(f"slice_size: got {len(slice_size)} sizes, but the model has {len(heads)} "
                                 "attention layers")
            sizes = list(slice_size)
        else:
            raise ValueError(f"slice_size: expected 'auto', 'max', an int, a list of ints or None, got {slice_size!r}")
        for size, h in zip(sizes, heads):
            if size is not None and not (isinstance(size, int) and 1 <= size <= h):
                raise ValueError(f"slice_size: {size!r} must be an int between 1 and the layer's head count {h}")
        self._set_backends("sliced", sizes)

    def enable_xformers_memory_efficient_attention(self, attention_op=None) -> None:
        if attention_op is not None:
            logger.warning("attention_op: impasto lets xformers choose its kernel; %r is not used", attention_op)
        if xformers_usable(self.device):
            self._set_backends("xformers")
            logger.info("%s: attention uses xformers", type(self).__name__)
        else:
            self._set_backends("sdpa")
            logger.info("%s: xformers is not usable here; attention uses PyTorch SDPA (as memory-efficient)",
                        type(self).__name__)

    def disable_xformers_memory_efficient_attention(self) -> None:
        self._set_backends("sdpa")

    def fuse_qkv_projections(self) -> None:
        """One matmul for q, k, v (self-attention) or k, v (cross-attention); weights keep their names."""
        for layer in self._attention_layers():
            layer.fuse_projections()

    def unfuse_qkv_projections(self) -> None:
        for layer in self._attention_layers():
            layer.unfuse_projections()


def _per_block(value, n: int, key: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{key}: expected one value per block ({n}), got {list(value)}")
        return list(value)
    return [value] * n


def _first(value):
    """The mid block has one transformer: with per-layer depths it takes the first (as diffusers does)."""
    return value[0] if isinstance(value, (list, tuple)) else value


def _require(key: str, value, allowed: tuple, what: str = "", owner: str = "impasto's UNets") -> None:
    if value not in allowed:
        raise ValueError(f"{key}: {value!r} is not supported by {owner} "
                         f"(supported: {', '.join(map(repr, allowed))}){what}")


# ---- construction shared with ControlNetModel (models/controlnet.py), which copies the UNet's encoder half ----
def block_settings(n: int, num_attention_heads, attention_head_dim, cross_attention_dim, layers_per_block,
                   only_cross_attention, transformer_layers_per_block) -> tuple[list, list, list, list, list]:
    """Per-block (heads, cross-attention dims, layers, only-cross flags, transformer depths)."""
    heads = _per_block(num_attention_heads or attention_head_dim, n,
                       "num_attention_heads" if num_attention_heads else "attention_head_dim")
    return (heads, _per_block(cross_attention_dim, n, "cross_attention_dim"),
            _per_block(layers_per_block, n, "layers_per_block"),
            _per_block(only_cross_attention, n, "only_cross_attention"),
            _per_block(transformer_layers_per_block, n, "transformer_layers_per_block"))


def add_input_layers(model: nn.Module, in_channels: int, block_out_channels, conv_in_kernel: int, flip_sin_to_cos,
                     freq_shift, act_fn, time_embedding_dim=None, timestep_post_act=None, time_cond_proj_dim=None,
                     num_class_embeds=None, addition_embed_type=None, addition_time_embed_dim=None,
                     projection_class_embeddings_input_dim=None) -> int:
    """conv_in, the time embedding and the optional label / SDXL ("text_time") embeddings, registered on `model`
    in diffusers' order; returns the embedding width."""
    model.conv_in = Conv2d(in_channels, block_out_channels[0], conv_in_kernel, padding=(conv_in_kernel - 1) // 2)
    time_embed_dim = time_embedding_dim or block_out_channels[0] * 4
    model.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
    model.time_embedding = TimestepEmbedding(block_out_channels[0], time_embed_dim, act_fn=act_fn,
                                             post_act_fn=timestep_post_act, cond_proj_dim=time_cond_proj_dim)
    model.encoder_hid_proj = None
    model.class_embedding = Embedding(num_class_embeds, time_embed_dim) if num_class_embeds is not None else None
    if addition_embed_type == "text_time":
        model.add_time_proj = Timesteps(addition_time_embed_dim, flip_sin_to_cos, freq_shift)
        model.add_embedding = TimestepEmbedding(projection_class_embeddings_input_dim, time_embed_dim)
    return time_embed_dim


def make_down_blocks(types, block_out_channels, layers, depths, heads, cross_dims, only_cross, downsample_padding,
                     use_linear_projection, upcast_attention, common: dict) -> nn.ModuleList:
    n = len(types)
    blocks = nn.ModuleList()
    for i, kind in enumerate(types):
        args = dict(in_channels=block_out_channels[max(i - 1, 0)], out_channels=block_out_channels[i],
                    num_layers=layers[i], add_downsample=i < n - 1, downsample_padding=downsample_padding, **common)
        if kind == "CrossAttnDownBlock2D":
            blocks.append(CrossAttnDownBlock2D(transformer_layers_per_block=depths[i], num_attention_heads=heads[i],
                                               cross_attention_dim=cross_dims[i],
                                               use_linear_projection=use_linear_projection,
                                               only_cross_attention=only_cross[i], upcast_attention=upcast_attention,
                                               **args))
        else:
            blocks.append(DownBlock2D(**args))
    return blocks


def make_mid_block(kind, channels: int, depth, heads: int, cross_dim: int, scale_factor: float,
                   use_linear_projection, upcast_attention, common: dict) -> nn.Module | None:
    if kind == "UNetMidBlock2DCrossAttn":
        return UNetMidBlock2DCrossAttn(channels, transformer_layers_per_block=_first(depth), num_attention_heads=heads,
                                       output_scale_factor=scale_factor, cross_attention_dim=cross_dim,
                                       use_linear_projection=use_linear_projection, upcast_attention=upcast_attention,
                                       **common)
    if kind == "UNetMidBlock2D":
        return UNetMidBlock2D(channels, num_layers=0, add_attention=False, output_scale_factor=scale_factor, **common)
    return None


class TimeEmbeddingMixin:
    """The forward pass's time (+ label, + SDXL added) embedding, for modules built with `add_input_layers`."""

    def _embed(self, sample, timestep, class_labels, timestep_cond, added_cond_kwargs):
        t_emb = self.time_proj(timesteps_for_batch(timestep, sample.shape[0], sample.device)).to(sample.dtype)
        emb = self.time_embedding(t_emb, timestep_cond)
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("class_labels: required, this model has a class embedding (num_class_embeds)")
            class_emb = self.class_embedding(class_labels).to(sample.dtype)
            concat = self.config.get("class_embeddings_concat", False)
            emb = torch.cat([emb, class_emb], dim=-1) if concat else emb + class_emb
        elif class_labels is not None:
            raise ValueError("class_labels: this model has no class embedding (num_class_embeds is None)")
        if self.config.addition_embed_type == "text_time":
            kwargs = added_cond_kwargs or {}
            for key in ("text_embeds", "time_ids"):
                if key not in kwargs:
                    raise ValueError(f"added_cond_kwargs: {key!r} is required (addition_embed_type is 'text_time')")
            add = text_time_embedding(self.add_time_proj, kwargs["text_embeds"], kwargs["time_ids"])
            emb = emb + self.add_embedding(add.to(emb.dtype))
        elif added_cond_kwargs and (self.encoder_hid_proj is None or set(added_cond_kwargs) != {"image_embeds"}):
            _warn_once(("added", tuple(added_cond_kwargs)), "added_cond_kwargs %s are not used: this model has no "
                       "addition_embed_type", sorted(added_cond_kwargs))
        if self.time_embed_act is not None:
            emb = self.time_embed_act(emb)
        return emb


class UNet2DConditionModel(ModelMixin, UNetAttentionMixin, TimeEmbeddingMixin):
    # `dropout`, `resnet_skip_time_act`, `resnet_out_scale_factor`, `cross_attention_norm`,
    # `mid_block_only_cross_attention` and `addition_embed_type_num_heads` only affect block or embedding types
    # that this class refuses, so they are recorded but have no effect (dropout: inference only).

    @register_to_config
    def __init__(self, sample_size=None, in_channels: int = 4, out_channels: int = 4, center_input_sample: bool = False,
                 flip_sin_to_cos: bool = True, freq_shift: int = 0,
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                   "DownBlock2D"),
                 mid_block_type: str | None = "UNetMidBlock2DCrossAttn",
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                 only_cross_attention=False, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                 downsample_padding: int = 1, mid_block_scale_factor: float = 1, dropout: float = 0.0,
                 act_fn: str = "silu", norm_num_groups: int | None = 32, norm_eps: float = 1e-5,
                 cross_attention_dim=1280, transformer_layers_per_block=1, reverse_transformer_layers_per_block=None,
                 encoder_hid_dim=None, encoder_hid_dim_type=None, attention_head_dim=8, num_attention_heads=None,
                 dual_cross_attention: bool = False, use_linear_projection: bool = False, class_embed_type=None,
                 addition_embed_type=None, addition_time_embed_dim=None, num_class_embeds=None,
                 upcast_attention: bool = False, resnet_time_scale_shift: str = "default",
                 resnet_skip_time_act: bool = False, resnet_out_scale_factor: float = 1.0,
                 time_embedding_type: str = "positional", time_embedding_dim=None, time_embedding_act_fn=None,
                 timestep_post_act=None, time_cond_proj_dim=None, conv_in_kernel: int = 3, conv_out_kernel: int = 3,
                 projection_class_embeddings_input_dim=None, attention_type: str = "default",
                 class_embeddings_concat: bool = False, mid_block_only_cross_attention=None,
                 cross_attention_norm=None, addition_embed_type_num_heads: int = 64):
        super().__init__()
        self.sample_size = sample_size
        n = len(down_block_types)
        if len(up_block_types) != n:
            raise ValueError(f"up_block_types: expected {n} entries like down_block_types, got {list(up_block_types)}")
        if len(block_out_channels) != n:
            raise ValueError(f"block_out_channels: expected {n} entries (one per block), got {list(block_out_channels)}")
        down_types = [t[7:] if t.startswith("UNetRes") else t for t in down_block_types]
        up_types = [t[7:] if t.startswith("UNetRes") else t for t in up_block_types]
        for t in down_types:
            _require("down_block_types", t, ("DownBlock2D", "CrossAttnDownBlock2D"))
        for t in up_types:
            _require("up_block_types", t, ("UpBlock2D", "CrossAttnUpBlock2D"))
        _require("mid_block_type", mid_block_type, ("UNetMidBlock2DCrossAttn", "UNetMidBlock2D", None))
        _require("dual_cross_attention", dual_cross_attention, (False,), " (Versatile Diffusion's dual transformer)")
        _require("class_embed_type", class_embed_type, (None,), "; `num_class_embeds` alone gives a label embedding")
        _require("addition_embed_type", addition_embed_type, (None, "text_time"))
        _require("encoder_hid_dim", encoder_hid_dim, (None,))
        _require("encoder_hid_dim_type", encoder_hid_dim_type, (None,))
        _require("time_embedding_type", time_embedding_type, ("positional",))
        _require("attention_type", attention_type, ("default",))
        _require("resnet_time_scale_shift", resnet_time_scale_shift, ("default", "scale_shift"))
        if not isinstance(norm_num_groups, int):
            raise ValueError(f"norm_num_groups: expected an int, got {norm_num_groups!r}")
        if addition_embed_type == "text_time" and (addition_time_embed_dim is None
                                                   or projection_class_embeddings_input_dim is None):
            raise ValueError("addition_time_embed_dim, projection_class_embeddings_input_dim: both are required "
                             "when addition_embed_type is 'text_time'")

        heads, cross_dims, layers, only_cross, depths = block_settings(
            n, num_attention_heads, attention_head_dim, cross_attention_dim, layers_per_block, only_cross_attention,
            transformer_layers_per_block)
        if reverse_transformer_layers_per_block is not None:
            up_depths = _per_block(reverse_transformer_layers_per_block, n, "reverse_transformer_layers_per_block")
        elif any(isinstance(d, (list, tuple)) for d in depths):
            raise ValueError("reverse_transformer_layers_per_block: required when transformer_layers_per_block "
                             "gives per-layer counts")
        else:
            up_depths = depths[::-1]

        # time (and added) embeddings
        time_embed_dim = add_input_layers(self, in_channels, block_out_channels, conv_in_kernel, flip_sin_to_cos,
                                          freq_shift, act_fn, time_embedding_dim, timestep_post_act, time_cond_proj_dim,
                                          num_class_embeds, addition_embed_type, addition_time_embed_dim,
                                          projection_class_embeddings_input_dim)
        self.time_embed_act = get_activation(time_embedding_act_fn) if time_embedding_act_fn is not None else None
        temb = time_embed_dim * 2 if class_embeddings_concat and num_class_embeds is not None else time_embed_dim

        common = dict(temb_channels=temb, resnet_eps=norm_eps, resnet_act_fn=act_fn, resnet_groups=norm_num_groups,
                      resnet_time_scale_shift=resnet_time_scale_shift)
        attn = lambda i: dict(num_attention_heads=heads[i], cross_attention_dim=cross_dims[i],  # noqa: E731
                              use_linear_projection=use_linear_projection, only_cross_attention=only_cross[i],
                              upcast_attention=upcast_attention)
        self.down_blocks = make_down_blocks(down_types, block_out_channels, layers, depths, heads, cross_dims,
                                            only_cross, downsample_padding, use_linear_projection, upcast_attention,
                                            common)
        self.up_blocks = nn.ModuleList()  # registered before mid_block: diffusers' state-dict order
        self.mid_block = make_mid_block(mid_block_type, block_out_channels[-1], depths[-1], heads[-1], cross_dims[-1],
                                        mid_block_scale_factor, use_linear_projection, upcast_attention, common)

        rev = block_out_channels[::-1]
        self.num_upsamplers = 0
        for i, kind in enumerate(up_types):
            final = i == n - 1
            self.num_upsamplers += 0 if final else 1
            j = n - 1 - i  # the matching down block
            args = dict(in_channels=rev[min(i + 1, n - 1)], prev_output_channel=rev[max(i - 1, 0)],
                        out_channels=rev[i], resolution_idx=i, num_layers=layers[j] + 1, add_upsample=not final,
                        **common)
            if kind == "CrossAttnUpBlock2D":
                self.up_blocks.append(CrossAttnUpBlock2D(transformer_layers_per_block=up_depths[i], **args, **attn(j)))
            else:
                self.up_blocks.append(UpBlock2D(**args))

        self.conv_norm_out = nn.GroupNorm(norm_num_groups, block_out_channels[0], eps=norm_eps)
        self.conv_act = get_activation(act_fn)
        self.conv_out = Conv2d(block_out_channels[0], out_channels, conv_out_kernel,
                               padding=(conv_out_kernel - 1) // 2)

    # ---- FreeU ----------------------------------------------------------------------------------------
    def enable_freeu(self, s1: float, s2: float, b1: float, b2: float) -> None:
        """FreeU: skip-feature damping s1/s2 and backbone amplification b1/b2 in the two deepest up stages."""
        for block in self.up_blocks:
            block.s1, block.s2, block.b1, block.b2 = s1, s2, b1, b2

    def disable_freeu(self) -> None:
        for block in self.up_blocks:
            block.s1 = block.s2 = block.b1 = block.b2 = None

    # ---- forward --------------------------------------------------------------------------------------
    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor | None = None,
                class_labels: torch.Tensor | None = None, timestep_cond: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, cross_attention_kwargs: dict | None = None,
                added_cond_kwargs: dict | None = None, down_block_additional_residuals=None,
                mid_block_additional_residual: torch.Tensor | None = None, down_intrablock_additional_residuals=None,
                encoder_attention_mask: torch.Tensor | None = None, return_dict: bool = True):
        """Predict from a noisy `sample` (B, C, H, W) at `timestep` given text states (B, tokens, dim).

        `attention_mask` / `encoder_attention_mask` are (B, tokens) keep-masks (1 keep, 0 drop), applied as in
        diffusers (the first to attn1, the second to the cross-attention). ControlNet residuals come as
        `down_block_additional_residuals` + `mid_block_additional_residual`; T2I-Adapter ones as
        `down_intrablock_additional_residuals`. `cross_attention_kwargs["scale"]` (LoRA) is applied by the LoRA
        loader, not here; its other keys go to custom attention processors (`set_attn_processor`). With an
        IP-Adapter loaded (`encoder_hid_proj`), `added_cond_kwargs["image_embeds"]` is required: a list with one
        (batch, images, dim) tensor per adapter.
        """
        extra = {k: v for k, v in cross_attention_kwargs.items() if k != "scale"} if cross_attention_kwargs else None
        if extra:  # for custom attention processors (attention_processor.py), as in diffusers
            custom = [layer for layer in self._attention_layers() if layer.processor is not None]
            if not custom:
                _warn_once(("xattn", tuple(sorted(extra))), "cross_attention_kwargs %s are not used: no attention "
                           "layer of this UNet has a custom processor", sorted(extra))
            with ProcessorKwargs(custom, extra):
                return self._predict(sample, timestep, encoder_hidden_states, class_labels, timestep_cond,
                                     attention_mask, added_cond_kwargs, down_block_additional_residuals,
                                     mid_block_additional_residual, down_intrablock_additional_residuals,
                                     encoder_attention_mask, return_dict)
        return self._predict(sample, timestep, encoder_hidden_states, class_labels, timestep_cond, attention_mask,
                             added_cond_kwargs, down_block_additional_residuals, mid_block_additional_residual,
                             down_intrablock_additional_residuals, encoder_attention_mask, return_dict)

    def _with_image_tokens(self, encoder_hidden_states, added_cond_kwargs):
        """(text states, [image tokens per adapter]) for the IP-Adapter processors, as diffusers' "ip_image_proj"."""
        if self.config.encoder_hid_dim_type != "ip_image_proj":
            raise ValueError(f"encoder_hid_dim_type: {self.config.encoder_hid_dim_type!r} is not supported by "
                             "impasto's UNets (only 'ip_image_proj', set by load_ip_adapter)")
        if not added_cond_kwargs or added_cond_kwargs.get("image_embeds") is None:
            raise ValueError("added_cond_kwargs: 'image_embeds' is required while an IP-Adapter is loaded "
                             "(pass ip_adapter_image or ip_adapter_image_embeds to the pipeline, or unload_ip_adapter)")
        return encoder_hidden_states, self.encoder_hid_proj(added_cond_kwargs["image_embeds"])

    def _predict(self, sample, timestep, encoder_hidden_states, class_labels, timestep_cond, attention_mask,
                 added_cond_kwargs, down_block_additional_residuals, mid_block_additional_residual,
                 down_intrablock_additional_residuals, encoder_attention_mask, return_dict):
        if sample.ndim != 4:
            raise ValueError(f"sample: expected (batch, channels, height, width), got shape {tuple(sample.shape)}")
        factor = 2 ** self.num_upsamplers
        forward_upsample_size = any(s % factor != 0 for s in sample.shape[-2:])
        attention_mask = mask_to_bias(attention_mask, sample.dtype)
        encoder_attention_mask = mask_to_bias(encoder_attention_mask, sample.dtype)
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0

        emb = self._embed(sample, timestep, class_labels, timestep_cond, added_cond_kwargs)
        if self.encoder_hid_proj is not None:  # an IP-Adapter (impasto.loading.ip_adapter)
            encoder_hidden_states = self._with_image_tokens(encoder_hidden_states, added_cond_kwargs)
        ctx = dict(encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask,
                   encoder_attention_mask=encoder_attention_mask)

        is_controlnet = down_block_additional_residuals is not None and mid_block_additional_residual is not None
        adapter = None if down_intrablock_additional_residuals is None else list(down_intrablock_additional_residuals)
        if down_block_additional_residuals is not None and mid_block_additional_residual is None and adapter is None:
            _warn_once("t2i", "down_block_additional_residuals without mid_block_additional_residual are taken as "
                       "T2I-Adapter residuals; pass them as down_intrablock_additional_residuals")
            adapter = list(down_block_additional_residuals)

        sample = self.conv_in(sample)
        skips = [sample]
        for block in self.down_blocks:
            extra = adapter.pop(0) if adapter else None
            sample, states = block(sample, emb, additional_residuals=extra, **ctx)
            skips.extend(states)
        if is_controlnet:
            if len(down_block_additional_residuals) != len(skips):
                raise ValueError(f"down_block_additional_residuals: expected {len(skips)} tensors, "
                                 f"got {len(down_block_additional_residuals)}")
            skips = [s + r for s, r in zip(skips, down_block_additional_residuals)]

        if self.mid_block is not None:
            if self.mid_block.has_cross_attention:
                sample = self.mid_block(sample, emb, **ctx)
            else:
                sample = self.mid_block(sample, emb)
            if adapter and sample.shape == adapter[0].shape:
                sample = sample + adapter.pop(0)
        if is_controlnet:
            sample = sample + mid_block_additional_residual

        for i, block in enumerate(self.up_blocks):
            k = len(block.resnets)
            res, skips = skips[-k:], skips[:-k]
            size = skips[-1].shape[2:] if forward_upsample_size and i < len(self.up_blocks) - 1 else None
            sample = block(sample, tuple(res), emb, upsample_size=size, **ctx)

        sample = self.conv_out(self.conv_act(self.conv_norm_out(sample)))
        return UNet2DConditionOutput(sample=sample) if return_dict else (sample,)
