"""Every bad input to a fit is refused by name before any work, with the AnnData unchanged."""

from __future__ import annotations

import numpy as np
import pytest

import cellflow as cf


def _far_cell(adata):
    adata.obsm["X_pca"][3] = 1e30


def _no_columns(adata):
    adata.obsm["X_pca"] = np.zeros((adata.n_obs, 0), dtype=np.float32)


def _huge_prior(adata):
    adata.obs["prior"] = 1000.0


@pytest.mark.parametrize("change, kwargs, message", [
    (None, {"n_steps": 0}, "n_steps=0"),
    (None, {"batch_size": 0}, "batch_size=0"),
    (None, {"sigma": -1.0}, "sigma=-1.0"),
    (None, {"method": "wfr", "delta": 0.0}, "delta=0.0"),
    (None, {"method": "wfr", "delta": -1.0}, "delta=-1.0"),
    (None, {"hidden": (200000, 200000)}, "hidden=200000"),
    (None, {"device": "cuda:99"}, "cuda"),
    (_huge_prior, {"method": "wfr", "growth_key": "prior"}, "growth_key"),
    (_far_cell, {}, "1e\\+?30|far|farther"),
    (_no_columns, {}, "column"),
])
def test_bad_fit_inputs_are_refused_and_nothing_changes(change, kwargs, message, quick_fit, small_course, unchanged):
    adata = small_course()
    if change is not None:
        change(adata)
    with unchanged(adata), pytest.raises(ValueError, match=message):
        cf.tl.fit(adata, **{**quick_fit, **kwargs})


def test_dashed_day_labels_run_forward(quick_fit, small_course):
    adata = small_course()
    adata.obs["day"] = adata.obs["time"].map({0.0: "day-1", 1.0: "day-2", 2.0: "day-3"})
    model = cf.tl.fit(adata, time_key="day", **quick_fit)
    np.testing.assert_array_equal(model.times, [1.0, 2.0, 3.0])


def test_a_solver_typo_is_named_and_nothing_changes(quick_fit, small_course, unchanged):
    adata = small_course()
    cf.tl.fit(adata, **quick_fit)
    with unchanged(adata), pytest.raises(ValueError, match="solver='dopri'"):
        cf.tl.interpolate(adata, 0.0, 0.5, solver="dopri")
    with unchanged(adata), pytest.raises(ValueError, match="solver='rk'"):
        cf.tl.fate(adata, 0.0, 1.0, "side", solver="rk", progress=False)
