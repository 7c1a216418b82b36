"""IP-Adapter on the SD and SDXL pipelines (diffusers' API): load_ip_adapter, set_ip_adapter_scale,
unload_ip_adapter, encode_image, prepare_ip_adapter_image_embeds. Basic IP-Adapter weights only.

A weight file holds `image_proj.*` (proj: Linear to 4 tokens, norm: LayerNorm) and `ip_adapter.*`
(`<i>.to_k_ip.weight` / `<i>.to_v_ip.weight` for the i-th attention layer, counted 1, 3, 5 ... over the UNet's
cross-attention layers in diffusers' order); .bin files nest them as {"image_proj": {...}, "ip_adapter": {...}}
and are read with the safe loader. After loading, the UNet's state dict has diffusers' keys
("encoder_hid_proj.image_projection_layers.0.image_embeds.weight", "...attn2.processor.to_k_ip.0.weight").
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from . import weights as W
from .hub import resolve_file

logger = logging.getLogger("impasto")
ARG = "pretrained_model_name_or_path_or_dict"
NUM_TOKENS = 4  # the basic IP-Adapter's image tokens (fixed, as in diffusers)
HUB_KEYS = ("local_files_only", "cache_dir", "revision", "token")
IGNORED_KEYS = ("force_download", "proxies", "low_cpu_mem_usage", "resume_download", "user_agent")

# image_proj keys that mark the formats impasto does not load (diffusers' detection order)
OTHER_FORMATS = (("proj.3.weight", "Full Face"), ("perceiver_resampler.proj_in.weight", "FaceID Plus"),
                 ("latents", "Plus"), ("norm.weight", "FaceID"))


def _single(value, name: str):
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise ValueError(f"{name}: impasto loads one IP-Adapter at a time; got a list of {len(value)}")
        return value[0]
    return value


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


def check_basic(image_proj: dict, source: str) -> None:
    if "proj.weight" in image_proj:
        return
    kind = next((name for key, name in OTHER_FORMATS if key in image_proj), "unknown")
    raise ValueError(f"{ARG}: {source} is an IP-Adapter {kind} file; impasto supports the basic IP-Adapter "
                     f"format only (image_proj.proj / image_proj.norm), found image_proj keys {sorted(image_proj)[:4]}")


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


def cross_attention_layers(unet) -> list[tuple[str, torch.nn.Module]]:
    """The layers that get the image branch: every attn2, in diffusers' attn_processors order."""
    from ..models.attention import Attention

    return [(name, m) for name, m in unet.named_modules() if isinstance(m, Attention) and name.endswith("attn2")]


