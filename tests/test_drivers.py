"""Fate drivers that are not identity markers: ``restrict_to`` and ``regress_out`` on a course with a known
driver and a known marker."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy import stats

import cellflow as cf

N_PROGENITOR, N_COMMITTED, N_LATER, N_NOISE = 300, 300, 100, 8


def _course() -> ad.AnnData:
    """Cells of time 0 in two groups, with the fate table ``cf.tl.fate`` writes (``obsm["cellflow_fate"]``, one
    column per fate of the later time point, NaN for the cells of other times).

    - ``progenitor`` cells are undecided: each chooses fate ``A`` or ``B`` (``choice``), and its probability of
      ``A`` is ``0.2 + 0.5 choice`` + noise. ``driver`` = ``choice`` + noise here and only here.
    - ``committed`` cells already are fate ``A`` (probability about 0.95); ``driver`` is noise around the
      progenitors' mean, so it carries nothing about the fate in them.
    - ``marker`` marks the committed group (2 + noise there, noise elsewhere): over all cells it correlates with
      the fate because the committed group is that fate, but it never differs between fates within a group.
    """
    rng = np.random.default_rng(0)
    choice = rng.integers(0, 2, N_PROGENITOR)
    p_progenitor = np.clip(0.2 + 0.5 * choice + rng.normal(0, 0.1, N_PROGENITOR), 0, 1)
    p_committed = np.clip(0.95 + rng.normal(0, 0.02, N_COMMITTED), 0, 1)
    n_start = N_PROGENITOR + N_COMMITTED
    n = n_start + N_LATER
    committed = np.r_[np.zeros(N_PROGENITOR), np.ones(N_COMMITTED)]
    driver = np.r_[choice, np.full(N_COMMITTED, 0.5)] + rng.normal(0, 0.5, n_start)
    marker = 2 * committed + rng.normal(0, 0.5, n_start)
    start = np.column_stack([driver + 3, marker + 3, rng.poisson(0.5, size=(n_start, N_NOISE))])  # 3: positive
    genes = np.vstack([start, rng.poisson(1.0, size=(N_LATER, start.shape[1]))])
    labels = ["progenitor"] * N_PROGENITOR + ["committed"] * N_COMMITTED + list(rng.choice(["A", "B"], N_LATER))
    obs = pd.DataFrame(
        {"time": np.r_[np.zeros(n_start), np.ones(N_LATER)], "cell_type": pd.Categorical(labels)},
        index=[f"cell_{i}" for i in range(n)],
    )
    adata = ad.AnnData(
        sp.csr_matrix(genes.astype(np.float32)),
        obs=obs,
        var=pd.DataFrame(index=["driver", "marker"] + [f"noise_{i}" for i in range(N_NOISE)]),
    )
    p_a = np.r_[p_progenitor, p_committed, np.full(N_LATER, np.nan)]
    adata.obsm["cellflow_fate"] = pd.DataFrame({"A": p_a, "B": 1 - p_a}, index=adata.obs_names)
    return adata


@pytest.fixture
def course():
    return _course()


def test_identity_confounds_drivers_over_all_cells(course):
    """Without restriction the marker of the committed group outranks the driver of the choice."""
    table = cf.tl.fate_drivers(course, "A")
    assert table.index[0] == "marker"
    assert table.loc["marker", "correlation"] > table.loc["driver", "correlation"] + 0.2
    assert table.attrs == {"n_cells": N_PROGENITOR + N_COMMITTED, "degrees_of_freedom": N_PROGENITOR + N_COMMITTED - 2}


@pytest.mark.parametrize(
    "options",
    [
        dict(restrict_to="progenitor"),
        dict(restrict_to=["progenitor"]),
        dict(regress_out=True),
        dict(restrict_to=["progenitor", "committed"], regress_out=True),
    ],
)
def test_restriction_or_regression_finds_the_driver(course, options):
    table = cf.tl.fate_drivers(course, "A", groupby="cell_type", **options)
    assert table.index[0] == "driver"
    assert table.loc["driver", "correlation"] > 0.3 and table.loc["driver", "qvalue"] < 1e-10
    assert table.index.get_loc("marker") > 0
    assert abs(table.loc["marker", "correlation"]) < 0.1 and table.loc["marker", "qvalue"] > 0.05
    # the other fate: the driver ranks last, with the opposite sign
    other = cf.tl.fate_drivers(course, "B", groupby="cell_type", **options)
    assert other.index[-1] == "driver"
    assert other.loc["driver", "correlation"] == pytest.approx(-table.loc["driver", "correlation"])


def test_restrict_to_is_the_analysis_of_the_subset(course):
    progenitors = course[(course.obs["cell_type"] == "progenitor").to_numpy()].copy()
    for method in ("pearson", "spearman"):
        restricted = cf.tl.fate_drivers(course, "A", groupby="cell_type", restrict_to="progenitor", method=method)
        pd.testing.assert_frame_equal(restricted, cf.tl.fate_drivers(progenitors, "A", method=method))
    spearman = cf.tl.fate_drivers(course, "A", groupby="cell_type", restrict_to="progenitor", method="spearman")
    expression = progenitors.X.toarray()
    probability = progenitors.obsm["cellflow_fate"]["A"].to_numpy()
    for j, gene in enumerate(progenitors.var_names):
        rho = stats.spearmanr(expression[:, j], probability)
        assert spearman.loc[gene, "correlation"] == pytest.approx(rho.statistic, abs=1e-10)
        assert spearman.loc[gene, "pvalue"] == pytest.approx(rho.pvalue, rel=1e-6)
    assert spearman.attrs == {"n_cells": N_PROGENITOR, "degrees_of_freedom": N_PROGENITOR - 2}


def test_regress_out_is_the_partial_correlation_given_the_groups(course):
    """The within-group correlation, its t test against ordinary least squares of the fate on the gene and one
    indicator per group (``n - g - 1`` degrees of freedom), and its interval (standard error
    ``1 / sqrt(n - g - 2)``)."""
    confidence = 0.9
    table = cf.tl.fate_drivers(course, "A", groupby="cell_type", regress_out=True, confidence=confidence)
    rows = np.flatnonzero(course.obs["time"].to_numpy() == 0)
    groups = course.obs["cell_type"].to_numpy()[rows]
    dummies = (groups[:, None] == np.unique(groups)[None, :]).astype(float)
    probability = course.obsm["cellflow_fate"]["A"].to_numpy()[rows]
    expression = course.X[rows].toarray().astype(float)
    n, g = len(rows), dummies.shape[1]
    assert table.attrs == {"n_cells": n, "degrees_of_freedom": n - g - 1}
    for j, gene in enumerate(course.var_names):
        design = np.column_stack([expression[:, j], dummies])
        beta, rss, *_ = np.linalg.lstsq(design, probability, rcond=None)
        se = np.sqrt(rss[0] / (n - g - 1) * np.linalg.inv(design.T @ design)[0, 0])
        pvalue = 2 * stats.t.sf(abs(beta[0] / se), n - g - 1)
        assert table.loc[gene, "pvalue"] == pytest.approx(pvalue, rel=1e-6)
        # the partial correlation: of the residuals of both on the groups
        fitted = dummies @ np.linalg.lstsq(dummies, np.column_stack([expression[:, j], probability]), rcond=None)[0]
        r = stats.pearsonr(*(np.column_stack([expression[:, j], probability]) - fitted).T).statistic
        assert table.loc[gene, "correlation"] == pytest.approx(r, abs=1e-10)
        half = stats.norm.ppf(0.5 + confidence / 2) / np.sqrt(n - g - 2)
        expected = np.tanh(np.arctanh(r) + np.array([-half, half]))
        assert (table.loc[gene, "ci_low"], table.loc[gene, "ci_high"]) == pytest.approx(tuple(expected))


def test_a_gene_constant_within_each_group_has_no_partial_correlation(course):
    course.X = course.X.toarray()
    course.X[:, 2] = np.where(course.obs["cell_type"] == "committed", 5.0, 1.0)  # a pure marker: no spread inside
    table = cf.tl.fate_drivers(course, "A", groupby="cell_type", regress_out=True)
    assert np.isnan(table.loc["noise_0", "correlation"]) and table.index[-1] == "noise_0"
    assert cf.tl.fate_drivers(course, "A").loc["noise_0", "correlation"] > 0.5  # over all cells it looks the best


def test_bad_grouping_names_the_problem(course):
    with pytest.raises(KeyError, match=r"groupby='stage' is not a column of adata.obs"):
        cf.tl.fate_drivers(course, "A", groupby="stage", restrict_to="progenitor")
    with pytest.raises(ValueError, match=r"restrict_to: \['stem'\] is not a label of obs\['cell_type'\].*progenitor"):
        cf.tl.fate_drivers(course, "A", groupby="cell_type", restrict_to=["progenitor", "stem"])
    with pytest.raises(ValueError, match="restrict_to is empty"):
        cf.tl.fate_drivers(course, "A", groupby="cell_type", restrict_to=[])
    with pytest.raises(ValueError, match="need groupby="):
        cf.tl.fate_drivers(course, "A", restrict_to="progenitor")
    with pytest.raises(ValueError, match="need groupby="):
        cf.tl.fate_drivers(course, "A", regress_out=True)
    with pytest.raises(ValueError, match="groupby='cell_type' is used only with restrict_to="):
        cf.tl.fate_drivers(course, "A", groupby="cell_type")
    # a group of the later time point has no cell with a probability; too few cells are left
    with pytest.raises(ValueError, match=r"0 cell\(s\) in restrict_to='A' .* at least 4 are needed"):
        cf.tl.fate_drivers(course, "A", groupby="cell_type", restrict_to="A")
    labels = course.obs["cell_type"].astype(str).to_numpy()
    labels[:N_PROGENITOR + N_COMMITTED] = [f"clone_{i}" for i in range(N_PROGENITOR + N_COMMITTED)]
    course.obs["clone"] = labels
    with pytest.raises(ValueError, match=r"600 cell\(s\) .*in 600 group\(s\)\) .* at least 603 are needed"):
        cf.tl.fate_drivers(course, "A", groupby="clone", regress_out=True)
    course.obs["clone"] = pd.Series(np.nan, index=course.obs_names, dtype=object)
    with pytest.raises(ValueError, match=r"0 cell\(s\) .* at least 4 are needed"):
        cf.tl.fate_drivers(course, "A", groupby="clone", regress_out=True)
    committed = (course.obs["cell_type"] == "committed").to_numpy()
    course.obsm["cellflow_fate"].loc[committed, "A"] = 0.9
    with pytest.raises(ValueError, match="same probability of fate='A': nothing"):
        cf.tl.fate_drivers(course, "A", groupby="cell_type", restrict_to="committed")
    course.obsm["cellflow_fate"].loc[~committed & (course.obs["time"] == 0).to_numpy(), "A"] = 0.1
    with pytest.raises(ValueError, match=r"same probability of fate='A' within each group of obs\['cell_type'\]"):
        cf.tl.fate_drivers(course, "A", groupby="cell_type", regress_out=True)
