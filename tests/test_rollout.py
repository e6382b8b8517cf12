"""Rollout fitting: the loss against analytic cases, and pushes across five intervals that stay on the truth."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cellflow as cf
from cellflow.io import read_time_course
from cellflow.model import CellFlow
from cellflow.training import RolloutLoss


def _translation(shift: torch.Tensor, growth: float | None = None):
    """A field ``(z, t, net) -> (v, g)`` of constant velocity ``shift`` and constant growth rate."""
    def field(z, t, net):
        v = shift.expand(len(z), -1)
        return v, None if growth is None else torch.full((len(z), 1), growth)
    return field


def test_rollout_discrepancy_vanishes_when_the_flow_carries_each_population_onto_the_next():
    rng = np.random.default_rng(0)
    cloud = torch.as_tensor(rng.normal(size=(64, 3)), dtype=torch.float32)
    shift = torch.tensor([1.0, -0.5, 0.25])
    times = [0.0, 1.0, 3.0, 4.0]  # uneven intervals: the velocity is per unit of real time
    populations = [cloud + shift * t for t in times]
    term = RolloutLoss(_translation(shift), populations, None, times, growth=False, rng=rng)
    divergences, sizes = term.terms(None, torch.stack(populations))
    assert sizes is None and divergences.shape == (3, 2)
    assert float(divergences.abs().max()) == pytest.approx(0.0, abs=1e-4)
    # a field that moves too slowly leaves every rollout short of the next population
    slow = RolloutLoss(_translation(0.5 * shift), populations, None, times, growth=False, rng=rng)
    assert float(slow.terms(None, torch.stack(populations))[0].min()) > 0.05


def test_rollout_size_term_measures_the_log_of_the_relative_population_size():
    rng = np.random.default_rng(1)
    cloud = torch.as_tensor(rng.normal(size=(32, 2)), dtype=torch.float32)
    times = [0.0, 1.0, 2.0]
    populations = [cloud] * 3
    doubling = [np.ones(32) * 2.0**k for k in range(3)]  # the population doubles each interval
    exact = RolloutLoss(_translation(torch.zeros(2), np.log(2.0)), populations, doubling, times, True, rng)
    divergences, sizes = exact.terms(None, torch.stack(populations))
    assert float(divergences.abs().max()) == pytest.approx(0.0, abs=1e-4)
    assert float(sizes.abs().max()) == pytest.approx(0.0, abs=1e-8)
    # no growth: the global rollout misses log 2, then 2 log 2; each one-interval rollout misses log 2
    still = RolloutLoss(_translation(torch.zeros(2), 0.0), populations, doubling, times, True, rng)
    expected = np.log(2.0) ** 2 * np.array([[1.0, 1.0], [4.0, 1.0]])
    np.testing.assert_allclose(still.terms(None, torch.stack(populations))[1].numpy(), expected, rtol=1e-5)


def test_rollout_must_be_true_or_false():
    with pytest.raises(ValueError, match="rollout='yes' must be True or False"):
        CellFlow("otcfm", rollout="yes")


@pytest.mark.slow  # two full fits, with and without rollout fitting, on five intervals
def test_rollout_fitting_brings_a_five_interval_push_closer_to_the_truth_than_flow_matching_alone():
    adata = cf.datasets.simulate(n_cells=120, times=(0, 1, 2, 3, 4, 5), growth_scale=0.0, n_genes=5, seed=0)
    course = read_time_course(adata, time_key="time", use_rep="X_pca")
    start = course.populations[0]
    # the truth at t = 5: a large independent sample of the simulated course (the 120 measured cells
    # are a noisy sample of it, which in-sample fitting could chase)
    truth = read_time_course(cf.datasets.simulate(n_cells=1000, times=(0, 5), growth_scale=0.0, n_genes=5, seed=1),
                             time_key="time", use_rep="X_pca").populations[-1]
    settings = dict(n_steps=2000, hidden=(64, 64, 64), seed=0)
    alone = CellFlow("otcfm", rollout=False, **settings).fit(course, progress=False)
    rolled = CellFlow("otcfm", rollout=True, **settings).fit(course, progress=False)
    errors = [cf.metrics.w1(m.push(start, 0.0, 5.0), truth) for m in (alone, rolled)]
    assert errors[1] < 0.8 * errors[0]  # measured 2.03 against 3.02
    # the one-interval pushes keep their accuracy (within 15% on average)
    one_interval = [[cf.metrics.w1(m.push(x, t0, t1), y) for x, y, t0, t1 in
                     zip(course.populations[:-1], course.populations[1:], course.times[:-1], course.times[1:])]
                    for m in (alone, rolled)]
    assert np.mean(one_interval[1]) < 1.15 * np.mean(one_interval[0])
    history = rolled.history
    assert bool(history["rollout_kept"]) and history["rollout_score"].min() < history["rollout_initial_score"]
    assert history["rollout_loss"].size <= 2000 // (2 * 5 * 4)  # no more network passes than flow matching's
    assert history["horizon_w1_first"][-1] < alone.history["horizon_w1_first"][-1]


def test_rollout_fitting_runs_on_two_time_points_with_growth():
    adata = cf.datasets.simulate(n_cells=60, times=(0, 1), growth_scale=0.5, n_genes=5, seed=0)
    model = CellFlow("wfr", rollout=True, n_steps=100, hidden=(16,)).fit(
        read_time_course(adata, time_key="time", use_rep="X_pca"), progress=False)
    assert model.history["rollout_loss"].size >= 10 and np.isfinite(model.history["rollout_discrepancy"]).all()


def test_rollout_auto_runs_only_across_several_intervals_and_when_flow_matching_paid_for_it():
    simulated = cf.datasets.simulate(n_cells=60, times=(0, 1, 2), n_genes=5, seed=0)
    course = read_time_course(simulated, "time", "X_pca")
    short = CellFlow("otcfm", n_steps=100, hidden=(16,)).fit(course, progress=False)  # 100 // 16 passes < 10 steps
    assert short.params["rollout"] == "auto" and "rollout_loss" not in short.history
    longer = CellFlow("otcfm", n_steps=320, hidden=(16,)).fit(course, progress=False)  # 320 // 16 = 20 steps at most
    assert 10 <= longer.history["rollout_loss"].size <= 20
    assert CellFlow.from_dict(longer.to_dict()).params["rollout"] == "auto"
    one_interval = read_time_course(simulated[simulated.obs["time"] < 2], "time", "X_pca")
    assert "rollout_loss" not in CellFlow("otcfm", n_steps=320, hidden=(16,)).fit(one_interval, progress=False).history
