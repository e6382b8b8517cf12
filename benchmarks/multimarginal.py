"""Multimarginal benchmark: one model through all time points against pairwise OT-CFM.

Leave one inner time point out (the held-out time is simply not a knot), 3 seeds, on kouno_thp1
(10 PCs of log2 expression), emt, mouse_hematopoiesis and the moscot AnnData (10 PCs), for
`mmfm` with the monotone cubic Hermite path, the natural cubic spline and the piecewise-linear
path, pairwise `otcfm`, and the exact-OT interpolation baseline, all in the same run. TorchCFM's
OT-CFM is in `benchmarks/leave_one_out.py`'s run on the same data and protocol.

Run: ``python benchmarks/multimarginal.py [--steps 1000] [--seeds 0 1 2] [--datasets ...] [--threads 1]``;
writes its section of BENCHMARKS.md (or ``--out``) and the rows to ``multimarginal_<dataset>.csv`` in
``--results`` (default ``benchmarks/results/``). Every fit uses one torch thread by default, so that
the run is not at the mercy of other jobs. ``--quick`` runs the small simulated course of
``leave_one_out.py`` for a few steps, seed 0 (seconds, for tests), and writes its section to
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
import scanpy as sc
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
from cellflow import benchmark  # noqa: E402

os.environ.setdefault("CELLFLOW_DATA_DIR", str(ROOT.parent / "shared" / "data"))
VARIANTS = {
    "mmfm (monotone Hermite)": dict(method="mmfm", path="hermite"),
    "mmfm (natural cubic spline)": dict(method="mmfm", path="spline"),
    "mmfm (piecewise linear)": dict(method="mmfm", path="linear"),
    "otcfm (pairwise)": dict(method="otcfm"),
}


def load(name: str):
    """The dataset with ``obsm["X_pca"]``."""
    if name == "kouno_thp1":
        return cf.datasets.kouno_thp1(n_pcs=10)
    adata = getattr(cf.datasets, name)()
    if name == "moscot_temporal":
        sc.pp.pca(adata, n_comps=10)
    return adata


def load_time_course(name: str):
    """The time course of ``name`` in ``obsm["X_pca"]``, or the simulated course of ``leave_one_out.py``."""
    if name == QUICK_DATASET:
        return load_course(name)[0]
    return cf.read_time_course(load(name), "time", "X_pca")


def run(name: str, steps: int, seeds) -> pd.DataFrame:
    """Leave-one-out rows for every variant and the baseline."""
    course = load_time_course(name)
    tables = []
    for label, variant in VARIANTS.items():
        options = dict(variant)
        table = benchmark.leave_one_out(
            course, [options.pop("method")], seeds=seeds, baseline=not tables, progress=False,
            n_steps=steps, **options,
        )
        table.loc[table["method"] != "ot_interpolation", "method"] = label
        tables.append(table)
        print(name, label, f"W1 {table.loc[table['method'] == label, 'w1'].mean():.4f}", flush=True)
    return pd.concat(tables, ignore_index=True)


def section(results: dict[str, pd.DataFrame], steps: int, seeds, minutes: float, threads: int = 1,
            code: str = "") -> str:
    """The markdown section of BENCHMARKS.md."""
    lines = [
        "## Multimarginal (`method=\"mmfm\"`) vs pairwise OT-CFM, leave one time point out",
        "",
        f"`python benchmarks/multimarginal.py --steps {steps} --seeds {' '.join(map(str, seeds))} "
        f"--datasets {' '.join(results)} --threads {threads}` "
        f"({code} when the run started; {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{threads} thread"
        f"{'s' if threads > 1 else ''}; {minutes:.0f} min; load average at the end "
        f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}). "
        "Mean ± std over seeds of the mean W1 over held-out times; ratio = W1 / pairwise otcfm's.",
        "",
        "With two or three knots left after holding one out every curve is (nearly) the straight line and "
        "mmfm equals pairwise otcfm, as it should; time courses with many, unevenly spaced time points "
        "(kouno_thp1) separate the curves. The curves pass through the knots in real time (the network "
        "sees time on cellflow's clock, `cellflow.fields.Clock`, but paths are defined in real time); the "
        "natural cubic spline can overshoot between closely spaced knots, the monotone Hermite curve "
        "cannot. TorchCFM's OT-CFM on the same protocol is in the balanced section.",
        "",
        "| dataset | method | W1 | ratio to otcfm | W2 | seconds per fit |",
        "|---|---|---|---|---|---|",
    ]
    for name, table in results.items():
        per_seed = table.groupby(["method", "seed"])[["w1", "w2", "seconds"]].mean()
        reference = per_seed.loc["otcfm (pairwise)", "w1"].mean()
        for method in (*VARIANTS, "ot_interpolation"):
            r = per_seed.loc[method]
            spread = f" ± {r.w1.std(ddof=0):.3f}" if len(r) > 1 else ""
            lines.append(
                f"| {name} | {method} | {r.w1.mean():.3f}{spread} | {r.w1.mean() / reference:.2f} | "
                f"{r.w2.mean():.3f} | {r.seconds.mean():.1f} |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--datasets", nargs="+",
                        default=["kouno_thp1", "emt", "mouse_hematopoiesis", "moscot_temporal"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every fit")
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="folder of the rows (multimarginal_<dataset>.csv)")
    parser.add_argument("--out", type=Path, default=None,
                        help="report whose section is written (default BENCHMARKS.md; with --quick "
                             "BENCHMARKS_quick.md in --results)")
    parser.add_argument("--quick", action="store_true",
                        help=f"the simulated course {QUICK_DATASET}, {QUICK_STEPS} steps, seed 0: seconds (for tests)")
    args = parser.parse_args()
    if args.quick:
        args.datasets, args.steps, args.seeds = [QUICK_DATASET], QUICK_STEPS, [0]
    torch.set_num_threads(args.threads)
    code = code_version()  # cellflow is imported once: the code that runs is the code at the start
    clock = time.perf_counter()
    results = {}
    args.results.mkdir(parents=True, exist_ok=True)
    for name in args.datasets:
        results[name] = run(name, args.steps, args.seeds)
        results[name].to_csv(args.results / f"multimarginal_{name}.csv", index=False)
    text = section(results, args.steps, args.seeds, (time.perf_counter() - clock) / 60, args.threads, code)
    write_section("multimarginal", text, report_file(args.out, args.quick, args.results))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
