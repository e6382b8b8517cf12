"""The documentation's pages and the README: every image exists, every figure is shown beside the command that
regenerates it, and the README stays short and points to the pages."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = sorted(p for p in DOCS.rglob("*.md") if not {"_build", "tutorials"} & set(p.relative_to(DOCS).parts))
REGENERATE = re.compile(r"jupyter execute|python benchmarks/")


def _images(path: Path) -> list[Path]:
    """The local images a Markdown file shows, resolved against its folder."""
    targets = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", path.read_text())
    return [(path.parent / t).resolve() for t in targets if "://" not in t]


def _links(path: Path) -> list[str]:
    return [t.split("#")[0] for t in re.findall(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)", path.read_text())
            if "://" not in t and not t.startswith("#")]


def test_pages_exist():
    names = {p.relative_to(DOCS).as_posix() for p in PAGES}
    for page in ("index.md", "installation.md", "tutorials.md", "benchmarks.md", "architecture.md", "changelog.md",
                 "contributing.md", "api/index.md", "methods/index.md", "guide/index.md"):
        assert page in names, f"docs/{page} is missing"


@pytest.mark.parametrize("path", [README, ROOT / "BENCHMARKS.md", *PAGES], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_image_exists_and_has_its_command_beside_it(path):
    images = _images(path)
    for image in images:
        assert image.is_file(), f"{path.name} shows {image}, which does not exist"
    if images:
        assert REGENERATE.search(path.read_text()), f"{path.name} shows figures without the command that makes them"


def test_every_figure_is_shown_somewhere():
    shown = {image for path in [README, ROOT / "BENCHMARKS.md", *PAGES] for image in _images(path)}
    figures = sorted((DOCS / "figures").glob("*.png"))
    assert figures, "docs/figures holds no figure"
    assert not [f.name for f in figures if f.resolve() not in shown], "figures in docs/figures that no page shows"


@pytest.mark.parametrize("path", [README, *PAGES], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_into_the_repository_resolve(path):
    """Links to pages, notebooks and files (CHANGELOG.md and CONTRIBUTING.md are another change's)."""
    docs_tutorials = ROOT / "docs" / "tutorials"  # the build's copy of tutorials/ (git-ignored): read the sources
    for link in _links(path):
        if link and Path(link).name not in {"CHANGELOG.md", "CONTRIBUTING.md"}:
            target = (path.parent / link).resolve()
            if target.parent == docs_tutorials.resolve():
                target = ROOT / "tutorials" / target.name
            assert target.exists(), f"{path.name} links to {link}, which does not exist"


def test_readme_is_short_and_names_the_other_cellflow():
    text = README.read_text()
    assert len(text.splitlines()) <= 160
    assert "cellflow-tools" in text and "same environment" in text
    assert "docs/installation.md" in text and "docs/methods/index.md" in text
