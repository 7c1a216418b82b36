"""CLIP text encoders that read and write the transformers format (config.json keys, `text_model.*` weights).

The transformer encoder (pre-norm layers of attention + MLP) is written once here and shared with the vision
tower in `clip_vision.py`. `TransformersFormatMixin` gives these models transformers' file layout:
`config.json` without diffusers' `_class_name`, `model.safetensors` / `pytorch_model.bin`, and nested
`CLIPConfig` files (`text_config` / `vision_config`) read as the tower's own config.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..outputs import BaseOutput
from .attention import AttentionBackend, attention
from .config import check_type, register_to_config
from .layers import Checkpointed, Embedding, Linear
from .modeling import ModelMixin

logger = logging.getLogger("impasto")

# keys transformers writes (or wrote) in CLIP configs that have no bearing on inference
IGNORED_CONFIG_KEYS = frozenset("""
architectures model_type torch_dtype dtype transformers_version initializer_range initializer_factor
attention_dropout dropout _name_or_path _commit_hash return_dict output_hidden_states output_attentions
torchscript use_bfloat16 tf_legacy_loss pruned_heads tie_word_embeddings is_decoder is_encoder_decoder
add_cross_attention cross_attention_hidden_size chunk_size_feed_forward tie_encoder_decoder decoder_start_token_id
sep_token_id task_specific_params problem_type id2label label2id finetuning_task tokenizer_class prefix
bad_words_ids begin_suppress_tokens diversity_penalty do_sample early_stopping encoder_no_repeat_ngram_size
exponential_decay_length_penalty forced_bos_token_id forced_eos_token_id length_penalty max_length min_length
no_repeat_ngram_size num_beam_groups num_beams num_return_sequences output_scores remove_invalid_values
repetition_penalty return_dict_in_generate suppress_tokens temperature top_k top_p typical_p
logit_scale_init_value text_config_dict vision_config_dict attn_implementation _attn_implementation_autoset
""".split())

TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {
    "quick_gelu": quick_gelu,
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"hidden_act: expected one of {', '.join(sorted(ACTIVATIONS))}, got {name!r}")
    return ACTIVATIONS[name]


# ---- the encoder, shared by the text and the vision towers ------------------------------------------------
class CLIPAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"num_attention_heads: {heads} does not divide hidden_size {dim}")
        self.heads = heads
        self.q_proj, self.k_proj = Linear(dim, dim), Linear(dim, dim)
        self.v_proj, self.out_proj = Linear(dim, dim), Linear(dim, dim)
        self.attn_backend = AttentionBackend()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        out = attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.heads, mask, self.attn_backend)
        return self.out_proj(out)


class CLIPMLP(nn.Module):
    def __init__(self, dim: int, inner: int, act: str):
        super().__init__()
        self.act_name = act
        self.act = activation(act)
        self.fc1, self.fc2 = Linear(dim, inner), Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(Checkpointed):
    def __init__(self, dim: int, inner: int, heads: int, act: str, eps: float):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(dim, eps=eps)
        self.self_attn = CLIPAttention(dim, heads)
        self.layer_norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = CLIPMLP(dim, inner, act)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    def __init__(self, dim: int, inner: int, heads: int, layers: int, act: str, eps: float):
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(dim, inner, heads, act, eps) for _ in range(layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, output_hidden_states: bool = False):
        """Returns (output, hidden states): the input followed by each layer's output, when asked."""
        hidden = [x] if output_hidden_states else None
        for layer in self.layers:
            x = layer(x, mask)
            if hidden is not None:
                hidden.append(x)
        return x, (tuple(hidden) if hidden is not None else None)


def encoder_from_config(cfg) -> CLIPEncoder:
    return CLIPEncoder(cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads, cfg.num_hidden_layers,
                       cfg.hidden_act, cfg.layer_norm_eps)


