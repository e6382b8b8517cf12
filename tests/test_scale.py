"""Rules that make fits fast and lean: training length, network size, threads, blocks, sparse plans."""

import numpy as np
import pytest
import torch

import cellflow as cf
from cellflow import _utils
from cellflow.fields import Clock, TimeMLP
from cellflow.io import read_time_course
from cellflow.model import default_hidden
from cellflow.model._model import MAX_AUTO_STEPS
from cellflow.training import Batch, EarlyStopping, train
from cellflow.transport import EntropicOTCoupling, ExactOTCoupling, WFRCoupling, blocks
from cellflow.transport._couplings import _support


class _Still:
    """Targets of cells that do not move."""

    def draw(self):
        return Batch(x=torch.randn(64, 2), t=torch.rand(64), u=torch.zeros(64, 2))


def test_training_stops_when_checks_close_less_than_one_percent_of_the_scale():
    scores = iter([10.0, 5.0, 4.0, 3.99, 3.97, 3.95, 3.92, 0.0])  # after 4.0 no check is 0.1 (1% of 10) lower
    stopping = EarlyStopping(lambda net: next(scores), scale=10.0, check_every=10, patience=4)
    torch.manual_seed(0)
    _, log = train(TimeMLP(2, (8,)), _Still(), Clock([0.0, 1.0], [[1.0]]), n_steps=1000, stopping=stopping,
                   progress=False)
    assert len(log["loss"]) == 70  # the 3rd check set the reference; checks 4 to 7 gained too little
    np.testing.assert_array_equal(log["stopping_step"], [10, 20, 30, 40, 50, 60, 70])


def test_training_returns_the_network_of_the_best_check():
    marks = []

    def score(net):  # the best check is the second; later ones are worse
        marks.append(net.net[0].bias.detach().clone())
        return [3.0, 1.0, 2.0, 2.0, 2.0, 2.0][len(marks) - 1]

    torch.manual_seed(0)
    net, log = train(TimeMLP(2, (8,)), _Still(), Clock([0.0, 1.0], [[1.0]]), n_steps=1000, ema_decay=None,
                     stopping=EarlyStopping(score, scale=1.0, check_every=5, patience=4), progress=False)
    assert len(log["loss"]) == 30
    torch.testing.assert_close(net.net[0].bias, marks[1])


def test_auto_steps_stop_before_the_limit_and_recover_the_velocity():
    adata = cf.datasets.simulate(n_cells=300, growth_scale=0.0, seed=3)
    course = read_time_course(adata, "time", "X_pca")
    model = cf.CellFlow("otcfm", seed=0).fit(course, progress=False)
    steps = len(model.history["loss"])
    assert steps < MAX_AUTO_STEPS and steps % 100 == 0
    truth = adata.obsm["velocity_true_pca"]
    predicted = model.velocity(adata.obsm["X_pca"], adata.obs["time"].to_numpy())
    error = np.linalg.norm(predicted - truth, axis=1).mean() / np.linalg.norm(truth, axis=1).mean()
    assert error < 0.2


def test_network_width_grows_with_the_dimension():
    assert default_hidden(2) == [64] * 3
    assert default_hidden(5) == [128] * 3
    assert default_hidden(10) == [256] * 3 and default_hidden(50) == [256] * 3
    with pytest.raises(ValueError, match="n_steps"):
        cf.CellFlow(n_steps="many")


