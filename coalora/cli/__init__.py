"""The `coalora` command. Each subcommand lives in its own module with `register(subparsers)`.

Modules import their heavy dependencies inside `run`, so `coalora --help` stays fast.
Errors caused by input (CoaloraError) print one line and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from coalora import __version__
from coalora.errors import CoaloraError

# Subcommand modules, in the order `--help` lists them.
SUBCOMMANDS = ("space", "eval", "export", "verify", "train", "search", "allocate", "predict")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coalora",
        description=(
            "Configuration-aware LoRA for quantized LLMs: train one adapter, then get a "
            "task-tuned LoRA adapter for any per-layer quantization configuration."
        ),
        epilog="Run `coalora COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"coalora {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"coalora.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"coalora.cli.{name}":
                continue  # not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CoaloraError as e:
        print(f"coalora {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"coalora {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
