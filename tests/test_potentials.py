"""OT potentials: their displacement is the transport map, their c-transform extends the plan, and
the chains they define train one multimarginal field."""

from __future__ import annotations

import numpy as np
import ot
import pytest
import torch
from scipy.linalg import sqrtm

import cellflow as cf
from cellflow.model import COUPLINGS
from cellflow.transport import (
    PotentialCoupling,
    PotentialMapCoupling,
    sample_chains,
    solve_potentials,
)


def _gaussians(n, seed):
    """Cells of two 2-D Gaussians and the closed-form OT displacement between them."""
    m0, m1 = np.array([0.0, 0.0]), np.array([2.0, -1.0])
    s0, s1 = np.array([[1.0, 0.3], [0.3, 0.5]]), np.array([[0.6, -0.2], [-0.2, 1.2]])
    root = np.real(sqrtm(s0))
    inverse = np.linalg.inv(root)
    linear = inverse @ np.real(sqrtm(root @ s1 @ root)) @ inverse  # T(x) = m1 + A (x - m0)
    rng = np.random.default_rng(seed)
    x0, x1 = rng.multivariate_normal(m0, s0, n), rng.multivariate_normal(m1, s1, n)
    bulk = np.einsum("ij,jk,ik->i", x0 - m0, np.linalg.inv(s0), x0 - m0) < 4  # within two standard deviations
    return x0, x1, bulk, lambda x: m1 + (x - m0) @ linear.T - x


@pytest.mark.parametrize("seed", [0, 1])
def test_potential_displacement_is_the_gaussian_map_at_solved_and_extended_cells(seed):
    # 3000 cells per side, the problem solved on 1000 of each: the other 2000 source cells are
    # placed by the c-transform alone (held out of the problem)
    x0, x1, bulk, truth = _gaussians(3000, seed)
    solved = np.zeros(len(x0), dtype=bool)
    solved[:1000] = True  # the cells are drawn at random: the first 1000 are a random subsample
    forward, _ = solve_potentials(x0[solved], x1[:1000], reg=0.1)
    size = np.linalg.norm(truth(x0[bulk]), axis=1).mean()  # about 2.3
    for cells in (bulk & solved, bulk & ~solved):
        exact = truth(x0[cells])
        error = np.linalg.norm(forward.displacement(x0[cells]) - exact, axis=1)
        # smooth c-transform: mean error under 6%, 95th percentile under 15% of the typical displacement
        assert error.mean() < 0.06 * size and np.quantile(error, 0.95) < 0.15 * size
        # the mean shift alone (no potential) misses by several times as much
        shift = np.linalg.norm(x1.mean(0) - x0.mean(0) - exact, axis=1).mean()
        assert error.mean() < shift / 3
        # the hard c-transform's partner is one cell: farther, but still on the map
        hard = np.linalg.norm(forward.displacement(x0[cells], hard=True) - exact, axis=1)
        assert hard.mean() < 0.08 * size


def test_the_plan_pairs_each_cell_with_its_laguerre_partner():
    x0, x1, _, truth = _gaussians(1200, 3)
    coupling = PotentialMapCoupling(reg=0.1, block_size=500)
    plan = coupling.plan(x0, x1, rng=np.random.default_rng(4)).tocoo()
    forward, _ = coupling.potential(x0, x1, rng=np.random.default_rng(4))
    assert plan.nnz == len(x0) and np.array_equal(np.sort(plan.row), np.arange(len(x0)))  # one partner per cell
    assert plan.sum() == pytest.approx(1.0)
    # the pair's displacement is -grad f of the hard c-transform at the cell (column indices in x1)
    np.testing.assert_allclose(x1[plan.col] - x0[plan.row], forward.displacement(x0[plan.row], hard=True))
    assert len(np.unique(plan.col)) <= 500  # only solved cells of x1 are reached


