"""Model families (issue 17, item 3): tiny random Llama, Qwen2, Qwen3 and Mistral models saved
as local folders (transformers configs, 2 blocks, hidden 64, a byte-level tokenizer) through
the real code paths, and `--model` loading a checkpoint's base model from elsewhere.

What makes each family differ here: Qwen2 has q/k/v biases, Qwen3 q/k RMS norms and a head
dim (32) that is not hidden / heads (16), so q_proj is 128 x 64 and o_proj 64 x 128; Mistral a
sliding window (16 tokens) shorter than the sequences it scores. The fast tier checks the
configuration space, the quantized forward (biases and norms kept, every projection
quantized), prefix reuse, multiple-choice KV-cache scoring, `coalora space/allocate/eval`
and the `--model` override; the slow tier trains each family two steps and runs eval,
search and predict on the checkpoint.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch

from coalora.cli import main
from test_eval import VOCAB, make_byte_tokenizer

FAMILIES = ("llama", "qwen2", "qwen3", "mistral")
N_LAYERS = 2
WINDOW = 16  # Mistral's sliding window: shorter than the prompts


def family_config(family: str, n_layers: int = N_LAYERS):
    """A tiny transformers config of `family`: hidden 64, 4 heads / 2 KV heads, vocab 260."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=n_layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True)
    return {
        "llama": lambda: LlamaConfig(**common),
        "qwen2": lambda: Qwen2Config(**common),  # q/k/v projections with bias
        "qwen3": lambda: Qwen3Config(head_dim=32, **common),  # q_norm / k_norm; head_dim != 64 / 4
        "mistral": lambda: MistralConfig(sliding_window=WINDOW, **common),
    }[family]()


def make_family_model(family: str, seed: int = 0, n_layers: int = N_LAYERS):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(family_config(family, n_layers)).eval()
    return model.requires_grad_(False)


def save_family_model(path: Path, family: str, seed: int = 0, n_layers: int = N_LAYERS) -> str:
    """A tiny `family` model plus the byte-level tokenizer in the folder `path` (a `--model`)."""
    make_family_model(family, seed, n_layers).save_pretrained(path)
    make_byte_tokenizer().save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("families")
    return {f: save_family_model(root / f, f) for f in FAMILIES}


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Cost tables of these models go to a temporary cache, not the user's."""
    monkeypatch.setenv("COALORA_CACHE", str(tmp_path / "cache"))


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


# ---- fast tier ------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_space_finds_every_projection_and_only_those(family, family_dirs):
    from coalora.models import build_space_for, load_config
    from coalora.space import ConfigSpace, MODULE_TYPES

    model = make_family_model(family)
    space = ConfigSpace.from_model(model, family)
    assert space.n_blocks == N_LAYERS and space.n_matrices == 7 * N_LAYERS
    assert [m.module_type for m in space.matrices[:7]] == list(MODULE_TYPES)
    shapes = {m.module_type: m.shape for m in space.matrices if m.block == 0}
    head_dim = 32 if family == "qwen3" else 16  # q: 4 heads x head_dim, k and v: 2 KV heads
    q_out, kv_out = 4 * head_dim, 2 * head_dim
    assert shapes == {"q_proj": (q_out, 64), "k_proj": (kv_out, 64), "v_proj": (kv_out, 64), "o_proj": (64, q_out),
                      "gate_proj": (128, 64), "up_proj": (128, 64), "down_proj": (64, 128)}
    attn = model.model.layers[0].self_attn
    assert (attn.q_proj.bias is not None) == (family == "qwen2")
    assert hasattr(attn, "q_norm") == (family == "qwen3")
    # The config alone (meta device, what `coalora space` and `predict` use) gives the same space.
    assert load_config(family_dirs[family]).model_type == family
    assert build_space_for(family_dirs[family]).fingerprint == space.fingerprint


