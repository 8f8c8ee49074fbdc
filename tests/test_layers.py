"""The package's import layers (docs/design.md, "Data flow"): a module imports only from its
own layer or the layers below it, so the path slider -> configuration -> model -> eval ->
record never doubles back (e.g. coalora/search never imports coalora/train)."""

from __future__ import annotations

import ast
from pathlib import Path

LAYERS = [
    {"errors", "io", "tmp", "jsonfile", "metrics", "results", "version", "device"},
    {"quant"}, {"space"}, {"models", "data"}, {"eval"}, {"lora"}, {"search"}, {"train"}, {"export", "deploy"}, {"cli"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}
PKG = Path(__file__).resolve().parents[1] / "coalora"


def _imports(path: Path, prefix: str = "coalora.") -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:  # `from coalora import x` imports coalora.x
            out += [f"{node.module}.{a.name}" for a in node.names] if node.module == "coalora" else [node.module]
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return [m for m in out if m == prefix.rstrip(".") or m.startswith(prefix)]


def test_every_package_module_has_a_layer():
    names = {p.stem if p.parent == PKG else p.relative_to(PKG).parts[0] for p in PKG.rglob("*.py")}
    assert names - {"__init__", "__main__"} <= set(RANK), sorted(names - set(RANK) - {"__init__", "__main__"})


def test_imports_only_go_down():
    upward = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG).parts
        me = rel[0].removesuffix(".py")
        if me not in RANK:
            continue
        for mod in _imports(path):
            target = mod.split(".")[1]
            if target in RANK and RANK[target] > RANK[me]:
                upward.append(f"{'/'.join(rel)} imports {mod}")
    assert not upward, upward


def test_nothing_under_coalora_imports_gradio():
    users = [str(p.relative_to(PKG)) for p in PKG.rglob("*.py") if _imports(p, "gradio.")]
    assert not users, users
