"""GPU check: every method fitted and interpolated on one CUDA GPU at scale, and CPU and GPU results compared.

Run from a fresh checkout after ``pip install -e .`` on a machine with one CUDA GPU (a few
minutes; every part is timed and printed)::

    python benchmarks/gpu_check.py            # print timings, peak GPU memory and the checks
    python benchmarks/gpu_check.py --write    # also write the gpu_check section of BENCHMARKS.md

Parts:

* checks on a small course (``simulate(n_cells=300, n_genes=50)``, ``use_rep="X"``, time 2 held
  out), for every method of ``cellflow.model.METHODS``: a fit on the CPU, restored on the GPU
  with ``CellFlow.from_dict(model.to_dict(), device="cuda")``, must give the same velocity (and
  growth) at every cell and the same ``push`` from the first to the last time point, within
  ``rtol`` 1e-4 and ``atol`` 1e-4 times the scale of each quantity; and a fit on the GPU with
  the same seed must predict the held-out time point from the one before it with a W1 close to
  the CPU fit's (random streams differ between devices: only statistical agreement is expected;
  see ``W1_RTOL``);
* scale: ``simulate(n_cells=40_000, n_genes=50, growth_scale=0)``, 5 time points of 40,000 cells
  (200,000 in all), ``use_rep="X"``; every method ``cf.tl.fit(..., device="cuda")`` and
  ``cf.tl.interpolate(..., from_time=0, to_time=0.5)``, with the peak GPU memory
  (``torch.cuda.max_memory_allocated``, reset per method and stage).

Settings that differ from cellflow's defaults, so that the check ends within 5 minutes (the
couplings are solved on the host's CPU, one block after another, whatever the device):
``n_steps="auto"`` stops at 1000 steps rather than 4000 (``cellflow.model._model.MAX_AUTO_STEPS``,
``--step-limit``); the scale part couples blocks of 512 cells rather than 2048; ``sbcfm`` takes
``sigma=0.5`` (so ``reg = 2 sigma**2 = 0.5``): with the default 0.1 the entropic regularisation
is about 1/1000 of the typical cost of this 50-d data of rank 2, where Sinkhorn falls back to
the log domain and does not converge in its 5000 iterations (minutes per block); ``wfr`` takes
on the large course the ``delta`` it cross-validated on the small one.

``--quick`` (seconds, for tests; with ``--device cpu`` it needs no GPU) runs every part for
``otcfm`` and ``wfr`` (a method with growth) unless ``--methods`` says otherwise, on a small course of
30 cells and a large one of 100 cells per time point, ``n_steps="auto"`` stopping at 40 steps; its
``--write`` goes to ``BENCHMARKS_quick.md`` in ``benchmarks/results/`` unless ``--out`` says otherwise.
With so few steps the same-seed W1 comparison may fail; the exit status then says so, as for any run.

Exits with an error when there is no CUDA device, and with status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import shlex
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "benchmarks"):  # cellflow from a checkout, and the shared sections.py
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sections import QUICK_STEPS, code_version, report_file, write_section  # noqa: E402  (benchmarks/sections.py)

import cellflow as cf  # noqa: E402
import cellflow.model  # noqa: E402
from cellflow.benchmark import score  # noqa: E402
from cellflow.model import METHODS  # noqa: E402

SECTION = "gpu_check"  # <!-- gpu_check:start --> ... <!-- gpu_check:end --> in BENCHMARKS.md
N_GENES, TIMES, USE_REP = 50, (0.0, 1.0, 2.0, 3.0, 4.0), "X"
SMALL_CELLS, HELD_OUT = 300, 2.0
SCALE_CELLS, SCALE_BLOCK_SIZE = 40_000, 512
QUICK_SMALL_CELLS, QUICK_SCALE_CELLS = 30, 100
QUICK_METHODS = ("otcfm", "wfr")  # without and with growth
FROM_TIME, TO_TIME = 0.0, 0.5
STEP_LIMIT = 1000
METHOD_SETTINGS = {"sbcfm": {"sigma": 0.5}}  # see the module's docstring
RTOL, ATOL = 1e-4, 1e-4  # CPU vs GPU, the same weights: atol times the scale of each quantity
# CPU vs GPU fits with the same seed: the largest |W1 difference| / W1 of the CPU fit. The relative
# standard deviation of W1 over seeds 0, 1, 2 (CPU, this script's small course and settings) was
# otcfm 0.7%, sbcfm 0.4%, wfr 2.6%, icfm 6.0%, mmfm 8.6%; a difference of two fits has sqrt(2) times
# that, and the tolerance is about 3.5 of its standard deviations, at least 15%.
W1_RTOL = {"icfm": 0.30, "mmfm": 0.45}
W1_RTOL_DEFAULT = 0.15
BUDGET_SECONDS = 300
GB = 1e9


def peak_memory(device: torch.device) -> float | None:
    """Peak GPU memory in GB since the last reset (``None`` off a GPU)."""
    return torch.cuda.max_memory_allocated(device) / GB if device.type == "cuda" else None


def reset_memory(device: torch.device) -> None:
    """Free what can be freed and restart the peak counter (GPU only)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def relative_error(value: np.ndarray, reference: np.ndarray, scale: float) -> float:
    """Largest ``|value - reference| / (ATOL * scale + RTOL * |reference|)``: at most 1 within tolerance."""
    bound = ATOL * scale + RTOL * np.abs(reference)
    return float(np.max(np.abs(np.asarray(value) - reference) / bound))


