"""README's test command is what CI runs."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_test_command_is_ci_run():
    ci = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln and not ln.startswith(("#", "set ", "cd ", "export EMOADAPT_REQUIRE_DATA="))]
    readme = (ROOT / "README.md").read_text()
    block = readme.split("Run the tests (what `.ci/run` runs", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    assert block.splitlines() == ci
    assert "ruff check ." in ci[-1] and "mypy" in ci[-1] and ci[-1].index("mypy") < ci[-1].index("pytest")
