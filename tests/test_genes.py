"""Gene trends along the flow and fate drivers, on a simulated branching course with known genes."""

from __future__ import annotations

import functools

import anndata as ad
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import scipy.sparse as sp  # noqa: E402
from scipy import stats  # noqa: E402

import cellflow as cf  # noqa: E402

FIT = dict(n_steps=300, hidden=(64, 64), batch_size=128, seed=0, progress=False)
N_NOISE = 8


@functools.cache
def _course():
    """The simulated course (z1 moves at speed 1, z2 splits into an upper and a lower branch) with genes.

    ``position = 2 z1 + 1`` (``z`` centred, as scanpy's PCA scores are; ``varm["PCs"]`` holds
    its loadings, so the PCA reconstruction of it is exact), ``driver`` = branch indicator +
    N(0, 0.3^2) noise, and sparse Poisson noise genes. ``X`` is sparse.
    """
    base = cf.datasets.simulate(n_cells=300, times=(0.0, 1.0, 2.0), growth_scale=0.0, seed=3)
    raw = base.obsm["X_pca"].astype(np.float64)
    z = raw - raw.mean(axis=0)
    upper = raw[:, 1] > 0  # the flow keeps the sign of z2: the branch each cell is on
    rng = np.random.default_rng(0)
    genes = np.column_stack(
        [2 * z[:, 0] + 1, upper + rng.normal(0, 0.3, len(z)), rng.poisson(0.3, size=(len(z), N_NOISE))]
    )
    adata = ad.AnnData(
        sp.csr_matrix(genes.astype(np.float32)),
        obs=pd.DataFrame(
            {"time": base.obs["time"].to_numpy(), "branch": np.where(upper, "upper", "lower")}, index=base.obs_names
        ),
        var=pd.DataFrame(index=["position", "driver"] + [f"noise_{i}" for i in range(N_NOISE)]),
    )
    adata.obsm["X_pca"] = z.astype(np.float32)
    loadings = np.zeros((adata.n_vars, 2), dtype=np.float32)
    loadings[0, 0] = 2.0
    adata.varm["PCs"] = loadings
    cf.tl.fit(adata, "time", "X_pca", "otcfm", **FIT)
    cf.tl.fate(adata, 0, 2, groupby="branch", progress=False)
    return adata


@pytest.fixture
def course():
    return _course().copy()


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


# -- drivers ---------------------------------------------------------------------------------
def test_the_driver_gene_ranks_first_for_its_branch(course):
    up = cf.tl.fate_drivers(course, "upper")
    assert up.index[0] == "driver"
    assert up.loc["driver", "correlation"] > 0.5
    assert up.loc["driver", "pvalue"] < 1e-20 and up.loc["driver", "qvalue"] < 1e-19
    assert (up.drop("driver")["qvalue"] > 0.05).all()  # no noise gene passes
    down = cf.tl.fate_drivers(course, "lower", method="spearman")
    assert down.index[-1] == "driver" and down.loc["driver", "pvalue"] < 1e-20
    assert list(up.columns) == ["correlation", "pvalue", "qvalue", "ci_low", "ci_high"]


def test_driver_statistics_match_scipy_and_sparse_matches_dense(course):
    start = (course.obs["time"] == 0).to_numpy()
    probability = course.obsm["cellflow_fate"]["upper"].to_numpy()[start]
    expression = course.X[start].toarray()
    pearson = cf.tl.fate_drivers(course, "upper")
    spearman = cf.tl.fate_drivers(course, "upper", method="spearman", confidence=0.9)
    for j, gene in enumerate(course.var_names):
        ref = stats.pearsonr(expression[:, j], probability)
        assert pearson.loc[gene, "correlation"] == pytest.approx(ref.statistic, abs=1e-10)
        assert pearson.loc[gene, "pvalue"] == pytest.approx(ref.pvalue, rel=1e-6)
        ci = ref.confidence_interval(0.95)
        assert (pearson.loc[gene, "ci_low"], pearson.loc[gene, "ci_high"]) == pytest.approx((ci.low, ci.high))
        rho = stats.spearmanr(expression[:, j], probability)
        assert spearman.loc[gene, "correlation"] == pytest.approx(rho.statistic, abs=1e-10)
        assert spearman.loc[gene, "pvalue"] == pytest.approx(rho.pvalue, rel=1e-6)
    q = stats.false_discovery_control(pearson["pvalue"].to_numpy())
    np.testing.assert_allclose(pearson["qvalue"], q)
    dense = course.copy()
    dense.X = dense.X.toarray()
    pd.testing.assert_frame_equal(cf.tl.fate_drivers(dense, "upper"), pearson)
    # a constant gene has no correlation and comes last; a subset of genes, a layer and a time point
    dense.layers["counts"] = dense.X.copy()
    dense.layers["counts"][:, 3] = 1.0
    subset = cf.tl.fate_drivers(dense, "upper", genes=["noise_1", "driver"], layer="counts", time=0)
    assert list(subset.index) == ["driver", "noise_1"] and np.isnan(subset.loc["noise_1", "pvalue"])


