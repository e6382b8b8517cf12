"""Command line: ``cellflow demo | fit | interpolate | benchmark``.

Under ``torchrun`` (``torchrun --nproc_per_node N -m cellflow fit ...``) every process runs the
command and trains the same model together with the others (:mod:`cellflow._distributed`); only
rank 0 prints and writes files. Errors are printed by every process that meets them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ._checks import integer, number

ROLLOUT_OPTIONS = {"auto": "auto", "on": True, "off": False}  # --rollout, as CellFlow(rollout=...) takes it


def _parsed(convert: Callable, check: Callable) -> Callable:
    """An argparse ``type`` that converts the text and checks the value, as a usage error when bad."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = text  # the check names the text it could not convert
        try:
            return check(value)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return parse


def _whole_number(flag: str, minimum: int) -> Callable:
    """An argparse ``type`` for whole numbers of at least ``minimum``."""
    return _parsed(int, lambda value: integer(flag, value, minimum))


def _finite_number(flag: str) -> Callable:
    """An argparse ``type`` for finite numbers."""
    return _parsed(float, lambda value: number(flag, value))


def _require_input(path: str) -> None:
    """Refuse an input that is not an existing file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"input {path!r} is not an existing file; check the path")


def _read_input(path: str):
    """The AnnData of an ``.h5ad`` input, or an ``OSError`` naming the file when it is not one."""
    import anndata as ad

    try:
        return ad.read_h5ad(path)
    except OSError as err:
        raise OSError(f"input {path!r} cannot be read as .h5ad ({err}); "
                      "give a file written by AnnData.write_h5ad") from None


def _require_writable_folder(folder: Path, flag: str, value: str) -> None:
    """Refuse to go on when ``folder`` (where ``flag value`` writes) is missing or read-only."""
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{flag} {value!r}: the folder {str(folder)!r} does not exist; create it or choose another path"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{flag} {value!r}: the folder {str(folder)!r} is not writable; choose another path")


def _require_output_file(path: str) -> None:
    """Refuse an ``--out`` file that is a folder or whose folder is missing or read-only."""
    if Path(path).is_dir():
        raise IsADirectoryError(f"--out {path!r} is a folder; give a file name inside it")
    _require_writable_folder(Path(path).parent, "--out", path)


def _bars(main: bool, args) -> bool:
    """Progress bars on the main process, unless ``--no-progress`` or stderr is not a terminal (a bar redrawn
    into a log would fill it with lines).
    """
    return main and args.progress and sys.stderr.isatty()


def _join(device: str = "auto") -> bool:
    """Join the process group of ``torchrun`` (nothing outside it); whether this process prints and writes.

    Called once the arguments and paths are checked, before any work.
    """
    from . import _distributed as distributed
    from ._utils import resolve_device

    distributed.join(distributed.local_device(resolve_device(device)))
    return distributed.is_main()


def _demo(args) -> None:
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f"--out {args.out!r}: cannot create this folder ({err.strerror}); choose another path") from None
    _require_writable_folder(out, "--out", args.out)
    main = _join()

    import matplotlib

    matplotlib.use("Agg")
    from . import datasets, pl, tl

    adata = datasets.simulate(seed=args.seed)
    if main:
        print(f"simulated time course: {adata.n_obs} cells, times {sorted(set(adata.obs['time']))}")
    model = tl.fit(adata, time_key="time", use_rep="X_pca", method=args.method, seed=args.seed, n_steps=args.steps,
                   progress=_bars(main, args))
    if not main:
        return
    h5ad, png = out / "cellflow_demo.h5ad", out / "cellflow_demo_velocity.png"
    adata.write_h5ad(h5ad)
    pl.velocity(adata, basis="pca", save=str(png), show=False)
    print(f"fitted {args.method} in {float(model.history['fit_seconds']):.1f} s")
    print(f"AnnData with velocity: {h5ad.resolve()}")
    print(f"velocity plot:         {png.resolve()}")


def _fit(args) -> None:
    _require_input(args.input)
    _require_output_file(args.out)
    main = _join(args.device)
    from . import tl

    adata = _read_input(args.input)
    if main:
        print(f"read {adata.n_obs} cells x {adata.n_vars} genes; fitting {args.method} ({args.steps} steps)",
              flush=True)
    tl.fit(adata, time_key=args.time_key, use_rep=args.use_rep, method=args.method, seed=args.seed,
           n_steps=args.steps, field=args.field, reflow=args.reflow, rollout=ROLLOUT_OPTIONS[args.rollout],
           device=args.device, key_added=args.key_added, progress=_bars(main, args))
    if main:
        from .io import describe_reading

        print(describe_reading(adata.uns[args.key_added]["time_reading"]), flush=True)
        adata.write_h5ad(args.out)
        print(f"wrote {Path(args.out).resolve()}")


def _interpolate(args) -> None:
    _require_input(args.input)
    _require_output_file(args.out)
    main = _join()
    from . import tl

    adata = _read_input(args.input)
    if main:
        print(f"pushing the cells of time {args.from_time:g} to {args.to_time:g}", flush=True)
    pred = tl.interpolate(adata, args.from_time, args.to_time, key=args.key, stochastic=args.stochastic,
                          seed=args.seed, expression=args.expression)
    if main:
        pred.write_h5ad(args.out)
        print(f"wrote {pred.n_obs} predicted cells at time {args.to_time:g} to {Path(args.out).resolve()}")


def _benchmark(args) -> None:
    _require_input(args.input)
    if args.out:
        _require_output_file(args.out)
    main = _join()
    from . import tl

    adata = _read_input(args.input)
    if main:
        print(f"read {adata.n_obs} cells; leave-one-out with {args.method}, seeds {args.seeds}", flush=True)
    table = tl.leave_one_out(adata, time_key=args.time_key, use_rep=args.use_rep, method=args.method,
                             seeds=args.seeds, n_steps=args.steps, field=args.field, reflow=args.reflow,
                             rollout=ROLLOUT_OPTIONS[args.rollout], progress=_bars(main, args))
    if not main:
        return
    if args.out:
        table.to_csv(args.out, index=False)
        print(f"wrote {Path(args.out).resolve()}")
    summary = table.groupby("method")[["w1", "w2", "mmd", "seconds"]].agg(["mean", "std"])
    print(summary.to_string(float_format=lambda v: f"{v:.4f}"))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``cellflow`` command.

    Returns
    -------
    The parser; its sub-commands set ``run``, the function that runs them.
    """
    from .fields._networks import FIELDS
    from .model._methods import METHODS

    method_help = f"one of {', '.join(METHODS)} (default: otcfm; wfr learns growth too)"
    parser = argparse.ArgumentParser(prog="cellflow", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    seed, whole_steps = _whole_number("--seed", 0), _whole_number("--steps", 1)
    steps_help = "training steps (at least 1), or 'auto': stop when the flow stops getting closer to the data"

    def steps(text: str):
        return "auto" if text == "auto" else whole_steps(text)

    demo = commands.add_parser("demo", help="fit the simulated default time course; write .h5ad and a velocity plot")
    demo.add_argument("--out", default="cellflow_demo", help="output folder (default: ./cellflow_demo)")
    demo.add_argument("--method", default="otcfm", choices=METHODS, metavar="METHOD", help=method_help)
    demo.add_argument("--steps", type=steps, default="auto", help=steps_help)
    demo.add_argument("--seed", type=seed, default=0)
    demo.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    demo.set_defaults(run=_demo)

    def common(sub):
        sub.add_argument("input", help="input .h5ad")
        sub.add_argument("--time-key", default="time", help="obs column with each cell's time")
        sub.add_argument("--use-rep", default="X_pca", help="obsm key, 'X' or a layer")
        sub.add_argument("--method", default="otcfm", choices=METHODS, metavar="METHOD", help=method_help)
        sub.add_argument("--steps", type=steps, default="auto", help=steps_help)
        sub.add_argument("--field", default="direct", choices=FIELDS,
                         help="velocity network: 'direct', or 'gradient' of a learned potential (default: direct)")
        sub.add_argument("--reflow", type=_whole_number("--reflow", 0), default=0,
                         help="rounds of rectified flow after the fit, balanced methods only (default: 0)")
        sub.add_argument("--no-progress", dest="progress", action="store_false",
                         help="no progress bars (they are drawn when stderr is a terminal)")
        sub.add_argument("--rollout", default="auto", choices=["auto", "on", "off"],
                         help="rollout fitting after flow matching, so that pushes across many intervals stay on "
                              "the data ('auto': when flow matching ran enough steps to pay for it; default: auto)")

    fit = commands.add_parser("fit", help="learn velocity; write it into a copy of the .h5ad")
    common(fit)
    fit.add_argument("--seed", type=seed, default=0)
    fit.add_argument("--device", default="auto")
    fit.add_argument("--key-added", default="cellflow", help="prefix of every key written (default: cellflow)")
    fit.add_argument("--out", required=True, help="output .h5ad")
    fit.set_defaults(run=_fit)

    interp = commands.add_parser("interpolate", help="push the cells of one time point to another time")
    interp.add_argument("input", help=".h5ad written by 'cellflow fit'")
    interp.add_argument("--from", dest="from_time", type=_finite_number("--from"), required=True,
                        help="a measured time point")
    interp.add_argument("--to", dest="to_time", type=_finite_number("--to"), required=True, help="any time")
    interp.add_argument("--key", default="cellflow", help="the --key-added of 'cellflow fit' (default: cellflow)")
    interp.add_argument("--stochastic", action="store_true",
                        help="draw one path per cell of the model's SDE (methods with a score, e.g. sbcfm)")
    interp.add_argument("--seed", type=seed, default=None, help="seed of the SDE's noise (default: the model's)")
    interp.add_argument("--expression", choices=["neighbors", "pca", "none"], default="neighbors",
                        help="the predicted cells' genes: read off the measured cells their paths pass (default), "
                             "the PCA reconstruction, or none")
    interp.add_argument("--out", required=True, help="output .h5ad of predicted cells")
    interp.set_defaults(run=_interpolate)

    bench = commands.add_parser("benchmark", help="leave-one-time-point-out benchmark")
    common(bench)
    bench.add_argument("--seeds", type=_whole_number("--seeds", 0), nargs="+", default=[0, 1, 2])
    bench.add_argument("--out", help="CSV of every run")
    bench.set_defaults(run=_benchmark)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cellflow`` command.

    Bad arguments are usage errors (argparse exits with status 2). A ``ValueError``, ``KeyError``,
    ``OSError`` or ``RuntimeError`` raised while a command runs becomes the single line
    ``cellflow <command>: error: <reason>`` on stderr and status 1, without a traceback.

    Parameters
    ----------
    argv
        The arguments after ``cellflow`` (default: ``sys.argv[1:]``).

    Returns
    -------
    The exit status: 0 on success, 1 when the command failed.
    """
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (KeyError, ValueError, OSError, RuntimeError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"cellflow {args.command}: error: {' '.join(str(message).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