# ---- the transformers file layout -------------------------------------------------------------------------
class TransformersFormatMixin(ModelMixin):
    """Models stored as transformers stores them. Subclasses set `model_type`, `config_section` (the sub-dict
    of a full CLIPConfig that holds their settings) and `weight_prefix` (added to bare weight names)."""

    weights_names = TRANSFORMERS_WEIGHTS
    model_type = "clip"
    config_section: str | None = None
    weight_prefix = ""
    dropped_weights: tuple[str, ...] = ()  # buffers old checkpoints carry that are recomputed here
    other_tower: tuple[str, ...] = ()  # weight prefixes of a full CLIPModel file that belong to the other tower

    @classmethod
    def from_config(cls, config: dict | None = None, return_unused_kwargs: bool = False, **kwargs):
        config = dict(config or {})
        section = cls.config_section
        if section and isinstance(config.get(section), dict):
            sub = dict(config[section])
            sub.update(config.get(f"{section}_dict") or {})  # very old CLIPConfig files
            if "projection_dim" in config:  # a full CLIPModel projects both towers to its own projection_dim
                sub["projection_dim"] = config["projection_dim"]
            config = sub
        keys = set(cls.init_keys())
        unknown = sorted(k for k in config if k not in keys | IGNORED_CONFIG_KEYS and not k.startswith("_"))
        if unknown:
            logger.info("%s: config keys not used: %s", cls.__name__, ", ".join(unknown))
        config = {k: v for k, v in config.items() if k in keys}
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    def transformers_config(self) -> dict:
        data = {k: v for k, v in self.config.items() if k in set(self.init_keys())}
        data.update(architectures=[type(self).__name__], model_type=self.model_type, torch_dtype=str(self.dtype)
                    .replace("torch.", ""))
        return data

    def to_json_string(self) -> str:
        return json.dumps(self.transformers_config(), indent=2, sort_keys=True) + "\n"

    def convert_state_dict(self, state: dict) -> dict:
        state = {k: v for k, v in state.items() if k not in self.dropped_weights}
        other = {k for k in state if k.startswith(self.other_tower)} if self.other_tower else set()
        if other:
            logger.info("%s: skipping %d weights of the other CLIP tower (%s ...)", type(self).__name__,
                        len(other), min(other))
            state = {k: v for k, v in state.items() if k not in other}
        own = set(self.state_dict(keep_vars=True))
        prefix = self.weight_prefix
        if prefix and not any(k.startswith(prefix) for k in state):
            state = {(prefix + k if prefix + k in own else k): v for k, v in state.items()}
        return state


# ---- the text tower -----------------------------------------------------------------------------------------
class CLIPTextEmbeddings(nn.Module):
    def __init__(self, vocab_size: int, dim: int, max_positions: int):
        super().__init__()
        self.token_embedding = Embedding(vocab_size, dim)
        self.position_embedding = Embedding(max_positions, dim)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[-1], device=input_ids.device)[None]
        return self.token_embedding(input_ids) + self.position_embedding(position_ids)


