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
