"""LDMTextToImagePipeline: CompVis' latent diffusion text-to-image model (`CompVis/ldm-text2im-large-256`).

prompt -> BertTokenizer (77 tokens) -> LDMBertModel context -> UNet2DConditionModel denoising with classifier-free
guidance -> VQModel / AutoencoderKL decode. Constructor and `__call__` arguments are diffusers'.
"""
from __future__ import annotations

import logging

import torch

from ..core.guidance import cfg_batch, cfg_combine
from ..image_processor import pt_to_numpy
from ..tasks.denoise import step_kwargs
from ..tasks.txt2img import prepare_latents
from .outputs import ImagePipelineOutput
from .pipeline_utils import DiffusionPipeline

logger = logging.getLogger("impasto")

MAX_TOKENS = 77  # the LDM text encoder's context length (hard-coded in the reference pipeline too)
LATENT_FACTOR = 8  # latent grid = height // 8 x width // 8, as the reference (the real LDM VAE is f8)


def to_output(image: torch.Tensor, output_type: str, numpy_to_pil):
    """(B, C, H, W) in [0, 1] -> tensor ("pt"), (B, H, W, C) float32 numpy ("np") or a list of PIL images ("pil")."""
    if output_type == "pt":
        return image
    array = pt_to_numpy(image)
    return numpy_to_pil(array) if output_type == "pil" else array


def check_output_type(output_type: str, allowed=("pil", "np", "pt", "latent")) -> None:
    if output_type not in allowed:
        raise ValueError(f"output_type: expected one of {', '.join(map(repr, allowed))}, got {output_type!r}")


class LDMTextToImagePipeline(DiffusionPipeline):
    r"""Text-to-image generation with latent diffusion (LDMBert text encoder + UNet + VQ or KL autoencoder).

    Args:
        vqvae: `VQModel` or `AutoencoderKL` decoding latents to images.
        bert: `LDMBertModel` (any text encoder whose output `[0]` is the (B, T, C) context works).
        tokenizer: `BertTokenizer`.
        unet: `UNet2DConditionModel` predicting the noise.
        scheduler: `DDIMScheduler`, `PNDMScheduler` or `LMSDiscreteScheduler` (any impasto scheduler).

    Differences from diffusers, all chosen for correctness:
        - With `eta > 0` (DDIM) the noise added at each step is drawn from `generator`, so a run is reproducible
          from the generator alone; diffusers draws it from torch's global random state, so its eta > 0 results
          depend on whatever ran before. For eta = 0 the results equal diffusers'.
        - The initial noise is scaled by `scheduler.init_noise_sigma` and the UNet input goes through
          `scheduler.scale_model_input`, so sigma-space schedulers (LMS, Euler) work; both are identities for
          DDIM and PNDM, the schedulers the LDM checkpoints ship with.
    As in diffusers, the latent grid is `height // 8` x `width // 8` (the real LDM autoencoder has factor 8).
    """

    model_cpu_offload_seq = "bert->unet->vqvae"

    def __init__(self, vqvae, bert, tokenizer, unet, scheduler):
        super().__init__()
        self.register_modules(vqvae=vqvae, bert=bert, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
        self.vae_scale_factor = 2 ** (len(self.vqvae.config.block_out_channels) - 1)

    def encode_prompt(self, prompt: list[str], device) -> torch.Tensor:
        """Token ids (padded / truncated to 77, with a warning on truncation) -> the text encoder's context."""
        ids = self.tokenizer(prompt, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                             return_tensors="pt").input_ids
        return self.bert(ids.to(device))[0]

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], height: int | None = None, width: int | None = None,
                 num_inference_steps: int | None = 50, guidance_scale: float | None = 1.0, eta: float | None = 0.0,
                 generator: torch.Generator | list[torch.Generator] | None = None, latents: torch.Tensor | None = None,
                 output_type: str | None = "pil", return_dict: bool = True, **kwargs):
        """Generate images for `prompt`; guidance_scale != 1 enables classifier-free guidance (an empty prompt as
        the unconditional input). Returns ImagePipelineOutput(images) or `(images,)`."""
        if kwargs:
            logger.warning("LDMTextToImagePipeline: ignoring unsupported arguments %s", ", ".join(sorted(kwargs)))
        if isinstance(prompt, str):
            prompt = [prompt]
        if not isinstance(prompt, list) or not prompt or not all(isinstance(p, str) for p in prompt):
            raise ValueError(f"prompt: expected a string or a non-empty list of strings, got {type(prompt).__name__}")
        batch_size = len(prompt)
        default = self.unet.config.sample_size * self.vae_scale_factor
        height, width = height or default, width or default
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, int) or value <= 0 or value % LATENT_FACTOR:
                raise ValueError(f"{name}: expected a positive multiple of {LATENT_FACTOR}, got {value!r}")
        if not isinstance(num_inference_steps, int) or num_inference_steps <= 0:
            raise ValueError(f"num_inference_steps: expected a positive int, got {num_inference_steps!r}")
        if eta is None or eta < 0:
            raise ValueError(f"eta: expected a number >= 0, got {eta!r}")
        check_output_type(output_type)
        device = self._execution_device
        guided = guidance_scale is not None and guidance_scale != 1.0

        context = self.encode_prompt(prompt, device)
        if guided:
            context = torch.cat([self.encode_prompt([""] * batch_size, device), context])

        self.scheduler.set_timesteps(num_inference_steps)
        latents = prepare_latents(self.scheduler, batch_size, self.unet.config.in_channels, height, width,
                                  LATENT_FACTOR, context.dtype, device, generator, latents).to(context.dtype)
        extra = step_kwargs(self.scheduler, generator, eta)
        for t in self.progress_bar(self.scheduler.timesteps):
            x = self.scheduler.scale_model_input(cfg_batch(latents, guided), t)
            noise_pred = self.unet(x, t, encoder_hidden_states=context).sample
            if guided:
                noise_pred, _ = cfg_combine(noise_pred, guidance_scale)
            latents = self.scheduler.step(noise_pred, t, latents, **extra).prev_sample

        if output_type == "latent":
            images = latents
        else:
            image = self.vqvae.decode(latents / self.vqvae.config.scaling_factor).sample
            images = to_output((image / 2 + 0.5).clamp(0, 1), output_type, self.numpy_to_pil)
        return ImagePipelineOutput(images=images) if return_dict else (images,)
