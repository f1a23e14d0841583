"""Textual-inversion training: only the new token's input embedding learns, the rest of the model is frozen.

loss = MSE(unet(x_t, t, text(prompt with the token)), target), as LoRA training (`LoRATrainer`), with the gradient
taken with respect to the token's [n, D] rows alone. AdamW on those rows equals AdamW on the whole embedding
matrix with every other row reset after each step (diffusers' and StyleBlend's scripts): the update is per element.
The result is diffusers' learned_embeds.safetensors; the pipeline keeps the token for what comes next (a LoRA).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jittor as jt
import numpy as np

from ..errors import ConfigError
from ..textual_inversion import WEIGHT_NAME, add_tokens, read_learned_embeds, save_learned_embeds
from .config import LoRATrainConfig
from .freeze import freeze_except
from .trainer import LoRATrainer

__all__ = ["TextualInversionConfig", "TextualInversionTrainer", "train_textual_inversion"]


@dataclass(frozen=True)
class TextualInversionConfig(LoRATrainConfig):
    """LoRATrainConfig's data, optimiser and output settings (the LoRA fields unused), plus the token.
    Defaults: diffusers' textual_inversion example (lr 5e-4, 3000 steps there; 500 here, as StyleBlend)."""

    placeholder_token: str = "<F>"
    initializer_token: str = "artistic"  # the new rows start as its embedding (its tokens' mean if split)
    num_vectors: int = 1
    instance_template: str = "a {obj} in the style of <F>."
    learning_rate: float = 5e-4

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.placeholder_token or " " in self.placeholder_token:
            raise ConfigError(f"placeholder_token={self.placeholder_token!r}: one word, e.g. '<my-style>'")
        if self.placeholder_token not in self.instance_template:
            raise ConfigError(f"instance_template={self.instance_template!r} does not hold the placeholder "
                              f"'{self.placeholder_token}'")
        if self.num_vectors < 1:
            raise ConfigError(f"num_vectors={self.num_vectors}: must be >= 1")


class TextualInversionTrainer(LoRATrainer):
    """LoRATrainer whose trainable tensor is the placeholder token's embedding rows (no LoRA layer is added)."""

    cfg: TextualInversionConfig

    def setup_parameters(self) -> tuple[list[jt.Var], list[float]]:
        cfg, tok, te = self.cfg, self.pipe.tokenizer, self.pipe.text_encoder
        init = tok.encode(cfg.initializer_token, add_special_tokens=False)
        if not init:
            raise ConfigError(f"initializer_token={cfg.initializer_token!r} gives no token; use a word such as "
                              "'artistic' or 'style'")
        weight = te.embeddings.token_embedding.weight
        # one token: its embedding (the official scripts); a word the vocabulary splits: its tokens' mean
        start = np.mean([weight[i].float32().numpy() for i in init], axis=0)
        ids = add_tokens(tok, te, {cfg.placeholder_token: np.tile(start, (cfg.num_vectors, 1))})
        ids = ids[cfg.placeholder_token]
        weight = te.embeddings.token_embedding.weight
        if ids != list(range(ids[0], ids[0] + len(ids))):
            raise ConfigError(f"the vectors of '{cfg.placeholder_token}' have ids {ids}, not consecutive ones")
        self.lora_models = {}
        for model in self.models.values():
            freeze_except(model, [])
        self.rows_before, self.rows_after = weight[: ids[0]].stop_grad(), weight[ids[-1] + 1 :].stop_grad()
        self.learned = jt.array(np.tile(start, (cfg.num_vectors, 1)).astype(np.float32))
        return [self.learned], [1.0]

    def _splice(self) -> None:
        """The text encoder's embedding = the frozen rows around the learned ones (in the graph of the loss)."""
        emb = self.pipe.text_encoder.embeddings.token_embedding
        parts = [self.rows_before, self.learned.cast(self.rows_before.dtype)]
        emb.weight = jt.concat(parts + ([self.rows_after] if self.rows_after.shape[0] else []))

    def encode_text(self, prompts: list[str]) -> jt.Var:
        self._splice()
        return self.pipe.text_encoder(self._ids(prompts)).last_hidden_state

    def save_weights(self, folder: Path, metadata: dict[str, str] | None = None) -> Path:
        with jt.no_grad():
            self._splice()
            self.pipe.text_encoder.embeddings.token_embedding.weight.stop_grad()
        return save_learned_embeds(folder / WEIGHT_NAME, self.cfg.placeholder_token, self.learned.numpy())

    def load_weights(self, folder: Path) -> None:
        emb = read_learned_embeds(folder / WEIGHT_NAME)[self.cfg.placeholder_token]
        self.learned.assign(jt.array(np.asarray(emb, np.float32).reshape(self.learned.shape)))
        self._splice()


def train_textual_inversion(cfg: TextualInversionConfig, pipe, stop_after: int | None = None) -> Path:
    """Train `cfg.placeholder_token` on cfg.style_dir; writes <output_dir>/learned_embeds.safetensors and leaves the
    token (with its learned embedding) in pipe's tokenizer and text encoder; returns the file's path."""
    return TextualInversionTrainer(pipe, cfg).train(stop_after=stop_after)
