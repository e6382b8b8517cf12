"""End to end: fitting, velocity keys, .h5ad round trips, interpolation, the benchmark, the CLI."""

from __future__ import annotations

import subprocess
import sys

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch

import cellflow as cf
from cellflow.model import TimeCourse


def _cosine(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_otcfm_recovers_gaussian_monge_map(gaussian_pair, monge_map):
    x0, x1, params = gaussian_pair(1500, seed=4)
    course = TimeCourse(times=np.array([0.0, 2.0]), populations=[x0, x1], indices=[np.arange(1500)] * 2)
    model = cf.CellFlow("otcfm", n_steps=1500, seed=0).fit(course, progress=False)
    test = gaussian_pair(400, seed=9)[0]
    error = np.linalg.norm(model.push(test, 0.0, 2.0) - monge_map(test, *params), axis=1)
    displacement = np.linalg.norm(monge_map(test, *params) - test, axis=1)
    assert error.mean() < 0.05 * displacement.mean()
    # halfway, the flow sits at McCann's interpolant; velocity is in units per time (interval of 2)
    halfway = model.push(test, 0.0, 1.0)
    assert np.linalg.norm(halfway - 0.5 * (test + monge_map(test, *params)), axis=1).mean() < 0.1
    v = model.velocity(test, 0.0)
    assert np.linalg.norm(v - (monge_map(test, *params) - test) / 2.0, axis=1).mean() < 0.1


def test_learned_velocity_matches_simulation(simulated):
    adata, _ = simulated
    learned = adata.obsm["cellflow_velocity_pca"]
    truth = adata.obsm["velocity_true_pca"]
    cosine = _cosine(learned, truth)
    assert np.median(cosine) > 0.95 and cosine.mean() > 0.9
    assert np.median(np.linalg.norm(learned, axis=1) / np.linalg.norm(truth, axis=1)) == pytest.approx(1.0, abs=0.15)


def test_velocity_keys_and_shapes(simulated):
    adata, _ = simulated
    v = adata.obsm["cellflow_velocity_pca"]
    assert v.shape == adata.obsm["X_pca"].shape
    genes = adata.layers["cellflow_velocity"]
    assert genes.shape == adata.shape and sp.issparse(genes)
    np.testing.assert_allclose(genes.toarray(), v @ adata.varm["PCs"].T, rtol=1e-5, atol=1e-6)
    assert adata.var["cellflow_velocity_genes"].all()  # the simulated PCs load every gene
    assert list(adata.uns["cellflow_velocity_params"]["embeddings"]) == ["pca"]
    state = adata.uns["cellflow"]
    assert state["params"]["method"] == "otcfm" and state["time_key"] == "time"
    assert len(state["history"]["loss"]) == 1500


def test_h5ad_round_trip_restores_identical_model(simulated, tmp_path):
    adata, model = simulated
    adata.write_h5ad(tmp_path / "fitted.h5ad")
    back = ad.read_h5ad(tmp_path / "fitted.h5ad")
    restored = cf.tl.load_model(back)
    x = adata.obsm["X_pca"][:50]
    np.testing.assert_array_equal(restored.velocity(x, 1.3), model.velocity(x, 1.3))
    a = cf.tl.interpolate(adata, 1.0, 2.5)
    b = cf.tl.interpolate(back, 1.0, 2.5)
    np.testing.assert_array_equal(a.obsm["X_pca"], b.obsm["X_pca"])


def test_interpolate_at_measured_time_lands_there(simulated):
    adata, _ = simulated
    pred = cf.tl.interpolate(adata, 1.0, 2.0)
    assert pred.n_obs == (adata.obs["time"] == 1.0).sum()
    assert (pred.obs["time"] == 2.0).all() and (pred.obs["cellflow_mass"] == 1.0).all()
    reconstructed = cf.tl.interpolate(adata, 1.0, 2.0, expression="pca").X
    np.testing.assert_allclose(reconstructed, pred.obsm["X_pca"] @ adata.varm["PCs"].T + adata.X.mean(0), rtol=1e-4,
                               atol=1e-4)
    # by default read off the measured cells of day 2 near each predicted cell: X is X_pca @ PCs.T here (not
    # centred), so the reading lies near that of the predicted position, against the reconstruction's offset
    exact = pred.obsm["X_pca"] @ adata.varm["PCs"].T
    spread = np.abs(exact - exact.mean(0)).mean()
    assert np.abs(pred.X - exact).mean() < 0.1 * spread < np.abs(reconstructed - exact).mean()
    distance = {t: cf.metrics.w1(pred.obsm["X_pca"], adata.obsm["X_pca"][adata.obs["time"] == t]) for t in (1.0, 2.0, 3.0)}
    assert distance[2.0] < 0.5 * min(distance[1.0], distance[3.0])
    backward = cf.tl.interpolate(adata, 2.0, 1.0)
    assert cf.metrics.w1(backward.obsm["X_pca"], adata.obsm["X_pca"][adata.obs["time"] == 1.0]) < 0.5 * distance[1.0]


def test_interpolate_needs_measured_start(simulated):
    adata, _ = simulated
    with pytest.raises(ValueError, match="1.5 is not a measured time point"):
        cf.tl.interpolate(adata, 1.5, 2.0)


def test_fit_refuses_to_overwrite_foreign_keys():
    adata = cf.datasets.simulate(n_cells=60, times=(0, 1), seed=0)
    adata.obsm["cellflow_velocity_pca"] = np.zeros_like(adata.obsm["X_pca"])
    with pytest.raises(ValueError, match="cellflow_velocity_pca.*key_added"):
        cf.tl.fit(adata, n_steps=5, progress=False)
    cf.tl.fit(adata, n_steps=5, progress=False, key_added="flow")
    assert "flow_velocity_pca" in adata.obsm and (adata.obsm["cellflow_velocity_pca"] == 0).all()
    cf.tl.fit(adata, n_steps=5, progress=False, key_added="flow")  # refitting our own keys is fine


@pytest.mark.parametrize("method", ["icfm", "sbcfm"])
def test_other_methods_and_seed_determinism(method):
    adata = cf.datasets.simulate(n_cells=80, times=(0, 1, 2), growth_scale=0.0, seed=2)
    first = cf.tl.fit(adata, method=method, n_steps=40, seed=3, progress=False)
    again = cf.tl.fit(adata.copy(), method=method, n_steps=40, seed=3, progress=False)
    other = cf.tl.fit(adata.copy(), method=method, n_steps=40, seed=4, progress=False)
    x = adata.obsm["X_pca"]
    np.testing.assert_array_equal(first.velocity(x, 0.5), again.velocity(x, 0.5))
    assert not np.allclose(first.velocity(x, 0.5), other.velocity(x, 0.5))


def test_unknown_method_is_named():
    with pytest.raises(ValueError, match="method='foo'.*otcfm"):
        cf.CellFlow("foo")


def test_leave_one_out_table():
    adata = cf.datasets.simulate(n_cells=100, times=(0, 1, 2, 3), growth_scale=0.0, seed=0)
    table = cf.tl.leave_one_out(adata, method=["otcfm"], seeds=[0], n_steps=200, progress=False)
    assert set(table["method"]) == {"otcfm", *cf.benchmark.BASELINES}
    assert sorted(table["held_out_time"].unique()) == [1.0, 2.0]
    assert {"w1", "w2", "mmd", "seconds", "n_predicted"} <= set(table.columns)
    w1 = table.set_index(["method", "held_out_time"])["w1"]
    at = adata.obs["time"].to_numpy()
    for held in (1.0, 2.0):
        measured = adata.obsm["X_pca"][at == held]
        # the sampling floor (a fresh sample of the true population: measured 0.17, 0.21) and no movement
        truth = cf.datasets.simulate(n_cells=100, times=(held,), growth_scale=0.0, seed=7).obsm["X_pca"]
        floor = cf.metrics.w1(truth, measured)
        stay = cf.metrics.w1(adata.obsm["X_pca"][at == held - 1], measured)  # measured 1.0 and 1.0
        # balanced and growth-free, so OT interpolation is near the truth (measured 0.22, 0.24)
        assert floor < w1["ot_interpolation", held] < 1.6 * floor
        # 200 steps: otcfm is behind it (measured 0.58, 0.47) but far better than not moving
        assert floor < w1["otcfm", held] < min(3.5 * w1["ot_interpolation", held], 0.6 * stay)
    sizes = adata.obs["time"].value_counts()
    flows = table[table["method"] != "ot_interpolation"]
    assert (flows["n_predicted"].to_numpy() == sizes[flows["held_out_time"] - 1].to_numpy()).all()


def test_ot_interpolation_of_gaussians_is_mccann(gaussian_pair, monge_map):
    x0, x1, params = gaussian_pair(800)
    points, masses = cf.benchmark.ot_interpolation(x0, x1, 0.25)
    assert masses.sum() == pytest.approx(1.0)
    target = 0.75 * x0 + 0.25 * monge_map(x0, *params)
    assert cf.metrics.w1(points, target, x_weights=masses) < 0.12


def test_ot_barycentric_map_is_one_point_per_cell_at_the_mean_of_its_splits(gaussian_pair):
    x0, x1 = np.array([[0.0], [1.0]]), np.array([[0.0], [0.2], [1.0], [1.2]])
    moved = cf.benchmark.ot_barycentric_map(x0, x1, 0.5)
    np.testing.assert_allclose(moved, [[0.05], [1.05]])
    points, masses = cf.benchmark.ot_interpolation(x0, x1, 0.5)
    assert len(points) == 4
    np.testing.assert_allclose(np.sort(points[:, 0]), [0.0, 0.1, 1.0, 1.1])
    np.testing.assert_allclose(masses, 0.25)
    # a permutation plan splits nothing: map and interpolation are the same points
    y0, y1, _ = gaussian_pair(200)
    permuted, _ = cf.benchmark.ot_interpolation(y0, y1, 0.3)
    mapped = cf.benchmark.ot_barycentric_map(y0, y1, 0.3)
    np.testing.assert_allclose(np.sort(mapped, axis=0), np.sort(permuted, axis=0), atol=1e-9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_fit_on_cuda_matches_cpu_quality():
    adata = cf.datasets.simulate(n_cells=200, times=(0, 1, 2), growth_scale=0.0, seed=0)
    model = cf.tl.fit(adata, n_steps=500, device="cuda", progress=False)
    assert model.device.type == "cuda"
    cosine = _cosine(adata.obsm["cellflow_velocity_pca"], adata.obsm["velocity_true_pca"])
    assert np.median(cosine) > 0.9


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "cellflow.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.slow  # a process of its own; CI's smoke check runs the same demo from the wheel on 3.13
def test_cli_demo_writes_h5ad_and_png(tmp_path):
    done = _cli("demo", "--out", "demo", "--steps", "30", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "demo" / "cellflow_demo.h5ad").is_file()
    png = (tmp_path / "demo" / "cellflow_demo_velocity.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert "cellflow_demo_velocity.png" in done.stdout
