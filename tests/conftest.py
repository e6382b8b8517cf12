"""Shared fixtures: the data folder, one small trained model reused by several tests, and the helpers
that several test modules use (as fixtures: no test module imports another).

Real data. The published files come from ``CELLFLOW_DATA_DIR`` (by default ``../shared/data``
beside the checkout; the tests never download). At the start of the run every file of
:data:`cellflow.datasets.SHA256` is looked for there and checked. When some are missing or
damaged, the header of the run says so once, every test that loads one of them is skipped with
that one reason (its loader, ``cellflow.datasets._files._fetch``, skips instead of raising), and the
summary repeats it; with ``CELLFLOW_REQUIRE_DATA=1`` (as in CI) the run stops at once with that
message instead. With all files present nothing changes.
"""

from __future__ import annotations

import copy
import functools
import os
import types
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import cellflow as cf
from cellflow import datasets
from cellflow.datasets import _files

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"
os.environ.setdefault(datasets.DATA_DIR_ENV, str(DATA_DIR))
torch.set_num_threads(1)  # small networks: one thread is as fast, and robust on a busy machine

REQUIRE_DATA_ENV = "CELLFLOW_REQUIRE_DATA"


def _unusable_data_files(root: str) -> list[str]:
    """The registry's files that are missing from ``root`` or are not the upstream files."""
    if not root:  # no folder: the loaders download, which this check cannot know about in advance
        return []
    folder = Path(root).expanduser()
    return [name for name, digest in datasets.SHA256.items()
            if not (folder / name).is_file() or _files._sha256(folder / name) != digest]


DATA_ROOT = os.environ[datasets.DATA_DIR_ENV]
UNUSABLE_DATA = _unusable_data_files(DATA_ROOT)
DATA_MESSAGE = (
    f"real data: {len(UNUSABLE_DATA)} of {len(datasets.SHA256)} files missing or damaged in "
    f"{datasets.DATA_DIR_ENV}={DATA_ROOT!r} ({', '.join(UNUSABLE_DATA)}), so the tests that load them are "
    f"skipped; set {datasets.DATA_DIR_ENV} to a folder holding the upstream files (cellflow.datasets.URLS)"
    if UNUSABLE_DATA else f"real data: all {len(datasets.SHA256)} files in {datasets.DATA_DIR_ENV}={DATA_ROOT!r}"
)
SKIP_REASON = f"real data missing from {datasets.DATA_DIR_ENV}={DATA_ROOT!r} (the first line of the run says which)"


def pytest_configure(config):
    if UNUSABLE_DATA and os.environ.get(REQUIRE_DATA_ENV, "") not in ("", "0"):
        raise pytest.UsageError(f"{DATA_MESSAGE.split(', so the tests')[0]}; {REQUIRE_DATA_ENV} is set, so "
                                f"the run stops here. Set {datasets.DATA_DIR_ENV} to a folder holding the "
                                "upstream files (cellflow.datasets.URLS)")


def pytest_report_header(config):
    return None if UNUSABLE_DATA else DATA_MESSAGE


def pytest_sessionstart(session):
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if UNUSABLE_DATA and reporter is not None:  # also under -q, which hides the header
        reporter.write_line(DATA_MESSAGE, yellow=True)


def pytest_terminal_summary(terminalreporter):
    if UNUSABLE_DATA:
        terminalreporter.write_line(DATA_MESSAGE, yellow=True)


@pytest.fixture(scope="session", autouse=True)
def _skip_tests_without_their_data():
    """Make the loaders skip the test, with the one reason of the header, for a file found unusable."""
    if not UNUSABLE_DATA:
        yield
        return
    fetch = _files._fetch

    def fetch_or_skip(name: str) -> Path:
        if name in UNUSABLE_DATA and os.environ.get(datasets.DATA_DIR_ENV) == DATA_ROOT:
            pytest.skip(SKIP_REASON)
        return fetch(name)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_files, "_fetch", fetch_or_skip)
        yield


@pytest.fixture(scope="session")
def simulated():
    """A growth-free simulated course (known velocity) with an OT-CFM model fitted on it."""
    adata = cf.datasets.simulate(n_cells=400, times=(0.0, 1.0, 2.0, 3.0), growth_scale=0.0, seed=1)
    model = cf.tl.fit(adata, "time", "X_pca", "otcfm", n_steps=1500, seed=0, progress=False)
    return adata, model


# -- helpers shared by several test modules ------------------------------------------------------
# They live here, and reach the tests as fixtures, so that no test module imports another.


