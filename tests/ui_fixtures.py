"""A tiny engine for the app tests: a saved tiny Llama (byte tokenizer), a CoA-LoRA
checkpoint with non-zero adapter weights, its cost table and a predicted front, all in tmp."""

from __future__ import annotations

from pathlib import Path

import torch

from conftest import make_tiny_llama

VOCAB = 260


def make_tiny_engine(tmp: Path, n_rows: int = 24, with_front: bool = True, task: str = "sst2",
                     with_costs: bool = True, observations: Path | None = None):
    from test_eval import make_byte_tokenizer

    from coalora.models import load_model
    from coalora.search.costs import compute_costs
    from coalora.space import ConfigSpace
    from ui.engine import Engine

    base = tmp / "tiny-base"
    make_tiny_llama(vocab_size=VOCAB, seed=1).save_pretrained(base)
    make_byte_tokenizer().save_pretrained(base)
    model, _ = load_model(str(base), quiet=True)
    space = ConfigSpace.from_model(model, str(base))
    costs = compute_costs(model, space, sample=0.5) if with_costs else None  # None: no fast/ilp allocation
    save_adapter_checkpoint(model, space, tmp / "ckpt")
    front = None
    if with_front:
        from coalora.search.front import FrontPoint, PredictedFront

        pts = tuple(FrontPoint(b, space.preset(p), 0.5 - 0.02 * i, 0.03)
                    for i, (b, p) in enumerate([(2.2, "nf2"), (3.2, "nf3"), (4.2, "nf4")]))
        front = PredictedFront(pts, space, meta={"metric": "accuracy", "task": "sst2"}).save(tmp / "front.json")
    return Engine.load(str(tmp / "ckpt"), costs=costs, front_path=front, baselines_path=None, pool_paths=(),
                       n_rows=n_rows, dtype="fp32", task=task, observations=observations)


def save_adapter_checkpoint(model, space, out: Path, seed: int = 0, training: dict | None = None,
                            rank: int = 4) -> Path:
    """A CoA-LoRA checkpoint of `model` (an unwrapped HF model, left as it was) with a random
    non-zero adapter (B from `seed`), so adapter on / off, configurations and seeds differ;
    `training`: the checkpoint's training metadata (e.g. its task)."""
    from coalora.lora import CoaLoraModel, LoraSpec, save_checkpoint

    wrapped = CoaLoraModel(model, space, LoraSpec(rank=rank, alpha=2.0 * rank, theta_hidden=16))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in wrapped.adapted.values():
            layer.lora_B.weight.copy_(0.05 * torch.randn(layer.lora_B.weight.shape, generator=g))
    save_checkpoint(wrapped, out, metadata={"training": training} if training else None)
    wrapped.unwrap()
    return out
