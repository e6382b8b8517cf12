"""Model files that execute no code when loaded: plain arrays in a NumPy ``.npz`` archive.

The file holds :meth:`cellflow.CellFlow.to_dict` flattened to one array per entry and is read
with ``numpy.load(..., allow_pickle=False)``; its contents are checked (version, shapes,
sizes, finiteness) before any network is built.
"""

from __future__ import annotations

from pathlib import Path

from ..model import CellFlow


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
    return model.save(path)


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
    return CellFlow.load(path, device=device)
