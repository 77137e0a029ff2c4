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


def _build_site(site: Path) -> Path:
    """``mkdocs build --strict`` into ``site`` (the build must succeed); returns ``site``."""
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
    return site


@pytest.mark.skipif(bool(_MISSING), reason=f"mkdocs not installed ({', '.join(_MISSING)}): pip install -e '.[docs]'")
def test_docs_build_strict_and_cli_page_is_the_parser(tmp_path):
    site = _build_site(tmp_path / "site")
    from emoadapt import zoo
    from emoadapt.cli import _subparsers, build_parser

    text = unescape(re.sub(r"<[^>]+>", "", (site / "cli.html").read_text()))
    ap = build_parser()
    for p in [ap, *_subparsers(ap)]:
        assert f"usage: {p.prog}" in text, p.prog
        for a in p._actions:
            for opt in a.option_strings:
                assert opt in text, (p.prog, opt)
    models = (site / "models.html").read_text()
    for name, e in zoo.manifest()["models"].items():
        assert f"<code>{name}</code>" in models and e["sha256"][:12] in models, name
    api = (site / "api.html").read_text()
    for name in ("emoadapt.Recognizer.predict", "emoadapt.Result.to_frame", "emoadapt.video.Sampling", "emoadapt.errors.UnknownUserError"):
        assert f'id="{name}"' in api, name
    _check_offline_site(site)


def _check_offline_site(site: Path) -> None:
    """The site works opened from disk and offline (issue 27): every page of the navigation is
    an .html file its links name (no directory URLs, which a browser shows as a listing from
    disk), and no page or style sheet loads anything from the network (no web fonts)."""
    index = (site / "index.html").read_text()
    nav = sorted(set(re.findall(r'<a href="([a-z-]+\.html)"', index)))
    assert {"cli.html", "api.html", "mobile.html", "web.html"} <= set(nav), nav
    assert all((site / page).is_file() for page in nav), nav
    assert not re.search(r'<a href="[a-z-]+/"', index)
    remote = []
    for page in sorted(site.glob("*.html")):
        html = page.read_text()
        # what a page loads (style sheets, scripts, images, preconnects), not the links a person may follow
        for m in re.finditer(r"<(link|script|img|source|iframe)\b[^>]*\b(?:href|src)=\"(https?:)?//[^\"]+\"", html):
            remote.append(f"{page.name}: {m.group(0)[:120]}")
    for css in sorted(site.rglob("*.css")):
        remote += [f"{css.name}: {u}" for u in re.findall(r"url\([\"']?((?:https?:)?//[^)\"']+)", css.read_text())]
    assert remote == [], remote
    assert "fonts.googleapis" not in index and "fonts.gstatic" not in index


def test_cli_page_is_the_parser():
    """docs/cli.md carries the parser's --help, committed (it reads in full on GitHub): the
    generated section equals what ``python docs/hooks/generated.py`` makes now."""
    sys.path.insert(0, str(ROOT / "docs" / "hooks"))
    try:
        import generated
    finally:
        sys.path.remove(str(ROOT / "docs" / "hooks"))
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    made_by = generated.cli_page_python(text)
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if made_by != here:
        pytest.skip(f"docs/cli.md was generated with Python {made_by}, whose argparse lays help out differently from {here}'s")
    _, section, _ = generated.cli_page_parts(text)
    assert section == generated.cli_section(), "docs/cli.md is out of date with emoadapt/cli.py: run python docs/hooks/generated.py"
    from emoadapt.cli import _subparsers, build_parser

    for p in _subparsers(build_parser()):
        assert f"## `{p.prog}`" in section and f"usage: {p.prog}" in section, p.prog


@pytest.mark.browser
@pytest.mark.skipif(bool(_MISSING), reason=f"mkdocs not installed ({', '.join(_MISSING)}): pip install -e '.[docs]'")
def test_site_opened_from_disk_navigates_in_chromium(tmp_path):
    """site/index.html opened from disk in headless Chromium: a click on a navigation entry
    lands on that page (not a directory listing), and nothing fails to load."""
    import shutil

    chromium, driver_path = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="the browser tests need selenium: pip install -e '.[test]'")
    if not (chromium and driver_path):
        pytest.skip("the browser tests need Debian's chromium and chromium-driver: apt-get install -y chromium chromium-driver")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    site = _build_site(tmp_path / "site")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(options=opts, service=Service(driver_path))
    try:
        d.get((site / "index.html").as_uri())
        for href, title in (("cli.html", "Command line"), ("mobile.html", "Phone apps: the personal model as a file"), ("index.html", "emoadapt")):
            link = d.find_element(By.CSS_SELECTOR, f'nav a[href="{href}"]')
            d.execute_script("arguments[0].click()", link)
            assert d.current_url == (site / href).as_uri(), d.current_url
            assert d.find_element(By.TAG_NAME, "h1").text == title
        loaded = d.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert [u for u in loaded if not u.startswith("file:")] == [], loaded
        errors = [e for e in d.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == [], errors
    finally:
        d.quit()


def test_every_install_line_of_an_extra_works_from_the_checkout():
    """emoadapt is installed from its checkout, not from a package index: wherever the docs,
    the README, the package, the scripts or the benchmarks name an extra, the install line is
    ``pip install -e ".[extra]"`` (issues 23 and 27), never ``pip install "emoadapt[extra]"``,
    and the extra exists in pyproject.toml."""
    section = (ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    extras = set(re.findall(r"^([a-z][a-z0-9_-]*) = \[", section, flags=re.MULTILINE))  # tomllib needs Python 3.11
    assert {"extract", "dask", "serve", "eval", "pandas"} <= extras, extras
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    files += [
        p
        for d in ("emoadapt", "scripts", "benchmarks")
        for p in sorted((ROOT / d).rglob("*"))
        if p.suffix in (".py", ".md", ".sh", ".js", ".html")
        and not any(part.startswith(".") for part in p.relative_to(ROOT).parts)  # not a local env (.peer-env)
    ]
    wrong, named = [], set()
    for path in files:
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r"emoadapt\[[^\]]*\]", text):
            wrong.append(f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}: {m.group()}")
        named.update(re.findall(r"""pip install -e ['"]?\.\[([a-z,]+)\]""", text))
    assert wrong == [], 'an install line that fails from the checkout (use pip install -e ".[extra]"): ' + "; ".join(wrong)
    named = {e for group in named for e in group.split(",")}
    assert {"extract", "dask", "serve", "eval"} <= named and named <= extras, (named, extras)
