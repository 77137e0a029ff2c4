"""The documentation site builds with warnings as errors, and its generated pages match the code."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from html import unescape
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_MISSING = [m for m in ("mkdocs", "mkdocstrings", "mkdocstrings_handlers.python", "material") if importlib.util.find_spec(m.split(".")[0]) is None]


@pytest.mark.skipif(bool(_MISSING), reason=f"mkdocs not installed ({', '.join(_MISSING)}): pip install -e '.[docs]'")
def test_docs_build_strict_and_cli_page_is_the_parser(tmp_path):
    site = tmp_path / "site"
    r = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    from emoadapt import zoo
    from emoadapt.cli import _subparsers, build_parser

    text = unescape(re.sub(r"<[^>]+>", "", (site / "cli" / "index.html").read_text()))
    ap = build_parser()
    for p in [ap, *_subparsers(ap)]:
        assert f"usage: {p.prog}" in text, p.prog
        for a in p._actions:
            for opt in a.option_strings:
                assert opt in text, (p.prog, opt)
    models = (site / "models" / "index.html").read_text()
    for name, e in zoo.manifest()["models"].items():
        assert f"<code>{name}</code>" in models and e["sha256"][:12] in models, name
    api = (site / "api" / "index.html").read_text()
    for name in ("emoadapt.Recognizer.predict", "emoadapt.Result.to_frame", "emoadapt.video.Sampling", "emoadapt.errors.UnknownUserError"):
        assert f'id="{name}"' in api, name


def test_every_install_line_of_an_extra_works_from_the_checkout():
    """emoadapt is installed from its checkout, not from a package index: wherever the docs,
    the README, the package, the scripts or the benchmarks name an extra, the install line is
    ``pip install -e ".[extra]"`` (issues 23 and 27), never ``pip install "emoadapt[extra]"``,
    and the extra exists in pyproject.toml."""
    section = (ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    extras = set(re.findall(r"^([a-z][a-z0-9_-]*) = \[", section, flags=re.MULTILINE))  # tomllib needs Python 3.11
    assert {"extract", "dask", "serve", "eval", "pandas"} <= extras, extras
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    files += [p for d in ("emoadapt", "scripts", "benchmarks") for p in sorted((ROOT / d).rglob("*")) if p.suffix in (".py", ".md", ".sh", ".js", ".html")]
    wrong, named = [], set()
    for path in files:
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r"emoadapt\[[^\]]*\]", text):
            wrong.append(f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}: {m.group()}")
        named.update(re.findall(r"""pip install -e ['"]?\.\[([a-z,]+)\]""", text))
    assert wrong == [], 'an install line that fails from the checkout (use pip install -e ".[extra]"): ' + "; ".join(wrong)
    named = {e for group in named for e in group.split(",")}
    assert {"extract", "dask", "serve", "eval"} <= named and named <= extras, (named, extras)
