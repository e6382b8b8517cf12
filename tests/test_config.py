"""The user's settings apart from what a fit resolves: refitting never reuses another course's choices."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import cellflow as cf
from cellflow.model import Config, TimeCourse
from cellflow.paths import default_entropy_rate


def _course(n_dims: int, times: tuple[float, ...], n_cells: int, seed: int, spread: float) -> TimeCourse:
    rng = np.random.default_rng(seed)
    populations = [(rng.normal(size=(n_cells, n_dims)) * spread + t).astype(np.float32) for t in times]
    indices = list(np.split(np.arange(n_cells * len(times)), len(times)))
    return TimeCourse(times=np.asarray(times, dtype=float), populations=populations, indices=indices)


FIRST = _course(2, (0.0, 1.0, 2.0), 60, seed=0, spread=0.5)  # 2 dimensions, 60 cells, intervals of 1
SECOND = _course(8, (0.0, 3.0, 9.0), 100, seed=1, spread=3.0)  # 8 dimensions, 100 cells, intervals of 3 and 6
SETTINGS = dict(n_steps=30, rollout=False, seed=3, device="cpu")


@pytest.mark.parametrize("method", ["wfr", "ecfm"])
def test_refitting_on_another_course_gives_the_model_a_fresh_one_would(method):
    refitted = cf.CellFlow(method, **SETTINGS).fit(FIRST, progress=False)
    first = refitted.params
    refitted.fit(SECOND, progress=False)
    fresh = cf.CellFlow(method, **SETTINGS).fit(SECOND, progress=False)

    # the first fit chose from its own course, and the second chose again
    assert first["hidden"] == [64] * 3 and refitted.params["hidden"] == [256] * 3
    assert first["batch_size"] == 64 and refitted.params["batch_size"] == 100
    chosen = "delta" if method == "wfr" else "entropy_rate"
    assert first[chosen] != pytest.approx(refitted.params[chosen], rel=0.05)
    assert refitted.params == fresh.params
    assert refitted.config == fresh.config == Config.create(method, **{k: v for k, v in SETTINGS.items()
                                                                       if k != "device"})
    np.testing.assert_array_equal(refitted.center, fresh.center)
    np.testing.assert_array_equal(refitted.clock.units, fresh.clock.units)
    cells = SECOND.populations[1][:50]
    np.testing.assert_allclose(refitted.velocity(cells, 4.0), fresh.velocity(cells, 4.0), rtol=1e-5, atol=1e-6)


def test_a_loaded_model_refits_from_the_users_settings(tmp_path):
    model = cf.CellFlow("wfr", **SETTINGS).fit(FIRST, progress=False)
    loaded = cf.CellFlow.load(model.save(tmp_path / "model"))
    assert loaded.config == model.config and loaded.config.delta is None  # chosen by the fit, not configured
    assert loaded.params == model.params and loaded.resolved.delta == model.resolved.delta
    loaded.fit(SECOND, progress=False)
    fresh = cf.CellFlow("wfr", **SETTINGS).fit(SECOND, progress=False)
    assert loaded.params == fresh.params


def test_settings_are_frozen_and_params_are_a_copy():
    model = cf.CellFlow("otcfm", hidden=(32, 32))
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.config.lr = 1.0
    model.params["lr"] = 1.0
    assert model.config.lr == 1e-3 and model.params["lr"] == 1e-3
    assert model.config.hidden == (32, 32) and model.resolved is None
    with pytest.raises(RuntimeError, match="call fit"):
        _ = model.times


def test_a_fit_never_changes_the_configuration():
    model = cf.CellFlow("ecfm", **SETTINGS)
    before = model.config
    model.fit(FIRST, progress=False)
    assert model.config is before and model.config.entropy_rate is None and model.config.hidden == "auto"
    assert model.resolved.entropy_rate == pytest.approx(default_entropy_rate(FIRST.times))
