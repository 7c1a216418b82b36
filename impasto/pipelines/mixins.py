"""Memory and speed toggles on pipelines; each delegates to the components that implement the feature.

Attention slicing / xformers: a component's own `set_attention_slice` / `enable_xformers_memory_efficient_attention`
is used when it has one, else the attention backend of its layers is switched (impasto.models.attention).
CPU offload keeps weights in main memory and moves one model (or one layer) at a time to the accelerator.
"""
from __future__ import annotations

import logging

import torch

from ..models.attention import AttentionBackend, set_backend, xformers_usable

logger = logging.getLogger("impasto")


def _backend_layers(module):
    return [m for m in module.modules() if hasattr(m, "attn_backend")]


class MemoryMixin:
    """Mixed into DiffusionPipeline; expects `_torch_modules()` and the component attributes."""

    # ---- attention -----------------------------------------------------------------------------------
    def set_attention_slice(self, slice_size):
        if not (slice_size is None or slice_size in ("auto", "max") or (isinstance(slice_size, int) and slice_size > 0)):
            raise ValueError(f"slice_size: expected 'auto', 'max', a positive int or None, got {slice_size!r}")
        for name, module in self._torch_modules():
            if hasattr(module, "set_attention_slice"):
                module.set_attention_slice(slice_size)
            elif name != "vae":  # diffusers slices only the models that offer it (the UNet); keep the VAE as is
                for layer in _backend_layers(module):
                    upcast = layer.attn_backend.upcast
                    if slice_size is None:
                        layer.attn_backend = AttentionBackend("sdpa", None, upcast)
                        continue
                    heads = int(getattr(layer, "heads", 2))
                    size = 1 if slice_size == "max" else max(1, heads // 2) if slice_size == "auto" else slice_size
                    layer.attn_backend = AttentionBackend("sliced", size, upcast)

    def enable_attention_slicing(self, slice_size="auto"):
        """Compute attention in slices to save memory: "auto" (half the heads at a time), "max" (one), or an int."""
        self.set_attention_slice(slice_size)

    def disable_attention_slicing(self):
        self.set_attention_slice(None)

    def enable_xformers_memory_efficient_attention(self, attention_op=None):
        """Use xformers' attention kernels where usable (CUDA + xformers installed); PyTorch SDPA otherwise."""
        self._set_xformers(True, attention_op)

    def disable_xformers_memory_efficient_attention(self):
        self._set_xformers(False)

    def _set_xformers(self, on: bool, attention_op=None):
        usable = xformers_usable(self._execution_device)
        modules = self._torch_modules()
        # a component with its own method (the UNet) logs which attention it uses: one line, not two
        if on and not any(hasattr(m, "enable_xformers_memory_efficient_attention") for _, m in modules):
            logger.info("attention uses %s", "xformers" if usable else
                        "PyTorch SDPA: xformers is not usable here (it needs the package and a CUDA device)")
        for _, module in modules:
            if on and hasattr(module, "enable_xformers_memory_efficient_attention"):
                module.enable_xformers_memory_efficient_attention(attention_op)
            elif not on and hasattr(module, "disable_xformers_memory_efficient_attention"):
                module.disable_xformers_memory_efficient_attention()
            elif usable or not on:
                set_backend(module, AttentionBackend("xformers" if on else "sdpa"))

    # ---- VAE -----------------------------------------------------------------------------------------
    def _vae_call(self, method: str):
        vae = getattr(self, "vae", None)
        if vae is None or not hasattr(vae, method):
            raise ValueError(f"{method}: this pipeline's vae ({type(vae).__name__}) does not support it")
        getattr(vae, method)()

    def enable_vae_slicing(self):
        """Decode a batch one image at a time (same images, less memory)."""
        self._vae_call("enable_slicing")

    def disable_vae_slicing(self):
        self._vae_call("disable_slicing")

    def enable_vae_tiling(self):
        """Encode/decode in overlapping tiles, for images larger than memory allows (tiles are blended)."""
        self._vae_call("enable_tiling")

    def disable_vae_tiling(self):
        self._vae_call("disable_tiling")

    # ---- fused projections and FreeU ----------------------------------------------------------------
    def fuse_qkv_projections(self, unet: bool = True, vae: bool = True):
        """Fuse the query/key/value projections of the UNet's (and VAE's) attention layers into one matmul."""
        self._fuse(unet, vae, True)

    def unfuse_qkv_projections(self, unet: bool = True, vae: bool = True):
        self._fuse(unet, vae, False)

    def _fuse(self, unet: bool, vae: bool, on: bool):
        for name, wanted in (("unet", unet), ("vae", vae)):
            module = getattr(self, name, None)
            if not wanted or module is None:
                continue
            method = getattr(module, "fuse_qkv_projections" if on else "unfuse_qkv_projections", None)
            if method is not None:
                method()
                continue
            for m in module.modules():
                fn = getattr(m, "fuse_projections" if on else "unfuse_projections", None)
                if fn is not None:
                    fn()

    def enable_freeu(self, s1: float, s2: float, b1: float, b2: float):
        unet = getattr(self, "unet", None)
        if unet is None or not hasattr(unet, "enable_freeu"):
            raise ValueError("enable_freeu: this pipeline's unet does not support FreeU")
        unet.enable_freeu(s1=s1, s2=s2, b1=b1, b2=b2)

    def disable_freeu(self):
        unet = getattr(self, "unet", None)
        if unet is not None and hasattr(unet, "disable_freeu"):
            unet.disable_freeu()

    # ---- CPU offload ---------------------------------------------------------------------------------
    def _offload_target(self, gpu_id, device) -> torch.device:
        dev = torch.device(device)
        if dev.type == "cpu":
            raise ValueError("device: CPU offload moves models to an accelerator; got 'cpu'")
        available = getattr(torch, dev.type, None)
        if available is None or not available.is_available():
            raise RuntimeError(f"CPU offload needs a {dev.type} device, and none is available on this machine; "
                               "on a CPU-only machine the models already live in main memory, so just run the pipeline")
        index = gpu_id if gpu_id is not None else (dev.index or 0)
        return torch.device(dev.type, index)

    def remove_all_hooks(self):
        for h in getattr(self, "_offload_hooks", []):
            h.remove()
        self._offload_hooks = []
        self._offload_device = None

    def enable_model_cpu_offload(self, gpu_id: int | None = None, device: str | torch.device = "cuda"):
        """Keep models in main memory; move each whole model to the accelerator when it runs (one at a time)."""
        target = self._offload_target(gpu_id, device)
        self.remove_all_hooks()
        self._offload_device = target
        resident = {"model": None}
        excluded = set(self._exclude_from_cpu_offload)

        def make_hook(model):
            def hook(_module, _args):
                if resident["model"] is not model:
                    if resident["model"] is not None:
                        resident["model"].to("cpu")
                    model.to(target)
                    resident["model"] = model
            return hook

        for name, model in self._torch_modules():
            if name in excluded:
                model.to(target)
                continue
            model.to("cpu")
            for child in [model, *model.children()]:
                self._offload_hooks.append(child.register_forward_pre_hook(make_hook(model)))
        self._offload_resident = resident

    def enable_sequential_cpu_offload(self, gpu_id: int | None = None, device: str | torch.device = "cuda"):
        """Keep all weights in main memory and move each layer to the accelerator only while it runs (slow,
        least memory)."""
        target = self._offload_target(gpu_id, device)
        self.remove_all_hooks()
        self._offload_device = target

        def pre(module, _args):
            module.to(target)

        def post(module, _args, _out):
            module.to("cpu")

        for name, model in self._torch_modules():
            model.to("cpu")
            if name in self._exclude_from_cpu_offload:
                model.to(target)
                continue
            for m in model.modules():
                if any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False)):
                    self._offload_hooks.append(m.register_forward_pre_hook(pre))
                    self._offload_hooks.append(m.register_forward_hook(post))

    def maybe_free_model_hooks(self):
        """After a call with model offload: move the last model back to main memory."""
        resident = getattr(self, "_offload_resident", None)
        if resident and resident.get("model") is not None and getattr(self, "_offload_device", None) is not None:
            resident["model"].to("cpu")
            resident["model"] = None
