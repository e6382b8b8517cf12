"""Model files (no code runs on load) and every command of the CLI, each in its own process."""

from __future__ import annotations

import os
import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import cellflow as cf
from cellflow.cli import main


@pytest.mark.parametrize("method", ["otcfm", "wfr"])
def test_model_file_round_trip(method, tmp_path, moscot_fit):
    adata, model = moscot_fit(method)
    path = cf.io.save_model(model, tmp_path / "model")
    assert path == tmp_path / "model.npz" and path.is_file()
    back = cf.io.load_model(path)
    x = adata.obsm["X_pca"]
    np.testing.assert_array_equal(back.velocity(x, 10.3), model.velocity(x, 10.3))
    np.testing.assert_array_equal(back.growth(x, 10.3), model.growth(x, 10.3))
    assert back.params == model.params and back.has_growth == model.has_growth
    np.testing.assert_array_equal(back.history["loss"], model.history["loss"])
    a, b = model.push(x[:20], 10.0, 11.0, return_mass=True), back.push(x[:20], 10.0, 11.0, return_mass=True)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_model_file_holds_plain_arrays_only(tmp_path, moscot_fit):
    _, model = moscot_fit()
    path = cf.io.save_model(model, tmp_path / "model.npz")
    with np.load(path, allow_pickle=False) as archive:
        assert all(archive[name].dtype != object for name in archive.files)
        assert str(archive["params/method"]) == "otcfm"


def test_model_file_refuses_other_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        cf.io.load_model(tmp_path / "missing.npz")
    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(ValueError, match="not a .npz archive"):
        cf.io.load_model(tmp_path / "text.npz")
    np.savez(tmp_path / "other.npz", a=np.arange(3))
    with pytest.raises(ValueError, match="not a cellflow model file"):
        cf.io.load_model(tmp_path / "other.npz")
    np.savez(tmp_path / "pickled.npz", __format__=np.array("cellflow-model"), obj=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="Python objects"):
        cf.io.load_model(tmp_path / "pickled.npz")


@pytest.mark.parametrize("command", ["fit", "interpolate", "benchmark", "demo"])
def test_cli_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: cellflow {command}")
    if command in ("fit", "benchmark", "demo"):
        assert "wfr" in out  # the methods are listed


# -- the commands through subprocesses, started together: each pays the import of cellflow ----------
# once per CI run (the slow step; the 3.13 lane's smoke check runs the installed command too), all on one
# pytest-xdist worker (their group), so that the module fixture runs once
def slow_cli_runs(test):
    """Mark ``test`` slow and in the pytest-xdist group ``cli_runs``."""
    return pytest.mark.slow(pytest.mark.xdist_group("cli_runs")(test))


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory, moscot_fit):
    folder = tmp_path_factory.mktemp("cli")
    fitted, _ = moscot_fit()
    fitted.write_h5ad(folder / "fitted.h5ad")
    raw = cf.datasets.moscot_temporal(n_pcs=10)
    raw.write_h5ad(folder / "in.h5ad")
    commands = {
        "fit": ["fit", "in.h5ad", "--time-key", "day", "--use-rep", "X_pca", "--method", "wfr", "--steps", "20",
                "--out", "out.h5ad"],
        "interpolate": ["interpolate", "fitted.h5ad", "--from", "10", "--to", "10.25", "--out", "pred.h5ad"],
        "benchmark": ["benchmark", "in.h5ad", "--time-key", "day", "--steps", "20", "--seeds", "0",
                      "--out", "runs.csv"],
        "bad_time_key": ["fit", "in.h5ad", "--time-key", "timepoint", "--out", "bad.h5ad"],
        "bad_from_time": ["interpolate", "fitted.h5ad", "--from", "10.2", "--to", "11", "--out", "bad.h5ad"],
        "missing_input": ["interpolate", "nope.h5ad", "--from", "0", "--to", "1", "--out", "bad.h5ad"],
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    running = {
        name: subprocess.Popen([sys.executable, "-m", "cellflow.cli", *args], cwd=folder, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for name, args in commands.items()
    }
    results = {}
    for name, process in running.items():
        out, err = process.communicate(timeout=300)
        results[name] = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    return folder, results


@slow_cli_runs
def test_cli_fit_wfr(cli_runs):
    folder, runs = cli_runs
    done = runs["fit"]
    assert done.returncode == 0, done.stderr
    assert "fitting wfr" in done.stdout and "wrote" in done.stdout
    out = ad.read_h5ad(folder / "out.h5ad")
    assert "cellflow_velocity_pca" in out.obsm and "cellflow_growth_rate" in out.obs
    assert str(out.uns["cellflow"]["params"]["method"]) == "wfr"


@slow_cli_runs
def test_cli_interpolate(cli_runs):
    folder, runs = cli_runs
    done = runs["interpolate"]
    assert done.returncode == 0, done.stderr
    pred = ad.read_h5ad(folder / "pred.h5ad")
    assert pred.n_obs == 85 and (pred.obs["time"] == 10.25).all() and pred.obsm["X_pca"].shape == (85, 10)


@slow_cli_runs
def test_cli_benchmark(cli_runs):
    folder, runs = cli_runs
    done = runs["benchmark"]
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(folder / "runs.csv")
    assert set(table["method"]) == {"otcfm", "ot_map", "ot_draw", "ot_interpolation"} and (table["held_out_time"] == 10.5).all()
    assert "w1" in done.stdout


def test_cli_demo(tmp_path, monkeypatch, capsys):
    # in this process: tests/test_flow.py already runs the demo through a subprocess
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--out", "demo", "--steps", "20"]) == 0
    assert (tmp_path / "demo" / "cellflow_demo.h5ad").is_file()
    assert (tmp_path / "demo" / "cellflow_demo_velocity.png").stat().st_size > 10_000
    assert "velocity plot" in capsys.readouterr().out


@slow_cli_runs
@pytest.mark.parametrize("name, needle", [("bad_time_key", "timepoint"), ("bad_from_time", "10.2 is not a measured"),
                                          ("missing_input", "nope.h5ad")])
def test_cli_bad_input_exits_1_with_one_line(cli_runs, name, needle):
    _, runs = cli_runs
    done = runs[name]
    assert done.returncode == 1
    message = done.stderr.strip()
    assert "\n" not in message and message.startswith("cellflow ") and needle in message


def test_model_object_save_and_load(tmp_path):
    import cellflow as cf

    adata = cf.datasets.simulate(n_cells=60, times=(0, 1, 2), seed=0)
    model = cf.tl.fit(adata, method="wfr", n_steps=10, progress=False)
    model.save(tmp_path / "model.npz")
    restored = cf.CellFlow.load(tmp_path / "model.npz")
    x = adata.obsm["X_pca"][:10]
    np.testing.assert_array_equal(restored.velocity(x, 0.5), model.velocity(x, 0.5))
    np.testing.assert_array_equal(restored.growth(x, 0.5), model.growth(x, 0.5))
