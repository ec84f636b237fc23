"""The documentation is code: the site builds in strict mode, and every example runs as written.

* ``mkdocs build --strict`` (into a temporary folder) fails on any warning: a broken link or
  anchor, a page missing from the navigation, a docstring griffe cannot read, an unresolved
  cross-reference.
* Every ```python block of the README and of every page under ``docs/`` runs, in order, in one
  namespace per page, from the repository root, with ``$CONVSPECTRA_DATA`` as tests/conftest.py
  sets it. One test per page, so a failure names the page; tracebacks give the page's own file
  name and line numbers. Blocks that are not Python to run are fenced as ```bash or ```text.
* The README's relative links point at files that exist (GitHub renders them; mkdocs does not
  see the README).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

# A fenced block opened by ```python (possibly indented, e.g. inside a list item) and closed by ``` at the same indent.
_PYTHON_BLOCK = re.compile(r"^(?P<indent>[ \t]*)```python[ \t]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)
_LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")


def python_blocks(page: Path) -> list[tuple[int, str]]:
    """``(line of the block's first code line, code)`` for every ```python block of ``page``, in order."""
    text = page.read_text(encoding="utf-8")
    blocks = []
    for match in _PYTHON_BLOCK.finditer(text):
        indent = len(match["indent"])
        lines = [line[indent:] if not line[:indent].strip() else line for line in match["body"].splitlines()]
        first_line = text.count("\n", 0, match.start("body")) + 1
        blocks.append((first_line, "\n".join(lines) + "\n"))
    return blocks


PAGES_WITH_CODE = [page for page in PAGES if python_blocks(page)]


def test_the_docs_have_examples():
    names = {page.relative_to(ROOT).as_posix() for page in PAGES_WITH_CODE}
    assert {"README.md", "docs/index.md", "docs/spectrum.md"} <= names, names


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_page_examples_run(page: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The page's ```python blocks run in order in one namespace, from the repository root."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("MPLBACKEND", "Agg")  # plots are written to files, never shown
    before = set(os.listdir(ROOT))
    namespace: dict[str, object] = {"__name__": "__docs__"}
    try:
        for first_line, code in python_blocks(page):
            # Padded so that tracebacks show the page's own line numbers.
            exec(compile("\n" * (first_line - 1) + code, str(page), "exec"), namespace)
    finally:
        # Files an example writes into the working directory (r.json, fig4.png, ...) are not kept.
        for name in set(os.listdir(ROOT)) - before:
            path = ROOT / name
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def test_readme_links_exist():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = [m["target"].split("#", 1)[0] for m in _LINK.finditer(text)]
    local = [t for t in targets if t and not re.match(r"[a-z]+:", t)]
    assert local, "the README links into the docs"
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, f"README links to missing files: {missing}"


def test_api_reference_covers_the_public_names():
    """Every name of ``convspectra.__all__`` has its entry on an API page (directly or through its module)."""
    import convspectra
    import convspectra.errors

    targets = set()
    for page in sorted((ROOT / "docs" / "api").glob("*.md")):
        targets |= set(re.findall(r"^::: convspectra\.([\w.]+)\s*$", page.read_text(encoding="utf-8"), flags=re.M))
    covered = set(targets)
    if "errors" in targets:
        covered |= set(convspectra.errors.__all__)
    missing = sorted(set(convspectra.__all__) - covered - {"__version__"})
    assert not missing, f"public names with no API entry (add '::: convspectra.NAME' to docs/api): {missing}"


def test_site_builds_strict(tmp_path: Path) -> None:
    """``mkdocs build --strict`` succeeds with no warning, writing only into a temporary folder."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    config = ["--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")]
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", *config],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = result.stdout + result.stderr
    warnings = [line for line in output.splitlines() if re.match(r"\s*(WARNING|ERROR)\b", line)]
    assert result.returncode == 0 and not warnings, output
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "api" / "spectrum" / "index.html").is_file()
