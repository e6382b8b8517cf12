"""Multimarginal flow matching: chains through all time points, the batched spline, one field."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

import cellflow as cf
from cellflow.couplings import ExactOTCoupling, WFRCoupling, sample_chains
from cellflow.paths import CubicSplinePath, MonotoneHermitePath


def _chains(sizes, n, seed=0, coupling=None):
    rng = np.random.default_rng(seed)
    pops = [rng.normal(k, 1 + 0.2 * k, size=(m, 1)) for k, m in enumerate(sizes)]
    coupling = coupling or ExactOTCoupling()
    links = sample_chains([coupling.sampler(pops[k], pops[k + 1]) for k in range(len(pops) - 1)], n, rng)
    idx = [links[0].i] + [link.j for link in links]
    return pops, idx, np.stack([pops[k][idx[k], 0] for k in range(len(pops))])


def test_chains_keep_rank_order_end_to_end():
    _, _, values = _chains([40, 40, 40, 40, 40], 2000)
    for k in range(1, 5):  # equal sizes: every plan is a permutation, chains are exact
        assert spearmanr(values[0], values[k]).correlation == pytest.approx(1.0)


def test_chains_keep_rank_order_with_unequal_sizes():
    _, _, values = _chains([50, 80, 30, 60], 20_000)
    head = slice(0, 2000)
    for k in range(3):  # each link is monotone: a strictly larger cell never goes to a smaller one
        smaller = values[k][head, None] < values[k][None, head]
        not_larger = values[k + 1][head, None] <= values[k + 1][None, head]
        assert not_larger[smaller].all()
    assert spearmanr(values[0], values[3]).correlation > 0.97


def test_tuples_have_the_populations_as_marginals():
    pops, idx, _ = _chains([50, 80, 30, 60], 60_000, seed=1)
    for pop, cells in zip(pops, idx):
        freq = np.bincount(cells, minlength=len(pop)) / len(cells)
        np.testing.assert_allclose(freq, 1 / len(pop), atol=0.25 / len(pop))


def test_unbalanced_chains_carry_masses_and_deaths():
    rng = np.random.default_rng(2)
    pops = [rng.normal(size=(40, 2)), np.concatenate([rng.normal(size=(40, 2)), rng.normal(size=(5, 2)) + 30])]
    sampler = WFRCoupling(delta=0.8).sampler(pops[1], pops[0])
    link = sample_chains([sampler], 5000, rng)[0]
    assert link.died[link.i >= 40].all() and link.died[link.i < 40].mean() < 0.1
    assert (link.m1[link.died] == 0).all() and (link.m0 > 0).all()


def _spline_case(seed=0):
    gen = torch.Generator().manual_seed(seed)
    knots = torch.tensor([0.0, 0.1, 0.35, 0.4, 1.0], dtype=torch.float64)
    tuples = torch.randn(5, 64, 3, generator=gen, dtype=torch.float64)
    return CubicSplinePath(knots), knots, tuples


def test_spline_passes_through_every_knot():
    path, knots, tuples = _spline_case()
    zeros = torch.zeros(64, 3, dtype=torch.float64)
    for k in range(4):
        segment = torch.full((64,), k)
        start = path.sample(tuples, segment, torch.zeros(64, 1, dtype=torch.float64), zeros)
        end = path.sample(tuples, segment, torch.ones(64, 1, dtype=torch.float64), zeros)
        torch.testing.assert_close(start.x, tuples[k])
        torch.testing.assert_close(end.x, tuples[k + 1])


def test_spline_derivative_matches_finite_differences_and_is_continuous():
    path, knots, tuples = _spline_case(1)
    zeros = torch.zeros(64, 3, dtype=torch.float64)
    h = 1e-6
    for k in range(4):
        segment = torch.full((64,), k)
        width = (knots[k + 1] - knots[k]).item()
        s = torch.full((64, 1), 0.37, dtype=torch.float64)
        ahead = path.sample(tuples, segment, s + h / width, zeros).x
        behind = path.sample(tuples, segment, s - h / width, zeros).x
        # u is per unit fraction of the segment: dx/dt times the segment's width
        torch.testing.assert_close(path.sample(tuples, segment, s, zeros).u / width, (ahead - behind) / (2 * h), rtol=1e-5, atol=1e-5)
    widths = knots[1:] - knots[:-1]
    for k in range(3):  # C1 at interior knots, in real time
        left = path.sample(tuples, torch.full((64,), k), torch.ones(64, 1, dtype=torch.float64), zeros).u / widths[k]
        right = path.sample(tuples, torch.full((64,), k + 1), torch.zeros(64, 1, dtype=torch.float64), zeros).u / widths[k + 1]
        torch.testing.assert_close(left, right)


def test_spline_through_collinear_knots_is_the_line():
    knots = torch.tensor([0.0, 0.2, 0.7, 1.0], dtype=torch.float64)
    direction = torch.randn(1, 10, 2, dtype=torch.float64)
    tuples = knots[:, None, None] * direction + 1.0
    point = CubicSplinePath(knots).sample(tuples, torch.full((10,), 1), torch.full((10, 1), 0.3, dtype=torch.float64), torch.zeros(10, 2, dtype=torch.float64))
    torch.testing.assert_close(point.u / (knots[2] - knots[1]), direction[0].expand(10, 2))


@pytest.fixture(scope="module")
def multimarginal():
    adata = cf.datasets.simulate(n_cells=300, times=(0.0, 1.0, 2.0, 3.0), growth_scale=0.0, seed=5)
    model = cf.tl.fit(adata, method="mmfm", n_steps=800, seed=0, progress=False)
    return adata, model


def test_mmfm_learns_the_simulated_velocity(multimarginal):
    adata, _ = multimarginal
    v, truth = adata.obsm["cellflow_velocity_pca"], adata.obsm["velocity_true_pca"]
    cosine = (v * truth).sum(1) / np.linalg.norm(v, axis=1) / np.linalg.norm(truth, axis=1)
    assert np.median(cosine) > 0.95


def test_one_velocity_field_is_continuous_across_measured_times(multimarginal):
    adata, model = multimarginal
    x = adata.obsm["X_pca"][adata.obs["time"] == 1.0]
    for t in (1.0, 2.0):
        before, after = model.velocity(x, t - 1e-3), model.velocity(x, t + 1e-3)
        jump = np.linalg.norm(after - before, axis=1) / np.linalg.norm(before, axis=1)
        assert np.median(jump) < 0.02


def test_held_out_time_is_not_a_knot():
    adata = cf.datasets.simulate(n_cells=120, times=(0.0, 1.0, 2.5, 3.0), growth_scale=0.0, seed=0)
    table = cf.tl.leave_one_out(adata, method="mmfm", seeds=[0], n_steps=100, progress=False, baseline=False)
    assert sorted(table["held_out_time"]) == [1.0, 2.5] and np.isfinite(table["w1"]).all()


@pytest.mark.parametrize("path", ["wfr", "spline"])
def test_unbalanced_multimarginal(path):
    adata = cf.datasets.simulate(n_cells=120, times=(0.0, 1.0, 2.0), seed=0)
    model = cf.tl.fit(adata, method="mmfm", coupling="wfr", path=path, n_steps=60, progress=False)
    assert model.has_growth and model.multimarginal
    assert np.isfinite(adata.obs["cellflow_growth_rate"]).all()


def test_monotone_hermite_hits_knots_matches_derivative_and_never_overshoots():
    knots = torch.tensor([0.0, 0.02, 0.3, 0.35, 1.0], dtype=torch.float64)
    tuples = torch.randn(5, 64, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    path, zeros, h = MonotoneHermitePath(knots), torch.zeros(64, 3, dtype=torch.float64), 1e-6
    for k in range(4):
        segment = torch.full((64,), k)
        ends = [path.sample(tuples, segment, torch.full((64, 1), e, dtype=torch.float64), zeros).x for e in (0.0, 1.0)]
        torch.testing.assert_close(ends[0], tuples[k])
        torch.testing.assert_close(ends[1], tuples[k + 1])
        width = (knots[k + 1] - knots[k]).item()
        s = torch.rand(64, 1, dtype=torch.float64) * 0.9 + 0.05
        point = path.sample(tuples, segment, s, zeros)
        ahead = path.sample(tuples, segment, s + h / width, zeros).x
        behind = path.sample(tuples, segment, s - h / width, zeros).x
        torch.testing.assert_close(point.u / width, (ahead - behind) / (2 * h), rtol=1e-5, atol=1e-5)
        low, high = torch.minimum(tuples[k], tuples[k + 1]), torch.maximum(tuples[k], tuples[k + 1])
        assert bool(((point.x >= low - 1e-12) & (point.x <= high + 1e-12)).all())
    widths = knots[1:] - knots[:-1]
    for k in range(3):  # C1 at inner knots, in real time
        left = path.sample(tuples, torch.full((64,), k), torch.ones(64, 1, dtype=torch.float64), zeros).u / widths[k]
        right = path.sample(tuples, torch.full((64,), k + 1), torch.zeros(64, 1, dtype=torch.float64), zeros).u / widths[k + 1]
        torch.testing.assert_close(left, right)
