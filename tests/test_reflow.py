"""Rectified flow: the straightness metric on analytic fields, the endpoint objective, and reflow rounds."""

from __future__ import annotations

import math

import anndata as ad
import numpy as np
import pytest
import torch

import cellflow as cf
from cellflow.model import TimeCourse
from cellflow.paths import LinearPath
from cellflow.training import EndpointObjective


def _rotation(x, t):
    return torch.stack([-x[:, 1], x[:, 0]], dim=1)


def test_straightness_of_analytic_fields():
    x = torch.randn(50, 2, dtype=torch.float64)
    constant = lambda z, t: torch.ones_like(z) * torch.tensor([2.0, -1.0], dtype=z.dtype)  # noqa: E731
    assert cf.metrics.straightness(constant, x, 0.0, 3.0) == pytest.approx(1.0, abs=1e-9)
    # half a turn of a rigid rotation: energy pi * r^2 over the interval pi, chord (2 r)^2
    assert cf.metrics.straightness(_rotation, x, 0.0, math.pi) == pytest.approx(math.pi**2 / 4, rel=1e-4)
    assert cf.metrics.straightness(_rotation, x, math.pi, 0.0) == pytest.approx(math.pi**2 / 4, rel=1e-4)
    # a single Euler step is a straight segment at constant speed, whatever the field
    assert cf.metrics.straightness(_rotation, x, 0.0, math.pi, method="euler", step_size=math.pi) == \
        pytest.approx(1.0, abs=1e-9)
    with pytest.raises(ValueError, match="do not move"):
        cf.metrics.straightness(lambda z, t: torch.zeros_like(z), x, 0.0, 1.0)


def test_endpoint_objective_draws_each_cell_with_its_own_end_point():
    torch.manual_seed(0)
    sources = [torch.randn(30, 2), torch.randn(20, 2)]
    shifts = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, -4.0])]
    targets = [z + shift for z, shift in zip(sources, shifts)]
    masses = [torch.ones(30), torch.cat([torch.zeros(10), torch.ones(10)])]
    objective = EndpointObjective(sources, targets, [0.0, 2.0, 3.0], LinearPath(), 64, masses)
    batch = objective.draw()
    first, second = slice(0, 64), slice(64, 128)
    # real-time targets: the displacement over each interval's length
    torch.testing.assert_close(batch.u[first], shifts[0].expand(64, 2) / 2.0)
    torch.testing.assert_close(batch.u[second], shifts[1].expand(64, 2))
    assert bool(((batch.t[first] >= 0) & (batch.t[first] <= 2)).all())
    assert bool(((batch.t[second] >= 2) & (batch.t[second] <= 3)).all())
    # every point lies on its cell's own segment, and cells without mass are never drawn
    s = (batch.t[second] - 2.0)[:, None]
    starts = batch.x[second] - s * shifts[1]
    nearest = torch.cdist(starts, sources[1]).argmin(dim=1)
    torch.testing.assert_close(starts, sources[1][nearest])
    assert bool((nearest >= 10).all())
    with pytest.raises(ValueError, match="shapes"):
        EndpointObjective(sources, [targets[0], targets[1][:5]], [0.0, 2.0, 3.0], LinearPath(), 8)


def _gaussian_to_two_gaussians(n=400, seed=0):
    rng = np.random.default_rng(seed)
    x0 = rng.normal(size=(n, 2)) * 0.5
    x1 = np.concatenate([rng.normal(size=(n // 2, 2)) * 0.3 + [3.0, 2.0],
                         rng.normal(size=(n - n // 2, 2)) * 0.3 + [3.0, -2.0]])
    return x0.astype(np.float32), x1.astype(np.float32)


def test_reflow_straightens_an_independent_coupling_flow():
    x0, x1 = _gaussian_to_two_gaussians()
    course = TimeCourse(times=np.array([0.0, 1.0]), populations=[x0, x1], indices=[np.arange(len(x0))] * 2)
    test, _ = _gaussian_to_two_gaussians(seed=1)
    model = cf.CellFlow("icfm", n_steps=600, hidden=(64, 64, 64), seed=0).fit(course, progress=False)

    def quality():
        adaptive = model.push(test, 0.0, 1.0)
        one_step = model.push(test, 0.0, 1.0, solver="euler", step_size=1.0)
        return model.straightness(test, 0.0, 1.0) - 1, abs(cf.metrics.w1(one_step, x1) - cf.metrics.w1(adaptive, x1))

    error_before, gap_before = quality()
    model.rectify(course, progress=False)
    error_after, gap_after = quality()
    assert error_before > 0.005  # independent pairs cross: the learned flow is curved
    assert error_after < 0.2 * error_before
    assert gap_after < 0.5 * gap_before  # one Euler step now lands about where the adaptive solver does
    straightness = model.history["reflow_straightness"]
    assert straightness.shape == (2, 1) and straightness[1, 0] < straightness[0, 0]
    assert model.history["reflow_loss"].shape == (1, 600) and model.params["reflow"] == 1


def test_reflow_parameter_runs_rounds_after_the_fit_and_round_trips(tmp_path):
    x0, x1 = _gaussian_to_two_gaussians(n=100)
    course = TimeCourse(times=np.array([0.0, 1.0, 2.0]), populations=[x0, x1, x1 + 1],
                        indices=[np.arange(100)] * 3)
    model = cf.CellFlow("otcfm", n_steps=40, hidden=(16,), reflow=2, seed=0).fit(course, progress=False)
    assert model.history["reflow_straightness"].shape == (3, 2) and model.history["reflow_loss"].shape == (2, 40)
    back = cf.CellFlow.load(model.save(tmp_path / "reflowed"))
    assert back.params["reflow"] == 2
    np.testing.assert_array_equal(back.history["reflow_straightness"], model.history["reflow_straightness"])
    np.testing.assert_array_equal(back.velocity(x0[:20], 0.5), model.velocity(x0[:20], 0.5))
    back.rectify(course, progress=False)  # a restored model goes on from its own record
    assert back.params["reflow"] == 3 and back.history["reflow_straightness"].shape == (4, 2)
    with pytest.raises(ValueError, match="times"):
        back.rectify(course.without(1))


def test_reflow_refuses_methods_with_growth_and_bad_counts():
    with pytest.raises(ValueError, match="reflow=1 needs a balanced method.*growth"):
        cf.CellFlow("wfr", reflow=1)
    with pytest.raises(ValueError, match="reflow=1 needs a balanced method"):
        cf.CellFlow("otcfm", coupling="wfr", reflow=1)
    for bad in (-1, 1.5, "2"):
        with pytest.raises(ValueError, match="reflow="):
            cf.CellFlow("otcfm", reflow=bad)
    assert cf.CellFlow("mmfm", reflow=1).params["reflow"] == 1  # every balanced method


def test_command_line_fit_with_reflow_and_gradient_field(tmp_path, capsys):
    from cellflow.cli import main

    source, out = tmp_path / "course.h5ad", tmp_path / "fitted.h5ad"
    cf.datasets.simulate(n_cells=60, times=(0.0, 1.0, 2.0), seed=0).write_h5ad(source)
    argv = ["fit", str(source), "--steps", "20", "--out", str(out)]
    assert main([*argv, "--reflow", "1", "--field", "gradient"]) == 0
    params = cf.tl.load_model(ad.read_h5ad(out)).params
    assert params["reflow"] == 1 and params["field"] == "gradient"
    assert main([*argv, "--method", "wfr", "--reflow", "1"]) == 1
    assert "reflow=1 needs a balanced method" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*argv, "--reflow", "-1"])
