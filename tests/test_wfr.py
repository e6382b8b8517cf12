"""Unbalanced transport: the WFR geodesic's identities, the static coupling, growth recovery."""

from __future__ import annotations

import math

import anndata as ad
import numpy as np
import pytest
import torch

import cellflow as cf
from cellflow.model import cross_validated_delta, default_delta, wfr_interpolation
from cellflow.model._delta import DELTA_FACTORS
from cellflow.model._resolve import source_masses
from cellflow.paths import LinearPath, WFRPath
from cellflow.transport import ExactOTCoupling, WFRCoupling

DELTA = 0.8


def _pairs(n=16, seed=0, spread=0.9):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    step = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    step = step / step.norm(dim=1, keepdim=True) * torch.rand(n, 1, generator=gen, dtype=torch.float64) * spread * math.pi * DELTA
    m0 = torch.rand(n, generator=gen, dtype=torch.float64) * 2 + 0.1
    m1 = torch.rand(n, generator=gen, dtype=torch.float64) * 2 + 0.1
    return x0, x0 + step, m0, m1


def _at(path, x0, x1, m0, m1, s):
    return path.pair(x0, x1, torch.full((len(x0), 1), float(s), dtype=torch.float64), torch.zeros_like(x0), m0, m1)


def test_geodesic_hits_both_endpoints():
    x0, x1, m0, m1 = _pairs()
    path = WFRPath(DELTA)
    start, end = _at(path, x0, x1, m0, m1, 0.0), _at(path, x0, x1, m0, m1, 1.0)
    torch.testing.assert_close(start.x, x0, atol=1e-12, rtol=0)
    torch.testing.assert_close(end.x, x1, atol=1e-9, rtol=0)
    torch.testing.assert_close(start.weight * m0, m0, atol=1e-12, rtol=0)
    torch.testing.assert_close(end.weight * m0, m1, atol=1e-9, rtol=0)


@pytest.mark.parametrize("s", [0.1, 0.37, 0.5, 0.81, 0.95])
def test_geodesic_targets_are_derivatives(s):
    x0, x1, m0, m1 = _pairs(seed=1)
    path, h = WFRPath(DELTA), 1e-6
    here, ahead, behind = (_at(path, x0, x1, m0, m1, s + e) for e in (0.0, h, -h))
    torch.testing.assert_close(here.u, (ahead.x - behind.x) / (2 * h), atol=1e-6, rtol=1e-6)
    mass = lambda p: p.weight * m0  # noqa: E731
    torch.testing.assert_close(here.g * mass(here), (mass(ahead) - mass(behind)) / (2 * h), atol=1e-6, rtol=1e-6)


def test_geodesic_action_equals_closed_form():
    x0, x1, m0, m1 = _pairs(seed=2)
    path = WFRPath(DELTA)
    nodes, weights = np.polynomial.legendre.leggauss(200)
    action = torch.zeros(len(x0), dtype=torch.float64)
    for node, weight in zip((nodes + 1) / 2, weights / 2):
        p = _at(path, x0, x1, m0, m1, node)
        action += weight * ((p.u**2).sum(1) / 2 + DELTA**2 * p.g**2 / 2) * p.weight * m0
    d = (x1 - x0).norm(dim=1)
    closed = 2 * DELTA**2 * (m0 + m1 - 2 * torch.sqrt(m0 * m1) * torch.cos(d / (2 * DELTA)))
    torch.testing.assert_close(action, closed, atol=1e-6, rtol=1e-6)


def test_moving_without_growth_dips_in_mass():
    # equal masses: the geodesic's growth is -2 (1 - cos phi) at the start, +2 (1 - cos phi) at
    # the end, and the mass half-way is cos^2(phi / 2) (the notes of default_delta rely on it)
    x0, x1, m0, _ = _pairs(seed=4)
    phi = (x1 - x0).norm(dim=1) / (2 * DELTA)
    path = WFRPath(DELTA)
    start, middle, end = (_at(path, x0, x1, m0, m0, s) for s in (0.0, 0.5, 1.0))
    torch.testing.assert_close(start.g, -2 * (1 - torch.cos(phi)))
    torch.testing.assert_close(end.g, 2 * (1 - torch.cos(phi)))
    torch.testing.assert_close(middle.weight, torch.cos(phi / 2) ** 2)


def test_large_delta_gives_ot_cfm_targets():
    x0, x1, _, _ = _pairs(seed=3)
    ones = torch.ones(len(x0), dtype=torch.float64)
    s = torch.rand(len(x0), 1, dtype=torch.float64)
    eps = torch.zeros_like(x0)
    wfr = WFRPath(1e7).pair(x0, x1, s, eps, ones, ones)
    linear = LinearPath(0.0).pair(x0, x1, s, eps)
    torch.testing.assert_close(wfr.x, linear.x, atol=1e-6, rtol=0)
    torch.testing.assert_close(wfr.u, linear.u, atol=1e-6, rtol=0)
    torch.testing.assert_close(wfr.g, torch.zeros_like(wfr.g), atol=1e-6, rtol=0)


