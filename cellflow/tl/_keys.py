"""The keys cellflow writes into an AnnData, and the fit state it reads back.

A fit stores its state in ``adata.uns[fit_key]`` (``fit_key`` is the ``key_added`` of
:func:`cellflow.tl.fit`), with a ledger ``written_keys``: the ``"store/name"`` strings
(``"obsm/cellflow_velocity_pca"``, ``"obs/cellflow_growth_rate"``, ``"uns/cellflow_velocity_params"``,
...) of every key written by that fit and by the analyses of its model. Every writer first
claims all the keys it will write, before it changes anything, and records them once written.
A key may be written when it does not exist, when the ledger of the same ``fit_key`` lists it,
or when the caller passes ``overwrite=True``; ``uns[fit_key]`` itself may be replaced when it
holds a fit state, or with ``overwrite=True``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from anndata import AnnData

STORES = ("obs", "var", "obsm", "layers", "uns")
FIT_FIELDS = ("use_rep", "time_key")


def is_fit_state(value) -> bool:
    """Whether ``value`` is the state a fit stores in ``uns``: a mapping with a ledger and parameters."""
    return isinstance(value, Mapping) and "written_keys" in value and "params" in value


def fit_state(adata: AnnData, key: str) -> Mapping:
    """The state that :func:`cellflow.tl.fit` stored in ``adata.uns[key]``.

    Returns
    -------
    ``adata.uns[key]``, once it is known to be a mapping with the fields that name the time
    course (the model's own entries are checked when it is restored); a ``KeyError`` names
    what is missing, a ``ValueError`` an entry that is not a mapping.
    """
    if key not in adata.uns:
        raise KeyError(
            f"adata.uns[{key!r}] does not exist: run cellflow.tl.fit first (or pass key= the key_added of the fit)"
        )
    state = adata.uns[key]
    if not isinstance(state, Mapping):
        raise ValueError(
            f"adata.uns[{key!r}] is a {type(state).__name__}, not the mapping cellflow.tl.fit stores; "
            "pass key= the key_added of the fit, or fit again"
        )
    for field in FIT_FIELDS:
        if field not in state:
            raise KeyError(
                f"adata.uns[{key!r}] has no {field!r}, so it was not written by cellflow.tl.fit; "
                "pass key= the key_added of the fit, or fit again"
            )
    return state


def written_keys(adata: AnnData, fit_key: str) -> list[str]:
    """The ledger of ``fit_key``: the ``"store/name"`` keys it recorded (empty without a fit state)."""
    state = adata.uns.get(fit_key)
    if not is_fit_state(state):
        return []
    return [str(store_key) for store_key in np.atleast_1d(state["written_keys"])]


def exists(adata: AnnData, store_key: str) -> bool:
    """Whether ``"store/name"`` is a key of ``adata`` (never for a store cellflow does not write)."""
    store, _, name = store_key.partition("/")
    if store not in STORES:
        return False
    if store in ("obs", "var"):
        return name in getattr(adata, store).columns
    return name in getattr(adata, store).keys()


def claim(adata: AnnData, fit_key: str, store_keys: Iterable[str], overwrite: bool) -> None:
    """Raise a ``ValueError`` unless every key of ``store_keys`` may be written for ``fit_key``.

    Parameters
    ----------
    adata
        The AnnData to write into; it is not changed.
    fit_key
        The ``key_added`` of the fit whose ledger will list the keys.
    store_keys
        ``"store/name"`` keys; ``"uns/{fit_key}"`` stands for the fit state itself.
    overwrite
        Allow replacing keys that the ledger of ``fit_key`` does not list.
    """
    ours = set(written_keys(adata, fit_key))
    for store_key in store_keys:
        store, _, name = store_key.partition("/")
        if store_key == f"uns/{fit_key}":
            _claim_state(adata, fit_key, overwrite)
        elif exists(adata, store_key) and store_key not in ours and not overwrite:
            raise ValueError(
                f"adata.{store}[{name!r}] already exists and was not written by cellflow under "
                f"uns[{fit_key!r}]; pass key_added='another_name' to write elsewhere, or overwrite=True to replace it"
            )


def _claim_state(adata: AnnData, fit_key: str, overwrite: bool) -> None:
    """Raise unless ``uns[fit_key]`` is absent, holds a fit state, or may be overwritten."""
    if fit_key not in adata.uns or overwrite or is_fit_state(adata.uns[fit_key]):
        return
    entry = adata.uns[fit_key]
    what = f"a {type(entry).__name__}"
    if isinstance(entry, Mapping):
        what = "a mapping without 'written_keys' and 'params'"
    raise ValueError(
        f"adata.uns[{fit_key!r}] already exists and holds {what}, not a cellflow fit; "
        "pass key_added='another_name' to write elsewhere, or overwrite=True to replace it"
    )


def remove_written(adata: AnnData, fit_key: str) -> None:
    """Delete every key the ledger of ``fit_key`` lists (those still present)."""
    for store_key in written_keys(adata, fit_key):
        if exists(adata, store_key):
            store, _, name = store_key.partition("/")
            del getattr(adata, store)[name]


def record(adata: AnnData, fit_key: str, store_keys: Iterable[str]) -> None:
    """List ``store_keys`` in the ledger of ``fit_key`` and in no other fit's ledger.

    ``adata.uns[fit_key]`` must be a mapping (the ledger is added if it has none). A key taken
    over from another fit (with ``overwrite=True``) leaves that fit's ledger, so that refitting
    it does not delete the key.
    """
    store_keys = list(store_keys)
    for name, state in adata.uns.items():
        listed = written_keys(adata, name)
        if name == fit_key:
            state["written_keys"] = np.array(list(dict.fromkeys(listed + store_keys)), dtype=object)
        elif is_fit_state(state) and set(listed) & set(store_keys):
            state["written_keys"] = np.array([key for key in listed if key not in store_keys], dtype=object)


def pca_loadings(adata: AnnData, use_rep: str, n_dims: int) -> np.ndarray | None:
    """``varm["PCs"]`` as ``(n_vars, n_dims)`` float32 when ``use_rep="X_pca"``, else ``None``."""
    if use_rep != "X_pca" or "PCs" not in adata.varm:
        return None
    loadings = np.asarray(adata.varm["PCs"], dtype=np.float32)
    if loadings.shape != (adata.n_vars, n_dims):
        raise ValueError(
            f'adata.varm["PCs"] has shape {loadings.shape}, but use_rep="X_pca" has {n_dims} columns, so the '
            f"loadings must have shape {(adata.n_vars, n_dims)}; recompute the PCA (scanpy.pp.pca) so that "
            'obsm["X_pca"] and varm["PCs"] match, or delete varm["PCs"] to skip gene space'
        )
    return loadings
