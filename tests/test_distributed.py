"""Fitting on two processes under torchrun (gloo on CPU): one model on every rank, the accuracy of one
process at the same total batch, and a command line that writes its output once."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
import textwrap

import anndata as ad
import numpy as np
import pytest

import cellflow as cf

BATCH = 64  # pairs per interval and step on each of the two ranks; one process gets twice as many

WORKER = textwrap.dedent(
    '''
    """A leave-one-out fit on a small simulated course; under torchrun every rank saves what it ended with."""
    import sys

    import numpy as np
    import torch

    import cellflow as cf
    from cellflow import _distributed as distributed
    from cellflow.benchmark import score


    def loo_fit(batch_size, seed):
        """Fit on times 0 and 2, push the cells of time 0 to 1; the model, the course and the W1 to time 1."""
        adata = cf.datasets.simulate(n_cells=200, times=(0.0, 1.0, 2.0), growth_scale=0.0, seed=3)
        course = cf.read_time_course(adata, "time", "X_pca")
        model = cf.CellFlow("otcfm", n_steps=600, batch_size=batch_size, seed=seed, device="cpu")
        model.fit(course.without(1), progress=False)
        return model, course, score(model.push(course.populations[0], 0.0, 1.0), course.populations[1])["w1"]


    if __name__ == "__main__":
        torch.set_num_threads(1)
        model, course, w1 = loo_fit(int(sys.argv[2]), seed=0)
        rank, size = distributed.part()
        state = model.to_dict()
        np.savez(f"{sys.argv[1]}/weights{rank}.npz", **state["weights"])
        np.savez(f"{sys.argv[1]}/result{rank}.npz", size=size, w1=w1, loss=state["history"]["loss"],
                 clock_units=state["clock_units"], velocity=model.velocity(course.populations[0], 0.5))
    '''
)


def _torchrun(*args, cwd) -> subprocess.CompletedProcess:
    """Run ``python -m torch.distributed.run --nproc_per_node 2 --standalone ARGS`` and return it, checked."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", *args]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


# the fit of two ranks under torchrun, shared by the tests below: two processes, once per CI run (the slow step),
# all on one pytest-xdist worker (their group), so that the module fixture runs once
def slow_two_ranks(test):
    """Mark ``test`` slow and in the pytest-xdist group ``two_ranks``."""
    return pytest.mark.slow(pytest.mark.xdist_group("two_ranks")(test))


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """The worker script and the files each of the two ranks saved after one fit."""
    folder = tmp_path_factory.mktemp("ddp")
    script = folder / "worker.py"
    script.write_text(WORKER)
    _torchrun(str(script), str(folder), str(BATCH), cwd=folder)
    return script, [
        (dict(np.load(folder / f"weights{rank}.npz")), dict(np.load(folder / f"result{rank}.npz"))) for rank in (0, 1)
    ]


@slow_two_ranks
def test_both_ranks_end_with_identical_parameters(two_ranks):
    _, [(weights0, result0), (weights1, result1)] = two_ranks
    assert int(result0["size"]) == int(result1["size"]) == 2
    assert weights0.keys() == weights1.keys() and len(weights0) > 0
    for name in weights0:
        np.testing.assert_array_equal(weights0[name], weights1[name], err_msg=name)
    # each rank drew its own pairs: the losses of their batches differ
    assert result0["loss"].shape == (600,) and not np.array_equal(result0["loss"], result1["loss"])


@slow_two_ranks
def test_both_ranks_end_with_the_same_velocity(two_ranks):
    _, [(_, result0), (_, result1)] = two_ranks
    np.testing.assert_array_equal(result0["clock_units"], result1["clock_units"])
    np.testing.assert_array_equal(result0["velocity"], result1["velocity"])
    assert float(result0["w1"]) == float(result1["w1"])


@slow_two_ranks
def test_two_ranks_as_accurate_as_one_process_at_the_same_total_batch(two_ranks):
    script, [(_, result0), _] = two_ranks
    loo_fit = runpy.run_path(str(script))["loo_fit"]
    runs = [loo_fit(2 * BATCH, seed) for seed in (0, 1, 2)]
    single = np.array([w1 for _, _, w1 in runs])
    spread = single.max() - single.min()
    w1 = float(result0["w1"])  # rank 0's model: the one a distributed fit saves
    assert single.min() - spread <= w1 <= single.max() + spread, (w1, single)
    course = runs[0][1]
    standing_still = cf.benchmark.score(course.populations[0], course.populations[1])["w1"]
    assert w1 < 0.3 * standing_still  # the fit learned the flow


@pytest.mark.slow  # two processes of a torchrun launch: once per CI run, in the slow step
def test_command_line_under_torchrun_writes_once(tmp_path):
    adata = cf.datasets.simulate(n_cells=100, times=(0.0, 1.0, 2.0), seed=0)
    adata.write_h5ad(tmp_path / "in.h5ad")
    fit = _torchrun("-m", "cellflow", "fit", "in.h5ad", "--out", "out.h5ad", "--steps", "30", "--device", "cpu",
                    cwd=tmp_path)
    assert fit.stdout.count("fitting otcfm (30 steps)") == 1 and fit.stdout.count("wrote ") == 1, fit.stdout
    out = ad.read_h5ad(tmp_path / "out.h5ad")
    velocity = out.obsm["cellflow_velocity_pca"]
    assert velocity.shape == adata.obsm["X_pca"].shape and np.isfinite(velocity).all() and np.abs(velocity).max() > 0
    assert out.layers["cellflow_velocity"].shape == adata.shape
    assert len(out.uns["cellflow"]["history"]["loss"]) == 30

    interpolate = _torchrun("-m", "cellflow", "interpolate", "out.h5ad", "--from", "0", "--to", "0.5",
                            "--out", "pred.h5ad", cwd=tmp_path)
    assert interpolate.stdout.count("pushing the cells") == 1 and interpolate.stdout.count("wrote ") == 1
    pred = ad.read_h5ad(tmp_path / "pred.h5ad")
    assert pred.n_obs == int((adata.obs["time"] == 0).sum()) and (pred.obs["time"] == 0.5).all()


EVERY_NETWORK = textwrap.dedent(
    '''
    """A short fit with every network a model can hold: a gradient-field velocity and a score network."""
    import sys

    import numpy as np
    import torch

    import cellflow as cf
    from cellflow import _distributed as distributed

    torch.set_num_threads(1)
    adata = cf.datasets.simulate(n_cells=100, times=(0.0, 1.0, 2.0), growth_scale=0.0, seed=0)
    course = cf.read_time_course(adata, "time", "X_pca")
    model = cf.CellFlow("sbcfm", field="gradient", n_steps=40, batch_size=32, seed=0, device="cpu")
    model.fit(course, progress=False)
    np.savez(f"{sys.argv[1]}/weights{distributed.part()[0]}.npz", **model.to_dict()["weights"])
    '''
)


@pytest.mark.slow  # two processes of a torchrun launch: once per CI run, in the slow step
def test_gradient_field_and_score_network_train_under_ddp(tmp_path):
    # DistributedDataParallel needs a gradient for every weight: the potential has no output bias
    script = tmp_path / "worker.py"
    script.write_text(EVERY_NETWORK)
    _torchrun(str(script), str(tmp_path), cwd=tmp_path)
    weights0, weights1 = (dict(np.load(tmp_path / f"weights{rank}.npz")) for rank in (0, 1))
    assert any(name.startswith("score.") for name in weights0) and any("potential" in name for name in weights0)
    for name in weights0:
        np.testing.assert_array_equal(weights0[name], weights1[name], err_msg=name)
