"""MultiControlNetModel: several ControlNets acting at once, their residuals summed (diffusers' class and folder
layout). Each net gets its own control image and scale:

    pipe = StableDiffusionControlNetPipeline.from_pretrained(sd_path, controlnet=[canny_net, depth_net])
    pipe(prompt, image=[edges, depth], controlnet_conditioning_scale=[1.0, 0.5])

A list of ControlNets given to a pipeline is wrapped in this class. Saved as diffusers saves it: the first net in
`<dir>`, the others in `<dir>_1`, `<dir>_2`, ...
"""
from __future__ import annotations

import torch
from torch import nn

from .controlnet import ControlNetModel


class MultiControlNetModel(nn.Module):
    def __init__(self, controlnets):
        super().__init__()
        controlnets = list(controlnets)
        if not controlnets or not all(hasattr(c, "controlnet_cond_embedding") for c in controlnets):
            got = ", ".join(type(c).__name__ for c in controlnets) or "an empty list"
            raise ValueError(f"controlnets: expected a list of ControlNetModel, got {got}")
        self.nets = nn.ModuleList(controlnets)

    @property
    def dtype(self) -> torch.dtype:
        return self.nets[0].dtype

    @property
    def device(self) -> torch.device:
        return self.nets[0].device

    @property
    def config(self):
        """The first net's config (pipelines read `global_pool_conditions` from it, as diffusers)."""
        return self.nets[0].config

    def forward(self, sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale,
                class_labels=None, timestep_cond=None, attention_mask=None, added_cond_kwargs=None,
                cross_attention_kwargs=None, guess_mode: bool = False, return_dict: bool = True):
        """(down residuals, mid residual) summed over the nets; `controlnet_cond` and `conditioning_scale` hold one
        entry per net."""
        if len(controlnet_cond) != len(self.nets) or len(conditioning_scale) != len(self.nets):
            raise ValueError(f"controlnet_cond, conditioning_scale: expected one per ControlNet ({len(self.nets)}), "
                             f"got {len(controlnet_cond)} and {len(conditioning_scale)}")
        down, mid = None, None
        for image, scale, net in zip(controlnet_cond, conditioning_scale, self.nets):
            d, m = net(sample, timestep, encoder_hidden_states, image, scale, class_labels=class_labels,
                       timestep_cond=timestep_cond, attention_mask=attention_mask,
                       added_cond_kwargs=added_cond_kwargs, cross_attention_kwargs=cross_attention_kwargs,
                       guess_mode=guess_mode, return_dict=False)
            down = list(d) if down is None else [a + b for a, b in zip(down, d)]
            mid = m if mid is None else mid + m
        return down, mid

    def save_pretrained(self, save_directory, **kwargs):
        for i, net in enumerate(self.nets):
            net.save_pretrained(str(save_directory) + ("" if i == 0 else f"_{i}"), **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_path, subfolder: str | None = None, **kwargs):
        """`<dir>`, `<dir>_1`, ... until one is missing; dir = pretrained_model_path, or its `subfolder` (then
        also a hub id's, as a pipeline loads its `controlnet` component)."""
        nets = []
        while True:
            suffix = "" if not nets else f"_{len(nets)}"
            try:
                if subfolder:
                    net = ControlNetModel.from_pretrained(pretrained_model_path, subfolder=subfolder + suffix,
                                                          **kwargs)
                else:
                    net = ControlNetModel.from_pretrained(str(pretrained_model_path) + suffix, **kwargs)
            except (FileNotFoundError, OSError):
                if not nets:
                    raise
                break
            nets.append(net)
        return cls(nets).eval()
