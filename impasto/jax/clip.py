"""FlaxCLIPTextModel: CLIP's text tower in flax.linen with transformers' Flax param names (`text_model/...`).

`apply({"params": p}, input_ids)` -> (last_hidden_state, pooler_output): the final-LayerNorm states and the
state at the end-of-text token (the largest id for old configs whose eos_token_id is 2, as transformers does).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from .modeling import FlaxModelMixin


def _act(name: str):
    table = {
        "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
        "gelu": lambda x: jax.nn.gelu(x, approximate=False),
        "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
        "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
        "relu": jax.nn.relu,
    }
    if name not in table:
        raise ValueError(f"hidden_act: expected one of {', '.join(sorted(table))}, got {name!r}")
    return table[name]


def causal_attend(q, k, v, heads: int):
    """Causal multi-head attention: each token sees itself and earlier tokens."""
    b, n, inner = q.shape
    d = inner // heads
    q, k, v = (t.reshape(b, n, heads, d) for t in (q, k, v))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * (d ** -0.5)
    allowed = jnp.tril(jnp.ones((n, n), dtype=bool))
    scores = jnp.where(allowed[None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, n, inner)


class _SelfAttention(nn.Module):
    hidden_size: int
    heads: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        dense = lambda name: nn.Dense(self.hidden_size, dtype=self.dtype, name=name)  # noqa: E731
        y = causal_attend(dense("q_proj")(x), dense("k_proj")(x), dense("v_proj")(x), self.heads)
        return dense("out_proj")(y)


class _MLP(nn.Module):
    hidden_size: int
    intermediate_size: int
    act: str
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = _act(self.act)(nn.Dense(self.intermediate_size, dtype=self.dtype, name="fc1")(x))
        return nn.Dense(self.hidden_size, dtype=self.dtype, name="fc2")(x)


class FlaxCLIPEncoderLayer(nn.Module):
    hidden_size: int
    intermediate_size: int
    heads: int
    act: str
    eps: float
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        norm = lambda name: nn.LayerNorm(epsilon=self.eps, dtype=self.dtype, name=name)  # noqa: E731
        x = x + _SelfAttention(self.hidden_size, self.heads, self.dtype, name="self_attn")(norm("layer_norm1")(x))
        mlp = _MLP(self.hidden_size, self.intermediate_size, self.act, self.dtype, name="mlp")
        return x + mlp(norm("layer_norm2")(x))


class _Layers(nn.Module):
    cfg: tuple  # (hidden, intermediate, heads, layers, act, eps)
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        hidden, inter, heads, layers, act, eps = self.cfg
        for i in range(layers):
            x = FlaxCLIPEncoderLayer(hidden, inter, heads, act, eps, self.dtype, name=str(i))(x)
        return x


class _Encoder(nn.Module):
    cfg: tuple
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        return _Layers(self.cfg, self.dtype, name="layers")(x)


class _Embeddings(nn.Module):
    vocab_size: int
    hidden_size: int
    max_positions: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids):
        tok = nn.Embed(self.vocab_size, self.hidden_size, dtype=self.dtype, name="token_embedding")(input_ids)
        pos = nn.Embed(self.max_positions, self.hidden_size, dtype=self.dtype, name="position_embedding")
        return tok + pos(jnp.arange(input_ids.shape[-1])[None, :])


class _TextTransformer(nn.Module):
    cfg: tuple  # (vocab, hidden, intermediate, heads, layers, act, eps, max_positions, eos_token_id)
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids):
        vocab, hidden, inter, heads, layers, act, eps, max_positions, eos = self.cfg
        x = _Embeddings(vocab, hidden, max_positions, self.dtype, name="embeddings")(input_ids)
        x = _Encoder((hidden, inter, heads, layers, act, eps), self.dtype, name="encoder")(x)
        last = nn.LayerNorm(epsilon=eps, dtype=self.dtype, name="final_layer_norm")(x)
        if eos in (None, 2):  # configs written before transformers fixed eos_token_id: the largest id
            where = jnp.argmax(input_ids, axis=-1)
        else:
            where = jnp.argmax((input_ids == eos).astype(jnp.int32), axis=-1)
        pooled = jnp.take_along_axis(last, where[:, None, None], axis=1)[:, 0]
        return last, pooled


class FlaxCLIPTextModel(nn.Module, FlaxModelMixin):
    """CLIP text encoder (transformers' CLIPTextConfig keys); output (last_hidden_state, pooler_output)."""

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int | None = 49407
    dtype: jnp.dtype = jnp.float32

    torch_class = "impasto.models.clip_text:CLIPTextModel"
    flax_weights_name = "flax_model.msgpack"

    def dummy_inputs(self) -> tuple:
        return (jnp.zeros((1, 1), jnp.int32),)

    @nn.compact
    def __call__(self, input_ids):
        input_ids = jnp.asarray(input_ids)
        if not jnp.issubdtype(input_ids.dtype, jnp.integer):
            raise ValueError(f"input_ids: expected integer token ids, got dtype {input_ids.dtype}")
        _act(self.hidden_act)  # fail early on an unknown activation
        if input_ids.shape[-1] > self.max_position_embeddings:
            raise ValueError(f"input_ids: {input_ids.shape[-1]} tokens, but the model has only "
                             f"{self.max_position_embeddings} positions")
        cfg = (self.vocab_size, self.hidden_size, self.intermediate_size, self.num_attention_heads,
               self.num_hidden_layers, self.hidden_act, self.layer_norm_eps, self.max_position_embeddings,
               self.eos_token_id)
        return _TextTransformer(cfg, self.dtype, name="text_model")(input_ids.reshape(-1, input_ids.shape[-1]))

    def flax_key(self, torch_stem: str) -> str:
        return torch_stem  # transformers' Flax names keep the dotted layer indices ("layers/0")
