"""The command line refuses bad arguments and paths before any work, in one line, and writes nothing."""

from __future__ import annotations

import anndata as ad
import pytest

import cellflow as cf
from cellflow import _distributed as distributed
from cellflow.cli import main


@pytest.fixture(scope="module")
def course_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("input") / "course.h5ad"
    cf.datasets.simulate(n_cells=100, times=(0.0, 1.0, 2.0), seed=0).write_h5ad(path)
    return str(path)


@pytest.fixture
def no_work(monkeypatch, tmp_path):
    """Work in an empty folder, and fail the test if any command starts its real work."""

    def started(*args, **kwargs):
        raise AssertionError("the command started working before refusing its arguments")

    for module, name in [(cf.tl, "fit"), (cf.tl, "interpolate"), (cf.tl, "leave_one_out"), (cf.datasets, "simulate")]:
        monkeypatch.setattr(module, name, started)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _one_line_error(capsys, command: str) -> str:
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and message.startswith(f"cellflow {command}: error: "), message
    return message


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["fit", "{input}", "--steps", "-3", "--out", "out.h5ad"], "argument --steps: --steps=-3 must be at least 1"),
        (["fit", "{input}", "--seed", "-1", "--out", "out.h5ad"], "--seed=-1 must be at least 0"),
        (["benchmark", "{input}", "--seeds", "0", "-2"], "--seeds=-2 must be at least 0"),
        (["interpolate", "{input}", "--from", "inf", "--to", "1", "--out", "out.h5ad"], "--from=inf must be a finite"),
        (["interpolate", "{input}", "--from", "0", "--to", "nan", "--out", "out.h5ad"], "--to=nan must be a finite"),
        (["demo", "--steps", "0", "--out", "demo"], "--steps=0 must be at least 1"),
    ],
)
def test_bad_numbers_are_usage_errors(argv, needle, course_file, no_work, capsys):
    with pytest.raises(SystemExit) as done:
        main([arg.format(input=course_file) for arg in argv])
    assert done.value.code == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.startswith(f"cellflow {argv[0]}: error: ") and needle in last_line
    assert list(no_work.iterdir()) == []


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["fit", "missing.h5ad", "--out", "out.h5ad"], "input 'missing.h5ad' is not an existing file"),
        (["fit", "{input}", "--out", "absent/out.h5ad"], "--out 'absent/out.h5ad': the folder 'absent' does not exist"),
        (["fit", "{input}", "--out", "."], "--out '.' is a folder"),
        (["interpolate", "{input}", "--from", "0", "--to", "1", "--out", "absent/pred.h5ad"], "folder 'absent'"),
        (["benchmark", "missing.h5ad"], "input 'missing.h5ad'"),
        (["benchmark", "{input}", "--out", "absent/runs.csv"], "folder 'absent' does not exist"),
    ],
)
def test_bad_paths_are_refused_before_any_work(argv, needle, course_file, no_work, capsys):
    assert main([arg.format(input=course_file) for arg in argv]) == 1
    assert needle in _one_line_error(capsys, argv[0])
    assert list(no_work.iterdir()) == []


def test_demo_refuses_an_out_folder_it_cannot_create(no_work, capsys):
    (no_work / "taken").write_text("a file, not a folder")
    assert main(["demo", "--out", "taken/demo"]) == 1
    assert "--out 'taken/demo': cannot create this folder" in _one_line_error(capsys, "demo")
    assert [path.name for path in no_work.iterdir()] == ["taken"]


def test_input_that_is_not_h5ad(no_work, capsys):
    (no_work / "notes.h5ad").write_text("not an AnnData file")
    assert main(["fit", "notes.h5ad", "--out", "out.h5ad"]) == 1
    assert "input 'notes.h5ad' cannot be read as .h5ad" in _one_line_error(capsys, "fit")
    assert not (no_work / "out.h5ad").exists()


def test_errors_while_running_are_one_line(course_file, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", course_file, "--use-rep", "X_umap", "--out", "out.h5ad"]) == 1
    assert "use_rep='X_umap'" in _one_line_error(capsys, "fit")

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory.\nTried to allocate 2.00 GiB")

    monkeypatch.setattr(cf.tl, "fit", out_of_memory)
    assert main(["fit", course_file, "--out", "out.h5ad"]) == 1
    assert _one_line_error(capsys, "fit").endswith("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert list(tmp_path.iterdir()) == []


def test_fit_and_interpolate_under_another_key(course_file, tmp_path):
    fitted, predicted = tmp_path / "fitted.h5ad", tmp_path / "pred.h5ad"
    assert main(["fit", course_file, "--steps", "20", "--key-added", "mine", "--out", str(fitted)]) == 0
    adata = ad.read_h5ad(fitted)
    assert "mine_velocity_pca" in adata.obsm and "mine" in adata.uns and "cellflow" not in adata.uns
    argv = ["interpolate", str(fitted), "--from", "1", "--to", "1.5", "--key", "mine", "--out", str(predicted)]
    assert main(argv) == 0
    pred = ad.read_h5ad(predicted)
    assert pred.n_obs == int((adata.obs["time"] == 1).sum()) and (pred.obs["time"] == 1.5).all()


def test_a_bad_device_is_refused_before_any_work(course_file, no_work, capsys):
    assert main(["fit", course_file, "--device", "tpu9", "--out", "out.h5ad"]) == 1
    assert "device='tpu9' is not a torch device" in _one_line_error(capsys, "fit")
    assert list(no_work.iterdir()) == []


def test_a_process_other_than_rank_zero_fits_but_prints_and_writes_nothing(course_file, tmp_path, monkeypatch, capsys):
    fitted = tmp_path / "fitted.h5ad"
    assert main(["fit", course_file, "--steps", "5", "--out", str(fitted)]) == 0
    assert "wrote" in capsys.readouterr().out
    fits, fit = [], cf.CellFlow.fit

    def recorded_fit(self, *args, **kwargs):
        fits.append(self)
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(cf.CellFlow, "fit", recorded_fit)
    monkeypatch.setattr(distributed, "is_main", lambda: False)
    assert main(["fit", course_file, "--steps", "5", "--out", str(tmp_path / "again.h5ad")]) == 0
    argv = ["interpolate", str(fitted), "--from", "0", "--to", "0.5", "--out", str(tmp_path / "pred.h5ad")]
    assert main(argv) == 0
    assert len(fits) == 1 and fits[0].net is not None
    assert capsys.readouterr() == ("", "")
    assert [path.name for path in tmp_path.iterdir()] == ["fitted.h5ad"]
