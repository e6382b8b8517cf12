"""The internal clock, and velocity and growth at (and next to) every measured time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cellflow as cf
from cellflow.fields import Clock
from cellflow.model import TimeCourse
from cellflow.training import Batch

UNEVEN = [0.0, 1.0, 6.0, 24.0]


def test_clock_gives_every_interval_the_same_length():
    clock = Clock(UNEVEN)
    np.testing.assert_allclose(clock(UNEVEN), [0, 1 / 3, 2 / 3, 1], atol=1e-12)
    np.testing.assert_allclose(clock([0.5, 3.5, 15.0]), [1 / 6, 0.5, 5 / 6])
    # outside the measured range the clock runs on at the rate of the nearest interval
    np.testing.assert_allclose(clock([-1.0, 33.0]), [-1 / 3, 1 + 9 / 54])
    # without measured units, the unit is the clock's own rate 1 / (K h_k)
    np.testing.assert_allclose(clock.unit([0.5, 3.5, 15.0])[:, 0], [1 / 3, 1 / 15, 1 / 54])


def test_units_change_at_a_measured_time_only_with_the_targets():
    units = np.array([[1.0, 10.0], [3.0, 10.0], [3.0, 20.0]])
    clock = Clock(UNEVEN, units)
    np.testing.assert_allclose(clock.unit([0.5, 3.5, 15.0]), units)
    # exactly at an inner measured time: the mean of the two sides, or the side a path leaves into
    np.testing.assert_allclose(clock.unit([1.0, 6.0]), [[2.0, 10.0], [3.0, 15.0]])
    _, after = clock.evaluate(torch.tensor([1.0, 6.0], dtype=torch.float64), at_knots="after")
    _, before = clock.evaluate(torch.tensor([1.0, 6.0], dtype=torch.float64), at_knots="before")
    np.testing.assert_allclose(after.numpy(), units[1:])
    np.testing.assert_allclose(before.numpy(), units[:2])
    np.testing.assert_allclose(clock.unit([0.0, 24.0]), units[[0, 2]])  # the ends have one side
    with pytest.raises(ValueError, match="positive"):
        Clock(UNEVEN, -units)


def test_continuous_units_move_smoothly_between_interval_middles():
    units = np.array([[1.0], [3.0], [3.0]])
    clock = Clock(UNEVEN, units, continuous=True)
    np.testing.assert_allclose(clock.unit([0.0, 0.5, 3.5, 15.0, 24.0])[:, 0], [1, 1, 3, 3, 3])
    # at the measured time between two middles, the inverse is the mean of theirs
    np.testing.assert_allclose(1 / clock.unit([1.0])[0, 0], (1 + 1 / 3) / 2)
    dense = clock.unit(np.linspace(0.0, 6.0, 6001))[:, 0]
    assert np.abs(np.diff(dense)).max() < 0.01 and np.all(np.diff(dense) >= 0)


def test_units_are_the_typical_size_of_each_intervals_targets():
    class Drift:  # targets of a cloud drifting at 2 per unit time, as pairs of an objective
        def draw(self):
            t = torch.rand(500, dtype=torch.float64) * 24
            return Batch(x=torch.zeros(500, 2), t=t, u=torch.tensor([[1.2, -1.6]]).expand(500, 2),
                         g=torch.where(t < 1, 0.0, 0.5))
    torch.manual_seed(0)
    clock = Clock.from_targets(UNEVEN, Drift())
    np.testing.assert_allclose(clock.units[:, 0], 2.0)  # one size everywhere: no step at a measured time
    np.testing.assert_allclose(clock.units[:, 1], [0.5e-3, 0.5, 0.5])  # floored at 1/1000 of the largest

    class FewDying:  # one pair in ten dies in place (growth -20), the others keep their mass
        def draw(self):
            t = torch.rand(1000, dtype=torch.float64) * 24
            u = torch.randn(1000, 2, dtype=torch.float64) * torch.where(torch.rand(1000, 1) < 0.02, 100.0, 1.0)
            g = torch.where(torch.arange(1000) % 10 == 0, -20.0, 0.0).double()
            return Batch(x=torch.zeros(1000, 2), t=t, u=u, g=g)
    clock = Clock.from_targets(UNEVEN, FewDying())
    assert np.all(clock.units[:, 0] < 2)  # the median: a few huge velocity targets do not set the unit
    np.testing.assert_allclose(clock.units[:, 1], 2.0, rtol=0.15)  # the mean: not the zero of most pairs


def test_clock_on_tensors_matches_arrays():
    clock = Clock(UNEVEN)
    t = np.array([0.3, 1.0, 7.5, 24.0])
    tau, unit = clock.evaluate(torch.as_tensor(t, dtype=torch.float32))
    assert tau.dtype == torch.float32
    np.testing.assert_allclose(tau.numpy(), clock(t), rtol=1e-6)
    np.testing.assert_allclose(unit.numpy(), clock.unit(t), rtol=1e-6)


@pytest.fixture(scope="module")
def drift():
    """A cloud drifting at a constant (2, -1), measured at the very uneven times 0, 1 and 10."""
    rng = np.random.default_rng(0)
    speed = np.array([2.0, -1.0])
    times = np.array([0.0, 1.0, 10.0])
    base = rng.normal(size=(300, 2)) * 3  # one cloud, translated: the OT plan is the translation
    populations = [base + speed * t for t in times]
    course = TimeCourse(times=times, populations=populations, indices=[np.arange(300)] * 3)
    model = cf.CellFlow("otcfm", sigma=0.01, seed=0).fit(course, progress=False)  # default training length
    return model, populations, speed, times


@pytest.mark.parametrize("offset", [-0.01, 0.0, 0.01])
def test_velocity_is_right_at_and_next_to_every_measured_time(drift, offset):
    model, populations, speed, times = drift
    for cells, t in zip(populations, times):
        v = np.median(model.velocity(cells, t + offset), axis=0)
        assert np.linalg.norm(v - speed) < 0.05 * np.linalg.norm(speed), (t + offset, v)


def test_velocity_is_right_between_measured_times(drift):
    model, _, speed, _ = drift
    rng = np.random.default_rng(2)
    for t in (0.5, 4.0, 9.0):
        probe = rng.normal(size=(200, 2)) * 2 + speed * t
        assert np.linalg.norm(np.median(model.velocity(probe, t), axis=0) - speed) < 0.05 * np.linalg.norm(speed)


def test_push_across_the_uneven_interval_follows_the_drift(drift):
    model, populations, speed, _ = drift
    start = populations[0][:100]
    np.testing.assert_allclose(model.push(start, 0.0, 1.0), start + speed, atol=0.05 * np.linalg.norm(speed))
    np.testing.assert_allclose(model.push(start, 0.0, 10.0), start + 10 * speed, atol=0.05 * 10 * np.linalg.norm(speed))


def test_growth_has_no_jump_at_measured_times():
    """Cells that double every time unit in place, measured at 0, 1 and 4 (uneven intervals).

    The WFR geodesics' growth targets are not exponential, so the learned rate is checked for
    continuity across each measured time and for its size, not against log 2 exactly.
    """
    rng = np.random.default_rng(1)
    times = np.array([0.0, 1.0, 4.0])
    populations = [rng.normal(size=(int(40 * 2**t), 2)) for t in times]
    course = TimeCourse(times=times, populations=populations, indices=[np.arange(len(x)) for x in populations])
    model = cf.CellFlow("wfr", delta=2.0, n_steps=600, seed=0).fit(course, progress=False)
    probe = rng.normal(size=(200, 2)) * 0.5
    for t in times:
        before, at, after = (np.median(model.growth(probe, t + offset)) for offset in (-0.01, 0.0, 0.01))
        assert 0.5 * np.log(2) < at < 2 * np.log(2), (t, at)
        assert abs(before - at) < 0.05 * at and abs(after - at) < 0.05 * at, (t, before, at, after)
