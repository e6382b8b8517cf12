"""Times that are times: labels read only with a unit of time, the reading recorded, extrapolation warned.

The rules (cellflow/_times.py): a label holds one number with nothing, ``t``/``time``, or a unit of time
around it; other words ("8C": cells per embryo, "stage 3") are refused unless ``time_map`` reads them.
A column mixing durations ("12h", "1d") is converted to its finest unit (hours here); embryonic days,
postnatal days and labels without a unit mix with nothing else and are refused.
"""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import cellflow as cf
from cellflow.cli import main
from cellflow.io import describe_reading, parse_times, read_times

HOURS = {0.0: "0h", 1.0: "12h", 2.0: "1d"}  # a mixed-unit column, read in hours: 0, 12, 24


# -- what is read, and how -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "labels, expected, unit",
    [
        (["day 1", "day 2"], [1.0, 2.0], "days"),
        (["D2", "D4"], [2.0, 4.0], "days"),
        (["12h", "36h"], [12.0, 36.0], "hours"),
        (["E10.5", "E12.5"], [10.5, 12.5], "embryonic days"),
        (["P3", "P7"], [3.0, 7.0], "postnatal days"),
        (["week 2", "week 3"], [2.0, 3.0], "weeks"),
        (["30 min", "90 min"], [30.0, 90.0], "minutes"),
        (["24 hpf", "48 hpf"], [24.0, 48.0], "hours"),
        (["t0", "t=1"], [0.0, 1.0], ""),
    ],
)
def test_units_of_time_are_recognised(labels, expected, unit):
    times, reading = read_times(pd.Series(labels).astype("category"), "stage")
    np.testing.assert_allclose(times, expected)
    assert reading.unit == unit and reading.source == "labels"
    assert list(reading.labels) == labels and list(reading.times) == expected


@pytest.mark.parametrize("labels", [["8C", "16C", "64C"], ["2-cell", "4-cell"], ["stage 3", "stage 4"]])
def test_labels_that_count_something_else_are_refused(labels):
    with pytest.raises(ValueError, match=rf"{labels[0]!r} of obs\['stage'\].*not a unit of time.*time_map="):
        parse_times(pd.Series(labels), "stage")


def test_cell_counts_are_read_by_time_map():
    labels = pd.Series(["8C", "16C", "64C", "8C"])
    divisions = {"8C": 3, "16C": 4, "64C": 6}  # cell counts as divisions since the zygote
    times, reading = read_times(labels, "stage", divisions)
    np.testing.assert_allclose(times, [3, 4, 6, 3])
    assert reading.source == "time_map" and reading.unit == "" and reading.labels == ("8C", "16C", "64C")


def test_a_mixed_duration_column_is_read_in_its_finest_unit():
    times, reading = read_times(pd.Series(["12h", "1d", "2d", "1 week"]), "age")
    np.testing.assert_allclose(times, [12.0, 24.0, 48.0, 168.0])
    assert reading.unit == "hours"
    with pytest.raises(ValueError, match="'24h' and '1d' .* both read as time 24"):
        parse_times(pd.Series(["24h", "1d"]), "age")


@pytest.mark.parametrize("labels, message", [
    (["E18.5", "P0"], "mixes embryonic days .*'E18.5'.* and postnatal days .*'P0'.*time_map="),
    (["0", "12h"], "mixes labels without a unit .*'0'.* and with one .*'12h'.*time_map="),
    (["day 3", "E10.5"], "mixes days .* and embryonic days"),
])
def test_units_that_do_not_convert_are_refused(labels, message):
    with pytest.raises(ValueError, match=message):
        parse_times(pd.Series(labels), "age")


def test_numbers_stay_as_they_are():
    times, reading = read_times(pd.Series([2.0, 0.0, 1.5]), "time")
    np.testing.assert_allclose(times, [2.0, 0.0, 1.5])
    assert reading.source == "numbers" and reading.unit == "" and reading.labels == ("0", "1.5", "2")
    np.testing.assert_allclose(parse_times(pd.Series(["10", "10.5", "11"]).astype("category"), "day"), [10, 10.5, 11])


def test_the_shipped_datasets_still_read():
    adata = cf.datasets.simulate(n_cells=30, times=(0.0, 1.0), seed=0)
    assert read_times(adata.obs["time"], "time")[1].source == "numbers"


