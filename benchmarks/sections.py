"""BENCHMARKS.md is shared by the benchmark scripts: each one owns a marked section of it."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
RESULTS = BENCHMARKS.parent / "benchmarks" / "results"  # git-ignored: rows, figures and quick reports
QUICK_REPORT = "BENCHMARKS_quick.md"  # the report of a --quick run, in its results folder
QUICK_DATASET = "simulate"  # a small cellflow.datasets.simulate course (leave_one_out.load_course): --quick runs
QUICK_STEPS = 40  # training steps of every fit of a --quick run


def markers(name: str) -> tuple[str, str]:
    """The comment lines that open and close the section ``name``."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def write_section(name: str, body: str, path: Path = BENCHMARKS) -> None:
    """Replace the section ``name`` of BENCHMARKS.md with ``body`` (append it if absent)."""
    start, end = markers(name)
    section = f"{start}\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def report_file(out: Path | None, quick: bool, results: Path = RESULTS) -> Path:
    """The file whose sections a run rewrites.

    Parameters
    ----------
    out
        The file asked for on the command line (``--out``), used when given.
    quick
        A ``--quick`` run: without ``out`` it writes ``QUICK_REPORT`` in ``results``, never BENCHMARKS.md.
    results
        The run's results folder.

    Returns
    -------
    Path
        ``out``, else ``results / QUICK_REPORT`` for a quick run, else BENCHMARKS.md.
    """
    if out is not None:
        return Path(out)
    return Path(results) / QUICK_REPORT if quick else BENCHMARKS


def invocation(script: str, argv=None) -> str:
    """The command line that ran ``benchmarks/<script>.py``, as a shell would take it (``argv``: its
    arguments when called from Python, else the process's own).
    """
    return f"python benchmarks/{script}.py" + "".join(
        " " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))


def code_version() -> str:
    """Commit of the checkout and whether ``cellflow/`` differs from it (call it when a run starts)."""

    def git(*cmd):
        return subprocess.run(["git", "-C", str(BENCHMARKS.parent), *cmd], capture_output=True, text=True,
                              check=True).stdout.strip()

    try:
        commit, dirty = git("rev-parse", "--short", "HEAD"), git("status", "--porcelain", "--", "cellflow")
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    return f"commit {commit}, cellflow/ " + ("with uncommitted changes" if dirty else "as committed")
