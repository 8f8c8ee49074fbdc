"""The training loop of CoA-LoRA and its baselines, on accelerate.

One step (method.md section 4): one mini-batch; the configurations of the step (2 distinct
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
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch

from coalora.errors import CoaloraError, ConfigError, OutputExistsError
from coalora.train.args import TrainArgs
from coalora.train.examples import Example, collate, lm_examples, pad_id_of, task_examples
from coalora.train.objective import dev_losses, masked_loss

RUN_FILE = "run.json"
LOG_FILE = "log.jsonl"


def _precision(args: TrainArgs) -> str:
    if args.precision == "fp32":
        return "no"
    if args.precision == "bf16":
        return "bf16"
    if torch.cuda.is_available():
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
            old = json.loads(run_file.read_text()).get("args", {})
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


def _examples(args: TrainArgs, tokenizer: Any, part: str) -> tuple[list[Example], dict[str, Any]]:
    from coalora.data import load_split

    task = "lambada" if args.recipe == "lm" else args.task
    split = load_split(task, part, args.split_seed)
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


def train(args: TrainArgs, resume: bool = False, force: bool = False, progress: bool = True,
          stop_after: int | None = None, on_step: Callable[[int, float], None] | None = None,
          command: str | None = None) -> dict[str, Any]:
    """Run (or resume) a training run into `args.out`. -> summary dict (also in run.json).

    command: the command line that started the run, recorded in run.json and the checkpoint.

    stop_after: return after this many steps of this call (a deliberate interruption, used
    by the resume test); the state at that point is saved as at a normal checkpoint.
    """
    from accelerate import Accelerator

    from coalora.lora import CoaLoraModel, LoraSpec, save_checkpoint
    from coalora.models import load_model
    from coalora.space import ConfigSpace
    from coalora.train.configs import configs_at_bits, spread_configs
    from coalora.train.state import load_state, save_state
    from coalora.version import code_version

    accel = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=_precision(args))
    main = accel.is_main_process
    out = prepare_out(args, resume, force) if main else Path(args.out)
    accel.wait_for_everyone()
    t_start = time.time()

    model, tokenizer = load_model(args.model, quiet=not main)
    space = ConfigSpace.from_model(model, args.model)
    spec = LoraSpec(rank=args.rank, alpha=args.alpha, dropout=args.dropout, use_theta=args.method == "coalora",
                    theta_hidden=args.theta_hidden, seed=args.seed)
    # Fixed configuration sets come from the ILP on the unwrapped model's weights.
    if args.method == "lora":
        train_set, source = [space.load(args.config)], "fixed (--config)"
    elif args.method == "shared":
        train_set, source = configs_at_bits(space, args.shared_bits, model, args.seed)
    else:
        train_set, source = spread_configs(space, args.n_configs, model, args.seed, args.bit_range)
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
    inner: CoaLoraModel = accel.unwrap_model(ddp_model)
    inner.train()
    dev_batch = {k: v.to(accel.device) for k, v in dev_batch.items()}

    recipe = {"method": args.method, "recipe": args.recipe, "task": args.task, "steps": args.steps,
              "batch_size": args.batch_size, "processes": accel.num_processes, "lr": args.lr,
              "precision": accel.mixed_precision, "train_set_source": source,
              "train_split": manifest, "dev_split": dev_manifest, "command": command}
    step, history = 0, []
    if resume and (out / "state").exists():
        tr = load_state(out / "state", inner, optimizer)
        step = tr["step"]
        train_set = [space.from_dict(c) for c in tr["train_set"]]
        history = tr.get("history", [])
        t_start -= tr.get("seconds", 0.0)  # time taken counts every session of the run
    elif main:
        from coalora.io import atomic_write_text

        atomic_write_text(out / RUN_FILE, json.dumps({"args": args.to_dict(), "code_version": code_version(),
                                                      "recipe": recipe}, indent=1) + "\n")

    def metadata() -> dict[str, Any]:
        return {"training": {**recipe, "seed": args.seed, "args": args.to_dict(), "step": step,
                             "train_set": [c.to_dict() for c in train_set],
                             "seconds": round(time.time() - t_start, 1)}}

    def checkpoint_now() -> None:
        if main:
            save_state(out / "state", inner, optimizer,
                       {"step": step, "train_set": [c.to_dict() for c in train_set], "history": history,
                        "seconds": round(time.time() - t_start, 1)}, metadata())
        accel.wait_for_everyone()

    per_config = 1 if args.method == "lora" else 2
    bar = None
    if progress and main:
        from tqdm import tqdm

        bar = tqdm(total=args.steps, initial=step, desc=f"train {args.method}", unit="step", dynamic_ncols=True)
    log_path = out / LOG_FILE
    done_here = 0
    while step < args.steps:
        torch.manual_seed(args.seed * 1_000_003 + step)  # dropout of this step
        idx = _batch_indices(args, len(examples), step, accel.num_processes, accel.process_index)
        batch = {k: v.to(accel.device) for k, v in collate([examples[i] for i in idx], pad).items()}
        chosen = [train_set[i] for i in _draw(args.seed * 7919 + step, len(train_set), per_config)]
        losses = []
        for j, config in enumerate(chosen):
            inner.set_configuration(config, train=True)
            sync = accel.no_sync(ddp_model) if j < len(chosen) - 1 else contextlib.nullcontext()
            with sync:
                loss = masked_loss(ddp_model, batch)
                accel.backward(loss)  # gradients of the configurations add up
            losses.append(float(loss.detach()))
        grad_norm = accel.clip_grad_norm_(inner.trainable_parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        done_here += 1
        mean_loss = sum(losses) / len(losses)
        if main:
            _log(log_path, {"step": step, "loss": mean_loss, "losses": losses, "grad_norm": float(grad_norm),
                            "configs": [c.hash for c in chosen], "avg_bits": [round(c.avg_bits, 4) for c in chosen],
                            "time": round(time.time() - t_start, 2)})
        if bar is not None:
            bar.set_postfix(loss=f"{mean_loss:.4f}")
            bar.update(1)
        if on_step is not None:
            on_step(step, mean_loss)
        if step % args.epoch_steps == 0 or step == args.steps:
            history.append(_epoch_end(inner, train_set, dev_batch, step, main, log_path))
            if args.method == "coalora" and args.search and step < args.steps:
                train_set = _search(args, inner, train_set, dev_batch, step, main, log_path, space)
            inner.train()
        if (args.save_every and step % args.save_every == 0) or (stop_after is not None and done_here >= stop_after):
            checkpoint_now()
        if stop_after is not None and done_here >= stop_after and step < args.steps:
            if bar is not None:
                bar.close()
            return {"stopped_at": step}
    if bar is not None:
        bar.close()
    checkpoint_now()
    summary = {"steps": step, "seconds": round(time.time() - t_start, 1), "train_set_size": len(train_set),
               "params_in_sync": _params_in_sync(accel, inner), "history": history}
    if main:
        save_checkpoint(inner, out / "checkpoint", {**metadata(), "summary": summary})
        from coalora.io import atomic_write_text

        doc = json.loads((out / RUN_FILE).read_text())
        doc["summary"] = summary
        atomic_write_text(out / RUN_FILE, json.dumps(doc, indent=1) + "\n")
    accel.wait_for_everyone()
    return summary


def _epoch_end(inner, train_set, dev_batch, step, main, log_path) -> dict[str, Any]:
    """Dev loss at the cheapest, middle and richest configurations of the training set."""
    inner.eval()
    ordered = sorted(train_set, key=lambda c: c.avg_bits)
    probe = list(dict.fromkeys([ordered[0], ordered[len(ordered) // 2], ordered[-1]]))
    losses = dev_losses(inner, probe, dev_batch)
    rec = {"step": step, "event": "epoch_end", "dev_loss": dict(zip([f"{c.avg_bits:.3f}" for c in probe], losses))}
    if main:
        _log(log_path, rec)
    return rec


def within_bit_range(configs: list, bit_range: tuple[float, float], tol: float = 1e-3) -> list:
    """The configurations whose avg_bits lie in [lo, hi], up to `tol` bit: the allocator's
    configuration for a budget lies just under it (2.4999990 bits for 2.5), and the range's
    own end points must stay in."""
    lo, hi = bit_range
    return [c for c in configs if lo - tol <= c.avg_bits <= hi + tol]


def _search(args, inner, train_set, dev_batch, step, main, log_path, space) -> list:
    """Replace the training set by the segmented Pareto set of a short GP search (method.md 5)."""
    from accelerate.utils import broadcast_object_list

    from coalora.search.loop import search

    inner.eval()
    t0 = time.time()
    payload: list[Any] = [None]
    if main:  # one process searches; the others receive its choice (identical training sets)
        result = search(lambda cs: dev_losses(inner, cs, dev_batch), space, initial=train_set,
                        iterations=args.search_iterations, batch_size=args.search_batch, seed=args.seed + step)
        # Only configurations inside --bit-range: below it SmolLM2 is destroyed (losses of 10-20
        # nats that swamp the summed gradients; the comparison's search run picked a 2.37-bit one).
        selected = within_bit_range(result.selected, args.bit_range)
        if len(selected) > args.max_configs:  # keep the spread: evenly spaced by avg_bits
            selected = sorted(selected, key=lambda c: c.avg_bits)
            keep = torch.linspace(0, len(selected) - 1, args.max_configs).round().long().unique().tolist()
            selected = [selected[i] for i in keep]
        if len(selected) < 2:
            selected = train_set  # a degenerate search must not shrink training to one configuration
        _log(log_path, {"step": step, "event": "search", "pool": len(result.pool), "selected": len(selected),
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