@pytest.mark.parametrize("family", FAMILIES)
def test_quantized_forward_quantizes_every_projection_and_keeps_biases_and_norms(family):
    """CoaLoraModel under nf3 (zero adapter) = the model with each projection's weight replaced by
    its NF3 fake-quantized copy, its bias and every norm untouched; no configuration = the base."""
    from coalora.lora import CoaLoraModel
    from coalora.quant.nf import fake_quantize
    from coalora.space import PRESETS, ConfigSpace

    base = make_family_model(family, seed=2)
    ref = copy.deepcopy(base)
    ids = torch.randint(0, VOCAB, (2, 3 * WINDOW), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = ref(input_ids=ids).logits
        for m in ConfigSpace.from_model(ref, family).matrices:
            w = ref.get_submodule(m.name).weight
            w.copy_(fake_quantize(w, PRESETS["nf3"]))
        want = ref(input_ids=ids).logits
    cm = CoaLoraModel.for_base(base, family).eval()
    with torch.no_grad():
        cm.set_configuration(None)
        assert torch.allclose(cm(input_ids=ids).logits, plain, atol=1e-5)
        cm.set_configuration(cm.space.preset("nf3"))
        got = cm(input_ids=ids).logits
    assert not torch.allclose(want, plain, atol=1e-3)  # quantization changed the logits
    assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_reuse_and_choice_scoring_are_exact(family):
    """Prefix reuse after a one-block change is bit-identical to a full forward, and the
    multiple-choice scorer's shared KV cache (contexts longer than Mistral's window) agrees with
    one unpadded forward per choice."""
    from coalora.eval import scoring
    from coalora.lora import CoaLoraModel, LoraSpec
    from coalora.space import ConfigSpace

    base = make_family_model(family, seed=3)
    cm = CoaLoraModel(base, ConfigSpace.from_model(base, family), LoraSpec(rank=4, theta_init_std=0.3),
                      prefix_stride=1).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in cm.adapted.values():
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.05)
    seqs = [torch.randint(1, VOCAB, (n,), generator=g).tolist() for n in (3 * WINDOW, 7, 2 * WINDOW + 5)]
    a, b = cm.space.sample(2, seed=4)
    moved = a.with_settings({m.name: b.setting(m.name) for m in cm.space.matrices if m.block == N_LAYERS - 1})
    for config in (a, moved):
        cm.set_configuration(config)
        cm.prefix_reuse = False
        ref = scoring.last_token_logprobs(cm, seqs, pad_id=0)
        cm.prefix_reuse = True
        skipped = cm.prefix.stats["blocks_skipped"]
        assert torch.equal(scoring.last_token_logprobs(cm, seqs, pad_id=0), ref)
    assert cm.prefix.stats["blocks_skipped"] - skipped == N_LAYERS - 1  # the moved block's prefix was reused
    conts = [[seqs[1][:3], seqs[2][:5]], [seqs[0][:1]], [seqs[1][:4], seqs[0][:2], seqs[2][:6]]]
    shared = scoring.shared_context_logprobs(cm, seqs, conts, pad_id=0)
    naive = scoring.naive_choice_logprobs(cm, seqs, conts)
    for s, n in zip(shared, naive):
        assert torch.allclose(s, n, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_space_allocate_and_eval_commands_take_a_family_folder(family, family_dirs, tmp_path, capsys):
    folder = family_dirs[family]
    code, out, err = run_cli(capsys, "space", "--model", folder, "--config", "nf4", "--json")
    assert code == 0, err
    assert json.loads(out)["n_matrices"] == 7 * N_LAYERS
    cfg = tmp_path / "c.json"
    code, out, err = run_cli(capsys, "allocate", "--model", folder, "--budget", "4", "--method", "fast",
                             "--out", cfg, "--json")
    assert code == 0, err
    got = json.loads(out)
    assert got["model"] == folder and got["avg_bits"] <= 4
    code, out, err = run_cli(capsys, "eval", "--model", folder, "--config", cfg, "--task", "sst2", "--limit", "4",
                             "--dtype", "fp32", "--no-record", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["model"] == folder and res["n"] == 4 and 0 <= res["value"] <= 1


# ---- --model for a checkpoint's base ----------------------------------------------------------
@pytest.fixture
def moved(tmp_path):
    """A Qwen2 checkpoint (random non-zero adapter) whose base folder was then moved away:
    (checkpoint folder, the moved base folder, the folder it was trained on)."""
    from coalora.lora import CoaLoraModel, LoraSpec, save_checkpoint
    from coalora.models import load_model
    from coalora.space import ConfigSpace

    trained_on = save_family_model(tmp_path / "qwen2-base", "qwen2", seed=5)
    base, _ = load_model(trained_on, quiet=True)
    cm = CoaLoraModel(base, ConfigSpace.from_model(base, trained_on), LoraSpec(rank=4, alpha=8.0, theta_hidden=8))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in cm.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    meta = {"training": {"method": "coalora", "task": "sst2", "args": {"split_seed": 0}}}
    ckpt = save_checkpoint(cm, tmp_path / "ckpt", metadata=meta)
    new_home = tmp_path / "elsewhere" / "qwen2-copy"
    shutil.move(trained_on, new_home)
    return ckpt, str(new_home), trained_on


def test_model_option_loads_a_checkpoints_base_from_another_folder(moved, tmp_path, capsys):
    ckpt, new_home, trained_on = moved
    common = ["--checkpoint", ckpt, "--config", "nf4", "--task", "sst2", "--limit", "4", "--dtype", "fp32",
              "--records", tmp_path / "r.jsonl", "--json"]
    code, _, err = run_cli(capsys, "eval", *common)  # the recorded folder is gone
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert repr(trained_on) in err and "give --model" in err
    code, out, err = run_cli(capsys, "eval", *common, "--model", new_home)
    assert code == 0, err
    rec = json.loads(out)
    assert rec["model"] == new_home and rec["method"] == "coalora" and rec["checkpoint"].startswith("ckpt@sha256:")
    code, out, err = run_cli(capsys, "allocate", "--checkpoint", ckpt, "--model", new_home, "--budget", "3.5",
                             "--method", "fast", "--json")
    assert code == 0, err
    assert json.loads(out)["model"] == new_home


def test_model_option_refuses_other_projections_before_loading_weights(moved, tmp_path, capsys, monkeypatch):
    import coalora.models
    from coalora.errors import ModelMismatchError
    from coalora.lora import load_checkpoint
    from coalora.models import build_space_for

    ckpt, new_home, trained_on = moved
    deeper = save_family_model(tmp_path / "qwen2-3-blocks", "qwen2", seed=5, n_layers=3)
    llama = save_family_model(tmp_path / "llama-same-shapes", "llama", seed=5)  # same projection shapes, no biases
    want, got = build_space_for(new_home).fingerprint, build_space_for(deeper).fingerprint
    # (predict: tests/test_model_families.py::test_train_eval_search_predict, it needs a pool first)
    for cmd in (["eval", "--config", "nf4", "--limit", "4", "--no-record"], ["search", "--dev-rows", "4"],
                ["allocate", "--budget", "4", "--method", "fast"]):
        code, _, err = run_cli(capsys, *cmd, "--checkpoint", ckpt, "--model", deeper, "--json")
        line = err.strip().splitlines()[-1]
        assert code == 2 and line.startswith(f"coalora {cmd[0]}: error: checkpoint "), err
        assert f"'{trained_on}' (fingerprint {want})" in line and f"'{deeper}' (fingerprint {got})" in line

    def no_weights(*a, **k):
        raise AssertionError("weights were loaded before the structure check")

    monkeypatch.setattr(coalora.models, "load_model", no_weights)
    with pytest.raises(ModelMismatchError, match="projection names or shapes differ"):
        load_checkpoint(ckpt, base_model=deeper)
    monkeypatch.undo()
    # Same projections, other weights (or another family with the same shapes): the weights check.
    with pytest.raises(ModelMismatchError, match="trained on other weights"):
        load_checkpoint(ckpt, base_model=llama)


def test_app_takes_model_and_checkpoint(moved, tmp_path, monkeypatch):
    import app
    from coalora.errors import CoaloraError, ModelMismatchError
    from coalora.lora import budget

    ckpt, new_home, _ = moved
    env = {"COALORA_CHECKPOINT": str(ckpt), "COALORA_MODEL": new_home, "COALORA_DEVICE": "cpu",
           "COALORA_OBSERVATIONS": str(tmp_path / "obs.jsonl")}
    engines = app.load_engines(env)
    engine = engines[ckpt.name]
    assert list(engines) == [ckpt.name]  # the shipped SmolLM2 checkpoints do not fit this qwen2 model
    assert engine.model_name == new_home and engine.model.has_adapter and engine.space.model_name == new_home
    other = save_family_model(tmp_path / "deeper", "qwen2", n_layers=3)
    with pytest.raises(ModelMismatchError, match="projection names or shapes differ"):
        app.load_engines({**env, "COALORA_MODEL": other})

    seen = {}

    def fake_load_engines(e):
        seen.update(e)
        raise CoaloraError("stop here")

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))  # main() sets it when unset
    monkeypatch.setattr(app, "ensure_nodeps", lambda: False)
    monkeypatch.setattr(budget, "configure_allocator", lambda: None)
    monkeypatch.setattr(app, "load_engines", fake_load_engines)
    monkeypatch.setenv("COALORA_MODEL", "from-the-environment")
    with pytest.raises(SystemExit) as e:
        app.main(["--model", new_home, "--checkpoint", str(ckpt)])
    assert e.value.code == 2
    assert seen["COALORA_MODEL"] == new_home and seen["COALORA_CHECKPOINT"] == str(ckpt)
    with pytest.raises(SystemExit):
        app.main([])
    assert seen["COALORA_MODEL"] == "from-the-environment"


