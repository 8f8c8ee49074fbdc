"""Configuration-aware LoRA: adapted layers, θ, the wrapped model, checkpoints."""

from coalora.lora.checkpoint import (
    DEFAULT_CHECKPOINT, LoadedModel, checkpoint_label, load_alongside, load_checkpoint, load_for_eval, load_weights, read_metadata,
    save_checkpoint, weights_fingerprint,
)
from coalora.lora.hypernet import ConfigHyperNet
from coalora.lora.layer import CoaLoraLinear
from coalora.lora.model import CoaLoraModel
from coalora.lora.spec import LoraSpec

__all__ = [
    "DEFAULT_CHECKPOINT", "CoaLoraLinear", "CoaLoraModel", "ConfigHyperNet", "LoadedModel", "LoraSpec",
    "checkpoint_label", "load_alongside", "load_checkpoint", "load_for_eval", "load_weights", "read_metadata", "save_checkpoint", "weights_fingerprint",
]