def check_small(method: str, course, device: torch.device, settings: dict, log) -> dict:
    """CPU fit restored on the device, and a device fit with the same seed, on the small course."""
    k = course.index_of(HELD_OUT)
    training = course.without(k)
    start = time.perf_counter()
    cpu_model = cf.CellFlow(method, seed=0, device="cpu", **settings).fit(training, progress=False)
    cpu_seconds = time.perf_counter() - start
    if method == "wfr":
        settings["delta"] = cpu_model.params["delta"]  # the device fit and the scale part take the same delta
    restored = cf.CellFlow.from_dict(cpu_model.to_dict(), device=str(device))
    cells = np.concatenate(training.populations)
    at = np.repeat(training.times, [len(x) for x in training.populations])
    velocity, growth = cpu_model.evaluate(cells, at)
    velocity_device, growth_device = restored.evaluate(cells, at)
    first, last = training.times[0], training.times[-1]
    pushed, mass = cpu_model.push(training.populations[0], first, last, return_mass=True)
    pushed_device, mass_device = restored.push(training.populations[0], first, last, return_mass=True)
    errors = {
        "velocity": relative_error(velocity_device, velocity, float(np.sqrt(np.mean(velocity**2)))),
        "push": relative_error(pushed_device, pushed, cpu_model.scale),
        "mass": relative_error(mass_device, mass, 1.0),
    }
    if growth is not None:
        errors["growth"] = relative_error(growth_device, growth, float(np.sqrt(np.mean(growth**2))) or 1.0)

    start = time.perf_counter()
    device_model = cf.CellFlow(method, seed=0, device=str(device), **settings).fit(training, progress=False)
    device_seconds = time.perf_counter() - start
    before, held = course.populations[k - 1], course.populations[k]

    def held_out_w1(model):
        predicted, predicted_mass = model.push(before, course.times[k - 1], course.times[k], return_mass=True)
        return score(predicted, held, predicted_mass)["w1"]

    w1_cpu, w1_device = held_out_w1(cpu_model), held_out_w1(device_model)
    row = dict(method=method, cpu_fit_seconds=cpu_seconds, device_fit_seconds=device_seconds,
               cpu_steps=len(cpu_model.history["loss"]), device_steps=len(device_model.history["loss"]),
               worst_error=max(errors.values()), errors=errors, w1_cpu=w1_cpu, w1_device=w1_device,
               w1_difference=abs(w1_device - w1_cpu) / w1_cpu)
    row["equal"] = row["worst_error"] <= 1.0
    row["w1_tolerance"] = W1_RTOL.get(method, W1_RTOL_DEFAULT)
    row["agree"] = row["w1_difference"] <= row["w1_tolerance"]
    log(f"  {method:6s} restored: worst error {row['worst_error']:.3g} of the tolerance "
        f"({', '.join(f'{k} {v:.2g}' for k, v in errors.items())}) -> {'ok' if row['equal'] else 'FAILED'}; "
        f"held-out W1 cpu {w1_cpu:.4f}, {device.type} {w1_device:.4f} ({100 * row['w1_difference']:.1f}%) -> "
        f"{'ok' if row['agree'] else 'FAILED'}; fits {cpu_seconds:.1f} s cpu, {device_seconds:.1f} s {device.type}")
    return row