def test_soft_c_transform_at_solved_cells_is_the_entropic_plan():
    rng = np.random.default_rng(5)
    x0, x1 = rng.normal(size=(150, 3)), rng.normal(size=(210, 3)) + 1
    a, b = rng.uniform(0.5, 2, 150), rng.uniform(0.5, 2, 210)
    reg = 0.5
    forward, backward = solve_potentials(x0, x1, a, b, reg)
    plan = ot.sinkhorn(a / a.sum(), b / b.sum(), ot.dist(x0, x1), reg, numItermax=5000, stopThr=1e-10)
    # the soft assignment of a solved cell is its row of the plan, and the map its barycentre (up to
    # the solver's tolerance, 1e-6 on the marginals, where this plan is solved to 1e-10)
    np.testing.assert_allclose(forward.transport(x0), plan @ x1 / plan.sum(1, keepdims=True), atol=1e-4)
    rows = forward.rows(x0, a / a.sum()).toarray()
    np.testing.assert_allclose(rows, plan, atol=2e-4 * plan.max())
    # the c-transform of g at a solved cell is f there (up to the cell's own mass, absorbed by f)
    np.testing.assert_allclose(forward.c_transform(x0), backward.values - forward.eps * np.log(a / a.sum()),
                               atol=1e-4)
    # the backward potential maps the targets onto the sources' barycentres likewise
    np.testing.assert_allclose(backward.transport(x1), plan.T @ x0 / plan.sum(0)[:, None], atol=1e-4)
    # hard is the zero-temperature limit: the minimum of c - g, below the soft-min
    assert (forward.c_transform(x0, hard=True) >= forward.c_transform(x0) - 1e-12).all()


def _chain_values(coupling, sizes, n, seed=0):
    rng = np.random.default_rng(seed)
    pops = [rng.normal(k, 1 + 0.2 * k, size=(m, 1)) for k, m in enumerate(sizes)]
    samplers = [coupling.sampler(pops[k], pops[k + 1], rng=rng) for k in range(len(pops) - 1)]
    torch.manual_seed(seed)
    links = sample_chains(samplers, n)
    idx = [links[0].i.numpy()] + [link.j.numpy() for link in links]
    return np.stack([pops[k][idx[k], 0] for k in range(len(pops))])


@pytest.mark.parametrize("sizes", [[40, 40, 40, 40, 40], [50, 80, 30, 60]])
def test_potential_chains_keep_rank_order_on_monotone_data(sizes):
    values = _chain_values(PotentialMapCoupling(reg=0.05), sizes, 5000)
    order = np.argsort(values[0], kind="stable")
    for k in range(1, len(sizes)):  # a larger cell never goes below a smaller one, at every time point
        assert (np.diff(values[k][order]) >= 0).all()
    # the chains are deterministic: one trajectory per first cell
    assert len(np.unique(values, axis=1).T) == len(np.unique(values[0]))


def test_soft_potential_chains_keep_rank_order_at_low_temperature():
    values = _chain_values(PotentialCoupling(reg=0.002), [40, 40, 40, 40], 5000)
    from scipy.stats import spearmanr

    assert spearmanr(values[0], values[-1]).correlation > 0.99


@pytest.mark.parametrize("kwargs, message", [
    (dict(reg=0.0), "reg must be positive"), (dict(block_size=1), "block_size must be at least 2"),
])
def test_bad_settings_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PotentialMapCoupling(**kwargs)
    with pytest.raises(ValueError, match="reg=-1.0 must be > 0"):
        cf.CellFlow("mmfm_potential", reg=-1.0)


def test_points_of_the_wrong_dimension_are_refused():
    forward, _ = solve_potentials(np.zeros((3, 2)), np.ones((4, 2)), reg=1.0)
    with pytest.raises(ValueError, match=r"\(n, 2\) array"):
        forward.displacement(np.zeros((5, 3)))


def test_mmfm_potential_fits_and_round_trips(tmp_path):
    assert COUPLINGS["potential"] is PotentialCoupling
    adata = cf.datasets.simulate(n_cells=200, times=(0.0, 1.0, 2.0, 3.0), growth_scale=0.0, seed=3)
    model = cf.tl.fit(adata, method="mmfm_potential", n_steps=600, seed=0, progress=False)
    assert (model.params["coupling"], model.params["path"], model.params["objective"]) == ("potential", "hermite",
                                                                                          "chains")
    v, truth = adata.obsm["cellflow_velocity_pca"], adata.obsm["velocity_true_pca"]
    cosine = (v * truth).sum(1) / np.linalg.norm(v, axis=1) / np.linalg.norm(truth, axis=1)
    assert np.median(cosine) > 0.9
    restored = cf.CellFlow.load(model.save(tmp_path / "potential"))
    assert restored.params == model.params
    x = adata.obsm["X_pca"][:50]
    np.testing.assert_array_equal(restored.velocity(x, 1.5), model.velocity(x, 1.5))
    np.testing.assert_array_equal(restored.push(x, 0.0, 2.0), model.push(x, 0.0, 2.0))
