"""Seconds on a laptop: default fits of small data, on an idle machine and beside busy processes.

What it runs, each in a fresh Python process (imports included in nothing but the demo):

* ``cf.tl.fit`` with every default on the moscot AnnData (250 cells, ``scanpy.pp.pca`` with 50
  components) and on emt (3133 cells, 10-d), timed around the call;
* ``cellflow demo`` (simulate, fit, write ``.h5ad`` and a PNG), timed as the whole command;

first with nothing else started by this script, then beside ``--busy`` CPU-bound processes
(plain Python loops) that it starts and stops itself. Targets on 2 cores: moscot <= 5 s,
emt <= 10 s, demo <= 15 s idle, and at most 3x those beside two busy processes. Writes the
``small_data_speed`` section of ``BENCHMARKS.md`` (``--out`` to write elsewhere) and the timings to
``small_data_speed.csv`` in ``--results`` (default ``benchmarks/results/``).

``--quick`` (seconds, for tests) times one fit of moscot for a few steps, with nothing busy
started, writes ``small_data_speed_quick.csv`` and its section to ``BENCHMARKS_quick.md`` in
``--results`` unless ``--out`` says otherwise; its seconds are not the default fit's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("CELLFLOW_DATA_DIR", str(ROOT.parent / "shared" / "data"))

import pandas as pd  # noqa: E402
from sections import QUICK_STEPS, RESULTS, code_version, report_file, write_section  # noqa: E402

TARGETS = {"moscot": 5.0, "emt": 10.0, "demo": 15.0}
FIT = """
import time, cellflow as cf
adata = {load}
start = time.perf_counter()
model = cf.tl.fit(adata, time_key="time", progress=False{options})
print(time.perf_counter() - start, len(model.history["loss"]))
"""
LOADS = {"moscot": "cf.datasets.moscot_temporal(n_pcs=50)", "emt": "cf.datasets.emt()"}


def timed(name: str, options: str = "") -> tuple[float, str]:
    """Seconds of one run of ``name`` and the training steps it took (``"-"`` for the demo).

    ``options`` is appended to the arguments of ``cf.tl.fit`` (e.g. ``", n_steps=40"``; empty: every default).
    """
    if name == "demo":
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "cellflow", "demo", "--out", out], check=True, capture_output=True)
            return time.perf_counter() - start, "-"
    done = subprocess.run([sys.executable, "-c", FIT.format(load=LOADS[name], options=options)], check=True,
                          capture_output=True, text=True)
    seconds, steps = done.stdout.split()[-2:]
    return float(seconds), steps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--busy", type=int, default=2, help="CPU-bound processes beside the loaded runs (0: idle only)")
    p.add_argument("--repeats", type=int, default=2, help="runs per case (the median is reported)")
    p.add_argument("--results", type=Path, default=RESULTS, help="folder of the timings (small_data_speed*.csv)")
    p.add_argument("--out", type=Path, default=None,
                   help="report whose section is written (default BENCHMARKS.md; with --quick BENCHMARKS_quick.md "
                        "in --results)")
    p.add_argument("--quick", action="store_true",
                   help=f"moscot alone, {QUICK_STEPS} steps, one run, idle only: seconds (for tests)")
    args = p.parse_args(argv)
    cases, options = (["moscot"], f", n_steps={QUICK_STEPS}") if args.quick else (list(TARGETS), "")
    if args.quick:
        args.busy, args.repeats = 0, 1
    rows, code = [], code_version()
    conditions = ["idle"] + ([f"beside {args.busy} busy processes"] if args.busy else [])
    for condition in conditions:
        busy = []
        if condition != "idle":
            busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
            time.sleep(2)
        try:
            load = os.getloadavg()[0]
            for name in cases:
                runs = sorted(timed(name, options) for _ in range(args.repeats))
                seconds, steps = runs[len(runs) // 2]
                rows.append((condition, name, seconds, steps, load))
                print(f"{condition:28s} {name:7s} {seconds:6.1f} s  steps {steps}  (load {load:.2f})", flush=True)
        finally:
            for process in busy:
                process.kill()
    idle = {name: s for condition, name, s, _, _ in rows if condition == "idle"}
    lines = [
        "## Seconds on small data (default settings)",
        "",
        f"`python benchmarks/small_data_speed.py{' --quick' if args.quick else ''}` ({code}; "
        f"{os.cpu_count()} cores; median of {args.repeats} runs; "
        "the 1-minute load average when each condition began is given; cellflow picks its CPU threads from the "
        "free cores, `cellflow._utils.cpu_threads`).",
        "",
        "| condition | run | seconds | steps (`n_steps='auto'`) | target | x idle |",
        "|---|---|---|---|---|---|",
    ]
    for condition, name, seconds, steps, load in rows:
        target = TARGETS[name] if condition == "idle" else 3 * TARGETS[name]
        lines.append(f"| {condition} (load {load:.1f}) | {name} | {seconds:.1f} | {steps} | <= {target:g} | "
                     f"{seconds / idle[name]:.2f} |")
    text = "\n".join(lines)
    args.results.mkdir(parents=True, exist_ok=True)
    columns = ["condition", "run", "seconds", "steps", "load"]
    pd.DataFrame(rows, columns=columns).to_csv(
        args.results / f"small_data_speed{'_quick' if args.quick else ''}.csv", index=False)
    write_section("small_data_speed", text, report_file(args.out, args.quick, args.results))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
