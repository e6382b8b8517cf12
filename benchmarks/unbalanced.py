"""Unbalanced benchmark (issue 3): WFR-FM against balanced OT-CFM on the DeepRUOT data.

- simulation_gene: fit on all time points, push the t=0 cells to every later time; mean W1 (predicted
  cells weighted by their normalised mass), mean relative mass error, and the Pearson correlation of the
  learned growth with the known g(x) = x2^2 / (1 + x2^2) at every measured cell.
- emt, mouse_hematopoiesis: leave one inner time point out (W1, relative mass error), with the exact-OT
  interpolation baseline.
Every number is a mean +- std over seeds, methods run in the same process on the same data.

Run: ``python benchmarks/unbalanced.py [--steps 2000] [--seeds 0 1 2]``; writes its section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # this checkout's cellflow, and sections.py

import cellflow as cf  # noqa: E402
from cellflow.benchmark import leave_one_out, mass_error, score  # noqa: E402
from sections import write_section  # noqa: E402

os.environ.setdefault("CELLFLOW_DATA_DIR", str(ROOT.parent / "shared" / "data"))
METHODS = ("wfr", "otcfm")


def simulation_gene(steps: int, seeds) -> pd.DataFrame:
    """Transport from t=0 to every later time on the simulated gene circuit."""
    adata = cf.datasets.simulation_gene()
    course = cf.read_time_course(adata, "time", "X_pca")
    start = course.populations[0]
    rep = np.concatenate(course.populations)
    times = np.concatenate([np.full(len(p), t) for p, t in zip(course.populations, course.times)])
    truth = rep[:, 1] ** 2 / (1 + rep[:, 1] ** 2)
    rows = []
    for method in METHODS:
        for seed in seeds:
            clock = time.perf_counter()
            model = cf.CellFlow(method, n_steps=steps, seed=seed).fit(course, progress=False)
            fit_seconds = time.perf_counter() - clock
            positions, masses = model.transport(start, course.times)
            for k in range(1, len(course.times)):
                rows.append(dict(
                    method=method, seed=seed, time=course.times[k], fit_seconds=fit_seconds,
                    w1=score(positions[k], course.populations[k], masses[k])["w1"],
                    mass_error=mass_error(masses[k].mean(), len(start), len(course.populations[k])),
                    growth_corr=np.corrcoef(model.growth(rep, times), truth)[0, 1] if model.has_growth else np.nan,
                ))
    return pd.DataFrame(rows)


def held_out(name: str, steps: int, seeds) -> pd.DataFrame:
    """Leave-one-time-point-out on a DeepRUOT dataset."""
    adata = getattr(cf.datasets, name)()
    course = cf.read_time_course(adata, "time", "X_pca")
    return leave_one_out(course, METHODS, seeds=seeds, baseline=True, progress=False, n_steps=steps)


def _fmt(values) -> str:
    values = np.asarray(values, dtype=float)
    if np.isnan(values).all():
        return "-"
    return f"{np.nanmean(values):.3f} ± {np.nanstd(values):.3f}" if values.size > 1 else f"{values[0]:.3f}"


def report(sim: pd.DataFrame, loo: dict[str, pd.DataFrame], steps: int, seeds, seconds: float) -> str:
    """The markdown section."""
    lines = [
        "## Unbalanced transport: WFR-FM (`method=\"wfr\"`) vs balanced OT-CFM",
        "",
        f"`python benchmarks/unbalanced.py --steps {steps} --seeds {' '.join(map(str, seeds))}` "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; whole run {seconds / 60:.1f} min). Defaults otherwise: delta from "
        "the data (`cellflow.couplings.default_delta`), reg 0.01, growth weight 1, batch 256 per interval.",
        "Mean ± std over seeds; W1 weights predicted cells by their normalised mass.",
        "",
        "### simulation_gene (transport from t=0 to every later time)",
        "",
        "| method | mean W1 | mean relative mass error | growth correlation | fit seconds |",
        "|---|---|---|---|---|",
    ]
    per_seed = sim.groupby(["method", "seed"]).agg(
        w1=("w1", "mean"), mass_error=("mass_error", "mean"), growth_corr=("growth_corr", "first"),
        fit_seconds=("fit_seconds", "first"))
    for method in METHODS:
        r = per_seed.loc[method]
        lines.append(f"| {method} | {_fmt(r.w1)} | {_fmt(r.mass_error)} | {_fmt(r.growth_corr)} | {_fmt(r.fit_seconds)} |")
    lines.append("| WFR-FM (published) | 0.019 | 0.001 | 0.991 | |")
    for name, table in loo.items():
        lines += [
            "",
            f"### {name} (leave one inner time point out)",
            "",
            "| method | mean W1 | mean W2 | mean relative mass error | seconds per fit |",
            "|---|---|---|---|---|",
        ]
        per_seed = table.groupby(["method", "seed"])[["w1", "w2", "mass_error", "seconds"]].mean()
        for method in (*METHODS, "ot_interpolation"):
            r = per_seed.loc[method]
            lines.append(f"| {method} | {_fmt(r.w1)} | {_fmt(r.w2)} | {_fmt(r.mass_error)} | {_fmt(r.seconds)} |")
        if name == "emt":
            lines.append("| WFR-FM (published) | 0.298 | | | |")
    return "\n".join(lines)



def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    clock = time.perf_counter()
    sim = simulation_gene(args.steps, args.seeds)
    print(sim.groupby("method")[["w1", "mass_error", "growth_corr", "fit_seconds"]].mean(), flush=True)
    loo = {}
    for name in ("emt", "mouse_hematopoiesis"):
        loo[name] = held_out(name, args.steps, args.seeds)
        print(name, loo[name].groupby("method")[["w1", "mass_error", "seconds"]].mean(), sep="\n", flush=True)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    sim.to_csv(out / "unbalanced_simulation_gene.csv", index=False)
    for name, table in loo.items():
        table.to_csv(out / f"unbalanced_{name}.csv", index=False)
    section = report(sim, loo, args.steps, args.seeds, time.perf_counter() - clock)
    write_section("unbalanced", section)
    print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
