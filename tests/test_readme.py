"""The Python snippets of the README and of the documentation pages run as written: each imports what it uses and
builds its own AnnData."""

from __future__ import annotations

import ast
import builtins
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# the documentation's own pages (not the build, nor the notebooks' copies, which tests/test_tutorials.py runs)
DOC_PAGES = sorted(p for p in (ROOT / "docs").rglob("*.md") if not {"_build", "tutorials"} & set(p.parts))


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def _snippets() -> list[str]:
    """Every distinct Python snippet of the README and the documentation pages, in order."""
    return list(dict.fromkeys(code for path in [README, *DOC_PAGES] for code in _python_blocks(path)))


def _undefined_names(code: str) -> set[str]:
    """Names a snippet reads that it neither imports nor assigns (nor are builtins)."""
    bound, read = set(dir(builtins)), set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, ast.Name):
            (bound if isinstance(node.ctx, ast.Store) else read).add(node.id)
    return read - bound


def test_readme_and_docs_have_python_snippets():
    assert _python_blocks(README) and DOC_PAGES
    assert len(_snippets()) >= 5


@pytest.mark.parametrize("index", range(len(_snippets())))
def test_snippet_defines_every_name_it_uses(index):
    assert not _undefined_names(_snippets()[index]), _snippets()[index][:200]


def test_the_check_finds_a_missing_import():
    assert _undefined_names("import cellflow as cf\nsc.pp.pca(adata)\n") == {"sc", "adata"}


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(_snippets())))
def test_snippet_runs(index, tmp_path, monkeypatch):
    """Every snippet, executed as it stands in a fresh namespace (in a temporary folder); the README's ten lines
    by the test below, which checks what they print as well."""
    import matplotlib

    matplotlib.use("Agg")
    code = _snippets()[index]
    if code == _ten_lines():
        pytest.skip("the README's ten lines: test_ten_line_example_runs_as_written runs them")
    for module in re.findall(r"^import (\w+)", code, flags=re.M):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"the snippet needs {module}, which is not installed")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"README.md or docs snippet {index}", "exec"), {"__name__": "__readme__"})


def _ten_lines() -> str:
    section = README.read_text().split("## Ten lines", 1)[1]
    return re.search(r"```python\n(.*?)^```", section, flags=re.S | re.M).group(1)


@pytest.mark.slow  # a README snippet run as written, as test_snippet_runs
def test_ten_line_example_runs_as_written(tmp_path, monkeypatch, capsys):
    """The README's first example, executed as it stands: it fits, draws, predicts and prints the transitions."""
    import matplotlib

    matplotlib.use("Agg")
    code = _ten_lines()
    assert len([line for line in code.splitlines() if line.strip()]) <= 10
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__readme__"}
    exec(compile(code, "README.md ten lines", "exec"), namespace)
    adata = namespace["adata"]
    assert (tmp_path / "velocity.png").stat().st_size > 10_000
    assert namespace["day"].n_obs == (adata.obs["day"] == 10).sum()
    assert adata.obs["cellflow_fate_label"].notna().sum() == (adata.obs["day"] == 10).sum()
    printed = capsys.readouterr().out
    assert "cell_type at 10" in printed and "Epithelial" in printed
