"""Entropy-controlled flow matching: the entropy estimator, the noise it chooses, the path and the method."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

import cellflow as cf
from cellflow.model import TimeCourse
from cellflow.paths import (
    EntropyControlledPath,
    LinearPath,
    default_entropy_rate,
    displacement_factor,
    knn_entropy,
    noise_level,
)
from cellflow.training import PairObjective
from cellflow.transport import ExactOTCoupling


def _course(populations, times):
    return TimeCourse(times=np.array(times, dtype=float), populations=populations,
                      indices=[np.arange(len(x)) for x in populations])


@pytest.mark.parametrize("d", [1, 2, 5])
def test_knn_entropy_matches_the_gaussian_closed_form(d):
    rng = np.random.default_rng(d)
    mixing = rng.normal(size=(d, d))
    covariance = mixing @ mixing.T + 0.5 * np.eye(d)
    x = torch.as_tensor(rng.multivariate_normal(np.zeros(d), covariance, size=3000))
    exact = 0.5 * np.linalg.slogdet(2 * np.pi * np.e * covariance)[1]
    assert knn_entropy(x) == pytest.approx(exact, abs=0.1)


def test_knn_entropy_moves_by_d_log_a_under_scaling_and_ignores_repeats():
    x = torch.randn(500, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert knn_entropy(3 * x) == pytest.approx(knn_entropy(x) + 4 * math.log(3), abs=1e-9)
    assert knn_entropy(torch.cat([x, x[:100]])) == pytest.approx(knn_entropy(x), abs=1e-12)
    with pytest.raises(ValueError, match="more than k=3"):
        knn_entropy(x[:3])


def test_no_noise_where_the_lines_keep_their_entropy():
    x0 = torch.randn(400, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x1 = x0 @ torch.diag(torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)) + 5.0  # a linear map: no collapse
    noise = torch.randn_like(x0) @ displacement_factor(x0, x1).T
    assert noise_level(x0, x1, noise, allowed=0.0) == 0.0


def test_independent_pairs_of_one_gaussian_get_the_noise_that_restores_it():
    # (1-s) x0 + s x1 of independent N(0, I) lacks s (1-s) Cov(x1 - x0) of the covariance: level 1 restores it
    gen = torch.Generator().manual_seed(2)
    x0, x1 = (torch.randn(1000, 3, generator=gen, dtype=torch.float64) for _ in range(2))
    noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64) @ displacement_factor(x0, x1).T
    level = noise_level(x0, x1, noise, allowed=0.0)
    assert 0.8 < level < 1.2
    # a looser bound asks for less, and a bound no collapse reaches for none
    assert noise_level(x0, x1, noise, allowed=3 * 0.2) < level
    assert noise_level(x0, x1, noise, allowed=100.0) == 0.0


def _two_interval_objective():
    """Interval 0: two independent samples in 20 dimensions (their lines collapse); interval 1: a translation."""
    rng = np.random.default_rng(3)
    first, second = rng.normal(size=(150, 20)), rng.normal(size=(150, 20))
    populations = [torch.as_tensor(x, dtype=torch.float32) for x in (first, second, second + 2.0)]
    times = np.array([0.0, 1.0, 3.0])
    samplers = [ExactOTCoupling().sampler(a.numpy(), b.numpy()) for a, b in zip(populations, populations[1:])]
    path = EntropyControlledPath(entropy_rate=0.01)  # a bound float rounding does not cross
    torch.manual_seed(0)
    return PairObjective(populations, times, samplers, path, batch_size=64), path


def test_each_interval_gets_its_own_noise():
    objective, path = _two_interval_objective()
    assert path.levels[0] > 0.3 and path.levels[1] == 0.0
    batch = objective.draw()
    translation = batch.u[64:]  # interval 1 (2 time units): every target is the shift, with no noise
    torch.testing.assert_close(translation, torch.full_like(translation, 1.0))
    assert batch.u[:64].std(dim=0).mean() > 0.5


def test_path_targets_are_the_derivative_and_the_ends_are_exact():
    _, path = _two_interval_objective()
    assert path.levels[0] > 0.3  # interval 0 has noise: the target has a bridge term to get right
    gen = torch.Generator().manual_seed(4)
    x0, x1 = (torch.randn(32, 20, generator=gen, dtype=torch.float64) for _ in range(2))
    eps = torch.randn(32, 20, generator=gen, dtype=torch.float64)
    segment = torch.zeros(32, dtype=torch.long)
    points = torch.stack([x0, x1])
    s = torch.rand(32, 1, generator=gen, dtype=torch.float64) * 0.8 + 0.1
    target = path.sample(points, segment, s, eps).u
    assert target.dtype == torch.float64
    # In float64 the central difference's error is its truncation, at most h^2 / 6 times the largest third
    # derivative of the path (rounding, 1e-16 / h, is far below): measured 31 h^2 here (3.1e-5 at h = 1e-3,
    # 3.1e-7 at 1e-4). The bound 100 h^2 keeps a margin of 3 and fails for a target off by more than that,
    # e.g. a wrong noise term; the ratio of the two errors checks that the difference converges to it.
    errors = {}
    for h in (1e-3, 1e-4):
        ahead, behind = (path.sample(points, segment, s + dh, eps).x for dh in (h, -h))
        errors[h] = (target - (ahead - behind) / (2 * h)).abs().max().item()
        assert errors[h] < 100 * h**2
    assert 50 < errors[1e-3] / errors[1e-4] < 200  # second order: the target is the derivative itself
    for end, cells in ((0.0, x0), (1.0, x1)):
        np.testing.assert_array_equal(path.sample(points, segment, torch.full((32, 1), end, dtype=torch.float64),
                                                  eps).x, cells)
    # on the translation interval the path is the straight line
    straight = LinearPath(0.0).sample(points, segment, s, eps)
    torch.testing.assert_close(path.sample(points, segment + 1, s, eps).x, straight.x)


def _typical_mass(cells, centres, d):
    """Share of ``cells`` that are typical members of each mode: nearest to its centre, at a distance from it
    within the central 90% of the truth's (a chi distribution with ``d`` degrees of freedom)."""
    low, high = np.sqrt(stats.chi2.ppf([0.05, 0.95], d))
    distance = np.linalg.norm(cells[:, None] - centres[None], axis=2)
    nearest, radius = distance.argmin(axis=1), distance.min(axis=1)
    return np.array([np.mean((nearest == j) & (radius >= low) & (radius <= high)) for j in range(len(centres))])


