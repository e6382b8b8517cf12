"""The metric path (metric flow matching): its two data metrics, its bend toward the cells, its targets, and fits."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import cellflow as cf
from cellflow.paths import LANDMetric, MetricPath, RBFMetric
from cellflow.transport import PlanSampler


def test_land_metric_matches_its_formula():
    rng = np.random.default_rng(0)
    reference, x = rng.normal(size=(7, 3)), rng.normal(size=(4, 3))
    gamma, rho, alpha = 0.8, 0.05, 2.0
    by_hand = np.zeros((4, 3))
    for n in range(4):
        for i in range(7):
            kernel = np.exp(-np.sum((x[n] - reference[i]) ** 2) / (2 * gamma**2))
            by_hand[n] += kernel * (reference[i] - x[n]) ** 2
    metric = LANDMetric(torch.tensor(reference), gamma=gamma, rho=rho, alpha=alpha, h_scale=1.0)
    np.testing.assert_allclose(metric.spread(torch.tensor(x)).numpy(), by_hand, rtol=1e-10)
    np.testing.assert_allclose(metric(torch.tensor(x)).numpy(), (by_hand + rho) ** -alpha, rtol=1e-10)
    ceiling = float(np.median(by_hand))  # with a ceiling, support beyond it costs no less
    capped = LANDMetric(torch.tensor(reference), gamma=gamma, rho=rho, alpha=alpha, h_scale=1.0, ceiling=ceiling)
    np.testing.assert_allclose(capped(torch.tensor(x)).numpy(), (np.minimum(by_hand, ceiling) + rho) ** -alpha,
                               rtol=1e-10)
    # by default h is measured in units of its median on the reference cells, and gamma comes from the cells
    default = LANDMetric(torch.tensor(reference), rho=rho, alpha=alpha)
    on_cells = LANDMetric(torch.tensor(reference), gamma=default.gamma, h_scale=1.0).spread(torch.tensor(reference))
    assert default.h_scale == pytest.approx(float(on_cells.mean(dim=1).median()))
    distances = np.linalg.norm(reference[:, None] - reference[None], axis=2)
    assert default.gamma == pytest.approx(np.median(np.sort(distances, axis=1)[:, 4]))  # the (d + 1)-th neighbour


def test_rbf_metric_matches_its_formula_and_is_one_on_the_cells():
    rng = np.random.default_rng(1)
    reference = np.concatenate([rng.normal(0, 0.3, (60, 2)), rng.normal(3, 0.3, (60, 2))])
    metric = RBFMetric(torch.tensor(reference), n_centres=4, eps=0.01)
    x = np.array([[0.1, -0.2], [3.0, 3.1], [1.5, 1.5], [10.0, 10.0]])
    centres, widths, weights = metric.centres.numpy(), metric.widths.numpy(), metric.weights.numpy()
    h = np.array([sum(weights[k] * np.exp(-np.sum((p - centres[k]) ** 2) / (2 * widths[k] ** 2)) for k in range(4))
                  for p in x])
    floor = weights.sum() * np.exp(-30)  # far kernels are held at exp(-30) (cellflow.paths._metric.gaussian_kernel)
    np.testing.assert_allclose(metric.density(torch.tensor(x)).numpy(), h, rtol=1e-10, atol=floor)
    np.testing.assert_allclose(metric(torch.tensor(x)).numpy(), np.repeat(1 / (h + 0.01), 2).reshape(4, 2), rtol=1e-9)
    assert (weights >= 0).all()
    on_cells = metric.density(torch.tensor(reference)).numpy()
    assert abs(np.median(on_cells) - 1) < 0.1  # fitted to be about one on the cells
    assert h[3] < 1e-6 and h[2] < 0.5 * np.median(on_cells)  # far from the cells, and between the two clusters


def _half_ring(n, low, high, rng):
    theta = rng.uniform(low, high, n)
    radius = 1 + 0.02 * rng.standard_normal(n)
    return np.stack([radius * np.cos(theta), radius * np.sin(theta)], axis=1).astype(np.float32), theta


@pytest.mark.parametrize("metric", ["land", "rbf"])
def test_metric_path_midpoints_stay_on_a_half_ring(metric):
    """Cells on the upper half of the unit circle, the first time point on its right quarter, the
    second on its left; pairs from near angle 0 to near angle pi, across. Straight lines cut
    through the middle of the circle; the metric path's midpoints stay on the ring."""
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    x0, theta0 = _half_ring(120, 0, np.pi / 2, rng)
    x1, theta1 = _half_ring(120, np.pi / 2, np.pi, rng)
    sources, targets = np.flatnonzero(theta0 < 0.3), np.flatnonzero(theta1 > np.pi - 0.3)
    m = min(len(sources), len(targets))
    plan = sp.coo_matrix((np.ones(m), (sources[:m], targets[:m])), shape=(120, 120))
    populations = [torch.from_numpy(x0), torch.from_numpy(x1)]
    path = MetricPath(metric=metric)
    path.calibrate(populations, [0.0, 1.0], [PlanSampler(plan)])
    start, end = populations[0][sources[:m]], populations[1][targets[:m]]
    half = torch.full((m, 1), 0.5)
    bent = path.pair(start, end, half, torch.zeros_like(start)).x.norm(dim=1)
    straight = (0.5 * (start + end)).norm(dim=1)
    assert float(straight.mean()) < 0.3  # the straight lines cut through the circle
    assert float((bent - 1).abs().mean()) < 0.1  # the metric path's midpoints stay within 0.1 of the ring
    energy = path.calibration
    assert energy["metric_fitted_energy"][0] < 0.5 * energy["metric_straight_energy"][0]


