"""scVelo and CellRank on cellflow's outputs (the `interop` and `cellrank` extras), on the moscot time course."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import scanpy as sc  # noqa: E402

import cellflow as cf  # noqa: E402

try:
    import scvelo as scv
except ImportError:
    scv = None
needs_scvelo = pytest.mark.skipif(
    scv is None, reason="scVelo is in the 'interop' extra: pip install 'cellflow-ot[interop]'"
)


def _cosine(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def _with_graph(moscot_fit):
    """What a user adds for scVelo's graph: an expression layer and a neighbour graph."""
    adata, model = moscot_fit()
    assert adata.layers["cellflow_velocity"].format == "csr"  # the fit's layer: sparse
    adata.layers["cellflow_velocity"] = adata.layers["cellflow_velocity"].toarray()  # scVelo reads it dense
    adata.layers["logcounts"] = adata.X.copy()  # the matrix the PCA was computed on
    sc.pp.neighbors(adata, n_neighbors=15, use_rep="X_pca", method="gauss")  # no numba compilation
    scv.tl.velocity_graph(adata, vkey="cellflow_velocity", xkey="logcounts", n_jobs=1, show_progress_bar=False)
    return adata, model


@needs_scvelo
def test_stream_plot_right_after_fit(tmp_path, moscot_fit):
    adata, _ = moscot_fit()
    ours = adata.obsm["cellflow_velocity_pca"].copy()
    ax = scv.pl.velocity_embedding_stream(adata, basis="pca", vkey="cellflow_velocity", show=False)
    ax.figure.savefig(tmp_path / "stream.png")
    plt.close(ax.figure)
    assert (tmp_path / "stream.png").stat().st_size > 10_000
    # scVelo drew cellflow's own velocity: it did not recompute (and overwrite) it
    np.testing.assert_array_equal(adata.obsm["cellflow_velocity_pca"], ours)


@needs_scvelo
def test_velocity_graph_and_umap_embedding(tmp_path, moscot_fit):
    adata, _ = _with_graph(moscot_fit)
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


@needs_scvelo
def test_velocity_graph_follows_our_velocity(moscot_fit):
    adata, _ = _with_graph(moscot_fit)
    ours = adata.obsm["cellflow_velocity_pca"].copy()

    def projected_cosine(graphed):
        """Cosine, per cell, between the graph's projection onto PCs 1-2 and our own velocity there."""
        projected = graphed.copy()
        scv.tl.velocity_embedding(projected, basis="pca", vkey="cellflow_velocity", autoscale=False)
        return _cosine(projected.obsm["cellflow_velocity_pca"][:, :2], ours[:, :2])

    def regraphed(change):
        changed = adata.copy()
        changed.layers["cellflow_velocity"] = change(changed.layers["cellflow_velocity"])
        scv.tl.velocity_graph(changed, vkey="cellflow_velocity", xkey="logcounts", n_jobs=1, show_progress_bar=False)
        return changed

    # the graph's transitions point where cellflow's velocity points: measured median 0.96, 98% of cells > 0
    cosine = projected_cosine(adata)
    assert np.median(cosine) > 0.9 and (cosine > 0).mean() > 0.9
    # negative controls: velocities dealt at random between cells (measured median 0.53, which the old
    # threshold of 0.5 let through, 60% of cells > 0) and reversed ones (measured -0.96) fail both bounds
    order = np.random.default_rng(0).permutation(adata.n_obs)
    shuffled = projected_cosine(regraphed(lambda v: v[order]))
    assert np.median(shuffled) < 0.75 and (shuffled > 0).mean() < 0.75
    assert np.median(projected_cosine(regraphed(lambda v: -v))) < -0.9


@needs_scvelo
def test_keeping_our_pca_velocity_after_the_graph(moscot_fit):
    """velocity_graph drops 'embeddings' from uns['cellflow_velocity_params']; the README's fix keeps ours."""
    adata, _ = _with_graph(moscot_fit)
    ours = adata.obsm["cellflow_velocity_pca"].copy()
    assert "embeddings" not in adata.uns["cellflow_velocity_params"]
    adata.obsm["X_umap"] = adata.obsm["X_pca"][:, 2:4]
    scv.tl.velocity_embedding(adata, basis="umap", vkey="cellflow_velocity")
    adata.uns["cellflow_velocity_params"]["embeddings"].append("pca")  # as in the README
    ax = scv.pl.velocity_embedding_stream(adata, basis="pca", vkey="cellflow_velocity", show=False)
    plt.close(ax.figure)
    np.testing.assert_array_equal(adata.obsm["cellflow_velocity_pca"], ours)


@needs_scvelo
def test_velocity_confidence_on_our_velocity(moscot_fit):
    """scVelo's confidence (agreement of a cell's velocity with its neighbours') runs as the README says."""
    adata, _ = _with_graph(moscot_fit)
    adata.layers["Ms"] = adata.layers["logcounts"].toarray()  # as in the guide: the graph's expression, dense
    shuffled = adata.copy()
    order = np.random.default_rng(0).permutation(adata.n_obs)
    shuffled.layers["cellflow_velocity"] = shuffled.layers["cellflow_velocity"][order]
    for data in (adata, shuffled):
        scv.tl.velocity_confidence(data, vkey="cellflow_velocity")
    for written in ("length", "confidence", "confidence_transition"):
        assert np.isfinite(adata.obs[f"cellflow_velocity_{written}"].to_numpy()).all()
    confidence = adata.obs["cellflow_velocity_confidence"].to_numpy()
    assert ((confidence >= 0) & (confidence <= 1)).all()
    # a smooth field agrees with its neighbours; the same vectors dealt to random cells do not
    assert np.median(confidence) > np.median(shuffled.obs["cellflow_velocity_confidence"]) + 0.2


