"""`coalora verify`: score an export in its real runtime and in coalora's simulation, on the
same quick-eval rows, and compare them row by row (docs/deploy.md, "Verify").

For each row both sides give the next-token log-probabilities after the prompt; the
prediction is the argmax over the task's label words (as the quick eval scores it). The
result names the rows whose prediction differs and the largest log-probability difference
(over the label words, and over the whole vocabulary).

Runtimes: `bnb` and `torchao` load the export with its own loader script (transformers +
bitsandbytes / torchao + peft); `gguf` reads base.gguf back and checks every target tensor against coalora's
simulated weights bit for bit, and scores in llama.cpp when llama-cpp-python is installed;
`peft` loads the adapter folder with PeftModel on coalora's quantized base.
"""

from __future__ import annotations

import contextlib
import importlib.util
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from coalora.errors import ConfigError

LLAMA_CPP_HINT = (
    "llama-cpp-python is not installed: PyPI has no wheel for it, so pip builds llama.cpp from "
    "source (`make llama-cpp`, about 15 minutes on 2 cores)"
)


# target -> (the export's loader script, what it runs)
PYTHON_RUNTIMES = {"bnb": ("load_bnb.py", "transformers + bitsandbytes + peft"),
                   "torchao": ("load_torchao.py", "transformers + torchao + peft")}


def load_with_script(folder: Path, script: str):
    """The model an export's standalone loader script loads (its `load(folder)`), in eval mode."""
    spec = importlib.util.spec_from_file_location(f"coalora_export_{Path(script).stem}", folder / script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod.load(folder)[0]


def _label_rows(task: str, n: int | None, tokenizer):
    """(token id lists, label token ids, gold labels) of the quick-eval rows of a label task."""
    from coalora.data import task_spec
    from coalora.eval.harness import QUICK_ROWS, _label_token_ids, quick_split, token_ids
    from coalora.eval.prompts import make_prompt

    if task_spec(task).kind != "label":
        raise ConfigError(f"--task {task!r}: verify scores label tasks (sst2, boolq); {task} is a {task_spec(task).kind} task")
    split = quick_split(task, n=QUICK_ROWS if n is None else n)
    prompts = [make_prompt(task, r, "coalora") for r in split.rows]
    seqs = [token_ids(tokenizer, p.prompt, True) for p in prompts]
    try:
        label_ids = _label_token_ids(tokenizer, prompts[0].label_words)
    except ValueError as e:  # verify compares next-token log-probs: one token per label word
        raise ConfigError(f"--task {task}: {e}, so verify cannot compare next-token predictions") from None
    return seqs, label_ids, [p.label for p in prompts], split


def torch_logprobs(model, seqs: Sequence[list[int]], pad_id: int, dtype: str, train_mode: bool = False) -> torch.Tensor:
    """(N, V) next-token log-probs of an HF-style model, length-sorted batches as the quick eval runs.
    train_mode: run the modules in training mode (no gradients; only for models without active
    dropout), e.g. bitsandbytes' dequantize-then-matmul path instead of its CPU inference kernel."""
    from coalora.eval import scoring

    out: list[torch.Tensor | None] = [None] * len(seqs)
    dev = scoring.model_device(model)
    dt = scoring.resolve_dtype(dtype, model)
    model.train(train_mode)
    for batch in scoring.length_batches([len(s) for s in seqs], 16, 4096):
        with scoring.compute_context(dt, dev):
            lp = scoring.last_token_logprobs(model, [seqs[i] for i in batch], pad_id)
        for i, row in zip(batch, lp.cpu()):
            out[i] = row
    return torch.stack(out)  # type: ignore[arg-type]


@contextlib.contextmanager
def _no_repack():
    """llama.cpp's `--no-repack` (model param use_extra_bufts=False) while a model loads.
    Why: with weight repacking into its "extra buffer types" (AMX here), llama.cpp 0.3.36's
    first decode segfaults on this machine's CPU (AMX listed, tested: base.gguf alone and the
    embedded GGUF alike); llama-cpp-python has no argument for it, so its default model
    params are wrapped meanwhile. The plain CPU kernels compute the same types."""
    import llama_cpp.llama as ll

    default = ll.llama_cpp.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p

    ll.llama_cpp.llama_model_default_params = params
    try:
        yield
    finally:
        ll.llama_cpp.llama_model_default_params = default


def llama_cpp_logprobs(folder: Path, seqs: Sequence[list[int]], threads: int | None = None) -> torch.Tensor:
    """(N, V) next-token log-probs from llama.cpp (llama-cpp-python) with base.gguf + adapter.gguf,
    weights not repacked (`--no-repack`, see _no_repack)."""
    from llama_cpp import Llama

    from coalora.deploy.gguf import ADAPTER_FILE, BASE_FILE

    n_ctx = max(len(s) for s in seqs) + 8
    with _no_repack():
        llm = Llama(model_path=str(folder / BASE_FILE), lora_path=str(folder / ADAPTER_FILE), n_ctx=n_ctx,
                    n_batch=n_ctx, n_threads=threads or torch.get_num_threads(), logits_all=True, verbose=False)
    rows = []
    for s in seqs:
        llm.reset()
        llm.eval(list(s))
        rows.append(torch.log_softmax(torch.tensor(llm.scores[len(s) - 1], dtype=torch.float32), -1))
    return torch.stack(rows)


def gguf_tensor_check(model, config, folder: Path) -> dict[str, Any]:
    """Every target tensor of base.gguf, dequantized and put back in the model's row order,
    against coalora's simulation of the model's original weights: bit-identical or not."""
    import gguf
    import gguf.quants

    from coalora.deploy.base import weights_dtype
    from coalora.deploy.gguf import BASE_FILE, GgufLayout
    from coalora.quant.targets import get_target

    reader = gguf.GGUFReader(folder / BASE_FILE)
    layout = GgufLayout(reader, model.space.n_blocks)
    tensors = {t.name: t for t in reader.tensors}
    target = get_target("gguf")
    differ = []
    for m in model.space.matrices:
        t = tensors[layout.tensor_name(m.name)]
        if t.tensor_type.name != config.format(m.name):
            differ.append(m.name)
            continue
        stored = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy()).reshape(m.shape)
        orig = model.switcher.originals[m.name].to(getattr(torch, weights_dtype(model)))
        if not torch.equal(stored, layout.to_gguf_rows(m.name, target.simulate(orig, config.format(m.name), m.name))):
            differ.append(m.name)
    return {"tensors_checked": model.space.n_matrices, "tensors_differing": differ}


