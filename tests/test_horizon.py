"""Trust signals of a fit (cellflow.model), their plot and the horizon benchmark, against hand-computed values."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import ot  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import cellflow as cf  # noqa: E402
from cellflow.model import (  # noqa: E402
    HISTORY_KEYS,
    TimeCourse,  # noqa: E402
    horizon,
    horizon_history,
    interval_gain,
)

ROOT = Path(__file__).resolve().parents[1]


def _course(sizes=(30, 25, 35, 20), times=(0.0, 1.0, 3.0, 4.5), seed=0) -> TimeCourse:
    rng = np.random.default_rng(seed)
    populations = [rng.normal([t, -0.5 * t], 1.0, size=(n, 2)).astype(np.float32) for n, t in zip(sizes, times)]
    indices = np.split(np.arange(sum(sizes)), np.cumsum(sizes)[:-1])
    return TimeCourse(np.asarray(times), populations, indices, obs_times=np.repeat(times, sizes))


class Drift:
    """A known flow: every cell moves at ``velocity`` and, with ``growth``, its log-mass grows at ``growth * x_0``."""

    def __init__(self, velocity, growth: float | None = None):
        self.velocity = np.asarray(velocity, dtype=np.float64)
        self.growth = growth
        self.has_growth = growth is not None

    def transport(self, x, times):
        x, elapsed = np.asarray(x, dtype=np.float64), np.asarray(times, dtype=np.float64) - times[0]
        positions = x[None] + elapsed[:, None, None] * self.velocity
        masses = np.exp((self.growth or 0.0) * elapsed[:, None] * x[None, :, 0])
        return positions, masses


class Expansion:
    """The linear flow ``dx/dt = rate (x - centre)``: each interval's map scales offsets by ``exp(rate dt)``."""

    def __init__(self, rate: float, centre=(0.0, 0.0)):
        self.rate, self.centre = rate, np.asarray(centre)

    def transport(self, x, times):
        elapsed = np.asarray(times, dtype=np.float64) - times[0]
        factor = np.exp(self.rate * elapsed)[:, None, None]
        positions = self.centre + (np.asarray(x, dtype=np.float64)[None] - self.centre) * factor
        return positions, np.ones(positions.shape[:2])


def _w1(x, y, weights=None) -> float:
    a = np.full(len(x), 1 / len(x)) if weights is None else weights / weights.sum()
    return float(ot.emd2(a, np.full(len(y), 1 / len(y)), ot.dist(x, y, metric="euclidean")))


def test_horizon_of_a_known_drift_is_the_w1_computed_by_hand():
    course = _course()
    velocity = np.array([0.8, -0.3])
    table = horizon(Drift(velocity), course)
    cells = [p.astype(np.float64) for p in course.populations]
    t = course.times
    pooled = np.concatenate(cells)
    centre = pooled.mean(axis=0)
    data_norm = np.linalg.norm(pooled - centre, axis=1).max()
    assert table.time.tolist() == t[1:].tolist()
    for row, k in zip(table.itertuples(), range(1, len(t))):
        from_first = cells[0] + (t[k] - t[0]) * velocity
        first = _w1(from_first, cells[k])
        previous = _w1(cells[k - 1] + (t[k] - t[k - 1]) * velocity, cells[k])
        assert row.w1_first == pytest.approx(first, rel=1e-9)
        assert row.w1_previous == pytest.approx(previous, rel=1e-9)
        assert row.ratio == pytest.approx(first / previous, rel=1e-9)
        assert row.norm_ratio == pytest.approx(np.linalg.norm(from_first - centre, axis=1).max() / data_norm)
        assert np.isnan(row.mass_error)  # no growth: the masses are no prediction
    assert table.w1_first.iloc[0] == pytest.approx(table.w1_previous.iloc[0])  # one interval either way


