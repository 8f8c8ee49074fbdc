"""The "what you get" report every export writes (report.json + REPORT.md; docs/deploy.md).

It states what the runtime will hold for the configuration's quantized projections (the
target's exact storage accounting: real bits per weight, scales and padding included), what
each written file weighs, and every approximation the export makes. Deterministic: no
timestamps, so exporting the same configuration twice gives identical files.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from coalora.space import Configuration

REPORT_JSON = "report.json"
REPORT_MD = "REPORT.md"


def folder_files(folder: Path) -> dict[str, int]:
    """{relative path: bytes} of every file under `folder`, sorted."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def build_report(model, config: Configuration, target: str, folder: Path,
                 approximations: Sequence[str], commands: Sequence[str]) -> dict[str, Any]:
    """The report of an export written to `folder` (its files are listed as they are now)."""
    from coalora.version import code_version

    formats = getattr(config, "formats", None)
    spec = model.spec
    n_adapter = sum(layer.lora_A.weight.numel() + layer.lora_B.weight.numel() for layer in model.adapted.values())
    return {
        "target": target,
        "model": model.space.model_name,
        "fingerprint": model.space.fingerprint,
        "configuration": {
            "hash": config.hash,
            "target": config.target,
            "formats": dict(Counter(formats)) if formats else None,
        },
        "quantized_projections": {
            "n_matrices": model.space.n_matrices,
            "n_params": model.space.n_params,
            "storage_bytes": config.storage_bytes,
            "avg_bits": round(config.avg_bits, 6),
        },
        "adapter": {"rank": spec.rank, "alpha": spec.alpha, "n_params": n_adapter, "folded": "B' = B (I + U)"},
        "files": folder_files(folder),
        "approximations": list(approximations),
        "run": list(commands),
        "code_version": code_version(),
    }


def write_report(folder: Path, report: dict[str, Any]) -> None:
    """report.json and REPORT.md into `folder`."""
    (folder / REPORT_JSON).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    (folder / REPORT_MD).write_text(render_markdown(report))


def _mb(n: int) -> str:
    return f"{n / 1e6:,.2f} MB"


def render_markdown(r: dict[str, Any]) -> str:
    q = r["quantized_projections"]
    cfg = r["configuration"]
    fmts = ", ".join(f"{k} x{v}" for k, v in sorted(cfg["formats"].items())) if cfg["formats"] else "NF-k (coalora)"
    lines = [
        f"# What you get: `{r['target']}` export",
        "",
        f"Model `{r['model']}` (structure {r['fingerprint']}), configuration `{cfg['hash']}` "
        f"({cfg['target']}: {fmts}). Written by coalora {r['code_version']}.",
        "",
        f"- Quantized projections: {q['n_matrices']} matrices, {q['n_params']:,} weights, "
        f"**{q['avg_bits']:.4f} bits per weight**, {_mb(q['storage_bytes'])} as the runtime stores them "
        "(scales, zero points and padding included; embeddings, norms and head not counted).",
        f"- Adapter: rank {r['adapter']['rank']}, alpha {r['adapter']['alpha']:g}, "
        f"{r['adapter']['n_params']:,} parameters, θ's adjustment folded in ({r['adapter']['folded']}).",
        "",
        "## Files",
        "",
        "| file | bytes |",
        "|---|---:|",
        *[f"| `{k}` | {v:,} |" for k, v in r["files"].items()],
        "",
        "## Approximations",
        "",
        *([f"- {a}" for a in r["approximations"]] or ["- none"]),
        "",
        "## Run it",
        "",
        "```bash",
        *r["run"],
        "```",
        "",
    ]
    return "\n".join(lines)
