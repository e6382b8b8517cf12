"""Rectified flow: straightness and few-step quality before and after reflow, and the gradient field.

Leave one inner time point out: fit on the rest, push the cells of ``t_(k-1)`` to the held-out
``t_k`` with 1, 2 and 4 Euler steps and with the adaptive solver (dopri5), and score W1 against
the held-out cells; measure the straightness of those paths (kinetic energy over squared
displacement, :func:`cellflow.metrics.straightness`). Each fit is scored as it is, then after one
and after two rounds of :meth:`cellflow.CellFlow.rectify`. Data: a simulated growth-free course
(2-D latent states) and emt (``obsm["X_pca"]``, ``obs["time"]``). A second table compares the
gradient field (``field="gradient"``) with the direct one on emt: held-out W1 and seconds per step.

Run: ``python benchmarks/reflow.py [--steps 1000] [--seeds 0] [--methods icfm otcfm] [--threads 1]``;
writes its section of BENCHMARKS.md (or ``--out``) and the rows to ``reflow.csv`` and
``reflow_fields.csv`` in ``--results`` (default ``benchmarks/results/``). ``--quick`` runs both tables
on the small simulated course of ``leave_one_out.py`` alone, ``otcfm`` only, for a few steps (seconds,
for tests), and writes its rows to ``reflow_quick.csv`` and ``reflow_fields_quick.csv`` and its section to
``BENCHMARKS_quick.md`` in ``--results`` unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # this checkout's cellflow, and sections.py

from _common import load_course  # noqa: E402
from sections import (  # noqa: E402
    QUICK_DATASET,
    QUICK_STEPS,
    RESULTS,
    code_version,
    report_file,
    write_section,
)

import cellflow as cf  # noqa: E402

os.environ.setdefault("CELLFLOW_DATA_DIR", str(ROOT.parent / "shared" / "data"))
EULER_STEPS = (1, 2, 4)
ROUNDS = (0, 1, 2)


def courses(quick: bool = False) -> dict:
    """The time courses benchmarked, by name (``quick``: the simulated course of ``leave_one_out.py`` alone)."""
    if quick:
        return {QUICK_DATASET: load_course(QUICK_DATASET)[0]}
    simulated = cf.datasets.simulate(n_cells=500, times=(0.0, 1.0, 2.0, 3.0, 4.0), growth_scale=0.0, seed=0)
    return {name: cf.read_time_course(adata, "time", "X_pca")
            for name, adata in (("simulated", simulated), ("emt", cf.datasets.emt()))}


def scores(model, before, held, t_prev, t_held) -> dict:
    """W1 of the pushes with each solver, and the straightness of the adaptive paths."""
    row = {"straightness": model.straightness(before, t_prev, t_held)}
    for n in EULER_STEPS:
        pushed = model.push(before, t_prev, t_held, solver="euler", step_size=(t_held - t_prev) / n)
        row[f"w1_euler{n}"] = cf.metrics.w1(pushed, held)
    row["w1_adaptive"] = cf.metrics.w1(model.push(before, t_prev, t_held), held)
    return row


def reflow_rows(name, course, methods, seeds, steps) -> list[dict]:
    """One row per method, held-out time, seed and number of reflow rounds."""
    rows = []
    for k in range(1, len(course.times) - 1):
        training = course.without(k)
        t_prev, t_held = course.times[k - 1], course.times[k]
        before, held = course.populations[k - 1], course.populations[k]
        for method in methods:
            for seed in seeds:
                start = time.perf_counter()
                model = cf.CellFlow(method, n_steps=steps, seed=seed).fit(training, progress=False)
                for rounds in ROUNDS:
                    if rounds:
                        model.rectify(training, rounds - model.params["reflow"], progress=False)
                    seconds = time.perf_counter() - start
                    rows.append(dict(dataset=name, method=method, held_out_time=t_held, seed=seed, rounds=rounds,
                                     seconds=seconds, **scores(model, before, held, t_prev, t_held)))
                    print(name, method, f"t={t_held:g}", f"seed {seed}", f"rounds {rounds}",
                          {key: round(value, 4) for key, value in rows[-1].items() if key.startswith(("w1", "str"))},
                          flush=True)
    return rows


def field_rows(name, course, seeds, steps) -> list[dict]:
    """Direct against gradient field (otcfm) on every held-out time of ``course`` (called ``name``)."""
    rows = []
    for k in range(1, len(course.times) - 1):
        training = course.without(k)
        before, held = course.populations[k - 1], course.populations[k]
        for field in ("direct", "gradient"):
            for seed in seeds:
                model = cf.CellFlow("otcfm", n_steps=steps, field=field, seed=seed).fit(training, progress=False)
                training_seconds = float(model.history["fit_seconds"] - model.history["coupling_seconds"])
                rows.append(dict(field=field, held_out_time=course.times[k], seed=seed,
                                 ms_per_step=1000 * training_seconds / steps,
                                 w1=cf.metrics.w1(model.push(before, course.times[k - 1], course.times[k]), held)))
                print(name, field, f"t={course.times[k]:g}", rows[-1], flush=True)
    return rows


def section(reflow: pd.DataFrame, fields: pd.DataFrame, args, minutes: float, code: str) -> str:
    """The markdown section of BENCHMARKS.md."""
    lines = [
        "## Rectified flow (`reflow=k`) and the gradient field (`field=\"gradient\"`)",
        "",
        f"`python benchmarks/reflow.py --steps {args.steps} --seeds {' '.join(map(str, args.seeds))} "
        f"--methods {' '.join(args.methods)} --threads {args.threads}` ({code} when the run started; "
        f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} thread"
        f"{'s' if args.threads > 1 else ''}; {minutes:.0f} min; load average at the end "
        f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}).",
        "",
        "Leave one inner time point out; the cells of the time point before it are pushed to it. "
        "Straightness: kinetic energy over squared displacement of the adaptive paths (1 for straight paths "
        "at constant speed; error = value - 1). W1 of the pushes with 1, 2, 4 Euler steps and with dopri5, "
        "mean over held-out times and seeds. Rounds 1 and 2 continue the same fit (each round: the cells of "
        f"every training time point paired with their own pushes, {args.steps} steps from the previous "
        "weights); seconds are cumulative.",
        "",
        "| dataset | method | reflow rounds | straightness error | W1 1 Euler step | 2 steps | 4 steps | adaptive | "
        "seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    mean = reflow.groupby(["dataset", "method", "rounds"], sort=False).mean(numeric_only=True)
    for (dataset, method, rounds), r in mean.iterrows():
        lines.append(f"| {dataset} | {method} | {rounds} | {r.straightness - 1:.4f} | {r.w1_euler1:.3f} | "
                     f"{r.w1_euler2:.3f} | {r.w1_euler4:.3f} | {r.w1_adaptive:.3f} | {r.seconds:.0f} |")
    lines += [
        "",
        f"Gradient field against the direct one on {args.field_dataset} (otcfm, {args.steps} steps, "
        "every held-out time, "
        "W1 of the adaptive push; milliseconds per training step without the coupling):",
        "",
        "| field | W1 | ms per step |",
        "|---|---|---|",
    ]
    for field, r in fields.groupby("field", sort=False).mean(numeric_only=True).iterrows():
        lines.append(f"| {field} | {r.w1:.3f} | {r.ms_per_step:.1f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="training steps of the fit and of each round")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--methods", nargs="+", default=["icfm", "otcfm"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the rows (reflow*.csv)")
    parser.add_argument("--out", type=Path, default=None,
                        help="report whose section is written (default BENCHMARKS.md; with --quick "
                             "BENCHMARKS_quick.md in --results)")
    parser.add_argument("--quick", action="store_true",
                        help=f"the simulated course {QUICK_DATASET} alone, otcfm, {QUICK_STEPS} steps: "
                        "seconds (for tests)")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.methods = QUICK_STEPS, ["otcfm"]
    args.field_dataset = QUICK_DATASET if args.quick else "emt"
    torch.set_num_threads(args.threads)
    code = code_version()
    clock = time.perf_counter()
    data = courses(args.quick)
    reflow = pd.DataFrame([row for name, course in data.items()
                           for row in reflow_rows(name, course, args.methods, args.seeds, args.steps)])
    fields = pd.DataFrame(field_rows(args.field_dataset, data[args.field_dataset], args.seeds, args.steps))
    args.results.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    reflow.to_csv(args.results / f"reflow{suffix}.csv", index=False)
    fields.to_csv(args.results / f"reflow_fields{suffix}.csv", index=False)
    text = section(reflow, fields, args, (time.perf_counter() - clock) / 60, code)
    write_section("reflow", text, report_file(args.out, args.quick, args.results))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
