"""Shared fixtures: the data folder, and one small trained model reused by several tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import cellflow as cf

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"
os.environ.setdefault("CELLFLOW_DATA_DIR", str(DATA_DIR))
torch.set_num_threads(1)  # small networks: one thread is as fast, and robust on a busy machine


@pytest.fixture(scope="session")
def simulated():
    """A growth-free simulated course (known velocity) with an OT-CFM model fitted on it."""
    adata = cf.datasets.simulate(n_cells=400, times=(0.0, 1.0, 2.0, 3.0), growth_scale=0.0, seed=1)
    model = cf.tl.fit(adata, "time", "X_pca", "otcfm", n_steps=1500, seed=0, progress=False)
    return adata, model
