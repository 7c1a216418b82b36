"""IP-Adapter on the UNet (diffusers' module and parameter names).

    ImageProjection                 CLIP image embedding (B, D) -> Linear `image_embeds` -> (B, tokens, dim), LayerNorm
    IPAdapterPlusImageProjection    Plus: a perceiver resampler; learned `latents` (queries) attend to the image
                                    encoder's penultimate hidden states (B, patches, D) -> (B, queries, dim)
    IPAdapterFullImageProjection    Full Face: an MLP + LayerNorm on each of the hidden states (B, patches, D)
    MultiIPAdapterImageProjection   the UNet's `encoder_hid_proj`: one projection per adapter; takes a list of
                                    (B, images, D) or (B, images, patches, D) tensors, returns a list of
                                    (B, images, tokens, dim)
    IPAdapterAttnProcessor2_0       the processor of each cross-attention layer: text attention plus, per adapter,
                                    scale * attention(q, to_k_ip(ip), to_v_ip(ip)), added before `to_out`

With an adapter loaded the UNet hands its cross-attention layers `(text states, [ip tokens per adapter])`
instead of the text states alone, as diffusers does.
"""
from __future__ import annotations

import torch
from torch import nn

import torch.nn.functional as F

from .attention import Attention, attention
from .layers import Linear


class ImageProjection(nn.Module):
    def __init__(self, image_embed_dim: int = 768, cross_attention_dim: int = 768, num_image_text_embeds: int = 4):
        super().__init__()
        self.num_image_text_embeds = num_image_text_embeds
        self.image_embeds = Linear(image_embed_dim, num_image_text_embeds * cross_attention_dim)
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        tokens = self.image_embeds(image_embeds.to(self.image_embeds.weight.dtype))
        return self.norm(tokens.reshape(image_embeds.shape[0], self.num_image_text_embeds, -1))


class GELU(nn.Module):
    """Linear `proj`, then gelu (diffusers' GELU activation module)."""

    def __init__(self, dim_in: int, dim_out: int, bias: bool = True):
        super().__init__()
        self.proj = Linear(dim_in, dim_out, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x))


