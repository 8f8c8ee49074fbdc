"""`coalora export --target gguf`: files llama.cpp loads (docs/deploy.md, "gguf").

    base.gguf            the base model, every target tensor in its chosen ggml type, the
                         other tensors and all metadata copied from the source GGUF
    adapter.gguf         the LoRA adapter (general.type "adapter", adapter.type "lora",
                         adapter.lora.alpha; tensors <tensor>.lora_a (r, in), .lora_b (out, r))
    tensor-types.txt     the same choice as a `llama-quantize --tensor-type-file` recipe

The target tensors are quantized from the model's original weights as loaded (the ones
coalora's switcher simulates from) with the gguf package's quantizer, so `coalora verify --target gguf` can
prove every tensor in base.gguf dequantizes to coalora's simulated weights bit for bit.
Llama-architecture GGUFs store q / k rows permuted for llama.cpp's rope (as llama.cpp's
convert_hf_to_gguf writes them); the base's and lora_b's q / k rows get that permutation.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from coalora.errors import ConfigError

BASE_FILE = "base.gguf"
ADAPTER_FILE = "adapter.gguf"
TENSOR_TYPES_FILE = "tensor-types.txt"
SKIP_FIELDS = ("general.architecture", "general.file_type")  # the writer adds the first; the second no longer holds


def source_gguf(model_name: str, gguf_base: str | Path | None) -> Path:
    """The GGUF the export copies metadata and non-target tensors from: `gguf_base`, or the
    embedded model's own file."""
    from coalora.models import EMBEDDED

    if gguf_base is not None:
        p = Path(gguf_base)
        if not p.is_file():
            raise ConfigError(f"--gguf-base {str(p)!r} is not a file; give a GGUF of {model_name}")
        return p
    if model_name not in EMBEDDED:
        raise ConfigError(
            f"--target gguf needs a GGUF of {model_name!r} for its metadata and tokenizer: convert the model "
            "with llama.cpp's convert_hf_to_gguf.py and pass it as --gguf-base FILE"
        )
    em = EMBEDDED[model_name]
    spec = importlib.util.find_spec(em.package)
    return Path(list(spec.submodule_search_locations)[0]) / em.gguf_file


def llama_permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rows of a q or k projection (out, ...) in llama.cpp's rope order: within each of the
    `n_head` heads, the two halves of the head dimension are interleaved."""
    out = w.shape[0]
    return w.reshape(n_head, 2, out // n_head // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


class GgufLayout:
    """How a GGUF names and lays out a model's target matrices (from its metadata)."""

    def __init__(self, reader, n_blocks: int):
        import gguf

        self.arch = str(reader.fields["general.architecture"].contents())
        arch_enum = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}.get(self.arch)
        if arch_enum is None:
            raise ConfigError(f"GGUF architecture {self.arch!r} is not known to the gguf package")
        self.names = gguf.get_tensor_name_map(arch_enum, n_blocks)
        field = lambda k: reader.fields.get(f"{self.arch}.{k}")  # noqa: E731
        self.n_head = int(field("attention.head_count").contents()) if field("attention.head_count") else None
        kv = field("attention.head_count_kv")
        self.n_head_kv = int(kv.contents()) if kv else self.n_head

    def tensor_name(self, module: str) -> str:
        name = self.names.get_name(module + ".weight", try_suffixes=(".weight",))
        if name is None:
            raise ConfigError(f"no GGUF tensor name for module {module!r} in architecture {self.arch!r}")
        return name

    def to_gguf_rows(self, module: str, w: torch.Tensor) -> torch.Tensor:
        """`w` (out, ...) of `module` in the GGUF's row order (llama: q / k permuted)."""
        if self.arch == "llama" and module.endswith(("q_proj", "k_proj")):
            return llama_permute(w, self.n_head if module.endswith("q_proj") else self.n_head_kv)
        return w


