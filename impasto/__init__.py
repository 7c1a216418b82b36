"""impasto: latent diffusion image generation with the diffusers API.

Public names are exported lazily: `import impasto` loads nothing heavy (not even torch); the module that
defines a class is imported the first time the class is used.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module (relative to this package) that defines it
_EXPORTS = {
    # models
    "ModelMixin": "models.modeling",
    "ConfigMixin": "models.config",
    "UNet2DConditionModel": "models.unet_2d_condition",
    "UNet2DModel": "models.unet_2d",
    "ControlNetModel": "models.controlnet",
    "MultiControlNetModel": "models.multicontrolnet",
    "AutoencoderKL": "models.autoencoder_kl",
    "VQModel": "models.vq_model",
    "CLIPTextModel": "models.clip_text",
    "CLIPTextModelWithProjection": "models.clip_text",
    "CLIPVisionModelWithProjection": "models.clip_vision",
    "LDMBertModel": "models.ldm_bert",
    "StableDiffusionSafetyChecker": "models.safety_checker",
    # tokenizers and image processors
    "CLIPTokenizer": "text.clip_tokenizer",
    "CLIPTokenizerFast": "text.clip_tokenizer",
    "BertTokenizer": "text.bert_tokenizer",
    "BertTokenizerFast": "text.bert_tokenizer",
    "VaeImageProcessor": "image_processor",
    "CLIPImageProcessor": "image_processor",
    "CLIPFeatureExtractor": "image_processor",
    # schedulers
    "SchedulerMixin": "schedulers.base",
    "DDIMScheduler": "schedulers.ddim",
    "DDPMScheduler": "schedulers.ddpm",
    "PNDMScheduler": "schedulers.pndm",
    "LMSDiscreteScheduler": "schedulers.lms",
    "EulerDiscreteScheduler": "schedulers.euler",
    "EulerAncestralDiscreteScheduler": "schedulers.euler_ancestral",
    "HeunDiscreteScheduler": "schedulers.heun",
    "KDPM2DiscreteScheduler": "schedulers.kdpm2",
    "KDPM2AncestralDiscreteScheduler": "schedulers.kdpm2_ancestral",
    "DPMSolverMultistepScheduler": "schedulers.dpmsolver_multistep",
    "DPMSolverSinglestepScheduler": "schedulers.dpmsolver_singlestep",
    "DPMSolverSDEScheduler": "schedulers.dpmsolver_sde",
    "UniPCMultistepScheduler": "schedulers.unipc",
    "DEISMultistepScheduler": "schedulers.deis_multistep",
    "LCMScheduler": "schedulers.lcm",
    "TCDScheduler": "schedulers.tcd",
    "scheduler_from_name": "schedulers.names",
    # pipelines
    "DiffusionPipeline": "pipelines.pipeline_utils",
    "ImagePipelineOutput": "pipelines.outputs",
    "StableDiffusionPipelineOutput": "pipelines.outputs",
    "StableDiffusionXLPipelineOutput": "pipelines.outputs",
    "StableDiffusionPipeline": "pipelines.stable_diffusion",
    "StableDiffusionImg2ImgPipeline": "pipelines.stable_diffusion_img2img",
    "StableDiffusionInpaintPipeline": "pipelines.stable_diffusion_inpaint",
    "StableDiffusionXLPipeline": "pipelines.stable_diffusion_xl",
    "StableDiffusionXLImg2ImgPipeline": "pipelines.stable_diffusion_xl_img2img",
    "StableDiffusionXLInpaintPipeline": "pipelines.stable_diffusion_xl_inpaint",
    "StableDiffusionControlNetPipeline": "pipelines.controlnet",
    "StableDiffusionControlNetImg2ImgPipeline": "pipelines.controlnet",
    "StableDiffusionXLControlNetPipeline": "pipelines.controlnet_sdxl",
    "StableDiffusionXLControlNetImg2ImgPipeline": "pipelines.controlnet_sdxl",
    "hires_fix": "pipelines.hires_fix",
    "LDMTextToImagePipeline": "pipelines.latent_diffusion",
    "LDMSuperResolutionPipeline": "pipelines.latent_diffusion_superresolution",
    # jax (optional extra; importing these needs jax and flax)
    "FlaxStableDiffusionPipeline": "jax.pipeline",
    "FlaxStableDiffusionImg2ImgPipeline": "jax.pipeline_img2img",
    "FlaxStableDiffusionPipelineOutput": "jax.pipeline",
    "FlaxUNet2DConditionModel": "jax.unet",
    "FlaxAutoencoderKL": "jax.vae",
    "FlaxCLIPTextModel": "jax.clip",
    "FlaxDDIMScheduler": "jax.schedulers",
    "FlaxPNDMScheduler": "jax.schedulers",
    "FlaxLMSDiscreteScheduler": "jax.schedulers",
    "FlaxEulerDiscreteScheduler": "jax.schedulers",
    "FlaxDPMSolverMultistepScheduler": "jax.schedulers",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'impasto' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
