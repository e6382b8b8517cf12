"""Multimarginal flow matching: chains through all time points, the batched spline, one field."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chi2, spearmanr

import cellflow as cf
from cellflow import benchmark
from cellflow.model import TimeCourse
from cellflow.paths import CubicSplinePath, MonotoneHermitePath
from cellflow.transport import ExactOTCoupling, Pairs, WFRCoupling, sample_chains


def _numpy(links):
    """Chains' links with numpy arrays (samplers return torch tensors)."""
    return [Pairs(*(None if v is None else v.numpy() for v in (link.i, link.j, link.m0, link.m1, link.died))) for link in links]


def _chains(sizes, n, seed=0, coupling=None):
    rng = np.random.default_rng(seed)
    pops = [rng.normal(k, 1 + 0.2 * k, size=(m, 1)) for k, m in enumerate(sizes)]
    coupling = coupling or ExactOTCoupling()
    torch.manual_seed(seed)
    links = _numpy(sample_chains([coupling.sampler(pops[k], pops[k + 1]) for k in range(len(pops) - 1)], n))
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
    torch.manual_seed(2)
    link = _numpy(sample_chains([sampler], 5000))[0]
    assert link.died[link.i >= 40].all() and link.died[link.i < 40].mean() < 0.1
    assert (link.m1[link.died] == 0).all() and (link.m0 > 0).all()


def _draws_per_entry(plan, i, j):
    """How many of the pairs ``(i, j)`` fall on each entry of the sparse ``plan`` (in COO order); all must."""
    plan = plan.tocoo()
    n1 = plan.shape[1]
    counts = np.bincount(i * n1 + j, minlength=plan.shape[0] * n1)
    on_support = counts[plan.row * n1 + plan.col]
    assert on_support.sum() == len(i), "a drawn pair lies outside the plan's support"
    return plan, on_support


