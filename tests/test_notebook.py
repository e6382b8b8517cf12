"""Working in a notebook: progress bars in a Jupyter kernel, scanpy's verbosity and ``copy=``,
the model's repr, and tab completion of ``cf.tl`` and ``cf.pp``."""

from __future__ import annotations

import importlib.util
import inspect
import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import cellflow as cf
from cellflow._utils import show_progress

ROOT = Path(__file__).resolve().parents[1]

# A Jupyter kernel as tqdm recognises one (ipykernel's shell module loaded), where ipywidgets is
# first missing, then importable (when it is installed); the bar chosen each time is printed.
_KERNEL_SCRIPT = """
import sys, types, warnings
try:
    import IPython
except ImportError:
    IPython = sys.modules["IPython"] = types.ModuleType("IPython")
IPython.get_ipython = lambda: types.SimpleNamespace()  # a running shell, not a Qt console
sys.modules["ipykernel.zmqshell"] = types.ModuleType("ipykernel.zmqshell")
sys.modules["ipywidgets"] = None  # import ipywidgets now raises ImportError
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import cellflow
    from cellflow._utils import progress_bar
    print("bar module at import:", any(m in sys.modules for m in ("tqdm.auto", "tqdm.autonotebook", "tqdm.notebook")))
    bar = progress_bar(3, "test", True)
    print("without ipywidgets:", type(bar).__module__)
    bar.close()
    del sys.modules["ipywidgets"]
    bar = progress_bar(3, "test", True)
    print("with ipywidgets:", type(bar).__module__)
    bar.close()
from tqdm.std import TqdmWarning
print("tqdm warnings:", [str(w.message) for w in caught if issubclass(w.category, TqdmWarning)])
"""


@pytest.fixture(scope="module")
def fitted(quick_fit, small_course) -> ad.AnnData:
    """The small course of the key tests, fitted once, with obs["side"] as groups."""
    adata = small_course()
    cf.tl.fit(adata, **quick_fit)
    return adata


