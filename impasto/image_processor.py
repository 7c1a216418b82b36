"""Image conversions around the VAE, with diffusers' `VaeImageProcessor` semantics, and the CLIP image
processor the SD safety checker reads (`feature_extractor/preprocessor_config.json`).

Conventions: pixels in [0, 1] outside, [-1, 1] inside the VAE; tensors are (B, C, H, W), numpy arrays
(B, H, W, C) float32.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
import PIL.Image
import PIL.ImageFilter
import torch

from .models.config import ConfigMixin, read_json, register_to_config

logger = logging.getLogger("impasto")

RESAMPLE = {
    "nearest": PIL.Image.Resampling.NEAREST, "bilinear": PIL.Image.Resampling.BILINEAR,
    "bicubic": PIL.Image.Resampling.BICUBIC, "lanczos": PIL.Image.Resampling.LANCZOS,
    "box": PIL.Image.Resampling.BOX, "hamming": PIL.Image.Resampling.HAMMING,
}


def numpy_to_pil(images: np.ndarray) -> list[PIL.Image.Image]:
    """(B, H, W, C) or (H, W, C) floats in [0, 1] -> PIL images (mode "L" for one channel)."""
    if images.ndim == 3:
        images = images[None]
    images = (images * 255).round().astype("uint8")
    if images.shape[-1] == 1:
        return [PIL.Image.fromarray(i.squeeze(-1), mode="L") for i in images]
    return [PIL.Image.fromarray(i) for i in images]


def pil_to_numpy(images) -> np.ndarray:
    images = images if isinstance(images, list) else [images]
    return np.stack([np.array(i).astype(np.float32) / 255.0 for i in images], axis=0)


def numpy_to_pt(images: np.ndarray) -> torch.Tensor:
    if images.ndim == 3:
        images = images[..., None]
    return torch.from_numpy(images.transpose(0, 3, 1, 2))


def pt_to_numpy(images: torch.Tensor) -> np.ndarray:
    return images.cpu().permute(0, 2, 3, 1).float().numpy()


def _is_image(x) -> bool:
    return isinstance(x, PIL.Image.Image) or (isinstance(x, (np.ndarray, torch.Tensor)) and x.ndim in (2, 3))


def _is_image_input(x) -> bool:
    if isinstance(x, (np.ndarray, torch.Tensor)) and x.ndim == 4:
        return True
    if isinstance(x, list):
        return len(x) > 0 and all(_is_image(i) for i in x)
    return _is_image(x)


class VaeImageProcessor(ConfigMixin):
    """Pre- and post-processing for a VAE: resize to multiples of `vae_scale_factor`, [0,1] <-> [-1,1]."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, do_resize: bool = True, vae_scale_factor: int = 8, vae_latent_channels: int = 4,
                 resample: str = "lanczos", reducing_gap: int | None = None, do_normalize: bool = True,
                 do_binarize: bool = False, do_convert_rgb: bool = False, do_convert_grayscale: bool = False):
        if resample not in RESAMPLE:
            raise ValueError(f"resample: expected one of {sorted(RESAMPLE)}, got {resample!r}")
        if do_convert_rgb and do_convert_grayscale:
            raise ValueError("do_convert_rgb and do_convert_grayscale cannot both be True")

    numpy_to_pil = staticmethod(numpy_to_pil)
    pil_to_numpy = staticmethod(pil_to_numpy)
    numpy_to_pt = staticmethod(numpy_to_pt)
    pt_to_numpy = staticmethod(pt_to_numpy)

    @staticmethod
    def normalize(images):
        return 2.0 * images - 1.0

    @staticmethod
    def denormalize(images):
        return (images * 0.5 + 0.5).clamp(0, 1) if isinstance(images, torch.Tensor) else np.clip(images * 0.5 + 0.5, 0, 1)

    # ---- PIL helpers of diffusers' API (the inpainting docs use blur, get_crop_region, apply_overlay) ----
    @staticmethod
    def convert_to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
        return image.convert("RGB")

    @staticmethod
    def convert_to_grayscale(image: PIL.Image.Image) -> PIL.Image.Image:
        return image.convert("L")

    @staticmethod
    def blur(image: PIL.Image.Image, blur_factor: int = 4) -> PIL.Image.Image:
        """Gaussian blur of radius `blur_factor` (soft mask edges)."""
        return image.filter(PIL.ImageFilter.GaussianBlur(blur_factor))

    @staticmethod
    def get_crop_region(mask_image: PIL.Image.Image, width: int, height: int, pad: int = 0):
        from .tasks.inpaint import get_crop_region

        return get_crop_region(mask_image, width, height, pad)

    def binarize(self, image):
        """Values below 0.5 to 0, the rest to 1 (in place, as diffusers)."""
        image[image < 0.5] = 0
        image[image >= 0.5] = 1
        return image

    def apply_overlay(self, mask: PIL.Image.Image, init_image: PIL.Image.Image, image: PIL.Image.Image,
                      crop_coords=None) -> PIL.Image.Image:
        from .tasks.inpaint import apply_overlay

        return apply_overlay(self, mask, init_image, image, crop_coords)

    def get_default_height_width(self, image, height: int | None = None, width: int | None = None):
        """The image's own size (or the given one), rounded down to a multiple of vae_scale_factor."""
        if isinstance(image, PIL.Image.Image):
            h, w = image.height, image.width
        elif isinstance(image, torch.Tensor):
            h, w = image.shape[2], image.shape[3]
        else:
            h, w = image.shape[1], image.shape[2]
        height, width = height or h, width or w
        f = self.config.vae_scale_factor
        return height - height % f, width - width % f

    def resize(self, image, height: int, width: int, resize_mode: str = "default"):
        if isinstance(image, PIL.Image.Image):
            if resize_mode == "default":
                return image.resize((width, height), resample=RESAMPLE[self.config.resample],
                                    reducing_gap=self.config.reducing_gap)
            if resize_mode in ("fill", "crop"):
                return self._fit(image, width, height, resize_mode)
            raise ValueError(f"resize_mode: expected 'default', 'fill' or 'crop', got {resize_mode!r}")
        if resize_mode != "default":
            raise ValueError(f"resize_mode: {resize_mode!r} needs PIL images")
        if isinstance(image, np.ndarray):
            return pt_to_numpy(torch.nn.functional.interpolate(numpy_to_pt(image), size=(height, width)))
        return torch.nn.functional.interpolate(image, size=(height, width))

    def _fit(self, image, width, height, mode):
        """Keep the aspect ratio: "crop" covers the box and cuts the excess, "fill" fits inside and stretches
        the border rows/columns into the empty margins."""
        ratio, src_ratio = width / height, image.width / image.height
        fit_width = ratio < src_ratio if mode == "fill" else ratio > src_ratio  # which side matches the box
        src_w = width if fit_width else image.width * height // image.height
        src_h = image.height * width // image.width if fit_width else height
        resized = image.resize((src_w, src_h), resample=RESAMPLE[self.config.resample])
        out = PIL.Image.new("RGB", (width, height))
        out.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
        if mode == "fill":
            if ratio < src_ratio and height // 2 - src_h // 2 > 0:
                fh = height // 2 - src_h // 2
                out.paste(resized.resize((width, fh), box=(0, 0, width, 0)), box=(0, 0))
                out.paste(resized.resize((width, fh), box=(0, resized.height, width, resized.height)),
                          box=(0, fh + src_h))
            elif ratio > src_ratio and width // 2 - src_w // 2 > 0:
                fw = width // 2 - src_w // 2
                out.paste(resized.resize((fw, height), box=(0, 0, 0, height)), box=(0, 0))
                out.paste(resized.resize((fw, height), box=(resized.width, 0, resized.width, height)),
                          box=(fw + src_w, 0))
        return out

    def preprocess(self, image, height: int | None = None, width: int | None = None, resize_mode: str = "default",
                   crops_coords: tuple[int, int, int, int] | None = None) -> torch.Tensor:
        """PIL / numpy (B,H,W,C in [0,1]) / torch (B,C,H,W in [0,1]) or a list of them -> (B,C,H,W) in [-1,1].

        A tensor with `vae_latent_channels` channels is returned unchanged (it is taken to be latents)."""
        cfg = self.config
        if isinstance(image, list) and image and isinstance(image[0], np.ndarray) and image[0].ndim == 4:
            image = np.concatenate(image, axis=0)
        if isinstance(image, list) and image and isinstance(image[0], torch.Tensor) and image[0].ndim == 4:
            image = torch.cat(image, dim=0)
        if not _is_image_input(image):
            raise ValueError("image: expected a PIL image, a numpy array (H,W,C or B,H,W,C), a torch tensor "
                             f"(C,H,W or B,C,H,W) or a list of them; got {type(image).__name__}")
        images = image if isinstance(image, list) else [image]
        first = images[0]
        if isinstance(first, PIL.Image.Image):
            if crops_coords is not None:
                images = [i.crop(crops_coords) for i in images]
            if cfg.do_resize:
                height, width = self.get_default_height_width(images[0], height, width)
                images = [self.resize(i, height, width, resize_mode) for i in images]
            if cfg.do_convert_rgb:
                images = [i.convert("RGB") for i in images]
            elif cfg.do_convert_grayscale:
                images = [i.convert("L") for i in images]
            out = numpy_to_pt(pil_to_numpy(images))
        elif isinstance(first, np.ndarray):
            arr = np.concatenate(images, axis=0) if first.ndim == 4 else np.stack(images, axis=0)
            out = numpy_to_pt(arr.astype(np.float32) if arr.dtype != np.float32 else arr)
            height, width = self.get_default_height_width(out, height, width)
            if cfg.do_resize:
                out = self.resize(out, height, width)
        else:
            out = torch.cat(images, dim=0) if first.ndim == 4 else torch.stack(images, dim=0)
            if cfg.do_convert_grayscale and out.ndim == 3:
                out = out.unsqueeze(1)
            if out.shape[1] == cfg.vae_latent_channels:
                return out
            height, width = self.get_default_height_width(out, height, width)
            if cfg.do_resize:
                out = self.resize(out, height, width)
        do_normalize = cfg.do_normalize
        if do_normalize and out.min() < 0:
            warnings.warn("image: values below 0 found; taking the image to be in [-1, 1] already (expected [0, 1])",
                          FutureWarning)
            do_normalize = False
        if do_normalize:
            out = self.normalize(out)
        if cfg.do_binarize:
            out = (out >= 0.5).to(out.dtype)
        return out

    def postprocess(self, image: torch.Tensor, output_type: str = "pil", do_denormalize: list[bool] | None = None):
        """(B,C,H,W) in [-1,1] -> output_type "pt" (B,C,H,W in [0,1]), "np" (B,H,W,C), "pil" (list) or "latent"."""
        if not isinstance(image, torch.Tensor):
            raise ValueError(f"image: postprocess expects a torch tensor, got {type(image).__name__}")
        if output_type not in ("latent", "pt", "np", "pil"):
            logger.warning("output_type %r is not one of 'pil', 'np', 'pt', 'latent'; using 'np'", output_type)
            output_type = "np"
        if output_type == "latent":
            return image
        if do_denormalize is None:
            image = self.denormalize(image) if self.config.do_normalize else image
        else:
            image = torch.stack([self.denormalize(im) if d else im for im, d in zip(image, do_denormalize)])
        if output_type == "pt":
            return image
        image = pt_to_numpy(image)
        return image if output_type == "np" else numpy_to_pil(image)


