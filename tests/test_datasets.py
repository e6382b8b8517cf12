"""Tests of cellflow.datasets: the published loaders (from local files, no network) and simulate()."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellflow import datasets
from cellflow.datasets import _files, _simulate

ENV = "CELLFLOW_DATA_DIR"
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _data_root() -> Path:
    return Path(os.environ[ENV]) if os.environ.get(ENV) else DEFAULT_DATA_DIR


@pytest.fixture
def data_dir(monkeypatch) -> Path:
    """Point CELLFLOW_DATA_DIR at the shared data folder (or keep the one already set)."""
    root = _data_root()
    missing = [name for name in datasets.SHA256 if not (root / name).is_file()]
    if missing:
        pytest.skip(f"dataset files {missing} not found in {root} (set {ENV} to a folder with the upstream files)")
    monkeypatch.setenv(ENV, str(root))
    return root


# --- registry ---------------------------------------------------------------------------------


def test_registry_matches_data_readme():
    readme = _data_root() / "README.md"
    if not readme.is_file():
        pytest.skip(f"{readme} not found")
    listed = dict(
        (name, digest)
        for digest, name in re.findall(r"^([0-9a-f]{64})\s+(\S+)$", readme.read_text(), flags=re.M)
    )
    assert listed == datasets.SHA256


def test_registry_urls():
    assert set(datasets.URLS) == set(datasets.SHA256)
    for name, url in datasets.URLS.items():
        assert re.fullmatch(r"https://raw\.githubusercontent\.com/[\w.-]+/[\w.-]+/[0-9a-f]{40}/\S+", url)
        assert url.endswith(Path(name).name)


def test_fetch_from_data_dir(data_dir):
    path = _files._fetch("deepruot/emt.csv")
    assert path == data_dir / "deepruot" / "emt.csv"


def test_fetch_uses_pooch_cache_without_data_dir(data_dir, monkeypatch, tmp_path):
    name = "deepruot/emt.csv"
    (tmp_path / "deepruot").mkdir()
    shutil.copy(data_dir / name, tmp_path / name)
    monkeypatch.delenv(ENV)
    monkeypatch.setenv(datasets.CACHE_DIR_ENV, str(tmp_path))
    # The cached file has the right hash, so pooch does not download anything.
    assert Path(_files._fetch(name)) == tmp_path / name


def test_wrong_checksum_raises(data_dir, monkeypatch, tmp_path):
    name = "deepruot/emt.csv"
    target = tmp_path / name
    target.parent.mkdir()
    raw = bytearray((data_dir / name).read_bytes())
    raw[10] = ord("7") if raw[10] != ord("7") else ord("8")
    target.write_bytes(bytes(raw))
    actual = hashlib.sha256(bytes(raw)).hexdigest()
    monkeypatch.setenv(ENV, str(tmp_path))
    with pytest.raises(ValueError, match="emt.csv") as info:
        datasets.emt()
    assert datasets.SHA256[name] in str(info.value)
    assert actual in str(info.value)


def test_missing_file_raises(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=ENV) as info:
        datasets.mouse_hematopoiesis()
    assert "mouse_hematopoiesis.csv" in str(info.value)


def test_unknown_name_raises():
    with pytest.raises(KeyError):
        _files._fetch("nope.csv")


# --- published loaders ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("loader", "n_dims", "counts"),
    [
        (datasets.simulation_gene, 2, {0: 400, 1: 442, 2: 530, 3: 690, 4: 969}),
        (datasets.emt, 10, {0: 577, 1: 885, 2: 788, 3: 883}),
        (datasets.mouse_hematopoiesis, 2, {0: 1429, 1: 3781, 2: 5788}),
    ],
)
def test_deepruot_loaders(data_dir, loader, n_dims, counts):
    adata = loader()
    assert adata.shape == (sum(counts.values()), n_dims)
    assert adata.X.dtype == np.float32
    assert adata.obs["time"].dtype == np.float64
    assert adata.obs["time"].value_counts().sort_index().to_dict() == counts
    assert list(adata.var_names) == [f"x{i + 1}" for i in range(n_dims)]
    np.testing.assert_array_equal(adata.obsm["X_pca"], adata.X)
    assert adata.obs_names.is_unique
    info = adata.uns["cellflow_dataset"]
    assert set(info) == {"name", "source", "license"}
    assert all(isinstance(v, str) for v in info.values())
    assert info["license"] == "MIT"


def test_simulation_gene_values(data_dir):
    adata = datasets.simulation_gene()
    # First row of the upstream file.
    np.testing.assert_allclose(adata.X[0], [2.0496714153011233, 0.18617356988288156], rtol=1e-6)
    assert adata.obs["time"].iloc[0] == 0.0


def test_kouno_thp1(data_dir):
    adata = datasets.kouno_thp1()
    assert adata.shape == (960, 45)
    assert adata.X.dtype == np.float32
    hours = [0.0, 1.0, 6.0, 12.0, 24.0, 48.0, 72.0, 96.0]
    assert adata.obs["time"].value_counts().sort_index().to_dict() == {h: 120 for h in hours}
    np.testing.assert_array_equal(adata.obs["time"].to_numpy(), np.repeat(hours, 120))
    raw = pd.read_csv(data_dir / "kouno_thp1" / "gb-2013-14-10-r118-s3.csv", index_col=0)
    np.testing.assert_allclose(adata.X, np.log2(raw.to_numpy()), rtol=1e-6)
    assert list(adata.var_names) == list(raw.columns)
    assert adata.obs_names.is_unique
    assert adata.obs_names[0] == "0-1" and adata.obs_names[120] == "1-Jan"
    assert "X_pca" not in adata.obsm


def test_kouno_thp1_pca(data_dir, tmp_path):
    adata = datasets.kouno_thp1(n_pcs=5)
    assert adata.obsm["X_pca"].shape == (960, 5)
    assert adata.varm["PCs"].shape == (45, 5)
    adata.write_h5ad(tmp_path / "kouno.h5ad")


def test_moscot_temporal(data_dir):
    adata = datasets.moscot_temporal()
    assert adata.shape == (250, 1479)
    assert adata.obs["time"].dtype == np.float64
    assert adata.obs["time"].value_counts().sort_index().to_dict() == {10.0: 85, 10.5: 81, 11.0: 84}
    np.testing.assert_array_equal(adata.obs["time"], adata.obs["day"].astype(float))
    assert {"tmap_10_105", "tmap_105_11", "tmap_10_11"} <= set(adata.uns)
    assert adata.uns["cellflow_dataset"]["license"] == "BSD-3-Clause"
    assert "X_pca" not in adata.obsm


def test_moscot_temporal_pca(data_dir):
    adata = datasets.moscot_temporal(n_pcs=10)
    assert adata.obsm["X_pca"].shape == (250, 10)
    assert adata.varm["PCs"].shape == (1479, 10)


# --- simulate ---------------------------------------------------------------------------------


def _closed_form(z0_2: np.ndarray, t: float, growth_scale: float):
    """z2(t) and log w(t) solved by hand: sinh(2 z2(t)) = sinh(2 z2(0)) e^{2.4 t}."""
    z2 = np.arcsinh(np.sinh(2.0 * z0_2) * np.exp(2.4 * t)) / 2.0
    return z2, growth_scale / 1.2 * (z2 - z0_2)


def test_simulate_structure(tmp_path):
    adata = datasets.simulate(n_cells=200, n_genes=30, times=(0.0, 1.5, 3.0))
    assert adata.n_vars == 30
    assert adata.X.dtype == np.float32 and adata.obsm["X_pca"].dtype == np.float32
    assert adata.obsm["X_pca"].shape == (adata.n_obs, 2)
    pcs = adata.varm["PCs"]
    np.testing.assert_allclose(pcs.T @ pcs, np.eye(2), atol=1e-6)
    np.testing.assert_allclose(adata.X, adata.obsm["X_pca"] @ pcs.T, rtol=1e-6, atol=1e-7)
    assert list(adata.obs["day"].cat.categories) == ["day 0", "day 1.5", "day 3"]
    np.testing.assert_array_equal(
        adata.obs["day"].astype(str).str.slice(4).astype(float), adata.obs["time"]
    )
    assert adata.obs["time"].dtype == np.float64
    info = adata.uns["cellflow_dataset"]
    assert info["name"] == "simulate" and info["times"] == [0.0, 1.5, 3.0]
    assert info["counts"] == adata.obs["time"].value_counts().sort_index().tolist()
    adata.write_h5ad(tmp_path / "sim.h5ad")


def test_simulate_no_growth_equal_counts():
    adata = datasets.simulate(n_cells=300, growth_scale=0.0)
    assert adata.obs["time"].value_counts().tolist() == [300] * 5
    np.testing.assert_array_equal(adata.obs["growth_true"], 0.0)


def test_simulate_counts_follow_growth():
    n_cells, growth_scale = 500, 0.5
    adata = datasets.simulate(n_cells=n_cells, growth_scale=growth_scale, noise=0.0)
    counts = adata.obs["time"].value_counts().sort_index()
    assert counts.iloc[0] == n_cells
    assert counts.iloc[-1] > 1.5 * n_cells  # the upper branch divides faster than the lower dies
    z0 = np.random.default_rng(12345).normal(0.0, 0.3, size=400_000)
    for t, n_t in counts.items():
        z2, logw = _closed_form(z0, t, growth_scale)
        w = np.exp(logw)
        assert n_t / n_cells == pytest.approx(w.mean(), rel=0.05)
        # Resampling follows the weights: the share of cells on the upper branch.
        upper = np.mean(adata.obsm["X_pca"][adata.obs["time"].to_numpy() == t, 1] > 0)
        assert upper == pytest.approx(np.sum(w * (z2 > 0)) / w.sum(), abs=0.08)


def test_simulate_drift():
    adata = datasets.simulate(n_cells=400, growth_scale=0.5)
    for t in (0.0, 1.0, 2.0, 3.0, 4.0):
        z1 = adata.obsm["X_pca"][adata.obs["time"].to_numpy() == t, 0]
        assert z1.mean() == pytest.approx(t, abs=0.1)


def test_simulate_truth_at_cells():
    exact = datasets.simulate(n_cells=200, noise=0.0, growth_scale=0.7)
    z = exact.obsm["X_pca"]
    np.testing.assert_allclose(exact.obsm["velocity_true_pca"], datasets.simulated_velocity(z), atol=1e-5)
    np.testing.assert_allclose(exact.obs["growth_true"], datasets.simulated_growth(z, 0.7), atol=1e-5)

    noisy = datasets.simulate(n_cells=200, noise=0.02)
    diff = noisy.obsm["velocity_true_pca"] - datasets.simulated_velocity(noisy.obsm["X_pca"])
    np.testing.assert_array_equal(diff[:, 0], 0.0)
    assert np.abs(diff[:, 1]).max() < 2.4 * 6 * 0.02  # |dv2/dz2| <= 2.4, noise below 6 sd
    assert 0 < np.abs(diff[:, 1]).mean() < 0.05


def test_simulated_truth_functions():
    z = np.array([[0.0, 0.0], [5.0, 10.0], [-1.0, -10.0]])
    np.testing.assert_allclose(datasets.simulated_velocity(z), [[1, 0], [1, 1.2], [1, -1.2]])
    np.testing.assert_allclose(datasets.simulated_growth(z, 0.5), [0, 0.5, -0.5])
    np.testing.assert_allclose(datasets.simulated_growth(z), datasets.simulated_growth(z, 0.5))


def test_integrator_matches_closed_form():
    z0 = np.random.default_rng(3).normal(0.0, 0.3, size=(1000, 2))
    z, logw = _simulate._integrate(z0, 2.5, 0.5)
    z2, logw_exact = _closed_form(z0[:, 1], 2.5, 0.5)
    np.testing.assert_allclose(z[:, 0], z0[:, 0] + 2.5, atol=1e-12)
    np.testing.assert_allclose(z[:, 1], z2, atol=1e-6)
    np.testing.assert_allclose(logw, logw_exact, atol=1e-6)


def test_simulate_determinism():
    a = datasets.simulate(n_cells=100, seed=7)
    b = datasets.simulate(n_cells=100, seed=7)
    c = datasets.simulate(n_cells=100, seed=8)
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.obs["time"], b.obs["time"])
    assert not np.array_equal(a.varm["PCs"], c.varm["PCs"])
    assert a.shape != c.shape or not np.array_equal(a.X, c.X)


@pytest.mark.parametrize(
    "kwargs", [{"times": (0.0, -1.0)}, {"times": (1.0, 1.0)}, {"times": ()}, {"n_genes": 1}, {"n_cells": 0}]
)
def test_simulate_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        datasets.simulate(**kwargs)
