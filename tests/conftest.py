"""Shared fixtures: the data folder, and one small trained model reused by several tests.

Real data. The published files come from ``CELLFLOW_DATA_DIR`` (by default ``../shared/data``
beside the checkout; the tests never download). At the start of the run every file of
:data:`cellflow.datasets.SHA256` is looked for there and checked. When some are missing or
damaged, the header of the run says so once, every test that loads one of them is skipped with
that one reason (its loader, ``cellflow.datasets._files._fetch``, skips instead of raising), and the
summary repeats it; with ``CELLFLOW_REQUIRE_DATA=1`` (as in CI) the run stops at once with that
message instead. With all files present nothing changes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
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
