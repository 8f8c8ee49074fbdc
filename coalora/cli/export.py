"""`coalora export`: one configuration of a trained checkpoint, in the files a runtime loads."""

from __future__ import annotations

import argparse

from coalora.cli.common import check_new_folder, config_help

TARGET_HELP = (
    "what to write (docs/deploy.md): peft = the adapter for coalora's simulated base (default); "
    "bnb = base + per-module bitsandbytes loader + peft adapter (needs a bnb configuration, e.g. "
    "bnb:nf4); gguf = base.gguf + adapter.gguf for llama.cpp + a llama-quantize recipe (needs a gguf "
    "configuration, e.g. gguf:Q4_0); torchao = base + torchao FqnToConfig recipe + loader + peft adapter "
    "(needs a torchao configuration, e.g. torchao:int4-g32)"
)


def add_target_args(p: argparse.ArgumentParser) -> None:
    """--checkpoint, --config, --model, --target and --gguf-base, shared with `coalora verify`."""
    from coalora.cli.common import add_model_arg
    from coalora.deploy import EXPORT_TARGETS

    p.add_argument("--checkpoint", default="default",
                   help="checkpoint folder written by `coalora train`, or a shipped one by name (default: the "
                        "bundled 'default'; 'lm': the LAMBADA next-token one)")
    p.add_argument("--config", required=True, help=config_help())
    add_model_arg(p, checkpoint="required")

    p.add_argument("--target", default="peft", choices=EXPORT_TARGETS, help=TARGET_HELP)
    p.add_argument("--gguf-base", default=None, metavar="FILE",
                   help="--target gguf: a GGUF of the base model to copy metadata, tokenizer and the "
                        "other tensors from (default: the embedded model's own GGUF)")


def check_target_config(args: argparse.Namespace) -> None:
    """Refuse a bad --config for --target from the checkpoint's metadata and the base's
    config alone, before any weight is loaded."""
    from coalora.deploy import check_export_target
    from coalora.lora.checkpoint import checkpoint_space, read_metadata

    folder, meta = read_metadata(args.checkpoint)
    check_export_target(args.target, checkpoint_space(folder, meta, args.model).load(args.config))


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write one quantization configuration in the files a runtime loads (peft, bnb, gguf, torchao)",
        description=(
            "Fold θ's adjustment for CONFIG into the adapter (B' = B (I + U)) and write it for a runtime. "
            "--target peft: a standard peft LoRA folder for the base quantized by coalora. --target bnb / "
            "gguf / torchao: what transformers + bitsandbytes, llama.cpp or transformers + torchao load, with a REPORT.md of the real bits "
            "per weight, the bytes of every file and every approximation. Written to a temporary folder "
            "and renamed when complete. Check an export with `coalora verify`."
        ),
    )
    add_target_args(p)
    p.add_argument("--out", required=True, help="output folder (refused if it exists, unless --force)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from coalora.deploy import export
    from coalora.lora.checkpoint import load_checkpoint

    # Cheap checks first: refuse before loading any model.
    out = check_new_folder(args.out, "--out", force=args.force)
    check_target_config(args)
    model, _, meta = load_checkpoint(args.checkpoint, quiet=False, base_model=args.model)
    config = model.space.load(args.config)
    export(model, config, args.target, out, force=args.force, gguf_base=args.gguf_base)
    what = {"peft": "peft LoRA adapter", "bnb": "bitsandbytes model + adapter", "gguf": "GGUF base + LoRA",
            "torchao": "torchao model recipe + adapter"}[args.target]
    print(f"wrote {out}: {what} (rank {model.spec.rank}) for configuration {config.hash} "
          f"({config.avg_bits:.3f} bits per weight) of {model.space.model_name}; "
          f"see {out / ('README.md' if args.target == 'peft' else 'REPORT.md')}")
    return 0
