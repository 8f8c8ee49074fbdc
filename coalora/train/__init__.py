"""Training of CoA-LoRA and its baselines (per-configuration LoRA, Shared-LoRA) with accelerate."""

from coalora.train.args import METHODS, RECIPES, TrainArgs
from coalora.train.trainer import train

__all__ = ["METHODS", "RECIPES", "TrainArgs", "train"]
