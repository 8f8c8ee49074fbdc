"""Export one configuration for the runtime that will run it, and check it there (issue 15;
docs/deploy.md).

    export(model, config, "gguf", "out/")     # base.gguf + adapter.gguf + recipe + report
    verify(model, tokenizer, config, "bnb")   # runtime vs simulation on the quick-eval rows

Targets: `peft` (the adapter for coalora's own simulated base), `bnb` (transformers +
bitsandbytes + peft), `gguf` (llama.cpp), `torchao` (transformers + torchao + peft). Every export also writes the configuration JSON
and a "what you get" report (coalora/deploy/report.py), to a temporary folder first, renamed
into place when complete.
"""

from __future__ import annotations

from pathlib import Path

from coalora.errors import ConfigError, OutputExistsError
from coalora.io import atomic_folder

EXPORT_TARGETS = ("peft", "bnb", "gguf", "torchao")
EXAMPLE_CONFIG = {"bnb": "bnb:nf4", "gguf": "gguf:Q4_0", "torchao": "torchao:int4-g32"}


def check_export_target(target: str, config) -> None:
    """Refuse an unknown export target, or a configuration of another deployment target."""
    if target not in EXPORT_TARGETS:
        raise ConfigError(f"--target {target!r} is not an export target; allowed: {', '.join(EXPORT_TARGETS)}")
    if target != "peft" and config.target != target:
        raise ConfigError(
            f"--target {target} needs a {target} configuration, got one of target {config.target!r}; "
            f"e.g. --config {EXAMPLE_CONFIG[target]}, or a file from "
            f"`coalora allocate --target {target} --out FILE`"
        )


def export(model, config, target: str, out: str | Path, force: bool = False,
           gguf_base: str | Path | None = None) -> Path:
    """Write `config`'s export for `target` into the folder `out` (refused if it exists,
    unless `force`) -> out. model: a CoaLoraModel; config: one of its space's configurations."""
    from coalora.deploy.report import build_report, write_report
    from coalora.export import CONFIGURATION_FILE

    check_export_target(target, config)
    model._check_space(config)
    out = Path(out)
    if out.exists() and not force:
        raise OutputExistsError(f"output folder {str(out)!r} already exists; pass --force to replace it")
    if target == "peft":
        from coalora.export import export_peft

        return export_peft(model, config, out, force=force)
    with atomic_folder(out, overwrite=force) as tmp:
        if target == "bnb":
            from coalora.deploy.bnb import write_bnb

            approx, commands = write_bnb(model, config, tmp)
        elif target == "torchao":
            from coalora.deploy.torchao import write_torchao

            approx, commands = write_torchao(model, config, tmp)
        else:
            from coalora.deploy.gguf import write_gguf

            approx, commands = write_gguf(model, config, tmp, gguf_base)
        config.save(tmp / CONFIGURATION_FILE)
        write_report(tmp, build_report(model, config, target, tmp, approx, commands))
    return out


def export_zip(model, config, folder: str | Path, model_name: str, target: str | None = None,
               gguf_base: str | Path | None = None) -> Path:
    """`config`'s export for `target` (default: the configuration's own target; peft for the
    NF-k space) as one zip inside `folder` (a fresh folder the caller owns) -> the zip's path."""
    from coalora.export import export_name, zip_folder
    from coalora.export import export_zip as peft_zip

    target = target or ("peft" if config.target == "coalora" else config.target)
    if target == "peft":
        return peft_zip(model, config, folder, model_name)
    folder = Path(folder)
    name = export_name(model_name, config, target)
    out = export(model, config, target, folder / name, gguf_base=gguf_base)
    return zip_folder(out, folder / f"{name}.zip", compresslevel=1)  # GGUF barely compresses


__all__ = ["export_zip", "EXAMPLE_CONFIG", "EXPORT_TARGETS", "check_export_target", "export"]
