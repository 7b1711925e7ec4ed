"""The documentation site builds with no warning, and covers every public module.

``mkdocs build --strict`` fails on a broken link, a missing anchor, a page left out of
the navigation and a cross-reference (in a page or a docstring) that names nothing, so
building it is the test. It needs the ``docs`` extra (in ``dev``); without mkdocs the
build is skipped, the other checks still run.
"""

from __future__ import annotations

import ast
import os
import pathlib
import pkgutil
import re
import subprocess
import sys

import pytest

import jaxpop

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# modules that only keep an old import path working: documented where they point to
DEPRECATED = {"jaxpop.tensorboard", "jaxpop.schedules.core"}


def _public_modules() -> list[str]:
    names = ["jaxpop"] + [name for _, name, _ in pkgutil.walk_packages(jaxpop.__path__, "jaxpop.")]
    return sorted(
        n
        for n in names
        if n != "jaxpop.__main__"
        and n not in DEPRECATED
        and not any(part.startswith("_") for part in n.split("."))
    )


def _module_docstring(name: str) -> str:
    path = ROOT.joinpath(*name.split("."))
    file = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    return ast.get_docstring(ast.parse(file.read_text()), clean=False) or ""


def test_every_public_module_has_an_api_page_in_the_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    for name in _public_modules():
        page = DOCS / "api" / f"{name}.md"
        assert page.exists(), f"{name} has no API page: add {page.relative_to(ROOT)}"
        assert f"::: {name}\n" in page.read_text(), f"{page.name} does not render {name}"
        assert f"api/{name}.md" in nav, f"mkdocs.yml's nav does not list api/{name}.md"


def test_module_docstrings_are_short_and_specifications_live_in_docs():
    for name in _public_modules():
        lines = _module_docstring(name).splitlines()
        assert len(lines) <= 25, (
            f"{name}'s module docstring has {len(lines)} lines: say in a few lines what "
            "lives there and move the rest (formats, protocols) to a page in docs/"
        )


def test_docs_pointers_in_docstrings_name_pages_that_exist():
    pages = {p.name for p in DOCS.glob("*.md")}
    for name in _public_modules():
        path = ROOT.joinpath(*name.split("."))
        file = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        for page in re.findall(r"docs/([a-z0-9_-]+\.md)", file.read_text()):
            assert page in pages, f"{name} points to docs/{page}, which does not exist"


def test_the_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    pytest.importorskip("material")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    warnings = [line for line in result.stderr.splitlines() if "WARNING" in line]
    assert result.returncode == 0, "mkdocs build --strict failed:\n" + "\n".join(
        warnings or result.stderr.splitlines()[-30:]
    )
    for page in ("index.html", "glossary/index.html", "api/jaxpop.population/index.html"):
        assert (tmp_path / page).exists(), page
    controller = (tmp_path / "api/jaxpop.population/index.html").read_text()
    assert 'id="jaxpop.population.PopulationController"' in controller
