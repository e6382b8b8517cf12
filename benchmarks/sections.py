"""BENCHMARKS.md is shared by the benchmark scripts: each one owns a marked section of it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


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
    path.write_text(text)


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
