"""Velocity as the gradient of a learned potential: no curl, the Gaussian Monge map, every use of the field."""

from __future__ import annotations

import anndata as ad
import numpy as np
import torch

import cellflow as cf
from cellflow.fields import GradientField
from cellflow.model import TimeCourse


def _jacobians(model, x, t):
    """Jacobians ``(n, d, d)`` of the model's internal velocity at cells ``x`` and real time ``t``."""
    z = model._to_internal(x)
    times = torch.tensor([float(t)], dtype=torch.float64)
    return torch.stack([torch.autograd.functional.jacobian(lambda q: model._field(q[None], times)[0][0], point)
                        for point in z])


def _course(gaussian_pair, n, seed=0):
    x0, x1, params = gaussian_pair(n, seed=seed)
    course = TimeCourse(times=np.array([0.0, 2.0]), populations=[x0.astype(np.float32), x1.astype(np.float32)],
                        indices=[np.arange(n)] * 2)
    return course, params


def test_gradient_field_has_zero_curl(gaussian_pair):
    course, _ = _course(gaussian_pair, 200)
    x = gaussian_pair(20, seed=5)[0]
    asymmetry = {}
    for field in ("gradient", "direct"):
        model = cf.CellFlow("otcfm", n_steps=150, hidden=(32, 32), field=field, seed=0).fit(course, progress=False)
        jacobian = _jacobians(model, x, 0.7)
        asymmetry[field] = float(((jacobian - jacobian.transpose(1, 2)).norm(dim=(1, 2)) /
                                  jacobian.norm(dim=(1, 2))).max())
    assert asymmetry["gradient"] < 1e-5  # symmetric to float32 precision
    assert asymmetry["direct"] > 1e-2  # a free field is not


def test_gradient_field_under_no_grad_equals_the_field_in_training():
    torch.manual_seed(0)
    net = GradientField(3, (16, 16))
    x, t = torch.randn(10, 3), torch.rand(10)
    in_training = net(x, t)
    assert in_training.requires_grad  # its graph reaches the potential's weights
    with torch.no_grad():
        evaluated = net(x, t)
    assert not evaluated.requires_grad
    torch.testing.assert_close(evaluated, in_training.detach())
    # it is the potential's gradient: compare with central differences in float64
    net = net.double()
    x, t = x.double(), t.double()
    step = 1e-6
    for axis in range(3):
        shift = torch.zeros_like(x)
        shift[:, axis] = step
        difference = (net.potential(x + shift, t) - net.potential(x - shift, t))[:, 0] / (2 * step)
        torch.testing.assert_close(net(x, t)[:, axis], difference, rtol=1e-6, atol=1e-8)


def test_gradient_field_recovers_the_gaussian_monge_map_as_well_as_a_direct_field(gaussian_pair, monge_map):
    course, params = _course(gaussian_pair, 800, seed=4)
    test = gaussian_pair(400, seed=9)[0]
    truth = monge_map(test, *params)
    displacement = np.linalg.norm(truth - test, axis=1).mean()
    error = {}
    for field in ("gradient", "direct"):
        model = cf.CellFlow("otcfm", n_steps=800, hidden=(64, 64, 64), field=field, seed=0).fit(course, progress=False)
        error[field] = np.linalg.norm(model.push(test, 0.0, 2.0) - truth, axis=1).mean() / displacement
    assert error["gradient"] < 0.06
    assert error["gradient"] < 1.1 * error["direct"] + 0.005


def test_gradient_field_in_tl_fit_interpolate_and_files(tmp_path):
    adata = cf.datasets.simulate(n_cells=120, times=(0.0, 1.0, 2.0), growth_scale=0.0, seed=2)
    model = cf.tl.fit(adata, method="otcfm", field="gradient", hidden=(16, 16), seed=0, progress=False)
    assert "stopping_score" in model.history  # the automatic stop checks the field under no_grad
    assert np.isfinite(adata.obsm["cellflow_velocity_pca"]).all()
    predicted = cf.tl.interpolate(adata, 0.0, 1.0)
    observed = adata.obsm["X_pca"][adata.obs["time"] == 1.0]
    start = adata.obsm["X_pca"][adata.obs["time"] == 0.0]
    assert cf.metrics.w1(predicted.obsm["X_pca"], observed) < 0.5 * cf.metrics.w1(start, observed)
    adata.write_h5ad(tmp_path / "fitted.h5ad")
    restored = cf.tl.load_model(ad.read_h5ad(tmp_path / "fitted.h5ad"))
    assert restored.params["field"] == "gradient"
    np.testing.assert_array_equal(restored.velocity(start[:30], 0.4), model.velocity(start[:30], 0.4))


def test_gradient_field_with_growth_round_trips(tmp_path, gaussian_pair):
    course, _ = _course(gaussian_pair, 80)
    model = cf.CellFlow("wfr", delta=2.0, n_steps=30, hidden=(16,), field="gradient", seed=0).fit(course, progress=False)
    assert isinstance(model.net.velocity, GradientField)
    back = cf.CellFlow.load(model.save(tmp_path / "wfr_gradient"))
    x = course.populations[0][:25]
    for a, b in zip(model.evaluate(x, 1.0), back.evaluate(x, 1.0)):
        np.testing.assert_array_equal(a, b)
    positions, mass = back.transport(x, [0.0, 2.0])
    assert np.isfinite(positions).all() and np.isfinite(mass).all()
