"""Calibration of the bootstrap ensembles of ``cf.tl.fit(..., n_fits=K)``: how often their intervals hold the truth.

On simulated courses with a known velocity and growth (``cf.datasets.simulate``: a branching flow, without and
with growth), for several seeds and numbers of cells: fit with ``n_fits`` members, then per cell the central
90% interval of the members' velocity (each component) and growth rate, and the share of cells whose true
value lies inside (coverage; nominal 90%), the mean width of the intervals (they should narrow as cells are
added), and the wall time of the ensemble against that of the single fit on all cells, measured in the same run.

Run: ``python benchmarks/calibration.py [--fits 8] [--steps 500] [--seeds 0 1] [--cells 100 300]``; writes its
section of BENCHMARKS.md (or ``--out``) and the rows to ``calibration.csv`` in ``--results`` (default
``benchmarks/results/``). ``--quick``: one small course, three members, few steps (seconds, for tests), written to
``BENCHMARKS_quick.md`` in ``--results`` unless ``--out`` says otherwise. On real courses (``--real``, default
kouno_thp1 and moscot_temporal) it measures how the members' spread grows with the distance from the measured
cells (``--skip-simulated`` runs that part alone).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # this checkout's cellflow, and sections.py

from _common import machine_lines  # noqa: E402
from sections import QUICK_STEPS, RESULTS, code_version, invocation, report_file, write_section  # noqa: E402

import cellflow as cf  # noqa: E402
from cellflow.model import Ensemble, interval  # noqa: E402

SETTINGS = {"balanced (otcfm)": dict(growth_scale=0.0, method="otcfm"),
            "with growth (wfr)": dict(growth_scale=0.5, method="wfr")}
LEVEL = 0.9


def rows_for(setting: str, n_cells: int, seed: int, n_fits: int, steps: int) -> dict:
    """Fit one simulated course once and as an ensemble; coverage and widths of the members' intervals."""
    options = SETTINGS[setting]
    adata = cf.datasets.simulate(n_cells=n_cells, times=(0.0, 1.0, 2.0, 3.0), growth_scale=options["growth_scale"],
                                 seed=seed)
    course = cf.read_time_course(adata)
    settings = dict(n_steps=steps)
    clock = time.perf_counter()
    cf.CellFlow(options["method"], seed=seed, **settings).fit(course, progress=False)
    single = time.perf_counter() - clock
    clock = time.perf_counter()
    ensemble = Ensemble(options["method"], n_fits, seed=seed, **settings).fit(course, progress=False)
    together = time.perf_counter() - clock
    x, t = adata.obsm["X_pca"], adata.obs["time"].to_numpy()
    velocity, growth = ensemble.evaluate(x, t)
    low, high = interval(velocity, LEVEL)
    truth = adata.obsm["velocity_true_pca"]
    row = {
        "setting": setting, "n_cells": n_cells, "seed": seed, "n_fits": n_fits,
        "velocity_coverage": float(((low <= truth) & (truth <= high)).mean()),
        "velocity_width": float((high - low).mean()),
        "seconds_single": single, "seconds_ensemble": together,
    }
    if growth is not None:
        g_low, g_high = interval(growth, LEVEL)
        true_growth = adata.obs["growth_true"].to_numpy()
        row.update(growth_coverage=float(((g_low <= true_growth) & (true_growth <= g_high)).mean()),
                   growth_width=float((g_high - g_low).mean()))
    print(setting, n_cells, seed, f"velocity coverage {row['velocity_coverage']:.2f}", flush=True)
    return row


def spread_against_distance(name: str, n_fits: int, steps: int, seed: int = 0) -> dict:
    """On a real course: the members' velocity spread at the measured cells moved by random offsets, against the
    distance of each moved cell from the nearest measured cell of its time point (Spearman's rank correlation).
    """
    from scipy.stats import spearmanr
    from sklearn.neighbors import NearestNeighbors

    if name == "simulate":
        adata = cf.datasets.simulate(n_cells=60, times=(0.0, 1.0, 2.0), seed=seed)
    else:
        adata = getattr(cf.datasets, name)(n_pcs=10)
    course = cf.read_time_course(adata, use_rep="X_pca")
    ensemble = Ensemble("otcfm", n_fits, seed=seed, n_steps=steps).fit(course, progress=False)
    rng = np.random.default_rng(seed)
    spreads, distances = [], []
    for t, cells in zip(course.times, course.populations):
        scale = cells.std(axis=0) * rng.uniform(0.0, 3.0, size=(len(cells), 1))  # from on the data to far off
        moved = cells + rng.normal(size=cells.shape) * scale
        velocity, _ = ensemble.evaluate(moved, t)
        spreads.append(np.sqrt(((velocity - velocity.mean(axis=0)) ** 2).sum(axis=-1).mean(axis=0)))
        distances.append(NearestNeighbors(n_neighbors=1).fit(cells).kneighbors(moved)[0][:, 0])
    spread, distance = np.concatenate(spreads), np.concatenate(distances)
    near = distance <= np.quantile(distance, 0.25)
    far = distance >= np.quantile(distance, 0.75)
    return {"dataset": name, "n_fits": n_fits, "spearman": float(spearmanr(spread, distance).correlation),
            "spread_near": float(np.median(spread[near])), "spread_far": float(np.median(spread[far]))}


