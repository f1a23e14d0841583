"""StyleID's attention processors (Jittor): record Q/K/V during inversion, inject them while sampling.

Kept apart from jstyle.methods.styleid so that its settings (StyleIDConfig, run_all's --styleid-* flags) import
without Jittor; `jstyle.methods.styleid.RecordProcessor` / `.InjectProcessor` are these classes.
"""

from __future__ import annotations

import jittor as jt

from ..errors import InputError
from ..models.attention import Attention, AttnProcessor

__all__ = ["RecordProcessor", "InjectProcessor", "attend_in_chunks", "MAX_SCORES"]

# Attention scores one chunk may hold (2**28 float32 = 1 GiB): above it, queries are taken in chunks
MAX_SCORES = 2**28


def attend_in_chunks(attn: Attention, query: jt.Var, key: jt.Var, value: jt.Var, mask: jt.Var | None,
                     kernel: str | None, scale: float, max_scores: int = MAX_SCORES) -> jt.Var:
    """softmax(s Q K^T + mask) V with queries in row chunks of at most `max_scores` scores each (B heads rows M),
    each chunk run before the next: the same rows (a softmax row needs only its own scores) in bounded memory,
    for attention over many style tokens (k references, native-size references)."""
    b, h, n, _ = query.shape
    m = key.shape[2]
    rows = max(1, max_scores // max(1, b * h * m))
    if rows >= n:
        return attn.attend(query, key, value, mask, kernel=kernel, scale=scale)
    chunks = []
    for i in range(0, n, rows):
        part = None if mask is None or mask.shape[-2] == 1 else mask[..., i:i + rows, :]
        out = attn.attend(query[:, :, i:i + rows], key, value, mask if part is None else part, kernel=kernel,
                          scale=scale)
        out.sync()
        chunks.append(out)
    return jt.concat(chunks, dim=2)


def _self_attention_only(encoder_hidden_states: jt.Var | None) -> None:
    if encoder_hidden_states is not None:
        raise InputError("StyleID layers must be self-attention (attn1) layers")


class RecordProcessor(AttnProcessor):
    """Plain self-attention that stores its projected q/k/v ([B, N, heads*d]) in `store[timestep][name]`.

    The owner sets `timestep` before each UNet call; `keep` picks which of 'q', 'k', 'v' are stored.
    """

    def __init__(self, name: str, store: dict, keep: str = "qkv"):
        self.name, self.store, self.keep, self.timestep = name, store, keep, None

    def project(self, attn: Attention, hidden_states: jt.Var, encoder_hidden_states: jt.Var | None):
        _self_attention_only(encoder_hidden_states)
        q, k, v = super().project(attn, hidden_states, None)
        saved = {key: val.detach() for key, val in zip("qkv", (q, k, v)) if key in self.keep}
        jt.sync(list(saved.values()))
        self.store.setdefault(self.timestep, {})[self.name] = saved
        return q, k, v


class InjectProcessor(AttnProcessor):
    """StyleID attention: Q = gamma Q_c + (1 - gamma) Q_cs, K = K_s, V = V_s, softmax(T Q K^T / sqrt(d)) V.

    `content[t][name]['q']` and `style[t][name]['k'|'v']` come from RecordProcessor; the owner sets
    `timestep` before each UNet call. Only at the timesteps in `labels` (None: all); elsewhere plain attention.
    """

    max_scores: int = MAX_SCORES  # attention scores per chunk (attend_in_chunks)

    def __init__(self, name: str, content: dict, style: dict, gamma: float, temperature: float,
                 labels: set[int] | None = None):
        self.name, self.content, self.style, self.labels = name, content, style, labels
        self.gamma, self.temperature, self.timestep, self.active = gamma, temperature, None, True

    def project(self, attn: Attention, hidden_states: jt.Var, encoder_hidden_states: jt.Var | None):
        _self_attention_only(encoder_hidden_states)
        self.active = self.labels is None or self.timestep in self.labels
        if not self.active:
            return super().project(attn, hidden_states, None)
        q_c = self.content[self.timestep][self.name]["q"]
        kv = self.style[self.timestep][self.name]
        q = self.gamma * q_c + (1.0 - self.gamma) * attn.to_q(hidden_states)
        return q, kv["k"], kv["v"]  # K, V: batch 1 broadcasts

    def attend(self, attn: Attention, query: jt.Var, key: jt.Var, value: jt.Var, mask: jt.Var | None) -> jt.Var:
        """softmax(T Q K^T / sqrt(d) + mask) V (T only where injected), in query chunks above `max_scores` scores."""
        scale = attn.scale * (self.temperature if self.active else 1.0)
        return attend_in_chunks(attn, query, key, value, mask, self.kernel, scale, self.max_scores)