def test_metric_path_target_is_the_derivative_of_its_position():
    rng = np.random.default_rng(2)
    populations = [torch.tensor(rng.normal(0, 1, (50, 3))), torch.tensor(rng.normal(2, 1, (50, 3)))]
    path = MetricPath(sigma=0.3)
    path.calibrate(populations, [0.0, 1.0], [PlanSampler(sp.identity(50) / 50)])
    bend = path.correction.rest[-1]
    assert float(bend.weight.abs().max()) > 0  # phi was fitted: the path is not the straight line
    x0, x1 = populations[0][:20], populations[1][:20]
    s, eps, step = torch.rand(20, 1, dtype=torch.float64) * 0.9 + 0.05, torch.randn(20, 3, dtype=torch.float64), 1e-5
    at = path.pair(x0, x1, s, eps)
    ahead, behind = path.pair(x0, x1, s + step, eps).x, path.pair(x0, x1, s - step, eps).x
    np.testing.assert_allclose(at.u.numpy(), ((ahead - behind) / (2 * step)).numpy(), rtol=1e-5, atol=1e-7)
    ends = path.pair(x0, x1, torch.tensor([[0.0], [1.0]]).repeat(10, 1), torch.zeros(20, 3, dtype=torch.float64)).x
    np.testing.assert_allclose(ends[::2].numpy(), x0[::2].numpy(), atol=1e-12)  # the path joins the two cells
    np.testing.assert_allclose(ends[1::2].numpy(), x1[1::2].numpy(), atol=1e-12)


def test_metric_path_refuses_bad_settings_and_an_uncalibrated_sample():
    with pytest.raises(ValueError, match="metric='geodesic'.*land.*rbf"):
        MetricPath(metric="geodesic")
    with pytest.raises(ValueError, match="sigma=-1"):
        MetricPath(sigma=-1)
    with pytest.raises(ValueError, match="gamma=0"):
        LANDMetric(torch.zeros(3, 2), gamma=0)
    with pytest.raises(ValueError, match="n_centres=9"):
        RBFMetric(torch.randn(5, 2), n_centres=9)
    with pytest.raises(RuntimeError, match="call calibrate"):
        MetricPath().pair(torch.zeros(2, 2), torch.ones(2, 2), torch.rand(2, 1), torch.zeros(2, 2))


@pytest.fixture(scope="module")
def small_course():
    adata = cf.datasets.simulate(n_cells=60, times=(0.0, 1.0, 2.0), seed=0)
    return adata, cf.read_time_course(adata, "time", "X_pca")


@pytest.mark.parametrize("coupling", [None, "wfr"])
def test_mfm_fits_with_balanced_and_mass_carrying_couplings(small_course, coupling, tmp_path):
    adata, course = small_course
    model = cf.CellFlow("mfm", coupling=coupling, n_steps=60, hidden=(32, 32), seed=0).fit(course, progress=False)
    assert model.params["path"] == "metric" and model.has_growth == (coupling == "wfr")
    n_intervals = len(course.times) - 1
    assert model.history["metric_fitted_energy"].shape == (n_intervals,)
    lower = model.history["metric_fitted_energy"] < model.history["metric_straight_energy"]
    np.testing.assert_array_equal(model.history["metric_bent"], lower)  # bent only where bending lowers the energy
    x = adata.obsm["X_pca"][:10]
    # the simulation's velocity is known: measured median cosine 0.99 (0.98 with wfr); the cells of time 0
    # pushed to time 1 land near its cells (W1 0.77 and 0.84, against 1.36 for not moving)
    velocity = model.velocity(adata.obsm["X_pca"], adata.obs["time"].to_numpy())
    truth = adata.obsm["velocity_true_pca"]
    cosine = (velocity * truth).sum(1) / (np.linalg.norm(velocity, axis=1) * np.linalg.norm(truth, axis=1))
    assert np.median(cosine) > 0.9
    x0, x1 = course.populations[:2]
    pushed = model.push(x0, course.times[0], course.times[1])
    assert cf.metrics.w1(pushed, x1) < 0.75 * cf.metrics.w1(x0, x1)
    back = cf.io.load_model(cf.io.save_model(model, tmp_path / "mfm"))  # no phi needed to restore the field
    np.testing.assert_array_equal(back.velocity(x, course.times[0]), model.velocity(x, course.times[0]))
    assert back.params == model.params


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_metric_path_calibrates_and_samples_on_the_cells_device():
    rng = np.random.default_rng(3)
    populations = [torch.tensor(rng.normal(k, 1, (40, 2)), dtype=torch.float32, device="cuda") for k in range(3)]
    samplers = [PlanSampler(sp.identity(40) / 40, device="cuda") for _ in range(2)]
    for metric in ("land", "rbf"):
        path = MetricPath(sigma=0.1, metric=metric)
        path.calibrate(populations, [0.0, 1.0, 2.0], samplers)
        x0, x1 = populations[0], populations[1]
        point = path.pair(x0, x1, torch.rand(40, 1, device="cuda"), path.noise(x0))
        assert point.x.device.type == point.u.device.type == "cuda" and torch.isfinite(point.u).all()
