"""Horizon benchmark: the first time point pushed through every later one, against one-interval pushes.

WFR-FM's in-sample protocol, and a held-out version, on every shared dataset for cellflow's
``otcfm`` (the default), ``mmfm`` and ``wfr``, with TorchCFM's OT-CFM beside them:

* **in-sample**: fit on every time point; push the cells of the first time point once through
  every later measured time and score them there (:func:`cellflow.model.horizon`): W1 from the
  first time point, W1 pushed from the time point before (one interval), their ratio, the relative
  mass error (growth methods) and the largest pushed norm over the data's; and the gain of each
  interval's map on cells moved off the data (:func:`cellflow.model.interval_gain`);
* **held-out**: hold out the middle inner time point (index ``K // 2`` of the ``K`` time points),
  fit on the rest, and score the same push from the first time point at the held-out time and
  every later time (the one-interval push into the held-out time starts from the measured time
  point before it).

Datasets with genes (kouno_thp1, moscot_temporal) are reduced to 10 principal components fitted on
the training time points (all of them in-sample, all but the held-out one held-out); the others
are fixed embeddings used as they are. TorchCFM's OT-CFM is ``TorchCFMRunner`` of
``leave_one_out.py``, trained for as many steps as cellflow's ``otcfm`` took on the same fit.

``--rollout off|on|both`` fits cellflow's methods with ``rollout=False``, ``True`` or both, passed
only when ``cellflow.CellFlow`` has that argument (``off`` on a cellflow without it fits its
defaults); TorchCFM has no rollout and runs in the ``off`` pass only.

Every (dataset, protocol, method, rollout, seed) is one fit, cached as its rows (one per scored
time) under ``benchmarks/results/horizon/steps-<steps>/`` and never recomputed, so a run can be
split or resumed; ``--write`` regenerates the ``horizon`` section of ``BENCHMARKS.md`` from every
cached row. ``--quick`` runs a small simulated course with few steps (seconds), for tests. Run
``python benchmarks/horizon.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import datetime as dt
import inspect
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "benchmarks"):  # cellflow from a checkout, and the shared helpers
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
os.environ.setdefault("CELLFLOW_DATA_DIR", str(ROOT.parent / "shared" / "data"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from _common import load_course, machine_lines  # noqa: E402
from _torchcfm import EMA, TORCHCFM, IntervalByInterval, torchcfm_fitter  # noqa: E402
from sections import (  # noqa: E402
    QUICK_DATASET,
    QUICK_STEPS,
    code_version,
    invocation,
    report_file,
    write_section,
)

import cellflow  # noqa: E402
from cellflow._utils import resolve_device  # noqa: E402
from cellflow.benchmark import fold_pca  # noqa: E402
from cellflow.io import read_time_course  # noqa: E402
from cellflow.model import TimeCourse, horizon, interval_gain  # noqa: E402

DATASETS = ("kouno_thp1", "emt", "mouse_hematopoiesis", "simulation_gene", "moscot_temporal")
METHODS = ("otcfm", "mmfm", "wfr", TORCHCFM)
DEFAULT_METHOD = "otcfm"  # TorchCFM trains for as many steps as this method took
PROTOCOLS = ("in_sample", "held_out")
ROLLOUTS = {"off": ["off"], "on": ["on"], "both": ["off", "on"]}
ROLLOUT_SUPPORTED = "rollout" in inspect.signature(cellflow.CellFlow).parameters
RATIO_TARGET = 1.3  # W1 from the first time point at most this times the one-interval W1
NORM_TARGET = 1.25  # no pushed cell beyond this times the largest norm in the data
MAX_CELLS = 2000  # cells per time point pushed and scored
QUICK_MAX_CELLS = 200
RESULTS = ROOT / "benchmarks" / "results" / "horizon"
SECTION = "horizon"  # <!-- horizon:start --> ... <!-- horizon:end --> in BENCHMARKS.md
KEY = ["dataset", "protocol", "method", "rollout", "seed"]
COLUMNS = [*KEY, "held_out_time", "time", "w1_first", "w1_previous", "ratio", "mass_error", "norm_ratio", "gain",
           "n_steps", "fit_seconds", "score_seconds"]
LABELS = {TORCHCFM: "TorchCFM OT-CFM"}


def label(method: str) -> str:
    return LABELS.get(method, f"cellflow {method}")


# ---------------------------------------------------------------------------------------------
# Data and fits
# ---------------------------------------------------------------------------------------------

def load(name: str) -> tuple[TimeCourse, int | None, str]:
    """The time course of ``name``, the PCA size to fit per protocol (``None``: used as it is) and a note."""
    if name == "simulation_gene":
        return (read_time_course(cellflow.datasets.simulation_gene(), "time", "X_pca"), None,
                "the two simulated gene coordinates of the DeepRUOT file, used as they are")
    return load_course(name)


def held_out_index(times) -> int:
    """The time point held out: the middle inner one, index ``K // 2`` of ``K`` time points."""
    return len(times) // 2