def _gaussian_pair(n, seed=0):
    """``n`` cells of each of two 2-D Gaussians, and their parameters ``(m0, m1, s0, s1)``."""
    rng = np.random.default_rng(seed)
    m0, m1 = np.array([0.0, 0.0]), np.array([3.0, 1.0])
    s0 = np.array([[1.0, 0.3], [0.3, 0.5]])
    s1 = np.array([[0.6, -0.2], [-0.2, 1.2]])
    return rng.multivariate_normal(m0, s0, n), rng.multivariate_normal(m1, s1, n), (m0, m1, s0, s1)


def _monge_map(x, m0, m1, s0, s1):
    """Closed-form OT map between Gaussians: m1 + A (x - m0)."""
    from scipy.linalg import sqrtm

    root = np.real(sqrtm(s0))
    inv = np.linalg.inv(root)
    a = inv @ np.real(sqrtm(root @ s1 @ root)) @ inv
    return m1 + (x - m0) @ a.T


@pytest.fixture(scope="session")
def gaussian_pair():
    """``gaussian_pair(n, seed=0)``: two samples of 2-D Gaussians with a known Monge map, and its parameters."""
    return _gaussian_pair


@pytest.fixture(scope="session")
def monge_map():
    """``monge_map(x, m0, m1, s0, s1)``: the closed-form OT map between the Gaussians of ``gaussian_pair``."""
    return _monge_map


QUICK_FIT = dict(n_steps=30, hidden=(32, 32), batch_size=64, seed=0, progress=False)


@pytest.fixture(scope="session")
def quick_fit() -> Mapping:
    """Training settings for tests about keys and inputs, not about what is learned (read-only)."""
    return types.MappingProxyType(QUICK_FIT)


def _small_course() -> ad.AnnData:
    """A small simulated course (2 PCs, 50 genes) with an obs column of groups."""
    adata = cf.datasets.simulate(n_cells=40, times=(0.0, 1.0, 2.0), seed=0)
    adata.obs["side"] = np.where(adata.obsm["X_pca"][:, 0] > 0, "left", "right")
    return adata


@pytest.fixture(scope="session")
def small_course():
    """``small_course()``: a fresh small simulated course with groups in ``obs["side"]``."""
    return _small_course


def _snapshot(adata: ad.AnnData) -> dict:
    return copy.deepcopy(
        {"obs": adata.obs, "obsm": dict(adata.obsm), "layers": dict(adata.layers), "uns": dict(adata.uns)}
    )


def _assert_same(before, after, where: str) -> None:
    if isinstance(before, pd.DataFrame):
        pd.testing.assert_frame_equal(after, before, obj=where)
    elif isinstance(before, Mapping):
        assert isinstance(after, Mapping) and list(after) == list(before), f"{where}: keys changed"
        for name in before:
            _assert_same(before[name], after[name], f"{where}[{name!r}]")
    elif sp.issparse(before):
        assert sp.issparse(after) and after.shape == before.shape and (after != before).nnz == 0, where
    elif isinstance(before, np.ndarray):
        np.testing.assert_array_equal(after, before, err_msg=where)
    else:
        assert type(after) is type(before) and after == before, where


@contextmanager
def _unchanged(adata: ad.AnnData):
    """Assert that the block leaves obs, obsm, layers and uns of ``adata`` as they were."""
    before = _snapshot(adata)
    yield
    _assert_same(before, _snapshot(adata), "adata")


@pytest.fixture(scope="session")
def unchanged():
    """``with unchanged(adata):`` asserts that the block leaves obs, obsm, layers and uns as they were."""
    return _unchanged


# small network, few steps: enough for the direction of cell-type transitions, quick on two busy cores
MOSCOT_FIT = dict(n_steps=300, hidden=(64, 64), batch_size=128, seed=0, progress=False)


@functools.cache
def _moscot_fits() -> dict:
    """The moscot course with 10 PCs, fitted once per test run by OT-CFM and by WFR (shared by the test modules)."""
    import scanpy as sc

    adata = cf.datasets.moscot_temporal()
    sc.pp.pca(adata, n_comps=10)
    fits = {}
    for method in ("otcfm", "wfr"):
        fitted = adata.copy()
        settings = MOSCOT_FIT if method == "otcfm" else {**MOSCOT_FIT, "n_steps": 150}
        model = cf.tl.fit(fitted, "day", "X_pca", method, **settings)
        fits[method] = (fitted, model)
    return fits


def _moscot_fit(method: str = "otcfm"):
    """A fresh copy of the fitted AnnData (tests may write into it) and its model."""
    adata, model = _moscot_fits()[method]
    return adata.copy(), model


@pytest.fixture(scope="session")
def moscot_fit():
    """``moscot_fit(method="otcfm")``: a fresh copy of the moscot course fitted by ``method`` (otcfm or wfr),
    and its model; each method is fitted once per run."""
    return _moscot_fit