def _assert_counts_follow(observed, expected):
    """Chi-square goodness of fit (bins expecting fewer than five draws pooled into one)."""
    small = expected < 5
    observed = np.append(observed[~small], observed[small].sum())
    expected = np.append(expected[~small], expected[small].sum())
    keep = expected > 0
    statistic = ((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum()
    assert chi2.sf(statistic, keep.sum() - 1) > 1e-3, f"chi-square {statistic:.0f} on {keep.sum() - 1} dof"


def test_exact_chains_draw_each_next_cell_from_the_row_of_the_cell_just_drawn():
    rng = np.random.default_rng(21)
    sizes = [150, 240, 180, 210]
    pops = [rng.normal(0.5 * k, 1, size=(m, 2)) for k, m in enumerate(sizes)]
    mass = [rng.uniform(0.5, 2, m) for m in sizes]  # uneven rows, so the draws' weights matter
    samplers = [ExactOTCoupling().sampler(pops[k], pops[k + 1], mass[k], mass[k + 1]) for k in range(3)]
    n = 200_000
    torch.manual_seed(0)
    links = _numpy(sample_chains(samplers, n))
    for k, (sampler, link) in enumerate(zip(samplers, links)):
        if k + 1 < len(links):
            np.testing.assert_array_equal(link.j, links[k + 1].i)
        plan, observed = _draws_per_entry(sampler.plan, link.i, link.j)
        assert plan.nnz > sizes[k + 1]  # the plan splits cells: rows with several entries
        # plan k's columns carry the masses that plan k + 1's rows do: every link is the plan itself
        _assert_counts_follow(observed, n * plan.data / plan.data.sum())


def test_unbalanced_chains_follow_the_plan_rows_and_die_only_without_partners():
    rng = np.random.default_rng(22)

    def population(k):
        cells = [rng.normal(0.3 * k, 0.7, size=(60, 2))]
        if k == 0:
            cells.append(rng.normal(size=(5, 2)) + [-20, 0])  # no partner at the next time: die in link 0
        if k <= 1:
            cells.append(rng.normal(size=(8, 2)) * 0.3 + [0, 10])  # reached from time 0, die in link 1
        if k <= 2:
            cells.append(rng.normal(size=(8, 2)) * 0.3 + [10, 0])  # reached from times 0 and 1, die in link 2
        return np.concatenate(cells)

    pops = [population(k) for k in range(4)]
    samplers = [WFRCoupling(delta=0.8).sampler(pops[k], pops[k + 1]) for k in range(3)]
    n = 100_000
    torch.manual_seed(22)
    links = _numpy(sample_chains(samplers, n))
    _assert_counts_follow(np.bincount(links[0].i, minlength=len(pops[0])), np.full(len(pops[0]), n / len(pops[0])))
    for k, (sampler, link) in enumerate(zip(samplers, links)):
        if k + 1 < len(links):
            np.testing.assert_array_equal(link.j, links[k + 1].i)
        row_sums = np.asarray(sampler.plan.sum(axis=1)).ravel()
        col_sums = np.asarray(sampler.plan.sum(axis=0)).ravel()
        np.testing.assert_array_equal(link.died, row_sums[link.i] <= 0)
        assert link.died.any() and not link.died.all()
        assert (link.m1[link.died] == 0).all() and (link.m0[link.died] == 1).all()  # unit mass, all of it lost
        alive = ~link.died
        i, j = link.i[alive], link.j[alive]
        plan, observed = _draws_per_entry(sampler.plan, i, j)
        entry = np.asarray(sampler.plan[i, j]).ravel()
        np.testing.assert_allclose(link.m0[alive], entry / row_sums[i], rtol=1e-12)  # semi-coupling masses
        np.testing.assert_allclose(link.m1[alive], entry / col_sums[j], rtol=1e-12)
        # given its source cell, the next cell is drawn in proportion to that cell's row of the plan
        from_row = np.bincount(i, minlength=plan.shape[0])[plan.row]
        _assert_counts_follow(observed, from_row * plan.data / row_sums[plan.row])


def _spline_case(seed=0):
    gen = torch.Generator().manual_seed(seed)
    knots = torch.tensor([0.0, 0.1, 0.35, 0.4, 1.0], dtype=torch.float64)
    tuples = torch.randn(5, 64, 3, generator=gen, dtype=torch.float64)
    return CubicSplinePath(knots), knots, tuples


@pytest.mark.parametrize("curve", [CubicSplinePath, MonotoneHermitePath])
def test_curves_pass_exactly_through_every_knot(curve):
    _, knots, tuples = _spline_case()
    path, zeros = curve(knots), torch.zeros(64, 3, dtype=torch.float64)
    for k in range(4):
        segment = torch.full((64,), k)
        for s, knot in ((0.0, k), (1.0, k + 1)):
            point = path.sample(tuples, segment, torch.full((64, 1), s, dtype=torch.float64), zeros)
            torch.testing.assert_close(point.x, tuples[knot], atol=1e-12, rtol=0)


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


def test_held_out_time_is_not_a_knot(monkeypatch):
    # mmfm's spline runs through every time it is fitted on: the held-out time must not be one of them, nor
    # its cells anywhere in the fit; the prediction there is then bracketed by oracles of the simulation
    adata = cf.datasets.simulate(n_cells=120, times=(0.0, 1.0, 2.5, 3.0), growth_scale=0.0, seed=0)
    x, at = adata.obsm["X_pca"], adata.obs["time"].to_numpy()
    fitted = []

    class Recording(cf.CellFlow):
        def fit(self, training, progress=True):
            fitted.append((np.asarray(training.times, dtype=float), np.concatenate(training.populations)))
            return super().fit(training, progress)

    monkeypatch.setattr(benchmark._protocol, "CellFlow", Recording)
    table = cf.tl.leave_one_out(adata, method="mmfm", seeds=[0], n_steps=100, progress=False)
    w1 = table.set_index(["method", "held_out_time"])["w1"]
    assert sorted(table.loc[table["method"] == "mmfm", "held_out_time"]) == [1.0, 2.5] and len(fitted) == 2
    for (times, cells), held, before in zip(fitted, (1.0, 2.5), (0.0, 1.0)):
        np.testing.assert_array_equal(times, np.setdiff1d([0.0, 1.0, 2.5, 3.0], [held]))
        assert len(cells) == (at != held).sum()
        assert not {row.tobytes() for row in x[at == held]} & {row.tobytes() for row in cells.astype(x.dtype)}
        # the sampling floor: a fresh sample of the true population at that time (measured 0.18, 0.31)
        truth = cf.datasets.simulate(n_cells=120, times=(held,), growth_scale=0.0, seed=7).obsm["X_pca"]
        floor = cf.metrics.w1(truth, x[at == held])
        stay = cf.metrics.w1(x[at == before], x[at == held])  # predicting no movement (measured 1.24, 2.45)
        # measured: mmfm 0.44 and 0.71 against OT interpolation 0.34 and 0.69 of the same fold
        assert 1.5 * floor < w1["mmfm", held] < min(0.6 * stay, 1.6 * w1["ot_interpolation", held])


def test_leave_one_out_never_fits_on_the_held_out_cells(monkeypatch):
    rng = np.random.default_rng(30)
    times, sizes = np.array([0.0, 1.0, 2.5, 3.0, 4.5]), [30, 40, 35, 45, 30]
    populations = [rng.normal(k, 1, size=(m, 2)).astype(np.float32) for k, m in enumerate(sizes)]
    indices = np.split(np.arange(sum(sizes)), np.cumsum(sizes)[:-1])
    course = TimeCourse(times, populations, indices, obs_times=np.repeat(times, sizes))
    fits, pushes, observed = [], [], []

    class Recording(cf.CellFlow):
        def fit(self, training, progress=True):
            fits.append(training)
            return super().fit(training, progress)

        def push(self, x, t_from, t_to, **kwargs):
            pushes.append((np.array(x, copy=True), t_from, t_to))
            return super().push(x, t_from, t_to, **kwargs)

    def score(predicted, held, *args):
        observed.append(held)
        return real_score(predicted, held, *args)

    real_score = benchmark.score
    monkeypatch.setattr(benchmark._protocol, "CellFlow", Recording)
    monkeypatch.setattr(benchmark._protocol, "score", score)
    table = benchmark.leave_one_out(course, ("otcfm", "mmfm"), seeds=(0,), progress=False,
                                    n_steps=2, hidden=(8,), batch_size=8, device="cpu")
    per_fold = len(benchmark.BASELINES) + 2  # the baselines, then both methods
    assert table["held_out_time"].tolist() == [1.0] * per_fold + [2.5] * per_fold + [3.0] * per_fold
    assert len(fits) == len(pushes) == 6 and len(observed) == 3 * per_fold
    for fold, k in enumerate((1, 2, 3)):
        held_rows = {row.tobytes() for row in populations[k]}
        for training in fits[2 * fold : 2 * fold + 2]:
            np.testing.assert_array_equal(training.times, np.delete(times, k))
            assert not any(held_rows & {row.tobytes() for row in cells} for cells in training.populations)
            assert not np.isin(indices[k], np.concatenate(training.indices)).any()
            np.testing.assert_array_equal(training.populations[k - 1], populations[k - 1])  # both neighbours kept
            np.testing.assert_array_equal(training.populations[k], populations[k + 1])
        for start, t_from, t_to in pushes[2 * fold : 2 * fold + 2]:  # the flow starts from the cells of t_{k-1}
            np.testing.assert_array_equal(start, populations[k - 1])
            assert (t_from, t_to) == (times[k - 1], times[k])
        for held in observed[per_fold * fold : per_fold * (fold + 1)]:  # and every prediction is scored on the held-out cells
            np.testing.assert_array_equal(held, populations[k])


@pytest.mark.parametrize("path", ["wfr", "spline"])
def test_unbalanced_multimarginal(path):
    adata = cf.datasets.simulate(n_cells=120, times=(0.0, 1.0, 2.0), seed=0)
    model = cf.tl.fit(adata, method="mmfm", coupling="wfr", path=path, n_steps=60, progress=False)
    assert model.has_growth and model.multimarginal
    # the simulation's growth is known: the learned rate follows it (measured r 0.78 with path='wfr', 0.79
    # with 'spline'), and the mass carried from time 0 to 2 is the change in cell numbers (1.42 and 1.35
    # per starting cell against 1.37 measured; no growth would carry 1.0)
    learned, truth = adata.obs["cellflow_growth_rate"].to_numpy(), adata.obs["growth_true"].to_numpy()
    assert np.corrcoef(learned, truth)[0, 1] > 0.5
    n = adata.obs["time"].value_counts()
    carried = cf.tl.interpolate(adata, 0.0, 2.0).obs["cellflow_mass"].mean()
    assert carried == pytest.approx(n[2.0] / n[0.0], rel=0.15)


def test_monotone_hermite_matches_derivative_and_never_overshoots():
    knots = torch.tensor([0.0, 0.02, 0.3, 0.35, 1.0], dtype=torch.float64)
    tuples = torch.randn(5, 64, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    path, zeros, h = MonotoneHermitePath(knots), torch.zeros(64, 3, dtype=torch.float64), 1e-6
    for k in range(4):
        segment = torch.full((64,), k)
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