def represent(course: TimeCourse, n_pcs: int | None, held_out: int | None) -> TimeCourse:
    """Every time point in the representation of a fit: with ``n_pcs``, a PCA fitted on every time point
    but ``held_out`` (every one when ``None``), the held-out cells projected onto it too.
    """
    if n_pcs is None:
        return course
    training = [x for k, x in enumerate(course.populations) if k != held_out]
    project, _ = fold_pca(training, n_pcs)
    return replace(course, populations=[project(x) for x in course.populations],
                   use_rep=f"PCA({n_pcs}) of {course.use_rep}")


def fit(method: str, training: TimeCourse, *, seed: int, rollout: str, steps, device: str, torchcfm_steps=None):
    """Fit ``method`` on ``training``: the model (with ``transport``), its training steps and fit seconds."""
    start = time.perf_counter()
    if method == TORCHCFM:
        runner = torchcfm_fitter(lambda seed, held_out_time: torchcfm_steps, device, EMA)(training, seed, np.nan)
        return IntervalByInterval(runner), len(runner.history["loss"]), time.perf_counter() - start
    options = dict(seed=seed, device=device) | ({} if steps == "auto" else dict(n_steps=steps))
    if ROLLOUT_SUPPORTED:
        options["rollout"] = rollout == "on"
    model = cellflow.CellFlow(method, **options).fit(training, progress=False)
    return model, len(model.history["loss"]), time.perf_counter() - start


def score(model, full: TimeCourse, held_out: int | None, max_cells: int, seed: int) -> pd.DataFrame:
    """The horizon table of ``model`` on every time point of ``full`` with the gain of the interval
    ending at each time; held-out, only the held-out time and the later ones.
    """
    table = horizon(model, full, max_cells=max_cells, seed=seed)
    table["gain"] = interval_gain(model, full, max_cells=max_cells, seed=seed)
    table["held_out_time"] = np.nan if held_out is None else float(full.times[held_out])
    return table if held_out is None else table[table.time >= full.times[held_out]]


# ---------------------------------------------------------------------------------------------
# The cache of rows
# ---------------------------------------------------------------------------------------------

def read_cache(folder: Path) -> pd.DataFrame:
    """Every cached row of ``folder`` (rows of a fit that was repeated: the last fit's)."""
    files = sorted(folder.glob("*__*.csv"))
    if not files:
        return pd.DataFrame(columns=COLUMNS)
    table = pd.concat([pd.read_csv(f) for f in files], ignore_index=True)
    return table.drop_duplicates([*KEY, "time"], keep="last").reset_index(drop=True)