# ---------------------------------------------------------------------------------------------------------
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


@dataclass
class BatchFeature:
    """What `CLIPImageProcessor(...)` returns: `.pixel_values` (and `["pixel_values"]`), movable with `.to()`."""

    pixel_values: torch.Tensor | np.ndarray

    def __getitem__(self, key):
        return getattr(self, key)

    def to(self, *args, **kwargs) -> "BatchFeature":
        if isinstance(self.pixel_values, torch.Tensor):
            return BatchFeature(self.pixel_values.to(*args, **kwargs))
        return self


class CLIPImageProcessor:
    """transformers' CLIP image processing: RGB, resize the shortest side (bicubic), center crop, rescale
    by 1/255, normalise with the CLIP mean/std; reads and writes `preprocessor_config.json`."""

    config_file = "preprocessor_config.json"

    def __init__(self, do_resize: bool = True, size=None, resample: int = 3, do_center_crop: bool = True,
                 crop_size=None, do_rescale: bool = True, rescale_factor: float = 1 / 255, do_normalize: bool = True,
                 image_mean=None, image_std=None, do_convert_rgb: bool = True, **unused):
        size = {"shortest_edge": 224} if size is None else size
        self.size = {"shortest_edge": size} if isinstance(size, int) else dict(size)
        crop_size = {"height": 224, "width": 224} if crop_size is None else crop_size
        self.crop_size = {"height": crop_size, "width": crop_size} if isinstance(crop_size, int) else dict(crop_size)
        self.do_resize, self.resample, self.do_center_crop = do_resize, int(resample), do_center_crop
        self.do_rescale, self.rescale_factor, self.do_normalize = do_rescale, rescale_factor, do_normalize
        self.image_mean = list(OPENAI_CLIP_MEAN if image_mean is None else image_mean)
        self.image_std = list(OPENAI_CLIP_STD if image_std is None else image_std)
        self.do_convert_rgb = do_convert_rgb

    @classmethod
    def from_pretrained(cls, path, subfolder: str | None = None, **hub_kwargs):
        from .loading.hub import resolve_file

        hub = {k: hub_kwargs[k] for k in ("local_files_only", "cache_dir", "revision", "token") if k in hub_kwargs}
        return cls(**read_json(resolve_file(path, cls.config_file, subfolder=subfolder, **hub)))

    def to_dict(self) -> dict:
        return dict(do_resize=self.do_resize, size=self.size, resample=self.resample, do_center_crop=self.do_center_crop,
                    crop_size=self.crop_size, do_rescale=self.do_rescale, rescale_factor=self.rescale_factor,
                    do_normalize=self.do_normalize, image_mean=self.image_mean, image_std=self.image_std,
                    do_convert_rgb=self.do_convert_rgb, image_processor_type="CLIPImageProcessor")

    def save_pretrained(self, save_directory, **unused):
        import json
        from pathlib import Path

        Path(save_directory).mkdir(parents=True, exist_ok=True)
        (Path(save_directory) / self.config_file).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def _resize(self, img: PIL.Image.Image) -> PIL.Image.Image:
        if "shortest_edge" in self.size:
            s = self.size["shortest_edge"]
            w, h = img.size
            short, long = min(w, h), max(w, h)
            new_long = int(s * long / short)
            size = (s, new_long) if w <= h else (new_long, s)
        else:
            size = (self.size["width"], self.size["height"])
        return img.resize(size, resample=self.resample)

    def _crop(self, a: np.ndarray) -> np.ndarray:
        ch, cw = self.crop_size["height"], self.crop_size["width"]
        h, w = a.shape[:2]
        if h < ch or w < cw:  # pad with zeros, centred, as transformers does
            ph, pw = max(ch, h), max(cw, w)
            padded = np.zeros((ph, pw, a.shape[2]), dtype=a.dtype)
            top, left = (ph - h) // 2, (pw - w) // 2
            padded[top:top + h, left:left + w] = a
            a, h, w = padded, ph, pw
        top, left = (h - ch) // 2, (w - cw) // 2
        return a[top:top + ch, left:left + cw]

    def _one(self, img) -> np.ndarray:
        if isinstance(img, torch.Tensor):
            img = img.detach().cpu().numpy()
            img = img.transpose(1, 2, 0) if img.ndim == 3 and img.shape[0] in (1, 3, 4) else img
        if isinstance(img, np.ndarray):
            arr = img * 255 if img.dtype.kind == "f" and img.max() <= 1.0 else img
            img = PIL.Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8).squeeze())
        if not isinstance(img, PIL.Image.Image):
            raise ValueError(f"images: expected PIL images, numpy arrays or tensors, got {type(img).__name__}")
        if self.do_convert_rgb and img.mode != "RGB":
            img = img.convert("RGB")
        if self.do_resize:
            img = self._resize(img)
        a = np.array(img)
        a = a[..., None] if a.ndim == 2 else a
        if self.do_center_crop:
            a = self._crop(a)
        a = a.astype(np.float32)
        if self.do_rescale:
            a = (a.astype(np.float64) * self.rescale_factor).astype(np.float32)
        if self.do_normalize:
            a = (a - np.array(self.image_mean, np.float32)) / np.array(self.image_std, np.float32)
        return a.transpose(2, 0, 1).astype(np.float32)

    def __call__(self, images, return_tensors: str | None = "pt", **unused) -> BatchFeature:
        if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
            images = list(images)
        images = images if isinstance(images, list) else [images]
        batch = np.stack([self._one(i) for i in images])
        return BatchFeature(torch.from_numpy(batch) if return_tensors == "pt" else batch)

    preprocess = __call__

    def __repr__(self):
        return f"CLIPImageProcessor {self.to_dict()}"


CLIPFeatureExtractor = CLIPImageProcessor
