"""The conventions of the public API, checked mechanically over the package faces.

- every public function of ``cellflow.pp``, ``tl``, ``pl``, ``io`` and ``datasets`` (and the
  command's entry ``cellflow.cli.main``) has a return annotation and, unless it returns ``None``,
  a numpydoc ``Returns`` section;
- no public parameter (nor attribute of a returned result) uses a retired name or a British
  spelling; a function that writes keys (``key_added``) takes ``copy=`` and documents it;
- every plot returns its axes when ``show=False``;
- the retired keyword names still work for one release, with a ``FutureWarning`` naming both.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402

import cellflow as cf  # noqa: E402
from cellflow import cli  # noqa: E402
from cellflow.tl._mapping import Moved  # noqa: E402
from cellflow.tl._trajectories import Trajectories  # noqa: E402
from cellflow.tl._transitions import Transitions  # noqa: E402

FACES = {"pp": cf.pp, "tl": cf.tl, "pl": cf.pl, "io": cf.io, "datasets": cf.datasets}

#: Retired names and the canonical name that replaced them.
RETIRED = {
    "fit_key": "key",
    "t1": "from_time",
    "t2": "to_time",
    "t_from": "from_time",
    "t_to": "to_time",
    "random_state": "seed",
    "label_key": "groupby",
}
#: British spellings: public names use American ones, as scanpy does (``normalize``, ``neighbors``, ``color``).
BRITISH = re.compile(r"neighbour|colour|normalis|centre|licence|behaviour|organis(?!m)|initialis|visualis|favour")

#: Returned result objects whose attributes are public names too.
RESULTS = (Transitions, Moved, Trajectories)


def _public_functions():
    found = [(f"cellflow.{face}.{name}", getattr(module, name))
             for face, module in FACES.items() for name in module.__all__]
    found = [(name, obj) for name, obj in found if inspect.isfunction(obj)]
    return [*found, ("cellflow.cli.main", cli.main)]


PUBLIC = _public_functions()
IDS = [name for name, _ in PUBLIC]


def _returns_none(function) -> bool:
    return inspect.signature(function).return_annotation in (None, "None")


def _sections(function) -> set[str]:
    """The numpydoc section headings of the docstring (a title underlined by dashes)."""
    lines = inspect.cleandoc(function.__doc__ or "").splitlines()
    return {lines[i].strip() for i in range(len(lines) - 1) if re.fullmatch(r"-{3,}", lines[i + 1].strip())}


def _documented(function) -> set[str]:
    """The parameter names that the numpydoc Parameters section describes (``a, b`` lines count each)."""
    lines = inspect.cleandoc(function.__doc__ or "").splitlines()
    names, inside = set(), False
    for line, below in zip(lines, [*lines[1:], ""]):
        if re.fullmatch(r"-{3,}", below.strip()):
            inside = line.strip() == "Parameters"
        elif inside and line and not line.startswith(" ") and not re.fullmatch(r"-{3,}", line.strip()):
            names.update(name.strip().lstrip("*") for name in line.split(","))
    return names


def test_the_faces_list_functions():
    assert len(PUBLIC) > 30
    assert {"cellflow.tl.fit", "cellflow.pl.velocity", "cellflow.pp.score_growth", "cellflow.io.read_time_course",
            "cellflow.datasets.simulate"} <= set(IDS)


@pytest.mark.parametrize("name, function", PUBLIC, ids=IDS)
def test_return_annotation_and_returns_section(name, function):
    annotation = inspect.signature(function).return_annotation
    assert annotation is not inspect.Signature.empty, f"{name} has no return annotation"
    if not _returns_none(function):
        assert "Returns" in _sections(function), f"{name} has no numpydoc Returns section"


@pytest.mark.parametrize("name, function", PUBLIC, ids=IDS)
def test_parameters_have_canonical_names(name, function):
    for parameter in inspect.signature(function).parameters:
        assert parameter not in RETIRED, f"{name}({parameter}=): use {RETIRED[parameter]}="
        assert not BRITISH.search(parameter), f"{name}({parameter}=): use the American spelling"
        assert "seeds" == parameter or "seed" == parameter or "seed" not in parameter, name


@pytest.mark.parametrize("result", RESULTS, ids=[r.__name__ for r in RESULTS])
def test_result_attributes_have_canonical_names(result):
    for field in dataclasses.fields(result):
        assert field.name not in RETIRED and not BRITISH.search(field.name), f"{result.__name__}.{field.name}"


@pytest.mark.parametrize("name, function", PUBLIC, ids=IDS)
def test_writers_take_copy(name, function):
    parameters = inspect.signature(function).parameters
    if "key_added" not in parameters:
        assert "copy" not in parameters, f"{name} writes nothing, so it takes no copy="
        return
    assert "copy" in parameters and parameters["copy"].kind is inspect.Parameter.KEYWORD_ONLY, name
    assert "copy" in _documented(function) and "copy=True" in function.__doc__, f"{name} does not document copy="


def test_renamed_keywords_are_shims_to_the_new_names():
    shims = [(name, function) for name, function in PUBLIC if getattr(function, "renamed_arguments", None)]
    assert {name for name, _ in shims} >= {"cellflow.tl.transitions", "cellflow.tl.transfer_labels",
                                           "cellflow.pp.score_growth", "cellflow.pl.transitions"}
    for name, function in shims:
        parameters = inspect.signature(function).parameters
        for old, new in function.renamed_arguments.items():
            assert old not in parameters and new in parameters, (name, old, new)
            assert RETIRED[old] == new, (name, old, new)


# -- calls on a small fitted time course ------------------------------------------------------------
@pytest.fixture(scope="module")
def course():
    """60 cells per time at 0, 1, 2 with growth, a ``branch`` label, and a small WFR fit (seconds)."""
    adata = cf.datasets.simulate(n_cells=60, times=(0.0, 1.0, 2.0), growth_scale=0.5, n_genes=8, seed=0)
    adata.obs["branch"] = pd.Categorical(np.where(adata.obsm["X_pca"][:, 1] > 0, "up", "down"))
    cf.tl.fit(adata, "time", "X_pca", "wfr", n_steps=60, hidden=(16, 16), batch_size=32, rollout=False, seed=0,
              progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # off-data warnings of a model this short
        cf.tl.fate(adata, 0.0, 1.0, "branch", progress=False)
    return adata


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def _plot_calls(adata):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        predicted = cf.tl.interpolate(adata, 0.0, 0.5)
        trends = cf.tl.gene_trends(adata, "gene_0", groupby="branch", group="up", time=0.0, n_points=5)
    return {
        "velocity": lambda: cf.pl.velocity(adata, show=False),
        "growth": lambda: cf.pl.growth(adata, show=False),
        "interpolation": lambda: cf.pl.interpolation(adata, predicted, show=False),
        "fate": lambda: cf.pl.fate(adata, argmax=True, show=False),
        "gene_trends": lambda: cf.pl.gene_trends(trends, show=False),
        "horizon": lambda: cf.pl.horizon(adata, show=False),
        "transitions": lambda: cf.pl.transitions(adata, 0.0, 1.0, "branch", show=False),
        "sankey": lambda: cf.pl.sankey(adata, [0.0, 1.0, 2.0], "branch", show=False),
        "loss": lambda: cf.pl.loss(adata, show=False),
    }


def test_every_plot_returns_its_axes(course):
    calls = _plot_calls(course)
    assert set(calls) == set(cf.pl.__all__), "a plot of cellflow.pl is not checked here"
    for name, call in calls.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            axes = call()
        panels = axes if isinstance(axes, list) else [axes]
        assert panels and all(isinstance(ax, Axes) for ax in panels), f"cellflow.pl.{name} returned {axes!r}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        several = cf.pl.fate(course, show=False)  # one panel per group: a list
        assert isinstance(several, list) and len(several) == 2 and all(isinstance(ax, Axes) for ax in several)
        assert cf.pl.loss(course, show=True) is None  # shown: nothing returned, as in scanpy


def _quiet_call(function, *args, **kwargs):
    """Call with the warnings of a short model silenced, returning the result and the FutureWarnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = function(*args, **kwargs)
    future = [w for w in caught if issubclass(w.category, FutureWarning)]
    assert all(w.filename == __file__ for w in future), "a FutureWarning does not point at the caller's line"
    return result, [str(w.message) for w in future]