def test_kernel_without_ipywidgets_gets_a_text_bar_and_no_warning():
    """tqdm.auto warned "IProgress not found" at ``import cellflow`` in such a kernel."""
    run = subprocess.run([sys.executable, "-c", _KERNEL_SCRIPT], capture_output=True, text=True, timeout=300,
                         cwd=ROOT, env={**_env(), "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stderr
    assert "tqdm warnings: []" in run.stdout and "IProgress" not in run.stderr
    assert "bar module at import: False" in run.stdout  # no bar chosen at import time
    assert "without ipywidgets: tqdm.std" in run.stdout
    if importlib.util.find_spec("ipywidgets") is not None:
        assert "with ipywidgets: tqdm.notebook" in run.stdout


def _env() -> dict:
    """This environment, less what makes tqdm treat a kernel as a Qt console or Spyder."""
    return {k: v for k, v in os.environ.items() if k != "QT_API" and not k.startswith("SPYDER")}


@pytest.fixture
def verbosity():
    """Set scanpy's verbosity for one test, and restore it after."""
    sc = pytest.importorskip("scanpy")
    before = sc.settings.verbosity

    def set_to(level: int) -> None:
        sc.settings.verbosity = level

    yield set_to
    sc.settings.verbosity = before


def test_progress_follows_scanpy_verbosity_unless_given(verbosity):
    verbosity(0)
    assert not show_progress(None)
    assert show_progress(True) and not show_progress(False)
    verbosity(1)
    assert show_progress(None)
    assert not show_progress(False)


def test_fit_at_verbosity_zero_draws_no_bar(verbosity, capsys, quick_fit, small_course):
    adata = small_course()
    settings = {k: v for k, v in quick_fit.items() if k != "progress"}
    verbosity(0)
    cf.tl.fit(adata, **settings)
    assert "training" not in capsys.readouterr().err
    cf.tl.fit(adata, progress=True, **settings)  # the argument wins over the verbosity
    assert "training" in capsys.readouterr().err
    verbosity(1)
    cf.tl.fit(adata, **settings)
    assert "training" in capsys.readouterr().err


def test_fit_with_copy_returns_the_written_copy(quick_fit, small_course):
    adata = small_course()
    keys_before = set(adata.obsm), set(adata.uns)
    out = cf.tl.fit(adata, copy=True, **quick_fit)
    assert isinstance(out, ad.AnnData) and out is not adata
    assert (set(adata.obsm), set(adata.uns)) == keys_before  # the input is untouched
    assert "cellflow_velocity_pca" in out.obsm
    model = cf.tl.load_model(out)
    np.testing.assert_allclose(model.velocity(out.obsm["X_pca"][:5], out.obs["time"].to_numpy()[:5]),
                               out.obsm["cellflow_velocity_pca"][:5], rtol=1e-4, atol=1e-5)
    assert isinstance(cf.tl.fit(adata, copy=False, **quick_fit), cf.CellFlow)


@pytest.mark.parametrize("tool, times, key", [(cf.tl.fate, (0, 1), "cellflow_fate"),
                                              (cf.tl.ancestors, (1, 0), "cellflow_ancestors")])
def test_analyses_with_copy(fitted, tool, times, key):
    adata = fitted.copy()
    out = tool(adata, *times, "side", copy=True, progress=False)
    assert isinstance(out, ad.AnnData) and key in out.obsm and key not in adata.obsm
    table = tool(adata, *times, "side", progress=False)
    assert isinstance(table, pd.DataFrame)
    pd.testing.assert_frame_equal(out.obsm[key], table)


def test_preprocessing_with_copy(small_course):
    adata = small_course()
    out = cf.pp.numeric_time(adata, "day", key_added="t", copy=True)
    assert "t" in out.obs and "t" not in adata.obs
    np.testing.assert_array_equal(out.obs["t"], adata.obs["time"])
    assert cf.pp.numeric_time(adata, "day", key_added="t") is None and "t" in adata.obs


def test_copy_needs_a_bool_and_an_anndata_in_memory(tmp_path, quick_fit, small_course):
    adata = small_course()
    with pytest.raises(ValueError, match=r"copy='yes' must be True"):
        cf.pp.numeric_time(adata, "day", key_added="t", copy="yes")
    path = tmp_path / "course.h5ad"
    adata.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    with pytest.raises(ValueError, match=r"copy=True needs an AnnData in memory.*to_memory"):
        cf.tl.fit(backed, copy=True, **quick_fit)
    backed.file.close()


@pytest.mark.parametrize("tool, args, key", [
    (cf.tl.push, (("side", "left"), 0, 1), "cellflow_push"),
    (cf.tl.pull, (("side", "left"), 1, 0), "cellflow_pull"),
    (cf.tl.transfer_labels, ("side", 1, 0), "side_transferred"),
])
def test_mapping_with_copy(fitted, tool, args, key):
    adata = fitted.copy()
    out = tool(adata, *args, copy=True, progress=False)
    assert isinstance(out, ad.AnnData) and key in out.obs and key not in adata.obs
    tool(adata, *args, progress=False)
    pd.testing.assert_series_equal(out.obs[key], adata.obs[key])


@pytest.mark.parametrize("tool", [cf.tl.fit, cf.tl.fate, cf.tl.ancestors, cf.tl.push, cf.tl.pull,
                                  cf.tl.transfer_labels, cf.pp.numeric_time, cf.pp.score_growth])
def test_writers_declare_copy(tool):
    parameter = inspect.signature(tool).parameters["copy"]
    assert parameter.default is False and parameter.kind is parameter.KEYWORD_ONLY
    assert "\n    copy\n" in tool.__doc__ or "``copy=True``" in tool.__doc__


def test_repr_tells_the_method_and_the_training(fitted, quick_fit):
    untrained = repr(cf.CellFlow("wfr", field="gradient", device="cpu"))
    assert untrained.startswith("CellFlow 'wfr' on cpu")
    assert "learns velocity (gradient of a potential), growth" in untrained
    assert "not trained" in untrained
    model = cf.tl.load_model(fitted, device="cpu")
    text = repr(model)
    assert "coupling 'exact', path 'linear', objective 'pairs'" in text
    assert f"trained on 3 time points (0, 1, 2) in 2 dimensions, {quick_fit['n_steps']} steps" in text
    assert "growth" not in text and "score" not in text
    assert "learns velocity, score" in repr(cf.CellFlow("sbcfm"))


def test_tab_completion_shows_the_public_names_only():
    for module in (cf.tl, cf.pp):
        names = dir(module)
        assert names == sorted(module.__all__)
        assert not {"np", "pd", "sp", "AnnData", "annotations"} & set(names)
        assert all(callable(getattr(module, name)) for name in names)
    assert {"fit", "fate", "interpolate"} <= set(dir(cf.tl))
    assert {"score_growth", "numeric_time"} <= set(dir(cf.pp))
