"""Scalar validation metrics: map correlation and clustering agreement (NMI, ARI)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from cryoscope.errors import InvalidValueError


def cross_correlation(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None, ndim: int = 3) -> torch.Tensor:
    """Pearson correlation of `a` and `b` over their last `ndim` axes (batched over the rest).

    A (soft) `mask` weights each voxel: weighted means are removed and weighted (co)variances used.
    """
    if a.shape != b.shape:
        raise InvalidValueError(f"cross-correlation: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    dims = tuple(range(-ndim, 0))
    w = torch.ones_like(a) if mask is None else mask.to(a).expand_as(a)
    wsum = w.sum(dims, keepdim=True)
    if bool((wsum <= 0).any()):
        raise InvalidValueError("cross-correlation: the mask is empty")
    da = a - (w * a).sum(dims, keepdim=True) / wsum
    db = b - (w * b).sum(dims, keepdim=True) / wsum
    num = (w * da * db).sum(dims)
    den = torch.sqrt((w * da * da).sum(dims) * (w * db * db).sum(dims))
    return num / den.clamp_min(torch.finfo(den.dtype).tiny)


def _labels(x: Sequence[int] | np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x.cpu() if isinstance(x, torch.Tensor) else x), device="cpu").reshape(-1)
    if t.numel() == 0:
        raise InvalidValueError(f"{name}: no labels")
    return torch.unique(t, return_inverse=True)[1]


def _contingency(labels_a, labels_b) -> torch.Tensor:
    a, b = _labels(labels_a, "labels_a"), _labels(labels_b, "labels_b")
    if a.numel() != b.numel():
        raise InvalidValueError(f"clusterings have different lengths, {a.numel()} vs {b.numel()}")
    na, nb = int(a.max()) + 1, int(b.max()) + 1
    return torch.bincount(a * nb + b, minlength=na * nb).reshape(na, nb).to(torch.float64)


def _entropy(counts: torch.Tensor) -> torch.Tensor:
    p = counts[counts > 0] / counts.sum()
    return -(p * p.log()).sum()


def normalized_mutual_info(labels_a, labels_b) -> float:
    """Normalised mutual information I(A; B) / ((H(A) + H(B)) / 2) of two clusterings (1 when identical up to relabelling)."""
    c = _contingency(labels_a, labels_b)
    ha, hb = _entropy(c.sum(1)), _entropy(c.sum(0))
    if ha == 0 and hb == 0:
        return 1.0
    mi = ha + hb - _entropy(c.flatten())
    return float(mi / ((ha + hb) / 2))


def adjusted_rand_index(labels_a, labels_b) -> float:
    """Adjusted Rand index (Hubert & Arabie 1985): 1 for identical clusterings, ~0 for independent ones."""
    c = _contingency(labels_a, labels_b)

    def pairs(x: torch.Tensor) -> torch.Tensor:
        return (x * (x - 1) / 2).sum()

    n = c.sum()
    index, sa, sb = pairs(c.flatten()), pairs(c.sum(1)), pairs(c.sum(0))
    expected = sa * sb / (n * (n - 1) / 2) if n > 1 else c.new_tensor(0.0)
    maximum = (sa + sb) / 2
    if maximum == expected:
        return 1.0
    return float((index - expected) / (maximum - expected))
