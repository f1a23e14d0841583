"""DreamBooth-LoRA training: config and presets, data, AdamW and schedules, the training loop."""

from .config import PRESETS, LoRATrainConfig, mixed_precision_for, preset, resume_checkpointing
from .trainer import Batch, LoRATrainer, dreambooth_loss, mse

__all__ = ["PRESETS", "LoRATrainConfig", "mixed_precision_for", "preset", "resume_checkpointing", "Batch",
           "LoRATrainer", "dreambooth_loss", "mse"]
