"""The key ledger of every writer, and the checks at the boundary of cellflow.tl and cellflow.analysis.

Every failing call must leave the AnnData exactly as it was: obs, obsm, layers and uns are
compared deeply before and after.
"""

from __future__ import annotations

from collections.abc import Mapping

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import cellflow as cf

QUIET = dict(progress=False)


@pytest.fixture(scope="module")
def fitted_course(quick_fit, small_course) -> ad.AnnData:
    adata = small_course()
    cf.tl.fit(adata, **quick_fit)
    return adata


@pytest.fixture
def fitted(fitted_course) -> ad.AnnData:
    """A fresh copy of the fitted course, for a test to write into."""
    return fitted_course.copy()


def _ledger(adata: ad.AnnData, key: str = "cellflow") -> list[str]:
    return sorted(str(store_key) for store_key in adata.uns[key]["written_keys"])


# -- the ledger ------------------------------------------------------------------------------
def test_fit_fate_fit_fate_replaces_its_own_keys(quick_fit, small_course):
    adata = small_course()
    cf.tl.fit(adata, **quick_fit)
    cf.tl.fate(adata, 0, 1, "side", **QUIET)
    cf.tl.fit(adata, **quick_fit)
    assert "cellflow_fate" not in adata.obsm  # it came from the replaced model
    cf.tl.fate(adata, 0, 1, "side", **QUIET)
    cf.tl.fate(adata, 0, 1, "side", **QUIET)
    assert _ledger(adata) == sorted(
        [
            "obsm/cellflow_velocity_pca", "layers/cellflow_velocity", "var/cellflow_velocity_genes",
            "uns/cellflow_velocity_params",
            "obsm/cellflow_fate", "obs/cellflow_fate_label", "uns/cellflow_fate_params",
        ]
    )


def test_refit_removes_stale_keys_of_the_same_key_added_only(quick_fit, small_course):
    adata = small_course()
    adata.obsm["X_wide"] = np.c_[adata.obsm["X_pca"], adata.obsm["X_pca"][:, :1] ** 2]
    cf.tl.fit(adata, method="wfr", **quick_fit)
    cf.tl.ancestors(adata, 1, 0, "side", **QUIET)
    cf.tl.fit(adata, method="wfr", key_added="other", **quick_fit)
    assert "cellflow_growth_rate" in adata.obs and "cellflow_ancestors" in adata.obsm

    cf.tl.fit(adata, use_rep="X_wide", **quick_fit)  # balanced, in another basis without gene space
    assert _ledger(adata) == ["obsm/cellflow_velocity_wide", "uns/cellflow_velocity_params"]
    assert "cellflow_growth_rate" not in adata.obs
    assert not {"cellflow_velocity_pca", "cellflow_ancestors"} & set(adata.obsm)
    assert "cellflow_velocity" not in adata.layers
    assert list(adata.uns["cellflow_velocity_params"]["embeddings"]) == ["wide"]
    # the other fit keeps everything it wrote
    assert "other_growth_rate" in adata.obs and "other_velocity_pca" in adata.obsm and "other_velocity" in adata.layers


def test_ledger_survives_h5ad(fitted, tmp_path, quick_fit):
    cf.tl.fate(fitted, 0, 1, "side", **QUIET)
    fitted.write_h5ad(tmp_path / "fitted.h5ad")
    back = ad.read_h5ad(tmp_path / "fitted.h5ad")
    assert _ledger(back) == _ledger(fitted) and "obsm/cellflow_fate" in _ledger(back)
    cf.tl.fate(back, 0, 2, "side", **QUIET)  # ours: replacing it is fine
    cf.tl.fit(back, **quick_fit)
    assert "cellflow_fate" not in back.obsm


def test_a_key_taken_over_by_another_fit_leaves_the_first_ledger(fitted, quick_fit, unchanged):
    cf.tl.fit(fitted, key_added="other", **quick_fit)
    cf.tl.fate(fitted, 0, 1, "side", key_added="shared", **QUIET)
    with unchanged(fitted), pytest.raises(ValueError, match=r"obsm\['shared'\].*uns\['other'\].*overwrite=True"):
        cf.tl.fate(fitted, 0, 1, "side", key="other", key_added="shared", **QUIET)
    cf.tl.fate(fitted, 0, 1, "side", key="other", key_added="shared", overwrite=True, **QUIET)
    assert "obsm/shared" not in _ledger(fitted) and "obsm/shared" in _ledger(fitted, "other")
    cf.tl.fit(fitted, **quick_fit)
    assert "shared" in fitted.obsm  # no longer the first fit's key
    cf.tl.fit(fitted, key_added="other", **quick_fit)
    assert "shared" not in fitted.obsm


