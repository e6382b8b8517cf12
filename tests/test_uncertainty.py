"""Bootstrap ensembles (cf.tl.fit(..., n_fits=K)): resampling, per-cell spread, intervals, files."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

import cellflow as cf
from cellflow.model import Ensemble, TimeCourse

SIZES = {0: 1, 1: 2, 2: 4}  # the population doubles each interval: a known growth of log 2 everywhere
FIT = dict(method="wfr", n_steps=150, hidden=(32, 32), seed=0, progress=False)


@pytest.fixture(scope="module")
def doubling():
    """A course whose population doubles each interval, fitted with a bootstrap ensemble of 5."""
    adata = cf.datasets.simulate(n_cells=150, times=(0, 1, 2), growth_scale=0.0, seed=0)
    cf.tl.fit(adata, population_size=SIZES, n_fits=5, **FIT)
    return adata


def test_a_resample_draws_each_time_points_cells_with_replacement():
    cells = [np.arange(10, dtype=np.float32)[:, None], np.arange(10, 16, dtype=np.float32)[:, None]]
    course = TimeCourse(times=np.array([0.0, 1.0]), populations=cells, indices=[np.arange(10), np.arange(10, 16)],
                        weights=[np.arange(1.0, 11.0), np.ones(6)])
    resample = course.resampled(np.random.default_rng(0))
    assert [len(p) for p in resample.populations] == [10, 6]
    for drawn, rows in zip(resample.populations, resample.indices):
        np.testing.assert_array_equal(drawn[:, 0], rows)  # each cell's value is its row here: the rows follow
        assert len(np.unique(rows)) < len(rows)  # with replacement: some cells twice, some not at all
    np.testing.assert_array_equal(resample.weights[0], resample.indices[0] + 1.0)  # the masses follow the cells


def test_summaries_are_written_and_read_back_from_h5ad(doubling, tmp_path):
    adata = doubling
    for name in ("velocity_spread", "velocity_agreement", "on_data_share", "growth_rate_low", "growth_rate_high"):
        values = adata.obs[f"cellflow_{name}"].to_numpy()
        assert np.isfinite(values).all(), name
    assert (adata.obs["cellflow_velocity_spread"] > 0).all()  # five different fits never agree exactly
    assert adata.obs["cellflow_velocity_agreement"].between(-1, 1).all()
    assert adata.obs["cellflow_on_data_share"].between(0, 1).all()
    assert (adata.obs["cellflow_growth_rate_low"] <= adata.obs["cellflow_growth_rate_high"]).all()
    adata.write_h5ad(tmp_path / "ensemble.h5ad")
    back = ad.read_h5ad(tmp_path / "ensemble.h5ad")
    ensemble, restored = cf.tl.load_ensemble(adata), cf.tl.load_ensemble(back)
    assert len(restored.members) == 5 and float(back.uns["cellflow"]["ensemble"]["interval"]) == 0.9
    x = adata.obsm["X_pca"][:20]
    for (v, g), (v_back, g_back) in ((ensemble.evaluate(x, 0.5), restored.evaluate(x, 0.5)),):
        np.testing.assert_array_equal(v, v_back)
        np.testing.assert_array_equal(g, g_back)
    assert cf.tl.load_model(back).params["method"] == "wfr"  # the point estimate loads as before


def test_growth_intervals_come_from_the_members_and_cover_the_known_rate(doubling):
    adata = doubling
    ensemble = cf.tl.load_ensemble(adata)
    early = (adata.obs["time"] < 2).to_numpy()  # the cells the growth of the two intervals is learned on
    x, t = adata.obsm["X_pca"][early], adata.obs["time"].to_numpy()[early]
    _, growth = ensemble.evaluate(x, t)
    low, high = np.quantile(growth, [0.05, 0.95], axis=0)
    np.testing.assert_allclose(adata.obs["cellflow_growth_rate_low"].to_numpy()[early], low, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(adata.obs["cellflow_growth_rate_high"].to_numpy()[early], high, rtol=1e-5, atol=1e-6)
    # measured: the 90% intervals cover log 2 at 66% of the cells (median width 0.10, point estimate 0.986 x log 2;
    # 78% with 200 steps; 46% when the members share the full fit's delta): below the nominal 90%, as percentile
    # intervals of five members of a smoothed estimate tend to be
    covered = (low <= np.log(2)) & (np.log(2) <= high)
    assert covered.mean() > 0.5, f"the 90% intervals cover log 2 at {covered.mean():.0%} of the cells"


def test_the_bootstrap_spreads_the_members_more_than_the_seeds_alone(monkeypatch):
    adata = cf.datasets.simulate(n_cells=100, times=(0, 1, 2), growth_scale=0.0, seed=2)
    course = cf.read_time_course(adata)
    settings = dict(n_steps=100, hidden=(32, 32))
    with_bootstrap = Ensemble("otcfm", 3, seed=0, **settings).fit(course)
    monkeypatch.setattr(TimeCourse, "resampled", lambda self, rng: self)  # every member on the same cells
    seeds_only = Ensemble("otcfm", 3, seed=0, **settings).fit(course)
    x = adata.obsm["X_pca"]
    t = adata.obs["time"].to_numpy()

    def spread(ensemble):
        velocity, _ = ensemble.evaluate(x, t)
        return np.sqrt(((velocity - velocity.mean(0)) ** 2).sum(-1).mean(0)).mean()

    assert spread(with_bootstrap) > 1.2 * spread(seeds_only)


def test_the_members_disagree_more_off_the_data(doubling):
    adata = doubling
    ensemble = cf.tl.load_ensemble(adata)
    on = adata.obsm["X_pca"][(adata.obs["time"] == 1).to_numpy()]
    off = on + 3.0 * on.std(axis=0)  # the same cells moved well outside the measured ones

    def spread(x):
        velocity, _ = ensemble.evaluate(x, 1.0)
        return np.sqrt(((velocity - velocity.mean(0)) ** 2).sum(-1).mean(0))

    assert np.median(spread(off)) > 2 * np.median(spread(on))  # measured 2.7 x


def test_one_fit_writes_no_summaries_and_bad_settings_are_refused():
    adata = cf.datasets.simulate(n_cells=40, times=(0, 1), seed=0)
    cf.tl.fit(adata, n_steps=5, progress=False)
    assert not any(column.startswith("cellflow_velocity_spread") for column in adata.obs)
    with pytest.raises(KeyError, match="n_fits"):
        cf.tl.load_ensemble(adata)
    with pytest.raises(ValueError, match="interval"):
        cf.tl.fit(adata, n_steps=5, progress=False, n_fits=2, interval=90)
    with pytest.raises(ValueError, match="n_fits"):
        Ensemble("otcfm", 1)


@pytest.fixture(scope="module")
def branching():
    """The simulated branching course (no growth), fitted with a bootstrap ensemble of 3; ``branch``: the side of
    the split each cell is on (the sign of its latent second coordinate), known at every time."""
    adata = cf.datasets.simulate(n_cells=150, times=(0, 1, 2), growth_scale=0.0, seed=4)
    adata.obs["branch"] = np.where(adata.obsm["X_pca"][:, 1] > 0, "upper", "lower")
    cf.tl.fit(adata, n_fits=3, n_steps=150, hidden=(32, 32), seed=0, progress=False)
    return adata


def test_fate_intervals_come_from_the_members_and_are_widest_where_the_branches_part(branching):
    adata = branching
    fate = cf.tl.fate(adata, 0, 1, "branch", progress=False)
    low, high = adata.obsm["cellflow_fate_low"], adata.obsm["cellflow_fate_high"]
    start = (adata.obs["time"] == 0).to_numpy()
    assert list(low.columns) == list(fate.columns) == list(high.columns)
    assert (low[start] <= high[start] + 1e-12).all().all() and low[~start].isna().all().all()
    members = cf.tl.load_ensemble(adata).members
    answers = np.stack([cf.tl.fate(adata.copy(), 0, 1, "branch", model=m, progress=False)[start].to_numpy()
                        for m in members])
    np.testing.assert_allclose(high[start].to_numpy(), np.quantile(answers, 0.95, axis=0), atol=1e-12)
    assert "cellflow_fate_low" not in cf.tl.fate(adata.copy(), 0, 1, "branch", model=members[0], progress=False,
                                                 copy=True).obsm  # another model: its own answer only
    # a cell on the fence between the branches (small |z2|) is where the members disagree
    width = (high["upper"] - low["upper"])[start].to_numpy()
    fence = np.abs(adata.obsm["X_pca"][start, 1])
    near, far = fence < np.quantile(fence, 0.2), fence > np.quantile(fence, 0.8)
    assert width[near].mean() > 2 * width[far].mean()  # measured 0.12 against 0.00


def test_transition_intervals_come_from_the_members_and_hold_the_estimate(branching):
    adata = branching
    result = cf.tl.transitions(adata, 0, 2, "branch", progress=False)
    low, high = result.row_normalized_low, result.row_normalized_high
    assert low.shape == high.shape == result.row_normalized.shape
    members = cf.tl.load_ensemble(adata).members
    shares = np.stack([cf.tl.transitions(adata, 0, 2, "branch", model=m, progress=False).row_normalized.to_numpy()
                       for m in members])
    np.testing.assert_allclose(low.to_numpy(), np.quantile(shares, 0.05, axis=0), atol=1e-12)
    assert (shares.std(axis=0) > 0).any()  # the members differ, so the interval is not one fit's answer
    tidy = result.table()
    assert list(tidy.columns) == ["source", "target", "estimate", "low", "high"] and len(tidy) == low.size
    assert (low.to_numpy() <= high.to_numpy() + 1e-12).all()
    single = cf.tl.transitions(adata, 0, 2, "branch", model=members[0], progress=False)
    assert single.row_normalized_low is None and list(single.table().columns) == ["source", "target", "estimate"]