def test_old_time_names_of_transitions_still_work(course):
    new, none = _quiet_call(cf.tl.transitions, course, from_time=0.0, to_time=1.0, groupby="branch", progress=False)
    old, said = _quiet_call(cf.tl.transitions, course, t1=0.0, t2=1.0, groupby="branch", progress=False)
    assert not none
    assert len(said) == 2 and "t1=" in said[0] and "from_time=" in said[0] and "t2=" in said[1]
    pd.testing.assert_frame_equal(old.counts, new.counts)
    assert new.coupling.uns["cellflow_coupling"]["from_time"] == 0.0
    for old_name, new_name in [("t1", "from_time"), ("t2", "to_time"), ("row_normalised", "row_normalized"),
                               ("column_normalised", "column_normalized")]:
        with pytest.warns(FutureWarning, match=f"Transitions.{old_name} is renamed Transitions.{new_name}"):
            value = getattr(new, old_name)
        assert value is getattr(new, new_name)
    with pytest.raises(TypeError, match="got both t1= and from_time="):
        cf.tl.transitions(course, t1=0.0, from_time=0.0, to_time=1.0)
    axes, said = _quiet_call(cf.pl.transitions, course, t1=0.0, t2=1.0, groupby="branch", show=False)
    assert isinstance(axes, Axes) and len(said) == 2 and "cellflow.pl.transitions" in said[0]