# ---- slow tier: train, then every command on the checkpoint -----------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_train_eval_search_predict(family, family_dirs, tmp_path, capsys):
    folder, run = family_dirs[family], tmp_path / "run"
    code, out, err = run_cli(capsys, "train", "--model", folder, "--task", "sst2", "--out", run, "--steps", "2",
                             "--epoch-steps", "2", "--batch-size", "2", "--max-length", "64", "--n-configs", "3",
                             "--rank", "4", "--theta-hidden", "8", "--precision", "fp32", "--no-search",
                             "--save-every", "0", "--dev-rows", "4", "--limit-rows", "8", "--cache-gb", "0.05",
                             "--device", "cpu", "--json")
    assert code == 0, err
    assert json.loads(out)["steps"] == 2
    ckpt = run / "checkpoint"
    meta = json.loads((ckpt / "checkpoint.json").read_text())
    assert meta["base_model"]["name"] == folder and meta["space"]["n_matrices"] == 7 * N_LAYERS
    records = tmp_path / "r.jsonl"
    code, out, err = run_cli(capsys, "eval", "--checkpoint", ckpt, "--config", "nf3", "--limit", "4", "--dtype", "fp32",
                             "--records", records, "--json")
    assert code == 0, err
    assert json.loads(out)["model"] == folder
    cfg = tmp_path / "c.json"
    assert run_cli(capsys, "allocate", "--model", folder, "--budget", "3.5", "--method", "fast", "--out", cfg)[0] == 0
    # The search on the quick-eval rows (what predict requires), seeded pool only: no proposals.
    code, out, err = run_cli(capsys, "search", "--checkpoint", ckpt, "--iterations", "0", "--budgets", "3,5",
                             "--dtype", "fp32", "--records", records, "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["pool_size"] >= 4 and Path(res["front"]).is_file()
    code, out, err = run_cli(capsys, "predict", "--checkpoint", ckpt, "--config", cfg, "--json")
    assert code == 0, err
    pred = json.loads(out)
    assert 0 <= pred["mean"] <= 1 and pred["std"] > 0 and pred["n_observations"] == res["pool_size"]
    # The base moved: predict (config only, no weights) and eval take it from --model.
    copy_dir = tmp_path / "moved-base"
    shutil.move(folder, copy_dir)
    try:
        assert run_cli(capsys, "predict", "--checkpoint", ckpt, "--config", cfg, "--json")[0] == 2
        code, out, err = run_cli(capsys, "predict", "--checkpoint", ckpt, "--config", cfg, "--model", copy_dir, "--json")
        assert code == 0, err
        assert json.loads(out)["mean"] == pytest.approx(pred["mean"])
    finally:
        shutil.move(copy_dir, folder)  # the module's other tests use the folder
