"""scVelo and CellRank on cellflow's outputs (the `interop` extra), on the moscot time course."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scanpy as sc  # noqa: E402

import cellflow as cf  # noqa: E402
from test_analysis import moscot_fit, one_thread  # noqa: E402,F401

scv = pytest.importorskip("scvelo", reason="scVelo is in the 'interop' extra: pip install 'cellflow[interop]'")


def _cosine(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def _with_graph():
    """What a user adds for scVelo's graph: an expression layer and a neighbour graph."""
    adata, model = moscot_fit()
    adata.layers["logcounts"] = adata.X.copy()  # the matrix the PCA was computed on
    sc.pp.neighbors(adata, n_neighbors=15, use_rep="X_pca", method="gauss")  # no numba compilation
    scv.tl.velocity_graph(adata, vkey="cellflow_velocity", xkey="logcounts", n_jobs=1, show_progress_bar=False)
    return adata, model


def test_stream_plot_right_after_fit(tmp_path):
    adata, _ = moscot_fit()
    ours = adata.obsm["cellflow_velocity_pca"].copy()
    ax = scv.pl.velocity_embedding_stream(adata, basis="pca", vkey="cellflow_velocity", show=False)
    ax.figure.savefig(tmp_path / "stream.png")
    plt.close(ax.figure)
    assert (tmp_path / "stream.png").stat().st_size > 10_000
    # scVelo drew cellflow's own velocity: it did not recompute (and overwrite) it
    np.testing.assert_array_equal(adata.obsm["cellflow_velocity_pca"], ours)


def test_velocity_graph_and_umap_embedding(tmp_path):
    adata, _ = _with_graph()
    graph = adata.uns["cellflow_velocity_graph"]
    assert graph.shape == (adata.n_obs, adata.n_obs) and graph.nnz > 0
    # any 2-D embedding named X_umap will do for scVelo (sc.tl.umap would add ~10 s of numba compilation)
    adata.obsm["X_umap"] = np.tanh(adata.obsm["X_pca"][:, :2] / adata.obsm["X_pca"][:, :2].std(axis=0))
    scv.tl.velocity_embedding(adata, basis="umap", vkey="cellflow_velocity")
    umap_velocity = adata.obsm["cellflow_velocity_umap"]
    assert umap_velocity.shape == (adata.n_obs, 2) and np.isfinite(umap_velocity).all()
    ax = scv.pl.velocity_embedding_stream(adata, basis="umap", vkey="cellflow_velocity", show=False)
    ax.figure.savefig(tmp_path / "umap_stream.png")
    plt.close(ax.figure)
    cf.pl.velocity(adata, basis="umap", color="cell_type", save=str(tmp_path / "cf_umap.png"), show=False)
    assert (tmp_path / "cf_umap.png").stat().st_size > 10_000


def test_velocity_graph_follows_our_velocity():
    adata, _ = _with_graph()
    ours = adata.obsm["cellflow_velocity_pca"].copy()
    projected = adata.copy()
    scv.tl.velocity_embedding(projected, basis="pca", vkey="cellflow_velocity", autoscale=False)
    cosine = _cosine(projected.obsm["cellflow_velocity_pca"][:, :2], ours[:, :2])
    assert np.median(cosine) > 0.5  # the graph's transitions point where cellflow's velocity points


def test_keeping_our_pca_velocity_after_the_graph():
    """velocity_graph drops 'embeddings' from uns['cellflow_velocity_params']; the README's fix keeps ours."""
    adata, _ = _with_graph()
    ours = adata.obsm["cellflow_velocity_pca"].copy()
    assert "embeddings" not in adata.uns["cellflow_velocity_params"]
    adata.obsm["X_umap"] = adata.obsm["X_pca"][:, 2:4]
    scv.tl.velocity_embedding(adata, basis="umap", vkey="cellflow_velocity")
    adata.uns["cellflow_velocity_params"]["embeddings"].append("pca")  # as in the README
    ax = scv.pl.velocity_embedding_stream(adata, basis="pca", vkey="cellflow_velocity", show=False)
    plt.close(ax.figure)
    np.testing.assert_array_equal(adata.obsm["cellflow_velocity_pca"], ours)


def test_cellrank_kernels():
    cr = pytest.importorskip(
        "cellrank",
        reason="CellRank >= 2.0.8 needs Python >= 3.12 and 2.0.7 fails with numpy 2; "
        "install it with the 'interop' extra on Python 3.12+",
    )
    adata, _ = moscot_fit()
    sc.pp.neighbors(adata, n_neighbors=15, use_rep="X_pca", method="gauss")  # no numba compilation
    vk = cr.kernels.VelocityKernel(adata, attr="obsm", xkey="X_pca", vkey="cellflow_velocity_pca")
    vk.compute_transition_matrix()
    np.testing.assert_allclose(np.asarray(vk.transition_matrix.sum(axis=1)).ravel(), 1.0, atol=1e-6)
    couplings = {
        (10.0, 10.5): cf.tl.transitions(adata, 10, 10.5, progress=False).coupling,
        (10.5, 11.0): cf.tl.transitions(adata, 10.5, 11, progress=False).coupling,
    }
    assert list(adata.obs["day"].cat.categories) == [10.0, 10.5, 11.0]
    rtk = cr.kernels.RealTimeKernel(adata, time_key="day", couplings=couplings)
    rtk.compute_transition_matrix(self_transitions="diagonal", threshold=None)
    matrix = rtk.transition_matrix
    assert matrix.shape == (adata.n_obs, adata.n_obs)
    np.testing.assert_allclose(np.asarray(matrix.sum(axis=1)).ravel(), 1.0, atol=1e-6)