def append_rows(folder: Path, rows: pd.DataFrame) -> None:
    path = folder / f"{rows.dataset.iloc[0]}__{rows.method.iloc[0]}.csv"
    rows[COLUMNS].to_csv(path, mode="a", header=not path.exists(), index=False)


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """Per dataset, protocol, method and rollout (mean over seeds): W1 from the first time point and
    one-interval W1 at the last time, the largest ratio and norm ratio over the scored times, the
    mean mass error, the largest interval gain, steps and fit seconds.
    """
    out = []
    for (dataset, protocol, method, rollout), group in rows.groupby(["dataset", "protocol", "method", "rollout"],
                                                                    sort=False):
        per_seed = group.groupby("seed")
        last = group[group.time == group.time.max()]
        out.append(dict(
            dataset=dataset, protocol=protocol, method=method, rollout=rollout, seeds=group.seed.nunique(),
            w1_first_last=last.w1_first.mean(), w1_previous_last=last.w1_previous.mean(),
            max_ratio=per_seed.ratio.max().mean(), max_norm_ratio=per_seed.norm_ratio.max().mean(),
            mass_error=per_seed.mass_error.mean().mean(), max_gain=per_seed.gain.max().mean(),
            n_steps=per_seed.n_steps.first().mean(), fit_seconds=per_seed.fit_seconds.first().mean(),
        ))
    order = {name: i for i, name in enumerate([*DATASETS, QUICK_DATASET, *METHODS])}
    return pd.DataFrame(out).sort_values(["dataset", "method", "rollout"], key=lambda c: c.map(order).fillna(0),
                                         kind="stable")


def _number(value: float, digits: int = 3) -> str:
    if np.isnan(value):
        return "-"
    return f"{value:.{digits}g}" if abs(value) >= 1000 else f"{value:.{digits}f}"


def verdict(row) -> str:
    """Whether a fit meets the horizon targets (ratio and norm ratio): a field that stays on the data."""
    met = row.max_ratio <= RATIO_TARGET and row.max_norm_ratio <= NORM_TARGET
    return "yes" if met else "no"


