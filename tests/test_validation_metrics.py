"""Correlation, clustering agreement (NMI, ARI) and the run-output JSON writers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from cryoscope.errors import InvalidValueError
from cryoscope.io.runinfo import write_metrics_json, write_params_json
from cryoscope.validation.metrics import (
    adjusted_rand_index,
    cross_correlation,
    normalized_mutual_info,
)


def test_cross_correlation_invariances_and_mask():
    a = torch.randn(4, 8, 8, 8, dtype=torch.float64)
    b = torch.randn(4, 8, 8, 8, dtype=torch.float64)
    assert torch.allclose(cross_correlation(a, 2.5 * a + 3), torch.ones(4, dtype=torch.float64))
    assert torch.allclose(cross_correlation(a, -a), -torch.ones(4, dtype=torch.float64))
    cc = cross_correlation(a, b)
    assert cc.shape == (4,) and (cc.abs() < 4 / math.sqrt(512)).all()
    # identical inside the mask, unrelated outside: the masked correlation is exactly 1
    mask = torch.zeros(8, 8, 8, dtype=torch.float64)
    mask[2:6, 2:6, 2:6] = 1
    mixed = a * mask + b * (1 - mask)
    assert torch.allclose(cross_correlation(a, mixed, mask), torch.ones(4, dtype=torch.float64))
    assert torch.allclose(cross_correlation(a[0, 0], a[0, 0] * 2, ndim=2), torch.tensor(1.0, dtype=torch.float64))
    with pytest.raises(InvalidValueError):
        cross_correlation(a, b, torch.zeros(8, 8, 8))


def test_clustering_scores_by_hand():
    # contingency [[2, 0, 0], [0, 1, 1]]: sum C(n_ij, 2) = 1, rows 2, columns 1, C(4, 2) = 6
    # ARI = (1 - 2 / 6) / ((2 + 1) / 2 - 2 / 6) = 4 / 7
    # H(A) = ln 2, H(B) = H(A, B) = 1.5 ln 2, I = ln 2, NMI = ln 2 / (1.25 ln 2) = 0.8
    a, b = [0, 0, 1, 1], [0, 0, 1, 2]
    assert adjusted_rand_index(a, b) == pytest.approx(4 / 7)
    assert normalized_mutual_info(a, b) == pytest.approx(0.8)
    assert adjusted_rand_index(b, a) == pytest.approx(4 / 7)


def test_clustering_scores_invariances():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, 300)
    b = np.where(rng.random(300) < 0.7, a, rng.integers(0, 5, 300))
    perm = np.array([3, 0, 4, 1, 2])
    for score in (adjusted_rand_index, normalized_mutual_info):
        assert score(a, a) == pytest.approx(1.0)
        assert score(a, perm[a] + 10) == pytest.approx(1.0)
        assert score(a, perm[b]) == pytest.approx(score(a, b))
        assert score(torch.as_tensor(a), torch.as_tensor(b)) == pytest.approx(score(a, b))
        assert 0.2 < score(a, b) < 0.9
    independent = rng.integers(0, 4, 20000), rng.integers(0, 4, 20000)
    assert abs(adjusted_rand_index(*independent)) < 0.01
    assert normalized_mutual_info(*independent) < 0.01
    assert adjusted_rand_index([1, 1, 1], [2, 2, 2]) == 1.0 and normalized_mutual_info([1, 1], [0, 0]) == 1.0
    with pytest.raises(InvalidValueError):
        adjusted_rand_index([0, 1], [0, 1, 2])


def test_json_writers_convert_values(tmp_path):
    metrics = {
        "fsc": torch.tensor([1.0, 0.5]),
        "resolution": np.float32(3.5),
        "counts": np.array([1, 2], dtype=np.int64),
        "shape": (2, 3),
        "inf": math.inf,
        "ok": True,
    }
    path = write_metrics_json(tmp_path / "metrics.json", metrics)
    back = json.loads(path.read_text())
    assert back == {"fsc": [1.0, 0.5], "resolution": 3.5, "counts": [1, 2], "shape": [2, 3], "inf": None, "ok": True}
    write_params_json(tmp_path / "params.json", {"input": tmp_path / "a.mrc", "voxel_size": 1.2})
    assert json.loads((tmp_path / "params.json").read_text())["input"] == str(tmp_path / "a.mrc")
    with pytest.raises(InvalidValueError):
        write_metrics_json(tmp_path / "bad.json", {"x": object()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "params.json"]