def _cells_at(adata, day):
    return list(adata.obs_names[(adata.obs["day"] == day).to_numpy()])


@pytest.mark.parametrize("method", ["otcfm", "wfr"])
def test_cellrank_couplings_are_the_transitions_keyed_by_category(method, moscot_fit):
    adata, _ = moscot_fit(method)
    couplings = cf.tl.cellrank_couplings(adata, progress=False)
    days = list(adata.obs["day"].cat.categories)
    assert list(couplings) == list(zip(days[:-1], days[1:]))
    for (t1, t2), coupling in couplings.items():
        assert list(coupling.obs_names) == _cells_at(adata, t1)
        assert list(coupling.var_names) == _cells_at(adata, t2)
        mass = np.asarray(coupling.X.sum(axis=1)).ravel()
        assert (mass > 0).all()  # no empty row: CellRank would replace it by a uniform one
        if method == "otcfm":
            np.testing.assert_allclose(mass, 1.0, rtol=1e-5)  # balanced: every cell carries unit mass
        reference = cf.tl.transitions(adata, t1, t2, progress=False).coupling
        np.testing.assert_allclose(coupling.X.toarray(), reference.X.toarray())


def test_cellrank_couplings_take_the_labels_of_another_column_and_refuse_bad_ones(moscot_fit):
    adata, _ = moscot_fit()
    day = adata.obs["day"].astype(float)
    adata.obs["stage"] = day.map({10.0: "D10", 10.5: "D10.5", 11.0: "D11"}).astype("category")
    couplings = cf.tl.cellrank_couplings(adata, time_key="stage", progress=False)
    assert list(couplings) == [("D10", "D10.5"), ("D10.5", "D11")]
    assert list(couplings["D10", "D10.5"].obs_names) == _cells_at(adata, 10.0)

    with pytest.raises(TypeError, match=r"obs\['time'\].*categorical.*astype\(\"category\"\)"):
        cf.tl.cellrank_couplings(adata, time_key="time")
    adata.obs["unsorted"] = day.map({10.0: "D9", 10.5: "D9.5", 11.0: "D10"}).astype("category")
    with pytest.raises(ValueError, match="do not sort in time order"):
        cf.tl.cellrank_couplings(adata, time_key="unsorted")
    with pytest.raises(ValueError, match="exactly one category"):
        cf.tl.cellrank_couplings(adata, time_key="cell_type")
    with pytest.raises(KeyError, match="'stages' is not a column"):
        cf.tl.cellrank_couplings(adata, time_key="stages")


def _cellrank():
    return pytest.importorskip(
        "cellrank",
        reason="CellRank is the 'cellrank' extra: pip install 'cellflow-ot[cellrank]' (its own environment on "
        "Python 3.11, where it pins numpy < 2.4)",
    )


def test_cellrank_velocity_kernel(moscot_fit):
    cr = _cellrank()
    adata, _ = moscot_fit()
    sc.pp.neighbors(adata, n_neighbors=15, use_rep="X_pca", method="gauss")  # no numba compilation
    vk = cr.kernels.VelocityKernel(adata, attr="obsm", xkey="X_pca", vkey="cellflow_velocity_pca")
    vk.compute_transition_matrix()
    np.testing.assert_allclose(np.asarray(vk.transition_matrix.sum(axis=1)).ravel(), 1.0, atol=1e-6)


def test_cellrank_macrostates_and_fates_by_the_readme_recipe(moscot_fit):
    cr = _cellrank()
    adata, _ = moscot_fit()
    # the README's recipe; the Gaussian neighbour kernel only spares the test numba's compilation
    adata.obs["day"] = adata.obs["day"].astype("category")
    couplings = cf.tl.cellrank_couplings(adata, time_key="day", progress=False)
    rtk = cr.kernels.RealTimeKernel(adata, time_key="day", couplings=couplings)
    rtk.compute_transition_matrix(
        self_transitions="all", conn_weight=0.2, conn_kwargs={"use_rep": "X_pca", "method": "gauss"}
    )
    g = cr.estimators.GPCCA(rtk)
    g.fit(n_states=3, cluster_key="cell_type")
    g.set_terminal_states()
    g.compute_fate_probabilities()

    assert len(g.macrostates.cat.categories) == 3 and g.macrostates.notna().sum() >= 3
    names = g.fate_probabilities.names
    fates = pd.DataFrame(np.asarray(g.fate_probabilities), index=adata.obs_names, columns=names)
    assert fates.shape == (adata.n_obs, 3)
    np.testing.assert_allclose(fates.sum(axis=1), 1.0, atol=1e-5)
    assert (fates.to_numpy() > -1e-6).all()
    # day-10 epithelial cells head for the epithelial terminal state(s), stromal ones hardly
    epithelial = fates[[name for name in fates if name.startswith("Epithelial")]].sum(axis=1)
    first = (adata.obs["day"] == 10.0).to_numpy()
    kind = adata.obs["cell_type"].to_numpy()
    assert epithelial[first & (kind == "Epithelial")].mean() > epithelial[first & (kind == "Stromal")].mean() + 0.3
