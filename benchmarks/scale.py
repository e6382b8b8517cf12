"""Scale benchmark: cellflow's default fit, stage by stage, on simulated courses of growing size.

What it runs, for each size ``n`` (cells per time point; default 2,000, 20,000 and 200,000):

* data: ``cellflow.datasets.simulate(n_cells=n, n_genes=50, growth_scale=0)``: 5 time points
  (0 to 4) of exactly ``n`` cells each (without growth every time point keeps ``n`` cells),
  written to an ``.h5ad`` in a temporary folder by a subprocess of its own;
* the measured run, in a fresh subprocess per size so that its peak memory is its own: the file
  read back with ``anndata.read_h5ad(..., backed="r")``, then ``cf.tl.fit(adata, time_key="time",
  use_rep="X")`` (the default method, ``n_steps="auto"``, ``hidden="auto"``) and
  ``cf.tl.interpolate(adata, from_time=0, to_time=0.5)``;
* stages: reading (``cellflow.io.read_time_course`` of the backed file, timed on its own
  before the fit, which repeats it), preparation (``CellFlow.fit`` before its clock starts:
  centring, scaling, float32 tensors), coupling (``model.history["coupling_seconds"]``), training
  (``fit_seconds`` less coupling), write-back (the rest of ``cf.tl.fit``) and interpolation;
  the write-back of "``tl.fit`` less ``fit_seconds`` less reading" is preparation + write-back here;
* memory: the kernel's peak resident set (``VmHWM``), reset between stages through
  ``/proc/self/clear_refs``, so each stage has its own peak and the run's peak is the largest;
* per step: training seconds / steps against a bare ``cellflow.fields.TimeMLP`` of the model's
  widths doing forward + backward + Adam on a random batch of the same size (``batch_size`` x
  intervals), with the threads cellflow chose for the fit.

Writes the ``scale`` section of ``BENCHMARKS.md`` and ``docs/scale.png``, and the raw rows as
``scale.csv`` in ``--results`` (default ``benchmarks/results/``). ``--quick`` (seconds, for tests)
measures one size of 300 cells per time point, its fit and the bare network for a few steps, and
writes ``scale_quick.csv``, ``scale_quick.png`` and its section in ``BENCHMARKS_quick.md``, all in
``--results`` (the section in ``--out`` when given). Run ``python benchmarks/scale.py --help`` for
the options.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "benchmarks"):  # cellflow from a checkout, and the shared sections.py
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

# benchmarks/_measure.py: peak memory per stage, hooks that time a stage, and the bare network's step
from _measure import BARE_STEPS, GB, StageMemory, bare_step_seconds, instrument, status_bytes  # noqa: E402

# benchmarks/sections.py, shared by the benchmark scripts; QUICK_STEPS: the fit's and the bare network's in --quick
from sections import QUICK_STEPS, RESULTS, code_version, report_file, write_section  # noqa: E402

SECTION = "scale"  # <!-- scale:start --> ... <!-- scale:end --> in BENCHMARKS.md
SIZES = (2_000, 20_000, 200_000)
QUICK_SIZES = (300,)
TIMES = (0.0, 1.0, 2.0, 3.0, 4.0)
N_GENES = 50
TIME_KEY, USE_REP = "time", "X"
FROM_TIME, TO_TIME = 0.0, 0.5
TARGET_SECONDS = 15 * 60  # the largest case, end to end
TARGET_RSS_GB = 4.0
TARGET_STEP_RATIO = 1.25  # cellflow's training step / the bare network's step
STAGES = ("read", "prepare", "coupling", "training", "write-back", "interpolation")


# -- the subprocesses ------------------------------------------------------------------------------

def generate(n_cells: int, path: Path) -> dict:
    """Simulate ``n_cells`` per time point and write the course to ``path``; seconds and peak memory."""
    import cellflow as cf

    start = time.perf_counter()
    adata = cf.datasets.simulate(n_cells=n_cells, n_genes=N_GENES, times=TIMES, growth_scale=0.0, seed=0)
    simulated = time.perf_counter()
    adata.write_h5ad(path)
    return dict(simulate_seconds=simulated - start, write_seconds=time.perf_counter() - simulated,
                generate_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB)


def measure(path: Path, quick: bool = False) -> dict:
    """The measured run on the course in ``path``: every stage's seconds and peak memory.

    ``quick`` fits and times the bare network for ``QUICK_STEPS`` steps (the default fit: ``n_steps="auto"``).
    """
    memory = StageMemory("imports")
    import anndata
    import torch

    import cellflow as cf
    import cellflow._utils
    import cellflow.model
    from cellflow.model import _model as fitting  # the module whose fit calls the training loop

    # torch imports its compiler stack (torch._dynamo, about 1 s) when a process builds its first optimiser; the
    # bare loop is timed after that, so building one here leaves it out of the fit's training time too
    warm = torch.nn.Linear(2, 2)
    warm(torch.zeros(1, 2)).sum().backward()
    torch.optim.Adam(warm.parameters(), foreach=True).step()
    baseline = status_bytes("VmRSS")
    seconds, cpu, threads = {}, {}, []
    choose_threads = cellflow._utils.cpu_threads

    def recorded_threads():
        threads.append(choose_threads())
        return threads[-1]

    cellflow._utils.cpu_threads = recorded_threads
    instrument(cellflow.model.CellFlow, "fit", "prepare", memory, seconds, cpu)  # inner stages below take over
    instrument(cellflow.model.CellFlow, "_samplers", "coupling", memory, seconds, cpu)
    instrument(fitting, "train", "training", memory, seconds, cpu)

    with memory.during("read"):
        start = time.perf_counter()
        adata = anndata.read_h5ad(path, backed="r")
        opened = time.perf_counter()
        course = cf.io.read_time_course(adata, TIME_KEY, USE_REP)
        read_seconds = time.perf_counter() - opened
        open_seconds = opened - start
        n_start, counts = len(course.populations[0]), [len(x) for x in course.populations]
        del course
    with memory.during("write-back"):  # what tl.fit does outside CellFlow.fit (the hooks count the rest)
        start = time.perf_counter()
        model = cf.tl.fit(adata, time_key=TIME_KEY, use_rep=USE_REP, progress=False,
                          n_steps=QUICK_STEPS if quick else "auto")
        tl_fit_seconds = time.perf_counter() - start
    fit_threads = threads[0]
    with memory.during("interpolation"):
        start = time.perf_counter()
        predicted = cf.tl.interpolate(adata, from_time=FROM_TIME, to_time=TO_TIME)
        interpolation_seconds = time.perf_counter() - start
    memory.enter("bare network")
    history, params = model.history, model.params
    steps = len(history["loss"])
    coupling = float(history["coupling_seconds"])
    training = float(history["fit_seconds"]) - coupling
    batch = params["batch_size"] * (len(counts) - 1)
    bare, bare_cpu = bare_step_seconds(N_GENES, params["hidden"], batch, fit_threads,
                                       QUICK_STEPS if quick else BARE_STEPS)
    memory.enter("end")
    stage_seconds = {
        "read": read_seconds,
        "prepare": seconds["prepare"] - float(history["fit_seconds"]),
        "coupling": coupling,
        "training": training,
        "write-back": tl_fit_seconds - seconds["prepare"] - read_seconds,
        "interpolation": interpolation_seconds,
    }
    run_peaks = {k: v / GB for k, v in memory.peaks.items() if k in STAGES}
    return dict(
        cells_per_time=n_start, counts=counts, total_cells=int(sum(counts)), n_predicted=predicted.n_obs,
        open_seconds=open_seconds, **{f"{k}_seconds": v for k, v in stage_seconds.items()},
        tl_fit_seconds=tl_fit_seconds, fit_seconds=float(history["fit_seconds"]),
        end_to_end_seconds=open_seconds + sum(stage_seconds.values()),
        steps=steps, step_ms=1e3 * seconds["training"] / steps, bare_step_ms=1e3 * bare,
        bare_steps=QUICK_STEPS if quick else BARE_STEPS,
        step_ratio=seconds["training"] / steps / bare,
        step_cpu_ms=1e3 * cpu["training"] / steps, bare_step_cpu_ms=1e3 * bare_cpu,
        step_cpu_ratio=cpu["training"] / steps / bare_cpu,
        batch=batch, hidden=list(params["hidden"]), stopped_early=steps < fitting.MAX_AUTO_STEPS,
        interpolation_cells_per_second=n_start / interpolation_seconds,
        peak_rss_gb=max(run_peaks.values()), baseline_rss_gb=baseline / GB,
        **{f"rss_{k}_gb": v for k, v in run_peaks.items()},
        fit_threads=fit_threads, torch_threads=torch.get_num_threads(), load_after=list(os.getloadavg()),
    )


def run_size(n_cells: int, folder: Path, timeout: float, quick: bool = False) -> dict:
    """Generate and measure one size, each in a subprocess of its own (``quick``: see :func:`measure`)."""
    path = folder / f"simulated_{n_cells}.h5ad"
    row = {}
    for role in ("generate", "measure"):
        out = folder / f"{role}_{n_cells}.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--role", role, "--cells", str(n_cells),
                   "--h5ad", str(path), "--json", str(out), *(["--quick"] if quick else [])]
        subprocess.run(command, check=True, timeout=timeout)
        row.update(json.loads(out.read_text()))
    path.unlink()
    return row


# -- the report -------------------------------------------------------------------------------------

def slopes(table: pd.DataFrame, columns) -> pd.DataFrame:
    """Log-log slope of each column against the total number of cells, between consecutive sizes."""
    rows = []
    for (_, a), (_, b) in zip(table.iterrows(), table.iloc[1:].iterrows()):
        span = np.log(b.total_cells / a.total_cells)
        rows.append({"cells": f"{a.total_cells:,} to {b.total_cells:,}",
                     **{c: np.log(b[c] / a[c]) / span if a[c] > 0 and b[c] > 0 else np.nan for c in columns}})
    return pd.DataFrame(rows)


def plot(table: pd.DataFrame, path: Path) -> None:
    """Seconds per stage and peak memory against the number of cells, log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = table.total_cells
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    panels = (  # column of each stage, column of the whole run, target, units
        ("{}_seconds", "end_to_end_seconds", "end to end", TARGET_SECONDS, "15 min", "seconds", "wall time per stage"),
        ("rss_{}_gb", "peak_rss_gb", "peak of the run", TARGET_RSS_GB, "4 GB", "GB", "peak resident memory per stage"),
    )
    for ax, (stage_column, total, total_label, target, target_label, unit, title) in zip(axes, panels):
        for stage in STAGES:
            ax.plot(cells, table[stage_column.format(stage)], marker="o", label=stage)
        ax.plot(cells, table[total], marker="s", color="black", label=total_label)
        ax.axhline(target, color="grey", ls="--", lw=1, label=target_label)
        ax.set(xscale="log", yscale="log", xlabel="cells (5 time points)", ylabel=unit, title=title)
        ax.legend(fontsize=8)
    plain = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}")
    axes[1].yaxis.set_major_formatter(plain)
    axes[1].yaxis.set_minor_formatter(plain)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def machine_lines() -> list[str]:
    """CPU, load, threads and versions, as report lines."""
    import torch

    import cellflow

    cpu = platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    return [
        f"CPU: {cpu}; `nproc` = {os.cpu_count()}; torch threads = {torch.get_num_threads()}; device = cpu",
        f"Python {platform.python_version()}, torch {torch.__version__}, cellflow {cellflow.__version__}",
    ]


