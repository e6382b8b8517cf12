"""Reading time courses from AnnData: parsing, representations, and every documented error."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import cellflow as cf
from cellflow.io import _readers as readers
from cellflow.io import parse_times, read_time_course


def _course(n=12, times=(0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3), d=3, seed=0):
    rng = np.random.default_rng(seed)
    adata = ad.AnnData(X=rng.normal(size=(n, 5)).astype(np.float32))
    adata.obs["time"] = np.asarray(times, dtype=float)
    adata.obsm["X_pca"] = rng.normal(size=(n, d)).astype(np.float32)
    adata.layers["counts"] = sp.csr_matrix(rng.poisson(1.0, size=(n, 5)).astype(np.float32))
    return adata


@pytest.mark.parametrize(
    "labels, expected",
    [
        (["day 2.5", "day 3"], [2.5, 3.0]),
        (["D3", "D10"], [3.0, 10.0]),
        (["12h", "0.5h"], [12.0, 0.5]),
        (["E8.25", "t=-1e1"], [8.25, -10.0]),
    ],
)
def test_time_labels_hold_one_number(labels, expected):
    # one label at a time: a column may not mix embryonic days with unitless times (tests/test_times.py)
    read = [parse_times(pd.Series([label]).astype("category"), "t")[0] for label in labels]
    np.testing.assert_allclose(read, expected)


@pytest.mark.parametrize(
    "labels, expected",
    [
        (["day-1", "day-2", "day-3"], [1.0, 2.0, 3.0]),  # a dash after a word separates, it is no sign
        (["D-3", "E-1e1", "t_-4"], [3.0, 10.0, 4.0]),
        (["t=-1", "-1.5", "+2", "day -2.5"], [-1.0, -1.5, 2.0, -2.5]),  # a sign after a symbol or a space
    ],
)
def test_minus_is_a_sign_only_when_no_word_character_precedes_it(labels, expected):
    np.testing.assert_allclose([parse_times(pd.Series([label]), "t")[0] for label in labels], expected)


def test_two_labels_reading_as_one_time_are_refused():
    with pytest.raises(ValueError, match="'day-1' and 'day1' .* both read as time 1; pass time_map"):
        parse_times(pd.Series(["day-1", "day0", "day1"]), "stage")


def test_time_map_for_stage_names():
    values = pd.Series(["early", "late", "early"])
    np.testing.assert_allclose(parse_times(values, "stage", {"early": 1, "late": 4}), [1, 4, 1])
    with pytest.raises(ValueError, match="time_map has no entry.*'late'"):
        parse_times(values, "stage", {"early": 1})


@pytest.mark.parametrize("label", ["stage A", "day 1 to 2"])
def test_unparseable_time_label(label):
    with pytest.raises(ValueError, match=f"{label!r}.*time_map"):
        parse_times(pd.Series([label, "day 3"]), "stage")


def test_populations_sorted_and_unchanged_input():
    adata = _course(times=[2, 0, 1, 2, 0, 1, 2, 0, 1, 3, 3, 3])
    before = adata.copy()
    course = read_time_course(adata, "time", "X_pca")
    np.testing.assert_array_equal(course.times, [0, 1, 2, 3])
    for t, idx, pop in zip(course.times, course.indices, course.populations):
        assert (adata.obs["time"].to_numpy()[idx] == t).all()
        np.testing.assert_array_equal(pop, adata.obsm["X_pca"][idx])
    assert list(adata.obs.columns) == list(before.obs.columns)
    assert set(adata.obsm) == set(before.obsm) and set(adata.uns) == set(before.uns)
    np.testing.assert_array_equal(adata.obsm["X_pca"], before.obsm["X_pca"])


@pytest.mark.parametrize("use_rep, width", [("X", 5), ("X_pca", 3), ("counts", 5)])
def test_representations_dense_sparse_layer(use_rep, width):
    adata = _course()
    adata.X = sp.csr_matrix(adata.X)
    course = read_time_course(adata, "time", use_rep)
    assert course.n_dims == width and course.populations[0].dtype == np.float32


def test_backed_anndata_reads_only_the_representation(tmp_path):
    adata = _course()
    adata.X = sp.csr_matrix(adata.X)
    adata.write_h5ad(tmp_path / "course.h5ad")
    backed = ad.read_h5ad(tmp_path / "course.h5ad", backed="r")
    for rep in ("X_pca", "X"):
        course = read_time_course(backed, "time", rep)
        np.testing.assert_allclose(np.concatenate(course.populations), np.concatenate(read_time_course(adata, "time", rep).populations))
    backed.file.close()


def test_weights_read_per_time_point():
    adata = _course()
    adata.obs["mass"] = np.arange(1, 13, dtype=float)
    course = read_time_course(adata, "time", "X_pca", weight_key="mass")
    np.testing.assert_array_equal(course.weights[1], [4, 5, 6])
    adata.obs["mass"] = -1.0
    with pytest.raises(ValueError, match="'mass'.*positive"):
        read_time_course(adata, "time", "X_pca", weight_key="mass")


def test_error_missing_time_key():
    with pytest.raises(KeyError, match="time_key='day'.*columns"):
        read_time_course(_course(), "day")


def test_error_missing_representation():
    with pytest.raises(KeyError, match="use_rep='X_umap'"):
        read_time_course(_course(), "time", "X_umap")
    adata = _course()
    del adata.obsm["X_pca"]
    with pytest.raises(KeyError, match="scanpy.pp.pca"):
        read_time_course(adata, "time")


def test_error_single_time_point():
    with pytest.raises(ValueError, match="1 time point.*at least 2"):
        read_time_course(_course(times=[5] * 12), "time")


def test_error_time_point_with_one_cell():
    with pytest.raises(ValueError, match="time point 3 .* 1 cell"):
        read_time_course(_course(times=[0] * 6 + [1] * 5 + [3]), "time")


def test_error_nan_in_representation():
    adata = _course()
    adata.obsm["X_pca"][4, 1] = np.nan
    adata.obsm["X_pca"][7, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or inf values in 2 cells \\(first: '4'\\)"):
        read_time_course(adata, "time")


def test_error_representation_without_columns():
    adata = _course()
    adata.obsm["X_pca"] = np.zeros((adata.n_obs, 0), dtype=np.float32)
    with pytest.raises(ValueError, match="'X_pca' has 0 columns.*at least one component"):
        read_time_course(adata, "time")


def test_error_cell_absurdly_far_from_the_others():
    adata = _course(n=40, times=np.repeat([0, 1, 2, 3], 10))
    adata.obsm["X_pca"][[7, 30], 2] = [1e30, -1e6]
    with pytest.raises(ValueError, match=r"2 cell\(s\) of the representation 'X_pca'.*first: '7'.*remove them"):
        read_time_course(adata, "time")


def test_rare_far_cells_and_long_trajectories_are_kept():
    rng = np.random.default_rng(0)
    adata = _course(n=1000, times=np.repeat(np.arange(10), 100))
    cloud = rng.normal(size=(1000, 3))
    cloud[:5] += 300.0  # five rare cells, 300 standard deviations from the others
    adata.obsm["X_pca"] = cloud.astype(np.float32)
    read_time_course(adata, "time")
    adata.obsm["X_pca"][:, 0] += adata.obs["time"].to_numpy() ** 4  # a trajectory that speeds up to 6561
    read_time_course(adata, "time")
    adata.obsm["X_pca"][:600] = 0.0  # most cells on one point: the typical distance leaves them out
    read_time_course(adata, "time")


def test_error_wrong_number_of_rows():
    with pytest.raises(ValueError, match="shape \\(5, 3\\).*12 cells"):
        read_time_course(_course(), "time", np.zeros((5, 3)))


def test_error_missing_times():
    adata = _course()
    adata.obs["time"] = adata.obs["time"].where(adata.obs["time"] != 2)
    with pytest.raises(ValueError, match="missing or infinite times"):
        read_time_course(adata, "time")


def test_numeric_time_preprocessing():
    adata = _course()
    adata.obs["stage"] = [f"day {t:g}" for t in adata.obs["time"]]
    out = cf.pp.numeric_time(adata, "stage", key_added="day_number", copy=True)
    np.testing.assert_array_equal(out.obs["day_number"], adata.obs["time"])
    assert "day_number" not in adata.obs


@pytest.mark.parametrize(
    "kind", [np.asarray, pd.DataFrame, sp.csr_matrix, sp.csc_matrix, sp.coo_matrix, lambda x: x.astype(np.float32)]
)
def test_every_kind_of_matrix_is_read_in_blocks_into_time_ordered_float32(kind, monkeypatch):
    monkeypatch.setattr(readers, "_BLOCK_VALUES", 6)  # blocks of two rows of three columns
    times = [2, 0, 1, 3, 0, 2, 1, 3, 1, 0, 2, 3]
    adata = _course(times=times)
    values = np.random.default_rng(1).normal(size=(12, 3))
    course = read_time_course(adata, "time", kind(values))
    for t, rows, cells in zip(course.times, course.indices, course.populations):
        np.testing.assert_array_equal(rows, np.flatnonzero(np.asarray(times) == t))
        assert cells.dtype == np.float32
        np.testing.assert_array_equal(cells, values[rows].astype(np.float32))


def test_errors_name_the_first_bad_cell_in_anndata_order_when_times_are_unsorted():
    adata = _course(n=40, times=np.tile([3, 2, 1, 0], 10))
    adata.obsm["X_pca"][[2, 3], 0] = np.nan  # time 1 and time 0: row 3 comes first in time order
    with pytest.raises(ValueError, match="NaN or inf values in 2 cells \\(first: '2'\\)"):
        read_time_course(adata, "time")
    adata = _course(n=40, times=np.tile([3, 2, 1, 0], 10))
    adata.obsm["X_pca"][[6, 7], 1] = [1e30, 1e9]
    with pytest.raises(ValueError, match=r"2 cell\(s\) .*first: '6', \d\.\d+e\+29 times"):
        read_time_course(adata, "time")
