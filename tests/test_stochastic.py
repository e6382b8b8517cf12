"""Stochastic bridges: bridge noise and score targets, the score network, SDE sampling."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import torch

import cellflow as cf
from cellflow.cli import main
from cellflow.model import TimeCourse
from cellflow.paths import (
    BrownianBridgePath,
    CubicSplinePath,
    LinearPath,
    MonotoneHermitePath,
)
from cellflow.solvers import euler_maruyama
from cellflow.solvers._sde import DEFAULT_STEPS, sde_grid

KNOTS = torch.tensor([0.0, 0.1, 0.35, 1.0], dtype=torch.float64)
SIGMA = 0.5  # the model's noise, in units of the data's overall standard deviation
MEANS = np.array([[0.0, 0.0], [3.0, 1.0]])
SDS = np.array([[1.0, 0.5], [0.7, 1.0]])  # per coordinate, at t = 0 and t = 2


def _bridge_paths():
    return [BrownianBridgePath(0.6), MonotoneHermitePath(KNOTS, 0.6), CubicSplinePath(KNOTS, 0.6)]


@pytest.mark.parametrize("path", _bridge_paths(), ids=lambda p: type(p).__name__)
def test_bridge_noise_vanishes_at_the_knots_and_its_score_target_is_the_weighted_score(path):
    gen = torch.Generator().manual_seed(0)
    tuples = torch.randn(len(KNOTS), 300, 2, generator=gen, dtype=torch.float64)
    eps = torch.randn(300, 2, generator=gen, dtype=torch.float64)
    segment = torch.randint(0, len(KNOTS) - 1, (300,), generator=gen)
    if isinstance(path, BrownianBridgePath):
        tuples, segment = tuples[:2], torch.zeros_like(segment)
    at = lambda s, noise: path.sample(tuples, segment, torch.full((300, 1), s, dtype=torch.float64), noise)  # noqa: E731
    rows = torch.arange(300)
    torch.testing.assert_close(at(0.0, eps).x, tuples[segment, rows], atol=1e-12, rtol=0)
    torch.testing.assert_close(at(1.0, eps).x, tuples[segment + 1, rows], atol=1e-12, rtol=0)
    s, h = 0.3, 1e-6
    point, mean = at(s, eps), at(s, torch.zeros_like(eps)).x
    torch.testing.assert_close(point.x - mean, 0.6 * (s * (1 - s)) ** 0.5 * eps)
    weighted_score = 0.6 * (s * (1 - s)) ** 0.5 * -(point.x - mean) / (0.6**2 * s * (1 - s))
    torch.testing.assert_close(point.score, weighted_score)
    torch.testing.assert_close(point.u, (at(s + h, eps).x - at(s - h, eps).x) / (2 * h), rtol=1e-5, atol=1e-6)


def test_paths_without_bridge_noise_give_no_score_target():
    x = torch.randn(2, 10, 2, dtype=torch.float64)
    zeros, s = torch.zeros(10, dtype=torch.long), torch.full((10, 1), 0.5, dtype=torch.float64)
    assert MonotoneHermitePath(KNOTS[:2], 0.0).sample(x, zeros, s, torch.zeros(10, 2, dtype=torch.float64)).score is None
    assert LinearPath(0.3).sample(x, zeros, s, torch.randn(10, 2, dtype=torch.float64)).score is None
    assert cf.CellFlow("sbcfm").has_score and cf.CellFlow("mmfm").has_score
    assert not cf.CellFlow("mmfm", sigma=0.0).has_score and not cf.CellFlow("otcfm").has_score


def test_sde_grid_stops_at_every_measured_time_both_ways():
    knots = np.array([0.0, 1.0, 3.0])
    grid, marks = sde_grid(knots, np.array([0.5, 2.0, 3.0]))
    assert grid[0] == 0.5 and list(grid[marks]) == [0.5, 2.0, 3.0] and 1.0 in grid
    np.testing.assert_allclose(np.diff(grid[grid <= 1.0]), 1 / DEFAULT_STEPS)
    np.testing.assert_allclose(np.diff(grid[grid >= 1.0]), 2 / DEFAULT_STEPS)
    back, marks = sde_grid(knots, np.array([3.0, 0.0]), step_size=0.3)
    assert list(back[marks]) == [3.0, 0.0] and 1.0 in back and np.all(np.diff(back) < 0)
    assert np.abs(np.diff(back)).max() <= 0.3 + 1e-12


def test_euler_maruyama_samples_the_brownian_bridge():
    # dx = -x / (1 - t) dt + sigma dW from x = 0 is the bridge back to 0: variance sigma^2 t (1 - t)
    n, sigma = 100_000, 0.8
    grid = np.linspace(0.0, 1.0, 201)
    out = euler_maruyama(lambda x, t0, t1: -x / (1 - t0), lambda t0, t1: torch.tensor(sigma, dtype=torch.float64),
                         torch.zeros(n, 1, dtype=torch.float64), grid, [0, 100, 150], torch.Generator().manual_seed(1))
    assert out.shape == (3, n, 1) and torch.all(out[0] == 0)
    for state, t in zip(out[1:], (0.5, 0.75)):
        variance = sigma**2 * t * (1 - t)
        assert abs(state.mean().item()) < 5 * (variance / n) ** 0.5
        assert state.var().item() == pytest.approx(variance, rel=0.02)


def _marginal(s, noise):
    """Mean and variance per coordinate at fraction ``s`` of the bridge of noise ``noise`` between the
    two independent Gaussians (the independent coupling keeps every marginal Gaussian)."""
    mean = (1 - s) * MEANS[0] + s * MEANS[1]
    return mean, (1 - s) ** 2 * SDS[0] ** 2 + s**2 * SDS[1] ** 2 + noise**2 * s * (1 - s)


@pytest.fixture(scope="module")
def gaussian_bridge():
    rng = np.random.default_rng(0)
    cells = [(m + sd * rng.normal(size=(1200, 2))).astype(np.float32) for m, sd in zip(MEANS, SDS)]
    course = TimeCourse(times=np.array([0.0, 2.0]), populations=cells, indices=[np.arange(1200)] * 2)
    model = cf.CellFlow("sbcfm", coupling="independent", sigma=SIGMA, n_steps=1500, hidden=(64, 64, 64), seed=0)
    return model.fit(course, progress=False), cells


@pytest.mark.parametrize("s", [0.25, 0.5, 0.75])
def test_score_network_recovers_the_gaussian_bridge_score(gaussian_bridge, s):
    model, _ = gaussian_bridge
    mean, variance = _marginal(s, SIGMA * model.scale)  # the bridge's noise in the data's units
    x = mean + np.sqrt(variance) * np.random.default_rng(1).normal(size=(2000, 2))
    truth = -(x - mean) / variance
    error = np.linalg.norm(model.score(x, 2.0 * s) - truth, axis=1).mean()
    assert error < 0.15 * np.linalg.norm(truth, axis=1).mean()


def test_sde_samples_have_the_bridge_marginals_both_ways(gaussian_bridge):
    # 4000 cells of each population: the sample variance's standard error is 2%; the rest of the 15%
    # allowed is the learned fields' error (the flow's own marginals are off by up to 11% mid-way)
    model, (start, end) = gaussian_bridge
    rng = np.random.default_rng(2)
    fresh_start, fresh_end = (m + sd * rng.normal(size=(4000, 2)) for m, sd in zip(MEANS, SDS))
    positions, mass = model.transport(fresh_start, [0.0, 1.0, 2.0], stochastic=True)
    np.testing.assert_allclose(positions[0], fresh_start, rtol=0, atol=1e-5)
    assert np.all(mass == 1.0)
    mean, variance = _marginal(0.5, SIGMA * model.scale)
    for sample, (m, v) in ((positions[1], (mean, variance)), (positions[2], (end.mean(0), end.var(0)))):
        np.testing.assert_allclose(sample.mean(0), m, atol=0.1)
        np.testing.assert_allclose(sample.var(0), v, rtol=0.15)
    back = model.push(fresh_end, 2.0, 0.0, stochastic=True)
    np.testing.assert_allclose(back.mean(0), start.mean(0), atol=0.1)
    np.testing.assert_allclose(back.var(0), start.var(0), rtol=0.15)


def test_sde_is_reproducible_with_a_seed_and_round_trips(gaussian_bridge, tmp_path):
    model, (start, _) = gaussian_bridge
    draw = lambda m, **kw: m.push(start[:200], 0.0, 1.3, stochastic=True, **kw)  # noqa: E731
    np.testing.assert_array_equal(draw(model, seed=5), draw(model, seed=5))
    np.testing.assert_array_equal(draw(model), draw(model, seed=model.params["seed"]))
    assert np.abs(draw(model, seed=5) - draw(model, seed=6)).mean() > 0.05
    restored = cf.CellFlow.load(model.save(tmp_path / "bridge"))
    assert restored.has_score
    np.testing.assert_array_equal(draw(restored, seed=5), draw(model, seed=5))
    np.testing.assert_array_equal(restored.score(start[:50], 0.7), model.score(start[:50], 0.7))


def test_stochastic_sampling_refuses_what_it_cannot_do(gaussian_bridge):
    model, (start, _) = gaussian_bridge
    with pytest.raises(ValueError, match="outside the measured times 0 to 2"):
        model.push(start, 0.0, 2.5, stochastic=True)
    with pytest.raises(ValueError, match="t include -1, outside the measured times"):
        model.score(start, -1.0)
    with pytest.raises(ValueError, match="solver='rk4' is an ODE solver"):
        model.push(start, 0.0, 1.0, stochastic=True, solver="rk4")
    course = TimeCourse(times=np.array([0.0, 1.0]), populations=[start[:100], start[:100] + 1], indices=[np.arange(100)] * 2)
    flow = cf.CellFlow("otcfm", n_steps=5, hidden=(8,)).fit(course, progress=False)
    with pytest.raises(ValueError, match=r"stochastic=True needs a learned score, but method 'otcfm'.*sbcfm"):
        flow.push(start, 0.0, 0.5, stochastic=True)


def test_interpolate_draws_the_sde_with_mmfm_and_growth():
    # PC 1 of the simulation moves at the constant speed 1, so along it a cell's distance from its own flow
    # path is the SDE's noise alone: diffusion g = sigma * scale / sqrt(h) (h = 1, the measured interval) over
    # the time travelled, held in a little by the score's drift; its RMS over cells against g sqrt(time)
    def noise_ratio(model, noisy, smooth, elapsed):
        deviation = np.sqrt(np.mean((noisy.obsm["X_pca"][:, 0] - smooth.obsm["X_pca"][:, 0]) ** 2))
        return deviation / (model.params["sigma"] * model.scale * np.sqrt(elapsed))

    adata = cf.datasets.simulate(n_cells=150, times=(0.0, 1.0, 2.0), growth_scale=0.5, seed=3)
    model = cf.tl.fit(adata, method="mmfm", n_steps=300, hidden=(32, 32), seed=0, progress=False)
    first = cf.tl.interpolate(adata, 0.0, 1.5, stochastic=True, seed=2)
    again = cf.tl.interpolate(adata, 0.0, 1.5, stochastic=True, seed=2)
    other = cf.tl.interpolate(adata, 0.0, 1.5, stochastic=True, seed=3)
    flow = cf.tl.interpolate(adata, 0.0, 1.5)
    assert first.n_obs == (adata.obs["time"] == 0.0).sum() and first.uns["cellflow_interpolation"]["stochastic"]
    np.testing.assert_array_equal(first.obsm["X_pca"], again.obsm["X_pca"])
    assert np.linalg.norm(first.obsm["X_pca"].mean(0) - flow.obsm["X_pca"].mean(0)) < 0.1 * np.linalg.norm(
        flow.obsm["X_pca"].std(0))
    # the bridge's noise level: measured ratio 0.86 (0.124 against 0.144); another seed draws other paths, as
    # far from the first as two independent draws are (sqrt 2 times the deviation: measured 0.199)
    assert 0.6 < noise_ratio(model, first, flow, 1.5) < 1.2
    assert 0.6 < noise_ratio(model, first, other, 1.5) / np.sqrt(2) < 1.2
    # the SDE has the flow's marginals: its spread is the flow's (measured 0.30, 1.12 against 0.27, 1.14)
    np.testing.assert_allclose(first.obsm["X_pca"].std(0), flow.obsm["X_pca"].std(0), rtol=0.25)
    # unbalanced with noise: a growth network beside the score network; the SDE carries masses too
    model = cf.tl.fit(adata, method="wfr", path="brownian", sigma=0.2, n_steps=300, hidden=(32, 32), seed=0,
                      progress=False, overwrite=True)
    noisy, smooth = cf.tl.interpolate(adata, 0.0, 1.0, stochastic=True), cf.tl.interpolate(adata, 0.0, 1.0)
    assert 0.6 < noise_ratio(model, noisy, smooth, 1.0) < 1.3  # measured 1.02 (0.239 against 0.235)
    # each path's mass is its own (measured mean |difference| 0.013 between seeds), the same for a seed
    again = cf.tl.interpolate(adata, 0.0, 1.0, stochastic=True, seed=model.params["seed"])
    np.testing.assert_array_equal(noisy.obs["cellflow_mass"], again.obs["cellflow_mass"])
    other = cf.tl.interpolate(adata, 0.0, 1.0, stochastic=True, seed=5)
    assert np.abs(noisy.obs["cellflow_mass"] - other.obs["cellflow_mass"]).mean() > 0.003
    assert noisy.obs["cellflow_mass"].mean() == pytest.approx(smooth.obs["cellflow_mass"].mean(), rel=0.1)


def test_a_model_saved_without_its_score_network_is_refused(gaussian_bridge):
    state = gaussian_bridge[0].to_dict()
    state["weights"] = {k: v for k, v in state["weights"].items() if not k.startswith("score.")}
    with pytest.raises(ValueError, match="has no score network: an earlier cellflow saved it"):
        cf.CellFlow.from_dict(state)


def test_cli_interpolates_stochastically_and_refuses_a_flow_without_score(tmp_path, capsys):
    course = tmp_path / "course.h5ad"
    cf.datasets.simulate(n_cells=80, times=(0.0, 1.0, 2.0), growth_scale=0.0, seed=0).write_h5ad(course)
    out = {}
    for method in ("sbcfm", "otcfm"):
        fitted = tmp_path / f"{method}.h5ad"
        assert main(["fit", str(course), "--method", method, "--steps", "20", "--out", str(fitted)]) == 0
        out[method] = ["interpolate", str(fitted), "--from", "0", "--to", "1.5", "--stochastic", "--seed", "4"]
    drawn = []
    for name in ("a.h5ad", "b.h5ad"):
        assert main([*out["sbcfm"], "--out", str(tmp_path / name)]) == 0
        drawn.append(ad.read_h5ad(tmp_path / name).obsm["X_pca"])
    np.testing.assert_array_equal(*drawn)
    capsys.readouterr()
    assert main([*out["otcfm"], "--out", str(tmp_path / "c.h5ad")]) == 1
    assert "stochastic=True needs a learned score, but method 'otcfm'" in capsys.readouterr().err
