"""IP-Adapter on the SD and SDXL pipelines (diffusers' API): load_ip_adapter, set_ip_adapter_scale,
unload_ip_adapter, encode_image, prepare_ip_adapter_image_embeds.

A weight file holds `image_proj.*` and `ip_adapter.*` (`<i>.to_k_ip.weight` / `<i>.to_v_ip.weight` for the i-th
attention layer, counted 1, 3, 5 ... over the UNet's cross-attention layers in diffusers' order); .bin files nest
them as {"image_proj": {...}, "ip_adapter": {...}} and are read with the safe loader. The image_proj keys tell
the format (the released files' names; `projection` turns them into diffusers' module names):

    basic       proj (Linear to 4 tokens), norm                     -> ImageProjection on the pooled image embedding
    Plus        latents, proj_in, proj_out, norm_out, layers.<i>.*  -> IPAdapterPlusImageProjection (resampler)
    Full Face   proj.0, proj.2 (MLP), proj.3 (LayerNorm)            -> IPAdapterFullImageProjection
    FaceID, FaceID Plus (insightface embeddings + LoRA)             -> refused

Several adapters load at once (lists of paths / subfolders / weight names, as diffusers); each then takes its
own image prompt and scale. After loading, the UNet's state dict has diffusers' keys
("encoder_hid_proj.image_projection_layers.0.image_embeds.weight", "...attn2.processor.to_k_ip.0.weight").

    formats.py  reading a weight file, telling its format, building its image projection
    unet.py     putting adapters on a UNet (processors, encoder_hid_proj) and taking them off; per-layer scales
    mixin.py    IPAdapterMixin, the pipelines' API
"""
from .mixin import IPAdapterMixin

__all__ = ["IPAdapterMixin"]