def causal_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask (batch or 1, 1, n, n): each token sees itself and earlier tokens that are not padding."""
    n = input_ids.shape[-1]
    allowed = torch.ones(n, n, dtype=torch.bool, device=input_ids.device).tril()[None, None]
    if attention_mask is not None:
        allowed = allowed & attention_mask.to(device=input_ids.device, dtype=torch.bool)[:, None, None, :]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=input_ids.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)


class CLIPTextTransformer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embeddings = CLIPTextEmbeddings(cfg.vocab_size, cfg.hidden_size, cfg.max_position_embeddings)
        self.encoder = encoder_from_config(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.eos_token_id = cfg.eos_token_id

    def pool_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.eos_token_id == 2:  # configs written before transformers fixed eos_token_id: the largest id
            return input_ids.to(torch.int).argmax(dim=-1)
        return (input_ids == self.eos_token_id).int().argmax(dim=-1)

    def forward(self, input_ids, attention_mask=None, position_ids=None, output_hidden_states=False):
        if not torch.is_tensor(input_ids) or input_ids.dtype.is_floating_point:
            raise ValueError(f"input_ids: expected an integer tensor of token ids, got {type(input_ids).__name__}")
        ids = input_ids.reshape(-1, input_ids.shape[-1])
        limit = self.embeddings.position_embedding.num_embeddings
        if ids.shape[-1] > limit:
            raise ValueError(f"input_ids: {ids.shape[-1]} tokens, but the model has only {limit} positions "
                             "(tokenize with truncation=True, or use long-prompt chunking)")
        if attention_mask is not None:
            if attention_mask.numel() != ids.numel():
                raise ValueError(f"attention_mask: expected shape {tuple(input_ids.shape)} like input_ids, "
                                 f"got {tuple(attention_mask.shape)}")
            attention_mask = attention_mask.reshape(ids.shape)
        x = self.embeddings(ids, position_ids)
        x, hidden = self.encoder(x, causal_mask(ids, attention_mask, x.dtype), output_hidden_states)
        last = self.final_layer_norm(x)
        pooled = last[torch.arange(last.shape[0], device=last.device), self.pool_positions(ids).to(last.device)]
        return last, pooled, hidden


@dataclass
class BaseModelOutputWithPooling(BaseOutput):
    last_hidden_state: torch.Tensor = None
    pooler_output: torch.Tensor = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None


@dataclass
class CLIPTextModelOutput(BaseOutput):
    text_embeds: torch.Tensor = None
    last_hidden_state: torch.Tensor = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None


class CLIPTextModel(TransformersFormatMixin):
    """CLIP's text tower (SD 1.x / SD 2.x / SDXL `text_encoder`): `out[0]` is the last hidden state after the
    final LayerNorm, `out.pooler_output` the state at the end-of-text token."""

    model_type = "clip_text_model"
    config_section = "text_config"
    weight_prefix = "text_model."
    dropped_weights = ("text_model.embeddings.position_ids", "embeddings.position_ids")
    other_tower = ("vision_model.", "visual_projection.", "logit_scale", "text_projection.")

    @register_to_config
    def __init__(self, vocab_size: int = 49408, hidden_size: int = 512, intermediate_size: int = 2048,
                 projection_dim: int = 512, num_hidden_layers: int = 12, num_attention_heads: int = 8,
                 max_position_embeddings: int = 77, hidden_act: str = "quick_gelu", layer_norm_eps: float = 1e-5,
                 pad_token_id: int | None = 1, bos_token_id: int | None = 49406, eos_token_id: int | None = 49407):
        super().__init__()
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "max_position_embeddings"):
            check_type(type(self).__name__, key, self.config[key], int)
        self.text_model = CLIPTextTransformer(self.config)

    # textual inversion resizes the token table
    def get_input_embeddings(self) -> nn.Embedding:
        return self.text_model.embeddings.token_embedding

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.text_model.embeddings.token_embedding = value
        self.register_to_config(vocab_size=value.num_embeddings)

    def resize_token_embeddings(self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None,
                                mean_resizing: bool = True) -> nn.Embedding:
        """Grow (or shrink) the token table; new rows start at the mean of the existing rows (or, with
        mean_resizing=False, at N(0, 0.02) like a fresh embedding)."""
        old = self.get_input_embeddings()
        if new_num_tokens is None:
            return old
        if not isinstance(new_num_tokens, int) or new_num_tokens < 1:
            raise ValueError(f"new_num_tokens: expected a positive int, got {new_num_tokens!r}")
        if pad_to_multiple_of:
            new_num_tokens = -(-new_num_tokens // pad_to_multiple_of) * pad_to_multiple_of
        w = old.weight
        new = Embedding(new_num_tokens, w.shape[1], device=w.device, dtype=w.dtype)
        keep = min(new_num_tokens, w.shape[0])
        with torch.no_grad():
            new.weight[:keep] = w[:keep]
            if new_num_tokens > keep and mean_resizing:
                new.weight[keep:] = w.float().mean(0).to(w.dtype)
            elif new_num_tokens > keep:
                new.weight[keep:].normal_(0.0, 0.02)
        self.set_input_embeddings(new)
        return new

    def _run(self, input_ids, attention_mask, position_ids, output_hidden_states, output_attentions):
        if output_attentions:
            raise ValueError("output_attentions: attention weights are not returned by impasto's CLIP models")
        return self.text_model(input_ids, attention_mask, position_ids, output_hidden_states)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, output_hidden_states: bool = False,
                return_dict: bool = True, output_attentions: bool = False):
        last, pooled, hidden = self._run(input_ids, attention_mask, position_ids, output_hidden_states,
                                         output_attentions)
        out = BaseModelOutputWithPooling(last_hidden_state=last, pooler_output=pooled, hidden_states=hidden)
        return out if return_dict else out.to_tuple()


class CLIPTextModelWithProjection(CLIPTextModel):
    """The text tower plus `text_projection` (SDXL `text_encoder_2`): `out[0]` is `text_embeds`."""

    other_tower = ("vision_model.", "visual_projection.", "logit_scale")

    @register_to_config
    def __init__(self, vocab_size: int = 49408, hidden_size: int = 512, intermediate_size: int = 2048,
                 projection_dim: int = 512, num_hidden_layers: int = 12, num_attention_heads: int = 8,
                 max_position_embeddings: int = 77, hidden_act: str = "quick_gelu", layer_norm_eps: float = 1e-5,
                 pad_token_id: int | None = 1, bos_token_id: int | None = 49406, eos_token_id: int | None = 49407):
        super().__init__(vocab_size, hidden_size, intermediate_size, projection_dim, num_hidden_layers,
                         num_attention_heads, max_position_embeddings, hidden_act, layer_norm_eps, pad_token_id,
                         bos_token_id, eos_token_id)
        check_type(type(self).__name__, "projection_dim", projection_dim, int)
        self.text_projection = Linear(hidden_size, projection_dim, bias=False)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, output_hidden_states: bool = False,
                return_dict: bool = True, output_attentions: bool = False):
        last, pooled, hidden = self._run(input_ids, attention_mask, position_ids, output_hidden_states,
                                         output_attentions)
        out = CLIPTextModelOutput(text_embeds=self.text_projection(pooled), last_hidden_state=last,
                                  hidden_states=hidden)
        return out if return_dict else out.to_tuple()