def test_entropy_control_keeps_both_modes_where_otcfm_collapses_them():
    # A steady bimodal population in 64 dimensions sampled twice: the truth at every time is the same
    # mixture, each mode N(centre, I), so 45% of all cells are typical members of each mode. Exact OT
    # between 400 cells in 64 dimensions matches them poorly, and the straight lines' midpoints regress
    # to their mode's mean: OT-CFM's cells at the middle fall inside the modes' typical shells.
    d, per_mode = 64, 200
    rng = np.random.default_rng(0)
    centres = np.zeros((2, d))
    centres[:, 0] = (4.0, -4.0)

    def sample():
        return np.concatenate([rng.normal(size=(per_mode, d)) + c for c in centres])

    course = _course([sample(), sample()], [0.0, 1.0])
    settings = dict(n_steps=400, hidden=(256, 256, 256), seed=0)
    middle = {m: cf.CellFlow(m, **settings).fit(course, progress=False).push(course.populations[0], 0.0, 0.5)
              for m in ("otcfm", "ecfm")}
    truth = _typical_mass(sample(), centres, d)
    assert np.all(np.abs(truth - 0.45) < 0.05)
    tolerance = 0.08  # each mode's typical mass within 0.08 of the truth's 0.45
    assert np.all(np.abs(_typical_mass(middle["ecfm"], centres, d) - 0.45) < tolerance)
    assert np.all(_typical_mass(middle["otcfm"], centres, d) < 0.45 - 2 * tolerance)


def test_ecfm_settings_flow_through_the_model_and_survive_save_and_load(tmp_path):
    rng = np.random.default_rng(5)
    course = _course([rng.normal(size=(60, 6)) for _ in range(3)], [0.0, 1.0, 3.0])
    model = cf.CellFlow("ecfm", n_steps=20, hidden=(16,)).fit(course, progress=False)
    assert model.params["entropy_rate"] == pytest.approx(default_entropy_rate([0.0, 1.0, 3.0]))
    assert model.params["entropy_rate"] == pytest.approx(2 * math.log(1 / 0.95) / 1.5)
    assert model.params["sigma"] is None and len(model.history["noise_levels"]) == 2
    back = cf.CellFlow.load(model.save(tmp_path / "ecfm"))
    assert back.params == model.params
    np.testing.assert_array_equal(back.history["noise_levels"], model.history["noise_levels"])
    np.testing.assert_allclose(back.push(course.populations[0], 0.0, 2.0), model.push(course.populations[0], 0.0, 2.0))
    # through tl.fit, as sigma and delta are
    adata = cf.datasets.simulate(n_cells=60, times=(0.0, 1.0), growth_scale=0.0, seed=0)
    fitted = cf.tl.fit(adata, "time", "X_pca", "ecfm", entropy_rate=0.2, n_steps=10, hidden=(8,), progress=False)
    assert fitted.params["entropy_rate"] == 0.2 and fitted.params["path"] == "entropy"


def test_ecfm_bad_settings_name_the_parameter():
    with pytest.raises(ValueError, match="entropy_rate=-1.0"):
        cf.CellFlow("ecfm", entropy_rate=-1.0)
    with pytest.raises(ValueError, match="sigma=0.2 does not apply to path='entropy'"):
        cf.CellFlow("ecfm", sigma=0.2)
    with pytest.raises(RuntimeError, match="calibrate"):
        EntropyControlledPath(0.1).pair(torch.zeros(2, 2), torch.ones(2, 2), torch.rand(2, 1), torch.randn(2, 2))
    assert cf.CellFlow("otcfm", entropy_rate=0.3).params["entropy_rate"] is None  # only the path that uses it
    few = _course([np.random.default_rng(6).normal(size=(5, 2)) for _ in range(2)], [0.0, 1.0])
    with pytest.raises(ValueError, match="interval 0 .* has only 5"):
        cf.CellFlow("ecfm", n_steps=5, hidden=(8,)).fit(few, progress=False)
