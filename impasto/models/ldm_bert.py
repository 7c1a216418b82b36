"""LDMBertModel: the text encoder of CompVis' LDM text-to-image model (`CompVis/ldm-text2im-large-256`).

A BART-style encoder with pre-LayerNorm blocks: token + learned position embeddings, `encoder_layers` blocks of
(LayerNorm -> multi-head self-attention without q/k/v biases -> residual; LayerNorm -> fc1 -> activation -> fc2
-> residual), and a final LayerNorm. `to_logits` (d_model -> vocab) is kept for weight compatibility only.

The folder layout is the one transformers writes for diffusers' `LDMBertModel`: `config.json` (with
`model_type: "ldmbert"`) and `model.safetensors` / `pytorch_model.bin`; parameter names are identical.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..outputs import BaseOutput
from .attention import DEFAULT, attention
from .config import DIFFUSERS_VERSION, _json_ready, check_type, register_to_config
from .layers import Embedding, Linear
from .modeling import ModelMixin

ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
}


@dataclass
class BaseModelOutput(BaseOutput):
    """`last_hidden_state` (batch, tokens, d_model); `hidden_states` when asked for (embeddings + each layer)."""

    last_hidden_state: torch.Tensor = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


class LDMBertAttention(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int, head_dim: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        inner = num_heads * head_dim
        self.k_proj = Linear(embed_dim, inner, bias=False)
        self.v_proj = Linear(embed_dim, inner, bias=False)
        self.q_proj = Linear(embed_dim, inner, bias=False)
        self.out_proj = Linear(inner, embed_dim)
        self.attn_backend = DEFAULT

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        out = attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.num_heads, mask=mask,
                        backend=self.attn_backend, scale=self.head_dim**-0.5)
        return self.out_proj(out)


class LDMBertEncoderLayer(nn.Module):
    def __init__(self, d_model: int, heads: int, head_dim: int, ffn_dim: int, activation: str):
        super().__init__()
        self.self_attn = LDMBertAttention(d_model, heads, head_dim)
        self.self_attn_layer_norm = nn.LayerNorm(d_model)
        self.fc1 = Linear(d_model, ffn_dim)
        self.fc2 = Linear(ffn_dim, d_model)
        self.final_layer_norm = nn.LayerNorm(d_model)
        self.act = ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x), mask)
        x = x + self.fc2(self.act(self.fc1(self.final_layer_norm(x))))
        if x.dtype == torch.float16 and not torch.isfinite(x).all():
            limit = torch.finfo(x.dtype).max - 1000  # as the reference: keep fp16 overflow finite
            x = x.clamp(-limit, limit)
        return x


class LDMBertEncoder(nn.Module):
    def __init__(self, vocab_size, max_positions, d_model, layers, heads, head_dim, ffn_dim, activation):
        super().__init__()
        self.embed_tokens = Embedding(vocab_size, d_model)
        self.embed_positions = Embedding(max_positions, d_model)
        self.layers = nn.ModuleList(
            [LDMBertEncoderLayer(d_model, heads, head_dim, ffn_dim, activation) for _ in range(layers)])
        self.layer_norm = nn.LayerNorm(d_model)


class LDMBertModel(ModelMixin):
    """Text encoder of the LDM text-to-image pipeline; `model(input_ids)[0]` is the (B, T, d_model) context."""

    weights_names = ("model.safetensors", "pytorch_model.bin")

    @register_to_config
    def __init__(self, vocab_size: int = 30522, max_position_embeddings: int = 77, encoder_layers: int = 32,
                 encoder_ffn_dim: int = 5120, encoder_attention_heads: int = 8, head_dim: int = 64,
                 encoder_layerdrop: float = 0.0, activation_function: str = "gelu", d_model: int = 1280,
                 dropout: float = 0.1, attention_dropout: float = 0.0, activation_dropout: float = 0.0,
                 init_std: float = 0.02, classifier_dropout: float = 0.0, scale_embedding: bool = False,
                 use_cache: bool = True, pad_token_id: int = 0):
        super().__init__()
        for key, value in dict(vocab_size=vocab_size, max_position_embeddings=max_position_embeddings,
                               encoder_layers=encoder_layers, encoder_ffn_dim=encoder_ffn_dim,
                               encoder_attention_heads=encoder_attention_heads, head_dim=head_dim,
                               d_model=d_model).items():
            check_type("LDMBertModel", key, value, int)
            if value <= 0:
                raise ValueError(f"LDMBertModel: config key {key!r} must be positive, got {value}")
        if activation_function not in ACTIVATIONS:
            raise ValueError(f"LDMBertModel: config key 'activation_function' must be one of "
                             f"{sorted(ACTIVATIONS)}, got {activation_function!r}")
        self.model = LDMBertEncoder(vocab_size, max_position_embeddings, d_model, encoder_layers,
                                    encoder_attention_heads, head_dim, encoder_ffn_dim, activation_function)
        self.to_logits = Linear(d_model, vocab_size)

    # transformers' names for the same numbers
    @property
    def hidden_size(self) -> int:
        return self.config.d_model

    def convert_state_dict(self, state):
        # checkpoints converted from BART-style code may carry these counters; they hold no weights
        return {k: v for k, v in state.items() if not k.endswith(("encoder.version", "decoder.version"))}

    def to_json_string(self) -> str:
        """config.json as transformers writes it for diffusers' LDMBertModel (so both libraries read it)."""
        data = {k: _json_ready(v) for k, v in self.config.items() if not k.startswith("_")}
        data.update(architectures=["LDMBertModel"], model_type="ldmbert", num_hidden_layers=self.config.encoder_layers,
                    dtype=str(self.dtype).replace("torch.", ""), _diffusers_version=DIFFUSERS_VERSION)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                output_hidden_states: bool = False, return_dict: bool = True, **unused):
        """Encode token ids (B, T) -> BaseModelOutput(last_hidden_state (B, T, d_model)).

        `attention_mask` (B, T) with 1 for tokens to attend to and 0 for padding, as in transformers.
        """
        unused = {k: v for k, v in unused.items() if v is not None and v is not False}
        if unused:
            raise ValueError(f"LDMBertModel.forward: unsupported arguments {sorted(unused)}")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("LDMBertModel.forward: pass exactly one of input_ids or inputs_embeds")
        enc = self.model
        if inputs_embeds is None:
            if input_ids.dim() == 1:
                input_ids = input_ids[None]
            inputs_embeds = enc.embed_tokens(input_ids.to(enc.embed_tokens.weight.device))
        seq_len = inputs_embeds.shape[1]
        if seq_len > self.config.max_position_embeddings:
            raise ValueError(f"input_ids: at most {self.config.max_position_embeddings} tokens (max_position_embeddings),"
                             f" got {seq_len}")
        if position_ids is None:
            position_ids = torch.arange(seq_len, device=inputs_embeds.device)[None]
        x = inputs_embeds + enc.embed_positions(position_ids)
        mask = None
        if attention_mask is not None:
            keep = attention_mask.to(device=x.device, dtype=torch.bool)[:, None, None, :]
            mask = torch.zeros(keep.shape, dtype=x.dtype, device=x.device).masked_fill(~keep, torch.finfo(x.dtype).min)
        states = [x] if output_hidden_states else None
        for layer in enc.layers:
            x = layer(x, mask)
            if states is not None:
                states.append(x)
        x = enc.layer_norm(x)
        if states is not None:
            states[-1] = x
        out = BaseModelOutput(last_hidden_state=x, hidden_states=tuple(states) if states is not None else None)
        return out if return_dict else out.to_tuple()