def test_horizon_weights_cells_by_their_mass_and_scores_the_mass_ratio():
    course = _course()
    model = Drift([0.5, 0.0], growth=0.3)
    table = horizon(model, course)
    x0, t = course.populations[0].astype(np.float64), course.times
    for row, k in zip(table.itertuples(), range(1, len(t))):
        masses = np.exp(0.3 * (t[k] - t[0]) * x0[:, 0])
        predicted = x0 + (t[k] - t[0]) * np.array([0.5, 0.0])
        assert row.w1_first == pytest.approx(_w1(predicted, course.populations[k].astype(np.float64), masses))
        truth = len(course.populations[k]) / len(x0)
        assert row.mass_error == pytest.approx(abs(masses.mean() - truth) / truth)
    assert table.w1_first.iloc[-1] != pytest.approx(_w1(x0 + (t[-1] - t[0]) * np.array([0.5, 0.0]),
                                                        course.populations[-1].astype(np.float64)))


def test_horizon_subsamples_at_most_max_cells_with_its_seed():
    course = _course(sizes=(60, 50, 70, 40))
    model = Drift([0.8, -0.3])
    full = horizon(model, course)
    small = horizon(model, course, max_cells=20, seed=1)
    assert small.equals(horizon(model, course, max_cells=20, seed=1))
    assert not small.equals(horizon(model, course, max_cells=20, seed=2))
    assert not np.allclose(small.w1_first, full.w1_first)


def test_horizon_of_a_cellflow_with_a_zero_field_leaves_the_cells_where_they_are():
    course = _course()
    model = cf.CellFlow("otcfm", n_steps=5, hidden=(16,), seed=0).fit(course, progress=False)
    with torch.no_grad():
        for parameter in model.net.parameters():
            parameter.zero_()
    table = horizon(model, course)
    cells = [p.astype(np.float64) for p in course.populations]
    for row, k in zip(table.itertuples(), range(1, len(cells))):
        assert row.w1_first == pytest.approx(_w1(cells[0], cells[k]), rel=1e-5)
        assert row.w1_previous == pytest.approx(_w1(cells[k - 1], cells[k]), rel=1e-5)
    assert interval_gain(model, course) == pytest.approx(np.ones(len(cells) - 1), rel=1e-5)


def test_interval_gain_of_the_identity_is_one_and_of_an_expansion_its_factor():
    course = _course()
    assert interval_gain(Drift([0.0, 0.0]), course) == pytest.approx(np.ones(3), rel=1e-12)
    assert interval_gain(Drift([2.0, 1.0]), course) == pytest.approx(np.ones(3), rel=1e-12)  # a shift keeps offsets
    gains = interval_gain(Expansion(0.4, centre=(1.0, -2.0)), course, offset=0.3)
    assert gains == pytest.approx(np.exp(0.4 * np.diff(course.times)), rel=1e-9)


def test_history_has_exactly_the_keys_fit_stores():
    course = _course()
    history = horizon_history(Drift([0.8, -0.3]), course)
    assert tuple(history) == HISTORY_KEYS
    assert all(isinstance(v, np.ndarray) and v.shape == (3,) for v in history.values())
    assert history["horizon_times"].tolist() == course.times[1:].tolist()
    model = Expansion(0.4)
    history, table = horizon_history(model, course, seed=3), horizon(model, course, seed=3)
    assert np.array_equal(history["horizon_w1_previous"], table.w1_previous.to_numpy())
    assert np.array_equal(history["horizon_norm_ratio"], table.norm_ratio.to_numpy())
    assert np.array_equal(history["interval_gain"], interval_gain(model, course, seed=3))


def test_horizon_rejects_a_course_beyond_the_fitted_times():
    course = _course()
    model = Drift([0.0, 0.0])
    model.times = course.times[:-1]
    with pytest.raises(ValueError, match="beyond the model's fitted range"):
        horizon(model, course)
    with pytest.raises(ValueError, match="offset"):
        interval_gain(Drift([0.0, 0.0]), course, offset=0)
    with pytest.raises(TypeError, match="transport"):
        interval_gain(object(), course)


