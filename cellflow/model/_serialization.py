"""A trained model as plain arrays: checks of its contents, and ``.npz`` files that run no code.

A model's state (:meth:`cellflow.CellFlow.to_dict`) is a nested dict of numbers, strings and
arrays. A file holds it flattened to one array per entry (nested keys joined with ``/``,
strings and scalars as 0-d arrays) and is read with ``numpy.load(..., allow_pickle=False)``,
so reading a file can never run code from it. Whatever the source (a file, ``adata.uns``),
:func:`check_state` checks the contents before any network is built.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ._field import TrainedField

FORMAT = "cellflow-model"
# 2: the clock's units come from the training targets (version 1: from the interval lengths);
# 3: the user's settings ("config") are stored beside the settings the fit used ("params")
VERSION = 3
READABLE = (2, 3)
_MARK = "__format__"

ModelT = TypeVar("ModelT", bound=TrainedField)


def _flatten(state: Mapping[Any, Any], prefix: str = "") -> dict[str, np.ndarray]:
    flat = {}
    for name, value in state.items():
        name = str(name)
        if "/" in name:
            raise ValueError(f"model entry {prefix + name!r} has a '/' in its name, which a model file cannot hold")
        path = prefix + name
        if isinstance(value, Mapping):
            flat.update(_flatten(value, path + "/"))
            continue
        array = np.asarray(value)
        if array.dtype == object:
            raise TypeError(
                f"model entry {path!r} is a {type(value).__name__}, not a number, string or array; "
                "a model file holds plain arrays only"
            )
        flat[path] = array
    return flat


def _unflatten(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for path, array in flat.items():
        *parents, leaf = path.split("/")
        node = state
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = str(array) if array.dtype.kind == "U" and array.ndim == 0 else array
    return state


def write(state: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``state`` to a ``.npz`` file (``.npz`` appended when missing); returns the path."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    flat = _flatten(state)
    flat[_MARK] = np.array(FORMAT)
    # numpy's stubs read the entries as possibly its allow_pickle= keyword; the names are entries of the state
    np.savez(path, **flat)  # type: ignore[arg-type]
    return path


def read(path: str | Path) -> dict[str, Any]:
    """Read a state written by :func:`write` (no code in the file is executed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {str(path)!r} does not exist")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{str(path)!r} is not a .npz archive; write model files with cellflow.io.save_model")
    try:
        with np.load(path, allow_pickle=False) as archive:
            flat = {name: archive[name] for name in archive.files}
    except ValueError as err:  # numpy refuses pickled object arrays
        raise ValueError(f"{str(path)!r} holds Python objects; a cellflow model file holds plain arrays only") from err
    if str(flat.pop(_MARK, "")) != FORMAT:
        raise ValueError(f"{str(path)!r} is not a cellflow model file (write one with cellflow.io.save_model)")
    return _unflatten(flat)


def _array(state: Mapping[str, Any], name: str, ndim: int) -> np.ndarray:
    if name not in state:
        raise ValueError(f"the model state has no {name!r}; it was not written by cellflow (refit the model)")
    try:
        array = np.asarray(state[name], dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"the model state's {name!r} is not numeric; refit the model") from None
    if array.ndim != ndim or not np.isfinite(array).all():
        raise ValueError(f"the model state's {name!r} must be a finite {ndim}-d array, got shape {array.shape}; "
                         "refit the model")
    return array


def _plain(table: Mapping[Any, Any]) -> dict[str, Any]:
    """Entries of a table of settings as plain Python values."""
    out = {}
    for name, value in table.items():
        value = np.asarray(value)
        out[str(name)] = value.tolist() if value.ndim else value.item()
    return out