def run_scale(method: str, adata, device: torch.device, settings: dict, log) -> dict:
    """Fit and interpolate the large course on the device: seconds and peak memory of each."""
    reset_memory(device)
    start = time.perf_counter()
    model = cf.tl.fit(adata, time_key="time", use_rep=USE_REP, method=method, key_added=method, seed=0,
                      device=str(device), block_size=SCALE_BLOCK_SIZE, progress=False, **settings)
    fit_seconds = time.perf_counter() - start
    fit_memory = peak_memory(device)
    reset_memory(device)
    start = time.perf_counter()
    predicted = cf.tl.interpolate(adata, from_time=FROM_TIME, to_time=TO_TIME, key=method, model=model)
    interpolation_seconds = time.perf_counter() - start
    history = model.history
    coupling, training = float(history["coupling_seconds"]), float(history["fit_seconds"] - history["coupling_seconds"])
    steps = len(history["loss"])
    row = dict(method=method, fit_seconds=fit_seconds, coupling_seconds=coupling, training_seconds=training,
               steps=steps, step_ms=1e3 * training / steps,
               write_back_seconds=fit_seconds - float(history["fit_seconds"]),
               interpolation_seconds=interpolation_seconds, cells_per_second=predicted.n_obs / interpolation_seconds,
               fit_memory_gb=fit_memory, interpolation_memory_gb=peak_memory(device))
    memory = "" if fit_memory is None else (f"; peak GPU memory fit {fit_memory:.2f} GB, "
                                            f"interpolation {row['interpolation_memory_gb']:.2f} GB")
    log(f"  {method:6s} fit {fit_seconds:.1f} s (coupling {coupling:.1f}, training {training:.1f} in {steps} steps, "
        f"{row['step_ms']:.2f} ms/step); interpolation {interpolation_seconds:.2f} s "
        f"({row['cells_per_second']:,.0f} cells/s){memory}")
    del model, predicted
    return row


def machine(device: torch.device) -> str:
    """The device, host and versions, in one line."""
    gpu = (f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})" if device.type == "cuda"
           else "no GPU: --device cpu")
    return (f"{gpu}; host {platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}; "
            f"Python {platform.python_version()}, torch {torch.__version__}, cellflow {cf.__version__}")


