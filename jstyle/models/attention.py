"""Attention that owns only weights and hands its forward to a small processor object.

Mirrors diffusers' `Attention` / `AttnProcessor`: methods such as StyleID and IP-Adapter swap the
processor (`set_attn_processor`) instead of forking the model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jittor as jt
from jittor import nn

from ..ops import attention
from .linear import Linear
from .normalization import GroupNorm

__all__ = ["Attention", "AttnProcessor", "AttentionHooksMixin"]


class AttnProcessor:
    """Default processor: multi-head scaled dot-product attention (diffusers' AttnProcessor).

    One call is four steps a subclass may override one at a time (StyleID swaps `project`, IP-Adapter extends
    `attend`): `prepare` (image -> tokens, group norm), `project` (Q, K, V tokens), `attend` (per head),
    `finish` (output projection, image shape, residual, rescale). `kernel` forces `jstyle.ops.attention`'s
    kernel ('batched' / 'per_head'); None lets it pick by device.
    """

    kernel: str | None = None

    def __init__(self, kernel: str | None = None):
        self.kernel = kernel

    def prepare(self, attn: Attention, hidden_states: jt.Var) -> tuple[jt.Var, Callable[[jt.Var], jt.Var]]:
        """(tokens [B, N, C], restore): an image [B, C, H, W] flattened to tokens, then the layer's group norm;
        `restore` turns output tokens back into the input's shape."""
        if hidden_states.ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.reshape(b, c, h * w).transpose(0, 2, 1)

            def restore(out: jt.Var) -> jt.Var:
                return out.transpose(0, 2, 1).reshape(b, c, h, w)
        else:
            def restore(out: jt.Var) -> jt.Var:
                return out
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(0, 2, 1)).transpose(0, 2, 1)
        return hidden_states, restore

    def project(self, attn: Attention, hidden_states: jt.Var,
                encoder_hidden_states: jt.Var | None) -> tuple[jt.Var, jt.Var, jt.Var]:
        """Q, K, V tokens [B, N, heads*d]: K, V from `encoder_hidden_states` (cross-attention) or the tokens."""
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        return attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)

    def attend(self, attn: Attention, query: jt.Var, key: jt.Var, value: jt.Var, mask: jt.Var | None) -> jt.Var:
        """[B, heads, N, d] attention of the layer's heads; subclasses add terms here (IP-Adapter)."""
        return attn.attend(query, key, value, mask, kernel=self.kernel)

    def finish(self, attn: Attention, out: jt.Var, restore: Callable[[jt.Var], jt.Var], residual: jt.Var) -> jt.Var:
        """Heads [B, heads, N, d] -> to_out, the input's shape, + residual (if the layer has one), / rescale."""
        out = restore(attn.to_out[1](attn.to_out[0](attn.batch_to_head_dim(out))))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def __call__(
        self,
        attn: Attention,
        hidden_states: jt.Var,
        encoder_hidden_states: jt.Var | None = None,
        attention_mask: jt.Var | None = None,
        **kwargs,
    ) -> jt.Var:
        """Extra `cross_attention_kwargs` meant for other processors are ignored, as in diffusers."""
        tokens, restore = self.prepare(attn, hidden_states)
        q, k, v = (attn.head_to_batch_dim(y) for y in self.project(attn, tokens, encoder_hidden_states))
        out = self.attend(attn, q, k, v, attention_mask)
        return self.finish(attn, out, restore, hidden_states)


