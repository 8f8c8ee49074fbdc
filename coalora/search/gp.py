"""GP surrogate of f1 (task loss or error) over configurations (docs/design.md, "Search").

Input: each configuration's (n_matrices, 5) field indices, each divided by (its number of
values - 1) so every entry lies in [0, 1], flattened to D = 5 * n_matrices columns.
Columns that never vary in the training data are dropped ("guarded"): their ARD
lengthscale would be unidentifiable, and dropping them keeps the fit cheap. The GP then
treats those fields as irrelevant until a configuration that varies them is observed.
Model: BoTorch SingleTaskGP (its default: RBF kernel with one lengthscale per column, i.e.
ARD, under a dimension-scaled log-normal prior; Gaussian likelihood with a learned noise),
outcomes standardised (Standardize), fitted by maximising the marginal log likelihood.
Bits are exact and never modelled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from coalora.errors import ConfigError
from coalora.quant.setting import FIELD_NAMES, FIELD_VALUES
from coalora.space import ConfigSpace, Configuration

FIELD_SIZES = torch.tensor([len(FIELD_VALUES[f]) for f in FIELD_NAMES], dtype=torch.float64)  # (5,)


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


@dataclass
class Surrogate:
    """A fitted GP of f1 on one space. Build with `fit_surrogate`.

    `columns`: (d,) indices of the encoding columns the GP sees (the ones that varied).
    `train_idx`: (n, D) training indices; `train_y`: (n,) observed f1.
    """

    space: ConfigSpace
    model: object  # botorch SingleTaskGP
    columns: torch.Tensor
    train_idx: torch.Tensor
    train_y: torch.Tensor

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


def fit_surrogate(configs: Sequence[Configuration], values: Sequence[float] | torch.Tensor,
                  space: ConfigSpace | None = None, seed: int = 0, maxiter: int = 200) -> Surrogate:
    """Fit a SingleTaskGP to (configs, f1 values). Needs at least 2 observations.

    `values`: (n,) f1 to minimise (loss, or 1 - accuracy). `maxiter` bounds the L-BFGS steps.
    """
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms.input import FilterFeatures
    from botorch.models.transforms.outcome import Standardize
    from gpytorch.mlls import ExactMarginalLogLikelihood

    if not configs:
        raise ConfigError("the GP needs evaluated configurations; got none")
    space = space or configs[0].space
    y = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if y.numel() != len(configs):
        raise ConfigError(f"{len(configs)} configurations but {y.numel()} values")
    if len(configs) < 2:
        raise ConfigError(f"the GP needs at least 2 evaluated configurations; got {len(configs)}")
    if not torch.isfinite(y).all():
        raise ConfigError("the f1 values contain NaN or inf; evaluate those configurations again")
    idx = index_matrix(configs, space)  # (n, D)
    varied = (idx != idx[:1]).any(0)
    columns = torch.nonzero(varied).reshape(-1)
    if columns.numel() == 0:
        columns = torch.zeros(1, dtype=torch.long)  # all identical: one (constant) column, flat GP
    torch.manual_seed(seed)
    # FilterFeatures keeps the full encoding as the model's input, so callers (and the
    # acquisition, which needs every column to compute exact bits) never slice by hand.
    model = SingleTaskGP(normalise(idx), y[:, None], outcome_transform=Standardize(m=1),
                         input_transform=FilterFeatures(columns))
    mll = ExactMarginalLogLikelihood(model.likelihood, model)
    fit_gpytorch_mll(mll, optimizer_kwargs={"options": {"maxiter": maxiter}})
    model.eval()
    return Surrogate(space, model, columns, idx, y)
