"""Preprocessing of time courses."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from scipy.special import expit

from .._checks import choice
from .._units import rate_factor
from .._utils import copy_option, renamed_arguments
from ..io import parse_times


@copy_option
def numeric_time(
    adata: AnnData,
    time_key: str,
    *,
    time_map: Mapping | None = None,
    key_added: str = "time",
) -> AnnData | None:
    """Write each cell's time as a number to ``obs[key_added]``.

    Labels such as ``"day 2.5"``, ``"D3"``, ``"12h"``, ``"E10.5"`` or ``"P7"`` are read for the number
    they hold (mixed durations such as ``"12h"`` and ``"1d"`` in the finest unit, here hours); labels
    whose words are no unit of time (``"8C"``, cells per embryo) and stage names need ``time_map``
    (rules: :func:`cellflow.io.parse_times`). The source column is left as it is.

    Parameters
    ----------
    adata
        The time course.
    time_key
        ``obs`` column of time labels.
    time_map
        Optional mapping of every label to a number (stage names, cell counts).
    key_added
        ``obs`` column to write (the same as ``time_key`` replaces the labels).
    copy
        Work on a copy of ``adata``, write into it and return it (``adata`` is left as it was).

    Returns
    -------
    The AnnData when ``copy=True``, else ``None``.
    """
    if key_added != time_key and key_added in adata.obs:
        raise ValueError(f"adata.obs[{key_added!r}] already exists; pass another key_added")
    adata.obs[key_added] = parse_times(adata.obs[time_key], time_key, time_map)


# --------------------------------------------------------------------------------------------
# Prior growth from gene signatures (Waddington-OT's birth/death model)
# --------------------------------------------------------------------------------------------

_ORGANISMS = ("human", "mouse")
_MARKER_KINDS = ("proliferation", "apoptosis")

# Waddington-OT's constants: (lowest rate, highest rate, centre, width) of each logistic.
BIRTH_PARAMS = (0.3, 1.7, 0.25, 0.5)
DEATH_PARAMS = (0.3, 1.7, 0.1, 0.2)


def _check_organism(organism: str) -> str:
    name = str(organism).strip().lower()
    if name not in _ORGANISMS:
        options = ", ".join(repr(o) for o in _ORGANISMS)
        raise ValueError(f"Unknown organism {organism!r}; choose one of {options}.")
    return name


def growth_markers(organism: str = "human") -> dict[str, list[str]]:
    """Bundled proliferation and apoptosis marker genes.

    Parameters
    ----------
    organism
        ``"human"`` or ``"mouse"``.

    Returns
    -------
    ``{"proliferation": [...], "apoptosis": [...]}``, gene symbols in file order.
    Proliferation: the S-phase and G2/M genes of Tirosh et al. (2016), Science 352:189.
    Apoptosis: MSigDB's Hallmark apoptosis set (Liberzon et al. 2015, Cell Systems 1:417).
    Mouse symbols are the human ones with only the first letter in upper case. The files
    are ``cellflow/data/markers/{proliferation,apoptosis}_{organism}.txt``; their header
    lines say where each list comes from.
    """
    from importlib.resources import files

    organism = _check_organism(organism)
    folder = files("cellflow").joinpath("data", "markers")
    markers = {}
    for kind in _MARKER_KINDS:
        text = folder.joinpath(f"{kind}_{organism}.txt").read_text(encoding="utf-8")
        genes: list[str] = []
        for line in text.splitlines():
            symbol = line.strip()
            if symbol and not symbol.startswith("#") and symbol not in genes:
                genes.append(symbol)
        markers[kind] = genes
    return markers


def _mean_z_score(matrix, columns: np.ndarray, clip: float = 5.0) -> np.ndarray:
    """Waddington-OT's gene-set score: each gene of ``columns`` z-scored over the cells, truncated, averaged.

    Parameters
    ----------
    matrix
        Cells x genes expression (dense or sparse).
    columns
        Column positions of the genes of the set (found in the data).
    clip
        Truncation of each z-score (Waddington-OT: 5).

    Returns
    -------
    The score of every cell; a gene constant over the cells counts as z-score 0.
    """
    values = matrix[:, np.sort(columns)]  # sorted: a backed matrix reads columns in order
    values = np.asarray(values.toarray() if sp.issparse(values) else values, dtype=np.float64)
    spread = values.std(axis=0)
    z = np.divide(values - values.mean(axis=0), spread, out=np.zeros_like(values), where=spread > 0)
    return np.clip(z, -clip, clip).mean(axis=1)


def _bounded_logistic(score, low: float, high: float, centre: float, width: float) -> np.ndarray:
    """``low + (high - low) * sigmoid(4 (score - centre) / width)``.

    Rises from ``low`` to ``high``; the slope at ``centre`` is ``(high - low) / width``.
    """
    z = 4.0 * (np.asarray(score, dtype=float) - centre) / width
    return low + (high - low) * expit(z)


def birth_rate(proliferation_score) -> np.ndarray:
    """Waddington-OT's birth rate from a proliferation score.

    ``beta(p) = 0.3 + 1.4 / (1 + exp(-4 (p - 0.25) / 0.5))``: a logistic from 0.3 to 1.7
    centred at 0.25 with width 0.5.

    Parameters
    ----------
    proliferation_score
        Scalar or array of proliferation scores.

    Returns
    -------
    Birth rates (per unit time), the shape of the input.
    """
    return _bounded_logistic(proliferation_score, *BIRTH_PARAMS)


def death_rate(apoptosis_score) -> np.ndarray:
    """Waddington-OT's death rate from an apoptosis score.

    ``delta(a) = 0.3 + 1.4 / (1 + exp(-4 (a - 0.1) / 0.2))``: a logistic from 0.3 to 1.7
    centred at 0.1 with width 0.2.

    Parameters
    ----------
    apoptosis_score
        Scalar or array of apoptosis scores.

    Returns
    -------
    Death rates (per unit time), the shape of the input.
    """
    return _bounded_logistic(apoptosis_score, *DEATH_PARAMS)


def _as_gene_list(genes, name: str) -> list[str]:
    if isinstance(genes, str):
        genes = [genes]
    out: list[str] = []
    for g in genes:
        if not isinstance(g, str):
            raise TypeError(f"{name} must hold gene symbols (strings); got {g!r}")
        if g not in out:
            out.append(g)
    return out


def _present(genes: list[str], var_names: pd.Index) -> list[str]:
    return [g for g in genes if g in var_names]


@renamed_arguments(random_state="seed")
@copy_option
def score_growth(
    adata: AnnData,
    organism: str = "human",
    *,
    proliferation_genes: Sequence[str] | None = None,
    apoptosis_genes: Sequence[str] | None = None,
    layer: str | None = None,
    key_added: str = "cellflow",
    min_genes: int = 10,
    seed: int = 0,
    time_unit: str = "day",
    score: str = "mean_z",
) -> AnnData | None:
    r"""Score proliferation and apoptosis, and turn them into a prior growth rate.

    This is the prior that Waddington-OT (Schiebinger et al. 2019, Cell 176:928) and moscot
    derive from gene signatures. Each cell gets a proliferation score and an apoptosis score:
    by default Waddington-OT's own gene-set score, for which its constants below were chosen
    (each marker's expression z-scored over all cells, truncated at -5 and 5, and averaged over
    the markers of the list), so that a cell of average expression gets rate 0 (birth and
    death 0.47 per day), proliferating cells up to +1.4 per day (a doubling in half a day at
    most) and apoptotic ones down to -1.4 per day; or, with ``score="score_genes"``,
    :func:`scanpy.tl.score_genes` (mean expression of the markers minus that of random control
    genes of similar mean expression, with a fixed ``seed``), as moscot does, whose scale
    depends on the data's normalisation and can put every non-cycling cell near -1.4 per day.
    The scores become a birth and a death rate through Waddington-OT's logistic functions,

    .. math::

        \beta(p) = 0.3 + \frac{1.7 - 0.3}{1 + \exp(-4 (p - 0.25) / 0.5)}, \qquad
        \delta(a) = 0.3 + \frac{1.7 - 0.3}{1 + \exp(-4 (a - 0.1) / 0.2)},

    i.e. ``low + (high - low) / (1 + exp(-4 (score - centre) / width))``, rising from 0.3 to
    1.7 with slope ``(high - low) / width`` at the centre. Waddington-OT's growth factor over
    one unit of time is ``exp(beta - delta)``. This function writes its logarithm,
    ``beta(p) - delta(a)``, as a **rate**: the log growth per day, converted into a rate per
    ``time_unit`` (the unit of the time column the prior will be used with: per hour is per day
    / 24). A cell's expected number of descendants after ``dt`` time units is
    ``exp(rate * dt)``; per day the rate lies in ``[-1.4, 1.4]``. Waddington-OT chose the constants
    for days as the time unit and for its mean z-scores. Being relative to the cells scored,
    the prior says which cells grow faster than others, not the population's absolute growth:
    give that as ``population_size`` of :func:`cellflow.tl.fit` when it is known. Score
    log-normalised expression in ``X`` (or ``layer``).

    Parameters
    ----------
    adata
        Annotated data matrix, cells x genes, with gene symbols as ``var_names``.
    organism
        ``"human"`` or ``"mouse"``: which bundled marker lists to use (see
        :func:`growth_markers`). Mouse symbols are the human ones with only the first letter
        in upper case (e.g. ``Mki67``).
    proliferation_genes
        Your own proliferation markers; replace the bundled list when given.
    apoptosis_genes
        Your own apoptosis markers; replace the bundled list when given.
    layer
        Score ``adata.layers[layer]`` instead of ``adata.X``.
    key_added
        Prefix of the ``obs`` columns written.
    min_genes
        Warn when fewer markers than this are found in ``adata.var_names`` for either list.
    seed
        Seed for the control genes that :func:`scanpy.tl.score_genes` draws (its
        ``random_state``; formerly ``random_state`` here too).
    time_unit
        Unit of the time column the prior is for: ``"day"`` (default, Waddington-OT's unit),
        ``"hour"``, ``"week"``, ``"minute"``, ``"year"`` (plural and short forms such as ``"h"`` too).
    score
        ``"mean_z"`` (default, Waddington-OT's gene-set score) or ``"score_genes"`` (scanpy's, as
        moscot), see above.
    copy
        Work on a copy of ``adata``, write into it and return it (``adata`` is left as it was).

    Returns
    -------
    ``None``, or the scored copy when ``copy=True``. Writes three columns to ``obs`` and
    changes nothing else in ``adata``:

    ``obs[f"{key_added}_proliferation"]``
        proliferation score;
    ``obs[f"{key_added}_apoptosis"]``
        apoptosis score;
    ``obs[f"{key_added}_growth_prior"]``
        prior growth rate ``beta - delta`` (log growth per ``time_unit``).

    Warns
    -----
    UserWarning
        When fewer than ``min_genes`` markers of a list are in ``adata.var_names``; the
        message says how many of each list were found. Also when columns of these names
        already exist: they are replaced (so the function can be rerun), never silently.

    Raises
    ------
    ValueError
        For an unknown ``organism``, an unknown ``layer``, or a marker list of which no gene
        is in ``adata.var_names``.

    Examples
    --------
    >>> cf.pp.score_growth(adata, organism="mouse")  # doctest: +SKIP
    >>> adata.obs["cellflow_growth_prior"].describe()  # doctest: +SKIP
    >>> cf.tl.fit(adata, "day", "X_pca", "wfr", growth_key="cellflow_growth_prior")  # doctest: +SKIP
    """
    import scanpy as sc

    organism = _check_organism(organism)
    per_unit = rate_factor("day", time_unit, "day", "time_unit")  # checks the unit before any work
    score = choice("score", score, ["mean_z", "score_genes"])
    if layer is not None and layer not in adata.layers:
        raise ValueError(
            f"adata.layers has no {layer!r}; available: {list(adata.layers.keys())}. "
            "Pass layer=None to score adata.X."
        )
    matrix = adata.X if layer is None else adata.layers[layer]
    if matrix is None:
        raise ValueError("adata.X is empty; pass layer= to score a layer instead.")

    bundled = growth_markers(organism)
    given = {"proliferation": proliferation_genes, "apoptosis": apoptosis_genes}
    var_names = pd.Index(adata.var_names.astype(str))
    found: dict[str, list[str]] = {}
    for kind in _MARKER_KINDS:
        user = given[kind]
        genes = bundled[kind] if user is None else _as_gene_list(user, f"{kind}_genes")
        source = f"bundled {organism}" if user is None else "given"
        hits = _present(genes, var_names)
        if not hits:
            hint = ""
            upper = set(var_names.str.upper())
            if user is None and any(g.upper() in upper for g in genes):
                other = [o for o in _ORGANISMS if o != organism][0]
                hint = f" The symbols match when case is ignored: is this {other} data (organism={other!r})?"
            raise ValueError(
                f"None of the {len(genes)} {source} {kind} markers is in adata.var_names.{hint} "
                f"Check that var_names hold gene symbols for organism={organism!r}, or pass your own "
                f"list with {kind}_genes=[...]."
            )
        if len(hits) < min_genes:
            warnings.warn(
                f"score_growth: only {len(hits)} of {len(genes)} {source} {kind} markers are in "
                f"adata.var_names (min_genes={min_genes}); the {kind} score, and so the growth prior, "
                f"may be noisy. Found: {', '.join(hits[:20])}{', ...' if len(hits) > 20 else ''}.",
                UserWarning,
                stacklevel=4,  # past the wrappers (renamed_arguments, copy_option), to the caller
            )
        found[kind] = hits

    if score == "mean_z":
        scores = {kind: _mean_z_score(matrix, var_names.get_indexer(found[kind])) for kind in _MARKER_KINDS}
    else:
        # on a bare AnnData that shares the matrix, so that score_genes writes nothing into the
        # user's object (it adds obs columns and may read .raw)
        scratch = AnnData(X=matrix, obs=pd.DataFrame(index=pd.RangeIndex(adata.n_obs).astype(str)),
                          var=pd.DataFrame(index=var_names))
        if not var_names.is_unique:
            scratch.var_names_make_unique()
        scores = {}
        for kind in _MARKER_KINDS:
            sc.tl.score_genes(scratch, found[kind], score_name=kind, random_state=seed, use_raw=False)
            scores[kind] = scratch.obs[kind].to_numpy(dtype=float)

    rate = (birth_rate(scores["proliferation"]) - death_rate(scores["apoptosis"])) * per_unit

    keys = [f"{key_added}_{kind}" for kind in (*_MARKER_KINDS, "growth_prior")]
    existing = [k for k in keys if k in adata.obs.columns]
    if existing:
        warnings.warn(
            f"score_growth: replacing existing adata.obs columns {existing}; pass another "
            "key_added to keep them.",
            UserWarning,
            stacklevel=4,
        )
    adata.obs[f"{key_added}_proliferation"] = scores["proliferation"]
    adata.obs[f"{key_added}_apoptosis"] = scores["apoptosis"]
    adata.obs[f"{key_added}_growth_prior"] = rate
