"""The reusable pieces on their own: couplings, paths, integrator, metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.linalg import expm

import cellflow as cf
from cellflow import metrics
from cellflow.paths import (
    BrownianBridgePath,
    LinearPath,
    VariancePreservingPath,
    WFRPath,
)
from cellflow.solvers import integrate
from cellflow.transport import (
    EntropicOTCoupling,
    ExactOTCoupling,
    IndependentCoupling,
    StackedPlans,
    WFRCoupling,
)


@pytest.mark.parametrize("coupling", [ExactOTCoupling(), ExactOTCoupling(block_size=150)])
def test_exact_plan_has_uniform_marginals(coupling, gaussian_pair):
    x0, x1, _ = gaussian_pair(400)
    plan = coupling.plan(x0, x1).toarray()
    assert plan.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(plan.sum(axis=1), 1 / 400, rtol=1e-6)
    np.testing.assert_allclose(plan.sum(axis=0), 1 / 400, rtol=1e-6)


def test_exact_plan_follows_gaussian_monge_map(gaussian_pair, monge_map):
    x0, x1, params = gaussian_pair(1500)
    plan = ExactOTCoupling().plan(x0, x1).tocsr()
    projected = plan @ x1 / np.asarray(plan.sum(axis=1))  # barycentric projection
    error = np.linalg.norm(projected - monge_map(x0, *params), axis=1)
    assert np.median(error) < 0.15


def test_exact_plan_is_monotone_in_1d():
    rng = np.random.default_rng(3)
    x0, x1 = rng.normal(size=(50, 1)), rng.normal(2, 0.5, size=(50, 1))
    plan = ExactOTCoupling().plan(x0, x1).tocoo()
    order = np.argsort(x0[plan.row, 0])
    assert np.all(np.diff(x1[plan.col[order], 0]) >= 0)


def test_weighted_marginals_and_sampler_frequencies():
    rng = np.random.default_rng(0)
    x0, x1 = rng.normal(size=(30, 2)), rng.normal(size=(40, 2))
    a = rng.uniform(0.5, 2, 30)
    sampler = ExactOTCoupling().sampler(x0, x1, a=a)
    np.testing.assert_allclose(np.asarray(sampler.plan.sum(axis=1)).ravel(), a / a.sum(), rtol=1e-6)
    torch.manual_seed(0)
    pairs = sampler.sample(200_000)
    i, j = pairs.i.numpy(), pairs.j.numpy()
    freq = np.bincount(i, minlength=30) / i.size
    np.testing.assert_allclose(freq, a / a.sum(), atol=4e-3)
    assert set(zip(i[:1000], j[:1000])) <= set(zip(*sampler.plan.nonzero()))


@pytest.mark.parametrize("coupling", [ExactOTCoupling(), WFRCoupling(delta=1.0)], ids=["exact", "wfr"])
def test_stacked_plans_draw_each_interval_from_its_own_plan(coupling):
    rng = np.random.default_rng(0)
    sizes = (12, 20, 9)
    populations = [rng.normal(size=(n, 2)) + k for k, n in enumerate(sizes)]
    samplers = [coupling.sampler(populations[k], populations[k + 1], a=rng.uniform(0.5, 2, sizes[k])) for k in range(2)]
    offsets = np.cumsum([0, *sizes])
    n = 100_000
    torch.manual_seed(0)
    pairs = StackedPlans(samplers, offsets[:-1], offsets[1:], n).sample()
    for k, sampler in enumerate(samplers):
        part = slice(k * n, (k + 1) * n)  # exactly n pairs of each interval, in order
        i, j = pairs.i[part].numpy() - offsets[k], pairs.j[part].numpy() - offsets[k + 1]
        alone = sampler.sample(n)  # the interval's own sampler, drawn alone
        for got, expected, size in ((i, alone.i.numpy(), sizes[k]), (j, alone.j.numpy(), sizes[k + 1])):
            np.testing.assert_allclose(np.bincount(got, minlength=size) / n,
                                       np.bincount(expected, minlength=size) / n, atol=6e-3)
        entries = set(zip(*sampler.plan.nonzero()))
        if pairs.died is None:
            assert set(zip(i, j)) <= entries
            continue
        alive = ~pairs.died[part].numpy()
        assert set(zip(i[alive], j[alive])) <= entries
        every = sampler.all_pairs()  # the pairs carry their own semi-coupling masses
        masses = {(a, b, d): (m0, m1) for a, b, d, m0, m1 in zip(*(v.numpy() for v in (
            every.i, every.j, every.died, every.m0, every.m1)))}
        drawn = zip(i, j, pairs.died[part].numpy(), pairs.m0[part].numpy(), pairs.m1[part].numpy())
        assert all(np.allclose(masses[(a, b, d)], (m0, m1)) for a, b, d, m0, m1 in list(drawn)[:2000])


def test_entropic_plan_marginals_and_blur(gaussian_pair):
    x0, x1, _ = gaussian_pair(300)
    exact = ExactOTCoupling().plan(x0, x1)
    entropic = EntropicOTCoupling(reg=0.5).plan(x0, x1)
    np.testing.assert_allclose(np.asarray(entropic.sum(axis=1)).ravel(), 1 / 300, rtol=1e-3)
    assert entropic.nnz > 10 * exact.nnz  # entropic plans spread mass


def test_independent_sampler_covers_both_populations():
    sampler = IndependentCoupling().sampler(np.zeros((5, 2)), np.zeros((7, 2)))
    torch.manual_seed(0)
    pairs = sampler.sample(20_000)
    i, j = pairs.i.numpy(), pairs.j.numpy()
    assert set(i) == set(range(5)) and set(j) == set(range(7))
    assert abs(np.corrcoef(i, j)[0, 1]) < 0.05


@pytest.mark.parametrize("path", [LinearPath(0.0), LinearPath(0.3), BrownianBridgePath(0.5), VariancePreservingPath(0.2)])
def test_path_target_is_its_derivative(path):
    torch.manual_seed(0)
    x0, x1, eps = torch.randn(64, 3, dtype=torch.float64), torch.randn(64, 3, dtype=torch.float64), torch.randn(64, 3, dtype=torch.float64)
    s = torch.rand(64, 1, dtype=torch.float64) * 0.8 + 0.1
    h = 1e-6
    derivative = (path.pair(x0, x1, s + h, eps).x - path.pair(x0, x1, s - h, eps).x) / (2 * h)
    torch.testing.assert_close(path.pair(x0, x1, s, eps).u, derivative, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "path", [LinearPath(0.0), BrownianBridgePath(0.5), VariancePreservingPath(0.0), WFRPath(delta=2.0)],
    ids=lambda path: type(path).__name__,
)
@pytest.mark.parametrize("masses", [False, True])
def test_pair_paths_start_and_end_exactly_at_the_pair(path, masses):
    gen = torch.Generator().manual_seed(3)
    x0, x1, eps = (torch.randn(200, 3, generator=gen, dtype=torch.float64) for _ in range(3))
    x1 = x0 + 0.5 * x1  # within the WFR transport horizon pi * delta
    x1[:10], x1[10:20] = x0[:10], x0[10:20] + 1e-9  # pairs that do not move, or barely
    m0, m1 = (torch.rand(200, generator=gen, dtype=torch.float64) + 0.2 for _ in range(2)) if masses else (None, None)
    zeros, ones = torch.zeros(200, 1, dtype=torch.float64), torch.ones(200, 1, dtype=torch.float64)
    start, end = path.pair(x0, x1, zeros, eps, m0, m1), path.pair(x0, x1, ones, eps, m0, m1)
    torch.testing.assert_close(start.x, x0, atol=1e-12, rtol=0)
    torch.testing.assert_close(end.x, x1, atol=1e-12, rtol=0)
    if masses:  # the loss weight m(s) / m0 runs from one to m1 / m0
        torch.testing.assert_close(start.weight, torch.ones(200, dtype=torch.float64), atol=1e-12, rtol=0)
        torch.testing.assert_close(end.weight, m1 / m0, atol=1e-12, rtol=0)


def test_brownian_bridge_rejects_zero_noise():
    with pytest.raises(ValueError, match="sigma"):
        BrownianBridgePath(0.0)


def test_integrator_matches_matrix_exponential_both_ways():
    a = torch.tensor([[0.0, 1.0], [-1.0, -0.1]], dtype=torch.float64)
    x = torch.randn(10, 2, dtype=torch.float64)
    times = torch.tensor([0.0, 0.7, 2.0], dtype=torch.float64)
    out = integrate(lambda z, t: z @ a.T, x, times, rtol=1e-9, atol=1e-9)
    for k, t in enumerate(times):
        expected = x @ torch.as_tensor(expm(a.numpy() * t.item())).T
        torch.testing.assert_close(out[k], expected, rtol=1e-6, atol=1e-7)
    back = integrate(lambda z, t: z @ a.T, out[-1], times.flip(0), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(back[-1], x, rtol=1e-6, atol=1e-6)
    fixed = integrate(lambda z, t: z @ a.T, x, times, method="rk4", step_size=0.01, chunk_size=3)
    torch.testing.assert_close(fixed, out, rtol=1e-5, atol=1e-6)


def test_integrator_fixed_step_needs_step_size():
    with pytest.raises(ValueError, match="step_size"):
        integrate(lambda z, t: z, torch.zeros(2, 2), torch.tensor([0.0, 1.0]), method="euler")


def test_wasserstein_of_a_translation_is_its_length():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 3))
    shift = np.array([0.3, -0.4, 0.0])
    assert metrics.w1(x, x + shift) == pytest.approx(0.5, rel=1e-6)
    assert metrics.w2(x, x + shift) == pytest.approx(0.5, rel=1e-6)
    assert metrics.mmd(x, x) == pytest.approx(0.0, abs=1e-6)
    assert metrics.mmd(x, x + 3) > 0.1


def test_weighted_wasserstein():
    x = np.array([[0.0], [1.0]])
    y = np.array([[0.0]])
    assert metrics.w1(x, y, x_weights=[3, 1]) == pytest.approx(0.25)
    assert metrics.w2(x, y, x_weights=[3, 1]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="weights"):
        metrics.w1(x, y, x_weights=[1, -1])


def test_cosine_learning_rate_falls_from_peak_to_one_hundredth():
    from cellflow.training import learning_rate

    rates = [learning_rate(step, 101, 3e-3, "cosine") for step in range(101)]
    assert rates[0] == pytest.approx(3e-3) and rates[-1] == pytest.approx(3e-5)
    assert rates[50] == pytest.approx(0.5 * (3e-3 + 3e-5))
    assert all(a > b for a, b in zip(rates[:-1], rates[1:]))
    assert {learning_rate(step, 101, 3e-3) for step in range(101)} == {3e-3}
    with pytest.raises(ValueError, match="lr_schedule='linear'"):
        cf.CellFlow("otcfm", lr_schedule="linear")
