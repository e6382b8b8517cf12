"""Stochastic bridges: held-out W1 of ``sbcfm`` pushed by its ODE and sampled by its SDE, and the score's cost.

Leave one inner time point out of ``emt`` (the published 10-d embedding, used as it is), fit
``sbcfm`` (entropic OT, Brownian bridges of noise ``sigma``, a score network beside the velocity)
on the other time points, and predict the held-out cells from the cells of the time point before,
one point per cell: the flow (dopri5) and one draw of the SDE per cell (Euler-Maruyama, 1/100 of
the interval per step, three noise seeds). The exact-OT barycentric map is the no-learning
reference with one point per cell. The cost of the score network is the training time per step
of the same batches with and without it (the score targets dropped).

Run: ``python benchmarks/stochastic_bridges.py [--seeds 0] [--threads 1]``; writes its section of
BENCHMARKS.md (or ``--out``) and the W1 rows to ``stochastic_bridges.csv`` in ``--results`` (default
``benchmarks/results/``). ``--quick`` runs the small simulated course of ``leave_one_out.py`` instead
of emt, every fit and the timing for a few steps (seconds, for tests), writes its rows to
``stochastic_bridges_quick.csv`` and its section to ``BENCHMARKS_quick.md`` in ``--results`` unless
``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # this checkout's cellflow, and sections.py
os.environ.setdefault("CELLFLOW_DATA_DIR", str(ROOT.parent / "shared" / "data"))

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
import cellflow.model  # noqa: E402
from cellflow import benchmark  # noqa: E402
from cellflow.fields import TimeMLP  # noqa: E402
from cellflow.training import train  # noqa: E402

NOISE_SEEDS = (0, 1, 2)  # draws of the SDE per fit
TIMED_STEPS = 200  # training steps timed with and without the score network


class _WithoutScore:
    """The batches of an objective with the score targets dropped (a velocity network alone)."""

    def __init__(self, objective):
        self.objective = objective

    def draw(self):
        return dataclasses.replace(self.objective.draw(), score=None, noise_scale=None)


def _seconds_per_step(net, objective, clock, n_steps: int) -> float:
    start = time.perf_counter()
    train(net, objective, clock, n_steps=n_steps, progress=False)
    return (time.perf_counter() - start) / n_steps


def run(course, seeds, n_steps="auto", timed_steps: int = TIMED_STEPS) -> tuple[list[dict], dict]:
    """W1 rows per fold, seed and prediction, and the training seconds per step with and without the score.

    Parameters
    ----------
    course
        The time course, each inner time point held out in turn.
    seeds
        Seeds of the fits.
    n_steps
        Training steps of every fit (``"auto"``: cellflow's default).
    timed_steps
        Training steps timed with and without the score network.
    """
    captured = {}
    fitting = cellflow.model._model.train

    def keep(net, objective, clock, **kwargs):  # the objective and clock of the fit, for the timing below
        captured.update(objective=objective, clock=clock, net=net)
        return fitting(net, objective, clock, **kwargs)

    cellflow.model._model.train = keep
    rows = []
    for k in range(1, len(course.times) - 1):
        t_prev, t_held, t_next = course.times[k - 1 : k + 2]
        before, held, after = course.populations[k - 1 : k + 2]
        fraction = (t_held - t_prev) / (t_next - t_prev)
        mapped = benchmark.ot_barycentric_map(before, after, fraction)
        rows.append(dict(held_out=t_held, seed=0, prediction="exact-OT barycentric map",
                         w1=benchmark.score(mapped, held)["w1"], seconds=0.0))
        for seed in seeds:
            start = time.perf_counter()
            model = cf.CellFlow("sbcfm", n_steps=n_steps, seed=seed).fit(course.without(k), progress=False)
            fitted = time.perf_counter() - start
            start = time.perf_counter()
            flow = model.push(before, t_prev, t_held)
            rows.append(dict(held_out=t_held, seed=seed, prediction="sbcfm ODE (dopri5)",
                             w1=benchmark.score(flow, held)["w1"], seconds=time.perf_counter() - start,
                             fit_seconds=fitted, steps=len(model.history["loss"])))
            for noise in NOISE_SEEDS:
                start = time.perf_counter()
                drawn = model.push(before, t_prev, t_held, stochastic=True, seed=noise)
                rows.append(dict(held_out=t_held, seed=seed, prediction="sbcfm SDE (Euler-Maruyama)",
                                 w1=benchmark.score(drawn, held)["w1"], seconds=time.perf_counter() - start))
            print(f"held out {t_held:g}, seed {seed}: " + ", ".join(
                f"{r['prediction']} {r['w1']:.4f}" for r in rows[-1 - len(NOISE_SEEDS) - 1 :]), flush=True)
    cellflow.model._model.train = fitting
    n_dims, hidden = course.n_dims, tuple(model.params["hidden"])
    objective, clock = captured["objective"], captured["clock"]
    torch.manual_seed(0)
    timing = {
        "with score": _seconds_per_step(captured["net"], objective, clock, timed_steps),
        "velocity only": _seconds_per_step(TimeMLP(n_dims, hidden), _WithoutScore(objective), clock, timed_steps),
        "steps": timed_steps,
        "hidden": hidden,
        "batch": len(objective.draw().x),
    }
    return rows, timing


def section(table, timing, seeds, threads, minutes, code, dataset="emt", command_options="") -> str:
    """The markdown section of BENCHMARKS.md, from the rows of :func:`run` on ``dataset``."""
    lines = [
        f"## Stochastic bridges: `sbcfm` by its ODE and by its SDE ({dataset}, leave one time point out)",
        "",
        f"`python benchmarks/stochastic_bridges.py --seeds {' '.join(map(str, seeds))} --threads {threads}"
        f"{command_options}` "
        f"({code} when the run started; {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{threads} thread{'s' if threads > 1 else ''}; {minutes:.0f} min; load average at the end "
        f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}). One point per cell of the time point before the "
        f"held-out one; W1 to the held-out cells; the SDE drawn with noise seeds {list(NOISE_SEEDS)} "
        "(mean ± std over fits and draws); seconds: the prediction alone.",
        "",
        "| held out | prediction | W1 | seconds |",
        "|---|---|---|---|",
    ]
    for (held, prediction), group in table.groupby(["held_out", "prediction"], sort=False):
        spread = f" ± {group.w1.std(ddof=0):.4f}" if len(group) > 1 else ""
        lines.append(f"| {held:g} | {prediction} | {group.w1.mean():.4f}{spread} | {group.seconds.mean():.2f} |")
    ratio = timing["with score"] / timing["velocity only"]
    lines += [
        "",
        f"Training cost of the score network ({timing['steps']} steps of the last fit's batches, {timing['batch']} "
        f"points per step, hidden {list(timing['hidden'])}): {1e3 * timing['with score']:.1f} ms per step with "
        f"it, {1e3 * timing['velocity only']:.1f} ms with the velocity network alone ({ratio:.2f}x).",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of the fits")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the rows (stochastic_bridges*.csv)")
    parser.add_argument("--out", type=Path, default=None,
                        help="report whose section is written (default BENCHMARKS.md; with --quick "
                             "BENCHMARKS_quick.md in --results)")
    parser.add_argument("--quick", action="store_true",
                        help=f"the simulated course {QUICK_DATASET}, {QUICK_STEPS} steps per fit and timing: "
                             "seconds (for tests)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    code, clock = code_version(), time.perf_counter()
    if args.quick:
        dataset, course = QUICK_DATASET, load_course(QUICK_DATASET)[0]
        rows, timing = run(course, args.seeds, n_steps=QUICK_STEPS, timed_steps=QUICK_STEPS)
    else:
        dataset, course = "emt", cf.read_time_course(cf.datasets.emt(), "time", "X_pca")
        rows, timing = run(course, args.seeds)
    table = pd.DataFrame(rows)
    args.results.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.results / f"stochastic_bridges{'_quick' if args.quick else ''}.csv", index=False)
    text = section(table, timing, args.seeds, args.threads, (time.perf_counter() - clock) / 60, code, dataset,
                   " --quick" if args.quick else "")
    write_section("stochastic_bridges", text, report_file(args.out, args.quick, args.results))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