def attach(unet, state: dict, source: str) -> None:
    """Put the adapter on `unet`: processors with to_k_ip / to_v_ip on the cross-attention layers and the
    image projection as `unet.encoder_hid_proj` (config encoder_hid_dim_type="ip_image_proj")."""
    from ..models.ip_adapter import IPAdapterAttnProcessor2_0, ImageProjection, MultiIPAdapterImageProjection

    proj, layers = state["image_proj"], state["ip_adapter"]
    check_basic(proj, source)
    dtype, device = unet.dtype, unet.device
    weight = proj["proj.weight"]
    cross = weight.shape[0] // NUM_TOKENS
    targets = cross_attention_layers(unet)
    if not targets:
        raise ValueError("unet: this UNet has no cross-attention layers for an IP-Adapter")
    if cross != targets[0][1].to_k.weight.shape[1]:
        raise ValueError(f"{ARG}: {source}: image_proj.proj makes {NUM_TOKENS} tokens of {cross} channels, but the "
                         f"UNet's cross-attention takes {targets[0][1].to_k.weight.shape[1]}")
    processors = []
    for i, (name, attn) in enumerate(targets):
        key = 2 * i + 1
        found = {f"to_{kv}_ip.0.weight": layers.get(f"{key}.to_{kv}_ip.weight") for kv in "kv"}
        if any(v is None for v in found.values()):
            raise ValueError(f"{ARG}: {source} has no to_k_ip / to_v_ip weights for layer {key} ({name}); it has "
                             f"{len(layers) // 2} layers, this UNet {len(targets)} cross-attention layers: "
                             "is the adapter for another model (SD 1.x / 2.x / XL)?")
        expected = tuple(attn.to_k.weight.shape)
        for k, v in found.items():
            if tuple(v.shape) != expected:
                raise ValueError(f"{ARG}: {source}: ip_adapter.{key}.{k[:7]}.weight has shape {tuple(v.shape)}, "
                                 f"but {name} needs {expected}: is the adapter for another model?")
        with torch.device("meta"):
            proc = IPAdapterAttnProcessor2_0(expected[0], expected[1], num_tokens=[NUM_TOKENS], scale=1.0)
        proc.load_state_dict({k: v.to(device, dtype) for k, v in found.items()}, assign=True)
        processors.append((attn, proc))
    used = {f"{2 * i + 1}.to_{kv}_ip.weight" for i in range(len(targets)) for kv in "kv"}
    extra = sorted(set(layers) - used)
    if extra:
        logger.warning("%s: ip_adapter weights not used: %s", source, ", ".join(extra[:8]))
    with torch.device("meta"):
        image_proj = ImageProjection(weight.shape[1], cross, NUM_TOKENS)
    renamed = {k.replace("proj", "image_embeds", 1) if k.startswith("proj.") else k: v.to(device, dtype)
               for k, v in proj.items()}
    try:
        image_proj.load_state_dict(renamed, assign=True)
    except RuntimeError as e:
        raise ValueError(f"{ARG}: {source}: image_proj weights do not fit the basic IP-Adapter projection: "
                         f"{str(e).splitlines()[0]}") from None
    for attn, proc in processors:
        if attn.processor is not None and not isinstance(attn.processor, IPAdapterAttnProcessor2_0):
            logger.warning("load_ip_adapter: the custom attention processor of a cross-attention layer is replaced")
        attn.set_processor(proc)
    unet.encoder_hid_proj = MultiIPAdapterImageProjection([image_proj])
    unet.register_to_config(encoder_hid_dim_type="ip_image_proj")


def detach(unet) -> None:
    from ..models.attention_processor import builtin_processor
    from ..models.ip_adapter import IPAdapterAttnProcessor2_0

    for _, attn in cross_attention_layers(unet):
        if isinstance(attn.processor, IPAdapterAttnProcessor2_0):
            attn.set_processor(builtin_processor(attn.attn_backend))  # keeps slicing / xformers
    unet.encoder_hid_proj = None
    unet.register_to_config(encoder_hid_dim_type=None)


def ip_processors(unet) -> list:
    from ..models.ip_adapter import IPAdapterAttnProcessor2_0

    return [a.processor for _, a in cross_attention_layers(unet) if isinstance(a.processor, IPAdapterAttnProcessor2_0)]