@pytest.mark.parametrize(
    "entry, key_added, message",
    [
        ({"params": {"zero_center": True}, "variance": np.ones(2)}, "pca", r"uns\['pca'\].*mapping without"),
        ("a note", "cellflow", r"uns\['cellflow'\].*holds a str"),
    ],
    ids=["scanpy_pca", "string"],
)
def test_fit_replaces_an_uns_entry_only_if_it_is_a_fit(entry, key_added, message, quick_fit, small_course, unchanged):
    adata = small_course()
    adata.uns[key_added] = entry
    with unchanged(adata), pytest.raises(ValueError, match=message + r".*key_added=.*overwrite=True"):
        cf.tl.fit(adata, key_added=key_added, **quick_fit)
    cf.tl.fit(adata, key_added=key_added, overwrite=True, **quick_fit)
    assert adata.uns[key_added]["params"]["method"] == "otcfm"


def test_fit_refuses_a_foreign_velocity_params_entry(quick_fit, small_course, unchanged):
    adata = small_course()
    adata.uns["cellflow_velocity_params"] = {"mode": "another tool"}
    with unchanged(adata), pytest.raises(ValueError, match=r"uns\['cellflow_velocity_params'\].*overwrite=True"):
        cf.tl.fit(adata, **quick_fit)


def test_foreign_keys_are_refused_before_anything_changes(fitted, quick_fit, unchanged):
    fitted.obsm["cellflow_fate"] = np.zeros((fitted.n_obs, 2))
    with unchanged(fitted), pytest.raises(ValueError, match=r"obsm\['cellflow_fate'\].*not written by cellflow"):
        cf.tl.fate(fitted, 0, 1, "side", **QUIET)
    fitted.obs["other_growth_rate"] = 0.0
    with unchanged(fitted), pytest.raises(ValueError, match=r"obs\['other_growth_rate'\].*key_added="):
        cf.tl.fit(fitted, method="wfr", key_added="other", **quick_fit)


def test_outputs_are_named_after_the_key(fitted, quick_fit):
    cf.tl.fit(fitted, key_added="flow", **quick_fit)
    pred = cf.tl.interpolate(fitted, 0, 1.5, key="flow")
    assert "flow_mass" in pred.obs and "cellflow_mass" not in pred.obs
    assert list(pred.uns) == ["flow_interpolation"]
    record = dict(pred.uns["flow_interpolation"])
    assert 0.0 <= record.pop("off_data_share") <= 1.0  # pushed across the measured time 1
    assert record == {"from_time": 0.0, "to_time": 1.5, "key": "flow", "stochastic": False, "expression": "neighbors"}
    coupling = cf.tl.transitions(fitted, 0, 1, "side", key="flow", **QUIET).coupling
    assert list(coupling.uns) == ["flow_coupling"]


# -- checks before training or writing ------------------------------------------------------
def test_pca_loadings_of_the_wrong_shape_are_refused_before_training(monkeypatch, quick_fit, small_course, unchanged):
    adata = small_course()
    adata.varm["PCs"] = np.c_[adata.varm["PCs"], adata.varm["PCs"][:, :1]]

    def no_training(self, *args, **kwargs):
        raise AssertionError("training started before the loadings were checked")

    monkeypatch.setattr(cf.CellFlow, "fit", no_training)
    with unchanged(adata), pytest.raises(ValueError, match=r'varm\["PCs"\] has shape \(50, 3\).*\(50, 2\)'):
        cf.tl.fit(adata, **quick_fit)


def test_interpolate_checks_the_pca_loadings(fitted, unchanged):
    fitted.varm["PCs"] = fitted.varm["PCs"][:, :1]
    with unchanged(fitted), pytest.raises(ValueError, match=r'varm\["PCs"\] has shape \(50, 1\).*\(50, 2\)'):
        cf.tl.interpolate(fitted, 0, 1)


def _fake_outputs(velocity, growth):
    """A stand-in for ``CellFlow.evaluate`` giving the velocity and growth of the functions given."""
    def evaluate(self, x, t):
        return velocity(x), growth(x) if self.has_growth else None
    return evaluate


