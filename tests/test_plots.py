"""Every plot of cf.pl renders to a PNG (Agg backend), on the moscot time course."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import cellflow as cf  # noqa: E402
from test_analysis import moscot_fit, one_thread  # noqa: E402,F401


@pytest.fixture(scope="module")
def moscot():
    adata, _ = moscot_fit("otcfm")
    # "project it yourself": a linear 2-D embedding, and the velocity projected exactly onto it
    rotation = np.array([[0.8, -0.6], [0.6, 0.8]])
    adata.obsm["X_lin"] = adata.obsm["X_pca"][:, :2] @ rotation
    adata.obsm["cellflow_velocity_lin"] = adata.obsm["cellflow_velocity_pca"][:, :2] @ rotation
    return adata


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def _is_png(path, min_bytes=10_000):
    data = path.read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > min_bytes


def test_velocity_on_pca_and_another_basis(moscot, tmp_path):
    assert cf.pl.velocity(moscot, basis="pca", save=str(tmp_path / "pca.png"), show=False) is not None
    assert _is_png(tmp_path / "pca.png")
    cf.pl.velocity(moscot, basis="X_lin", color="cell_type", save=str(tmp_path / "lin.png"), show=False)
    assert _is_png(tmp_path / "lin.png")


def test_velocity_on_a_basis_without_projection_says_what_to_run(moscot):
    adata = moscot.copy()
    adata.obsm["X_umap"] = adata.obsm["X_pca"][:, 2:4]
    with pytest.raises(KeyError, match=r"scv.tl.velocity_embedding\(adata, basis='umap', vkey='cellflow_velocity'\)"):
        cf.pl.velocity(adata, basis="umap", show=False)
    with pytest.raises(KeyError, match="X_tsne.*scanpy.tl.tsne"):
        cf.pl.velocity(adata, basis="tsne", show=False)


def test_growth(tmp_path):
    adata, _ = moscot_fit("wfr")
    ax = cf.pl.growth(adata, basis="pca", save=str(tmp_path / "growth.png"), show=False)
    assert _is_png(tmp_path / "growth.png")
    low, high = ax.collections[0].get_clim()
    assert low == pytest.approx(-high)  # the diverging map is centred at zero growth


def test_growth_needs_a_growth_model(moscot):
    with pytest.raises(KeyError, match="cellflow_growth_rate.*method='wfr'"):
        cf.pl.growth(moscot, show=False)


def test_interpolation(moscot, tmp_path):
    predicted = [cf.tl.interpolate(moscot, 10, t) for t in (10.25, 10.75)]
    cf.pl.interpolation(moscot, predicted, save=str(tmp_path / "interp.png"), show=False)
    assert _is_png(tmp_path / "interp.png")
    cf.pl.interpolation(moscot, predicted[0], components=(1, 2), save=str(tmp_path / "one.png"), show=False)
    assert _is_png(tmp_path / "one.png")


def test_fate_panels_and_argmax(moscot, tmp_path):
    adata = moscot.copy()
    table = cf.tl.fate(adata, 10, 11, progress=False)
    axes = cf.pl.fate(adata, basis="lin", save=str(tmp_path / "fate.png"), show=False)
    assert len(axes) == table.shape[1] and _is_png(tmp_path / "fate.png")
    cf.pl.fate(adata, basis="pca", argmax=True, save=str(tmp_path / "argmax.png"), show=False)
    assert _is_png(tmp_path / "argmax.png")
    cf.tl.ancestors(adata, 11, 10, progress=False)
    cf.pl.fate(adata, "Epithelial", fate_key="cellflow_ancestors", save=str(tmp_path / "anc.png"), show=False)
    assert _is_png(tmp_path / "anc.png")
    with pytest.raises(KeyError, match="Neurons.*not in"):
        cf.pl.fate(adata, "Neurons", show=False)


def test_fate_plot_needs_fates(moscot):
    with pytest.raises(KeyError, match="run cellflow.tl.fate"):
        cf.pl.fate(moscot.copy(), show=False)


def test_loss(moscot, tmp_path):
    cf.pl.loss(moscot, save=str(tmp_path / "loss.png"), show=False)
    assert _is_png(tmp_path / "loss.png")


def test_interpolation_sizes_cells_by_the_mass_of_its_own_key(tmp_path):
    adata, _ = moscot_fit("otcfm")
    adata = adata.copy()
    cf.tl.fit(adata, method="wfr", key_added="flow", delta=5.0, n_steps=30, progress=False)
    predicted = cf.tl.interpolate(adata, 10, 10.5, key="flow")
    mass = predicted.obs["flow_mass"].to_numpy()
    assert "cellflow_mass" not in predicted.obs and mass.std() > 0
    ax = cf.pl.interpolation(adata, predicted, key="flow", show=False)
    sizes = ax.collections[1].get_sizes()
    np.testing.assert_allclose(sizes, 14 * mass / mass.mean(), rtol=1e-6)
