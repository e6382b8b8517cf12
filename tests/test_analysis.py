"""Fates, ancestors, transitions and trajectories on the moscot time course (real genes, real cell types)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import ot
import pandas as pd
import pytest
import torch
from scipy import stats

import cellflow as cf

# small network, few steps: enough for the direction of cell-type transitions, quick on two busy cores
FIT = dict(n_steps=300, hidden=(64, 64), batch_size=128, seed=0, progress=False)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small networks train many times faster on one thread than on two contended ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def moscot(moscot_fit):
    return moscot_fit("otcfm")


def _at(adata, day):
    return (adata.obs["day"].astype(float) == day).to_numpy()


def _ot_group_table(adata, plan, t1, t2):
    """Row-normalised cell-type table of a cell-to-cell plan between two days."""
    src = adata.obs["cell_type"][_at(adata, t1)].astype(str).to_numpy()
    tgt = adata.obs["cell_type"][_at(adata, t2)].astype(str).to_numpy()
    table = pd.DataFrame(plan, index=src, columns=tgt).T.groupby(level=0).sum().T.groupby(level=0).sum()
    return table.div(table.sum(axis=1), axis=0)


def test_fate_probabilities_sum_to_one_and_are_written(moscot):
    adata, _ = moscot
    table = cf.tl.fate(adata, 10, 10.5, groupby="cell_type", progress=False)
    start = _at(adata, 10.0)
    assert list(table.index) == list(adata.obs_names)
    assert set(table.columns) == set(adata.obs["cell_type"][_at(adata, 10.5)].astype(str))
    np.testing.assert_allclose(table[start].sum(axis=1), 1.0, atol=1e-12)
    assert ((table[start] >= 0) & (table[start] <= 1)).all().all()
    assert table[~start].isna().all().all()  # cells not at from_time have no fate
    assert adata.obsm["cellflow_fate"].equals(table)
    assert "obsm/cellflow_fate" in list(adata.uns["cellflow"]["written_keys"])


def test_fate_table_survives_h5ad(moscot, tmp_path):
    adata, _ = moscot
    table = cf.tl.fate(adata, 10, 11, progress=False, key_added="fate_10_11")
    adata.write_h5ad(tmp_path / "fate.h5ad")
    back = ad.read_h5ad(tmp_path / "fate.h5ad")
    pd.testing.assert_frame_equal(back.obsm["fate_10_11"], table)


def test_transition_tables_are_normalised_and_match_fates(moscot):
    adata, _ = moscot
    result = cf.tl.transitions(adata, 10, 10.5, groupby="cell_type", progress=False)
    n1, n2 = _at(adata, 10.0).sum(), _at(adata, 10.5).sum()
    np.testing.assert_allclose(result.row_normalized.sum(axis=1), 1.0)
    np.testing.assert_allclose(result.column_normalized.sum(axis=0), 1.0)
    assert result.counts.to_numpy().sum() == pytest.approx(n1)  # balanced: one unit of mass per cell
    coupling = result.coupling
    assert coupling.shape == (n1, n2)
    assert list(coupling.obs_names) == list(adata.obs_names[_at(adata, 10.0)])
    assert list(coupling.var_names) == list(adata.obs_names[_at(adata, 10.5)])
    np.testing.assert_allclose(np.asarray(coupling.X.sum(axis=1)).ravel(), 1.0)
    assert coupling.X.nnz <= n1 * 15
    # the group table is the fates summed by source group
    fates = cf.tl.fate(adata, 10, 10.5, progress=False)
    by_group = fates[_at(adata, 10.0)].groupby(adata.obs["cell_type"][_at(adata, 10.0)].astype(str)).sum()
    by_group = by_group.loc[result.counts.index, result.counts.columns]
    np.testing.assert_allclose(by_group.to_numpy(), result.counts.to_numpy(), atol=1e-9)
    assert "Transitions(10 -> 10.5" in repr(result)


def test_transitions_agree_with_ot_couplings_in_direction(moscot):
    adata, _ = moscot
    ours = cf.tl.transitions(adata, 10, 10.5, progress=False).row_normalized
    # exact OT between the two days in the same PCA space
    x, y = adata.obsm["X_pca"][_at(adata, 10.0)], adata.obsm["X_pca"][_at(adata, 10.5)]
    exact = ot.emd(np.full(len(x), 1 / len(x)), np.full(len(y), 1 / len(y)), ot.dist(x, y))
    exact = _ot_group_table(adata, exact, 10.0, 10.5).loc[ours.index, ours.columns]
    # moscot's reference map (85 x 81, rows and columns in the AnnData's order)
    moscot_map = _ot_group_table(adata, adata.uns["tmap_10_105"], 10.0, 10.5).loc[ours.index, ours.columns]
    share = adata.obs["cell_type"][_at(adata, 10.5)].astype(str).value_counts(normalize=True)[ours.columns]
    major = ["Epithelial", "unknown"]  # the day-10 groups with at least 10 cells
    assert (ours.loc[major].idxmax(axis=1) == exact.loc[major].idxmax(axis=1)).all()
    assert np.corrcoef(ours.to_numpy().ravel(), exact.to_numpy().ravel())[0, 1] > 0.9
    # moscot's map is entropic and unbalanced (flatter rows): compare enrichment over the day-10.5 shares
    enrichment = np.corrcoef((ours - share).to_numpy().ravel(), (moscot_map - share).to_numpy().ravel())[0, 1]
    assert enrichment > 0.8
    for group in ("Epithelial", "Stromal"):  # both say these groups mostly stay what they are
        assert ours.loc[group, group] > share[group] and moscot_map.loc[group, group] > share[group]


def test_ancestors_pull_back(moscot):
    adata, _ = moscot
    table = cf.tl.ancestors(adata, 10.5, 10, groupby="cell_type", progress=False)
    end = _at(adata, 10.5)
    np.testing.assert_allclose(table[end].sum(axis=1), 1.0, atol=1e-12)
    assert table[~end].isna().all().all()
    assert set(table.columns) == set(adata.obs["cell_type"][_at(adata, 10.0)].astype(str))
    assert "cellflow_ancestors" in adata.obsm
    # where each day-10.5 group comes from, by backward push, agrees with the forward coupling
    backward = table[end].groupby(adata.obs["cell_type"][end].astype(str)).mean().T
    forward = cf.tl.transitions(adata, 10, 10.5, progress=False).column_normalized
    backward = backward.loc[forward.index, forward.columns]
    assert np.corrcoef(backward.to_numpy().ravel(), forward.to_numpy().ravel())[0, 1] > 0.8
    assert backward["Epithelial"].idxmax() == "Epithelial"


def test_trajectories_start_at_each_cells_own_time(moscot):
    adata, model = moscot
    cells = [adata.obs_names[0], adata.obs_names[120], adata.obs_names[-1]]
    grid = [10.0, 10.25, 10.5, 11.0]
    paths = cf.tl.trajectories(adata, cells, grid)
    assert paths.positions.shape == (4, 3, 10) and paths.masses.shape == (4, 3)
    days = adata.obs["day"].astype(float).to_numpy()
    rows = adata.obs_names.get_indexer(cells)
    np.testing.assert_array_equal(paths.start_times, days[rows])
    for j, row in enumerate(rows):
        own = grid.index(days[row])
        np.testing.assert_allclose(paths.positions[own, j], adata.obsm["X_pca"][row], rtol=1e-6)
    pushed = model.push(adata.obsm["X_pca"][rows[:1]], 10.0, 10.5)[0]
    np.testing.assert_allclose(paths.positions[2, 0], pushed, rtol=1e-5)
    assert (paths.masses == 1.0).all()  # OT-CFM: no growth
    frame = paths.to_frame()
    assert len(frame) == 12 and {"cell", "start_time", "time", "mass", "pca1", "pca10"} <= set(frame.columns)
    by_position = cf.tl.trajectories(adata, list(rows), grid)
    np.testing.assert_array_equal(by_position.positions, paths.positions)
    with pytest.raises(KeyError, match="no_such_cell"):
        cf.tl.trajectories(adata, ["no_such_cell"], grid)


def test_growth_model_carries_mass():
    # The simulated course has a closed-form growth: z2 follows dz2/dt = 1.2 tanh(2 z2), so
    # sinh(2 z2(t)) = sinh(2 z2(0)) e^(2.4 t), and a cell's mass d log m/dt = growth_scale tanh(2 z2) is
    # m(t) = exp(growth_scale / 1.2 (z2(t) - z2(0))): the upper branch divides, the lower one dies.
    adata = cf.datasets.simulate(n_cells=150, times=(0.0, 1.0, 2.0), growth_scale=1.0, seed=3)
    adata.obs["cell_type"] = np.where(adata.obsm["X_pca"][:, 1] > 0, "upper", "lower")
    # delta given (about what the cross-validation chooses, 2.4) to skip its fits
    model = cf.tl.fit(adata, "time", "X_pca", "wfr", delta=2.5, n_steps=200, hidden=(32, 32), seed=0, progress=False)
    start = (adata.obs["time"] == 0.0).to_numpy()
    z = adata.obsm["X_pca"][start].astype(float)
    s, a = np.sinh(2 * z[:, 1]), 2.4 * 1.0
    z2 = np.sign(s) * (a + np.log(np.abs(s) + np.hypot(s, np.exp(-a)))) / 2
    true_mass = np.exp((z2 - z[:, 1]) / 1.2)
    _, mass = model.push(z, 0.0, 1.0, return_mass=True)
    result = cf.tl.transitions(adata, 0, 1, progress=False)
    assert result.counts.to_numpy().sum() == pytest.approx(mass.sum(), rel=1e-6)
    np.testing.assert_allclose(np.asarray(result.coupling.X.sum(axis=1)).ravel(), mass, rtol=1e-6)
    # the population grows as the truth does: measured 1.255 per starting cell, truth 1.254, and 1.28 times
    # as many cells measured at time 1 (no growth would carry 1.0)
    assert mass.mean() == pytest.approx(true_mass.mean(), rel=0.1)
    assert mass.sum() / start.sum() == pytest.approx((adata.obs["time"] == 1.0).sum() / start.sum(), rel=0.1)
    # and where it does: the cells that gain most are those that truly do (Spearman measured 0.95), the
    # dividing branch above the dying one (measured 1.30 against 1.21; the truth's contrast is far larger,
    # about 2.4 against 0.4: at this delta WFR spreads the growth over both branches)
    assert stats.spearmanr(mass, true_mass).statistic > 0.7
    assert mass[z[:, 1] > 0.2].mean() > 1.03 * mass[z[:, 1] < -0.2].mean()
    # the carried mass is what the transitions count per group
    rows = result.counts.sum(axis=1)
    assert rows["upper"] == pytest.approx(mass[z[:, 1] > 0].sum(), rel=1e-6)
    fates = cf.tl.fate(adata, 0, 1, progress=False)
    np.testing.assert_allclose(fates[start].sum(axis=1), 1.0, atol=1e-12)
    paths = cf.tl.trajectories(adata, adata.obs_names[start], [0.0, 0.5, 1.0])
    np.testing.assert_allclose(paths.masses[0], 1.0)
    np.testing.assert_allclose(paths.masses[-1], mass, rtol=1e-3)


def test_clear_errors(moscot_fit):
    adata, _ = moscot_fit()
    with pytest.raises(ValueError, match="earlier.*ancestors"):
        cf.tl.fate(adata, 10.5, 10, progress=False)
    with pytest.raises(ValueError, match="10.2 is not a measured time point"):
        cf.tl.fate(adata, 10.2, 11, progress=False)
    with pytest.raises(KeyError, match="groupby='celltype'"):
        cf.tl.fate(adata, 10, 11, groupby="celltype", progress=False)
    with pytest.raises(KeyError, match="uns\\['flow'\\].*tl.fit"):
        cf.tl.transitions(adata, 10, 11, key="flow", progress=False)
    adata.obsm["cellflow_fate"] = np.zeros((adata.n_obs, 2))  # another tool's key of that name
    with pytest.raises(ValueError, match="cellflow_fate.*not written by cellflow"):
        cf.tl.fate(adata, 10, 11, progress=False)
    cf.tl.fate(adata, 10, 11, progress=False, overwrite=True)
    cf.tl.fate(adata, 10, 11, progress=False)  # now ours: replacing it is fine
