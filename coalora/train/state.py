"""Resumable trainer state: adapter checkpoint + optimizer tensors (safetensors) + JSON.

Folder layout (written atomically: temp folder, then one rename):
    state/checkpoint/        the adapter (coalora.lora.save_checkpoint format)
    state/optimizer.safetensors   every tensor of the optimizer's state, "<param index>.<key>"
    state/trainer.json       step, training set (configurations), optimizer hyper-parameters
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from coalora.errors import CheckpointError
from coalora.io import atomic_folder, plain_mode

STATE_FORMAT = "coalora.trainer_state/v1"


def save_state(folder: Path, model, optimizer: torch.optim.Optimizer, trainer: dict[str, Any],
               metadata: dict[str, Any]) -> Path:
    """Write the resumable state of `model` (a CoaLoraModel) and `optimizer` to `folder`,
    replacing it atomically; `trainer`: step, training set, history. -> folder."""
    from safetensors.torch import save_file

    from coalora.lora import save_checkpoint

    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{k}"] = v.detach().to("cpu").contiguous()
            else:
                scalars[f"{idx}.{k}"] = v
    with atomic_folder(folder, overwrite=True) as tmp:
        save_checkpoint(model, tmp / "checkpoint", metadata)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.safetensors").chmod(plain_mode())  # safetensors writes owner-only files
        doc = {"format": STATE_FORMAT, "trainer": trainer, "param_groups": sd["param_groups"], "scalars": scalars}
        (tmp / "trainer.json").write_text(json.dumps(doc, indent=1) + "\n")
    return folder


def load_state(folder: Path, model, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Load adapter weights into `model` and the optimizer state; -> the trainer dict."""
    from safetensors.torch import load_file

    from coalora.lora.checkpoint import load_weights

    meta_path = folder / "trainer.json"
    if not meta_path.exists():
        raise CheckpointError(f"no trainer state in {str(folder)!r} (missing trainer.json); cannot resume")
    doc = json.loads(meta_path.read_text())
    if doc.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{meta_path}: unknown format {doc.get('format')!r}; expected {STATE_FORMAT!r}")
    load_weights(model, folder / "checkpoint")
    flat = load_file(str(folder / "optimizer.safetensors"))
    state: dict[int, dict[str, Any]] = {}
    for key, t in flat.items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = t
    for key, v in doc["scalars"].items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    optimizer.load_state_dict({"state": state, "param_groups": doc["param_groups"]})
    return doc["trainer"]
