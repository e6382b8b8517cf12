"""Data that stays on disk: a backed AnnData, a memory-mapped or HDF5 obsm, read in blocks of rows."""

from __future__ import annotations

import tracemalloc

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import cellflow as cf
from cellflow import tl
from cellflow.io import _readers as readers

FIT = dict(time_key="time", use_rep="X_pca", method="otcfm", n_steps=40, seed=0, progress=False)


@pytest.fixture(scope="module")
def course_file(tmp_path_factory):
    """A simulated course with a sparse X, written to an .h5ad, and the same course in memory."""
    adata = cf.datasets.simulate(n_cells=150, times=(0.0, 1.0, 2.0), seed=2)
    adata.X = sp.csr_matrix(adata.X)
    path = tmp_path_factory.mktemp("backed") / "course.h5ad"
    adata.write_h5ad(path)
    return path, adata


def _x_unreadable(monkeypatch) -> None:
    """Fail the test as soon as anything reads ``X`` of an AnnData."""
    monkeypatch.setattr(ad.AnnData, "X", property(lambda self: pytest.fail("X was read")))


@pytest.mark.parametrize("use_rep", ["X_pca", "X"])
def test_fit_from_a_backed_file_equals_the_fit_in_memory(use_rep, course_file, monkeypatch):
    path, adata = course_file
    fit = {**FIT, "use_rep": use_rep}
    in_memory = adata.copy()
    tl.fit(in_memory, **fit)
    backed = ad.read_h5ad(path, backed="r")
    with monkeypatch.context() as patched:
        if use_rep != "X":
            _x_unreadable(patched)
        tl.fit(backed, **fit)
    velocity = f"cellflow_velocity_{'pca' if use_rep == 'X_pca' else 'X'}"
    np.testing.assert_allclose(backed.obsm[velocity], in_memory.obsm[velocity], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(_dense(backed.layers["cellflow_velocity"]), _dense(in_memory.layers["cellflow_velocity"]),
                               rtol=1e-6, atol=1e-7)
    backed.file.close()


def test_an_obsm_representation_never_reads_x(course_file, monkeypatch):
    path, adata = course_file
    backed = ad.read_h5ad(path, backed="r")
    with monkeypatch.context() as patched:
        _x_unreadable(patched)
        course = cf.read_time_course(backed, "time", "X_pca")
    rows = np.concatenate(course.indices)
    np.testing.assert_array_equal(np.concatenate(course.populations), adata.obsm["X_pca"][rows])
    backed.file.close()


def _recording_reads(matrix_class, monkeypatch) -> list[int]:
    """Rows of every slice read from matrices of ``matrix_class``; whole-matrix loads fail the test."""
    reads, getitem = [], matrix_class.__getitem__

    def read_rows(self, key):
        rows = key[0] if isinstance(key, tuple) else key
        reads.append(len(range(*rows.indices(self.shape[0]))))
        return getitem(self, key)

    monkeypatch.setattr(matrix_class, "__getitem__", read_rows)
    monkeypatch.setattr(matrix_class, "to_memory", lambda self: pytest.fail("the whole matrix was loaded"),
                        raising=False)
    return reads


def test_backed_sparse_x_is_read_in_blocks_of_rows(course_file, monkeypatch):
    path, adata = course_file
    backed = ad.read_h5ad(path, backed="r")
    monkeypatch.setattr(readers, "_BLOCK_VALUES", 40 * adata.n_vars)
    reads = _recording_reads(type(backed.X), monkeypatch)
    course = cf.read_time_course(backed, "time", "X")
    monkeypatch.undo()
    assert max(reads) == 40 and sum(reads) == adata.n_obs
    dense = adata.X.toarray()
    for rows, cells in zip(course.indices, course.populations):
        assert cells.dtype == np.float32
        np.testing.assert_array_equal(cells, dense[rows])
    backed.file.close()


def _peak_bytes(function) -> int:
    """Peak of the memory that Python and numpy allocate while ``function()`` runs."""
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("storage", ["memmap", "h5py"])
def test_obsm_on_disk_read_in_blocks_into_float32_without_a_float64_copy(storage, tmp_path, monkeypatch):
    n, d = 50_000, 64
    rng = np.random.default_rng(0)
    values = rng.normal(size=(n, d))
    if storage == "memmap":
        on_disk = np.memmap(tmp_path / "rep.dat", dtype=np.float64, mode="w+", shape=(n, d))
        on_disk[:] = values
        on_disk.flush()
    else:
        on_disk = h5py.File(tmp_path / "rep.h5", "w").create_dataset("rep", data=values)
    adata = ad.AnnData(obs=pd.DataFrame({"time": rng.integers(0, 4, n).astype(float)}, index=np.arange(n).astype(str)))
    adata.obsm["X_big"] = on_disk
    monkeypatch.setattr(readers, "_BLOCK_VALUES", 256 * d)
    found = {}
    peak = _peak_bytes(lambda: found.update(course=cf.read_time_course(adata, "time", "X_big")))
    float32_size = n * d * 4
    assert peak < 1.5 * float32_size, f"peak {peak / float32_size:.2f} times the float32 representation"
    for rows, cells in zip(found["course"].indices, found["course"].populations):
        assert cells.dtype == np.float32
        np.testing.assert_array_equal(cells, values[rows].astype(np.float32))


def test_gene_space_velocity_and_interpolation_in_blocks_of_cells(course_file, monkeypatch):
    _, adata = course_file
    fitted = adata.copy()
    monkeypatch.setattr(cf.tl._expression, "_GENE_BLOCK_VALUES", 7 * adata.n_vars)  # many blocks of 7 cells
    tl.fit(fitted, **FIT)
    loadings = fitted.varm["PCs"]
    genes = fitted.layers["cellflow_velocity"]
    assert sp.issparse(genes) and genes.dtype == np.float32  # every gene of this course has a loading
    np.testing.assert_allclose(genes.toarray(), fitted.obsm["cellflow_velocity_pca"] @ loadings.T, rtol=1e-5,
                               atol=1e-6)
    pred = tl.interpolate(fitted, 0, 0.5, expression="pca")
    means = np.asarray(adata.X.mean(axis=0)).ravel()
    assert pred.X.dtype == np.float32 and pred.n_obs == int((adata.obs["time"] == 0).sum())
    np.testing.assert_allclose(pred.X, pred.obsm["X_pca"] @ loadings.T + means, rtol=1e-4, atol=1e-5)


def _dense(matrix):
    """``matrix`` as a dense array (sparse or not)."""
    return matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)