# -- trends ----------------------------------------------------------------------------------
@pytest.mark.parametrize("expression, tolerance", [("neighbors", 0.2), ("pca", 0.15)])
def test_trend_of_a_group_recovers_a_gene_moving_at_known_speed(course, expression, tolerance):
    """``position = 2 z1 + 1`` and z1 moves at speed 1: its mean over the upper cells of time 0 is
    ``2 (mean z1(0) + t) + 1``, a rise of 4 over the course; within ``tolerance`` at every time."""
    trends = cf.tl.gene_trends(course, ["position", "driver"], groupby="branch", group="upper", time=0,
                               expression=expression)
    start = ((course.obs["time"] == 0) & (course.obs["branch"] == "upper")).to_numpy()
    position = trends[trends["gene"] == "position"]
    known = 2 * (course.obsm["X_pca"][start, 0].mean() + position["time"].to_numpy()) + 1
    np.testing.assert_allclose(position["mean"], known, atol=tolerance)
    assert position["time"].iloc[0] == 0 and position["time"].iloc[-1] == 2
    assert len(position) == 51 and position["measured"].sum() == 3  # 50 even steps and the time point 1
    np.testing.assert_allclose(position["mass"], start.sum())  # no growth: every cell keeps mass one
    assert trends.attrs["cells"] == "branch upper at 0"
    assert (trends["std"] >= 0).all()


def test_trends_of_fates_separate_the_driver(course):
    up = cf.tl.gene_trends(course, "driver", fate="upper", times=[0.0, 1.5, 2.0])
    down = cf.tl.gene_trends(course, "driver", fate="lower", times=[2.0, 0.0, 1.5])
    assert list(up["time"]) == [0.0, 1.5, 2.0] and list(up["measured"]) == [True, False, True]
    assert (up["mean"] > 0.8).all() and (down["mean"].iloc[1:] < 0.3).all()
    probability = course.obsm["cellflow_fate"]["upper"].to_numpy()
    np.testing.assert_allclose(up["mass"], np.nansum(probability))


def test_trends_weight_paths_by_their_mass():
    """With a growth model the mean is mass-weighted: checked against the trajectories by hand."""
    adata = _course().copy()
    cf.tl.fit(adata, "time", "X_pca", "wfr", **{**FIT, "n_steps": 150}, key_added="wfr")
    grid = [0.0, 0.5, 1.0, 2.0]
    trends = cf.tl.gene_trends(adata, "position", groupby="time", group="1.0", times=grid, key="wfr",
                               expression="pca")
    cells = np.flatnonzero((adata.obs["time"] == 1).to_numpy())
    paths = cf.tl.trajectories(adata, cells, grid, key="wfr")
    assert not np.allclose(paths.masses, 1.0)
    gene = 2 * paths.positions[:, :, 0] + 1
    expected = (paths.masses * gene).sum(axis=1) / paths.masses.sum(axis=1)
    np.testing.assert_allclose(trends["mean"], expected, rtol=1e-6)
    np.testing.assert_allclose(trends["mass"], paths.masses.sum(axis=1), rtol=1e-6)


def test_trends_bad_input_names_the_problem(course):
    with pytest.raises(KeyError, match=r"\['nope'\] is not in adata.var_names"):
        cf.tl.gene_trends(course, ["driver", "nope"], groupby="branch", group="upper", time=0)
    with pytest.raises(KeyError, match=r"fate='middle'.*fates: \['lower', 'upper'\]"):
        cf.tl.gene_trends(course, "driver", fate="middle")
    with pytest.raises(KeyError, match=r"fate='middle'"):
        cf.tl.fate_drivers(course, "middle")
    with pytest.raises(KeyError, match="run cellflow.tl.fate first"):
        cf.tl.fate_drivers(course, "upper", fate_key="other_fate")
    with pytest.raises(ValueError, match="either a group .* or a fate"):
        cf.tl.gene_trends(course, "driver", groupby="branch", group="upper", fate="upper")
    with pytest.raises(ValueError, match=r"several time points \[0.0, 1.0, 2.0\]; pass time="):
        cf.tl.gene_trends(course, "driver", groupby="branch", group="upper")
    with pytest.raises(ValueError, match="group='side' is not a label"):
        cf.tl.gene_trends(course, "driver", groupby="branch", group="side", time=0)
    with pytest.raises(ValueError, match=r"time=0.5 is not a measured time point"):
        cf.tl.gene_trends(course, "driver", groupby="branch", group="upper", time=0.5)
    with pytest.raises(KeyError, match="layer='counts' is not a layer"):
        cf.tl.gene_trends(course, "driver", fate="upper", layer="counts")
    with pytest.raises(ValueError, match="method='kendall' is unknown"):
        cf.tl.fate_drivers(course, "upper", method="kendall")
    del course.varm["PCs"]
    with pytest.raises(ValueError, match=r'expression="pca" needs .* varm has no PCs'):
        cf.tl.gene_trends(course, "driver", fate="upper", expression="pca")


# -- plot ------------------------------------------------------------------------------------
def test_plot_draws_mean_band_and_measured_points(course, tmp_path):
    trends = cf.tl.gene_trends(course, ["position", "driver"], fate="upper", n_points=11)
    ax = cf.pl.gene_trends(trends, show=False)
    lines = [line for line in ax.get_lines() if line.get_linestyle() != "None"]
    dots = [line for line in ax.get_lines() if line.get_marker() == "o"]
    assert [line.get_label() for line in lines] == ["position", "driver"]
    assert [len(d.get_xdata()) for d in dots] == [3, 3]  # the three measured time points
    assert len(ax.collections) == 2 and ax.get_title() == "fate upper"
    ax = cf.pl.gene_trends(trends, genes="driver", palette={"driver": "red"}, title="t",
                          save=str(tmp_path / "trends.png"), show=False)
    assert ax.get_title() == "t" and (tmp_path / "trends.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(KeyError, match=r"\['nope'\] are not in the trends table"):
        cf.pl.gene_trends(trends, genes=["nope"], show=False)