def report(*, command, code, device, load, elapsed, small, scale, n_cells, step_limit, n_small=SMALL_CELLS) -> str:
    """The markdown section."""
    def gb(value):
        return "-" if value is None else f"{value:.2f}"

    ok = all(r["equal"] and r["agree"] for r in small)
    return "\n".join([
        "## GPU check: every method on one GPU, and CPU against GPU",
        "",
        f"`{command}` ({code}; {machine(device)}; load average at the end {load}; {elapsed / 60:.1f} min in all, "
        f"{'within' if elapsed <= BUDGET_SECONDS else '**over**'} the 5-minute budget).",
        "",
        f"Settings (see `benchmarks/gpu_check.py`): `n_steps=\"auto\"` stopping at {step_limit} steps, not 4000; "
        f"blocks of {SCALE_BLOCK_SIZE} cells in the large course's couplings (solved on the host CPU); `sbcfm` "
        "with `sigma=0.5` (the default 0.1 leaves Sinkhorn in the log domain, unconverged, on this 50-d data of "
        "rank 2); `wfr` on the large course with the `delta` cross-validated on the small one.",
        "",
        f"### Scale: {5 * n_cells:,} simulated cells (5 x {n_cells:,}), `use_rep=\"X\"` (50-d)",
        "",
        "| method | fit s | coupling s | training s | steps | ms/step | write-back s | interpolation s "
        "| cells/s | peak GPU GB, fit | peak GPU GB, interpolation |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *[f"| {r['method']} | {r['fit_seconds']:.1f} | {r['coupling_seconds']:.1f} | {r['training_seconds']:.1f} | "
          f"{r['steps']} | {r['step_ms']:.2f} | {r['write_back_seconds']:.1f} | {r['interpolation_seconds']:.2f} | "
          f"{r['cells_per_second']:,.0f} | {gb(r['fit_memory_gb'])} | {gb(r['interpolation_memory_gb'])} |"
          for r in scale],
        "",
        "Write-back is `tl.fit` less `fit_seconds` (reading the course, the velocity of every cell, the keys); "
        f"interpolation pushes the {n_cells:,} cells of time 0 to 0.5 (dopri5).",
        "",
        f"### CPU against GPU on a small course ({n_small} cells at time 0, time {HELD_OUT:g} held out)",
        "",
        f"*Same weights*: the CPU fit restored on the GPU (`CellFlow.from_dict(model.to_dict(), device=\"cuda\")`); "
        f"velocity (and growth) at every training cell and `push` from the first to the last time point "
        f"(positions and masses) must agree within rtol {RTOL:g} and atol {ATOL:g} times each quantity's scale "
        "(RMS of the velocity or growth, the data's overall standard deviation for positions, 1 for masses); "
        "the table gives the worst error as a fraction of that tolerance. *Same seed*: a GPU fit with the "
        "same seed; its held-out W1 must be within the tolerance of the CPU fit's (the random streams differ "
        "between devices, so only statistical agreement is expected: about 3.5 standard deviations of the "
        "difference of two seeds' W1 on the CPU, at least 15%).",
        "",
        "| method | worst error / tolerance | held-out W1, CPU | held-out W1, GPU | difference | tolerance "
        "| steps CPU / GPU | fit s CPU / GPU | result |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        *[f"| {r['method']} | {r['worst_error']:.3g} | {r['w1_cpu']:.4f} | {r['w1_device']:.4f} | "
          f"{100 * r['w1_difference']:.1f}% | {100 * r['w1_tolerance']:.0f}% | "
          f"{r['cpu_steps']} / {r['device_steps']} | "
          f"{r['cpu_fit_seconds']:.1f} / {r['device_fit_seconds']:.1f} | "
          f"{'ok' if r['equal'] and r['agree'] else '**failed**'} |" for r in small],
        "",
        "All checks passed." if ok else "**Some checks failed.**",
    ])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--write", action="store_true", help="write the gpu_check section of BENCHMARKS.md")
    p.add_argument("--cells-per-time", type=int, default=SCALE_CELLS, help="cells per time point of the large course")
    p.add_argument("--small-cells", type=int, default=SMALL_CELLS, help="cells at time 0 of the small course")
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=None,
                   help=f"methods checked (default every one; {' '.join(QUICK_METHODS)} with --quick)")
    p.add_argument("--step-limit", type=int, default=STEP_LIMIT, help="most steps n_steps='auto' takes")
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # "cpu" runs the code paths without a GPU
    p.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)  # another report file (tests)
    p.add_argument("--quick", action="store_true",
                   help=f"{QUICK_SMALL_CELLS} and {QUICK_SCALE_CELLS} cells per time point, at most {QUICK_STEPS} "
                        "steps; --write to benchmarks/results/BENCHMARKS_quick.md: seconds (for tests)")
    args = p.parse_args(argv)
    if args.write and args.device != "cuda" and args.out is None and not args.quick:
        p.error("--write records a GPU run in BENCHMARKS.md; a --device cpu run writes only with --out or --quick")
    if args.quick:
        args.small_cells, args.cells_per_time, args.step_limit = QUICK_SMALL_CELLS, QUICK_SCALE_CELLS, QUICK_STEPS
    args.methods = args.methods or list(QUICK_METHODS if args.quick else METHODS)
    args.out = report_file(args.out, args.quick)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"gpu_check: error: no CUDA device: this torch ({torch.__version__}, CUDA build: "
              f"{torch.version.cuda or 'none'}) sees no GPU. Run the check on a machine with a CUDA GPU and a "
              "CUDA build of torch (pip install torch --index-url https://download.pytorch.org/whl/cu124, "
              "then pip install -e .).", file=sys.stderr)
        return 2
    command = "python benchmarks/gpu_check.py" + "".join(
        " " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    code = code_version()
    started = time.perf_counter()

    def log(message):
        print(f"[{time.perf_counter() - started:6.1f} s] {message}", flush=True)

    log(f"$ {command}")
    log(f"{machine(device)}; {code}")
    cellflow.model._model.MAX_AUTO_STEPS = args.step_limit  # n_steps="auto" stops here at the latest
    warnings.filterwarnings("ignore", message=".*(did not converge|Numerical errors).*")  # POT, on wfr candidates
    settings = {method: dict(METHOD_SETTINGS.get(method, {})) for method in args.methods}

    small_data = cf.datasets.simulate(n_cells=args.small_cells, n_genes=N_GENES, times=TIMES, seed=0)
    course = cf.read_time_course(small_data, "time", USE_REP)
    log(f"small course: {small_data.n_obs} cells, counts {[len(x) for x in course.populations]}")
    small = [check_small(method, course, device, settings[method], log) for method in args.methods]

    large = cf.datasets.simulate(n_cells=args.cells_per_time, n_genes=N_GENES, times=TIMES, growth_scale=0.0, seed=0)
    log(f"large course: {large.n_obs:,} cells ({args.cells_per_time:,} per time point), {N_GENES}-d X")
    scale = [run_scale(method, large, device, settings[method], log) for method in args.methods]

    elapsed = time.perf_counter() - started
    failed = [r["method"] for r in small if not (r["equal"] and r["agree"])]
    log(f"done in {elapsed:.0f} s ({'within' if elapsed <= BUDGET_SECONDS else 'OVER'} the {BUDGET_SECONDS} s budget); "
        + (f"checks FAILED for {', '.join(failed)}" if failed else "all checks passed"))
    if args.write:
        text = report(command=command, code=code, device=device, load=", ".join(f"{v:.2f}" for v in os.getloadavg()),
                      elapsed=elapsed, small=small, scale=scale, n_cells=args.cells_per_time,
                      step_limit=args.step_limit, n_small=args.small_cells)
        write_section(SECTION, text, args.out)
        log(f"wrote the {SECTION} section of {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
