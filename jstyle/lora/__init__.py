"""LoRA (Hu et al. 2021) for Jittor Linear and Conv2d layers, and its files in the diffusers formats.

`layers`: the LoRA wrappers, injection by target names, scale, fuse/unfuse, removal.
`formats`: the safetensors layouts (diffusers, PEFT, kohya), reading, saving, loading into a pipeline.
Everything public is re-exported here: `from jstyle import lora as L; L.apply_lora(pipe, path)`.
"""

from .formats import (
    METADATA_KEY,
    WEIGHT_NAME,
    LoRAWeights,
    apply_lora,
    load_lora_weights,
    read_lora_file,
    save_lora,
    unload_lora,
)
from .layers import (
    COMPONENTS,
    DEFAULT_TARGETS,
    INITS,
    OPTIONAL_TARGETS,
    LoRAConv2d,
    LoRALayer,
    LoRALinear,
    LoRAParams,
    default_targets,
    fuse_lora,
    init_lora_a,
    inject_lora,
    lora_layers,
    lora_parameters,
    lora_state_dict,
    remove_lora,
    set_lora_dropout_generator,
    set_lora_scale,
    unfuse_lora,
)

__all__ = [
    "DEFAULT_TARGETS", "COMPONENTS", "default_targets", "LoRALinear", "LoRAConv2d", "LoRAParams",
    "LoRAWeights", "inject_lora", "remove_lora", "lora_layers", "lora_parameters", "lora_state_dict",
    "set_lora_scale", "set_lora_dropout_generator", "fuse_lora", "unfuse_lora", "save_lora",
    "read_lora_file", "load_lora_weights", "apply_lora", "unload_lora",
    "OPTIONAL_TARGETS", "INITS", "METADATA_KEY", "WEIGHT_NAME", "LoRALayer", "init_lora_a",
]