def report(table: pd.DataFrame, *, command: str, code: str, load_start, elapsed: float, figure: str) -> str:
    """The markdown section."""
    load_end = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    big = table.iloc[-1]
    grow = slopes(table, ["coupling_seconds", "training_seconds", "end_to_end_seconds", "peak_rss_gb",
                          "rss_above_baseline_gb"])
    fmt = "{:.1f}".format

    def verdict(value, target):
        return "met" if value <= target else "**not met**"

    return "\n".join([
        "## Scale: the default fit from a few thousand to a million cells",
        "",
        f"`{command}` ({code}; {elapsed / 60:.1f} min in all; load average (1, 5, 15 min) {load_start} at the "
        f"start, {load_end} at the end: other jobs share the cores and slow every timing).",
        "",
        *[f"- {line}" for line in machine_lines()],
        f"- threads cellflow chose for each fit (cores not busy with other work): "
        f"{', '.join(str(t) for t in table.fit_threads)}",
        "",
        f"Data: `cellflow.datasets.simulate(n_cells=n, n_genes={N_GENES}, growth_scale=0)`, 5 time points of "
        "exactly n cells (2-d latent states plus noise, embedded in 50 genes: `X` has rank 2). Each size "
        "is written to an `.h5ad` by one subprocess and measured in another: `anndata.read_h5ad(path, "
        "backed=\"r\")`, `cf.tl.fit(adata, time_key=\"time\", use_rep=\"X\", progress=False)` (the default "
        "`otcfm`, `n_steps=\"auto\"`, `hidden=\"auto\"`), `cf.tl.interpolate(adata, from_time=0, to_time=0.5)`.",
        "",
        "Stages, in seconds: *read* is `read_time_course` of the backed file (timed once before the fit, "
        "which reads it again inside `tl.fit`); *prepare* is `CellFlow.fit` before its clock starts (centre, "
        "scale, float32 tensors); *coupling* is `history[\"coupling_seconds\"]`; *training* is "
        "`fit_seconds` less coupling; *write-back* is the rest of `tl.fit` (its own read, the velocity of "
        "every cell, the keys); *interp.* is `tl.interpolate` (its own read of the course, dopri5 from 0 "
        "to 0.5). `tl.fit` less `fit_seconds` less *read* is *prepare* + *write-back*.",
        "",
        "| cells per time | cells | " + " | ".join(STAGES).replace("interpolation", "interp.")
        + " | end to end | interp. cells/s | peak RSS GB |",
        "|---:|---:|" + "---:|" * (len(STAGES) + 3),
        *[f"| {r.cells_per_time:,} | {r.total_cells:,} | " + " | ".join(fmt(r[f"{s}_seconds"]) for s in STAGES)
          + f" | {fmt(r.end_to_end_seconds)} | {r.interpolation_cells_per_second:,.0f} | {r.peak_rss_gb:.2f} |"
          for _, r in table.iterrows()],
        "",
        "Peak resident memory of each stage, in GB (the kernel's high-water mark, reset between stages; the "
        f"process holds {table.baseline_rss_gb.iloc[0]:.2f} GB of Python, torch and cellflow before any data):",
        "",
        "| cells | " + " | ".join(STAGES) + " |",
        "|---:|" + "---:|" * len(STAGES),
        *[f"| {r.total_cells:,} | " + " | ".join(f"{r[f'rss_{s}_gb']:.2f}" for s in STAGES) + " |"
          for _, r in table.iterrows()],
        "",
        "Growth with the number of cells (log-log slopes; 1 is linear; memory above the process's baseline "
        "is the part that depends on the data):",
        "",
        "| cells | coupling s | training s | end to end s | peak RSS | peak RSS above baseline |",
        "|---|---:|---:|---:|---:|---:|",
        *[f"| {r.cells} | {r.coupling_seconds:.2f} | {r.training_seconds:.2f} | {r.end_to_end_seconds:.2f} | "
          f"{r.peak_rss_gb:.2f} | {r.rss_above_baseline_gb:.2f} |" for _, r in grow.iterrows()],
        "",
        f"Training steps against the bare network: seconds in cellflow's training loop (`training.train`, wall "
        f"and CPU time of the process) / steps, and a bare `TimeMLP` of the same widths ({big.hidden}) doing "
        f"forward, backward and an Adam step on one random batch of {big.batch} (256 pairs x 4 intervals), "
        f"{big.bare_steps} steps with the fit's threads, after the fit. Both are timed after the first torch "
        "optimiser built in the process, which imports torch's compiler stack once (`torch._dynamo`, about 1 s): "
        "one Adam step on a tiny layer before the fit pays it for both. The "
        "fit's step also draws the pairs, converts them to the clock's units, averages the weights (EMA) and, "
        "every 100 steps, runs the check of `n_steps=\"auto\"`; the objective's and the clock's setup before the "
        "loop count as preparation.",
        "",
        "| cells | steps | ms/step | bare ms/step | ratio | CPU ms/step | bare CPU ms/step | CPU ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        *[f"| {r.total_cells:,} | {r.steps} | {r.step_ms:.2f} | {r.bare_step_ms:.2f} | {r.step_ratio:.2f} | "
          f"{r.step_cpu_ms:.2f} | {r.bare_step_cpu_ms:.2f} | {r.step_cpu_ratio:.2f} |" for _, r in table.iterrows()],
        "",
        f"Targets at {big.total_cells:,} cells: end to end {fmt(big.end_to_end_seconds)} s "
        f"({verdict(big.end_to_end_seconds, TARGET_SECONDS)}: at most {TARGET_SECONDS} s; simulating and writing "
        f"the file, not counted, took {fmt(big.simulate_seconds)} + {fmt(big.write_seconds)} s); peak RSS "
        f"{big.peak_rss_gb:.2f} GB ({verdict(big.peak_rss_gb, TARGET_RSS_GB)}: at most {TARGET_RSS_GB:g} GB); "
        f"step ratio {big.step_ratio:.2f} in wall time, {big.step_cpu_ratio:.2f} in CPU time "
        f"({verdict(big.step_ratio, TARGET_STEP_RATIO)} / {verdict(big.step_cpu_ratio, TARGET_STEP_RATIO)}: at "
        f"most {TARGET_STEP_RATIO}).",
        "",
        f"![wall time and memory per stage]({figure})",
    ])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=None,
                   help="cells per time point, one run each (default 2000 20000 200000; 300 with --quick)")
    p.add_argument("--quick", action="store_true",
                   help=f"300 cells per time point, {QUICK_STEPS} steps of the fit and of the bare network; report, "
                        "rows and figure in --results, not BENCHMARKS.md: seconds (for tests)")
    p.add_argument("--results", type=Path, default=None,
                   help="folder of the rows (scale[_quick].csv), and with --quick of the figure and report "
                        "(default benchmarks/results)")
    p.add_argument("--out", type=Path, default=None,
                   help="report whose section is written (default BENCHMARKS.md; with --quick BENCHMARKS_quick.md "
                        "in --results)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds allowed to each subprocess")
    p.add_argument("--role", choices=("generate", "measure"), help=argparse.SUPPRESS)
    p.add_argument("--cells", type=int, help=argparse.SUPPRESS)
    p.add_argument("--h5ad", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.sizes = sorted(args.sizes or (QUICK_SIZES if args.quick else SIZES))
    if args.role:  # a subprocess: its paths come from its own arguments
        return args
    results = args.results or RESULTS
    args.out = report_file(args.out, args.quick, results)
    args.figure = results / "scale_quick.png" if args.quick else ROOT / "docs" / "scale.png"
    args.csv = results / ("scale_quick.csv" if args.quick else "scale.csv")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.role:  # one subprocess of a run
        row = generate(args.cells, args.h5ad) if args.role == "generate" else measure(args.h5ad, args.quick)
        args.json.write_text(json.dumps(row))
        return 0
    given = sys.argv[1:] if argv is None else argv
    command = "python benchmarks/scale.py" + "".join(" " + shlex.quote(a) for a in given)
    code, load_start = code_version(), ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"$ {command}\ncode: {code}; load average at start: {load_start}", flush=True)
    for line in machine_lines():
        print(line, flush=True)
    started, rows = time.perf_counter(), []
    with tempfile.TemporaryDirectory(prefix="cellflow_scale_") as folder:
        for n in args.sizes:
            print(f"\n== {n:,} cells per time point", flush=True)
            row = run_size(n, Path(folder), args.timeout, args.quick)
            rows.append(row)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    table = pd.DataFrame(rows)
    table["rss_above_baseline_gb"] = table.peak_rss_gb - table.baseline_rss_gb
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.csv, index=False)
    plot(table, args.figure)
    figure = os.path.relpath(args.figure, args.out.parent)
    text = report(table, command=command, code=code, load_start=load_start,
                  elapsed=time.perf_counter() - started, figure=figure)
    write_section(SECTION, text, args.out)
    print("\n" + text)
    print(f"\nwrote {args.out}, {args.figure} and {args.csv}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