def test_pure_growth_and_death_in_place_stay_finite():
    x0 = torch.zeros(2, 2, dtype=torch.float64)
    m0 = torch.tensor([1.0, 2.0], dtype=torch.float64)
    m1 = torch.tensor([3.0, 0.0], dtype=torch.float64)
    for s in (0.0, 0.5, 0.9):
        p = _at(WFRPath(DELTA), x0, x0, m0, m1, s)
        assert torch.isfinite(p.x).all() and torch.isfinite(p.g).all()
        torch.testing.assert_close(p.x, x0)
    dying = _at(WFRPath(DELTA), x0, x0, m0, m1, 0.5)
    assert dying.g[1].item() == pytest.approx(-2 / (1 - 0.5))  # m(s) = m0 (1-s)^2
    assert dying.weight[1].item() == pytest.approx(0.25)


def test_semi_couplings_carry_the_cell_masses():
    rng = np.random.default_rng(0)
    x0, x1 = rng.normal(size=(60, 2)), rng.normal(size=(90, 2)) * 1.2
    sampler = WFRCoupling(delta=1.0).sampler(x0, x1)
    plan = sampler.plan.tocoo()
    gamma0 = np.zeros(60)
    everything = sampler.all_pairs()
    i, j, m0, m1, died = (v.numpy() for v in (everything.i, everything.j, everything.m0, everything.m1, everything.died))
    np.add.at(gamma0, i, m0)
    gamma1 = np.zeros(90)
    np.add.at(gamma1, j[~died], m1[~died])
    np.testing.assert_allclose(gamma0, 1.0)  # every source cell carries its unit mass
    reached = np.unique(plan.col)
    np.testing.assert_allclose(gamma1[reached], 1.0)  # every reached target cell receives one
    pairs = sampler.sample(100_000)
    np.testing.assert_allclose(np.bincount(pairs.i.numpy(), minlength=60) / 1e5, 1 / 60, atol=3e-3)


def test_no_transport_beyond_pi_delta():
    rng = np.random.default_rng(1)
    near, far = rng.normal(size=(20, 2)) * 0.1, rng.normal(size=(30, 2)) * 0.1 + [10.0, 0.0]
    coupling = WFRCoupling(delta=1.0)
    sampler = coupling.sampler(np.concatenate([near, far]), near + 0.05)
    rows = np.unique(sampler.plan.tocoo().row)
    assert set(rows) <= set(range(20))
    assert sampler.n_died == 30
    pairs = sampler.sample(5000)
    assert (pairs.m1[pairs.died] == 0).all() and (pairs.i[pairs.died] >= 20).all()


def test_default_delta_scales_with_the_data():
    rng = np.random.default_rng(2)
    pops = [rng.normal(size=(200, 2)) + [k, 0] for k in range(3)]
    delta = default_delta(pops)
    assert 0.3 < delta < 3
    assert default_delta([p * 10 for p in pops]) == pytest.approx(10 * delta, rel=1e-6)


def test_wfr_interpolation_starts_at_the_source_and_ends_with_the_target_mass():
    rng = np.random.default_rng(3)
    x0 = rng.normal(size=(150, 2))
    x1 = rng.normal(size=(240, 2)) * 0.8 + [0.5, 0]
    points, mass = wfr_interpolation(x0, x1, 0.0, 1.0, n_points=500)
    assert mass == pytest.approx(150, rel=1e-6)
    assert np.isin(points[:, 0], x0[:, 0]).all()
    assert wfr_interpolation(x0, x1, 1.0, 1.0)[1] == pytest.approx(240, rel=1e-6)
    # half-way the population has grown part of the way: between the two sizes
    assert 150 < wfr_interpolation(x0, x1, 0.5, 1.0)[1] < 240


def test_cross_validated_delta_lets_a_drifting_cloud_move():
    """Cells drifting by a fixed step and neither dividing nor dying: the time point in the middle
    is predicted by transport, so the chosen delta keeps that step inside the transport horizon,
    never one of the small candidates that would explain it by death and birth."""
    rng = np.random.default_rng(4)
    base = rng.normal(size=(200, 2)) * 0.3
    times = np.array([0.0, 1.0, 2.0, 3.0])
    pops = [base + [1.5 * t, 0] + rng.normal(size=(200, 2)) * 0.05 for t in times]
    rule = default_delta(pops)
    chosen = cross_validated_delta(pops, times)
    assert min(abs(chosen / rule - factor) for factor in DELTA_FACTORS) < 1e-9
    assert math.pi * chosen > 2 * 1.5  # the two-interval step is transported
    assert cross_validated_delta([p * 10 for p in pops], times) == pytest.approx(10 * chosen, rel=1e-6)
    assert cross_validated_delta(pops[:2], times[:2]) == pytest.approx(default_delta(pops[:2]))  # no inner time


