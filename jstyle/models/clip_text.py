"""CLIP's text transformer (transformers' `CLIPTextModel`): SD1's ViT-L/14 text tower and SD2's
OpenCLIP-H text tower in transformers format, both built from the text_encoder's config.json.

Attribute names equal transformers 5's checkpoint keys (`embeddings.token_embedding.weight`,
`encoder.layers.0.self_attn.q_proj.weight`, `final_layer_norm.weight`, ...). Files written by
transformers 4 (every public SD checkpoint) prefix them with `text_model.` and may carry the
`text_model.embeddings.position_ids` buffer: `CLIPTextModel.convert_state_dict` maps them here,
as transformers 5 itself does on load.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jittor as jt
import numpy as np
from jittor import nn

from ..errors import ConfigError, InputError
from ..ops import ACTIVATIONS, attention
from .linear import Linear
from .normalization import LayerNorm

__all__ = ["CLIPTextModel", "CLIPTextModelOutput", "causal_attention_mask", "pooled_positions"]

_ACTS = ("gelu", "quick_gelu")
# transformers' CLIPTextConfig defaults, used for keys absent from config.json.
_DEFAULTS: dict[str, Any] = {
    "vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
    "num_attention_heads": 8, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5, "pad_token_id": 1, "bos_token_id": 49406, "eos_token_id": 49407,
}


@dataclass(frozen=True)
class CLIPTextModelOutput:
    """last_hidden_state [B, S, D] (after final_layer_norm), pooler_output [B, D] (the EOS token's state),
    hidden_states: (embeddings, layer 1, ..., layer N) outputs, before final_layer_norm, when asked."""

    last_hidden_state: jt.Var
    pooler_output: jt.Var
    hidden_states: tuple[jt.Var, ...] | None = None


def causal_attention_mask(seq_len: int, attention_mask: jt.Var | None, dtype: str) -> jt.Var:
    """Additive mask [B|1, 1, S, S]: 0 where query i may see key j (j <= i and key j not padding),
    the dtype's most negative value elsewhere (as transformers' create_causal_mask)."""
    allowed = jt.array(np.tril(np.ones((seq_len, seq_len), dtype=np.float32)))[None, None]
    if attention_mask is not None:
        allowed = allowed * (attention_mask.float32() > 0).float32()[:, None, None, :]
    return ((1.0 - allowed) * float(np.finfo(np.dtype(dtype)).min)).cast(dtype)


def pooled_positions(input_ids: np.ndarray, eos_token_id: int) -> np.ndarray:
    """Per row, the position whose final state is the pooled output (transformers' rule)."""
    if eos_token_id == 2:  # configs from before transformers PR #24773: the EOS id is the largest id
        return input_ids.argmax(axis=-1)
    return (input_ids == eos_token_id).argmax(axis=-1)  # the first EOS (padding may repeat it)


class CLIPTextEmbeddings(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, max_positions: int):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, hidden_size)
        self.position_embedding = nn.Embedding(max_positions, hidden_size)

    def execute(self, input_ids: jt.Var) -> jt.Var:
        positions = jt.arange(input_ids.shape[-1])[None]
        return self.token_embedding(input_ids) + self.position_embedding(positions)


class CLIPAttention(nn.Module):
    """Multi-head self-attention with q/k/v/out projections (transformers' CLIPAttention)."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scale = self.head_dim**-0.5
        self.q_proj = Linear(hidden_size, hidden_size)
        self.k_proj = Linear(hidden_size, hidden_size)
        self.v_proj = Linear(hidden_size, hidden_size)
        self.out_proj = Linear(hidden_size, hidden_size)

    def _heads(self, x: jt.Var) -> jt.Var:
        b, s, _ = x.shape
        return x.reshape(b, s, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)

    def execute(self, hidden_states: jt.Var, mask: jt.Var | None = None) -> jt.Var:
        b, s, d = hidden_states.shape
        q, k, v = (self._heads(p(hidden_states)) for p in (self.q_proj, self.k_proj, self.v_proj))
        # softmax(Q K^T / sqrt(d_head) + mask) V, the softmax in float32 (transformers' eager CLIP attention)
        out = attention(q, k, v, self.scale, mask, upcast_softmax=True, training=self.is_training())
        return self.out_proj(out.transpose(0, 2, 1, 3).reshape(b, s, d))


class CLIPMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, act: str):
        super().__init__()
        self.act = ACTIVATIONS[act]
        self.fc1 = Linear(hidden_size, intermediate_size)
        self.fc2 = Linear(intermediate_size, hidden_size)

    def execute(self, x: jt.Var) -> jt.Var:
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    """Pre-norm transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, hidden_size: int, intermediate_size: int, num_heads: int, act: str, eps: float):
        super().__init__()
        self.self_attn = CLIPAttention(hidden_size, num_heads)
        self.layer_norm1 = LayerNorm(hidden_size, eps=eps)
        self.mlp = CLIPMLP(hidden_size, intermediate_size, act)
        self.layer_norm2 = LayerNorm(hidden_size, eps=eps)

    def execute(self, x: jt.Var, mask: jt.Var | None = None) -> jt.Var:
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    def __init__(self, num_layers: int, **layer_kwargs):
        super().__init__()
        self.layers = nn.ModuleList([CLIPEncoderLayer(**layer_kwargs) for _ in range(num_layers)])


