"""`coalora train`: CoA-LoRA and its baselines; runs under `accelerate launch` unchanged.

Its options are made from the fields of coalora.train.args.TrainArgs (name, type, default,
help text), so the command line and the dataclass cannot drift apart.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from dataclasses import Field, fields
from typing import Any

from coalora.cli.common import add_model_arg, config_help

# Options of the command that are not training options (not saved in run.json).
_RUN_FLAGS = ("resume", "force", "json")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: ...)" only where there is a default to show (not on flags or None)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.nargs == 0 or action.default is None:
            return action.help or ""
        return super()._get_help_string(action)


def flag(name: str) -> str:
    """A TrainArgs field name -> its option, e.g. n_configs -> --n-configs."""
    return "--" + name.replace("_", "-")


def _value_type(f: Field, hints: dict[str, Any]) -> Any:
    """The option's element type: int | None -> int; tuples stay tuples."""
    t = hints[f.name]
    if isinstance(t, types.UnionType) or typing.get_origin(t) is typing.Union:
        t = next(a for a in typing.get_args(t) if a is not type(None))
    return typing.get_origin(t) or t


def add_train_args(p: argparse.ArgumentParser) -> None:
    """One option per TrainArgs field: its default, help text and choices; tuples of numbers
    are given comma-separated; a bool field that defaults to True becomes --no-NAME."""
    from coalora.train.args import TrainArgs

    hints = typing.get_type_hints(TrainArgs)
    for f in fields(TrainArgs):
        meta, kind = dict(f.metadata), _value_type(f, hints)
        help_text = meta.pop("help")
        if f.name == "model":
            add_model_arg(p)  # the help every command shares (embedded model names)
        elif kind is bool:
            action = "store_false" if f.default else "store_true"
            p.add_argument(flag(f.name) if not f.default else "--no-" + f.name.replace("_", "-"), dest=f.name,
                           action=action, help=help_text)
        elif kind is tuple:
            p.add_argument(flag(f.name), default=",".join(map(str, f.default)), help=help_text, **meta)
        else:
            if f.name == "config":
                help_text = f"{help_text}: {config_help()}"
            opts = {"type": kind} if kind in (int, float) else {}
            if not meta.get("required"):
                opts["default"] = f.default
            p.add_argument(flag(f.name), help=help_text, **opts, **meta)


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train CoA-LoRA (one adapter + θ for all configurations) or a baseline",
        description=(
            "Train into a run folder OUT: OUT/run.json (resolved options, code version), OUT/log.jsonl "
            "(loss per step, dev losses and searches per epoch), OUT/state/ (resumable checkpoint every "
            "--save-every steps), OUT/checkpoint/ (the final adapter, loadable by `coalora eval --checkpoint`). "
            "Multi-process or multi-GPU: `accelerate launch [--num_processes N] -m coalora train ...`."
        ),
        formatter_class=_HelpFormatter,
    )
    add_train_args(p)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--force", action="store_true", help="replace whatever --out holds")
    p.add_argument("--json", action="store_true", help="print the final summary as JSON")
    p.set_defaults(func=run)


def train_args(args: argparse.Namespace):
    """The parsed options -> TrainArgs (comma lists parsed; ConfigError for bad input)."""
    from coalora.errors import ConfigError
    from coalora.train import TrainArgs

    def numbers(name: str) -> tuple[float, ...]:
        text = getattr(args, name)
        try:
            return tuple(float(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise ConfigError(f"{flag(name)} {text!r} is not a comma-separated list of numbers") from None

    hints = typing.get_type_hints(TrainArgs)
    values = {f.name: numbers(f.name) if _value_type(f, hints) is tuple else getattr(args, f.name)
              for f in fields(TrainArgs)}
    if len(values["bit_range"]) != 2:
        raise ConfigError(f"--bit-range {args.bit_range!r} must be two numbers lo,hi")
    return TrainArgs(**values)


def run(args: argparse.Namespace) -> int:
    from coalora.train import train

    targs = train_args(args)
    from coalora.data import task_spec

    task_spec(targs.data_task)  # unknown task: a clear error before loading
    import shlex
    import sys

    command = shlex.join(["coalora", *sys.argv[1:]]) if sys.argv and sys.argv[0] else None
    summary = train(targs, resume=args.resume, force=args.force, command=command)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"trained {summary['steps']} steps in {summary['seconds']} s; adapter in {args.out}/checkpoint")
    return 0
