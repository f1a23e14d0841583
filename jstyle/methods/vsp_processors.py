"""Visual Style Prompting's attention processor (Jittor), kept apart from jstyle.methods.vsp so that its settings
import without Jittor."""

from __future__ import annotations

import jittor as jt

from ..models.attention import Attention, AttnProcessor
from .styleid_processors import MAX_SCORES, _self_attention_only, attend_in_chunks

__all__ = ["VSPProcessor"]


class VSPProcessor(AttnProcessor):
    """Swapping self-attention (inverted_ve_pipeline.py::swapping_attention): the batch is CFG chunks of [k reference
    rows, image rows]; while `active`, each chunk's image rows attend with their own queries to the K and V of the
    chunk's reference rows (concatenated along the token axis for k > 1), the reference rows to their own.

    negative_query: the uncond chunk's image rows instead attend with the reference rows' queries to their own keys
    and values (the mean over k references): the uncond prediction becomes the negative visual query score
    (jstyle.methods.vsp, variant `nvqg`)."""

    max_scores: int = MAX_SCORES  # attention scores per chunk (attend_in_chunks)

    def __init__(self, name: str, references: int = 1, chunks: int = 2, negative_query: bool = False):
        self.name, self.references, self.chunks, self.active = name, references, chunks, True
        self.negative_query = negative_query

    def project(self, attn: Attention, hidden_states: jt.Var, encoder_hidden_states: jt.Var | None):
        _self_attention_only(encoder_hidden_states)
        return super().project(attn, hidden_states, None)

    def attend(self, attn: Attention, query: jt.Var, key: jt.Var, value: jt.Var, mask: jt.Var | None) -> jt.Var:
        if not self.active:
            return attn.attend(query, key, value, mask, kernel=self.kernel)
        b, h, n, d = query.shape
        rows, k = b // self.chunks, self.references
        out = []
        for c in range(self.chunks):  # key = key[:, [0] * chunk_length] per [uncond, cond] chunk
            lo = c * rows
            refs = slice(lo, lo + k)
            out.append(attn.attend(query[refs], key[refs], value[refs], None, kernel=self.kernel))
            if self.negative_query and c == 0:  # Q <- Q_ref, K, V their own: content leakage simulated
                images = slice(lo + k, lo + rows)
                leak = [attn.attend(query[r:r + 1].broadcast((rows - k, h, n, d)), key[images], value[images], None,
                                    kernel=self.kernel) for r in range(lo, lo + k)]
                out.append(sum(leak[1:], leak[0]) / k if k > 1 else leak[0])
                continue
            pooled_k = key[refs].transpose(1, 0, 2, 3).reshape(1, h, k * n, d)  # [1, heads, k N, d]
            pooled_v = value[refs].transpose(1, 0, 2, 3).reshape(1, h, k * n, d)
            out.append(attend_in_chunks(attn, query[lo + k:lo + rows], pooled_k, pooled_v, None, self.kernel,
                                        attn.scale, self.max_scores))
        return jt.concat(out)
