"""Expression of every gene for predicted cells, and the gene-space velocity only where the representation has genes."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import cellflow as cf

N_OUTSIDE = 40  # genes that the PCA does not describe


@pytest.fixture(scope="module")
def course():
    """Simulated course whose X has the 50 genes of the latent map and 40 more outside the PCA (zero loadings).

    The genes outside are non-negative nonlinear functions of the latent state (softplus of a random
    direction, as log-expression of genes switched on along a branch), plus noise clipped at zero.
    """
    adata = cf.datasets.simulate(n_cells=300, times=(0.0, 1.0, 2.0, 3.0), growth_scale=0.0, seed=3)
    rng = np.random.default_rng(0)
    directions, offsets = rng.normal(size=(2, N_OUTSIDE)) * 1.5, 0.3 * rng.normal(size=N_OUTSIDE)
    outside = _switched_on(adata.obsm["X_pca"], directions, offsets)
    outside = np.maximum(outside + 0.05 * rng.normal(size=outside.shape), 0.0).astype(np.float32)
    names = [*adata.var_names, *(f"outside_{i}" for i in range(N_OUTSIDE))]
    out = ad.AnnData(X=np.hstack([adata.X, outside]), obs=adata.obs.copy(), obsm=dict(adata.obsm),
                     var=pd.DataFrame(index=names))
    out.varm["PCs"] = np.vstack([adata.varm["PCs"], np.zeros((N_OUTSIDE, 2), dtype=np.float32)])
    out.uns["outside_genes"] = {"directions": directions, "offsets": offsets}
    return out


def _switched_on(states: np.ndarray, directions: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Expression of the genes outside the PCA at latent ``states``, without noise."""
    return np.logaddexp(0.0, states @ directions + offsets)


@pytest.fixture(scope="module")
def held_out(course):
    """The course without day 2, fitted; and the cells measured at day 2."""
    kept = course[course.obs["time"] != 2.0].copy()
    cf.tl.fit(kept, n_steps=600, seed=0, progress=False)
    return kept, course[course.obs["time"] == 2.0]


def test_held_out_expression_of_genes_outside_the_pca_comes_from_the_neighbours(held_out):
    kept, measured = held_out
    outside = slice(50, None)
    truth = measured.X[:, outside].mean(axis=0)
    read = cf.tl.interpolate(kept, 1.0, 2.0)
    reconstructed = cf.tl.interpolate(kept, 1.0, 2.0, expression="pca")
    all_time_mean = kept.X[:, outside].mean(axis=0)
    # the PCA reconstruction of a gene without loadings is its mean over all cells, the same for every cell
    np.testing.assert_allclose(reconstructed.X[:, outside], np.broadcast_to(all_time_mean, (read.n_obs, N_OUTSIDE)),
                               rtol=1e-5, atol=1e-5)
    predicted = np.asarray(read.X[:, outside].mean(axis=0)).ravel()
    # what a perfect reading of the predicted positions would give: the genes' own function of the state
    perfect = _switched_on(read.obsm["X_pca"], **kept.uns["outside_genes"]).mean(axis=0)
    r_read, r_mean = (np.corrcoef(values, truth)[0, 1] for values in (predicted, all_time_mean))
    error_read, error_mean, error_perfect = (np.abs(values - truth).mean()
                                             for values in (predicted, all_time_mean, perfect))
    # measured: r 0.988 against 0.984 (the genes' levels differ more than their changes), mean absolute error
    # 0.198 against 0.395 for the all-time mean, and 0.187 for a perfect reading of the predicted cells (the
    # rest is the flow's own error across the held-out day: W1 0.29)
    assert r_read > r_mean and error_read < 0.6 * error_mean
    assert error_read < 1.15 * error_perfect
    # measured values only: non-negative where X is
    assert read.X.min() >= 0 or (kept.X.min() < 0 and read.X[:, outside].min() >= 0)


def test_interpolated_expression_keeps_sparse_input_sparse_and_reads_layers(held_out):
    kept, _ = held_out
    sparse = kept.copy()
    sparse.X = sp.csr_matrix(np.maximum(sparse.X, 0))
    sparse.layers["shifted"] = sparse.X.toarray() + 1.0  # dense, every entry 1 above X
    read = cf.tl.interpolate(sparse, 1.0, 2.0)
    assert sp.issparse(read.X) and read.X.min() >= 0 and list(read.var_names) == list(kept.var_names)
    shifted = cf.tl.interpolate(sparse, 1.0, 2.0, layer="shifted")
    np.testing.assert_allclose(shifted.X, read.X.toarray() + 1.0, rtol=1e-5, atol=1e-5)  # weights sum to one
    assert cf.tl.interpolate(sparse, 1.0, 2.0, expression="none").n_vars == 0
    with pytest.raises(KeyError, match="layer='missing'"):
        cf.tl.interpolate(sparse, 1.0, 2.0, layer="missing")
    with pytest.raises(ValueError, match="expression"):
        cf.tl.interpolate(sparse, 1.0, 2.0, expression="genes")


@pytest.mark.parametrize("gene_velocity", ["representation", "all", "none"])
def test_gene_velocity_layer_only_for_the_genes_of_the_representation(course, gene_velocity):
    adata = course[course.obs["time"] <= 1.0].copy()
    cf.tl.fit(adata, n_steps=50, seed=0, progress=False, gene_velocity=gene_velocity)
    described = adata.var["cellflow_velocity_genes"].to_numpy()
    assert described.sum() == 50 and not described[50:].any()
    full = adata.obsm["cellflow_velocity_pca"] @ adata.varm["PCs"].T
    if gene_velocity == "none":
        assert "cellflow_velocity" not in adata.layers
        return
    layer = adata.layers["cellflow_velocity"]
    assert sp.issparse(layer) == (gene_velocity == "representation")
    if sp.issparse(layer):
        assert np.unique(layer.indices).tolist() == list(range(50))  # nothing stored for the genes outside
        layer = layer.toarray()
    np.testing.assert_allclose(layer, full, rtol=1e-5, atol=1e-6)
