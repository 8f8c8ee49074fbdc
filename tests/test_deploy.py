"""`coalora export --target bnb/gguf/torchao` and `coalora verify` (issue 15; docs/deploy.md).

Fast tier: a tiny Llama saved to a folder (the export copies its base from there). Each
runtime export is loaded the way its runtime loads it and compared with coalora's simulation.
Real tier: SmolLM2-135M against its embedded GGUF and the real runtimes.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from coalora.cli import main
from coalora.deploy import check_export_target, export
from coalora.deploy.gguf import ADAPTER_FILE, BASE_FILE, TENSOR_TYPES_FILE, GgufLayout, llama_permute, tensor_type_recipe
from coalora.deploy.report import REPORT_JSON, REPORT_MD
from coalora.deploy.verify import compare, gguf_tensor_check, load_with_script
from coalora.errors import ConfigError, OutputExistsError
from coalora.export import CONFIGURATION_FILE
from coalora.lora import CoaLoraModel, LoraSpec, save_checkpoint
from coalora.models import load_model
from coalora.space import ConfigSpace
from conftest import save_tiny_model_dir
from test_export import perturb

X = torch.randint(0, 256, (2, 11), generator=torch.Generator().manual_seed(0))


@pytest.fixture
def cm(tmp_path):
    """A perturbed CoaLoraModel on a tiny Llama loaded by folder name (fp32)."""
    folder = save_tiny_model_dir(tmp_path / "tiny-base", words=("negative", "positive"))  # SST-2's label words
    base, _ = load_model(str(folder), quiet=True)
    space = ConfigSpace.from_model(base, str(folder))
    return perturb(CoaLoraModel(base, space, LoraSpec(rank=4, theta_init_std=0.2))).eval()


def mixed(space, target: str, formats: list[str]):
    """A target configuration cycling through `formats` over the matrices."""
    return space.target_configuration(target, {"default": formats[0], "matrices": {
        m.name: formats[i % len(formats)] for i, m in enumerate(space.matrices)}})


def simulated(cm, config) -> torch.Tensor:
    cm.set_configuration(config)
    with torch.no_grad():
        return cm(input_ids=X, use_cache=False).logits


def runtime_logits(model, train_mode: bool = False) -> torch.Tensor:
    model.train(train_mode)
    with torch.no_grad():
        return model(input_ids=X, use_cache=False).logits


def files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- bnb
def test_bnb_export_loads_each_module_in_its_format_and_scores_as_simulated(cm, tmp_path):
    import bitsandbytes as bnb

    config = mixed(cm.space, "bnb", ["nf4", "fp4-dq", "fp16", "nf4-dq", "bf16", "fp4"])
    out = export(cm, config, "bnb", tmp_path / "out")
    spec = json.loads((out / "formats.json").read_text())
    assert spec["target"] == "bnb" and spec["dtype"] == "float32"
    assert spec["modules"] == {m.name: config.format(m.name) for m in cm.space.matrices}
    model = load_with_script(out, "load_bnb.py")
    for name, fmt in spec["modules"].items():
        layer = model.base_model.model.get_submodule(name).base_layer
        if fmt in ("fp16", "bf16"):
            assert type(layer) is torch.nn.Linear
        else:
            assert isinstance(layer, bnb.nn.Linear4bit) and layer.weight.quant_state.blocksize == 64
            assert layer.weight.quant_type == fmt[:3] and (layer.weight.quant_state.nested == fmt.endswith("-dq"))
    # training mode: bitsandbytes dequantizes and calls F.linear, as coalora does (peft adds
    # the adapter unmerged: float rounding only)
    torch.testing.assert_close(runtime_logits(model, train_mode=True), simulated(cm, config), rtol=0, atol=1e-4)
    assert (out / CONFIGURATION_FILE).exists() and cm.space.load(out / CONFIGURATION_FILE) == config


def test_bnb_int8_modules_are_linear8bitlt(cm, tmp_path):
    import bitsandbytes as bnb

    config = mixed(cm.space, "bnb", ["int8", "nf4"])
    out = export(cm, config, "bnb", tmp_path / "out")
    model = load_with_script(out, "load_bnb.py")
    kinds = {config.format(m.name): type(model.base_model.model.get_submodule(m.name).base_layer) for m in cm.space.matrices}
    assert kinds == {"int8": bnb.nn.Linear8bitLt, "nf4": bnb.nn.Linear4bit}
    # LLM.int8 also quantizes the activations: close to the simulation, not equal
    torch.testing.assert_close(runtime_logits(model), simulated(cm, config), rtol=0, atol=0.05)


# ---------------------------------------------------------------- torchao
def test_torchao_export_quantizes_with_its_recipe_and_scores_as_simulated(cm, tmp_path):
    from torchao.core.config import config_from_dict
    from torchao.quantization import FqnToConfig, IntxUnpackedToInt8Tensor

    config = mixed(cm.space, "torchao", ["int4-g32", "int3-row-asym", "bf16", "int8-g64", "int2-g32-asym"])
    out = export(cm, config, "torchao", tmp_path / "out")
    recipe = config_from_dict(json.loads((out / "fqn_to_config.json").read_text()))
    quantized = {m.name for m in cm.space.matrices if config.format(m.name) != "bf16"}
    assert isinstance(recipe, FqnToConfig) and set(recipe.fqn_to_config) == quantized
    model = load_with_script(out, "load_torchao.py")
    for m in cm.space.matrices:
        w = model.base_model.model.get_submodule(m.name).base_layer.weight
        assert isinstance(w, IntxUnpackedToInt8Tensor) == (m.name in quantized)
    torch.testing.assert_close(runtime_logits(model), simulated(cm, config), rtol=0, atol=1e-4)


# ---------------------------------------------------------------- gguf
def write_tiny_gguf(folder, path, extra_key: str = "coalora.test.note"):
    """A GGUF of the tiny Llama saved in `folder` as convert_hf_to_gguf lays it out (llama
    arch, q / k rows permuted, F32 tensors), plus a custom key and a stale general.file_type."""
    import gguf

    model, _ = load_model(str(folder), quiet=True)
    cfg = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_string(extra_key, "kept")
    for hf_name, t in model.state_dict().items():
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None or name in {"output.weight"}:
            continue  # tied lm_head
        t = t.detach().float()
        if hf_name.endswith("q_proj.weight"):
            t = llama_permute(t, cfg.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            t = llama_permute(t, cfg.num_key_value_heads)
        w.add_tensor(name, t.numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_export_writes_exact_tensors_an_adapter_and_a_recipe(cm, tmp_path):
    import gguf

    src = write_tiny_gguf(cm.space.model_name, tmp_path / "tiny.gguf")
    config = mixed(cm.space, "gguf", ["Q4_0", "Q8_0", "F16", "Q5_1", "BF16", "Q4_1"])
    out = export(cm, config, "gguf", tmp_path / "out", gguf_base=src)
    assert sorted(files(out)) == sorted([BASE_FILE, ADAPTER_FILE, TENSOR_TYPES_FILE, CONFIGURATION_FILE, REPORT_JSON, REPORT_MD])
    # every projection dequantizes to coalora's simulated weights, bit for bit
    assert gguf_tensor_check(cm, config, out) == {"tensors_checked": cm.space.n_matrices, "tensors_differing": []}
    base = gguf.GGUFReader(out / BASE_FILE)
    assert str(base.fields["coalora.test.note"].contents()) == "kept" and "general.file_type" not in base.fields
    source = {t.name: t for t in gguf.GGUFReader(src).tensors}
    layout = GgufLayout(base, cm.space.n_blocks)
    targets = {layout.tensor_name(m.name) for m in cm.space.matrices}
    for t in base.tensors:  # the other tensors are copied as they are
        if t.name not in targets:
            assert t.tensor_type == source[t.name].tensor_type and np.array_equal(t.data, source[t.name].data)
    adapter = gguf.GGUFReader(out / ADAPTER_FILE)
    assert str(adapter.fields["general.type"].contents()) == "adapter"
    assert str(adapter.fields["adapter.type"].contents()) == "lora"
    assert adapter.fields["adapter.lora.alpha"].contents() == pytest.approx(cm.spec.alpha)
    lora = {t.name: torch.from_numpy(np.array(t.data)).reshape(list(reversed([int(d) for d in t.shape])))
            for t in adapter.tensors}
    assert len(lora) == 2 * cm.space.n_matrices
    folded = cm.folded_B(config)
    for m in cm.space.matrices:
        name = layout.tensor_name(m.name)
        assert torch.equal(lora[f"{name}.lora_a"], cm.adapted[m.name].lora_A.weight.float())
        b = lora[f"{name}.lora_b"]
        assert torch.equal(b, layout.to_gguf_rows(m.name, folded[m.name].float()))
        if m.name.endswith("q_proj"):  # stored permuted, as the base's q rows
            assert not torch.equal(b, folded[m.name].float())
    lines = (out / TENSOR_TYPES_FILE).read_text().splitlines()
    assert len(lines) == cm.space.n_matrices and all(ln.startswith("^") and "$=" in ln and ln == ln.lower() for ln in lines)
    assert lines[0] == r"^blk\.0\.attn_q\.weight$=q4_0"


def test_tensor_type_recipe_lines_are_anchored_lower_case():
    assert tensor_type_recipe({"blk.10.ffn_down.weight": "Q4_K", "blk.1.attn_k.weight": "IQ4_NL"}) == (
        "^blk\\.10\\.ffn_down\\.weight$=q4_k\n^blk\\.1\\.attn_k\\.weight$=iq4_nl\n")


def test_gguf_of_another_model_is_refused_before_anything_is_written(cm, tmp_path):
    import gguf

    src = tmp_path / "other.gguf"
    w = gguf.GGUFWriter(src, "llama")
    w.add_block_count(2)
    w.add_head_count(4)
    w.add_tensor("token_embd.weight", np.zeros((256, 64), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ConfigError, match="blk.0.attn_q.weight"):
        export(cm, cm.space.load("gguf:Q8_0"), "gguf", tmp_path / "out", gguf_base=src)
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["other.gguf", "tiny-base"]
    with pytest.raises(ConfigError, match="--gguf-base"):  # not an embedded model: its GGUF must be given
        export(cm, cm.space.load("gguf:Q8_0"), "gguf", tmp_path / "out")


# ---------------------------------------------------------------- common
def test_refusals_name_the_problem(cm, tmp_path):
    with pytest.raises(ConfigError, match=r"--target bnb needs a bnb configuration.*bnb:nf4"):
        check_export_target("bnb", cm.space.preset("nf4"))
    with pytest.raises(ConfigError, match="torchao:int4-g32"):
        check_export_target("torchao", cm.space.load("bnb:nf4"))
    with pytest.raises(ConfigError, match="allowed: peft, bnb, gguf, torchao"):
        check_export_target("onnx", cm.space.preset("nf4"))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="--force"):
        export(cm, cm.space.load("torchao:int8-g32"), "torchao", tmp_path / "out")
    assert files(tmp_path / "out") == {"keep.txt": b"mine"}


def test_exports_are_deterministic_and_report_what_they_hold(cm, tmp_path):
    config = mixed(cm.space, "torchao", ["int4-g32", "int8-row"])
    a = files(export(cm, config, "torchao", tmp_path / "a"))
    b = files(export(cm, config, "torchao", tmp_path / "b"))
    assert a == b
    report = json.loads(a[REPORT_JSON])
    assert report["quantized_projections"]["storage_bytes"] == config.storage_bytes
    assert report["quantized_projections"]["avg_bits"] == pytest.approx(config.avg_bits, abs=1e-6)
    assert report["files"]["fqn_to_config.json"] == len(a["fqn_to_config.json"])
    assert report["configuration"]["formats"] == {"int4-g32": cm.space.n_matrices // 2 + cm.space.n_matrices % 2,
                                                  "int8-row": cm.space.n_matrices // 2}
    assert report["approximations"] and report["run"] and b"torchao" in a[REPORT_MD]


def test_compare_counts_differing_rows_and_the_largest_difference():
    sim = torch.log_softmax(torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0], [1.0, 0.0, 3.0]]), -1)
    run = sim.clone()
    run[1, 0] += 5.0  # flips row 1's prediction over labels (0, 1)
    run[2, 2] += 0.5  # not a label: changes the vocabulary difference only
    got = compare(sim, run, label_ids=[0, 1], gold=[0, 1, 0])
    assert got["rows_differing"] == [1] and got["agreement"] == pytest.approx(2 / 3)
    assert got["simulated_accuracy"] == pytest.approx(1.0) and got["runtime_accuracy"] == pytest.approx(2 / 3)
    assert got["max_label_logprob_diff"] == pytest.approx(5.0) and got["max_vocab_logprob_diff"] == pytest.approx(5.0)


def test_export_and_verify_commands(cm, tmp_path, capsys):
    ckpt = save_checkpoint(cm, tmp_path / "ckpt")
    assert main(["export", "--checkpoint", str(ckpt), "--config", "nf4", "--target", "torchao",
                 "--out", str(tmp_path / "x")]) == 2
    assert "--target torchao needs a torchao configuration" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["export", "--checkpoint", str(ckpt), "--config", "torchao:int4-g32", "--target", "torchao",
                 "--out", str(tmp_path / "x")]) == 0
    assert "REPORT.md" in capsys.readouterr().out and (tmp_path / "x" / "load_torchao.py").exists()
    assert main(["verify", "--checkpoint", str(ckpt), "--config", "torchao:int4-g32", "--target", "torchao",
                 "--rows", "6", "--json", "--out", str(tmp_path / "v.jsonl")]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["rows"] == 6 and rec["agreement"] == 1.0 and rec["max_vocab_logprob_diff"] < 1e-3
    assert rec["split_hash"] and rec["code_version"] and rec["config_hash"] == cm.space.load("torchao:int4-g32").hash
    assert json.loads((tmp_path / "v.jsonl").read_text()) == rec


# ---------------------------------------------------------------- real model
@pytest.mark.real
def test_embedded_gguf_holds_the_hf_weights_permuted(real_model):
    """The embedded SmolLM2 GGUF's q / k rows are llama_permute of the HF weights (so adapter
    rows must be permuted the same way); checked on the first block, exactly."""
    import gguf
    import gguf.quants

    from coalora.deploy.gguf import source_gguf

    model, _ = real_model
    reader = gguf.GGUFReader(source_gguf("smollm2-135m", None))
    layout = GgufLayout(reader, model.config.num_hidden_layers)
    tensors = {t.name: t for t in reader.tensors}
    for proj in ("q_proj", "k_proj", "v_proj"):
        name = f"model.layers.0.self_attn.{proj}"
        t = tensors[layout.tensor_name(name)]
        stored = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy())
        hf = model.get_submodule(name).weight.detach().float()
        assert torch.equal(stored.reshape(hf.shape), layout.to_gguf_rows(name, hf))


@pytest.fixture(scope="module")
def default_checkpoint():
    from coalora.lora.checkpoint import load_for_eval

    return load_for_eval("default")


@pytest.mark.real
@pytest.mark.parametrize("spec", ["bnb:nf4-dq", "torchao:int4-g32"])
def test_verify_python_runtimes_on_the_default_checkpoint(default_checkpoint, spec):
    """The real model's export, loaded by its runtime: the same predictions on 8 dev rows, and
    the logits within float rounding where the runtime computes in float (torchao; bnb through
    its dequantize path)."""
    from coalora.deploy.verify import verify

    model, tok = default_checkpoint.model, default_checkpoint.tokenizer
    config = model.space.load(spec)
    rec = verify(model, tok, config, config.target, n=8)
    assert rec["rows"] == 8 and rec["rows_differing"] == []
    exact = rec["dequantize_path"] if config.target == "bnb" else rec
    assert exact["max_vocab_logprob_diff"] < 1e-3


@pytest.mark.real
def test_verify_gguf_checks_every_tensor_of_the_real_export(default_checkpoint):
    from coalora.deploy.verify import verify

    model, tok = default_checkpoint.model, default_checkpoint.tokenizer
    config = model.space.target_configuration("gguf", {"default": "Q4_0", "matrices": {
        m.name: "Q8_0" for m in model.space.matrices if m.block == 0}})
    rec = verify(model, tok, config, "gguf", n=4)
    assert rec["file_check"] == {"tensors_checked": 210, "tensors_differing": []}
    if rec["runtime"] is None:  # llama-cpp-python is optional (`make llama-cpp`)
        assert "make llama-cpp" in rec["runtime_absent"]
    else:
        assert rec["rows"] == 4 and rec["agreement"] >= 0.75
