"""IPAdapterMixin: load_ip_adapter, set_ip_adapter_scale, unload_ip_adapter, encode_image and
prepare_ip_adapter_image_embeds on the SD 1.x/2.x and SDXL pipelines, as diffusers names them."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from .formats import ARG, as_list, format_of, read_ip_adapter
from .unet import attach, detach, ip_processors, layer_scales

logger = logging.getLogger("impasto")
HUB_KEYS = ("local_files_only", "cache_dir", "revision", "token")
IGNORED_KEYS = ("force_download", "proxies", "low_cpu_mem_usage", "resume_download", "user_agent")


class IPAdapterMixin:
    """Mixed into the SD 1.x/2.x and SDXL pipelines (which have `unet`, `image_encoder`, `feature_extractor`)."""

    def load_ip_adapter(self, pretrained_model_name_or_path_or_dict, subfolder, weight_name,
                        image_encoder_folder: str | None = "image_encoder", **kwargs):
        """Load IP-Adapters (e.g. h94/IP-Adapter, subfolder="models", weight_name="ip-adapter_sd15.bin"; lists of
        weight names, with one or as many paths / subfolders, load several at once, replacing any loaded before)
        and, when the pipeline has none, the image encoder from `image_encoder_folder` (a folder name inside
        `subfolder`, or a path with "/" from the repo root) and a CLIP feature extractor."""
        names = as_list(weight_name)
        sources, subfolders = as_list(pretrained_model_name_or_path_or_dict), as_list(subfolder)
        sources = sources * len(names) if len(sources) == 1 else sources
        subfolders = subfolders * len(names) if len(subfolders) == 1 else subfolders
        if len(sources) != len(names):
            raise ValueError(f"weight_name, {ARG}: got {len(names)} weight names for {len(sources)} sources; give "
                             "one source or one per weight name")
        if len(subfolders) != len(names):
            raise ValueError(f"weight_name, subfolder: got {len(names)} weight names for {len(subfolders)} "
                             "subfolders; give one subfolder or one per weight name")
        hub = {k: kwargs.pop(k) for k in HUB_KEYS if k in kwargs}
        for k in IGNORED_KEYS:
            kwargs.pop(k, None)
        if kwargs:
            raise ValueError(f"load_ip_adapter: unexpected arguments {sorted(kwargs)}")
        adapters = [read_ip_adapter(*args, **hub) for args in zip(sources, subfolders, names)]
        for state, name in adapters:
            format_of(state["image_proj"], name)
        if getattr(self, "image_encoder", None) is None:
            if image_encoder_folder is None:
                logger.warning("load_ip_adapter: image_encoder_folder=None, so no image encoder is loaded; pass "
                               "ip_adapter_image_embeds instead of ip_adapter_image")
            elif isinstance(sources[0], dict):
                raise ValueError(f"{ARG}: the image encoder cannot be loaded from a state dict; load the pipeline "
                                 "with an image_encoder, or pass image_encoder_folder=None and use "
                                 "ip_adapter_image_embeds")
            else:
                self.register_modules(image_encoder=self._load_image_encoder(sources[0], subfolders[0],
                                                                             image_encoder_folder, hub))
        if getattr(self, "feature_extractor", None) is None:
            from ...image_processor import CLIPImageProcessor

            size = self.image_encoder.config.image_size if self.image_encoder is not None else 224
            self.register_modules(feature_extractor=CLIPImageProcessor(size=size, crop_size=size))
        attach(self.unet, adapters)

    def _load_image_encoder(self, source, subfolder, folder: str, hub: dict):
        from ...models.clip_vision import CLIPVisionModelWithProjection

        if Path(os.path.expanduser(str(source))).is_file():  # the weight file was given: its folder
            source, subfolder = Path(os.path.expanduser(str(source))).parent, None
        where = Path(folder).as_posix() if "/" in folder else Path(subfolder or "", folder).as_posix()
        logger.info("load_ip_adapter: image encoder from %s/%s", source, where)
        encoder = CLIPVisionModelWithProjection.from_pretrained(source, subfolder=where, dtype=self.dtype, **hub)
        return encoder.to(self.device)

    def set_ip_adapter_scale(self, scale) -> None:
        """How strongly each image prompt acts: a number (0 = off, 1 = full) or diffusers' per-block dict
        ({"down": {"block_2": [0.0, 1.0]}, "up": {"block_0": [0.0, 1.0, 0.0]}}: the named transformer layers get
        the values, all others 0), or a list of those with one per loaded adapter."""
        processors = ip_processors(self.unet)
        if not processors:
            raise ValueError("scale: no IP-Adapter is loaded; call load_ip_adapter first")
        count = len(processors[0][1].scale)
        scales = as_list(scale)
        if len(scales) == 1:
            scales = scales * count
        if len(scales) != count:
            raise ValueError(f"scale: got {len(scales)} scales for {count} loaded IP-Adapters; give one, or one per "
                             "adapter")
        names = [name for name, _ in processors]
        per_adapter = [layer_scales(self.unet, s, names) for s in scales]
        for i, (_, proc) in enumerate(processors):
            proc.scale = [values[i] for values in per_adapter]

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
        """One tensor per adapter, (num_images_per_prompt [x2 when guiding: negative first], images, dim), or
        (..., images, patches, dim) for the adapters that read hidden states (Plus, Full Face)."""
        projection = self._ip_projection("ip_adapter_image" if ip_adapter_image_embeds is None
                                         else "ip_adapter_image_embeds")
        from ...models.ip_adapter import projection_input

        positive, negative = [], []
        if ip_adapter_image_embeds is None:
            images = ip_adapter_image if isinstance(ip_adapter_image, list) else [ip_adapter_image]
            if len(images) != projection.num_ip_adapters:
                raise ValueError(f"ip_adapter_image: got {len(images)} images for {projection.num_ip_adapters} "
                                 "IP-Adapter(s), give one per adapter; for several images on one adapter pass a "
                                 "nested list [[a, b]]")
            for image, layer in zip(images, projection.image_projection_layers):
                pos, neg = self.encode_image(image, device, 1, projection_input(layer)[1])
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
        from ...models.ip_adapter import projection_input

        for embeds, layer in zip(ip_adapter_image_embeds, projection.image_projection_layers):
            dim, hidden = projection_input(layer)
            halves = 2 if self.do_classifier_free_guidance else 1
            if not torch.is_tensor(embeds) or embeds.ndim != 3 + hidden or embeds.shape[-1] != dim \
                    or embeds.shape[0] % halves:
                shape = tuple(embeds.shape) if torch.is_tensor(embeds) else type(embeds).__name__
                first = "2 * batch (negative first, as guidance is on)" if halves == 2 else "batch"
                middle = "images, patches" if hidden else "images"
                raise ValueError(f"ip_adapter_image_embeds: expected tensors of shape ({first}, {middle}, {dim}), "
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