def check_state(state: object) -> dict[str, Any]:
    """The parts of a model state, checked: version, params, center, scale, times, weights.

    Returns
    -------
    ``dict(params=..., config=..., center=..., scale=..., times=..., clock_units=..., weights=..., history=...)`` with
    arrays as float64 (weights as float32) and params as plain Python values.

    Raises
    ------
    ValueError
        Naming the first entry that is missing, of the wrong kind, not finite, or from a
        model version this cellflow does not read.
    """
    if not isinstance(state, Mapping):
        raise ValueError(f"a model state is a dict of arrays, got {type(state).__name__}; refit the model")
    version = state.get("version")
    version = int(np.asarray(version)) if version is not None and np.asarray(version).dtype.kind in "iuf" else 1
    if version not in READABLE:
        why = ("an earlier cellflow, whose internal clock differed" if version < VERSION
               else "a newer cellflow: upgrade cellflow")
        raise ValueError(f"the model is of version {version}, written by {why}; this cellflow reads version "
                         f"{VERSION}: refit the model")
    for name in ("params", "weights"):
        if not isinstance(state.get(name), Mapping):
            raise ValueError(f"the model state has no {name!r} table; it was not written by cellflow (refit)")
    center = _array(state, "center", 1)
    times = _array(state, "times", 1)
    scale = float(_array(state, "scale", 0))
    if center.size < 1 or not scale > 0:
        raise ValueError(f"the model state has {center.size} dimensions and scale {scale}; refit the model")
    if times.size < 2 or not np.all(np.diff(times) > 0):
        raise ValueError(f"the model state's times {times.tolist()} are not increasing; refit the model")
    units = _array(state, "clock_units", 2)
    if units.shape[0] != times.size - 1 or units.shape[1] not in (1, 2) or not (units > 0).all():
        raise ValueError(f"the model state's clock units (shape {units.shape}) must be positive, one row per "
                         f"interval of its {times.size} times; refit the model")
    weights = {}
    for name, value in state["weights"].items():
        array = np.asarray(value)
        if array.dtype.kind not in "fiu" or not np.isfinite(array).all():
            raise ValueError(f"the model's weight {name!r} is not a finite numeric array; refit the model")
        weights[str(name)] = array.astype(np.float32)
    params = _plain(state["params"])
    config = _plain(state["config"]) if isinstance(state.get("config"), Mapping) else dict(params)
    history = state.get("history", {})
    history = {str(k): np.asarray(v) for k, v in history.items()} if isinstance(history, Mapping) else {}
    return dict(params=params, config=config, center=center, scale=scale, times=times, clock_units=units,
                weights=weights, history=history)


def model_state(model: TrainedField) -> dict[str, Any]:
    """Everything needed to restore a fitted :class:`cellflow.CellFlow`, as plain scalars, strings and arrays.

    Returns
    -------
    ``version``, ``config`` (the user's settings), ``params`` (the settings the fit used), ``center``,
    ``scale``, ``times``, ``clock_units``, ``n_dims``, ``weights`` and ``history``.
    """

    def plain(table: Mapping[str, Any]) -> dict[str, Any]:
        return {k: (np.array(v) if isinstance(v, (list, tuple)) else v) for k, v in table.items() if v is not None}

    return {
        "version": VERSION,
        "config": plain(model.config.as_dict()),
        "params": plain(model.params),
        "center": model.center,
        "scale": model.scale,
        "times": model.times,
        "clock_units": model.clock.units,
        "n_dims": int(model.center.size),
        "weights": {k: v.detach().cpu().numpy() for k, v in model._fitted_net().state_dict().items()},
        "history": dict(model.history),
    }


def restore(cls: Callable[..., ModelT], state: object, device: str = "auto") -> ModelT:
    """A model of class ``cls`` (:class:`cellflow.CellFlow`) from a state of :func:`model_state`, checked.

    Returns
    -------
    The model, with its network on ``device``.
    """
    import torch

    from ..fields import Clock
    from ._config import Config, Resolved

    parts = check_state(state)
    config, params = dict(parts["config"]), parts["params"]
    try:
        used = Config.create(**params)  # the settings the fit used are checked as settings too
        model = cls(**config, device=device)
    except TypeError as err:
        raise ValueError(f"the model's parameters do not fit this cellflow ({err}); refit the model") from None
    if used.hidden == "auto" or used.batch_size == "auto":
        raise ValueError("the model state does not say which widths and batch size the fit used; refit the model")
    model.resolved = Resolved(
        delta=used.delta, entropy_rate=used.entropy_rate, batch_size=used.batch_size, hidden=used.hidden,
        center=parts["center"], scale=parts["scale"], times=parts["times"],
        clock=Clock(parts["times"], parts["clock_units"], continuous=model.method.path_class.through_knots),
        reflow=used.reflow,
    )
    with torch.device("meta"):  # shapes only: nothing is allocated
        expected = {k: tuple(v.shape) for k, v in model._network(model.center.size, model.resolved.hidden)
                    .state_dict().items()}
    found = {k: tuple(v.shape) for k, v in parts["weights"].items()}
    if model.has_score and not any(k.startswith("score.") for k in found):
        raise ValueError("the model has no score network: an earlier cellflow saved it, before paths with "
                         f"bridge noise (path {params['path']!r}, sigma={params.get('sigma') or 0.0:g}) learned one; "
                         "refit the model")
    if found != expected:
        wrong = sorted(set(found) ^ set(expected)) or [k for k in expected if found[k] != expected[k]]
        raise ValueError(f"the model's weights do not match its parameters (first mismatch: {wrong[0]!r}); "
                         "the state was edited or damaged: refit the model")
    net = model._network(model.center.size, model.resolved.hidden)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in parts["weights"].items()})
    model.net = net.to(model.device).eval()
    model.history = parts["history"]
    return model
