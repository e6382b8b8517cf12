"""Push, pull, label transfer, fate labels and transitions with subsets, on small simulated courses.

The simulated course has two known branches: cells move along ``v = (1, 1.2 tanh(2 z2))``, which
never changes the sign of ``z2``, so "up" (``z2 > 0``) cells stay up and "down" cells stay down.
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest

import cellflow as cf

FIT = dict(n_steps=300, hidden=(64, 64), batch_size=128, seed=0, progress=False)
QUIET = dict(progress=False)


@functools.cache
def _fits() -> dict:
    """A balanced (OT-CFM) fit and a growth (WFR) fit of a three-point two-branch course."""
    fits = {}
    for method, growth in (("otcfm", 0.0), ("wfr", 0.5)):
        adata = cf.datasets.simulate(n_cells=200, times=(0.0, 1.0, 2.0), growth_scale=growth, seed=1)
        z2 = adata.obsm["X_pca"][:, 1]
        adata.obs["branch"] = pd.Categorical(np.where(z2 > 0, "up", "down"))
        adata.obs["height"] = pd.Categorical(np.select([z2 > 0.8, z2 < -0.8], ["high", "low"], "middle"))
        cf.tl.fit(adata, "time", "X_pca", method, **FIT)
        fits[method] = adata
    return fits


@pytest.fixture
def course():
    """A fresh copy of the balanced fit (tests write into it)."""
    return _fits()["otcfm"].copy()


@pytest.fixture
def growing():
    return _fits()["wfr"].copy()


def _at(adata, t):
    return (adata.obs["time"] == t).to_numpy()


def test_push_of_a_group_equals_its_fate_totals(course):
    moved = cf.tl.push(course, ("branch", "up"), 1.0, 2.0, **QUIET)
    fates = cf.tl.fate(course, 1.0, 2.0, "branch", **QUIET)
    start, end = _at(course, 1.0), _at(course, 2.0)
    up = start & (course.obs["branch"] == "up").to_numpy()
    # balanced: each up cell hands one unit to its neighbours, so the push summed by target group is the fates' sum
    by_group = moved.mass[2.0][end].groupby(course.obs["branch"][end], observed=True).sum()
    np.testing.assert_allclose(by_group[fates.columns], fates[up].sum(), rtol=1e-9)
    assert moved.mass[2.0][end].sum() == pytest.approx(up.sum())
    written = course.obs["cellflow_push"]
    np.testing.assert_allclose(written[end].sum(), 1.0)
    np.testing.assert_allclose(written[end], moved.distribution[2.0][end])
    assert written[~end].isna().all() and (written[end] >= 0).all()
    assert "obs/cellflow_push" in list(course.uns["cellflow"]["written_keys"])
    assert list(moved.cells) == list(course.obs_names[up]) and moved.points.shape == (1, up.sum(), 2)


@pytest.mark.parametrize("method", ["otcfm", "wfr"])
def test_push_then_pull_returns_the_source_marginal(method):
    adata = _fits()[method].copy()
    start = _at(adata, 0.0)
    pushed = cf.tl.push(adata, np.ones(adata.n_obs), 0.0, 1.0, key_added="pushed", **QUIET)
    pulled = cf.tl.pull(adata, "pushed", 1.0, 0.0, **QUIET)
    # pull is the push's coupling transposed and normalised by what each cell receives: exact up to rounding
    np.testing.assert_allclose(pulled.distribution[0.0][start], 1.0 / start.sum(), rtol=1e-9)
    np.testing.assert_allclose(adata.obs["cellflow_pull"][start], 1.0 / start.sum(), rtol=1e-9)
    assert pulled.unreached[0] == 0.0
    x = adata.obsm["X_pca"][start]
    _, mass = cf.tl.load_model(adata).push(x, 0.0, 1.0, return_mass=True)
    # the pushed mass is the population's growth: the cells of time 0 times their own growth
    assert pushed.mass[1.0].sum() == pytest.approx(mass.sum(), rel=1e-9)
    assert np.allclose(mass, 1.0) == (method == "otcfm")


def test_push_to_unmeasured_and_several_times(course):
    before = list(course.obs.columns)
    up = (course.obs["branch"] == "up").to_numpy() & _at(course, 0.0)
    # 1.5 lies beyond the measured 1.0: the flow over the whole span (the chain's answer: tests/test_multi_interval.py)
    moved = cf.tl.push(course, course.obs["branch"] == "up", 0.0, 1.5, across="flow", **QUIET)
    assert list(course.obs.columns) == before and moved.distribution.shape[1] == 0  # nothing measured at 1.5
    # every cell of time 0 is integrated together (an adaptive solver's steps depend on the batch)
    expected = cf.tl.load_model(course).push(course.obsm["X_pca"][_at(course, 0.0)], 0.0, 1.5)
    np.testing.assert_allclose(moved.points[0], expected[up[_at(course, 0.0)]], rtol=1e-9)
    np.testing.assert_allclose(moved.masses, 1.0)
    assert (moved.points[0, :, 1] > 0).mean() > 0.9  # up stays up

    path = cf.tl.push(course, ("branch", ["up", "down"]), 0.0, [2.0, 0.5, 1.0], key_added="all", **QUIET)
    assert {"all_1", "all_2"} <= set(course.obs.columns) and "all_0.5" not in course.obs
    assert list(path.distribution.columns) == [2.0, 1.0] and list(path.measured) == [True, False, True]
    frame = path.to_frame()
    assert list(frame.columns) == ["time", "measured", "mass", "pca1", "pca2"]
    np.testing.assert_allclose(frame["mass"], _at(course, 0.0).sum())
    np.testing.assert_allclose(frame["pca1"], [2.0, 0.5, 1.0], atol=0.15)  # the first coordinate moves at speed one
    pulled = cf.tl.pull(course, ("branch", "up"), 2.0, [1.0, 0.5], **QUIET)
    assert list(pulled.measured) == [True, False] and "cellflow_pull_1" in course.obs
    assert (pulled.points[1, :, 1] > 0).mean() > 0.9


def test_transitions_rows_sum_to_one_with_two_annotations_and_subsets(course):
    full = cf.tl.transitions(course, 0.0, 2.0, "branch", groupby_target="height", **QUIET)
    assert full.groupby_target == "height" and full.counts.columns.name == "height at 2"
    np.testing.assert_allclose(full.row_normalized.sum(axis=1), 1.0)
    assert full.row_normalized.loc["up", "high"] > 0.5 and full.row_normalized.loc["down", "low"] > 0.5
    assert "'branch' and 'height'" in repr(full)

    mask = (course.obs["branch"] == "up").to_numpy()
    sub = cf.tl.transitions(
        course, 0.0, 2.0, "branch", groupby_target="height",
        source_subset=mask, target_subset=["high", "middle"], **QUIET,
    )
    assert list(sub.counts.index) == ["up"] and list(sub.counts.columns) == ["high", "middle"]
    np.testing.assert_allclose(sub.row_normalized.sum(axis=1), 1.0)
    np.testing.assert_allclose(sub.counts, full.counts.loc[["up"], ["high", "middle"]], rtol=1e-9)
    assert sub.coupling.n_obs == (mask & _at(course, 0.0)).sum() and sub.coupling.n_vars == _at(course, 2.0).sum()
    by_list = cf.tl.transitions(course, 0.0, 2.0, "branch", source_subset=["down"], **QUIET)
    np.testing.assert_allclose(by_list.row_normalized.sum(axis=1), 1.0)


@pytest.mark.parametrize("from_time, to_time", [(1.0, 2.0), (2.0, 1.0)], ids=["forward", "backward"])
def test_transfer_labels_recovers_the_branches(course, from_time, to_time):
    target = _at(course, to_time)
    probs = cf.tl.transfer_labels(course, "branch", from_time, to_time, **QUIET)
    labels = course.obs["branch_transferred"]
    assert list(labels.cat.categories) == list(course.obs["branch"].cat.categories)
    assert labels[~target].isna().all() and labels[target].notna().all()
    assert (labels[target] == course.obs["branch"][target]).mean() >= 0.9
    probability = course.obs["branch_transferred_probability"]
    np.testing.assert_allclose(probability[target], probs[target].max(axis=1))
    assert probability[~target].isna().all() and (probability[target] >= 0.5).all()


def test_fate_and_ancestor_labels_are_the_argmax(course):
    fates = cf.tl.fate(course, 0.0, 2.0, "height", **QUIET)
    start = _at(course, 0.0)
    labels = course.obs["cellflow_fate_label"]
    assert (labels[start].astype(str) == fates[start].idxmax(axis=1)).all()
    assert labels[~start].isna().all() and list(labels.cat.categories) == list(fates.columns)
    ancestors = cf.tl.ancestors(course, 2.0, 1.0, "branch", key_added="came_from", **QUIET)
    end = _at(course, 2.0)
    assert (course.obs["came_from_label"][end].astype(str) == ancestors[end].idxmax(axis=1)).all()
    assert "obs/came_from_label" in list(course.uns["cellflow"]["written_keys"])


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda a: cf.tl.push(a, ("branch", "left"), 0.0, 1.0, **QUIET), ValueError, r"\['left'\] are not values"),
        (lambda a: cf.tl.push(a, "branch", 0.0, 1.0, **QUIET), ValueError, r"source='branch'.*'a category'"),
        (lambda a: cf.tl.push(a, "no_column", 0.0, 1.0, **QUIET), KeyError, "source='no_column' is not a column"),
        (lambda a: cf.tl.push(a, np.ones(7), 0.0, 1.0, **QUIET), ValueError, r"shape \(7,\).*one entry per cell"),
        (lambda a: cf.tl.push(a, -np.ones(a.n_obs), 0.0, 1.0, **QUIET), ValueError, "negative or infinite"),
        (lambda a: cf.tl.push(a, _at(a, 2.0), 0.0, 1.0, **QUIET), ValueError, "no weight on the 200 cells"),
        (lambda a: cf.tl.push(a, "growth_true", 1.0, 0.5, **QUIET), ValueError, r"to_time=0.5 must be later.*tl.pull"),
        (lambda a: cf.tl.pull(a, "growth_true", 1.0, 2.0, **QUIET), ValueError, r"to_time=2 must be earlier.*tl.push"),
        (lambda a: cf.tl.push(a, "growth_true", 0.0, [1, 1], **QUIET), ValueError, "repeats a time"),
        (lambda a: cf.tl.push(a, "growth_true", 0.5, 1.0, **QUIET), ValueError, "0.5 is not a measured time point"),
        (lambda a: cf.tl.push(a, "growth_true", 0.0, np.nan, **QUIET), ValueError, "to_time=nan must be a finite"),
        (lambda a: cf.tl.transfer_labels(a, "branch", 1.0, 1.0, **QUIET), ValueError, "both 1; pass two different"),
        (lambda a: cf.tl.transfer_labels(a, "growth_true", 0.0, 1.0, **QUIET), ValueError, "holds numbers"),
        (lambda a: cf.tl.transfer_labels(a, "kind", 0.0, 1.0, **QUIET), KeyError, "groupby='kind'"),
        (lambda a: cf.tl.transitions(a, 0, 1, "branch", source_subset=["left"], **QUIET), ValueError,
         r"source_subset=\['left'\] are not groups"),
        (lambda a: cf.tl.transitions(a, 0, 1, "branch", target_subset=np.ones(3, bool), **QUIET), ValueError,
         r"target_subset is a boolean mask of shape \(3,\)"),
        (lambda a: cf.tl.transitions(a, 0, 1, "branch", groupby_target="kind", **QUIET), KeyError,
         "groupby_target='kind'"),
    ],
)
def test_bad_input_is_named_and_writes_nothing(course, call, error, message):
    before = course.obs.copy()
    with pytest.raises(error, match=message):
        call(course)
    pd.testing.assert_frame_equal(course.obs, before)


def test_keys_of_other_tools_are_not_overwritten(course):
    course.obs["cellflow_push"] = 1.0  # another tool's column of that name
    with pytest.raises(ValueError, match=r"obs\['cellflow_push'\] already exists.*overwrite=True"):
        cf.tl.push(course, ("branch", "up"), 0.0, 1.0, **QUIET)
    assert (course.obs["cellflow_push"] == 1.0).all()
    cf.tl.push(course, ("branch", "up"), 0.0, 1.0, overwrite=True, **QUIET)
    cf.tl.push(course, ("branch", "down"), 0.0, 1.0, **QUIET)  # now ours: replacing it is fine
    course.obs["branch_transferred_probability"] = 0.0
    with pytest.raises(ValueError, match="branch_transferred_probability"):
        cf.tl.transfer_labels(course, "branch", 0.0, 1.0, **QUIET)
    assert "branch_transferred" not in course.obs
