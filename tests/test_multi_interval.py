"""Analyses across several intervals: the chain of interval couplings beside the flow, and the off-data share.

A four-point simulated course with growth (``method="wfr"``) gives three measured intervals, so
the chain composes up to three couplings.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import cellflow as cf
from cellflow.tl._chain import DISAGREEMENT_WARNING, warn_disagreement
from cellflow.tl._support import (
    OFF_DATA_WARNING,
    Support,
    off_data_share,
    warn_off_data,
)

FIT = dict(n_steps=300, hidden=(64, 64), batch_size=128, seed=0, progress=False)
QUIET = dict(progress=False)
TIMES = (0.0, 1.0, 2.0, 3.0)
POPULATION_FACTOR = 1.5  # a chain push predicts every measured population size within this factor


@functools.cache
def _fit():
    adata = cf.datasets.simulate(n_cells=150, times=TIMES, growth_scale=0.5, seed=2)
    adata.obs["branch"] = pd.Categorical(np.where(adata.obsm["X_pca"][:, 1] > 0, "up", "down"))
    cf.tl.fit(adata, "time", "X_pca", "wfr", **FIT)
    return adata


@pytest.fixture
def course():
    return _fit().copy()


def _at(adata, t):
    return np.flatnonzero((adata.obs["time"] == t).to_numpy())


def _onehot(adata, t):
    codes = adata.obs["branch"].cat.codes.to_numpy()[_at(adata, t)]
    return np.eye(2)[codes]


# -- off-data share -----------------------------------------------------------------------------
def test_off_data_share_of_a_hand_built_case():
    # time 0: 101 cells one apart on the x axis (every nearest-neighbour distance 1, so the bound is 1);
    # time 10: 51 cells two apart on the line y = 100 (bound 2)
    early = np.column_stack([np.arange(101.0), np.zeros(101)])
    late = np.column_stack([2.0 * np.arange(51.0), np.full(51, 100.0)])
    support = Support([early, late], [0.0, 10.0])
    assert support.bound(0) == pytest.approx(1.0) and support.bound(1) == pytest.approx(2.0)
    points = np.array([
        [3.0, 0.5],     # time 4 (nearest time 0): 0.5 from a cell, on the data
        [3.0, 1.0],     # exactly the bound away: on the data
        [3.0, 1.5],     # 1.5 > 1: off
        [3.0, 101.5],   # time 6 (nearest time 10): 1.5 < 2 from (2, 100), on the data
        [3.0, 103.0],   # 3 > 2: off
        [300.0, 0.0],   # time 4 but far from every cell of time 0: off
    ])
    times = np.array([4.0, 4.0, 4.0, 6.0, 6.0, 4.0])
    np.testing.assert_array_equal(support.off_data(points, times), [False, False, True, False, True, True])
    assert off_data_share(points, times, [early, late], [0.0, 10.0]) == 0.5
    assert off_data_share(points[:2], 0.0, support=support) == 0.0  # one time for all points


def test_off_data_warning_fires_above_its_threshold_only():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_off_data(OFF_DATA_WARNING, "fate")
        warn_disagreement("fate", DISAGREEMENT_WARNING, 1.9)
    with pytest.warns(cf.OffDataWarning, match="left the data.*across='chain'.*rollout"):
        warn_off_data(OFF_DATA_WARNING + 0.01, "fate")
    with pytest.warns(cf.DisagreementWarning, match="disagree"):
        warn_disagreement("push", DISAGREEMENT_WARNING + 0.01)
    with pytest.warns(cf.DisagreementWarning, match="ratio"):
        warn_disagreement("push", 0.0, 2.5)


def test_interpolating_far_beyond_the_data_warns_and_records_the_share(course):
    with pytest.warns(cf.OffDataWarning):
        far = cf.tl.interpolate(course, 0.0, 40.0)
    assert far.uns["cellflow_interpolation"]["off_data_share"] > 0.9
    paths = cf.tl.trajectories(course, course.obs_names[:3], [0.0, 1.0])
    assert 0.0 <= paths.off_data_share <= 1.0 and paths.off_data.shape == (2, 3)


# -- the parameter -------------------------------------------------------------------------------
@pytest.mark.parametrize("tool", ["fate", "ancestors", "transitions", "push", "pull"])
def test_a_bad_across_is_refused_with_the_choices(course, tool):
    calls = {
        "fate": lambda: cf.tl.fate(course, 0.0, 2.0, "branch", across="markov"),
        "ancestors": lambda: cf.tl.ancestors(course, 2.0, 0.0, "branch", across="markov"),
        "transitions": lambda: cf.tl.transitions(course, 0.0, 2.0, "branch", across="markov"),
        "push": lambda: cf.tl.push(course, ("branch", "up"), 0.0, 2.0, across="markov"),
        "pull": lambda: cf.tl.pull(course, ("branch", "up"), 2.0, 0.0, across="markov"),
    }
    with pytest.raises(ValueError, match="across='markov' is unknown.*'chain'.*'flow'"):
        calls[tool]()


# -- one interval: both the same ---------------------------------------------------------------------
def test_within_one_interval_chain_and_flow_are_identical(course):
    for across in ("chain", "flow"):
        cf.tl.fate(course, 1.0, 2.0, "branch", key_added=f"fate_{across}", across=across, **QUIET)
        cf.tl.ancestors(course, 2.0, 1.0, "branch", key_added=f"anc_{across}", across=across, **QUIET)
    pd.testing.assert_frame_equal(course.obsm["fate_chain"], course.obsm["fate_flow"])
    pd.testing.assert_frame_equal(course.obsm["anc_chain"], course.obsm["anc_flow"])
    assert course.uns["fate_chain_params"]["disagreement"] == 0.0
    pushed = [cf.tl.push(course, ("branch", "up"), 0.0, [0.5, 1.0], across=a, **QUIET) for a in ("chain", "flow")]
    pulled = [cf.tl.pull(course, ("branch", "up"), 2.0, [1.0, 1.5], across=a, **QUIET) for a in ("chain", "flow")]
    for chained, flowed in (pushed, pulled):
        pd.testing.assert_frame_equal(chained.mass, flowed.mass)
        np.testing.assert_array_equal(chained.points, flowed.points)
        np.testing.assert_array_equal(chained.masses, flowed.masses)
        np.testing.assert_array_equal(chained.disagreement, 0.0)
    tables = [cf.tl.transitions(course, 0.0, 1.0, "branch", across=a, **QUIET) for a in ("chain", "flow")]
    assert (tables[0].coupling.X != tables[1].coupling.X).nnz == 0


# -- several intervals: the chain is the product of the intervals ----------------------------------------
def test_the_chain_composes_the_interval_couplings(course):
    steps = [cf.tl.transitions(course, a, b, "branch", **QUIET).coupling.X for a, b in zip(TIMES, TIMES[1:])]
    product = steps[0] @ steps[1]
    chained = cf.tl.transitions(course, 0.0, 2.0, "branch", **QUIET)
    assert chained.across == "chain" and 0.0 <= chained.disagreement <= 1.0
    np.testing.assert_allclose(chained.coupling.X.toarray(), product.toarray(), rtol=1e-9, atol=1e-12)

    fates = cf.tl.fate(course, 0.0, 2.0, "branch", **QUIET)
    expected = np.asarray(product @ _onehot(course, 2.0))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(fates.iloc[_at(course, 0.0)].to_numpy(), expected, rtol=1e-9, atol=1e-12)
    params = course.uns["cellflow_fate_params"]
    assert params["across"] == "chain" and {"disagreement", "off_data_share"} <= set(params)
    flow = cf.tl.fate(course, 0.0, 2.0, "branch", key_added="flow_fate", across="flow", **QUIET)
    distance = 0.5 * np.abs(flow.iloc[_at(course, 0.0)].to_numpy() - expected).sum(axis=1).mean()
    assert params["disagreement"] == pytest.approx(distance, rel=1e-9)

    # pushing uniform weights carries the row sums of the product
    moved = cf.tl.push(course, np.ones(course.n_obs), 0.0, [2.0, 3.0], **QUIET)
    received = moved.mass[2.0].to_numpy()[_at(course, 2.0)]
    np.testing.assert_allclose(received, np.asarray(product.sum(axis=0)).ravel(), rtol=1e-9)
    np.testing.assert_allclose(moved.masses[0].sum(), received.sum(), rtol=1e-5)
    assert moved.across == "chain" and np.isfinite(moved.total_ratio).all()


def test_ancestors_through_the_chain_and_their_disagreement_with_the_flow(course):
    rows = _at(course, 3.0)
    chained = cf.tl.ancestors(course, 3.0, 0.0, "branch", **QUIET).iloc[rows]
    flow = cf.tl.ancestors(course, 3.0, 0.0, "branch", key_added="flow_ancestors", across="flow", **QUIET).iloc[rows]
    np.testing.assert_allclose(chained.sum(axis=1), 1.0)
    distance = 0.5 * np.abs(chained.to_numpy() - flow.to_numpy()).sum(axis=1).mean()
    assert course.uns["cellflow_ancestors_params"]["disagreement"] == pytest.approx(distance, rel=1e-9)
    # the lower branch only ever comes from below (the field never moves a cell across z2 = 0)
    down = (course.obs["branch"].iloc[rows] == "down").to_numpy()
    assert chained["down"].to_numpy()[down].mean() > 0.9


def test_a_growth_chain_predicts_every_population_size(course):
    moved = cf.tl.push(course, np.ones(course.n_obs), 0.0, [1.0, 2.0, 3.0], **QUIET)
    measured = np.array([len(_at(course, t)) for t in (1.0, 2.0, 3.0)])
    predicted = moved.to_frame()["mass"].to_numpy()
    ratio = predicted / measured
    assert ((ratio > 1 / POPULATION_FACTOR) & (ratio < POPULATION_FACTOR)).all(), (predicted, measured)
    np.testing.assert_allclose(moved.mass.sum(axis=0).to_numpy(), predicted, rtol=1e-5)


def test_a_chain_pull_composes_the_interval_pulls(course):
    up = (course.obs["branch"] == "up").to_numpy()
    through = cf.tl.pull(course, up, 2.0, 1.0, **QUIET).mass[1.0].fillna(0.0).to_numpy()
    expected = cf.tl.pull(course, through, 1.0, 0.0, **QUIET).mass[0.0]
    chained = cf.tl.pull(course, up, 2.0, 0.0, **QUIET)
    np.testing.assert_allclose(chained.mass[0.0].dropna(), expected.dropna(), rtol=1e-9)
    assert sp.issparse(cf.tl.transitions(course, 0.0, 3.0, "branch", **QUIET).coupling.X)
