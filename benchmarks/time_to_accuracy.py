"""Time to accuracy: how long cellflow trains to match TorchCFM OT-CFM's final leave-one-out W1.

What it runs, in one process, on ``emt`` and ``kouno_thp1`` (the data and representation of
``benchmarks/leave_one_out.py``, ``load_course``: kouno_thp1 gets each fold's own 10-component
PCA), every inner time point held out in turn:

* TorchCFM OT-CFM at its own default network (``torchcfm.models.MLP``, width 64, SELU), trained
  by the runner of ``leave_one_out.py`` (TorchCFM's minibatch OT coupling and path, cellflow's
  loop, clock, weight averaging and integrator) for ``--torchcfm-steps`` steps: its *final* W1
  and its fit time;
* cellflow ``otcfm`` at its own defaults (``hidden="auto"``), once with ``n_steps="auto"``
  (early stopping) and once for each fixed budget of ``--budgets`` steps.

The target W1 is 1.01 x TorchCFM's final W1 (mean over held-out times and seeds). cellflow's
time to accuracy is the shortest mean fit time (coupling and training; pushing the cells is
the same integrator for both and is left out) among its runs whose mean W1 reaches the target;
the ratio to TorchCFM's fit time is reported. Runs alternate seed by seed, so both meet the
same load. Writes the ``time_to_accuracy`` section of ``BENCHMARKS.md`` and the rows to
``time_to_accuracy.csv`` (``time_to_accuracy_quick.csv`` with ``--quick``) in ``--results`` (default
``benchmarks/results/``). ``--quick`` runs the
small simulated course of ``leave_one_out.py`` with a few steps (``n_steps="auto"`` capped there
too), seed 0, and writes its section to ``BENCHMARKS_quick.md`` in ``--results`` unless ``--out``
says otherwise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
os.environ.setdefault("CELLFLOW_DATA_DIR", str(ROOT.parent / "shared" / "data"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from _common import load_course  # noqa: E402
from _torchcfm import TorchCFMRunner  # noqa: E402
from sections import (  # noqa: E402
    QUICK_DATASET,
    QUICK_STEPS,
    RESULTS,
    code_version,
    report_file,
    write_section,
)

import cellflow  # noqa: E402
import cellflow.benchmark as cf_benchmark  # noqa: E402
import cellflow.model  # noqa: E402
from cellflow._utils import compute_threads  # noqa: E402

SECTION = "time_to_accuracy"
TOLERANCE = 0.01  # cellflow must come within 1% of TorchCFM's final W1


class TorchCFMDefaultNet(torch.nn.Module):
    """TorchCFM's own default network (``torchcfm.models.MLP(dim, w=64, time_varying=True)``) as ``net(x, t)``."""

    def __init__(self, n_dims: int):
        super().__init__()
        from torchcfm.models import MLP

        self.mlp = MLP(n_dims, w=64, time_varying=True)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1, 1).expand(x.shape[0], 1)
        return self.mlp(torch.cat([x, t], dim=1))


class TorchCFMDefaultRunner(TorchCFMRunner):
    """The TorchCFM runner of ``leave_one_out.py`` with TorchCFM's default network."""

    def network(self, n_dims: int) -> torch.nn.Module:
        return TorchCFMDefaultNet(n_dims)


def held_out_runs(course, n_pcs, fit, seeds) -> list[dict]:
    """Fit with ``fit(training, seed) -> (pusher, fit seconds, steps)`` for every inner time and seed; score W1.

    Each fold is :func:`cellflow.benchmark.fold` of ``course`` (with ``n_pcs``, a PCA fitted on its
    training time points).
    """
    rows = []
    for seed in seeds:
        for k in range(1, len(course.times) - 1):
            training, before, held, _, _ = cf_benchmark.fold(course, k, n_pcs)
            pusher, seconds, steps = fit(training, seed)
            predicted = pusher.push(before, course.times[k - 1], course.times[k])
            rows.append(dict(seed=seed, held_out_time=float(course.times[k]), fit_seconds=seconds, steps=steps,
                             w1=cf_benchmark.score(predicted, held)["w1"]))
    return rows


def cellflow_fit(n_steps, device):
    def fit(training, seed):
        model = cellflow.CellFlow("otcfm", n_steps=n_steps, seed=seed, device=device).fit(training, progress=False)
        return model, float(model.history["fit_seconds"]), len(model.history["loss"])
    return fit


def torchcfm_fit(n_steps, device):
    def fit(training, seed):
        with compute_threads(torch.device(device)):  # the thread rule cellflow's fits use, for a fair time
            runner = TorchCFMDefaultRunner(n_steps=n_steps, seed=seed, device=device).fit(training)
        return runner, float(runner.history["fit_seconds"]), n_steps
    return fit


