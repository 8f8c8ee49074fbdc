"""The coalora app (Hugging Face Spaces entry point; `make app`).

Environment: GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (default 127.0.0.1:7860; set
GRADIO_SERVER_NAME=0.0.0.0 on Spaces), COALORA_CHECKPOINT (default "default" =
assets/checkpoints/default), COALORA_FRONT (default assets/front/default.json),
COALORA_POOL (evaluated configurations for the GP; default: the checkpoint's pool.json),
COALORA_OBSERVATIONS (the app's evaluations, kept as GP observations across restarts;
default $COALORA_CACHE/app/observations.jsonl).

`python app.py --write-baselines` measures the baselines the plot shows (the quantized base
without adapter at nf2/3/4/8, quick eval) and writes them to assets/front/baselines.json
(or the given path) as result records, then exits; the app then reads them at start.
"""

import argparse
import os
import sys
from typing import Mapping

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def load_engine(env: Mapping[str, str]):
    """The app's engine from the environment (the only place it is read). A missing DEFAULT
    checkpoint is not fatal: the app then evaluates the quantized base and says so; any other
    checkpoint must exist."""
    from pathlib import Path

    from coalora.errors import CheckpointError
    from coalora.lora import read_metadata
    from coalora.models import cache_dir
    from ui.engine import DEFAULT_FRONT, Engine

    checkpoint = env.get("COALORA_CHECKPOINT", "default")
    notices = []
    try:
        read_metadata(checkpoint)
    except CheckpointError as e:
        if checkpoint != "default":
            raise
        notices.append(f"No trained adapter is loaded ({e}): the app evaluates the quantized base model only, "
                       "without any adapter.")
        checkpoint = None
    front = Path(env["COALORA_FRONT"]) if env.get("COALORA_FRONT") else DEFAULT_FRONT
    pools = [Path(env["COALORA_POOL"])] if env.get("COALORA_POOL") else None  # None: the checkpoint's, then the shipped one
    # Every evaluation made in the app becomes a GP observation, kept across restarts.
    observations = Path(env.get("COALORA_OBSERVATIONS") or cache_dir() / "app" / "observations.jsonl")
    return Engine.load(checkpoint, front_path=front, pool_paths=pools, observations=observations,
                       notices=tuple(notices))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="The coalora app (see docs/app.md).")
    ap.add_argument("--write-baselines", nargs="?", const="", default=None, metavar="PATH",
                    help="measure the baselines (base without adapter at nf2/3/4/8, quick eval), write them "
                         "as result records to PATH (default assets/front/baselines.json) and exit")
    args = ap.parse_args(argv)

    if "GRADIO_TEMP_DIR" not in os.environ:  # gradio's cache inside our process folder: gone at exit
        from coalora.tmp import process_tmp

        os.environ["GRADIO_TEMP_DIR"] = str(process_tmp() / "gradio")
    from ui.layout import build_app

    engine = load_engine(os.environ)
    if args.write_baselines is not None:
        from coalora.results import write_records
        from ui.engine import DEFAULT_BASELINES

        recs = engine.measure_baselines()
        path = write_records(args.write_baselines or engine.baselines_path or DEFAULT_BASELINES, recs)
        for r in recs:
            print(f"{r.config_path}: {r.avg_bits:.3f} bits, {r.metric} {r.value:.4f} ± {r.stderr:.4f} "
                  f"(n={r.n}, {r.dtype}, {r.seconds:.1f} s)", file=sys.stderr)
        print(path)
        return
    build_app(engine).queue(default_concurrency_limit=1).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        max_file_size="2mb", show_error=True, footer_links=["api"],
    )


if __name__ == "__main__":
    main()
