"""DreamBooth-LoRA training loop (Jittor): LoRA-only AdamW on the diffusion loss, with prior preservation.

Randomness: every optimizer step s draws from np.random.default_rng([seed, s, k]) (k = micro-batch),
and the data order of epoch e from default_rng([seed, 1, e]); nothing else is random. So a run is a
pure function of (config, base model), and resuming from step s needs no RNG state.

loss = MSE(unet(x_t, t, text), target) [+ prior_loss_weight * same on the class half of the batch],
x_t = sqrt(a_t) z + sqrt(1 - a_t) eps, target = eps (epsilon) or sqrt(a_t) eps - sqrt(1 - a_t) z (v).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jittor as jt
import numpy as np

from .. import lora as L
from ..errors import ConfigError, InputError
from ..io import atomic_path, atomic_write
from ..ops import as_dtype
from ..schedulers import DDIMScheduler
from .checkpointing import disable_gradient_checkpointing, enable_gradient_checkpointing, run_backward
from .config import RESUME_FREE_FIELDS, LoRATrainConfig
from .dataset import Example, augment, class_augment, ensure_class_images, load_style_examples
from .freeze import freeze_except
from .optim import AdamW, LossScaler, all_finite, clip_grad_norm, lr_at
from .timesteps import sample_timesteps

__all__ = ["LoRATrainer", "Batch", "mse", "dreambooth_loss", "CHECKPOINT_DIR", "resumable_checkpoint"]

CHECKPOINT_DIR = "checkpoints"
FINAL_NAME = L.WEIGHT_NAME


@dataclass
class Batch:
    """Pixels [B, 3, R, R] in [-1, 1] and prompts; the class half is empty without prior preservation."""

    pixels: np.ndarray
    prompts: list[str]
    class_pixels: np.ndarray | None = None
    class_prompts: list[str] | None = None


def mse(a: jt.Var, b: jt.Var) -> jt.Var:
    """mean((a - b)^2) in float32."""
    d = a.float32() - b.float32()
    return (d * d).mean()


def dreambooth_loss(pred: jt.Var, target: jt.Var, n_instance: int, prior_weight: float) -> jt.Var:
    """MSE on the first n_instance rows + prior_weight * MSE on the rest (DreamBooth eq. 2)."""
    if pred.shape[0] == n_instance:
        return mse(pred, target)
    return mse(pred[:n_instance], target[:n_instance]) + prior_weight * mse(pred[n_instance:], target[n_instance:])


def resumable_checkpoint(cfg: LoRATrainConfig) -> Path | None:
    """The newest checkpoint under cfg.output_dir made with cfg's settings (None when there is none)."""
    for path in sorted((Path(cfg.output_dir) / CHECKPOINT_DIR).glob("step_*"), reverse=True):
        try:
            if json.loads((path / "state.json").read_text()).get("fingerprint") == cfg.fingerprint():
                return path
        except (OSError, json.JSONDecodeError):
            continue
    return None