def run_dataset(name, args, device, log) -> pd.DataFrame:
    course, n_pcs, _ = load_course(name)
    runs = {"TorchCFM OT-CFM": torchcfm_fit(args.torchcfm_steps, device), "cellflow auto": cellflow_fit("auto", device)}
    runs.update({f"cellflow {b} steps": cellflow_fit(b, device) for b in args.budgets})
    for fit in runs.values():  # warm-up: first-call costs are paid outside the timings
        fit(cf_benchmark.fold(course, 1, n_pcs)[0], 0)
    rows = []
    for seed in args.seeds:
        for label, fit in runs.items():
            for row in held_out_runs(course, n_pcs, fit, [seed]):
                rows.append(dict(dataset=name, run=label, **row))
            last = pd.DataFrame(rows).query("run == @label and seed == @seed")
            log(f"  {name} seed {seed} {label:24s} W1 {last.w1.mean():.4f}  fit {last.fit_seconds.mean():.2f}s  "
                f"steps {last.steps.mean():.0f}")
    return pd.DataFrame(rows)


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Per dataset: TorchCFM's final W1 and time, and cellflow's time to within 1% of that W1."""
    out = []
    for name, part in table.groupby("dataset", sort=False):
        means = part.groupby("run", sort=False)[["w1", "fit_seconds", "steps"]].mean()
        peer = means.loc["TorchCFM OT-CFM"]
        target = (1 + TOLERANCE) * peer.w1
        ours = means.drop(index="TorchCFM OT-CFM")
        reached = ours[ours.w1 <= target]
        best = reached.fit_seconds.idxmin() if len(reached) else None
        out.append(dict(
            dataset=name, torchcfm_w1=peer.w1, torchcfm_seconds=peer.fit_seconds, target_w1=target,
            cellflow_auto_w1=means.loc["cellflow auto"].w1,
            cellflow_auto_seconds=means.loc["cellflow auto"].fit_seconds,
            fastest_run=best, fastest_w1=reached.w1.get(best, np.nan),
            fastest_seconds=reached.fit_seconds.get(best, np.nan),
            ratio=(reached.fit_seconds.get(best, np.nan) / peer.fit_seconds) if best else np.nan,
        ))
    return pd.DataFrame(out)


def report(command, args, device, started, load, table, summary) -> str:
    lines = [
        "## Time to accuracy against TorchCFM",
        "",
        f"`{command}` ({started:%Y-%m-%d %H:%M} UTC, {args.code}; device {device}, torch threads "
        f"{torch.get_num_threads()}, both runners under cellflow's free-core rule, load average at start {load}).",
        "",
        "Leave-one-out on every inner time point, seeds " + ", ".join(map(str, args.seeds)) + ". TorchCFM OT-CFM: "
        f"its default network (MLP width 64) for {args.torchcfm_steps} steps, minibatch exact OT per step. "
        "cellflow otcfm: its defaults (`hidden='auto'`), with `n_steps='auto'` and with fixed budgets. "
        "Time = mean fit time (coupling + training) per held-out fit; target = 1.01 x TorchCFM's final W1.",
        "",
        "| data | TorchCFM W1 | TorchCFM fit s | target W1 | cellflow auto W1 | cellflow auto s "
        "| fastest cellflow run at target | its W1 | its s | time ratio (cellflow / TorchCFM) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary.itertuples():
        lines.append(
            f"| {r.dataset} | {r.torchcfm_w1:.4f} | {r.torchcfm_seconds:.2f} | {r.target_w1:.4f} | "
            f"{r.cellflow_auto_w1:.4f} | {r.cellflow_auto_seconds:.2f} | {r.fastest_run or 'not reached'} | "
            f"{r.fastest_w1:.4f} | {r.fastest_seconds:.2f} | {r.ratio:.3f} |"
        )
    lines += ["", "Every run (means over held-out times and seeds):", "",
              "| data | run | W1 | fit s | steps |", "|---|---|---|---|---|"]
    means = table.groupby(["dataset", "run"], sort=False)[["w1", "fit_seconds", "steps"]].mean().reset_index()
    for r in means.itertuples():
        lines.append(f"| {r.dataset} | {r.run} | {r.w1:.4f} | {r.fit_seconds:.2f} | {r.steps:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=["emt", "kouno_thp1"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--budgets", type=int, nargs="+", default=[100, 200, 400, 800])
    p.add_argument("--torchcfm-steps", type=int, default=2000)
    p.add_argument("--device", default="auto")
    p.add_argument("--results", type=Path, default=RESULTS, help="folder of the rows (time_to_accuracy[_quick].csv)")
    p.add_argument("--out", type=Path, default=None,
                   help="report file whose section is rewritten (default BENCHMARKS.md; with --quick "
                        "BENCHMARKS_quick.md in --results)")
    p.add_argument("--quick", action="store_true",
                   help=f"the simulated course {QUICK_DATASET}, seed 0, budgets {QUICK_STEPS // 2} and {QUICK_STEPS}, "
                        f"TorchCFM and n_steps='auto' at most {QUICK_STEPS} steps: seconds (for tests)")
    args = p.parse_args(argv)
    if args.quick:
        args.datasets, args.seeds = [QUICK_DATASET], [0]
        args.budgets, args.torchcfm_steps = [QUICK_STEPS // 2, QUICK_STEPS], QUICK_STEPS
        cellflow.model._model.MAX_AUTO_STEPS = QUICK_STEPS  # n_steps="auto" stops here at the latest
    args.out = report_file(args.out, args.quick, args.results)
    command = "python benchmarks/time_to_accuracy.py" + "".join(
        " " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    device = str(cellflow._utils.resolve_device(args.device))
    started, load = dt.datetime.now(dt.UTC), ", ".join(f"{v:.2f}" for v in os.getloadavg())
    args.code = code_version()
    print(f"$ {command}\ncode: {args.code}; load {load}", flush=True)
    table = pd.concat([run_dataset(name, args, device, print) for name in args.datasets], ignore_index=True)
    args.results.mkdir(parents=True, exist_ok=True)
    rows_file = args.results / f"time_to_accuracy{'_quick' if args.quick else ''}.csv"
    table.to_csv(rows_file, index=False)
    text = report(command, args, device, started, load, table, summarise(table))
    print("\n" + text)
    write_section(SECTION, text, args.out)
    print(f"wrote {args.out} and {rows_file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
