"""GP surrogate of f1 (task loss or error) over configurations (docs/design.md, "Search").

The GP's input is always each configuration's (n_matrices, 5) field indices, each divided
by (its number of values - 1), flattened to D = 5 * n_matrices columns in [0, 1] (what the
acquisition searches over). A BoTorch input transform maps them to the features the kernel
sees; which features is the surrogate's `design` (DESIGNS; compared in bench/gp_designs.py):

  "index"   the raw encoding; columns that never vary in the training data are dropped
            (their ARD lengthscale would be unidentifiable).
  "struct"  average bits, per-block and per-module-type average bits per parameter.
  "qerr"    log total quantization error of the configuration (sum over matrices of the
            cost table's error, coalora.search.costs) and average bits.
  "qerr-block"  "qerr" plus the log quantization error of each block and of each module
            type (per-block sensitivity; single-block edits differ here).
  "qerr-linear" the "qerr-block" features with a prior mean linear in the first two (average
            bits and log total error) instead of a constant: the GP models what that
            trend leaves over.
  "qerr-additive" the "qerr-linear" features, mean and a kernel that is a sum: an ARD RBF on
            (average bits, log total error) plus a sum over the per-block and per-module-type
            log errors of one shared 1-d RBF (each block's damage adds up; 2 lengthscales
            however many blocks).
  "qerr-sens" "qerr-additive" with a prior mean linear in ALL features: one learned weight
            per block and module type, a sensitivity-weighted log error.
  "qerr-mix" "qerr" plus the share of parameters at each weight bit width (2, 3, 4, 8): the
            mixture, which total error and average bits do not tell apart.
Features are scaled to [0, 1] with fixed bounds of the space (never of the data).
Model: BoTorch SingleTaskGP (RBF kernel with one lengthscale per feature, i.e. ARD, under a
dimension-scaled log-normal prior), outcomes standardised (Standardize), fitted by maximising
the marginal log likelihood. Noise: learned (Gaussian likelihood), or with `noise="binomial"`
fixed per observation to p(1-p)/rows, p = 1 - f1 (the row-sampling noise of an accuracy
measured on `rows` rows). Bits are exact and never modelled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from coalora.errors import ConfigError
from coalora.quant.setting import FIELD_NAMES, FIELD_VALUES, all_settings
from coalora.space import MODULE_TYPES, ConfigSpace, Configuration

FIELD_SIZES = torch.tensor([len(FIELD_VALUES[f]) for f in FIELD_NAMES], dtype=torch.float64)  # (5,)
DESIGNS = ("index", "struct", "qerr", "qerr-block", "qerr-linear", "qerr-additive", "qerr-sens", "qerr-mix")
NOISES = ("learned", "binomial")
DEFAULT_DESIGN = "qerr"  # best held-out and cross-validated Spearman, fastest fit: bench/gp_designs.py (docs/results.md)
DEFAULT_NOISE = "learned"
_RADIX = torch.tensor([int(FIELD_SIZES[i + 1:].prod()) for i in range(len(FIELD_NAMES))], dtype=torch.long)  # (5,)
_BPP = torch.tensor([st.bits_per_param for st in all_settings()], dtype=torch.float64)  # (432,) by setting id
_BPP_LO, _BPP_HI = float(_BPP.min()), float(_BPP.max())
_WBITS = torch.tensor([st.bits for st in all_settings()], dtype=torch.long)  # (432,) weight bits by setting id


def index_matrix(configs: Sequence[Configuration], space: ConfigSpace) -> torch.Tensor:
    """(n, 5 * n_matrices) long field indices; every configuration must belong to `space`."""
    for c in configs:
        space.check_same(c)
    if not configs:
        return torch.zeros(0, 5 * space.n_matrices, dtype=torch.long)
    return torch.stack([c.encode().reshape(-1) for c in configs])


def normalise(idx: torch.Tensor) -> torch.Tensor:
    """(..., 5 * M) long indices -> (..., 5 * M) float64 in [0, 1]."""
    sizes = FIELD_SIZES.repeat(idx.shape[-1] // 5)
    return idx.to(torch.float64) / (sizes - 1)


def _input_transform_base():
    from botorch.models.transforms.input import InputTransform

    return InputTransform


class ConfigFeatures(torch.nn.Module):
    """Normalised encodings (..., 5 * M) -> structured features (..., k) in [0, 1] (the
    module docstring lists them per design). `errors`: (M, 432) cost table (coalora.search.costs)
    for the "qerr" designs."""

    def __init__(self, space: ConfigSpace, design: str, errors: torch.Tensor | None = None) -> None:
        super().__init__()
        if design not in DESIGNS or design == "index":
            raise ConfigError(f"feature design {design!r} is unknown; choose one of {', '.join(DESIGNS[1:])}")
        self.design, self.n_matrices = design, space.n_matrices
        numel = torch.tensor([m.numel for m in space.matrices], dtype=torch.float64)
        blocks = sorted({m.block for m in space.matrices})
        types = [t for t in MODULE_TYPES if any(m.module_type == t for m in space.matrices)]
        member_b = torch.tensor([[float(m.block == b) for b in blocks] for m in space.matrices], dtype=torch.float64)
        member_t = torch.tensor([[float(m.module_type == t) for t in types] for m in space.matrices], dtype=torch.float64)
        self.register_buffer("w_all", numel / numel.sum())  # (M,)
        self.register_buffer("w_block", member_b * numel[:, None] / (member_b * numel[:, None]).sum(0))  # (M, B)
        self.register_buffer("w_type", member_t * numel[:, None] / (member_t * numel[:, None]).sum(0))  # (M, T)
        self.register_buffer("member", torch.cat([member_b, member_t], 1))  # (M, B + T)
        if design.startswith("qerr"):
            if errors is None:
                raise ConfigError(f"feature design {design!r} needs the model's quantization-error table")
            e = errors.to(torch.float64).clamp_min(1e-30)
            self.register_buffer("errors", e.reshape(-1))  # (M * 432,)
            lo, hi = e.min(1).values, e.max(1).values
            self.register_buffer("log_lo", torch.log(lo.sum()))
            self.register_buffer("log_hi", torch.log(hi.sum()))
            self.register_buffer("part_lo", torch.log(lo @ self.member))
            self.register_buffer("part_hi", torch.log(hi @ self.member))

    def setting_ids(self, X: torch.Tensor) -> torch.Tensor:
        """(..., 5 * M) normalised encodings -> (..., M) setting ids (all_settings() order)."""
        sizes = FIELD_SIZES.to(X).repeat(self.n_matrices)
        idx = (X * (sizes - 1)).round().long().reshape(*X.shape[:-1], self.n_matrices, len(FIELD_NAMES))
        return (idx * _RADIX.to(idx.device)).sum(-1)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        sid = self.setting_ids(X)
        bpp = _BPP.to(X)[sid]  # (..., M)
        span = _BPP_HI - _BPP_LO
        feats = [((bpp @ self.w_all.to(X))[..., None] - _BPP_LO) / span]
        if self.design == "struct":
            feats += [(bpp @ self.w_block.to(X) - _BPP_LO) / span, (bpp @ self.w_type.to(X) - _BPP_LO) / span]
        if self.design.startswith("qerr"):
            offs = torch.arange(self.n_matrices, device=sid.device) * _BPP.numel()
            err = self.errors.to(X)[sid + offs]  # (..., M)
            total = torch.log(err.sum(-1, keepdim=True))
            feats.append((total - self.log_lo) / (self.log_hi - self.log_lo))
            if self.design in ("qerr-block", "qerr-linear", "qerr-additive", "qerr-sens"):
                part = torch.log((err @ self.member.to(X)).clamp_min(1e-30))
                feats.append((part - self.part_lo) / (self.part_hi - self.part_lo).clamp_min(1e-12))
            if self.design == "qerr-mix":
                wbits = _WBITS.to(sid.device)[sid]  # (..., M)
                feats += [((wbits == b).to(X) @ self.w_all.to(X))[..., None] for b in FIELD_VALUES["bits"]]
        return torch.cat(feats, -1)


def _trend_mean():
    """A gpytorch Mean linear in the first two features (average bits, log total error)."""
    from gpytorch.means import LinearMean

    class TrendMean(LinearMean):
        def forward(self, x):
            return super().forward(x[..., :2])

    return TrendMean(2)


def _additive_kernel(d: int):
    """ARD RBF on features 0-1 + a shared 1-d RBF summed over features 2..d-1."""
    from gpytorch.kernels import AdditiveStructureKernel, RBFKernel, ScaleKernel

    return (ScaleKernel(RBFKernel(ard_num_dims=2, active_dims=(0, 1)))
            + ScaleKernel(AdditiveStructureKernel(RBFKernel(), num_dims=d - 2, active_dims=tuple(range(2, d)))))


def make_feature_transform(space: ConfigSpace, design: str, errors: torch.Tensor | None = None):
    """A BoTorch InputTransform applying ConfigFeatures (train, eval and fantasize)."""
    return feature_transform(ConfigFeatures(space, design, errors))


def feature_transform(features: torch.nn.Module):
    """A BoTorch InputTransform applying `features` (a module with a `design` attribute that
    maps the model's inputs (..., D) to kernel features (..., k)) in train, eval and fantasize.
    The model keeps the full encoding as its input, so the acquisition can compute exact bits
    from it; the target search (coalora.search.target_search) wraps its own features here."""
    base = _input_transform_base()

    class _Transform(base, torch.nn.Module):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.transform_on_train = self.transform_on_eval = self.transform_on_fantasize = True
            self.features = features

        def transform(self, X: torch.Tensor) -> torch.Tensor:
            return self.features(X)

        def equals(self, other) -> bool:
            return isinstance(other, type(self)) and other.features.design == self.features.design

    return _Transform()


@dataclass
class Surrogate:
    """A fitted GP of f1 on one space. Build with `fit_surrogate`.

    `columns`: (d,) indices of the encoding columns the GP sees (the ones that varied; design
    "index" only, else all). `train_idx`: (n, D) training indices; `train_y`: (n,) observed f1.
    `design` / `noise`: see the module docstring.
    """

    space: ConfigSpace
    model: object  # botorch SingleTaskGP
    columns: torch.Tensor
    train_idx: torch.Tensor
    train_y: torch.Tensor
    design: str = "index"
    noise: str = "learned"

    @property
    def noise_std(self) -> float:
        """The typical observation noise std in f1 units (learned, or the median fixed one)."""
        var = self.model.likelihood.noise.detach().reshape(-1)
        return float(var.median().sqrt() * self.model.outcome_transform.stdvs.reshape(-1)[0])

    @property
    def n_observations(self) -> int:
        return int(self.train_y.numel())

    def features(self, idx: torch.Tensor) -> torch.Tensor:
        """(..., D) long indices -> (..., D) float64 GP inputs (the GP's FilterFeatures
        transform keeps `columns`)."""
        return normalise(idx)

    def predict_indices(self, idx: torch.Tensor, observation_noise: bool = False,
                        batch_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, D) long indices -> (mean (n,), std (n,)) of f1, in batches."""
        means, stds = [], []
        with torch.no_grad():
            for chunk in torch.split(idx, batch_size):
                post = self.model.posterior(self.features(chunk), observation_noise=observation_noise)
                means.append(post.mean.reshape(-1))
                stds.append(post.variance.clamp_min(0).sqrt().reshape(-1))
        if not means:
            return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
        return torch.cat(means), torch.cat(stds)

    def predict(self, configs: Sequence[Configuration], observation_noise: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted f1 of ANY configurations of the space: (mean (n,), std (n,)) float64.

        std is the latent function's (observation_noise=False) unless asked otherwise.
        """
        return self.predict_indices(index_matrix(configs, self.space), observation_noise)


def binomial_variance(y: torch.Tensor, rows: int) -> torch.Tensor:
    """p(1-p)/rows with p = 1 - f1 kept >= 1/(2 rows) from 0 and 1: (n,) -> (n,)."""
    p = (1.0 - y).clamp(0.5 / rows, 1.0 - 0.5 / rows)
    return p * (1.0 - p) / rows


def observed_f1(configs: Sequence[Configuration], values: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """The f1 values a GP is fitted to, checked: (n,) float64 for n >= 2 configurations, all
    finite (ConfigError otherwise). Shared by fit_surrogate and the target search's GP."""
    if not configs:
        raise ConfigError("the GP needs evaluated configurations; got none")
    y = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if y.numel() != len(configs):
        raise ConfigError(f"{len(configs)} configurations but {y.numel()} values")
    if len(configs) < 2:
        raise ConfigError(f"the GP needs at least 2 evaluated configurations; got {len(configs)}")
    if not torch.isfinite(y).all():
        raise ConfigError("the f1 values contain NaN or inf; evaluate those configurations again")
    return y


def fit_surrogate(configs: Sequence[Configuration], values: Sequence[float] | torch.Tensor,
                  space: ConfigSpace | None = None, seed: int = 0, maxiter: int = 200,
                  design: str | None = None, noise: str = DEFAULT_NOISE, costs=None,
                  rows: int | None = None, warm_start: "Surrogate | None" = None) -> Surrogate:
    """Fit a SingleTaskGP to (configs, f1 values). Needs at least 2 observations.

    `values`: (n,) f1 to minimise (loss, or 1 - accuracy). `maxiter` bounds the L-BFGS steps.
    `design`: DESIGNS (None -> DEFAULT_DESIGN); the "qerr" designs need the model's cost
    table: `costs` (a CostTable) or, when None, the cached one (coalora.search.costs.load_costs);
    without one they fall back to "struct". `noise`: "learned", or "binomial" (f1 = 1 -
    accuracy measured on `rows` rows; then `rows` is required).
    `warm_start`: a surrogate of the same design and noise fitted on (nearly) the same data,
    e.g. before one more observation: its hyperparameters start the fit and `maxiter`
    defaults to 20 (a refit in a fraction of the cold fit's time).
    """
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms.input import FilterFeatures
    from botorch.models.transforms.outcome import Standardize
    from gpytorch.mlls import ExactMarginalLogLikelihood

    y = observed_f1(configs, values)
    space = space or configs[0].space
    idx = index_matrix(configs, space)  # (n, D)
    varied = (idx != idx[:1]).any(0)
    columns = torch.nonzero(varied).reshape(-1)
    if columns.numel() == 0:
        columns = torch.zeros(1, dtype=torch.long)  # all identical: one (constant) column, flat GP
    design = DEFAULT_DESIGN if design is None else design
    if design not in DESIGNS:
        raise ConfigError(f"GP design {design!r} is unknown; choose one of {', '.join(DESIGNS)}")
    if noise not in NOISES:
        raise ConfigError(f"GP noise {noise!r} is unknown; choose one of {', '.join(NOISES)}")
    yvar = None
    if noise == "binomial":
        if not rows or rows < 1:
            raise ConfigError("binomial noise needs the number of rows each accuracy was measured on")
        yvar = binomial_variance(y, rows)[:, None]
    errors = None
    if design.startswith("qerr"):
        if costs is None:
            from coalora.search.costs import load_costs

            costs = load_costs(space)
        if costs is None:
            design = "struct"
        else:
            space.check_fingerprint(costs.space.fingerprint, "the cost table", costs.space.model_name)
            errors = costs.errors
    torch.manual_seed(seed)
    # The input transform keeps the full encoding as the model's input, so callers (and the
    # acquisition, which needs every column to compute exact bits) never slice by hand.
    transform = FilterFeatures(columns) if design == "index" else make_feature_transform(space, design, errors)
    if design != "index":
        columns = torch.arange(idx.shape[1])
    extra = {}
    if design in ("qerr-linear", "qerr-additive"):
        extra["mean_module"] = _trend_mean()
    if design == "qerr-sens":
        from gpytorch.means import LinearMean

        extra["mean_module"] = LinearMean(int(transform.features(normalise(idx[:1])).shape[-1]))
    if design in ("qerr-additive", "qerr-sens"):
        extra["covar_module"] = _additive_kernel(int(transform.features(normalise(idx[:1])).shape[-1]))
    model = SingleTaskGP(normalise(idx), y[:, None], train_Yvar=yvar, outcome_transform=Standardize(m=1),
                         input_transform=transform, **extra)
    if warm_start is not None and warm_start.design == design and warm_start.noise == noise \
            and design != "index" and warm_start.space.fingerprint == space.fingerprint:
        model.covar_module.load_state_dict(warm_start.model.covar_module.state_dict())
        model.mean_module.load_state_dict(warm_start.model.mean_module.state_dict())
        if noise == "learned":
            model.likelihood.load_state_dict(warm_start.model.likelihood.state_dict())
        maxiter = min(maxiter, 20)
    mll = ExactMarginalLogLikelihood(model.likelihood, model)
    fit_gpytorch_mll(mll, optimizer_kwargs={"options": {"maxiter": maxiter}})
    model.eval()
    return Surrogate(space, model, columns, idx, y, design, noise)
