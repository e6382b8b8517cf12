"""Model files that execute no code when loaded: plain arrays in a NumPy ``.npz`` archive.

The file holds :meth:`cellflow.CellFlow.to_dict` flattened to one array per entry (nested keys
joined with ``/``, strings and scalars as 0-d arrays) and is read with
``numpy.load(..., allow_pickle=False)``, so loading a file can never run code from it.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from .model import CellFlow

FORMAT = "cellflow-model"
VERSION = 1
_MARK = "__format__"
_VERSION = "__version__"


def _flatten(state: dict, prefix: str = "") -> dict[str, np.ndarray]:
    flat = {}
    for name, value in state.items():
        name = str(name)
        if "/" in name:
            raise ValueError(f"model entry {prefix + name!r} has a '/' in its name, which a model file cannot hold")
        path = prefix + name
        if isinstance(value, dict):
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


def _unflatten(flat: dict[str, np.ndarray]) -> dict:
    state: dict = {}
    for path, array in flat.items():
        *parents, leaf = path.split("/")
        node = state
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = str(array) if array.dtype.kind == "U" and array.ndim == 0 else array
    return state


def save_model(model: CellFlow, path: str | Path) -> Path:
    """Write a trained model to a ``.npz`` file.

    Parameters
    ----------
    model
        A trained :class:`cellflow.CellFlow` (e.g. returned by :func:`cellflow.tl.fit`, or
        :func:`cellflow.tl.load_model`).
    path
        File to write; ``.npz`` is appended when the name does not end with it.

    Returns
    -------
    The path written.
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    flat = _flatten(model.to_dict())
    flat[_MARK] = np.array(FORMAT)
    flat[_VERSION] = np.array(VERSION)
    np.savez(path, **flat)
    return path


def load_model(path: str | Path, device: str = "auto") -> CellFlow:
    """Read a model written by :func:`save_model` (no code in the file is executed).

    Parameters
    ----------
    path
        The ``.npz`` file.
    device
        Where to put the network: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ...

    Returns
    -------
    The model, ready to use (velocity, growth, push, transport).
    """
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
    version = int(flat.pop(_VERSION))
    if version > VERSION:
        raise ValueError(
            f"{str(path)!r} is a model file of format version {version}; this cellflow reads up to {VERSION}: "
            "upgrade cellflow"
        )
    return CellFlow.from_dict(_unflatten(flat), device=device)