# -- the fit records the reading and prints it ---------------------------------------------------
@pytest.fixture(scope="module")
def hours_fit(small_course, quick_fit):
    adata = small_course()
    adata.obs["age"] = pd.Categorical(adata.obs["time"].map(HOURS))
    model = cf.tl.fit(adata, time_key="age", **quick_fit)
    return adata, model


def test_fit_stores_and_prints_the_reading(hours_fit, tmp_path):
    adata, model = hours_fit
    np.testing.assert_array_equal(model.times, [0.0, 12.0, 24.0])
    reading = adata.uns["cellflow"]["time_reading"]
    assert reading["unit"] == "hours" and list(reading["labels"]) == ["0h", "12h", "1d"]
    np.testing.assert_allclose(reading["times"], [0.0, 12.0, 24.0])
    assert "read from labels (hours): '0h' -> 0, '12h' -> 12, '1d' -> 24" in repr(model)
    adata.write_h5ad(tmp_path / "fit.h5ad")
    back = ad.read_h5ad(tmp_path / "fit.h5ad")
    assert "'1d' -> 24" in repr(cf.tl.load_model(back)) and describe_reading(back.uns["cellflow"]["time_reading"])


def test_the_cli_fit_prints_the_reading(small_course, tmp_path, capsys):
    adata = small_course()
    adata.obs["age"] = adata.obs["time"].map({0.0: "day 0", 1.0: "day 1", 2.0: "day 2"})
    adata.write_h5ad(tmp_path / "in.h5ad")
    assert main(["fit", str(tmp_path / "in.h5ad"), "--time-key", "age", "--steps", "5",
                 "--out", str(tmp_path / "out.h5ad")]) == 0
    assert "times of obs['age'] read from labels (days): 'day 0' -> 0" in capsys.readouterr().out


def test_fit_refuses_cell_count_labels(small_course, quick_fit):
    adata = small_course()
    adata.obs["stage"] = adata.obs["time"].map({0.0: "8C", 1.0: "16C", 2.0: "32C"})
    with pytest.raises(ValueError, match=r"'8C' of obs\['stage'\].*time_map="):
        cf.tl.fit(adata, time_key="stage", **quick_fit)


# -- extrapolation warns -----------------------------------------------------------------------------
def _warned_here(record) -> None:
    """The ExtrapolationWarning points at the line of the test that called the tool."""
    said = [w for w in record if issubclass(w.category, cf.ExtrapolationWarning)]
    assert said and all(w.filename == __file__ for w in said)


@pytest.mark.filterwarnings("ignore::cellflow.OffDataWarning")
def test_interpolating_beyond_the_measured_times_says_how_far(hours_fit):
    adata, _ = hours_fit
    with pytest.warns(cf.ExtrapolationWarning, match=r"time 36 lies 12 hours after the last measured time 24 "
                                                     r"\(1 times the mean interval of 12 hours") as record:
        cf.tl.interpolate(adata, 12.0, 36.0)
    _warned_here(record)
    with pytest.warns(cf.ExtrapolationWarning, match=r"time -30 lies 30 hours before the first measured time 0 "
                                                     r"\(2.5 times"):
        cf.tl.interpolate(adata, 0.0, -30.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", cf.ExtrapolationWarning)
        cf.tl.interpolate(adata, 0.0, 18.0)  # inside the measured range: no warning


@pytest.mark.filterwarnings("ignore::cellflow.OffDataWarning")
@pytest.mark.filterwarnings("ignore:pull.*that no cell of the earlier time reaches")
def test_push_pull_trajectories_and_trends_warn_beyond_the_range(hours_fit):
    adata, _ = hours_fit
    left = ("side", "left")
    with pytest.warns(cf.ExtrapolationWarning, match="push: time 48 lies 24 hours after") as record:
        cf.tl.push(adata, left, 0.0, [12.0, 48.0])
    _warned_here(record)
    with pytest.warns(cf.ExtrapolationWarning, match="pull: time -6 lies 6 hours before") as record:
        cf.tl.pull(adata, left, 12.0, [0.0, -6.0])
    _warned_here(record)
    with pytest.warns(cf.ExtrapolationWarning, match="trajectories: time 30 lies 6 hours after") as record:
        cf.tl.trajectories(adata, adata.obs_names[:2], [0.0, 30.0])
    _warned_here(record)
    with pytest.warns(cf.ExtrapolationWarning, match="gene_trends: time 30") as record:
        cf.tl.gene_trends(adata, adata.var_names[0], groupby="side", group="left", time=0.0, times=[0.0, 30.0])
    _warned_here(record)