def real_section(rows: list[dict], minutes: float, code: str) -> str:
    lines = [
        "## Ensemble spread against the distance from the data (real courses)",
        "",
        f"`{invocation('calibration')}` ({code}; {minutes:.1f} min).",
        "",
        "Each measured cell moved by a Gaussian offset of 0 to 3 times its time point's spread per dimension; the "
        "members' velocity spread there (root mean square distance from their mean) against the moved cell's "
        "distance to the nearest measured cell of that time point (PCA with 10 components, `otcfm`).",
        "",
        "| dataset | members | Spearman (spread, distance) | median spread, nearest quarter | median spread, "
        "farthest quarter |",
        "|---|---|---|---|---|",
        *(f"| {r['dataset']} | {r['n_fits']} | {r['spearman']:.2f} | {r['spread_near']:.3f} | {r['spread_far']:.3f} |"
          for r in rows),
    ]
    return "\n".join(lines)


def section(table: pd.DataFrame, minutes: float, code: str) -> str:
    lines = [
        "## Calibration of the bootstrap ensembles (`n_fits`)",
        "",
        f"`{invocation('calibration')}` ({code}; {minutes:.1f} min).",
        "",
        *(f"{line}  " for line in machine_lines("cpu")),
        "",
        "Simulated courses with a known velocity and growth (`cf.datasets.simulate`, times 0-3, a branching flow); "
        "an ensemble of members, each on a bootstrap resample of every time point's cells with its own seed. "
        "Coverage: the share of cells (and velocity components) whose true value lies in the members' central 90% "
        "interval (nominal 0.90); width: the mean width of those intervals; cost: the ensemble's wall time over "
        "the single fit's, in the same run (members fitted one after the other). Mean over seeds.",
        "",
        "| setting | cells at time 0 | members | velocity coverage | velocity width | growth coverage | "
        "growth width | cost / single fit |",
        "|---|---|---|---|---|---|---|---|",
    ]
    table = table.assign(cost=table.seconds_ensemble / table.seconds_single)
    columns = [c for c in ("velocity_coverage", "velocity_width", "growth_coverage", "growth_width", "cost")
               if c in table]
    summary = table.groupby(["setting", "n_cells", "n_fits"], sort=False)[columns].mean()
    for (setting, n_cells, n_fits), r in summary.iterrows():
        growth = (f"{r.growth_coverage:.2f} | {r.growth_width:.3f}" if "growth_coverage" in r and
                  np.isfinite(r.growth_coverage) else "- | -")
        lines.append(f"| {setting} | {n_cells} | {n_fits} | {r.velocity_coverage:.2f} | {r.velocity_width:.3f} | "
                     f"{growth} | {r.cost:.1f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fits", type=int, default=8, help="members of each ensemble")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--cells", type=int, nargs="+", default=[100, 300], help="cells at time 0")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every fit")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the rows (calibration.csv)")
    parser.add_argument("--out", type=Path, default=None,
                        help="report whose section is written (default BENCHMARKS.md; with --quick "
                             "BENCHMARKS_quick.md in --results)")
    parser.add_argument("--real", nargs="*", default=["kouno_thp1", "moscot_temporal"],
                        help="real courses for the spread against the distance from the data (none: skip)")
    parser.add_argument("--skip-simulated", action="store_true", help="only the real courses")
    parser.add_argument("--quick", action="store_true", help=f"one small course, 3 members, {QUICK_STEPS} steps")
    args = parser.parse_args()
    settings = [] if args.skip_simulated else list(SETTINGS)
    if args.quick:
        args.fits, args.steps, args.seeds, args.cells, settings = 3, QUICK_STEPS, [0], [60], list(SETTINGS)[1:]
        args.real = ["simulate"]
    torch.set_num_threads(args.threads)
    code = code_version()
    args.results.mkdir(parents=True, exist_ok=True)
    report = report_file(args.out, args.quick, args.results)
    suffix = "_quick" if args.quick else ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # off-data and extrapolation warnings of the short fits
        if settings:
            clock = time.perf_counter()
            table = pd.DataFrame([rows_for(s, n, seed, args.fits, args.steps)
                                  for s in settings for n in args.cells for seed in args.seeds])
            table.to_csv(args.results / f"calibration{suffix}.csv", index=False)
            text = section(table, (time.perf_counter() - clock) / 60, code)
            write_section("calibration", text, report)
            print(text)
        if args.real:
            clock = time.perf_counter()
            rows = [spread_against_distance(name, args.fits, args.steps) for name in args.real]
            pd.DataFrame(rows).to_csv(args.results / f"calibration_real{suffix}.csv", index=False)
            text = real_section(rows, (time.perf_counter() - clock) / 60, code)
            write_section("calibration_real", text, report)
            print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