@pytest.mark.filterwarnings("ignore:overflow encountered in matmul:RuntimeWarning")
@pytest.mark.parametrize("output", ["velocity", "gene space velocity", "growth rate"])
def test_diverged_training_writes_nothing(fitted, output, monkeypatch, quick_fit, unchanged):
    method = "otcfm"
    zero_growth = lambda x: np.zeros(len(x))  # noqa: E731
    if output == "velocity":
        fake = _fake_outputs(lambda x: np.full(np.shape(x), np.nan), zero_growth)
    elif output == "gene space velocity":
        fake = _fake_outputs(lambda x: np.ones(np.shape(x)), zero_growth)
        fitted.varm["PCs"] = np.full_like(fitted.varm["PCs"], np.finfo(np.float32).max)  # finite, but overflows
    else:
        fake = _fake_outputs(lambda x: np.zeros(np.shape(x)), lambda x: np.full(len(x), np.nan))
        method = "wfr"
    monkeypatch.setattr(cf.CellFlow, "evaluate", fake)
    with unchanged(fitted), pytest.raises(ValueError, match=f"training diverged: the {output} .*lr="):
        cf.tl.fit(fitted, method=method, **quick_fit)


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda adata: cf.tl.interpolate(adata, np.nan, 1.0), "from_time"),
        (lambda adata: cf.tl.interpolate(adata, 0.0, np.inf), "to_time"),
        (lambda adata: cf.tl.fate(adata, np.nan, 1.0, "side", **QUIET), "from_time"),
        (lambda adata: cf.tl.ancestors(adata, np.inf, 0.0, "side", **QUIET), "from_time"),
        (lambda adata: cf.tl.transitions(adata, 0.0, np.nan, "side", **QUIET), "to_time"),
    ],
    ids=["interpolate_from", "interpolate_to", "fate", "ancestors", "transitions"],
)
def test_times_must_be_finite(fitted, call, argument, unchanged):
    with unchanged(fitted), pytest.raises(ValueError, match=rf"{argument}=(nan|inf) must be a finite number"):
        call(fitted)


@pytest.mark.parametrize(
    "call",
    [
        lambda adata: cf.tl.interpolate(adata, 0, 1),
        lambda adata: cf.tl.fate(adata, 0, 1, "side", **QUIET),
        lambda adata: cf.tl.transitions(adata, 0, 1, "side", **QUIET),
        lambda adata: cf.tl.trajectories(adata, adata.obs_names[:2], [0.5]),
    ],
    ids=["interpolate", "fate", "transitions", "trajectories"],
)
def test_a_changed_representation_is_named(fitted, call, unchanged):
    fitted.obsm["X_pca"] = fitted.obsm["X_pca"][:, :1].copy()
    with unchanged(fitted), pytest.raises(ValueError, match=r"use_rep='X_pca' has 1 columns.*fitted on 2.*fit again"):
        call(fitted)


def _without(state: Mapping, field: str) -> dict:
    return {name: value for name, value in state.items() if name != field}


@pytest.mark.parametrize(
    "damage, error, message",
    [
        (lambda state: "a note", ValueError, r"uns\['cellflow'\] is a str"),
        (lambda state: _without(state, "use_rep"), KeyError, r"uns\['cellflow'\] has no 'use_rep'"),
        (lambda state: _without(state, "weights"), ValueError, r"uns\['cellflow'\]: .*'weights'"),
        (lambda state: {**state, "params": "otcfm"}, ValueError, r"uns\['cellflow'\]: .*'params'"),
    ],
    ids=["string", "no_use_rep", "no_weights", "params_string"],
)
def test_a_damaged_fit_state_is_named(fitted, damage, error, message, unchanged):
    fitted.uns["cellflow"] = damage(fitted.uns["cellflow"])
    for call in (
        lambda: cf.tl.interpolate(fitted, 0, 1),
        lambda: cf.tl.fate(fitted, 0, 1, "side", **QUIET),
        lambda: cf.tl.load_model(fitted),
    ):
        with unchanged(fitted), pytest.raises(error, match=message):
            call()


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_backed_interpolation_matches_in_memory(fitted, sparse, tmp_path, monkeypatch):
    if sparse:
        fitted.X = sp.csr_matrix(fitted.X)
    fitted.write_h5ad(tmp_path / "fitted.h5ad")
    backed = ad.read_h5ad(tmp_path / "fitted.h5ad", backed="r")
    monkeypatch.setattr(cf.tl._expression, "_MEAN_CHUNK_VALUES", 16 * fitted.n_vars)  # gene means, 16 cells a block
    try:
        in_memory, from_disk = (cf.tl.interpolate(data, 0, 1.5, expression="pca") for data in (fitted, backed))
        read, read_from_disk = cf.tl.interpolate(fitted, 0, 1.5), cf.tl.interpolate(backed, 0, 1.5)
    finally:
        backed.file.close()
    means = np.asarray(fitted.X.mean(axis=0)).ravel()
    expected = in_memory.obsm["X_pca"] @ fitted.varm["PCs"].T + means
    np.testing.assert_allclose(in_memory.X, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(from_disk.X, in_memory.X, rtol=1e-6, atol=1e-6)
    assert sp.issparse(read.X) == sparse and sp.issparse(read_from_disk.X) == sparse
    np.testing.assert_allclose(_dense(read_from_disk.X), _dense(read.X), rtol=1e-6, atol=1e-6)


def _dense(matrix):
    """``matrix`` as a dense array (sparse or not)."""
    return matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)
