"""The coalora app (Hugging Face Spaces entry point; `make app`).

Environment: GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (default 127.0.0.1:7860; set
GRADIO_SERVER_NAME=0.0.0.0 on Spaces), COALORA_CHECKPOINT (default "default" =
assets/checkpoints/default), COALORA_FRONT (default assets/front/default.json),
COALORA_POOL (evaluated configurations for the GP; default: the checkpoint's pool.json).

`python app.py --write-baselines` measures the baselines the plot shows (the quantized base
without adapter at nf2/3/4/8, quick eval) and writes them to assets/front/baselines.json
(or the given path) as result records, then exits; the app then reads them at start.
"""

import argparse
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="The coalora app (see docs/app.md).")
    ap.add_argument("--write-baselines", nargs="?", const="", default=None, metavar="PATH",
                    help="measure the baselines (base without adapter at nf2/3/4/8, quick eval), write them "
                         "as result records to PATH (default assets/front/baselines.json) and exit")
    args = ap.parse_args(argv)

    from ui.engine import Engine
    from ui.layout import build_app

    engine = Engine.load()
    if args.write_baselines is not None:
        path, recs = engine.write_baselines(args.write_baselines or None)
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
