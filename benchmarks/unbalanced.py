"""Unbalanced benchmark (issue 3): WFR-FM against balanced OT-CFM on the DeepRUOT data.

- simulation_gene: fit on all time points, push the t=0 cells to every later time; mean W1 (predicted
  cells weighted by their normalised mass), mean relative mass error, and the Pearson correlation of the
  learned growth with the known g(x) = x2^2 / (1 + x2^2) at every measured cell, at its own time (as
  WFR-FM's evaluation computes it). A second growth score: the learned net log-growth of each pushed cell
  over each interval against the true g integrated along the same learned trajectory.
- emt, mouse_hematopoiesis: leave one inner time point out (W1, relative mass error), with the exact-OT
  interpolation baseline.
WFR-FM's published numbers use a delta set by hand per data set (1.5 for simulation_gene, 2.0 for emt in
their configuration); "wfr, published delta" runs our method with that delta, for a like-for-like comparison.
Every number is a mean +- std over seeds, methods run in the same process on the same data.

Run: ``python benchmarks/unbalanced.py [--steps 2000] [--seeds 0 1 2] [--threads 1]``; writes its section of BENCHMARKS.md.
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
PUBLISHED_DELTA = {"simulation_gene": 1.5, "emt": 2.0}  # WFR-FM's own configuration for these data
PUBLISHED = "wfr, published delta"
# WFR-FM's published training recipe (QiangweiPeng/WFR-FM, src/experiment_configs.py): 5 hidden layers of
# 256, 3000 steps, lr 5e-3 with cosine decay (to 1e-5 there, to lr/100 here), EMA 0.995, batch 400
# (simulation) or 256 (emt), and its hand-set delta.
RECIPE = "wfr, published delta and training"
RECIPE_KWARGS = dict(hidden=(256,) * 5, n_steps=3000, lr=5e-3, lr_schedule="cosine", ema_decay=0.995)
RECIPE_BATCH = {"simulation_gene": 400, "emt": 256}


def variants(name: str) -> dict[str, tuple[str, dict]]:
    """Label -> (method, keyword arguments) of every model run on the data set ``name``."""
    runs = {method: (method, {}) for method in METHODS}
    if name in PUBLISHED_DELTA:
        runs[PUBLISHED] = ("wfr", {"delta": PUBLISHED_DELTA[name]})
        runs[RECIPE] = ("wfr", {"delta": PUBLISHED_DELTA[name], "batch_size": RECIPE_BATCH[name], **RECIPE_KWARGS})
    return runs


def net_growth_corr(model, start, times, truth, n_sub: int = 20) -> float:
    """Correlation of learned and true net log-growth per interval along the learned trajectories.

    Each cell of ``start`` is pushed through ``n_sub`` steps per interval; its true log-growth over
    an interval is ``truth`` (a function of positions) integrated along its learned path (trapezoid).
    """
    pieces = [np.linspace(a, b, n_sub + 1)[:-1] for a, b in zip(times[:-1], times[1:])]
    fine = np.concatenate([*pieces, times[-1:]])
    positions, masses = model.transport(start, fine)
    rates = truth(positions)
    steps = 0.5 * (rates[1:] + rates[:-1]) * np.diff(fine)[:, None]
    integral = np.concatenate([np.zeros((1, len(start))), np.cumsum(steps, axis=0)])
    learned = np.diff(np.log(masses[::n_sub]), axis=0).ravel()
    return float(np.corrcoef(learned, np.diff(integral[::n_sub], axis=0).ravel())[0, 1])


def simulation_gene(steps: int, seeds) -> pd.DataFrame:
    """Transport from t=0 to every later time on the simulated gene circuit."""
    adata = cf.datasets.simulation_gene()
    course = cf.read_time_course(adata, "time", "X_pca")
    start = course.populations[0]
    rep = np.concatenate(course.populations)
    times = np.concatenate([np.full(len(p), t) for p, t in zip(course.populations, course.times)])
    growth = lambda x: x[..., 1] ** 2 / (1 + x[..., 1] ** 2)  # noqa: E731
    rows = []
    for label, (method, kwargs) in variants("simulation_gene").items():
        for seed in seeds:
            clock = time.perf_counter()
            model = cf.CellFlow(method, seed=seed, **{"n_steps": steps, **kwargs}).fit(course, progress=False)
            fit_seconds = time.perf_counter() - clock
            positions, masses = model.transport(start, course.times)
            corr = np.corrcoef(model.growth(rep, times), growth(rep))[0, 1] if model.has_growth else np.nan
            net = net_growth_corr(model, start, course.times, growth) if model.has_growth else np.nan
            for k in range(1, len(course.times)):
                rows.append(dict(
                    method=label, seed=seed, time=course.times[k], fit_seconds=fit_seconds,
                    w1=score(positions[k], course.populations[k], masses[k])["w1"],
                    mass_error=mass_error(masses[k].mean(), len(start), len(course.populations[k])),
                    growth_corr=corr, net_growth_corr=net, delta=model.params["delta"] or np.nan,
                ))
    return pd.DataFrame(rows)


def held_out(name: str, steps: int, seeds) -> pd.DataFrame:
    """Leave-one-time-point-out on a DeepRUOT dataset."""
    adata = getattr(cf.datasets, name)()
    course = cf.read_time_course(adata, "time", "X_pca")
    tables = []
    for i, (label, (method, kwargs)) in enumerate(variants(name).items()):
        table = leave_one_out(course, [method], seeds=seeds, baseline=i == 0, progress=False, **{"n_steps": steps, **kwargs})
        tables.append(table.assign(method=table.method.where(table.method != method, label)))
    return pd.concat(tables, ignore_index=True)


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
        "the data (`cellflow.couplings.cross_validated_delta`), reg 0.01, growth weight 1, batch 256 per interval.",
        "Mean ± std over seeds; W1 weights predicted cells by their normalised mass.",
        "",
        "### simulation_gene (transport from t=0 to every later time)",
        "",
        "| method | delta | mean W1 | mean relative mass error | growth correlation | net growth correlation | fit seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    per_seed = sim.groupby(["method", "seed"]).agg(
        w1=("w1", "mean"), mass_error=("mass_error", "mean"), growth_corr=("growth_corr", "first"),
        net_growth_corr=("net_growth_corr", "first"), fit_seconds=("fit_seconds", "first"), delta=("delta", "first"))
    for method in variants("simulation_gene"):
        r = per_seed.loc[method]
        lines.append(f"| {method} | {_fmt(r.delta)} | {_fmt(r.w1)} | {_fmt(r.mass_error)} | {_fmt(r.growth_corr)} | "
                     f"{_fmt(r.net_growth_corr)} | {_fmt(r.fit_seconds)} |")
    lines += [
        "| WFR-FM (published) | 1.5 | 0.019 | 0.001 | 0.991 | | |",
        "",
        "Growth correlation: learned growth at every measured cell at its own time against g(x) (WFR-FM's "
        "metric). Net growth correlation: learned log-growth of each pushed t=0 cell over each interval "
        "against g integrated along the same learned path. A delta so small that cells travel a good part "
        "of it per interval ties the learned growth to displacement (see the notes of `default_delta`).",
        "",
        f"\"{PUBLISHED}\" is our default training with WFR-FM's hand-set delta; \"{RECIPE}\" also takes WFR-FM's "
        "training recipe (5 hidden layers of 256, 3000 steps, lr 5e-3 with cosine decay, EMA 0.995, batch 400 "
        "on simulation_gene and 256 on emt): the like-for-like reproduction of the published numbers. The "
        "first row is what a user gets without setting anything.",
    ]
    for name, table in loo.items():
        lines += [
            "",
            f"### {name} (leave one inner time point out)",
            "",
            "| method | mean W1 | mean W2 | mean relative mass error | seconds per fit |",
            "|---|---|---|---|---|",
        ]
        per_seed = table.groupby(["method", "seed"])[["w1", "w2", "mass_error", "seconds"]].mean()
        for method in (*variants(name), "ot_interpolation"):
            r = per_seed.loc[method]
            lines.append(f"| {method} | {_fmt(r.w1)} | {_fmt(r.w2)} | {_fmt(r.mass_error)} | {_fmt(r.seconds)} |")
        if name == "emt":
            lines.append("| WFR-FM (published, delta 2.0) | 0.298 | | | |")
    return "\n".join(lines)



def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every fit")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.perf_counter()
    sim = simulation_gene(args.steps, args.seeds)
    columns = ["w1", "mass_error", "growth_corr", "net_growth_corr", "fit_seconds"]
    print(sim.groupby("method")[columns].mean(), flush=True)
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
