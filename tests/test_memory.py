"""The app's memory (issue 13, item 5; docs/app.md, "Memory"): weights in private memory, not
on the mmap of the loaded file; glibc allocator settings from coalora/lora/budget.py; the
engine trims the heap after every evaluation."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import pytest
import torch

from coalora.lora import CoaLoraModel, budget
from conftest import save_tiny_model_dir


def test_weights_are_private_not_on_the_loaded_file(tmp_path):
    """transformers loads safetensors by mmap; the wrapped model must hold no tensor on that
    file (a single one keeps all of it resident: 513 MB for SmolLM2-135M)."""
    from coalora.models import load_model

    if not Path("/proc/self/maps").exists():
        pytest.skip("needs /proc/self/maps (Linux)")
    folder = save_tiny_model_dir(tmp_path / "tiny", seed=3)
    file = str((folder / "model.safetensors").resolve())
    base, _ = load_model(str(folder), quiet=True)
    ids = torch.randint(0, 256, (1, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = base(input_ids=ids).logits
    m = CoaLoraModel.for_base(base, str(folder))
    gc.collect()
    assert file not in Path("/proc/self/maps").read_text()
    for name, mod in m.switcher.modules.items():  # target weights share the switcher's fp32 originals
        assert mod.weight.data_ptr() == m.switcher.originals[name].data_ptr()
    m.set_configuration(None)
    with torch.no_grad():
        assert torch.equal(m(input_ids=ids).logits, before)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_allocator_settings_come_from_the_budget(monkeypatch):
    import dataclasses

    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert budget.current().malloc_arena_max == 2 and budget.current().trim_after_eval
    assert budget.configure_allocator() is True
    assert budget.trim_heap() is True
    off = dataclasses.replace(budget.current(), malloc_arena_max=0, trim_after_eval=False)
    assert budget.configure_allocator(off) is False and budget.trim_heap(off) is False
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")  # the environment wins
    assert budget.configure_allocator() is False


@pytest.mark.slow  # the tiny engine's cost table and GP: ~80 s on 2 busy cores
def test_engine_trims_when_it_switches_configuration_and_when_an_evaluation_ends(tmp_path, monkeypatch):
    from ui_fixtures import make_tiny_engine

    engine = make_tiny_engine(tmp_path, n_rows=24)
    calls = []
    real = budget.trim_heap
    monkeypatch.setattr(budget, "trim_heap", lambda *a: calls.append(1) or real(*a))
    c = engine.space.preset("nf4")
    engine.evaluate_final(c)
    assert len(calls) == 2  # when nf4 was applied, and when the evaluation ended
    engine.evaluate_final(c)
    assert len(calls) == 3  # nf4 was in already: only the end
    it = engine.evaluate(engine.space.preset("nf3"))
    next(it)  # the first estimate (nf3 applied: a trim), then the client moves on
    assert len(calls) == 4
    it.close()  # superseded: its end still trims
    assert len(calls) == 5


def test_prefix_budget_from_the_environment():
    """COALORA_PREFIX_MIB sets the prefix cache (the rest of the budget kept); bad values name
    the variable, the value and what is allowed."""
    from coalora.errors import ConfigError

    base = budget.MemoryBudget()
    assert budget.from_env({}, base) == base and budget.from_env({"COALORA_PREFIX_MIB": " "}, base) == base
    big = budget.from_env({"COALORA_PREFIX_MIB": "1024"}, base)
    assert big.prefix_bytes == 1024 * budget.MiB and big.merged_cache_bytes == base.merged_cache_bytes
    assert budget.from_env({"COALORA_PREFIX_MIB": "0"}, base).prefix_bytes == 0
    for bad in ("-1", "lots", "1.5", str(2 ** 40)):
        with pytest.raises(ConfigError, match=rf"COALORA_PREFIX_MIB has value '{bad}'; allowed: an integer of MiB"):
            budget.from_env({"COALORA_PREFIX_MIB": bad}, base)
