"""The method table, the model's parameters and model states: checked before any work."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cellflow as cf
from cellflow.model import COUPLINGS, METHODS, Method, TimeCourse, resolve_method
from cellflow.transport import ExactOTCoupling


def _course(n=60, times=(0.0, 1.0, 2.0), seed=0):
    rng = np.random.default_rng(seed)
    populations = [rng.normal(size=(n, 2)) + t for t in times]
    return TimeCourse(times=np.array(times), populations=populations, indices=[np.arange(n)] * len(times))


def test_every_method_is_a_row_of_coupling_path_and_objective():
    assert resolve_method("otcfm") == Method("exact", "linear", "pairs")
    assert resolve_method("mmfm") == Method("exact", "hermite", "chains")
    # the same coupling and path on chains is a different method, and the parameters say so
    assert resolve_method("mmfm", path="linear") == Method("exact", "linear", "chains")
    assert cf.CellFlow("mmfm", path="linear").params["objective"] == "chains"
    assert cf.CellFlow("otcfm").params["objective"] == "pairs"
    assert resolve_method("otcfm", path="hermite").objective == "chains"  # a curve needs chains
    with pytest.raises(ValueError, match="objective='chains'"):
        resolve_method("otcfm", path="spline", objective="pairs")
    for name, message in [("method", "method='nope'"), ("coupling", "coupling='nope'"), ("path", "path='nope'"),
                          ("objective", "objective='nope'")]:
        with pytest.raises(ValueError, match=message):
            cf.CellFlow(**({"method": "nope"} if name == "method" else {name: "nope"}))


def test_the_resolved_triple_alone_decides_the_fit():
    course = _course()
    a = cf.CellFlow("mmfm", path="linear", n_steps=30, hidden=(16,)).fit(course, progress=False)
    b = cf.CellFlow("otcfm", objective="chains", n_steps=30, hidden=(16,)).fit(course, progress=False)
    np.testing.assert_array_equal(a.history["loss"], b.history["loss"])


def test_pieces_declare_growth_delta_and_default_reg():
    assert cf.CellFlow("wfr").has_growth and cf.CellFlow("otcfm", path="wfr").has_growth
    assert cf.CellFlow("otcfm", coupling="wfr").has_growth and not cf.CellFlow("sbcfm").has_growth
    assert cf.CellFlow("sbcfm", sigma=0.2).params["reg"] == pytest.approx(2 * 0.2**2)  # the Schroedinger bridge
    assert cf.CellFlow("wfr").params["reg"] == 0.01 and cf.CellFlow("otcfm").params["reg"] is None
    assert cf.CellFlow("wfr").params["sigma"] == 0.0 and cf.CellFlow("otcfm").params["sigma"] == 0.1
    assert resolve_method("wfr").needs_delta and resolve_method("otcfm", path="wfr").needs_delta
    assert not resolve_method("otcfm").needs_delta and cf.CellFlow("otcfm", delta=2.0).params["delta"] is None


def test_a_new_coupling_is_a_class_and_a_table_row(monkeypatch):
    class ReversedOT(ExactOTCoupling):
        """Exact OT whose plan is solved from the other side (the same plan, transposed)."""

        def plan(self, x0, x1, a=None, b=None, **solve):
            return super().plan(x1, x0, b, a, **solve).T.tocsr()

    monkeypatch.setitem(COUPLINGS, "reversed", ReversedOT)
    monkeypatch.setitem(METHODS, "reversed_cfm", Method("reversed", "linear", "pairs"))
    course = _course()
    mine = cf.CellFlow("reversed_cfm", n_steps=30, hidden=(16,), sigma=0.0).fit(course, progress=False)
    exact = cf.CellFlow("otcfm", n_steps=30, hidden=(16,), sigma=0.0).fit(course, progress=False)
    np.testing.assert_allclose(mine.history["loss"], exact.history["loss"], rtol=1e-4)


def test_growth_weight_is_gone_from_the_api():
    # velocity and growth are separate networks: a weight on the growth error changed nothing
    with pytest.raises(TypeError, match="growth_weight"):
        cf.CellFlow("wfr", growth_weight=100.0)


@pytest.mark.parametrize("kwargs, message", [
    ({"n_steps": 0}, "n_steps=0"),
    ({"n_steps": -3}, "n_steps=-3"),
    ({"n_steps": 2.5}, "n_steps=2.5"),
    ({"batch_size": 0}, "batch_size=0"),
    ({"sigma": -1.0}, "sigma=-1.0"),
    ({"sigma": float("nan")}, "sigma=nan"),
    ({"lr": 0.0}, "lr=0.0"),
    ({"reg": -0.1}, "reg=-0.1"),
    ({"ema_decay": 1.0}, "ema_decay=1.0"),
    ({"block_size": 1}, "block_size=1"),
    ({"hidden": (200000, 200000)}, "hidden=200000"),
    ({"hidden": ()}, "hidden=()"),
    ({"method": "sbcfm", "sigma": 0.0}, "sigma=0"),
    ({"method": "wfr", "delta": 0.0}, "delta=0.0"),
    ({"method": "wfr", "delta": -1.0}, "delta=-1.0"),
    ({"lr_schedule": "linear"}, "lr_schedule='linear'"),
])
def test_bad_parameters_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        cf.CellFlow(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_says_so():
    with pytest.raises(ValueError, match="sees no CUDA"):
        cf.CellFlow(device="cuda")


def test_a_given_delta_is_kept_in_the_users_units():
    course = _course()
    model = cf.CellFlow("wfr", delta=1.7, n_steps=5, hidden=(8,)).fit(course, progress=False)
    assert model.params["delta"] == 1.7


def test_absurd_prior_growth_is_refused_before_any_work():
    course = _course()
    course.growth = [np.full(60, 1000.0)] * 3
    with pytest.raises(ValueError, match="growth_key"):
        cf.CellFlow("wfr", n_steps=5).fit(course, progress=False)


@pytest.fixture(scope="module")
def trained():
    return cf.CellFlow("wfr", delta=1.0, n_steps=20, hidden=(8, 8)).fit(_course(), progress=False)


def test_times_and_solvers_are_checked(trained):
    x = np.zeros((3, 2))
    with pytest.raises(ValueError, match="times=nan"):
        trained.push(x, 0.0, float("nan"))
    with pytest.raises(ValueError, match="t=inf"):
        trained.velocity(x, np.inf)
    with pytest.raises(ValueError, match="solver='dopri'"):
        trained.push(x, 0.0, 1.0, solver="dopri")
    with pytest.raises(ValueError, match="step_size"):
        trained.push(x, 0.0, 1.0, solver="rk4")
    with pytest.raises(ValueError, match="model.s 2 dimensions"):
        trained.velocity(np.zeros((3, 3)), 0.0)


def _state(model, **changes):
    state = model.to_dict()
    state = {**state, "params": dict(state["params"]), "weights": dict(state["weights"])}
    for key, value in changes.items():
        if "/" in key:
            table, name = key.split("/")
            state[table][name] = value
        else:
            state[key] = value
    return state


@pytest.mark.parametrize("changes, message", [
    ({"version": 1}, "version 1"),
    ({"version": 99}, "upgrade cellflow"),
    ({"scale": 0.0}, "scale 0.0"),
    ({"center": np.array([np.nan, 0.0])}, "'center'"),
    ({"times": np.array([1.0, 0.0, 2.0])}, "not increasing"),
    ({"params/hidden": np.array([200000, 200000])}, "hidden=200000"),
    ({"params/hidden": np.array([8, 9])}, "do not match"),
    ({"params/method": "nope"}, "method='nope'"),
    ({"params/n_steps": np.array(-1)}, "n_steps=-1"),
    ({"params/colour": "red"}, "do not fit"),
    ({"weights": "none"}, "'weights'"),
])
def test_damaged_model_states_are_refused_before_a_network_is_built(trained, changes, message):
    with pytest.raises(ValueError, match=message):
        cf.CellFlow.from_dict(_state(trained, **changes))


def test_nan_weights_and_missing_weights_are_refused(trained):
    name = next(iter(trained.to_dict()["weights"]))
    bad = np.full_like(trained.to_dict()["weights"][name], np.nan)
    with pytest.raises(ValueError, match="not a finite"):
        cf.CellFlow.from_dict(_state(trained, **{f"weights/{name}": bad}))
    state = _state(trained)
    del state["weights"][name]
    with pytest.raises(ValueError, match="do not match"):
        cf.CellFlow.from_dict(state)


def test_a_tampered_model_file_is_refused(trained, tmp_path):
    path = trained.save(tmp_path / "model")
    with np.load(path) as archive:
        flat = dict(archive)
    flat["params/hidden"] = np.array([200000, 200000])
    np.savez(tmp_path / "tampered.npz", **flat)
    with pytest.raises(ValueError, match="hidden=200000"):
        cf.io.load_model(tmp_path / "tampered.npz")
    restored = cf.io.load_model(path)
    np.testing.assert_array_equal(restored.velocity(np.zeros((2, 2)), 0.5), trained.velocity(np.zeros((2, 2)), 0.5))
