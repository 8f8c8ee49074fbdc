"""The coalora app (Hugging Face Spaces entry point; `make app`).

Environment: GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (default 127.0.0.1:7860; set
GRADIO_SERVER_NAME=0.0.0.0 on Spaces), COALORA_CHECKPOINT (default "default" =
assets/checkpoints/default), COALORA_FRONT (default assets/front/default.json),
COALORA_POOL (evaluated configurations for the GP; default: the checkpoint's pool.json).
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main() -> None:
    from ui.engine import Engine
    from ui.layout import build_app

    engine = Engine.load()
    build_app(engine).queue(default_concurrency_limit=1).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        max_file_size="2mb", show_error=True, footer_links=["api"],
    )


if __name__ == "__main__":
    main()
