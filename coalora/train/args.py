"""TrainArgs: every option of a training run, validated on construction and saved as run.json."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from coalora.errors import ConfigError

METHODS = ("coalora", "lora", "shared")
RECIPES = ("task", "lm")
PRECISIONS = ("auto", "bf16", "fp32")
DEVICES = ("auto", "cpu", "cuda")  # coalora.device


def _opt(default: Any, help: str, **cli: Any) -> Any:
    """A TrainArgs field: its default and its `coalora train --help` text (metadata "help");
    `cli` holds option details the type does not tell (choices, required)."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass(frozen=True)
class TrainArgs:
    """Options of `coalora train`: each field's metadata["help"] is its --help text and its
    default the option's default (coalora.cli.train builds the options from these fields;
    docs/design.md, "Training")."""

    model: str = _opt("smollm2-135m", "base model: an embedded name, a local model folder or a cached Hugging Face id")
    task: str = _opt("sst2", "task whose train split is used (recipe task)")
    method: str = _opt("coalora", "coalora: one LoRA + θ over a changing set of many configurations (2 per step); "
                       "lora: plain LoRA for ONE fixed --config; shared: plain LoRA over fixed configurations at "
                       "--shared-bits (2 per step)", choices=METHODS)
    out: str = _opt("runs/default", "run folder (refused if it holds another run, unless --resume/--force)",
                    required=True)
    recipe: str = _opt("task", "task: supervised on the task's train split; lm: next-token loss on LAMBADA passages",
                       choices=RECIPES)
    config: str | None = _opt(None, "for --method lora, its one configuration")
    shared_bits: tuple[float, ...] = _opt((2.5, 3.0, 3.5, 4.0), "for --method shared: comma-separated bit budgets "
                                          "of its fixed configurations")
    n_configs: int = _opt(12, "CoA-LoRA's initial training set size (budgets evenly spread over --bit-range)")
    bit_range: tuple[float, float] = _opt((2.5, 7.25), "lo,hi: budgets of CoA-LoRA's initial training set are "
                                          "spread evenly over this range, and the epoch-end search keeps its new "
                                          "training set inside it")
    steps: int = _opt(200, "optimiser steps (the same budget for every method makes a fair comparison)")
    epoch_steps: int = _opt(50, "steps per epoch (search + dev eval after each)")
    batch_size: int = _opt(16, "examples per step and process")
    max_length: int = _opt(128, "tokens per example")
    lr: float = _opt(5e-4, "AdamW learning rate (constant)")
    weight_decay: float = _opt(0.0, "AdamW weight decay")
    rank: int = _opt(16, "LoRA rank r")
    alpha: float = _opt(32.0, "LoRA alpha (scaling alpha / r)")
    dropout: float = _opt(0.0, "dropout on the adapter input")
    theta_hidden: int = _opt(128, "θ's hidden width")
    seed: int = _opt(0, "seed of initialisation, batch order and draws")
    split_seed: int = _opt(0, "seed of the train/dev/test carving")
    precision: str = _opt("auto", "auto: bf16 autocast where the CPU/GPU supports it, else fp32", choices=PRECISIONS)
    device: str = _opt("auto", "where the model trains, placed by accelerate: auto (CUDA when torch sees a GPU, "
                       "else the CPU), cpu, or cuda (fails when no GPU is available); under `accelerate launch` "
                       "each process takes its own GPU", choices=DEVICES)
    save_every: int = _opt(50, "checkpoint every N steps (0: only at the end)")
    search: bool = _opt(True, "CoA-LoRA's training set is replaced by the Pareto configuration search at each "
                        "epoch end; --no-search keeps its initial set (the ablation)")
    search_iterations: int = _opt(2, "GP rounds per epoch end")
    search_batch: int = _opt(4, "configurations proposed per GP round")
    dev_rows: int = _opt(64, "dev rows scoring candidates in the search")
    max_configs: int = _opt(24, "cap on the training set after a search")
    targets: str = _opt("bnb,gguf,torchao", "comma-separated deployment targets whose formats CoA-LoRA and "
                        "Shared-LoRA also train on (each target's uniform training formats and random per-matrix "
                        "mixtures of them, coalora.train.configs.TARGET_TRAIN_FORMATS), so θ learns them; "
                        "'none': coalora's NF-k space only")
    cache_gb: float = _opt(4.0, "memory for cached quantized weights")
    limit_rows: int | None = _opt(None, "use only the first N train rows (smoke runs)")

    @property
    def data_task(self) -> str:
        """The task whose rows the run trains on: lambada for the lm recipe, else --task (this is
        the task the checkpoint records, so its pool, front and app eval use the right data)."""
        return "lambada" if self.recipe == "lm" else self.task

    def __post_init__(self) -> None:
        def bad(name: str, allowed: str) -> None:
            raise ConfigError(f"train option '{name}' has value {getattr(self, name)!r}; allowed: {allowed}")

        if self.method not in METHODS:
            bad("method", ", ".join(METHODS))
        if self.recipe not in RECIPES:
            bad("recipe", ", ".join(RECIPES))
        if self.precision not in PRECISIONS:
            bad("precision", ", ".join(PRECISIONS))
        if self.device not in DEVICES:
            bad("device", ", ".join(DEVICES))
        if self.method == "lora" and not self.config:
            raise ConfigError("method 'lora' trains for one fixed configuration: give --config (a preset or JSON file)")
        for name in ("steps", "epoch_steps", "batch_size", "max_length", "rank", "n_configs", "dev_rows", "max_configs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                bad(name, "an integer >= 1")
        for name in ("save_every", "search_iterations", "seed", "split_seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                bad(name, "an integer >= 0")
        lo, hi = self.bit_range
        if not 2.0 <= lo < hi <= 8.625:
            bad("bit_range", "two numbers lo < hi within the configuration range 2.032 .. 8.625")
        if not self.lr > 0:
            bad("lr", "a number > 0")
        if self.limit_rows is not None and self.limit_rows < 2:
            bad("limit_rows", "an integer >= 2, or unset")
        from coalora.quant.targets import TARGETS

        names = self.target_names
        if not isinstance(self.targets, str) or any(t not in TARGETS for t in names) or len(set(names)) != len(names):
            bad("targets", f"'none' or comma-separated distinct names among {', '.join(TARGETS)}")

    @property
    def target_names(self) -> tuple[str, ...]:
        """--targets as a tuple of target names (() for 'none')."""
        if not isinstance(self.targets, str) or self.targets.strip() in ("", "none"):
            return ()
        return tuple(t.strip() for t in self.targets.split(","))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shared_bits"] = list(self.shared_bits)
        d["bit_range"] = list(self.bit_range)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainArgs":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown train option(s) {', '.join(unknown)}")
        # A run saved before --targets existed trained on the NF-k space only.
        d = {"targets": "none", **dict(d)}
        for key in ("shared_bits", "bit_range"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)

    # Options that may differ when resuming: they do not change what the steps compute
    # (`steps` moves the end: continue a finished run longer, or end an interrupted one early).
    # `device`: a run may continue on another device (bf16 kernels differ slightly between them).
    RESUMABLE_CHANGES = ("save_every", "out", "cache_gb", "steps", "device")