def summary_table(summary: pd.DataFrame, protocol: str) -> list[str]:
    lines = ["| dataset | method | rollout | W1 from first (last time) | one-interval W1 (last time) | max ratio | "
             "max norm ratio | mass error (mean) | max gain | steps | fit s | targets met |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in summary[summary.protocol == protocol].itertuples():
        lines.append(f"| {row.dataset} | {label(row.method)} | {row.rollout} | {_number(row.w1_first_last)} | "
                     f"{_number(row.w1_previous_last)} | {_number(row.max_ratio, 2)} | "
                     f"{_number(row.max_norm_ratio, 2)} | {_number(row.mass_error)} | {_number(row.max_gain, 2)} | "
                     f"{row.n_steps:.0f} | {row.fit_seconds:.1f} | {verdict(row)} |")
    return lines


def per_time_table(rows: pd.DataFrame) -> list[str]:
    """One row per method and rollout, one column per scored time: ``W1 from first / one-interval W1``."""
    times = sorted(rows.time.unique())
    lines = ["| method | rollout | " + " | ".join(f"{t:g}" for t in times) + " |",
             "|---|---|" + "---:|" * len(times)]
    fits = rows.groupby(["method", "rollout"])
    for (method, rollout), group in sorted(fits, key=lambda item: (METHODS.index(item[0][0]), item[0][1])):
        at = group.groupby("time")[["w1_first", "w1_previous"]].mean()
        cells = [f"{_number(at.w1_first[t])} / {_number(at.w1_previous[t])}" if t in at.index else "-" for t in times]
        lines.append(f"| {label(method)} | {rollout} | " + " | ".join(cells) + " |")
    return lines


def write_report(path: Path, folder: Path, rows: pd.DataFrame, datasets, steps) -> str:
    """Write the horizon section of ``path`` from the cached ``rows``: every dataset they hold, and the
    runs of ``datasets`` still missing.
    """
    summary = summarise(rows)
    log = (folder / "runs.log").read_text().strip().splitlines() if (folder / "runs.log").exists() else []
    cache = folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder
    shown = [name for name in (*DATASETS, QUICK_DATASET) if name in set(rows.dataset)]
    out = [
        "## Horizon: pushes from the first time point against one-interval pushes",
        "",
        "<!-- Regenerated by benchmarks/horizon.py --write from its cached rows; do not edit by hand. -->",
        "",
        "### Protocol",
        "",
        "**In-sample** (WFR-FM's protocol): fit on every time point, push the cells of the first time point once",
        "through every later measured time (`cellflow.model.horizon`) and score them there: exact W1 (`ot.emd2`,",
        "Euclidean cost, pushed cells weighted by their normalised mass) against the measured cells, beside the",
        "W1 of the cells of the time point before pushed over the one interval; *ratio* is the first over the",
        "second. *Mass error*: |M_hat(t)/M_hat(t_0) - n_t/n_0| / (n_t/n_0) of the push from the first time point",
        "(growth methods only: `wfr`), mean over the scored times. *Norm ratio*: the largest distance of a pushed",
        "cell from the data's centre (mean of every measured cell) over the largest distance of a measured cell.",
        "*Gain*: the median factor by which an interval's map enlarges an offset of 0.5 median nearest-neighbour",
        "distances from the measured cells (`cellflow.model.interval_gain`), largest over the intervals.",
        f"At most {MAX_CELLS} cells per time point are pushed and scored (seeded subsample).",
        "**Held-out**: the middle inner time point (index K // 2 of K) is left out of the fit; the push from the",
        "first time point is scored at the held-out time and every later time, the one-interval push into the",
        "held-out time starting from the measured cells before it.",
        "With three time points the held-out one is the second, where both pushes start from the first time",
        "point (ratio one by construction); the later time then compares the push across the held-out time with",
        "the push from the held-out cells.",
        f"Targets: max ratio <= {RATIO_TARGET} and max norm ratio <= {NORM_TARGET}, at every scored time.",
        "The ratio compares two pushes of the same model, so it is near one also when both are poor: read it",
        "beside the W1 values.",
        "",
        f"- cellflow `otcfm` (the default), `mmfm`, `wfr`: defaults (steps: {steps}); rollout: `rollout=` of",
        "  `CellFlow` when it has the argument, else `off` (the defaults of a cellflow without rollout fitting).",
        f"- TorchCFM OT-CFM: `TorchCFMRunner` of `leave_one_out.py` (cellflow's network, pairs per step, EMA {EMA},",
        f"  clock and dopri5), for as many steps as cellflow `{DEFAULT_METHOD}` took on the same fit; no rollout.",
        "",
        "Representations:",
        "",
        *[f"- {name}: {load(name)[2]}" for name in shown],
        "",
        "(A fold here is the training time points of a protocol: all of them in-sample, all but the held-out one",
        "held-out.)",
        "",
        "### Runs",
        "",
        f"Rows are cached per (dataset, protocol, method, rollout, seed) under `{cache}/` (not committed); "
        "invocations that produced them:",
        "",
        "```",
        *log,
        "```",
        "",
    ]
    for protocol in PROTOCOLS:
        out += [f"### Summary, {protocol.replace('_', '-')}", ""]
        out += summary_table(summary, protocol) if (summary.protocol == protocol).any() else ["Not run yet."]
        out.append("")
    for name in shown:
        out += [f"### {name}", ""]
        for protocol in PROTOCOLS:
            part = rows[(rows.dataset == name) & (rows.protocol == protocol)]
            heading = protocol.replace("_", "-")
            if len(part):
                held = part.held_out_time.dropna()
                heading += f" (held-out time {held.iloc[0]:g})" if len(held) else ""
                out += [f"W1 from the first time point / one-interval W1 at each time, {heading}:", "",
                        *per_time_table(part), ""]
            else:
                out += [f"{heading}: not run yet.", ""]
    missing = [f"{d} {p} {m}" for d in dict.fromkeys([*shown, *datasets]) for p in PROTOCOLS for m in METHODS
               if not ((rows.dataset == d) & (rows.protocol == p) & (rows.method == m)).any()]
    out += ["### Runs missing", "", *([f"- {line}" for line in missing] or ["- none"]), ""]
    text = "\n".join(out)
    write_section(SECTION, text, path)
    return text


# ---------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--datasets", nargs="+", choices=[*DATASETS, QUICK_DATASET], default=list(DATASETS))
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS))
    p.add_argument("--rollout", choices=list(ROLLOUTS), default="off",
                   help="fit cellflow's methods with rollout=False (off), True (on) or both")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--steps", default="auto", help="training steps of cellflow's fits ('auto': its default)")
    p.add_argument("--max-cells", type=int, default=MAX_CELLS, help="cells per time point pushed and scored")
    p.add_argument("--quick", action="store_true",
                   help=f"a small simulated course ({QUICK_DATASET}), {QUICK_STEPS} steps, {QUICK_MAX_CELLS} cells "
                        "per time point: seconds (for tests)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads for every fit")
    p.add_argument("--device", default="auto", help="torch device of the fits (auto: CUDA when present)")
    p.add_argument("--results", type=Path, default=RESULTS, help="folder of the cached rows")
    p.add_argument("--write", action="store_true", help="regenerate the horizon section of --out from every cached row")
    p.add_argument("--no-run", action="store_true", help="fit nothing: with --write, only rewrite the section")
    p.add_argument("--out", type=Path, default=None,
                   help="report file whose section --write rewrites (default BENCHMARKS.md; with --quick "
                        "BENCHMARKS_quick.md in --results)")
    args = p.parse_args(argv)
    if args.quick:
        args.datasets, args.steps, args.max_cells = [QUICK_DATASET], QUICK_STEPS, QUICK_MAX_CELLS
    args.out = report_file(args.out, args.quick, args.results)
    if args.rollout != "off" and not ROLLOUT_SUPPORTED:
        p.error(f"--rollout {args.rollout}: this cellflow's CellFlow has no rollout argument; use --rollout off")
    if args.steps != "auto":
        args.steps = int(args.steps)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = str(resolve_device(args.device))
    folder = args.results / f"steps-{args.steps}"
    folder.mkdir(parents=True, exist_ok=True)
    command = invocation("horizon", argv)
    if not args.no_run:  # the invocations behind the cached rows, listed in the report
        stamp = f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC"
        with open(folder / "runs.log", "a") as handle:
            handle.write(f"{stamp}  {command}\n    {code_version()}\n"
                         + "".join(f"    {line}\n" for line in machine_lines(device)))
    print(f"$ {command}\n" + "\n".join(machine_lines(device)), flush=True)
    methods = sorted(args.methods, key=lambda m: m != DEFAULT_METHOD)  # TorchCFM's steps come from the default
    if TORCHCFM in methods and DEFAULT_METHOD not in methods:
        methods.insert(0, DEFAULT_METHOD)

    for name in [] if args.no_run else args.datasets:
        course, n_pcs, note = load(name)
        print(f"\n== {name}: {sum(map(len, course.populations))} cells, times {course.times.tolist()}; {note}",
              flush=True)
        for protocol in args.protocols:
            held_out = held_out_index(course.times) if protocol == "held_out" else None
            full = represent(course, n_pcs, held_out)
            training = full if held_out is None else full.without(held_out)
            for rollout in ROLLOUTS[args.rollout]:
                for method, seed in [(m, s) for m in methods for s in args.seeds]:
                    if method == TORCHCFM and rollout != "off":
                        continue
                    cached = read_cache(folder)
                    here = (cached.dataset == name) & (cached.protocol == protocol) & (cached.seed == seed)
                    if (here & (cached.method == method) & (cached.rollout == rollout)).any():
                        continue
                    default = cached[here & (cached.method == DEFAULT_METHOD) & (cached.rollout == "off")]
                    steps = int(default.n_steps.iloc[-1]) if len(default) else None
                    model, n_steps, fit_seconds = fit(method, training, seed=seed, rollout=rollout, steps=args.steps,
                                                      device=device, torchcfm_steps=steps)
                    start = time.perf_counter()
                    rows = score(model, full, held_out, args.max_cells, seed)
                    rows = rows.assign(dataset=name, protocol=protocol, method=method, rollout=rollout, seed=seed,
                                       n_steps=n_steps, fit_seconds=fit_seconds,
                                       score_seconds=time.perf_counter() - start)
                    append_rows(folder, rows)
                    last = rows.iloc[-1]
                    print(f"  {name} {protocol} {method:15s} rollout {rollout} seed {seed}: at {last.time:g} W1 first "
                          f"{last.w1_first:.4g}, one-interval {last.w1_previous:.4g}; "
                          f"max ratio {rows.ratio.max():.3g}, "
                          f"max norm ratio {rows.norm_ratio.max():.3g}; {n_steps} steps, fit {fit_seconds:.1f} s",
                          flush=True)
    if args.write:
        rows = read_cache(folder)
        text = write_report(args.out, folder, rows, args.datasets, args.steps)
        print("\n" + text)
        print(f"wrote the {SECTION} section of {args.out} from {len(rows)} cached rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