class LoRATrainer:
    """Holds the pipeline with LoRA injected, the data, the optimizer; `train()` runs to max_train_steps."""

    def __init__(self, pipe: Any, cfg: LoRATrainConfig, examples: list[Example] | None = None):
        if getattr(pipe, "dtype", "float32") == "float16" and cfg.mixed_precision != "fp16":
            # float16 activations and gradients with a loss scale of 1 underflow (accelerate refuses float16 params)
            raise ConfigError("a float16 pipeline trains LoRA with mixed_precision='fp16' (float32 LoRA tensors, "
                              "loss scaling); set it, or load the pipeline in float32")
        self.pipe, self.cfg = pipe, cfg
        self.scheduler = DDIMScheduler.from_config(pipe.scheduler_config)
        self.prediction_type = pipe.scheduler_config.get("prediction_type", "epsilon")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ConfigError(f"training supports epsilon and v_prediction models, not {self.prediction_type}")
        self.examples = examples if examples is not None else load_style_examples(cfg)
        self.class_examples: list[Example] = []
        self.out = Path(cfg.output_dir)
        self.models = {c: getattr(pipe, c) for c in L.COMPONENTS}
        self.params, self.lr_scale = self.setup_parameters()
        if cfg.gradient_checkpointing:
            enable_gradient_checkpointing(self.models["unet"])
        else:
            disable_gradient_checkpointing(self.models["unet"])
        self.optim = AdamW(self.params, cfg.learning_rate, (cfg.adam_beta1, cfg.adam_beta2),
                           cfg.adam_weight_decay, cfg.adam_epsilon)
        self.step = 0
        self.log: list[dict[str, Any]] = []
        self._text_cache: dict[str, np.ndarray] = {}
        self.scaler = LossScaler(enabled=cfg.mixed_precision == "fp16")  # fp16: dynamic scale from 2**16

    def setup_parameters(self) -> tuple[list[jt.Var], list[float]]:
        """Inject the LoRA layers, freeze the rest; returns (trainable tensors, their lr multipliers)."""
        cfg = self.cfg
        for i, (comp, targets) in enumerate(cfg.targets().items()):
            model = self.models[comp]
            L.remove_lora(model)
            # optional targets (add_k_proj, add_v_proj) that match nothing are left out, as PEFT leaves them
            optional = set(L.OPTIONAL_TARGETS.get(comp, ())) - set(L.default_targets(comp, model))
            targets = tuple(t for t in targets if t not in optional)
            L.inject_lora(model, targets, rank=cfg.rank, alpha=cfg.lora_alpha, dropout=cfg.dropout,
                          init=cfg.init, rng=np.random.default_rng([cfg.seed, 2, i]))
        self.lora_models = {c: self.models[c] for c in cfg.targets()}
        for model in self.models.values():  # freeze the base: gradients only for LoRA tensors
            freeze_except(model, L.lora_parameters(model))
        params: list[jt.Var] = []
        lr_scale: list[float] = []
        for comp, model in self.lora_models.items():
            ps = L.lora_parameters(model)
            lr = cfg.text_encoder_lr if comp == "text_encoder" and cfg.text_encoder_lr else cfg.learning_rate
            params += ps
            lr_scale += [lr / cfg.learning_rate] * len(ps)
        return params, lr_scale

    def save_weights(self, folder: Path, metadata: dict[str, str] | None = None) -> Path:
        """Write the trained weights into `folder` (the LoRA file); returns its path."""
        return L.save_lora(folder / FINAL_NAME, self.lora_models, extra_metadata=metadata)

    def load_weights(self, folder: Path) -> None:
        """Set the trained weights from `folder` (a checkpoint written by save_weights)."""
        weights = L.read_lora_file(folder / FINAL_NAME)
        for comp, layers in weights.layers.items():
            own = L.lora_layers(self.lora_models[comp])
            for name, p in layers.items():
                own[name].lora_A.weight.assign(jt.array(p.A))
                own[name].lora_B.weight.assign(jt.array(p.B))

    @property
    def loss_scale(self) -> float:
        """The loss scale of the next step (1 without fp16 mixed precision)."""
        return self.scaler.scale

    @loss_scale.setter
    def loss_scale(self, value: float) -> None:
        self.scaler.scale = float(value)

    # ------------------------------------------------------------ data

    def prepare_class_images(self) -> None:
        """Generate (once, cached) the class images for prior preservation."""
        if not self.cfg.prior_preservation or self.class_examples:
            return
        class_dir = Path(self.cfg.class_dir) if self.cfg.class_dir else self.out / "class_images"
        objs = [e.obj for e in self.examples]
        for m in self.lora_models.values():
            L.set_lora_scale(m, 0.0)  # the base model makes the class images
        try:
            self.class_examples = ensure_class_images(self.pipe, self.cfg, objs, class_dir, self.cfg.progress)
        finally:
            for m in self.lora_models.values():
                L.set_lora_scale(m, 1.0)

    def _pick(self, examples: list[Example], index: int, salt: int) -> Example:
        n = len(examples)
        epoch, pos = divmod(index, n)
        order = np.random.default_rng([self.cfg.seed, salt, epoch]).permutation(n)
        return examples[order[pos]]

    def batch(self, micro: int, rng: np.random.Generator) -> Batch:
        """The micro-batch number `micro` (deterministic order; augmentation drawn from rng)."""
        bs = self.cfg.train_batch_size
        inst = [self._pick(self.examples, micro * bs + j, 1) for j in range(bs)]
        b = Batch(np.stack([augment(e.image, self.cfg, rng) for e in inst]), [e.prompt for e in inst])
        if self.cfg.prior_preservation:
            self.prepare_class_images()
            cls = [self._pick(self.class_examples, micro * bs + j, 3) for j in range(bs)]
            b.class_pixels = np.stack([class_augment(e.image, self.cfg, rng) for e in cls])
            b.class_prompts = [e.prompt for e in cls]
        return b

    # ------------------------------------------------------------ loss

    def _ids(self, prompts: list[str]) -> jt.Var:
        ids = self.pipe.tokenizer(prompts, padding="max_length", truncation=True)["input_ids"]
        return jt.array(np.asarray(ids, dtype=np.int64))

    def encode_text(self, prompts: list[str]) -> jt.Var:
        """Text states [B, 77, D]; with a frozen text encoder each prompt is encoded once and cached."""
        te = self.pipe.text_encoder
        if "text_encoder" in self.lora_models:
            return te(self._ids(prompts)).last_hidden_state
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            with jt.no_grad():
                states = te(self._ids(missing)).last_hidden_state.numpy()
            self._text_cache.update(zip(missing, states))
        return jt.array(np.stack([self._text_cache[p] for p in prompts]))

    def encode_latents(self, pixels: np.ndarray, rng: np.random.Generator) -> jt.Var:
        vae = self.pipe.vae
        x = jt.array(pixels).cast(self.pipe.vae_dtype)
        if "vae" in self.lora_models:
            z = vae.encode(x).sample(rng)
        else:
            with jt.no_grad():
                z = vae.encode(x).sample(rng)
            z = z.stop_grad()
        return as_dtype(z * vae.scaling_factor, self.pipe.dtype)  # from the VAE's dtype to the UNet's

    def compute_loss(self, batch: Batch, rng: np.random.Generator) -> jt.Var:
        """Diffusion loss of one micro-batch: VAE sample, then noise, then timesteps are drawn from rng."""
        pixels, prompts = batch.pixels, list(batch.prompts)
        if batch.class_pixels is not None:
            pixels = np.concatenate([pixels, batch.class_pixels])
            prompts += list(batch.class_prompts)
        z = self.encode_latents(pixels, rng)
        noise = jt.array(rng.standard_normal(tuple(z.shape)).astype(np.float32)).cast(z.dtype)
        cfg = self.cfg
        t = sample_timesteps(rng, z.shape[0], self.scheduler.alphas_cumprod, cfg.timestep_sampling, cfg.snr_mean,
                             cfg.snr_std)
        noisy = self.scheduler.add_noise(z, noise, t)
        target = noise if self.prediction_type == "epsilon" else self.scheduler.get_velocity(z, noise, t)
        context = self.encode_text(prompts).cast(self.pipe.dtype)
        pred = self.pipe.unet(noisy, jt.array(t), context)
        return dreambooth_loss(pred, target, len(batch.prompts), self.cfg.prior_loss_weight)

    # ------------------------------------------------------------ steps

    def _set_dropout_rng(self, rng: np.random.Generator | None) -> None:
        for m in self.lora_models.values():
            L.set_lora_dropout_generator(m, rng)

    def train_step(self, batches: list[Batch] | None = None, noise_seed: int | None = None) -> dict[str, float]:
        """One optimizer step (gradient accumulation over micro-batches); returns its log entry.

        batches / noise_seed fix the data and the noise+timestep draws (tests: a fixed batch)."""
        cfg, s = self.cfg, self.step
        accum = cfg.gradient_accumulation_steps
        t0 = time.perf_counter()
        for m in self.lora_models.values():
            m.train()
        grads: list[jt.Var] | None = None
        total = 0.0
        scale = self.scaler.scale
        for k in range(accum):
            rng = np.random.default_rng([cfg.seed, s, k] if noise_seed is None else noise_seed)
            self._set_dropout_rng(np.random.default_rng([cfg.seed, s, k, 1]))
            b = batches[k] if batches is not None else self.batch(s * accum + k, rng)
            loss = self.compute_loss(b, rng)
            scaled = loss * (scale / accum)
            with jt.no_grad():  # first-order only: Jittor keeps nothing for a gradient of these gradients
                g = jt.grad(scaled, self.params)
            run_backward(self.models["unet"])  # with checkpointing: block by block (less memory); synced below
            grads = g if grads is None else [a + c for a, c in zip(grads, g, strict=True)]
            jt.sync(grads)
            total += float(loss.item()) / accum
        for m in self.lora_models.values():
            m.eval()
        self._set_dropout_rng(None)
        grads = self.scaler.unscale(grads)  # before clipping, as GradScaler.unscale_
        # fp16: an inf/NaN gradient skips the step and halves the scale; growth_interval good steps double it
        skipped = self.scaler.enabled and self.scaler.update(all_finite(grads))
        norm = None
        if cfg.max_grad_norm is not None and not skipped:
            grads, norm = clip_grad_norm(grads, cfg.max_grad_norm)
        lr = lr_at(s, cfg.learning_rate, cfg.lr_scheduler, cfg.lr_warmup_steps, cfg.max_train_steps,
                   cfg.lr_step_size, cfg.lr_step_gamma)
        if not skipped:
            self.optim.step(grads, lr, self.lr_scale)
        self.step += 1
        entry = {"step": self.step, "loss": total, "lr": lr, "time_s": time.perf_counter() - t0}
        if norm is not None:
            entry["grad_norm"] = norm
        if self.scaler.enabled:
            entry["loss_scale"] = scale
        if skipped:
            entry["skipped"] = True
        self.log.append(entry)
        return entry

    # ------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> Path:
        """<output_dir>/checkpoints/step_NNNNNN/ (written to a temp folder, then renamed); then the oldest beyond
        checkpoints_total_limit are deleted."""
        final = self.out / CHECKPOINT_DIR / f"step_{self.step:06d}"
        with atomic_path(final, directory=True) as tmp:
            self.save_weights(tmp)
            np.savez(tmp / "optimizer.npz", **self.optim.state_dict())
            state = {"step": self.step, "fingerprint": self.cfg.fingerprint(), "config": self.cfg.to_dict(),
                     "loss_scale": self.loss_scale, "log": self.log}
            (tmp / "state.json").write_text(json.dumps(state, indent=1, default=str) + "\n")
        limit = self.cfg.checkpoints_total_limit
        if limit is not None:
            for old in sorted((self.out / CHECKPOINT_DIR).glob("step_*"))[:-limit]:
                shutil.rmtree(old, ignore_errors=True)
        return final

    def load_checkpoint(self, path: str | Path) -> None:
        """Continue from a checkpoint of the same config (ConfigError naming the differing settings)."""
        path = Path(path)
        if str(path) == "latest":
            found = sorted((self.out / CHECKPOINT_DIR).glob("step_*"))
            if not found:
                raise InputError(f"{self.out / CHECKPOINT_DIR}: no checkpoint to resume from")
            path = found[-1]
        if not (path / "state.json").is_file():
            raise InputError(f"{path}: not a checkpoint folder (no state.json)")
        state = json.loads((path / "state.json").read_text())
        if state.get("fingerprint") != self.cfg.fingerprint():
            mine = self.cfg.to_dict()
            same = lambda a, b: json.dumps(a, default=str) == json.dumps(b, default=str)  # noqa: E731
            diff = sorted(k for k, v in state.get("config", {}).items()
                          if k not in RESUME_FREE_FIELDS and not same(v, mine.get(k)))
            raise ConfigError(f"{path}: checkpoint was made with another config (differs in: "
                              f"{', '.join(diff) or 'unknown'}); resume with the same settings")
        self.load_weights(path)
        with np.load(path / "optimizer.npz") as f:
            self.optim.load_state_dict(dict(f))
        self.step, self.log = int(state["step"]), list(state["log"])
        self.loss_scale = float(state.get("loss_scale", self.loss_scale))
        good = next((i for i, e in enumerate(reversed(self.log)) if e.get("skipped")), len(self.log))
        self.scaler.good_steps = good % self.scaler.growth_interval  # the growth tracker, from the log
        jt.sync(self.params)

    # ------------------------------------------------------------ run

    @classmethod
    def train_resuming(cls, pipe: Any, cfg: LoRATrainConfig, examples: list[Example] | None = None,
                       log: logging.Logger | None = None) -> tuple[Path, int]:
        """Train from the newest checkpoint under cfg.output_dir made with cfg's settings (a killed run's; others
        are deleted, they cannot be resumed), then delete the checkpoints once the weights file is written.
        Returns (the weights file, the step resumed from: 0 for a fresh start)."""
        folder = Path(cfg.output_dir) / CHECKPOINT_DIR
        resume = resumable_checkpoint(cfg)
        if resume is None:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            cfg = dataclasses.replace(cfg, resume=str(resume))
            if log is not None:
                log.info("resuming %s from %s", cfg.output_dir, resume)
        path = cls(pipe, cfg, examples).train()
        shutil.rmtree(folder, ignore_errors=True)  # the weights are written: nothing left to resume
        return path, int(resume.name[5:]) if resume else 0

    def train(self, stop_after: int | None = None) -> Path:
        """Train to max_train_steps (or stop after `stop_after` more steps, as an interruption would);
        writes checkpoints, the final LoRA and train_log.json; returns the final LoRA's path."""
        cfg = self.cfg
        if cfg.resume:
            self.load_checkpoint(cfg.resume)
        self.prepare_class_images()
        end = cfg.max_train_steps if stop_after is None else min(cfg.max_train_steps, self.step + stop_after)
        steps = range(self.step, end)
        bar = None
        if cfg.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.max_train_steps, initial=self.step, desc="lora", unit="step")
        t_start = time.perf_counter()
        for _ in steps:
            entry = self.train_step()
            if bar is not None:
                bar.set_postfix(loss=f"{entry['loss']:.4f}", lr=f"{entry['lr']:.2e}")
                bar.update(1)
            if cfg.checkpointing_steps and self.step % cfg.checkpointing_steps == 0:
                self.save_checkpoint()
        if bar is not None:
            bar.close()
        wall = time.perf_counter() - t_start
        self.out.mkdir(parents=True, exist_ok=True)
        meta = {"jstyle_train_config": json.dumps(self.cfg.to_dict(), default=str), "jstyle_step": str(self.step)}
        path = self.save_weights(self.out, meta)
        times = [e["time_s"] for e in self.log]
        summary = {
            "config": self.cfg.to_dict(), "steps": self.log, "final_step": self.step, "wall_s_this_run": wall,
            "first_step_s": times[0] if times else None,
            "it_per_s_after_first": (len(times) - 1) / sum(times[1:]) if len(times) > 1 else None,
        }
        atomic_write(self.out / "train_log.json", json.dumps(summary, indent=1, default=str))
        return path
