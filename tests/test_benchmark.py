"""The leave-one-out protocol: one point per cell for every method, baselines, per-fold PCA."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import cellflow as cf
from cellflow import benchmark
from cellflow.model import METHODS, TimeCourse


def _course(sizes=(30, 40, 35, 45), dims=2, seed=0) -> TimeCourse:
    rng = np.random.default_rng(seed)
    times = np.arange(len(sizes), dtype=float)
    populations = [rng.normal(k, 1, size=(m, dims)).astype(np.float32) for k, m in enumerate(sizes)]
    indices = np.split(np.arange(sum(sizes)), np.cumsum(sizes)[:-1])
    return TimeCourse(times, populations, indices, obs_times=np.repeat(times, sizes))


def test_draw_is_one_point_per_cell_on_a_segment_to_a_partner_of_its_row():
    rng = np.random.default_rng(1)
    x0, x1 = rng.normal(size=(40, 3)), rng.normal(2, 1, size=(65, 3))  # 40 x 65: the plan splits cells
    fraction = 0.3
    plan = benchmark._protocol._exact_plan(x0, x1, 2048, seed=4).toarray()
    assert ((plan > 0).sum(axis=1) > 1).any()
    drawn = benchmark.ot_interpolation_draw(x0, x1, fraction, seed=4)
    assert drawn.shape == x0.shape
    partners = (drawn - (1 - fraction) * x0) / fraction  # the end point each cell was sent toward
    for i in range(len(x0)):
        distance = np.linalg.norm(x1 - partners[i], axis=1)
        j = int(np.argmin(distance))
        assert distance[j] < 1e-9 and plan[i, j] > 0, f"cell {i} moved toward a point outside its plan row"


def test_draw_follows_the_row_probabilities():
    x0, x1 = np.array([[0.0], [5.0]]), np.array([[1.0], [2.0], [6.0]])
    plan = sp.csr_matrix([[0.375, 0.125, 0.0], [0.0, 0.0, 0.5]])  # cell 0 split 3:1, cell 1 whole
    hits = np.array([benchmark._protocol._draw(x0, x1, plan, 1.0, np.random.default_rng(s))[:, 0] for s in range(2000)])
    assert np.mean(hits[:, 0] == 1.0) == pytest.approx(0.75, abs=0.03) and set(hits[:, 0]) == {1.0, 2.0}
    assert (hits[:, 1] == 6.0).all()


def test_barycentric_map_equals_the_draw_when_the_plan_is_a_permutation():
    rng = np.random.default_rng(2)
    x0, x1 = rng.normal(size=(50, 2)), rng.normal(1, 2, size=(50, 2))
    predicted = benchmark.baselines(x0, x1, 0.4, seed=3)
    np.testing.assert_allclose(predicted["ot_draw"][0], predicted["ot_map"][0], atol=1e-12)
    assert len(predicted["ot_interpolation"][0]) == 50


def test_fold_pca_ignores_the_held_out_cells():
    course = _course(sizes=(30, 40, 35, 45), dims=6, seed=3)
    training, before, held, after, explained = benchmark.fold(course, 2, n_pcs=3)
    perturbed = _course(sizes=(30, 40, 35, 45), dims=6, seed=3)
    perturbed.populations[2] = perturbed.populations[2] * 5 + 7  # only the held-out cells change
    training2, before2, held2, after2, explained2 = benchmark.fold(perturbed, 2, n_pcs=3)
    for a, b in zip(training.populations, training2.populations):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(before, before2)
    assert explained == explained2 and 0 < explained <= 1
    assert held.shape == (35, 3) and not np.allclose(held, held2)
    # the training representation is a PCA of the training cells: centred, uncorrelated axes
    pooled = np.concatenate(training.populations).astype(np.float64)
    np.testing.assert_allclose(pooled.mean(axis=0), 0, atol=1e-5)
    cov = np.cov(pooled.T)
    np.testing.assert_allclose(cov - np.diag(np.diag(cov)), 0, atol=1e-4)


def test_fold_pca_refuses_too_many_components():
    with pytest.raises(ValueError, match="n_pcs=7 must be between 1 and 6"):
        benchmark.fold(_course(dims=6), 1, n_pcs=7)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_predicts_one_point_per_source_cell(method):
    course = _course()
    table = benchmark.leave_one_out(course, [method], seeds=(0,), progress=False, n_steps=3, hidden=(8,),
                                    batch_size=8, device="cpu")
    for _, row in table.iterrows():
        k = course.index_of(row.held_out_time)
        expected = sum(len(p) for p in course.populations[k - 1 : k + 2 : 2]) if row.method == "ot_interpolation" \
            else len(course.populations[k - 1])
        if row.method == "ot_interpolation":
            assert len(course.populations[k - 1]) < row.n_predicted <= expected
        else:
            assert row.n_predicted == expected
    assert set(table.method) == {method, *benchmark.BASELINES}
    assert np.isfinite(table[["w1", "w2", "mmd"]].to_numpy()).all()


def test_fitters_skip_and_rows_as_they_come():
    course = _course()
    seen, fitted = [], []

    class StandStill:
        history: dict = {}

        def push(self, x, t_from, t_to):
            return np.asarray(x)

    def fit(training, seed, held_out_time):
        fitted.append((seed, held_out_time))
        assert not np.isclose(training.times, held_out_time).any()
        return StandStill()

    table = benchmark.leave_one_out(course, ["still"], seeds=(0, 1), baseline=False, fitters={"still": fit},
                                    skip=lambda method, seed, t: (seed, t) == (1, 2.0), on_row=seen.append,
                                    progress=False)
    assert fitted == [(0, 1.0), (1, 1.0), (0, 2.0)] and len(seen) == len(table) == 3
    row = table.iloc[0]
    expected = cf.metrics.w1(course.populations[0], course.populations[1])
    assert row.w1 == pytest.approx(expected) and row.n_predicted == len(course.populations[0])
    with pytest.raises(ValueError, match="method 'nope' is neither"):
        benchmark.leave_one_out(course, ["nope"], progress=False)


def test_tl_leave_one_out_with_per_fold_pca():
    adata = cf.datasets.simulate(n_cells=60, times=(0, 1, 2), growth_scale=0.0, n_genes=12, seed=0)
    table = cf.tl.leave_one_out(adata, method="otcfm", seeds=[0], n_pcs=2, progress=False, n_steps=5,
                                hidden=(8,), batch_size=8, device="cpu")
    assert set(table.method) == {"otcfm", *benchmark.BASELINES}
    assert (table.pca_explained > 0.9).all()  # the simulated genes are a 2-d plane plus small noise