@pytest.fixture(scope="module")
def growing():
    adata = cf.datasets.simulate(n_cells=400, times=(0.0, 1.0, 2.0, 3.0), growth_scale=0.5, seed=3)
    model = cf.tl.fit(adata, method="wfr", n_steps=1500, seed=0, progress=False)
    return adata, model


def test_wfr_learns_growth_on_simulation(growing):
    adata, model = growing
    learned, truth = adata.obs["cellflow_growth_rate"].to_numpy(), adata.obs["growth_true"].to_numpy()
    assert np.corrcoef(learned, truth)[0, 1] > 0.5
    # dividing cells (true rate > 0.3) grow, dying ones (< -0.3) shrink, on average
    assert learned[truth > 0.3].mean() > 0.15 and learned[truth < -0.3].mean() < -0.05


def test_wfr_predicts_population_sizes(growing):
    adata, model = growing
    n = adata.obs["time"].value_counts()
    for t in (1.0, 2.0, 3.0):
        pred = cf.tl.interpolate(adata, 0.0, t)
        ratio = pred.obs["cellflow_mass"].sum() / n[0.0]
        assert ratio == pytest.approx(n[t] / n[0.0], rel=0.2)


def test_wfr_round_trip_and_velocity(growing, tmp_path):
    adata, model = growing
    adata.write_h5ad(tmp_path / "wfr.h5ad")
    back = ad.read_h5ad(tmp_path / "wfr.h5ad")
    restored = cf.tl.load_model(back)
    x = adata.obsm["X_pca"][:40]
    np.testing.assert_array_equal(restored.growth(x, 0.5), model.growth(x, 0.5))
    np.testing.assert_array_equal(back.obs["cellflow_growth_rate"], adata.obs["cellflow_growth_rate"])
    v, truth = adata.obsm["cellflow_velocity_pca"], adata.obsm["velocity_true_pca"]
    cosine = (v * truth).sum(1) / np.linalg.norm(v, axis=1) / np.linalg.norm(truth, axis=1)
    assert np.median(cosine) > 0.95


@pytest.mark.parametrize("coupling, path", [("wfr", "linear"), ("exact", "wfr")])
def test_growth_with_other_combinations(coupling, path):
    adata = cf.datasets.simulate(n_cells=80, times=(0, 1, 2), seed=0)
    model = cf.tl.fit(adata, method="otcfm", coupling=coupling, path=path, n_steps=30, progress=False)
    assert model.has_growth and np.isfinite(adata.obs["cellflow_growth_rate"]).all()
    pred = cf.tl.interpolate(adata, 0.0, 1.0)
    assert (pred.obs["cellflow_mass"] > 0).all()
    learned, truth = adata.obs["cellflow_growth_rate"].to_numpy(), adata.obs["growth_true"].to_numpy()
    assert np.corrcoef(learned, truth)[0, 1] > 0.4  # measured 0.63 and 0.57
    n = adata.obs["time"].value_counts()
    carried = cf.tl.interpolate(adata, 0.0, 2.0).obs["cellflow_mass"].mean()
    if coupling == "wfr":  # unbalanced pairs carry the change in cell numbers: measured 1.35 against 1.375
        assert carried == pytest.approx(n[2.0] / n[0.0], rel=0.15)
    else:  # balanced pairs of unit masses: the WFR path ends each interval with the mass it began (measured 1.01)
        assert carried == pytest.approx(1.0, abs=0.1)


def test_prior_growth_reweights_the_source_marginal():
    adata = cf.datasets.simulate(n_cells=80, times=(0, 1), seed=0)
    adata.obs["prior"] = np.where(adata.obsm["X_pca"][:, 1] > 0, 1.0, -1.0)
    course = cf.read_time_course(adata, "time", growth_key="prior")
    masses = source_masses(course)
    sampler = ExactOTCoupling().sampler(*course.populations, masses[0], np.ones(len(course.populations[1])))
    rows = np.asarray(sampler.plan.sum(axis=1)).ravel()
    up = adata.obs["prior"].to_numpy()[course.indices[0]] > 0
    assert rows[up].mean() / rows[~up].mean() == pytest.approx(np.exp(2.0), rel=1e-6)
    cf.tl.fit(adata, method="wfr", growth_key="prior", n_steps=20, progress=False)
    with pytest.raises(KeyError, match="growth_key='nope'"):
        cf.tl.fit(adata, growth_key="nope", n_steps=5, progress=False)