def _model_with_history():
    course = _course()
    model = cf.CellFlow("otcfm", n_steps=5, hidden=(16,), seed=0).fit(course, progress=False)
    model.history.update(horizon_history(Drift([0.8, -0.3]), course))
    return model


def test_plot_draws_both_w1_curves_the_band_and_the_gains():
    model = _model_with_history()
    top, bottom = cf.pl.horizon(model, show=False)
    lines = {line.get_label(): line for line in top.get_lines()}
    first = lines["pushed from the first time point"]
    assert np.allclose(first.get_ydata(), model.history["horizon_w1_first"])
    assert np.allclose(lines["pushed from the time point before"].get_xdata(), model.history["horizon_times"])
    band = top.collections[0].get_paths()[0].vertices[:, 1]
    assert band.max() == pytest.approx(1.3 * model.history["horizon_w1_previous"].max())
    assert np.allclose(bottom.get_lines()[0].get_ydata(), model.history["interval_gain"])
    _, norms = cf.pl.horizon(model, panel="norm_ratio", show=False)
    assert np.allclose(norms.get_lines()[0].get_ydata(), model.history["horizon_norm_ratio"])
    plt.close("all")


def test_every_fit_records_its_horizon_and_the_plot_reads_it_from_the_anndata(tmp_path):
    adata = cf.datasets.simulate(n_cells=40, times=(0.0, 1.0, 2.0), n_genes=3, seed=0)
    model = cf.tl.fit(adata, use_rep="X_pca", n_steps=5, hidden=(16,), progress=False)
    course = cf.read_time_course(adata, "time", "X_pca")
    recorded = {key: adata.uns["cellflow"]["history"][key] for key in HISTORY_KEYS}
    for key, value in horizon_history(model, course).items():  # the fit's own trust signals, stored in uns
        np.testing.assert_allclose(recorded[key], value, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(model.history[key], value, rtol=1e-4, atol=1e-6)
    assert "horizon:" in repr(model) and "interval gain" in repr(model)
    top, _ = cf.pl.horizon(adata, show=False, save=str(tmp_path / "horizon.png"), title="fit")
    assert top.get_title() == "fit" and (tmp_path / "horizon.png").exists()
    for key in HISTORY_KEYS:  # a model saved by a cellflow that recorded no horizon
        del adata.uns["cellflow"]["history"][key], model.history[key]
    with pytest.raises(KeyError, match="refit"):
        cf.pl.horizon(adata, show=False)
    with pytest.raises(KeyError, match="refit"):
        cf.pl.horizon(model, show=False)
    plt.close("all")


def _benchmark_script():
    spec = importlib.util.spec_from_file_location("horizon_benchmark", ROOT / "benchmarks" / "horizon.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # the benchmark script's quick run: every method fitted and scored on both protocols
def test_quick_benchmark_writes_the_horizon_rows_and_section(tmp_path):
    script = _benchmark_script()
    out = tmp_path / "BENCHMARKS.md"
    assert script.main(["--quick", "--methods", "otcfm", "wfr", "--results", str(tmp_path), "--write",
                        "--out", str(out)]) == 0
    rows = pd.concat([pd.read_csv(f) for f in (tmp_path / f"steps-{script.QUICK_STEPS}").glob("*__*.csv")])
    assert list(rows.columns) == script.COLUMNS
    in_sample, held_out = rows[rows.protocol == "in_sample"], rows[rows.protocol == "held_out"]
    assert sorted(in_sample.time.unique()) == [1.0, 2.0, 3.0]
    assert sorted(held_out.time.unique()) == [2.0, 3.0] and (held_out.held_out_time == 2.0).all()
    assert rows[rows.method == "wfr"].mass_error.notna().all() and rows[rows.method == "otcfm"].mass_error.isna().all()
    assert (rows.n_steps == script.QUICK_STEPS).all() and (rows.rollout == "off").all()
    text = out.read_text()
    assert "<!-- horizon:start -->" in text and "| simulate | cellflow wfr | off |" in text
