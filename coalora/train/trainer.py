"""The training loop of CoA-LoRA and its baselines, on accelerate.

One step (docs/design.md, "Training"): one mini-batch; the configurations of the step (2 distinct
ones drawn from the current training set for coalora and shared, the fixed one for lora);
forward + backward of the same batch under each (gradients summed); clip to 1.0; AdamW.
At each epoch end (every `epoch_steps` steps) CoA-LoRA may replace its training set by the
Pareto search (coalora.search), scored on a fixed batch of the dev split.

Everything random is a function of (seed, step): the batch order of an epoch, the
configurations drawn, dropout. So `--resume` continues exactly, and every process of a
multi-process run draws the same configurations while taking its own slice of the batch.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from coalora.errors import ConfigError, OutputExistsError
from coalora.space import TargetConfiguration
from coalora.train.args import TrainArgs
from coalora.train.examples import Example, collate, lm_examples, pad_id_of, task_examples
from coalora.train.objective import dev_losses, masked_loss

RUN_FILE = "run.json"
LOG_FILE = "log.jsonl"


def _precision(args: TrainArgs, device: torch.device) -> str:
    if args.precision == "fp32":
        return "no"
    if args.precision == "bf16":
        return "bf16"
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    from coalora.eval.scoring import cpu_has_bf16

    return "bf16" if cpu_has_bf16() else "no"


def prepare_out(args: TrainArgs, resume: bool, force: bool) -> Path:
    """Create or check the run folder: refuse one holding another run unless resume/force."""
    import shutil

    out = Path(args.out)
    run_file = out / RUN_FILE
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output path {str(out)!r} exists and is not a folder")
    if run_file.exists():
        if resume:
            run_doc = read_run_file(run_file)
            if run_doc is None:  # another tool's run.json: comparing options would mislead
                raise ConfigError(f"{str(out)!r} is not a coalora run folder ({RUN_FILE} was not written by "
                                  "`coalora train`); nothing to resume")
            old = run_doc["args"]
            new = args.to_dict()
            diff = sorted(k for k in new if k not in TrainArgs.RESUMABLE_CHANGES and old.get(k) != new[k])
            if diff:
                raise ConfigError(
                    f"--resume with options that differ from the run in {str(out)!r}: "
                    + ", ".join(f"{k} ({old.get(k)!r} -> {new[k]!r})" for k in diff)
                )
            return out
        if not force:
            raise OutputExistsError(
                f"{str(out)!r} already holds a training run; pass --resume to continue it or --force to replace it"
            )
        shutil.rmtree(out)
    elif resume:
        raise ConfigError(f"nothing to resume: {str(out)!r} holds no run ({RUN_FILE} missing)")
    elif out.exists() and any(out.iterdir()) and not force:
        raise OutputExistsError(f"{str(out)!r} is not empty and holds no run; choose another --out or pass --force")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise OutputExistsError(f"cannot write to output folder {str(out)!r}: {e.strerror or e}") from None
    return out


def read_run_file(path: Path) -> dict[str, Any] | None:
    """The run.json of a coalora run, or None when `path` holds something else (another
    tool's JSON, text that is not JSON): {"args": {...}, "recipe": {...}, ...}."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not (isinstance(doc, dict) and isinstance(doc.get("args"), dict) and isinstance(doc.get("recipe"), dict)):
        return None
    return doc if "method" in doc["args"] else None


def _examples(args: TrainArgs, tokenizer: Any, part: str) -> tuple[list[Example], dict[str, Any]]:
    from coalora.data import load_split

    split = load_split(args.data_task, part, args.split_seed)
    if args.limit_rows is not None and part == "train":
        split = split.head(min(args.limit_rows, len(split)))
    maker = lm_examples if args.recipe == "lm" else task_examples
    return maker(split, tokenizer, args.max_length), split.manifest


def _draw(step_seed: int, pool_size: int, k: int) -> list[int]:
    g = torch.Generator().manual_seed(step_seed)
    return torch.randperm(pool_size, generator=g)[: min(k, pool_size)].tolist()


def _batch_indices(args: TrainArgs, n_examples: int, step: int, world: int, rank: int) -> list[int]:
    """This process's slice of the global batch of `step` (an epoch = one seeded permutation)."""
    global_bs = args.batch_size * world
    per_epoch = max(1, n_examples // global_bs)
    epoch, pos = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(args.seed * 100_003 + epoch)
    perm = torch.randperm(n_examples, generator=g)
    start = pos * global_bs + rank * args.batch_size
    return perm[start : start + args.batch_size].tolist()


def _log(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def trim_log(path: Path, step: int) -> int:
    """Drop the records of `path` after `step` (and a torn last line), so that a resumed run,
    which continues after `step`, does not log the steps it repeats twice. -> lines dropped."""
    if not path.exists():
        return 0
    from coalora.io import atomic_write_text

    lines = path.read_text().splitlines()
    keep = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # torn by the kill
        if isinstance(record, dict) and record.get("step", 0) <= step:
            keep.append(line)
    if len(keep) != len(lines):
        atomic_write_text(path, "".join(line + "\n" for line in keep))
    return len(lines) - len(keep)


@dataclass
class TrainRun:
    """Everything the phases of one run share (built by `setup`, advanced by `fit`).

    inner is the unwrapped CoaLoraModel, ddp_model the same model as accelerate prepared it
    (DDP in multi-process runs). dev_batch: input_ids / attention_mask / labels, each
    (dev_rows, T), on the run's device. step, train_set and history change as `fit` runs."""

    args: TrainArgs
    accel: Any
    out: Path
    space: Any
    inner: Any
    ddp_model: Any
    optimizer: torch.optim.Optimizer
    examples: list[Example]
    pad: int
    dev_batch: dict[str, torch.Tensor]
    recipe: dict[str, Any]
    train_set: list
    t_start: float
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def main(self) -> bool:
        return self.accel.is_main_process

    @property
    def log_path(self) -> Path:
        return self.out / LOG_FILE

    def seconds(self) -> float:
        return round(time.time() - self.t_start, 1)

    def metadata(self) -> dict[str, Any]:
        """The checkpoint metadata of the run at its current step."""
        return {"training": {**self.recipe, "seed": self.args.seed, "args": self.args.to_dict(), "step": self.step,
                             "train_set": [c.to_dict() for c in self.train_set], "seconds": self.seconds()}}


def train(args: TrainArgs, resume: bool = False, force: bool = False, progress: bool = True,
          stop_after: int | None = None, on_step: Callable[[int, float], None] | None = None,
          command: str | None = None) -> dict[str, Any]:
    """Run (or resume) a training run into `args.out`. -> summary dict (also in run.json).

    command: the command line that started the run, recorded in run.json and the checkpoint.

    stop_after: return {"stopped_at": step} after this many steps of this call (a deliberate
    interruption, used by the resume test); the state at that point is saved as at a normal
    checkpoint.
    """
    run = setup(args, resume, force, command)
    if not fit(run, progress, stop_after, on_step):
        return {"stopped_at": run.step}
    return finish(run)


def setup(args: TrainArgs, resume: bool = False, force: bool = False, command: str | None = None) -> TrainRun:
    """The run before its first step: run folder, model + adapter, training set, data,
    optimizer, and on --resume the saved state (log trimmed to it). -> TrainRun."""
    from accelerate import Accelerator

    from coalora.lora import CoaLoraModel, LoraSpec
    from coalora.models import load_model
    from coalora.space import ConfigSpace

    from coalora.device import resolve_device

    # The device goes through accelerate (it moves the model in `prepare`; under `accelerate
    # launch` each process gets its own GPU); --device cuda without a GPU fails here, in one line.
    device = resolve_device(args.device)
    accel = Accelerator(cpu=device.type == "cpu", mixed_precision=_precision(args, device))
    main = accel.is_main_process
    out = prepare_out(args, resume, force) if main else Path(args.out)
    accel.wait_for_everyone()
    t_start = time.time()

    model, tokenizer = load_model(args.model, quiet=not main)
    space = ConfigSpace.from_model(model, args.model)
    spec = LoraSpec(rank=args.rank, alpha=args.alpha, dropout=args.dropout, use_theta=args.method == "coalora",
                    theta_hidden=args.theta_hidden, seed=args.seed)
    train_set, source = initial_train_set(args, space, model)
    cmodel = CoaLoraModel(model, space, spec, cache_bytes=int(args.cache_gb * 2**30))
    examples, manifest = _examples(args, tokenizer, "train")
    dev_examples, dev_manifest = _examples(args, tokenizer, "dev")
    if len(examples) < args.batch_size * accel.num_processes:
        raise ConfigError(f"{len(examples)} training examples are fewer than one global batch "
                          f"({args.batch_size} x {accel.num_processes} processes)")
    pad = pad_id_of(tokenizer)
    dev_batch = collate(dev_examples[: args.dev_rows], pad)

    optimizer = torch.optim.AdamW(cmodel.trainable_parameters(), lr=args.lr, weight_decay=args.weight_decay)
    ddp_model, optimizer = accel.prepare(cmodel, optimizer)
    inner = accel.unwrap_model(ddp_model)
    inner.train()
    dev_batch = {k: v.to(accel.device) for k, v in dev_batch.items()}

    recipe = {"method": args.method, "recipe": args.recipe, "task": args.data_task, "steps": args.steps,
              "batch_size": args.batch_size, "processes": accel.num_processes, "lr": args.lr,
              "precision": accel.mixed_precision, "train_set_source": source,
              "train_split": manifest, "dev_split": dev_manifest, "command": command}
    run = TrainRun(args, accel, out, space, inner, ddp_model, optimizer, examples, pad, dev_batch, recipe,
                   train_set, t_start)
    if resume and (out / "state").exists():
        _restore(run)
    elif main:
        from coalora.io import atomic_write_text
        from coalora.version import code_version

        atomic_write_text(out / RUN_FILE, json.dumps({"args": args.to_dict(), "code_version": code_version(),
                                                      "recipe": recipe}, indent=1) + "\n")
    if resume and main:
        trim_log(run.log_path, run.step)  # the log ends where the checkpoint does
    return run


def initial_train_set(args: TrainArgs, space: Any, model: torch.nn.Module) -> tuple[list, str]:
    """The configurations of the first epoch and where they came from (-> (configs, source)):
    --config for lora, the allocator at --shared-bits for shared, budgets spread over
    --bit-range for coalora; for both of those, plus the --targets' training configurations.
    Fixed sets come from the ILP on the unwrapped model's weights."""
    from coalora.train.configs import configs_at_bits, spread_configs, target_train_configs

    if args.method == "lora":
        return [space.load(args.config)], "fixed (--config)"
    if args.method == "shared":
        configs, source = configs_at_bits(space, args.shared_bits, model, args.seed)
    else:
        configs, source = spread_configs(space, args.n_configs, model, args.seed, args.bit_range)
    if args.target_names:
        targets = target_train_configs(space, args.target_names, seed=args.seed)
        configs, source = configs + targets, f"{source} + {len(targets)} of targets {', '.join(args.target_names)}"
    return configs, source


def _restore(run: TrainRun) -> None:
    """Load the saved state into `run`: adapter, optimizer, step, training set, history."""
    from coalora.train.state import load_state

    tr = load_state(run.out / "state", run.inner, run.optimizer)
    run.step = tr["step"]
    run.train_set = [run.space.from_dict(c) for c in tr["train_set"]]
    run.history = tr.get("history", [])
    run.t_start -= tr.get("seconds", 0.0)  # time taken counts every session of the run


def checkpoint(run: TrainRun) -> None:
    """Save the resumable state (main process), then wait for every process."""
    from coalora.train.state import save_state

    if run.main:
        save_state(run.out / "state", run.inner, run.optimizer,
                   {"step": run.step, "train_set": [c.to_dict() for c in run.train_set], "history": run.history,
                    "seconds": run.seconds()}, run.metadata())
    run.accel.wait_for_everyone()


def fit(run: TrainRun, progress: bool = True, stop_after: int | None = None,
        on_step: Callable[[int, float], None] | None = None) -> bool:
    """Steps from run.step to args.steps, validating at each epoch end and checkpointing
    every --save-every steps. -> True when the run reached args.steps, False when it
    stopped early after `stop_after` steps (its state saved)."""
    args = run.args
    bar = None
    if progress and run.main:
        from tqdm import tqdm

        bar = tqdm(total=args.steps, initial=run.step, desc=f"train {args.method}", unit="step", dynamic_ncols=True)
    done_here = 0
    try:
        while run.step < args.steps:
            chosen, losses, grad_norm = train_step(run)
            run.step += 1
            done_here += 1
            mean_loss = sum(losses) / len(losses)
            if run.main:
                _log(run.log_path, {"step": run.step, "loss": mean_loss, "losses": losses, "grad_norm": grad_norm,
                                    "configs": [c.hash for c in chosen],
                                    "avg_bits": [round(c.avg_bits, 4) for c in chosen],
                                    "time": round(time.time() - run.t_start, 2)})
            if bar is not None:
                bar.set_postfix(loss=f"{mean_loss:.4f}")
                bar.update(1)
            if on_step is not None:
                on_step(run.step, mean_loss)
            if run.step % args.epoch_steps == 0 or run.step == args.steps:
                validate(run)
            stopping = stop_after is not None and done_here >= stop_after
            if (args.save_every and run.step % args.save_every == 0) or stopping:
                checkpoint(run)
            if stopping and run.step < args.steps:
                return False
    finally:
        if bar is not None:
            bar.close()
    return True


def train_step(run: TrainRun) -> tuple[list, list[float], float]:
    """One optimiser step at run.step (does not advance it): this process's slice of the
    step's batch, forward + backward under each drawn configuration (gradients summed),
    clip to 1.0, AdamW. -> (configurations, loss under each, gradient norm before clipping)."""
    args, accel, inner = run.args, run.accel, run.inner
    torch.manual_seed(args.seed * 1_000_003 + run.step)  # dropout of this step
    idx = _batch_indices(args, len(run.examples), run.step, accel.num_processes, accel.process_index)
    batch = {k: v.to(accel.device) for k, v in collate([run.examples[i] for i in idx], run.pad).items()}  # (B, T)
    per_config = 1 if args.method == "lora" else 2
    chosen = [run.train_set[i] for i in _draw(args.seed * 7919 + run.step, len(run.train_set), per_config)]
    losses = []
    for j, config in enumerate(chosen):
        inner.set_configuration(config, train=True)
        # Only the last backward syncs gradients across processes.
        sync = accel.no_sync(run.ddp_model) if j < len(chosen) - 1 else contextlib.nullcontext()
        with sync:
            loss = masked_loss(run.ddp_model, batch)
            accel.backward(loss)  # gradients of the configurations add up
        losses.append(float(loss.detach()))
    grad_norm = accel.clip_grad_norm_(inner.trainable_parameters(), 1.0)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return chosen, losses, float(grad_norm)


def validate(run: TrainRun) -> None:
    """Epoch end: dev losses appended to run.history, then (coalora with --search, before the
    last step) the search replaces run.train_set. Leaves the model in training mode."""
    args = run.args
    run.history.append(_epoch_end(run))
    if args.method == "coalora" and args.search and run.step < args.steps:
        # The search moves the NF-k part of the set; the targets' configurations stay.
        kept = [c for c in run.train_set if isinstance(c, TargetConfiguration)]
        run.train_set = _search(run) + kept
    run.inner.train()


def finish(run: TrainRun) -> dict[str, Any]:
    """The end of a finished run: final state, OUT/checkpoint/ and the summary in run.json.
    -> the summary (steps, seconds, train_set_size, params_in_sync, history)."""
    from coalora.io import atomic_write_text
    from coalora.lora import save_checkpoint

    checkpoint(run)
    summary = {"steps": run.step, "seconds": run.seconds(), "train_set_size": len(run.train_set),
               "params_in_sync": _params_in_sync(run.accel, run.inner), "history": run.history}
    if run.main:
        save_checkpoint(run.inner, run.out / "checkpoint", {**run.metadata(), "summary": summary})
        doc = json.loads((run.out / RUN_FILE).read_text())
        doc["summary"] = summary
        atomic_write_text(run.out / RUN_FILE, json.dumps(doc, indent=1) + "\n")
    run.accel.wait_for_everyone()
    return summary


def _epoch_end(run: TrainRun) -> dict[str, Any]:
    """Dev loss at the cheapest, middle and richest configurations of the training set.
    -> the logged record {"step", "event": "epoch_end", "dev_loss": {avg_bits: loss}}."""
    run.inner.eval()
    ordered = sorted(run.train_set, key=lambda c: c.avg_bits)
    probe = list(dict.fromkeys([ordered[0], ordered[len(ordered) // 2], ordered[-1]]))
    losses = dev_losses(run.inner, probe, run.dev_batch)
    rec = {"step": run.step, "event": "epoch_end",
           "dev_loss": dict(zip([f"{c.avg_bits:.3f}" for c in probe], losses))}
    if run.main:
        _log(run.log_path, rec)
    return rec


def within_bit_range(configs: list, bit_range: tuple[float, float], tol: float = 1e-3) -> list:
    """The configurations whose avg_bits lie in [lo, hi], up to `tol` bit: the allocator's
    configuration for a budget lies just under it (2.4999990 bits for 2.5), and the range's
    own end points must stay in."""
    lo, hi = bit_range
    return [c for c in configs if lo - tol <= c.avg_bits <= hi + tol]


def _search(run: TrainRun) -> list:
    """The next training set: the segmented Pareto set of a short GP search whose f1 is the
    dev loss (docs/design.md, "Search"), kept inside --bit-range. -> the same list on every
    process."""
    from accelerate.utils import broadcast_object_list

    from coalora.search.loop import search

    args, inner, train_set, dev_batch, step, space = run.args, run.inner, run.train_set, run.dev_batch, run.step, run.space
    inner.eval()
    t0 = time.time()
    payload: list[Any] = [None]
    if run.main:  # one process searches; the others receive its choice (identical training sets)
        nf_set = [c for c in train_set if not isinstance(c, TargetConfiguration)]  # the GP's space is NF-k
        result = search(lambda cs: dev_losses(inner, cs, dev_batch), space, initial=nf_set,
                        iterations=args.search_iterations, batch_size=args.search_batch, seed=args.seed + step)
        # Only configurations inside --bit-range: below it SmolLM2 is destroyed (losses of 10-20
        # nats that swamp the summed gradients; the comparison's search run picked a 2.37-bit one).
        selected = within_bit_range(result.selected, args.bit_range)
        if len(selected) > args.max_configs:  # keep the spread: evenly spaced by avg_bits
            selected = sorted(selected, key=lambda c: c.avg_bits)
            keep = torch.linspace(0, len(selected) - 1, args.max_configs).round().long().unique().tolist()
            selected = [selected[i] for i in keep]
        if len(selected) < 2:
            selected = nf_set  # a degenerate search must not shrink training to one configuration
        _log(run.log_path, {"step": step, "event": "search", "pool": len(result.pool), "selected": len(selected),
                        "seconds": round(time.time() - t0, 1),
                        "selected_bits": sorted(round(c.avg_bits, 3) for c in selected)})
        payload = [[c.encode().tolist() for c in selected]]
    broadcast_object_list(payload, from_process=0)
    return [space.decode(e) for e in payload[0]]


def _params_in_sync(accel, inner) -> bool:
    """True when every process holds the same trainable parameters (checksum gathered)."""
    s = torch.stack([p.detach().double().sum() for p in inner.trainable_parameters()]).sum().reshape(1)
    gathered = accel.gather(s.to(accel.device))
    return bool(torch.allclose(gathered, gathered[0].expand_as(gathered), rtol=0, atol=0))