class GeluFeedForward(nn.Module):
    """diffusers' FeedForward with activation_fn="gelu": net.0 = GELU(dim -> inner), net.1 dropout, net.2 Linear."""

    def __init__(self, dim: int, dim_out: int, inner_dim: int, bias: bool = True):
        super().__init__()
        self.net = nn.ModuleList([GELU(dim, inner_dim, bias), nn.Dropout(0.0), Linear(inner_dim, dim_out, bias=bias)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class IPAdapterFullImageProjection(nn.Module):
    def __init__(self, image_embed_dim: int = 1024, cross_attention_dim: int = 1024):
        super().__init__()
        self.ff = GeluFeedForward(image_embed_dim, cross_attention_dim, image_embed_dim)
        self.norm = nn.LayerNorm(cross_attention_dim)

    @property
    def input_dim(self) -> int:
        return self.ff.net[0].proj.in_features

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        return self.norm(self.ff(image_embeds.to(self.norm.weight.dtype)))


class IPAdapterPlusImageProjectionBlock(nn.Module):
    """One resampler layer: the queries attend to (image features ++ queries), then a feed-forward; both residual."""

    def __init__(self, embed_dims: int = 768, dim_head: int = 64, heads: int = 16, ffn_ratio: float = 4):
        super().__init__()
        self.ln0 = nn.LayerNorm(embed_dims)
        self.ln1 = nn.LayerNorm(embed_dims)
        self.attn = Attention(embed_dims, heads=heads, dim_head=dim_head, out_bias=False)
        self.ff = nn.Sequential(nn.LayerNorm(embed_dims),
                                GeluFeedForward(embed_dims, embed_dims, round(embed_dims * ffn_ratio), bias=False))

    def forward(self, x: torch.Tensor, latents: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        queries = self.ln1(latents)
        latents = self.attn(queries, torch.cat([self.ln0(x), queries], dim=-2)) + residual
        return self.ff(latents) + latents


class IPAdapterPlusImageProjection(nn.Module):
    """IP-Adapter Plus' perceiver resampler: `num_queries` learned latents read the image encoder's hidden states
    (embed_dims wide, projected to hidden_dims by proj_in) through `depth` blocks, then proj_out + norm_out to the
    UNet's cross-attention width."""

    def __init__(self, embed_dims: int = 768, output_dims: int = 1024, hidden_dims: int = 1280, depth: int = 4,
                 dim_head: int = 64, heads: int = 16, num_queries: int = 8, ffn_ratio: float = 4):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(1, num_queries, hidden_dims) / hidden_dims ** 0.5)
        self.proj_in = Linear(embed_dims, hidden_dims)
        self.proj_out = Linear(hidden_dims, output_dims)
        self.norm_out = nn.LayerNorm(output_dims)
        self.layers = nn.ModuleList([IPAdapterPlusImageProjectionBlock(hidden_dims, dim_head, heads, ffn_ratio)
                                     for _ in range(depth)])

    @property
    def input_dim(self) -> int:
        return self.proj_in.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        latents = self.latents.expand(x.shape[0], -1, -1)
        x = self.proj_in(x.to(self.latents.dtype))
        for block in self.layers:
            latents = block(x, latents, latents)
        return self.norm_out(self.proj_out(latents))


def projection_input(layer: nn.Module) -> tuple[int, bool]:
    """(the width a projection takes, whether it takes the image encoder's hidden states rather than its
    pooled image embedding)."""
    if isinstance(layer, ImageProjection):
        return layer.image_embeds.in_features, False
    return layer.input_dim, True


class MultiIPAdapterImageProjection(nn.Module):
    def __init__(self, IPAdapterImageProjectionLayers):  # noqa: N803 (diffusers' argument name)
        super().__init__()
        self.image_projection_layers = nn.ModuleList(IPAdapterImageProjectionLayers)

    @property
    def num_ip_adapters(self) -> int:
        return len(self.image_projection_layers)

    def forward(self, image_embeds) -> list[torch.Tensor]:
        if torch.is_tensor(image_embeds):  # diffusers' deprecated form: one (B, D) tensor for one adapter
            image_embeds = [image_embeds.unsqueeze(1)]
        if not isinstance(image_embeds, (list, tuple)) or len(image_embeds) != self.num_ip_adapters:
            got = len(image_embeds) if isinstance(image_embeds, (list, tuple)) else type(image_embeds).__name__
            raise ValueError(f"added_cond_kwargs['image_embeds']: expected a list of {self.num_ip_adapters} "
                             f"tensor(s) (one per IP-Adapter), got {got}")
        out = []
        for embeds, layer in zip(image_embeds, self.image_projection_layers):
            ndim = 4 if projection_input(layer)[1] else 3
            if embeds.ndim != ndim:
                want = "(batch, images, patches, dim)" if ndim == 4 else "(batch, images, dim)"
                raise ValueError(f"added_cond_kwargs['image_embeds']: expected {want} tensors, got "
                                 f"shape {tuple(embeds.shape)}")
            b, n = embeds.shape[:2]
            tokens = layer(embeds.reshape(b * n, *embeds.shape[2:]))
            out.append(tokens.reshape(b, n, *tokens.shape[1:]))
        return out


class IPAdapterAttnProcessor2_0(nn.Module):
    """A cross-attention layer's processor with the image branch: `to_k_ip.i` / `to_v_ip.i` per adapter i
    (no bias), `scale` a list of floats, one per adapter. The text part runs on the layer's own backend
    (SDPA, sliced or xformers), so slicing and xformers keep working with an adapter loaded."""

    keeps_backend = True  # the UNet's slicing / xformers switches set the backend and leave this processor

    def __init__(self, hidden_size: int, cross_attention_dim: int | None = None, num_tokens=(4,), scale=1.0):
        super().__init__()
        num_tokens = list(num_tokens) if isinstance(num_tokens, (list, tuple)) else [num_tokens]
        scale = list(scale) if isinstance(scale, (list, tuple)) else [scale] * len(num_tokens)
        if len(scale) != len(num_tokens):
            raise ValueError(f"scale: expected {len(num_tokens)} values (one per IP-Adapter), got {len(scale)}")
        self.hidden_size, self.cross_attention_dim = hidden_size, cross_attention_dim
        self.num_tokens, self.scale = num_tokens, scale
        dim = cross_attention_dim or hidden_size
        self.to_k_ip = nn.ModuleList([Linear(dim, hidden_size, bias=False) for _ in num_tokens])
        self.to_v_ip = nn.ModuleList([Linear(dim, hidden_size, bias=False) for _ in num_tokens])

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 ip_adapter_masks=None):
        if ip_adapter_masks is not None:
            raise ValueError("ip_adapter_masks: masked IP-Adapters are not supported by impasto")
        ip_states = None
        if isinstance(encoder_hidden_states, tuple):
            encoder_hidden_states, ip_states = encoder_hidden_states
        active = [(tokens, s, k, v) for tokens, s, k, v in zip(ip_states or (), self.scale, self.to_k_ip,
                                                               self.to_v_ip) if s != 0]
        if not active:
            return attn.compute(hidden_states, encoder_hidden_states, attention_mask)

        def add_image_attention(q, out):
            batch = q.shape[0]
            for tokens, s, to_k, to_v in active:
                if tokens.numel() % (batch * tokens.shape[-1]):
                    raise ValueError(f"added_cond_kwargs['image_embeds']: image tokens of shape {tuple(tokens.shape)} "
                                     f"do not split over the UNet input's batch of {batch}")
                tokens = tokens.reshape(batch, -1, tokens.shape[-1])  # as diffusers: all of a row's images in a row
                out = out + s * attention(q, to_k(tokens), to_v(tokens), attn.heads, backend=attn.attn_backend)
            return out

        return attn.compute(hidden_states, encoder_hidden_states, attention_mask, extra=add_image_attention)

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}, cross_attention_dim={self.cross_attention_dim}, scale={self.scale}"
