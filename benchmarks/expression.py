"""Expression of every gene at a held-out time point: the neighbour decoder against the PCA reconstruction.

A user's PCA is computed on a subset of genes (scanpy's highly variable genes); the flow moves
cells in that PCA. This benchmark holds out each inner time point, computes a PCA on the top
genes by variance of the remaining cells (a stand-in for highly variable genes), fits the default
flow, pushes the cells of the time point before to the held-out time with
``cf.tl.interpolate`` and compares the mean expression of every gene there with the measured one,
separately for the genes in the PCA and the genes outside it. Four predictions:

- ``neighbors``: ``cf.tl.interpolate``'s default, measured cells near each predicted cell's path
  at the time points around, blended in time;
- ``pca``: ``expression="pca"``, the linear reconstruction (the all-time mean for genes without
  loadings);
- ``all-time mean``: each gene's mean over all training cells;
- ``blend of neighbouring times``: the two neighbouring time points' gene means blended linearly in
  time, a baseline that needs no flow (it cannot say which cells are where, only the mean).

Reported: Pearson r over genes between predicted and measured gene means, the mean absolute
error of the gene means, the per-gene 1-D Wasserstein distance between predicted and measured
cells (mean over genes); also the share of negative entries in the predicted X where the input X
has none.

Run: ``python benchmarks/expression.py [--steps 1000] [--datasets kouno_thp1 moscot_temporal]``;
writes its section of BENCHMARKS.md (or ``--out``) and the rows to ``expression.csv`` in
``--results`` (default ``benchmarks/results/``). ``--quick``: a small simulated course with genes
outside the PCA, a few steps (seconds, for tests), written to ``BENCHMARKS_quick.md`` in
``--results`` unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
import torch
from scipy.stats import wasserstein_distance

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # this checkout's cellflow, and sections.py

from _common import machine_lines  # noqa: E402
from sections import QUICK_DATASET, QUICK_STEPS, RESULTS, code_version, invocation, report_file, write_section  # noqa: E402

import cellflow as cf  # noqa: E402

os.environ.setdefault("CELLFLOW_DATA_DIR", str(ROOT.parent / "shared" / "data"))
GENES_IN_PCA = {"kouno_thp1": 15, "moscot_temporal": 300, QUICK_DATASET: 4}  # top genes by variance
N_PCS = {"kouno_thp1": 5, "moscot_temporal": 10, QUICK_DATASET: 2}


def load(name: str):
    """The AnnData of ``name`` with ``obs["time"]``; the quick course has 8 genes, nonlinear in its latent state."""
    if name == QUICK_DATASET:
        adata = cf.datasets.simulate(n_cells=80, times=(0.0, 1.0, 2.0), n_genes=8, seed=0)
        adata.X = np.logaddexp(0.0, 2.0 * adata.X).astype(np.float32)  # non-negative, nonlinear
        return adata
    return getattr(cf.datasets, name)()


def _dense(matrix) -> np.ndarray:
    return matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)


def _gene_means(matrix) -> np.ndarray:
    return np.asarray(matrix.mean(axis=0), dtype=np.float64).ravel()


def held_out_rows(adata, name: str, held: float, steps: int) -> list[dict]:
    """Fit without ``held``, predict it from the time point before; one row per prediction and gene group."""
    times = np.unique(adata.obs["time"])
    before, after = times[times < held][-1], times[times > held][0]
    kept = adata[adata.obs["time"] != held].copy()
    variance = _gene_means(kept.X.multiply(kept.X) if sp.issparse(kept.X) else kept.X**2) - _gene_means(kept.X) ** 2
    in_pca = np.zeros(kept.n_vars, dtype=bool)
    in_pca[np.argsort(variance)[::-1][: GENES_IN_PCA[name]]] = True
    sc.pp.pca(kept, n_comps=N_PCS[name], mask_var=in_pca)
    clock = time.perf_counter()
    cf.tl.fit(kept, n_steps=steps, seed=0, progress=False)
    seconds = time.perf_counter() - clock
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # off-data warnings: the share is reported by the horizon benchmark
        read = cf.tl.interpolate(kept, before, held)
        reconstructed = cf.tl.interpolate(kept, before, held, expression="pca")
    measured = adata[adata.obs["time"] == held].X
    share = (held - before) / (after - before)
    at = {t: _gene_means(kept[kept.obs["time"] == t].X) for t in (before, after)}
    predictions = {
        "neighbors": _gene_means(read.X),
        "pca": _gene_means(reconstructed.X),
        "all-time mean": _gene_means(kept.X),
        "blend of neighbouring times": (1 - share) * at[before] + share * at[after],
    }
    negative = {"neighbors": float((_dense(read.X) < 0).mean()), "pca": float((reconstructed.X < 0).mean())}
    per_cell = {"neighbors": _dense(read.X), "pca": _dense(reconstructed.X)}  # the others: one value for every cell
    truth, measured = _gene_means(measured), _dense(measured)
    rows = []
    for genes, mask in (("in the PCA", in_pca), ("outside the PCA", ~in_pca)):
        for label, values in predictions.items():
            rows.append({
                "dataset": name, "held_out": held, "genes": genes, "n_genes": int(mask.sum()), "prediction": label,
                "pearson_r": float(np.corrcoef(values[mask], truth[mask])[0, 1]),
                "mae": float(np.abs(values[mask] - truth[mask]).mean()),
                "w1_cells": float(np.mean([
                    wasserstein_distance(per_cell[label][:, g] if label in per_cell else [values[g]], measured[:, g])
                    for g in np.flatnonzero(mask)])),
                "negative_share": negative.get(label, 0.0) if _dense(adata.X).min() >= 0 else float("nan"),
                "fit_seconds": seconds,
            })
    print(name, held, f"outside the PCA: r {rows[-4]['pearson_r']:.3f} (neighbors) vs {rows[-2]['pearson_r']:.3f} "
          "(all-time mean)", flush=True)
    return rows


def run(name: str, steps: int) -> pd.DataFrame:
    adata = load(name)
    times = np.unique(adata.obs["time"])
    return pd.DataFrame([row for held in times[1:-1] for row in held_out_rows(adata, name, float(held), steps)])


def section(table: pd.DataFrame, minutes: float, code: str) -> str:
    lines = [
        "## Expression of every gene at a held-out time point",
        "",
        f"`{invocation('expression')}` ({code}; {minutes:.1f} min).",
        "",
        *(f"{line}  " for line in machine_lines("cpu")),
        "",
        "Each inner time point held out in turn; a PCA on the top genes by variance of the other time points "
        "(the genes outside it have zero loadings, as after scanpy's PCA on highly variable genes), the default "
        "fit, and the cells of the time point before pushed to the held-out one by `cf.tl.interpolate`. Pearson r "
        "over genes and mean absolute error (MAE) of the predicted gene means against the measured ones; W1 cells: "
        "per gene, the 1-D Wasserstein distance between the predicted cells' values and the measured cells' "
        "(a prediction of one value per gene scores the spread of the measured cells around it), mean over genes; "
        "all averaged over held-out times; `negative` is the share of negative entries in the predicted X (the "
        "data have none). `neighbors` is the default decoder, `pca` the option `expression=\"pca\"`; the blend of the "
        "neighbouring time points' means needs no flow and knows only means, not which predicted cell expresses "
        "what.",
        "",
        "| dataset | genes | prediction | r | MAE | W1 cells | negative |",
        "|---|---|---|---|---|---|---|",
    ]
    summary = table.groupby(["dataset", "genes", "prediction"], sort=False)[
        ["pearson_r", "mae", "w1_cells", "negative_share", "n_genes"]].mean()
    for (dataset, genes, prediction), r in summary.iterrows():
        negative = "" if np.isnan(r.negative_share) else f"{r.negative_share:.1%}"
        lines.append(f"| {dataset} | {genes} ({r.n_genes:.0f}) | {prediction} | {r.pearson_r:.3f} | {r.mae:.4f} | "
                     f"{r.w1_cells:.4f} | "
                     f"{negative} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--datasets", nargs="+", default=["kouno_thp1", "moscot_temporal"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every fit")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the rows (expression.csv)")
    parser.add_argument("--out", type=Path, default=None,
                        help="report whose section is written (default BENCHMARKS.md; with --quick "
                             "BENCHMARKS_quick.md in --results)")
    parser.add_argument("--quick", action="store_true",
                        help=f"a small simulated course, {QUICK_STEPS} steps: seconds (for tests)")
    args = parser.parse_args()
    if args.quick:
        args.datasets, args.steps = [QUICK_DATASET], QUICK_STEPS
    torch.set_num_threads(args.threads)
    code = code_version()
    clock = time.perf_counter()
    table = pd.concat([run(name, args.steps) for name in args.datasets], ignore_index=True)
    args.results.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.results / f"expression{'_quick' if args.quick else ''}.csv", index=False)
    text = section(table, (time.perf_counter() - clock) / 60, code)
    write_section("expression", text, report_file(args.out, args.quick, args.results))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