def test_old_name_of_transfer_labels_still_works(course):
    new, none = _quiet_call(cf.tl.transfer_labels, course, "branch", 0.0, 1.0, key_added="new", progress=False)
    old, said = _quiet_call(cf.tl.transfer_labels, course, label_key="branch", from_time=0.0, to_time=1.0,
                            key_added="old", progress=False)
    assert not none and len(said) == 1 and "label_key=" in said[0] and "groupby=" in said[0]
    pd.testing.assert_frame_equal(old, new)


def test_old_names_of_score_growth_and_gene_trends_still_work(course):
    adata = course.copy()
    markers = dict(proliferation_genes=["gene_0", "gene_1", "gene_2"], apoptosis_genes=["gene_3", "gene_4"],
                   min_genes=1)
    _quiet_call(cf.pp.score_growth, adata, seed=3, key_added="new", **markers)
    _, said = _quiet_call(cf.pp.score_growth, adata, random_state=3, key_added="old", **markers)
    assert len(said) == 1 and "random_state=" in said[0] and "seed=" in said[0]
    np.testing.assert_array_equal(adata.obs["old_growth_prior"], adata.obs["new_growth_prior"])

    follow = dict(groupby="branch", group="up", time=0.0, n_points=4)
    new, none = _quiet_call(cf.tl.gene_trends, course, "gene_0", expression="neighbors", **follow)
    old, said = _quiet_call(cf.tl.gene_trends, course, "gene_0", expression="neighbours", **follow)
    assert not none and len(said) == 1 and 'expression="neighbors"' in said[0]
    pd.testing.assert_frame_equal(old, new)


def test_ancestors_reads_times_like_pull(course):
    """``from_time`` is the time of the cells the tool starts from, for ancestors as for pull."""
    table, _ = _quiet_call(cf.tl.ancestors, course, 1.0, 0.0, "branch", progress=False)
    by_name, _ = _quiet_call(cf.tl.ancestors, course, from_time=1.0, to_time=0.0, groupby="branch",
                             key_added="by_name", progress=False)
    pd.testing.assert_frame_equal(table, by_name)
    at_one = course.obs["time"].to_numpy() == 1.0
    assert table[at_one].notna().all().all() and table[~at_one].isna().all().all()
    assert course.uns["cellflow_ancestors_params"]["from_time"] == 1.0
    with pytest.raises(ValueError, match="since cellflow 0.2 ancestors, like pull"):
        cf.tl.ancestors(course, to_time=1.0, from_time=0.0, groupby="branch", progress=False)
    pulled, _ = _quiet_call(cf.tl.pull, course, ("branch", "up"), 1.0, 0.0, progress=False)
    assert pulled.from_time == 1.0