class CLIPTextModel(nn.Module):
    """CLIP text encoder; `execute(input_ids)` -> CLIPTextModelOutput (as transformers' CLIPTextModel)."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.config = config
        c = {**_DEFAULTS, **config}
        self.eos_token_id = c["eos_token_id"]
        self.embeddings = CLIPTextEmbeddings(c["vocab_size"], c["hidden_size"], c["max_position_embeddings"])
        self.encoder = CLIPEncoder(
            c["num_hidden_layers"], hidden_size=c["hidden_size"], intermediate_size=c["intermediate_size"],
            num_heads=c["num_attention_heads"], act=c["hidden_act"], eps=c["layer_norm_eps"],
        )
        self.final_layer_norm = LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> CLIPTextModel:
        """Build from a transformers CLIPTextConfig dict (text_encoder/config.json)."""
        c = {**_DEFAULTS, **config}
        if c["hidden_act"] not in _ACTS:
            raise ConfigError(f"text_encoder config: hidden_act '{c['hidden_act']}' is not supported; "
                              f"supported: {', '.join(_ACTS)}")
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads", "max_position_embeddings", "eos_token_id"):
            if not isinstance(c[key], int) or isinstance(c[key], bool) or c[key] < 0:
                raise ConfigError(f"text_encoder config: {key} must be an integer >= 0, not {c[key]!r}")
        if c["num_attention_heads"] == 0 or c["hidden_size"] % c["num_attention_heads"]:
            raise ConfigError(f"text_encoder config: hidden_size {c['hidden_size']} is not divisible by "
                              f"num_attention_heads {c['num_attention_heads']}")
        return cls(dict(config))

    def resize_token_embeddings(self, vocab_size: int) -> None:
        """Grow the input embedding to `vocab_size` rows (textual inversion's new tokens): the old rows kept, the
        new ones set to the old rows' mean (transformers' mean resizing, without its noise)."""
        emb = self.embeddings.token_embedding
        old = emb.weight
        n = old.shape[0]
        if vocab_size < n:
            raise ConfigError(f"text encoder: cannot shrink the token embedding from {n} to {vocab_size} rows")
        if vocab_size == n:
            return
        mean = old.float32().mean(0, keepdims=True).cast(old.dtype)
        new = jt.concat([old, mean.broadcast((vocab_size - n, old.shape[1]))]).stop_grad()
        emb.weight = new
        emb.num_embeddings = vocab_size
        self.config = {**self.config, "vocab_size": vocab_size}

    @staticmethod
    def convert_state_dict(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """transformers 4 layout -> this layout: drop the `text_model.` prefix (transformers 5's
        PrefixChange) and the `position_ids` buffer, which holds no weights."""
        out = {}
        for key, value in state.items():
            key = key.removeprefix("text_model.")
            if key != "embeddings.position_ids":
                out[key] = value
        return out

    def execute(
        self,
        input_ids: jt.Var | np.ndarray,
        attention_mask: jt.Var | np.ndarray | None = None,
        output_hidden_states: bool = False,
    ) -> CLIPTextModelOutput:
        """input_ids [B, S] (S <= max_position_embeddings); attention_mask [B, S], 1 = token, 0 = padding."""
        ids_np = np.asarray(input_ids.numpy() if isinstance(input_ids, jt.Var) else input_ids)
        if ids_np.ndim < 1 or not np.issubdtype(ids_np.dtype, np.integer):
            raise InputError(f"input_ids must be integers [batch, seq], got {ids_np.dtype} {ids_np.shape}")
        ids_np = ids_np.reshape(-1, ids_np.shape[-1])
        batch, seq = ids_np.shape
        max_pos = self.embeddings.position_embedding.weight.shape[0]
        if seq > max_pos:
            raise InputError(f"text of {seq} tokens is longer than the text encoder's {max_pos} positions; "
                             "truncate it with the tokenizer")
        ids = jt.array(ids_np.astype(np.int32))
        hidden = self.embeddings(ids)
        if attention_mask is not None and not isinstance(attention_mask, jt.Var):
            attention_mask = jt.array(np.asarray(attention_mask, dtype=np.float32))
        if attention_mask is not None:
            attention_mask = attention_mask.reshape(batch, seq)
        mask = causal_attention_mask(seq, attention_mask, str(hidden.dtype))
        states = [hidden]
        for layer in self.encoder.layers:
            hidden = layer(hidden, mask)
            states.append(hidden)
        last = self.final_layer_norm(hidden)
        rows = pooled_positions(ids_np, self.eos_token_id)
        pooled = jt.stack([last[b, int(rows[b])] for b in range(batch)])
        return CLIPTextModelOutput(last, pooled, tuple(states) if output_hidden_states else None)
