"""Arguments shared by several subcommands."""

from __future__ import annotations

import argparse

from coalora.models import DEFAULT_MODEL, EMBEDDED
from coalora.space import PRESET_HELP


def add_model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=(
            f"base model: {', '.join(EMBEDDED)} (embedded, the default), a local model folder, "
            "or a Hugging Face id already in the local cache (never downloaded)"
        ),
    )


def config_help() -> str:
    presets = "; ".join(f"{k}: {v}" for k, v in PRESET_HELP.items())
    return f"a preset name or a configuration JSON file (see README). Presets: {presets}"