def compare(sim: torch.Tensor, run: torch.Tensor, label_ids: Sequence[int], gold: Sequence[int]) -> dict[str, Any]:
    """Row-by-row comparison of two (N, V) log-prob tables on a label task."""
    ids = torch.tensor(list(label_ids))
    ps, pr = sim[:, ids].argmax(-1), run[:, ids].argmax(-1)
    g = torch.tensor(list(gold))
    n = len(gold)
    differ = torch.nonzero(ps != pr).flatten().tolist()
    return {
        "rows": n,
        "simulated_accuracy": float((ps == g).float().mean()),
        "runtime_accuracy": float((pr == g).float().mean()),
        "rows_differing": differ,
        "agreement": 1 - len(differ) / n,
        "max_label_logprob_diff": float((sim[:, ids] - run[:, ids]).abs().max()),
        "max_vocab_logprob_diff": float((sim - run).abs().max()),
    }


def verify(model, tokenizer, config, target: str, task: str = "sst2", n: int | None = None,
           dtype: str = "fp32", gguf_base: str | Path | None = None,
           progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Export `config` for `target` into a temporary folder, then score it in the runtime and
    in coalora's simulation on the quick-eval rows of `task` -> a JSON-ready record."""
    from coalora.deploy import check_export_target, export
    from coalora.eval.harness import pad_token_id

    check_export_target(target, config)
    seqs, label_ids, gold, split = _label_rows(task, n, tokenizer)
    from coalora.version import code_version

    record: dict[str, Any] = {
        "target": target, "task": task, "part": "dev (quick-eval rows)", "split_hash": split.manifest_hash,
        "seed": split.seed, "model": model.space.model_name, "config_hash": config.hash,
        "config": config.to_dict(), "avg_bits": config.avg_bits, "storage_bytes": config.storage_bytes,
        "dtype": dtype, "code_version": code_version(),
    }
    with tempfile.TemporaryDirectory(prefix="coalora-verify-") as tmp:
        folder = Path(tmp) / "export"
        progress(f"exporting {target} ...")
        export(model, config, target, folder, gguf_base=gguf_base)
        progress("scoring in coalora's simulation ...")
        t = time.perf_counter()
        model.set_configuration(config)
        sim = torch_logprobs(model, seqs, pad_token_id(tokenizer), dtype)
        record["simulated_seconds"] = round(time.perf_counter() - t, 2)
        runtime = None
        t = time.perf_counter()
        if target in PYTHON_RUNTIMES:
            loader, what = PYTHON_RUNTIMES[target]
            progress(f"loading the export with its {loader} ({what}) and scoring ...")
            rmodel = load_with_script(folder, loader)
            if target == "bnb":
                # bnb's CPU inference kernel (eval mode) rounds differently from a float matmul; its
                # training-mode path dequantizes and calls F.linear, as coalora computes. First:
                # the first eval-mode forward repacks the 4-bit weights for that kernel for good.
                progress("scoring through bitsandbytes' dequantize path (training mode, no dropout) ...")
                exact = compare(sim, torch_logprobs(rmodel, seqs, pad_token_id(tokenizer), dtype, train_mode=True),
                                label_ids, gold)
                record["dequantize_path"] = {k: exact[k] for k in ("rows_differing", "max_label_logprob_diff",
                                                                   "max_vocab_logprob_diff")}
                progress("scoring with bitsandbytes' CPU inference kernel (eval mode) ...")
            runtime = torch_logprobs(rmodel, seqs, pad_token_id(tokenizer), dtype)
            record["runtime"] = f"{what} ({loader})"
            del rmodel
        elif target == "gguf":
            progress("checking base.gguf's tensors against the simulated weights ...")
            record["file_check"] = gguf_tensor_check(model, config, folder)
            if importlib.util.find_spec("llama_cpp") is None:
                record["runtime"] = None
                record["runtime_absent"] = LLAMA_CPP_HINT
            else:
                progress("scoring in llama.cpp (llama-cpp-python) ...")
                runtime = llama_cpp_logprobs(folder, seqs)
                import llama_cpp

                record["runtime"] = f"llama.cpp via llama-cpp-python {llama_cpp.__version__} (--no-repack)"
        else:  # peft
            from coalora.export import load_peft_export

            progress("loading the adapter with PeftModel on coalora's quantized base ...")
            rmodel, _ = load_peft_export(folder, dtype=model.model.get_input_embeddings().weight.dtype)
            runtime = torch_logprobs(rmodel, seqs, pad_token_id(tokenizer), dtype)
            record["runtime"] = "peft PeftModel on coalora's simulated base"
            del rmodel
        if runtime is not None:
            record["runtime_seconds"] = round(time.perf_counter() - t, 2)
            record.update(compare(sim, runtime, label_ids, gold))
    return record
