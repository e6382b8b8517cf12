"""OT potentials against chained plans: `mmfm_potential` vs `mmfm`, leave one time point out.

All on the monotone Hermite path through the chains' knots, so only the coupling differs: `mmfm`
(exact OT plans, chained), `mmfm` on entropic plans of the same `reg`, `mmfm_potential` (the
soft c-transform of the entropic potentials), and the hard c-transform (`coupling="potential_map"`,
each cell's Laguerre partner, deterministic chains). The same pairs again with `block_size=256`,
below the populations' sizes: `mmfm` then solves random blocks of 256 cells per side, the
potential couplings solve one subsample of 256 per side and place every other cell by the
c-transform (the large-population rule of each). 3 seeds, every inner time point held out.

Run: ``python benchmarks/potentials.py [--steps 1000] [--seeds 0 1 2] [--datasets emt] [--threads 1]``;
writes its section of BENCHMARKS.md (or ``--out``) and ``potentials_<dataset>.csv`` in ``--results``
(default ``benchmarks/results/``). ``--quick`` runs the small simulated course of ``leave_one_out.py``
for a few steps, seed 0 (seconds, for tests; its populations are below ``block_size``, so the block
rows repeat the others), and writes its section to ``BENCHMARKS_quick.md`` in ``--results`` unless
``--out`` says otherwise.
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
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from multimarginal import load_time_course  # noqa: E402
from sections import (  # noqa: E402
    QUICK_DATASET,
    QUICK_STEPS,
    RESULTS,
    code_version,
    report_file,
    write_section,
)

from cellflow import benchmark  # noqa: E402

SMALL_BLOCK = 256
VARIANTS = {
    "mmfm (exact plans, chained)": dict(method="mmfm"),
    "mmfm (entropic plans, chained)": dict(method="mmfm", coupling="entropic"),
    "mmfm_potential (soft c-transform)": dict(method="mmfm_potential"),
    "mmfm_potential (hard c-transform, potential_map)": dict(method="mmfm_potential", coupling="potential_map"),
    f"mmfm (exact plans), block_size={SMALL_BLOCK}": dict(method="mmfm", block_size=SMALL_BLOCK),
    f"mmfm_potential (soft), block_size={SMALL_BLOCK}": dict(method="mmfm_potential", block_size=SMALL_BLOCK),
}
REFERENCE = "mmfm (exact plans, chained)"


def run(name: str, steps: int, seeds) -> pd.DataFrame:
    """Leave-one-out rows for every variant and the exact-OT interpolation."""
    course = load_time_course(name)
    tables = []
    for label, variant in VARIANTS.items():
        options = dict(variant)
        table = benchmark.leave_one_out(course, [options.pop("method")], seeds=seeds, baseline=not tables,
                                        progress=False, n_steps=steps, **options)
        table.loc[table["method"] != "ot_interpolation", "method"] = label
        tables.append(table)
        print(name, label, f"W1 {table.loc[table['method'] == label, 'w1'].mean():.4f}", flush=True)
    return pd.concat(tables, ignore_index=True)


def section(results, command: str, minutes: float, threads: int, code: str) -> str:
    """The markdown section of BENCHMARKS.md."""
    lines = [
        "## Multimarginal flow matching with OT potentials (`method=\"mmfm_potential\"`) vs chained plans",
        "",
        f"`{command}` ({code} when the run started; {platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, {threads} thread{'s' if threads > 1 else ''}; {minutes:.0f} min; load average at "
        f"the end {', '.join(f'{v:.2f}' for v in os.getloadavg())}). Leave one time point out, mean ± std over "
        "seeds of the mean W1 over held-out times, one point per cell of t_(k-1); ratio = W1 / mmfm's. Every "
        "variant uses the monotone Hermite path, so only the coupling differs; reg is the default "
        "(2 sigma^2 = 0.02 in units of the data's overall variance).",
        "",
        "What to expect: at the cells an interval's problem is solved on, the soft c-transform of the entropic "
        "potentials is the entropic plan's own row, so with the default block_size (every emt population fits) "
        "`mmfm_potential` trains on the chains of entropic `mmfm`, and at this reg both are close to the exact "
        "plans; the hard c-transform is a map (it cannot split a cell), so its chains are deterministic. With "
        f"block_size={SMALL_BLOCK} the two large-population rules differ: random blocks against one subsample "
        "extended by the c-transform. The seconds include the couplings (both entropic rules share one solver, "
        "`cellflow.transport.entropic_potentials`).",
        "",
        "| dataset | coupling | W1 | ratio to mmfm | W2 | seconds per fit |",
        "|---|---|---|---|---|---|",
    ]
    for name, table in results.items():
        per_seed = table.groupby(["method", "seed"])[["w1", "w2", "seconds"]].mean()
        reference = per_seed.loc[REFERENCE, "w1"].mean()
        for method in (*VARIANTS, "ot_interpolation"):
            r = per_seed.loc[method]
            spread = f" ± {r.w1.std(ddof=0):.3f}" if len(r) > 1 else ""
            lines.append(f"| {name} | {method} | {r.w1.mean():.3f}{spread} | {r.w1.mean() / reference:.2f} | "
                         f"{r.w2.mean():.3f} | {r.seconds.mean():.1f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--datasets", nargs="+", default=["emt"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every fit")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the rows (potentials_<dataset>.csv)")
    parser.add_argument("--out", type=Path, default=None,
                        help="report whose section is written (default BENCHMARKS.md; with --quick "
                             "BENCHMARKS_quick.md in --results)")
    parser.add_argument("--quick", action="store_true",
                        help=f"the simulated course {QUICK_DATASET}, {QUICK_STEPS} steps, seed 0: seconds (for tests)")
    args = parser.parse_args()
    if args.quick:
        args.datasets, args.steps, args.seeds = [QUICK_DATASET], QUICK_STEPS, [0]
    torch.set_num_threads(args.threads)
    command = (f"python benchmarks/potentials.py --steps {args.steps} --seeds {' '.join(map(str, args.seeds))} "
               f"--datasets {' '.join(args.datasets)} --threads {args.threads}")
    code = code_version()
    clock = time.perf_counter()
    args.results.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in args.datasets:
        results[name] = run(name, args.steps, args.seeds)
        results[name].to_csv(args.results / f"potentials_{name}.csv", index=False)
    text = section(results, command, (time.perf_counter() - clock) / 60, args.threads, code)
    write_section("potentials", text, report_file(args.out, args.quick, args.results))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