class Attention(nn.Module):
    """Weights of one (self- or cross-) attention layer: to_q, to_k, to_v, to_out.0 (+ group_norm)."""

    def __init__(
        self,
        query_dim: int,
        cross_attention_dim: int | None = None,
        heads: int = 8,
        dim_head: int = 64,
        dropout: float = 0.0,
        bias: bool = False,
        upcast_attention: bool = False,
        upcast_softmax: bool = False,
        out_bias: bool = True,
        residual_connection: bool = False,
        rescale_output_factor: float = 1.0,
        norm_num_groups: int | None = None,
        eps: float = 1e-5,
    ):
        super().__init__()
        inner_dim = dim_head * heads
        self.heads = heads
        self.dim_head = dim_head
        self.scale = dim_head**-0.5
        self.is_cross_attention = cross_attention_dim is not None
        self.upcast_attention = upcast_attention
        self.upcast_softmax = upcast_softmax
        self.residual_connection = residual_connection
        self.rescale_output_factor = rescale_output_factor
        kv_dim = cross_attention_dim if cross_attention_dim is not None else query_dim
        self.group_norm = (
            GroupNorm(norm_num_groups, query_dim, eps=eps, affine=True) if norm_num_groups else None
        )
        self.to_q = Linear(query_dim, inner_dim, bias=bias)
        self.to_k = Linear(kv_dim, inner_dim, bias=bias)
        self.to_v = Linear(kv_dim, inner_dim, bias=bias)
        self.to_out = nn.ModuleList([Linear(inner_dim, query_dim, bias=out_bias), nn.Dropout(dropout)])
        self.processor = AttnProcessor()

    def head_to_batch_dim(self, x: jt.Var) -> jt.Var:
        """[B, N, heads*d] -> [B, heads, N, d]."""
        b, n, _ = x.shape
        return x.reshape(b, n, self.heads, -1).transpose(0, 2, 1, 3)

    def batch_to_head_dim(self, x: jt.Var) -> jt.Var:
        """[B, heads, N, d] -> [B, N, heads*d]."""
        b, h, n, d = x.shape
        return x.transpose(0, 2, 1, 3).reshape(b, n, h * d)

    def attend(
        self, query: jt.Var, key: jt.Var, value: jt.Var, mask: jt.Var | None = None, kernel: str | None = None,
        scale: float | None = None,
    ) -> jt.Var:
        """softmax(s Q K^T + mask) V, s = `scale` or 1 / sqrt(d); Q K^T in float32 with upcast_attention, the
        softmax with upcast_softmax, the probabilities and P V in V's dtype (diffusers' get_attention_scores)."""
        scale = self.scale if scale is None else scale
        return attention(query, key, value, scale, mask, self.upcast_attention, self.upcast_softmax, kernel,
                         training=self.is_training())

    def set_processor(self, processor) -> None:
        self.processor = processor

    def execute(
        self,
        hidden_states: jt.Var,
        encoder_hidden_states: jt.Var | None = None,
        attention_mask: jt.Var | None = None,
        **kwargs,
    ) -> jt.Var:
        return self.processor(self, hidden_states, encoder_hidden_states, attention_mask, **kwargs)


class AttentionHooksMixin:
    """`attn_processors` / `set_attn_processor` for any module that contains `Attention` layers."""

    def _attention_modules(self) -> dict[str, Attention]:
        return {name: m for name, m in self.named_modules() if isinstance(m, Attention)}

    @property
    def attn_processors(self) -> dict[str, object]:
        """Processors by diffusers-style name ('up_blocks.2.attentions.0.transformer_blocks.0.attn1.processor')."""
        return {f"{name}.processor": m.processor for name, m in self._attention_modules().items()}

    def set_attn_processor(self, processor: object | Mapping[str, object]) -> None:
        """Set one processor for every attention layer, or a {name: processor} dict covering all of them."""
        modules = self._attention_modules()
        if isinstance(processor, Mapping):
            names = {f"{name}.processor" for name in modules}
            if len(processor) != len(modules) or set(processor) != names:
                unknown = sorted(set(processor) - names)[:3]
                raise ValueError(
                    f"set_attn_processor got {len(processor)} processors for {len(modules)} attention "
                    f"layers" + (f"; unknown names: {unknown}" if unknown else "")
                    + "; pass one per name in `attn_processors`"
                )
            for name, m in modules.items():
                m.set_processor(processor[f"{name}.processor"])
        else:
            for m in modules.values():
                m.set_processor(processor)