def write_gguf(model, config, folder: Path, gguf_base: str | Path | None = None) -> tuple[list[str], list[str]]:
    """Write base.gguf, adapter.gguf and tensor-types.txt into `folder` -> (approximations, commands)."""
    import gguf

    from coalora.deploy.base import weights_dtype
    from coalora.quant.targets.gguf import quantize_blocks

    src = source_gguf(model.space.model_name, gguf_base)
    reader = gguf.GGUFReader(src)
    layout = GgufLayout(reader, model.space.n_blocks)
    modules = [m.name for m in model.space.matrices]
    gguf_name = {m: layout.tensor_name(m) for m in modules}
    have = {t.name: t for t in reader.tensors}
    missing = [n for n in gguf_name.values() if n not in have]
    if missing:
        raise ConfigError(f"{str(src)!r} has no tensor {missing[0]!r}: it is not a GGUF of {model.space.model_name}")
    dtype = getattr(torch, weights_dtype(model))

    quantized: dict[str, tuple[np.ndarray, gguf.GGMLQuantizationType]] = {}  # GGUF tensor name -> (blocks, type)
    for m in modules:
        t = have[gguf_name[m]]
        # the weights as loaded, which coalora's switcher simulates from (gguf_tensor_check compares the same)
        rows = layout.to_gguf_rows(m, model.switcher.originals[m].to(dtype))
        if tuple(int(d) for d in reversed(t.shape)) != tuple(rows.shape):
            raise ConfigError(f"{gguf_name[m]} is {list(reversed(t.shape))} in {str(src)!r} but {m} is {list(rows.shape)}")
        fmt = config.format(m)
        quantized[gguf_name[m]] = (quantize_blocks(rows, fmt), gguf.GGMLQuantizationType[fmt])

    writer = gguf.GGUFWriter(folder / BASE_FILE, layout.arch)
    _copy_fields(reader, writer)
    for t in reader.tensors:
        if t.name in quantized:
            blocks, qtype = quantized[t.name]
            writer.add_tensor(t.name, blocks, raw_dtype=qtype)
        else:
            writer.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
    _finish(writer)
    _write_adapter(model, config, folder / ADAPTER_FILE, layout, gguf_name)
    (folder / TENSOR_TYPES_FILE).write_text(tensor_type_recipe({gguf_name[m]: config.format(m) for m in modules}))

    approx = [
        "The weights are exact: every target tensor of base.gguf dequantizes to coalora's simulated weights "
        "(`coalora verify --target gguf` checks each one).",
        "llama.cpp's CPU kernels quantize the activations (to Q8_0 / Q8_K) for quantized weight types and "
        "accumulate in their own order; coalora computes in float with the same weights, so logits differ slightly.",
        "The adapter is applied unmerged by llama.cpp (scale = adapter.lora.alpha / rank); its tensors are float32.",
        f"Tensors other than the {len(modules)} projections and all metadata are copied from {src.name} as they are.",
    ]
    commands = [
        f"llama-cli -m {BASE_FILE} --lora {ADAPTER_FILE} -p \"Review: a gripping, funny film\\nSentiment:\" -n 1",
        f"llama-server -m {BASE_FILE} --lora {ADAPTER_FILE}",
        f"# the same base from another GGUF of this model: llama-quantize --allow-requantize "
        f"--tensor-type-file {TENSOR_TYPES_FILE} IN.gguf OUT.gguf Q8_0",
    ]
    return approx, commands


def _copy_fields(reader, writer) -> None:
    import gguf

    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name in SKIP_FIELDS:
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)


def _finish(writer) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _write_adapter(model, config, path: Path, layout: GgufLayout, gguf_name: dict[str, str]) -> None:
    """adapter.gguf: lora_a = A (r, in), lora_b = B' (out, r) in the base's row order."""
    import gguf

    writer = gguf.GGUFWriter(path, layout.arch)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(model.spec.alpha))
    folded = model.folded_B(config)
    for m, layer in model.adapted.items():
        a = layer.lora_A.weight.detach().float().cpu().contiguous()
        b = layout.to_gguf_rows(m, folded[m].detach().float().cpu()).contiguous()
        writer.add_tensor(f"{gguf_name[m]}.lora_a", a.numpy())
        writer.add_tensor(f"{gguf_name[m]}.lora_b", b.numpy())
    _finish(writer)


def tensor_type_recipe(types: dict[str, str]) -> str:
    """`llama-quantize --tensor-type-file` lines: one fully anchored, lower-case pattern per
    tensor (llama.cpp lower-cases patterns and matches them unanchored; no comments allowed)."""
    lines = []
    for name, fmt in types.items():
        pattern = "^" + name.lower().replace(".", r"\.") + "$"
        lines.append(f"{pattern}={fmt.lower()}")
    return "\n".join(lines) + "\n"
