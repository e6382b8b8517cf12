"""Prior growth from gene signatures: cf.pp.score_growth and its bundled marker lists."""

from __future__ import annotations

import copy as copylib
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

import cellflow as cf


def _birth_by_hand(p: float) -> float:
    # Waddington-OT: from 0.3 to 1.7, centre 0.25, width 0.5, logistic steepness 4 / width.
    return 0.3 + (1.7 - 0.3) / (1.0 + math.exp(-(4.0 / 0.5) * (p - 0.25)))


def _death_by_hand(a: float) -> float:
    # Waddington-OT: from 0.3 to 1.7, centre 0.1, width 0.2, logistic steepness 4 / width.
    return 0.3 + (1.7 - 0.3) / (1.0 + math.exp(-(4.0 / 0.2) * (a - 0.1)))


def _synthetic(n_per_group: int = 60, n_filler: int = 400, seed: int = 0) -> AnnData:
    """Three groups of cells: proliferating, apoptotic, neither (log-normalised-like values)."""
    rng = np.random.default_rng(seed)
    markers = cf.pp.growth_markers("human")
    prolif, apo = markers["proliferation"], markers["apoptosis"]
    genes = list(dict.fromkeys(prolif + apo + [f"FILLER{i:04d}" for i in range(n_filler)]))
    n_cells = 3 * n_per_group
    means = rng.gamma(2.0, 1.0, size=len(genes))
    X = np.log1p(rng.poisson(means, size=(n_cells, len(genes)))).astype(np.float32)
    group = np.repeat(["proliferating", "apoptotic", "quiet"], n_per_group)
    is_prolif = np.isin(genes, prolif) & ~np.isin(genes, apo)
    is_apo = np.isin(genes, apo) & ~np.isin(genes, prolif)
    X[np.ix_(group == "proliferating", is_prolif)] += 2.0
    X[np.ix_(group == "apoptotic", is_apo)] += 2.0
    adata = AnnData(
        X=X,
        obs=pd.DataFrame({"group": pd.Categorical(group), "day": np.tile([0.0, 1.0], n_cells // 2)},
                         index=[f"cell{i}" for i in range(n_cells)]),
        var=pd.DataFrame({"highly_variable": rng.random(len(genes)) < 0.5}, index=genes),
    )
    adata.layers["counts"] = np.expm1(X)
    adata.obsm["X_pca"] = rng.normal(size=(n_cells, 5)).astype(np.float32)
    adata.varm["PCs"] = rng.normal(size=(len(genes), 5))
    adata.uns["note"] = {"a": 1, "b": np.arange(3)}
    adata.raw = adata.copy()
    adata.raw.X[:] = 0.0  # a raw that must not be what gets scored
    return adata


# ------------------------------------------------------------------ bundled marker lists


def test_bundled_markers_human():
    markers = cf.pp.growth_markers("human")
    assert len(markers["proliferation"]) >= 90
    assert len(markers["apoptosis"]) >= 100
    for gene in ("MKI67", "TOP2A", "PCNA", "MCM2"):
        assert gene in markers["proliferation"]
    for gene in ("CASP3", "BAX", "BCL2L11"):
        assert gene in markers["apoptosis"]
    for genes in markers.values():
        assert len(genes) == len(set(genes))
        assert all(g and not g.startswith("#") and g == g.strip() for g in genes)


def test_bundled_markers_mouse():
    human = cf.pp.growth_markers("human")
    mouse = cf.pp.growth_markers("mouse")
    assert len(mouse["proliferation"]) >= 90
    assert len(mouse["apoptosis"]) >= 100
    assert "Mki67" in mouse["proliferation"] and "Top2a" in mouse["proliferation"]
    assert "Casp3" in mouse["apoptosis"]
    # capitalisation of the human symbols, first letter kept upper case
    assert {g[0] + g[1:].lower() for g in human["proliferation"]} == set(mouse["proliferation"])
    assert all(g[0].isupper() or g[0].isdigit() for g in mouse["apoptosis"])


def test_unknown_organism():
    with pytest.raises(ValueError, match="human.*mouse"):
        cf.pp.growth_markers("zebrafish")
    with pytest.raises(ValueError, match="human.*mouse"):
        cf.pp.score_growth(_synthetic(n_per_group=4), "yeast")


# ------------------------------------------------------------------ the logistic functions


@pytest.mark.parametrize("score", [-1.0, 0.0, 0.1, 0.25, 0.4, 1.0, 3.0])
def test_birth_and_death_match_hand_values(score):
    assert cf.pp.birth_rate(score) == pytest.approx(_birth_by_hand(score), abs=1e-12)
    assert cf.pp.death_rate(score) == pytest.approx(_death_by_hand(score), abs=1e-12)


def test_logistic_landmarks():
    assert cf.pp.birth_rate(0.25) == pytest.approx(1.0)  # midpoint at the centre
    assert cf.pp.death_rate(0.1) == pytest.approx(1.0)
    assert cf.pp.birth_rate(100.0) == pytest.approx(1.7) and cf.pp.birth_rate(-100.0) == pytest.approx(0.3)
    assert cf.pp.death_rate(1e6) == pytest.approx(1.7) and cf.pp.death_rate(-1e6) == pytest.approx(0.3)
    # slope at the centre is (high - low) / width
    h = 1e-6
    birth_slope = (cf.pp.birth_rate(0.25 + h) - cf.pp.birth_rate(0.25 - h)) / (2 * h)
    death_slope = (cf.pp.death_rate(0.1 + h) - cf.pp.death_rate(0.1 - h)) / (2 * h)
    assert birth_slope == pytest.approx(1.4 / 0.5, rel=1e-6)
    assert death_slope == pytest.approx(1.4 / 0.2, rel=1e-6)


# ------------------------------------------------------------------ score_growth


def test_growth_prior_separates_groups():
    adata = _synthetic()
    cf.pp.score_growth(adata, "human")
    by_group = adata.obs.groupby("group", observed=True)
    prolif = by_group["cellflow_proliferation"].mean()
    apo = by_group["cellflow_apoptosis"].mean()
    rate = by_group["cellflow_growth_prior"].mean()
    assert prolif["proliferating"] > prolif["quiet"] + 1.0
    assert apo["apoptotic"] > apo["quiet"] + 1.0
    assert rate["proliferating"] > rate["quiet"] > rate["apoptotic"]
    assert rate["proliferating"] > 1.0 and rate["apoptotic"] < -1.0
    assert abs(rate["quiet"]) < 0.2  # neither dividing nor dying: no net growth (measured 0.00)
    # the scores are Waddington-OT's: each marker z-scored over the cells, truncated at 5, averaged
    markers = cf.pp.growth_markers("human")["proliferation"]
    values = adata[:, [g for g in adata.var_names if g in set(markers)]].X
    z = np.clip((values - values.mean(0)) / values.std(0), -5, 5)
    np.testing.assert_allclose(adata.obs["cellflow_proliferation"], z.mean(1), atol=1e-6)
    # the written rate is exactly beta(p) - delta(a), the log of WOT's factor exp(beta - delta)
    expected = [_birth_by_hand(p) - _death_by_hand(a)
                for p, a in zip(adata.obs["cellflow_proliferation"], adata.obs["cellflow_apoptosis"])]
    np.testing.assert_allclose(adata.obs["cellflow_growth_prior"], expected, atol=1e-12)
    assert np.all(np.abs(adata.obs["cellflow_growth_prior"]) <= 1.4 + 1e-12)


def test_only_three_obs_keys_change():
    adata = _synthetic()
    before = adata.copy()
    uns_before = copylib.deepcopy(dict(adata.uns))
    cf.pp.score_growth(adata, "human")
    assert list(adata.obs.columns) == list(before.obs.columns) + [
        "cellflow_proliferation", "cellflow_apoptosis", "cellflow_growth_prior"]
    pd.testing.assert_frame_equal(adata.obs[before.obs.columns], before.obs)
    np.testing.assert_array_equal(adata.X, before.X)
    assert set(adata.layers) == set(before.layers)
    for key in before.layers:
        np.testing.assert_array_equal(adata.layers[key], before.layers[key])
    assert set(adata.obsm) == set(before.obsm) and set(adata.varm) == set(before.varm)
    np.testing.assert_array_equal(adata.obsm["X_pca"], before.obsm["X_pca"])
    np.testing.assert_array_equal(adata.varm["PCs"], before.varm["PCs"])
    pd.testing.assert_frame_equal(adata.var, before.var)
    assert set(adata.uns) == set(uns_before) == {"note"}
    assert adata.uns["note"]["a"] == 1 and np.array_equal(adata.uns["note"]["b"], np.arange(3))
    assert adata.obsp.keys() == before.obsp.keys() and adata.varp.keys() == before.varp.keys()
    np.testing.assert_array_equal(adata.raw.X, before.raw.X)
    pd.testing.assert_frame_equal(adata.raw.var, before.raw.var)


def test_copy_and_rerun():
    adata = _synthetic(n_per_group=20)
    out = cf.pp.score_growth(adata, "human", key_added="prior", copy=True)
    assert isinstance(out, AnnData)
    assert "prior_growth_prior" in out.obs and "prior_growth_prior" not in adata.obs
    assert cf.pp.score_growth(adata, "human", key_added="prior") is None
    np.testing.assert_array_equal(adata.obs["prior_growth_prior"], out.obs["prior_growth_prior"])
    # fixed seed: a rerun gives the same numbers, and says it replaces the columns
    first = adata.obs["prior_growth_prior"].copy()
    with pytest.warns(UserWarning, match="replacing"):
        cf.pp.score_growth(adata, "human", key_added="prior")
    np.testing.assert_array_equal(adata.obs["prior_growth_prior"], first)


def test_layer_is_scored_instead_of_x():
    adata = _synthetic(n_per_group=20)
    reference = cf.pp.score_growth(adata, "human", copy=True)
    shuffled = adata.copy()
    shuffled.layers["lognorm"] = shuffled.X.copy()
    shuffled.X = np.random.default_rng(1).permutation(shuffled.X.ravel()).reshape(shuffled.shape)
    cf.pp.score_growth(shuffled, "human", layer="lognorm")
    np.testing.assert_allclose(shuffled.obs["cellflow_growth_prior"], reference.obs["cellflow_growth_prior"])
    with pytest.raises(ValueError, match="no 'missing'"):
        cf.pp.score_growth(shuffled, "human", layer="missing")


def test_user_lists_override_bundled():
    adata = _synthetic(n_per_group=20)
    genes = cf.pp.growth_markers("human")
    own = genes["proliferation"][:40]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # 40 genes: no warning of ours (libraries may warn of their own)
        cf.pp.score_growth(adata, "human", proliferation_genes=own, key_added="own")
    cf.pp.score_growth(adata, "human", key_added="bundled")
    assert not np.allclose(adata.obs["own_proliferation"], adata.obs["bundled_proliferation"])
    np.testing.assert_allclose(adata.obs["own_apoptosis"], adata.obs["bundled_apoptosis"])


def test_warns_when_few_markers_found():
    adata = _synthetic(n_per_group=20)
    few = cf.pp.growth_markers("human")["proliferation"][:3] + ["NOT_A_GENE"]
    with pytest.warns(UserWarning, match=r"only 3 of 4 given proliferation markers") as record:
        cf.pp.score_growth(adata, "human", proliferation_genes=few)
    assert not any("apoptosis" in str(w.message) for w in record)
    assert np.isfinite(adata.obs["cellflow_growth_prior"]).all()
    with pytest.warns(UserWarning) as record:
        cf.pp.score_growth(adata, "human", min_genes=1000, key_added="strict")
    messages = [str(w.message) for w in record]
    assert any("only 100 of 100 bundled human proliferation markers" in m for m in messages)
    assert any("only 164 of 164 bundled human apoptosis markers" in m for m in messages)


def test_error_when_no_markers_found():
    adata = _synthetic(n_per_group=4)
    with pytest.raises(ValueError, match=r"apoptosis.*apoptosis_genes="):
        cf.pp.score_growth(adata, "human", apoptosis_genes=["NOPE1", "NOPE2"])
    mouse_like = adata.copy()
    mouse_like.var_names = [g[0] + g[1:].lower() for g in mouse_like.var_names]
    with pytest.raises(ValueError, match="organism='mouse'"):
        cf.pp.score_growth(mouse_like, "human")
    # nothing was written by the failed calls
    assert "cellflow_growth_prior" not in adata.obs and "cellflow_growth_prior" not in mouse_like.obs


def test_moscot_temporal_mouse():
    adata = cf.datasets.moscot_temporal()
    before = adata.copy()
    # this small test file keeps 1479 genes; only a few proliferation markers are among them
    with pytest.warns(UserWarning, match="proliferation markers"):
        cf.pp.score_growth(adata, "mouse")
    for key in ("cellflow_proliferation", "cellflow_apoptosis", "cellflow_growth_prior"):
        assert np.isfinite(adata.obs[key].to_numpy()).all()
    assert np.all(np.abs(adata.obs["cellflow_growth_prior"]) <= 1.4 + 1e-12)
    # the prior is Waddington-OT's birth minus death rate of each cell's own scores, by hand
    by_hand = [_birth_by_hand(p) - _death_by_hand(a)
               for p, a in zip(adata.obs["cellflow_proliferation"], adata.obs["cellflow_apoptosis"])]
    np.testing.assert_allclose(adata.obs["cellflow_growth_prior"], by_hand, rtol=0, atol=1e-12)
    # Waddington-OT's mean z-scores: the typical cell neither grows nor dies (measured: median -0.05 per day,
    # day means -0.11, -0.43, -0.19), and the cells differ (5th and 95th percentiles -1.38 and 1.40)
    prior = adata.obs["cellflow_growth_prior"]
    assert abs(prior.median()) < 0.2 and prior.quantile(0.05) < -1.0 and prior.quantile(0.95) > 1.0
    assert prior.groupby(adata.obs["day"], observed=True).mean().between(-0.6, 0.1).all()
    # scanpy's score_genes (moscot's choice) puts the apoptosis markers above their controls in nearly every
    # cell of this file: a prior that says every cell dies (measured: median -1.39, day means -1.12 to -1.14)
    with pytest.warns(UserWarning, match="proliferation markers"):
        scanpy_scores = cf.pp.score_growth(adata, "mouse", score="score_genes", copy=True)
    assert scanpy_scores.obs["cellflow_growth_prior"].median() < -1.3
    assert set(adata.obs.columns) - set(before.obs.columns) == {
        "cellflow_proliferation", "cellflow_apoptosis", "cellflow_growth_prior"}
    assert set(adata.uns) == set(before.uns)
