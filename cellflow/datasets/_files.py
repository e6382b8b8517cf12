"""Published time-course datasets and a simulated time course with known velocity and growth.

The real datasets are upstream files, byte for byte, checked against a sha256. They come from
``$CELLFLOW_DATA_DIR/<name>`` when that environment variable is set (never downloaded then), and
otherwise are downloaded once with :mod:`pooch` into ``pooch.os_cache("cellflow")`` (or into
``$CELLFLOW_CACHE_DIR`` when set).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

DATA_DIR_ENV = "CELLFLOW_DATA_DIR"
CACHE_DIR_ENV = "CELLFLOW_CACHE_DIR"

_DEEPRUOT = "zhenyiizhang/DeepRUOT", "2289c81032010922aadd9f848db9ffb1a10efb48"
_MOSCOT = "theislab/moscot", "89a7936314da65b6773688cf791d28ff48daa676"
_DELOREAN = "JohnReid/DeLorean", "f674d0739a670ab7846714f194ed84ef045b3dc7"

# relative name -> (repository, commit, path in the repository, sha256)
_FILES = {
    "deepruot/simulation_gene_data.csv": (
        *_DEEPRUOT,
        "data/simulation_gene_data.csv",
        "d41e3bcd94ff55383264461f2eed048780dbea8faffb77011cff9b8dce231d10",
    ),
    "deepruot/emt.csv": (
        *_DEEPRUOT,
        "data/emt.csv",
        "820eca0ca6a9b8c5aba970dda04052b2e2ea4489b712b948559fe5cd185a8294",
    ),
    "deepruot/mouse_hematopoiesis.csv": (
        *_DEEPRUOT,
        "data/mouse_hematopoiesis.csv",
        "be4360cd67e76205501de63124379be5c82506748e018197a3fdb4dbb1c7ca2f",
    ),
    "moscot/moscot_temporal_tests.h5ad": (
        *_MOSCOT,
        "tests/data/moscot_temporal_tests.h5ad",
        "746a098fbf84e941e67e494bb4b61b741eff8945850e0056e6857cccd07f5885",
    ),
    "kouno_thp1/gb-2013-14-10-r118-s3.csv": (
        *_DELOREAN,
        "inst/extdata/gb-2013-14-10-r118-s3.csv",
        "4e3aa55dd4034128b1bc8cb887dce7eef1070ce25ac46fabc3701b42cb486c94",
    ),
}

#: Upstream address of every file.
URLS = {
    name: f"https://raw.githubusercontent.com/{repo}/{commit}/{path}"
    for name, (repo, commit, path, _) in _FILES.items()
}
#: Expected sha256 of every file.
SHA256 = {name: digest for name, (_, _, _, digest) in _FILES.items()}


def _registry():
    """The pooch registry of the upstream files (created on use, so pooch is imported lazily)."""
    try:
        import pooch
    except ImportError as err:  # pragma: no cover - pooch is a dependency
        raise ImportError(
            f"Downloading datasets needs `pooch` (pip install pooch), or set {DATA_DIR_ENV} "
            "to a folder that holds the files."
        ) from err
    return pooch.create(
        path=pooch.os_cache("cellflow"),
        base_url="https://raw.githubusercontent.com/",
        env=CACHE_DIR_ENV,
        registry={name: f"sha256:{digest}" for name, digest in SHA256.items()},
        urls=URLS,
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch(name: str) -> Path:
    """Local path of the dataset file ``name``, checked against its sha256.

    Parameters
    ----------
    name
        Relative name in the registry, e.g. ``"deepruot/emt.csv"``.

    Returns
    -------
    Path to the verified file: under ``$CELLFLOW_DATA_DIR`` when set (never downloaded), else in
    pooch's cache (downloaded on first use).
    """
    if name not in SHA256:
        raise KeyError(f"Unknown dataset file {name!r}; known: {sorted(SHA256)}.")
    root = os.environ.get(DATA_DIR_ENV)
    if not root:
        return Path(_registry().fetch(name))
    path = Path(root).expanduser() / name
    if not path.is_file():
        raise FileNotFoundError(
            f"Dataset file {str(path)!r} not found; {DATA_DIR_ENV} is set to {root!r}, so nothing is "
            f"downloaded. Put the upstream file there ({URLS[name]}) or unset {DATA_DIR_ENV}."
        )
    actual = _sha256(path)
    if actual != SHA256[name]:
        raise ValueError(
            f"Checksum mismatch for dataset file {str(path)!r}: expected sha256 {SHA256[name]}, "
            f"got {actual}. The file is not the upstream file {URLS[name]}."
        )
    return path


def _info(name: str, source: str, terms: str) -> dict:
    return {"name": name, "source": source, "license": terms}


_DEEPRUOT_SOURCE = (
    "DeepRUOT (Zhang et al.), github.com/zhenyiizhang/DeepRUOT @ 2289c810, data/{file}"
)


def _read_deepruot(file: str, name: str, origin: str) -> AnnData:
    frame = pd.read_csv(_fetch(f"deepruot/{file}"))
    if "samples" not in frame.columns:
        raise ValueError(f"deepruot/{file}: expected a 'samples' column, got {list(frame.columns)}.")
    coords = frame.drop(columns="samples")
    X = coords.to_numpy(dtype=np.float32)
    adata = AnnData(
        X=X,
        obs=pd.DataFrame(
            {"time": frame["samples"].to_numpy(dtype=np.float64)},
            index=[f"cell_{i}" for i in range(len(frame))],
        ),
        var=pd.DataFrame(index=[str(c) for c in coords.columns]),
    )
    adata.obsm["X_pca"] = X.copy()
    adata.uns["cellflow_dataset"] = _info(
        name, f"{origin}; file: " + _DEEPRUOT_SOURCE.format(file=file), "MIT"
    )
    return adata


def emt() -> AnnData:
    """A549 cells under TGFB1 (epithelial-mesenchymal transition), as published by DeepRUOT.

    3133 cells in a 10-dimensional embedding; ``obs["time"]`` 0, 1, 2, 3 (day 0, 8 h, 1 d, and
    3 d + 7 d merged) with 577 / 885 / 788 / 883 cells.

    Returns
    -------
    AnnData with ``X`` and ``obsm["X_pca"]`` both the published embedding (not a PCA computed
    here; it is stored as ``X_pca`` so the default ``use_rep`` works), ``obs["time"]``, and
    ``uns["cellflow_dataset"]``.
    """
    return _read_deepruot("emt.csv", "emt", "Cook & Vanderhyden 2020")


def mouse_hematopoiesis() -> AnnData:
    """Mouse haematopoiesis lineage tracing (Weinreb et al. 2020), as published by DeepRUOT.

    10998 cells in a 2-dimensional embedding; ``obs["time"]`` 0, 1, 2 (days 2, 4, 6) with
    1429 / 3781 / 5788 cells. Strong growth.

    Returns
    -------
    AnnData with ``X`` and ``obsm["X_pca"]`` both the published embedding (not a PCA computed
    here), ``obs["time"]``, and ``uns["cellflow_dataset"]``.
    """
    return _read_deepruot("mouse_hematopoiesis.csv", "mouse_hematopoiesis", "Weinreb et al. 2020")


def simulation_gene() -> AnnData:
    """Simulated 2-gene regulatory time course with proliferation and death (DeepRUOT, TIGON).

    3031 cells x 2 genes; ``obs["time"]`` 0, 1, 2, 3, 4 with 400 / 442 / 530 / 690 / 969 cells.
    The published evaluations use the growth rate ``g(x) = x2**2 / (1 + x2**2)``.

    Returns
    -------
    AnnData with ``X`` and ``obsm["X_pca"]`` both the two gene coordinates (not a PCA),
    ``obs["time"]``, and ``uns["cellflow_dataset"]``.
    """
    return _read_deepruot("simulation_gene_data.csv", "simulation_gene", "Simulation from TIGON/DeepRUOT")


def _add_pca(adata: AnnData, n_pcs: int | None) -> None:
    if n_pcs is None:
        return
    import scanpy as sc

    sc.pp.pca(adata, n_comps=int(n_pcs))


_KOUNO_HOURS = (0.0, 1.0, 6.0, 12.0, 24.0, 48.0, 72.0, 96.0)
_KOUNO_BLOCK = 120
_MONTHS = {"jan": 1, "jun": 6, "dec": 12}


def _kouno_label_hour(label: str) -> float | None:
    """Hour encoded in a row label such as ``"24-7"``, or a spreadsheet-mangled ``"7-Jun"``."""
    parts = [p.strip().lower() for p in str(label).split("-")]
    for part in parts:
        if part in _MONTHS:
            return float(_MONTHS[part])
    return float(parts[0]) if re.fullmatch(r"\d+", parts[0]) else None


def kouno_thp1(n_pcs: int | None = None) -> AnnData:
    """THP-1 monocyte to macrophage differentiation, single-cell qRT-PCR (Kouno et al. 2013).

    960 cells x 45 transcription factors, 120 cells at each of 0, 1, 6, 12, 24, 48, 72 and 96 h.
    The time is taken from the row order (8 blocks of 120 rows), because a spreadsheet turned the
    labels of 1 h, 6 h and 12 h into dates.

    Parameters
    ----------
    n_pcs
        If given, run ``scanpy.pp.pca(adata, n_comps=n_pcs)`` on the log2 data so that
        ``obsm["X_pca"]`` and ``varm["PCs"]`` exist. By default no PCA is computed: run
        ``sc.pp.pca`` yourself.

    Returns
    -------
    AnnData with ``X`` = log2(relative expression) as float32, ``obs["time"]`` in hours,
    ``obs_names`` the file's row labels (made unique), and ``uns["cellflow_dataset"]``.
    """
    name = "kouno_thp1/gb-2013-14-10-r118-s3.csv"
    frame = pd.read_csv(_fetch(name), index_col=0)
    n_expected = _KOUNO_BLOCK * len(_KOUNO_HOURS)
    if frame.shape[0] != n_expected:
        raise ValueError(f"{name}: expected {n_expected} rows (8 blocks of 120), got {frame.shape[0]}.")
    hours = np.repeat(np.asarray(_KOUNO_HOURS), _KOUNO_BLOCK)
    from_labels = np.array([_kouno_label_hour(label) for label in frame.index], dtype=object)
    readable = np.array([h is not None for h in from_labels])
    if np.any(from_labels[readable].astype(float) != hours[readable]):
        raise ValueError(f"{name}: row labels disagree with the block structure of 8 x 120 rows.")
    values = frame.to_numpy(dtype=np.float64)
    if not np.all(values > 0):
        raise ValueError(f"{name}: relative expression values must be positive to take log2.")
    adata = AnnData(
        X=np.log2(values).astype(np.float32),
        obs=pd.DataFrame({"time": hours}, index=[str(label) for label in frame.index]),
        var=pd.DataFrame(index=[str(c) for c in frame.columns]),
    )
    adata.obs_names_make_unique()
    adata.uns["cellflow_dataset"] = _info(
        "kouno_thp1",
        "Kouno et al., Genome Biology 14:R118 (2013), Additional file 3; file from "
        "github.com/JohnReid/DeLorean @ f674d073, inst/extdata/gb-2013-14-10-r118-s3.csv",
        "data CC BY (Kouno et al. 2013); file distributed with DeLorean (MIT)",
    )
    _add_pca(adata, n_pcs)
    return adata


def moscot_temporal(n_pcs: int | None = None) -> AnnData:
    """Small reprogramming time course (Schiebinger et al. 2019) from moscot's test data.

    250 cells x 1479 genes (log-normalised, sparse); ``obs["day"]`` 10 / 10.5 / 11 with 85 / 81 /
    84 cells; ``uns`` holds moscot's and Waddington-OT's reference transport maps.

    Parameters
    ----------
    n_pcs
        If given, run ``scanpy.pp.pca(adata, n_comps=n_pcs)``. By default the file is left as it
        is (an ``X_pca`` stored in it would be kept).

    Returns
    -------
    The file's AnnData with ``obs["time"]`` = ``obs["day"]`` as float and
    ``uns["cellflow_dataset"]``.
    """
    import anndata

    adata = anndata.read_h5ad(_fetch("moscot/moscot_temporal_tests.h5ad"))
    adata.obs["time"] = adata.obs["day"].astype(str).astype(np.float64).to_numpy()
    adata.uns["cellflow_dataset"] = _info(
        "moscot_temporal",
        "Schiebinger et al. 2019 via moscot's tests; file from github.com/theislab/moscot @ "
        "89a79363, tests/data/moscot_temporal_tests.h5ad",
        "BSD-3-Clause",
    )
    _add_pca(adata, n_pcs)
    return adata