class IPAdapterMixin:
    """Mixed into the SD 1.x/2.x and SDXL pipelines (which have `unet`, `image_encoder`, `feature_extractor`)."""

    def load_ip_adapter(self, pretrained_model_name_or_path_or_dict, subfolder, weight_name,
                        image_encoder_folder: str | None = "image_encoder", **kwargs):
        """Load a basic IP-Adapter (e.g. h94/IP-Adapter, subfolder="models", weight_name="ip-adapter_sd15.bin")
        and, when the pipeline has none, its image encoder from `image_encoder_folder` (a folder name inside
        `subfolder`, or a path with "/" from the repo root) and a CLIP feature extractor."""
        source = _single(pretrained_model_name_or_path_or_dict, ARG)
        subfolder = _single(subfolder, "subfolder")
        weight_name = _single(weight_name, "weight_name")
        hub = {k: kwargs.pop(k) for k in HUB_KEYS if k in kwargs}
        for k in IGNORED_KEYS:
            kwargs.pop(k, None)
        if kwargs:
            raise ValueError(f"load_ip_adapter: unexpected arguments {sorted(kwargs)}")
        state, name = read_ip_adapter(source, subfolder, weight_name, **hub)
        check_basic(state["image_proj"], name)
        if getattr(self, "image_encoder", None) is None:
            if image_encoder_folder is None:
                logger.warning("load_ip_adapter: image_encoder_folder=None, so no image encoder is loaded; pass "
                               "ip_adapter_image_embeds instead of ip_adapter_image")
            elif isinstance(source, dict):
                raise ValueError(f"{ARG}: the image encoder cannot be loaded from a state dict; load the pipeline "
                                 "with an image_encoder, or pass image_encoder_folder=None and use "
                                 "ip_adapter_image_embeds")
            else:
                self.register_modules(image_encoder=self._load_image_encoder(source, subfolder,
                                                                             image_encoder_folder, hub))
        if getattr(self, "feature_extractor", None) is None:
            from ..image_processor import CLIPImageProcessor

            size = self.image_encoder.config.image_size if self.image_encoder is not None else 224
            self.register_modules(feature_extractor=CLIPImageProcessor(size=size, crop_size=size))
        attach(self.unet, state, name)

    def _load_image_encoder(self, source, subfolder, folder: str, hub: dict):
        from ..models.clip_vision import CLIPVisionModelWithProjection

        if Path(os.path.expanduser(str(source))).is_file():  # the weight file was given: its folder
            source, subfolder = Path(os.path.expanduser(str(source))).parent, None
        where = Path(folder).as_posix() if "/" in folder else Path(subfolder or "", folder).as_posix()
        logger.info("load_ip_adapter: image encoder from %s/%s", source, where)
        encoder = CLIPVisionModelWithProjection.from_pretrained(source, subfolder=where, dtype=self.dtype, **hub)
        return encoder.to(self.device)

    def set_ip_adapter_scale(self, scale) -> None:
        """How strongly the image prompt acts: a float (0 = off, 1 = full), or a list holding one."""
        scale = _single(scale, "scale")
        if isinstance(scale, dict):
            raise ValueError("scale: per-block IP-Adapter scales (a dict) are not supported by impasto; pass a float")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise ValueError(f"scale: expected a float, got {scale!r}")
        processors = ip_processors(self.unet)
        if not processors:
            raise ValueError("scale: no IP-Adapter is loaded; call load_ip_adapter first")
        for proc in processors:
            proc.scale = [float(scale)] * len(proc.scale)

    def unload_ip_adapter(self) -> None:
        """Remove the adapter (and, as diffusers, the image encoder; the feature extractor too where the pipeline
        has no safety checker to keep it for)."""
        if getattr(self, "image_encoder", None) is not None:
            self.register_modules(image_encoder=None)
        if "safety_checker" not in self._module_names() and getattr(self, "feature_extractor", None) is not None:
            self.register_modules(feature_extractor=None)
        detach(self.unet)

    # ---- images -> embeddings ------------------------------------------------------------------------
    def encode_image(self, image, device, num_images_per_prompt: int, output_hidden_states=None):
        """(image embeds, zero embeds for the unconditional half), each repeated num_images_per_prompt times;
        with `output_hidden_states` the encoder's penultimate hidden states instead (of the image, and of a
        black image), as diffusers."""
        encoder = getattr(self, "image_encoder", None)
        if encoder is None:
            raise ValueError("ip_adapter_image: the pipeline has no image_encoder (load_ip_adapter with "
                             "image_encoder_folder=None?); pass ip_adapter_image_embeds instead")
        dtype = next(encoder.parameters()).dtype
        if not torch.is_tensor(image):
            if getattr(self, "feature_extractor", None) is None:
                raise ValueError("ip_adapter_image: the pipeline has no feature_extractor to prepare the image")
            image = self.feature_extractor(image, return_tensors="pt").pixel_values
        image = image.to(device=device, dtype=dtype)
        if output_hidden_states:
            hidden = encoder(image, output_hidden_states=True).hidden_states[-2]
            blank = encoder(torch.zeros_like(image), output_hidden_states=True).hidden_states[-2]
            return (hidden.repeat_interleave(num_images_per_prompt, dim=0),
                    blank.repeat_interleave(num_images_per_prompt, dim=0))
        embeds = encoder(image).image_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        return embeds, torch.zeros_like(embeds)

    def prepare_ip_adapter_image_embeds(self, ip_adapter_image, ip_adapter_image_embeds, device,
                                        num_images_per_prompt: int, do_classifier_free_guidance: bool) -> list:
        """One tensor per adapter, (num_images_per_prompt [x2 when guiding: negative first], images, dim)."""
        projection = self._ip_projection("ip_adapter_image" if ip_adapter_image_embeds is None
                                         else "ip_adapter_image_embeds")
        positive, negative = [], []
        if ip_adapter_image_embeds is None:
            images = ip_adapter_image if isinstance(ip_adapter_image, list) else [ip_adapter_image]
            if len(images) != projection.num_ip_adapters:
                raise ValueError(f"ip_adapter_image: got {len(images)} images for {projection.num_ip_adapters} "
                                 "IP-Adapter; for several images on one adapter pass a nested list [[a, b]]")
            for image in images:
                pos, neg = self.encode_image(image, device, 1)
                positive.append(pos[None])
                negative.append(neg[None])
        else:
            for embeds in ip_adapter_image_embeds:
                if do_classifier_free_guidance:
                    neg, embeds = embeds.chunk(2)
                    negative.append(neg)
                positive.append(embeds)
        out = []
        for i, embeds in enumerate(positive):
            embeds = torch.cat([embeds] * num_images_per_prompt)
            if do_classifier_free_guidance:
                embeds = torch.cat([torch.cat([negative[i]] * num_images_per_prompt), embeds])
            out.append(embeds.to(device=device))
        return out

    def _ip_projection(self, argument: str):
        projection = getattr(self.unet, "encoder_hid_proj", None)
        if projection is None or not hasattr(projection, "image_projection_layers"):
            raise ValueError(f"{argument}: no IP-Adapter is loaded; call pipe.load_ip_adapter(...) first")
        return projection

    def _check_ip_adapter(self, ip_adapter_image, ip_adapter_image_embeds) -> None:
        if ip_adapter_image is not None and ip_adapter_image_embeds is not None:
            raise ValueError("ip_adapter_image, ip_adapter_image_embeds: give at most one of them")
        if ip_adapter_image is None and ip_adapter_image_embeds is None:
            if getattr(self.unet, "encoder_hid_proj", None) is not None:
                raise ValueError("ip_adapter_image: an IP-Adapter is loaded, so an image prompt is required "
                                 "(ip_adapter_image or ip_adapter_image_embeds; or call unload_ip_adapter())")
            return
        if ip_adapter_image is not None:
            self._ip_projection("ip_adapter_image")
            return
        projection = self._ip_projection("ip_adapter_image_embeds")
        if not isinstance(ip_adapter_image_embeds, list):
            raise ValueError(f"ip_adapter_image_embeds: expected a list with one tensor per IP-Adapter, got "
                             f"{type(ip_adapter_image_embeds).__name__}")
        if len(ip_adapter_image_embeds) != projection.num_ip_adapters:
            raise ValueError(f"ip_adapter_image_embeds: expected {projection.num_ip_adapters} tensor(s), one per "
                             f"IP-Adapter, got {len(ip_adapter_image_embeds)}")
        for embeds, layer in zip(ip_adapter_image_embeds, projection.image_projection_layers):
            dim = layer.image_embeds.in_features
            halves = 2 if self.do_classifier_free_guidance else 1
            if not torch.is_tensor(embeds) or embeds.ndim != 3 or embeds.shape[-1] != dim \
                    or embeds.shape[0] % halves:
                shape = tuple(embeds.shape) if torch.is_tensor(embeds) else type(embeds).__name__
                first = "2 * batch (negative first, as guidance is on)" if halves == 2 else "batch"
                raise ValueError(f"ip_adapter_image_embeds: expected tensors of shape ({first}, images, {dim}), "
                                 f"got {shape}")

    def _ip_adapter_state(self, ip_adapter_image, ip_adapter_image_embeds, device, batch: int) -> dict:
        """{"image_embeds": [...]} for the denoising loop (empty without an image prompt); as diffusers, the
        embeddings are repeated for the whole batch (prompts x num_images_per_prompt)."""
        if ip_adapter_image is None and ip_adapter_image_embeds is None:
            return {}
        self._ip_guided = self.do_classifier_free_guidance
        return {"image_embeds": self.prepare_ip_adapter_image_embeds(
            ip_adapter_image, ip_adapter_image_embeds, device, batch, self._ip_guided)}

    def _image_cond(self, state: dict) -> dict:
        """The image prompt for the UNet call of this step (the positive half when a callback turned guidance
        off mid-run)."""
        embeds = state.get("image_embeds")
        if embeds is None:
            return {}
        if self._ip_guided and not self.do_classifier_free_guidance:
            embeds = [e.chunk(2)[1] for e in embeds]
        return {"image_embeds": embeds}