@pytest.mark.parametrize("busy, expected", [(0.0, 2), (1.0, 1), (5.0, 1)])
def test_threads_leave_the_cores_other_processes_use(monkeypatch, busy, expected):
    monkeypatch.setattr(_utils.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(_utils, "_runnable_elsewhere", lambda: busy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert _utils.cpu_threads() == expected
        with _utils.compute_threads(torch.device("cpu")):
            assert torch.get_num_threads() == expected
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("order", ["random", "projection"])
def test_blocks_partition_both_populations(order):
    rng = np.random.default_rng(0)
    x0, x1 = rng.normal(size=(1000, 3)), rng.normal(size=(700, 3))
    parts = blocks(x0, x1, 256, rng, order)
    assert len(parts) == 4 and all(len(i0) <= 256 and len(i1) <= 256 for i0, i1 in parts)
    np.testing.assert_array_equal(np.sort(np.concatenate([p[0] for p in parts])), np.arange(1000))
    np.testing.assert_array_equal(np.sort(np.concatenate([p[1] for p in parts])), np.arange(700))
    if order == "projection":  # consecutive slabs along one axis: block k lies before block k + 1
        axis = np.linalg.svd(np.concatenate([x0, x1]) - np.concatenate([x0, x1]).mean(0), full_matrices=False)[2][0]
        edges = [(x0[i0] @ axis).max() for i0, _ in parts[:-1]]
        starts = [(x0[i0] @ axis).min() for i0, _ in parts[1:]]
        assert all(e <= s for e, s in zip(edges, starts)) or all(e >= s for e, s in zip(
            [(x0[i0] @ axis).min() for i0, _ in parts[:-1]], [(x0[i0] @ axis).max() for i0, _ in parts[1:]]))


def test_each_process_solves_its_share_of_the_blocks():
    rng = np.random.default_rng(1)
    x0, x1 = rng.normal(size=(600, 2)), rng.normal(size=(600, 2))
    coupling = ExactOTCoupling(block_size=100)
    whole = coupling.plan(x0, x1, rng=np.random.default_rng(0))
    shares = [coupling.plan(x0, x1, rng=np.random.default_rng(0), part=(r, 2)) for r in range(2)]
    assert abs(shares[0].sum() - 0.5) < 1e-9 and (shares[0] + shares[1] != whole).nnz == 0
    assert shares[0].multiply(shares[1]).nnz == 0  # no block solved twice


def test_stored_plans_are_sparse_and_keep_almost_all_mass():
    rng = np.random.default_rng(2)
    x0, x1 = rng.normal(size=(400, 5)) / 2, rng.normal(size=(400, 5)) / 2 + 0.2
    for coupling in (EntropicOTCoupling(reg=0.05), WFRCoupling(delta=0.5)):
        plan = coupling.plan(x0, x1)
        assert plan.nnz < 60 * 400  # tens of partners per cell, not all 400
    dense = np.abs(rng.normal(size=(50, 80))) ** 6
    kept = _support(dense)
    np.testing.assert_array_less(1 - 1e-4 - 1e-12, (dense * kept).sum(1) / dense.sum(1))
    assert kept.sum() < dense.size
    exact = ExactOTCoupling().solve_block(np.full(50, 0.02), np.full(80, 1 / 80), rng.random((50, 80)))
    kept = _support(exact)
    assert kept.sum() <= 50 + 80 and ((exact * kept).sum(1) >= (1 - 1e-4) * 0.02).all()  # a vertex stays one


def test_pairs_are_drawn_where_the_cells_are():
    sampler = ExactOTCoupling().sampler(np.zeros((5, 2)), np.ones((6, 2)), device="cpu")
    pairs = sampler.sample(10)
    assert pairs.i.device.type == "cpu" and pairs.i.dtype == torch.long and len(pairs.j) == 10


def test_an_early_stop_completes_the_progress_bar_with_its_reason(capsys):
    scores = iter([10.0] * 20)  # never improves: stops after the first check and `patience` more
    stopping = EarlyStopping(lambda net: next(scores), scale=10.0, check_every=2, patience=4)
    torch.manual_seed(0)
    _, log = train(TimeMLP(2, (8,)), _Still(), Clock([0.0, 1.0], [[1.0]]), n_steps=1000, stopping=stopping,
                   progress=True, description="training")
    assert len(log["loss"]) == 10
    final = capsys.readouterr().err.split("\r")[-1]  # the bar's last state, left on screen
    assert "10/10" in final and "100%" in final, final
    assert "stopped early: no 1% gain in 4 checks" in final, final
    assert str(log["stopping_reason"]) == "stopped early: no 1% gain in 4 checks (at step 10 of 1000)"


def test_a_run_to_the_step_limit_says_so():
    stopping = EarlyStopping(lambda net: 0.0, scale=1.0, check_every=100, patience=4)
    _, log = train(TimeMLP(2, (8,)), _Still(), Clock([0.0, 1.0], [[1.0]]), n_steps=20, stopping=stopping,
                   progress=False)
    assert str(log["stopping_reason"]) == "ran all 20 steps: the stopping rule did not end training"
