"""`coalora export`: one configuration of a trained checkpoint as a standard peft adapter."""

from __future__ import annotations

import argparse

from coalora.cli.common import check_new_folder, config_help


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write a peft LoRA adapter folder for one quantization configuration",
        description=(
            "Fold θ's adjustment for CONFIG into the adapter (B' = B (I + U)) and write a standard "
            "peft LoRA folder: adapter_config.json, adapter_model.safetensors, configuration.json "
            "and a README saying how to load it. The adapter is meant for the base model quantized "
            "by coalora under the same configuration."
        ),
    )
    p.add_argument("--checkpoint", default="default",
                   help="checkpoint folder written by `coalora train` (default: the bundled 'default')")
    p.add_argument("--config", required=True, help=config_help())
    p.add_argument("--out", required=True, help="output folder (refused if it exists, unless --force)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from coalora.export import export_peft
    from coalora.lora.checkpoint import load_checkpoint, read_metadata
    from coalora.models import build_space_for

    # Cheap checks first: refuse before loading any model.
    out = check_new_folder(args.out, "--out", force=args.force)
    _, meta = read_metadata(args.checkpoint)
    build_space_for(meta["base_model"]["name"]).load(args.config)  # weights not needed to reject a bad config
    model, _, meta = load_checkpoint(args.checkpoint, quiet=False)
    config = model.space.load(args.config)
    export_peft(model, config, out, force=args.force)
    print(f"wrote {out}: peft LoRA adapter (rank {model.spec.rank}) for configuration {config.hash} "
          f"({config.avg_bits:.3f} bits) of {model.space.model_name}; see {out / 'README.md'}")
    return 0
