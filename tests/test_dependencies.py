"""The dependency policy (docs/models.md, "Dependencies"): pyproject.toml declares supported
ranges with upper bounds, constraints.txt pins the one tested set inside them, and CI and the
README install with it."""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            m = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)==([^\s;]+)", line)
            assert m, f"constraints.txt: not a pin: {line!r}"
            pins[canonicalize_name(m.group(1).split("[")[0])] = m.group(2)
    return pins


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_runtime_dependencies_have_upper_bounds():
    for dep in _project()["dependencies"]:
        req = Requirement(dep)
        assert any(s.operator in ("<", "<=", "~=", "==") for s in req.specifier), f"{req.name}: no upper bound in pyproject.toml"


def test_every_declared_dependency_is_pinned_inside_its_range():
    pins = _pins()
    reqs = [Requirement(d) for d in _project()["dependencies"]]
    reqs += [Requirement(d) for d in _project()["optional-dependencies"]["test"]]
    for req in reqs:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is declared but not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"constraints.txt pins {req.name}=={pins[name]} outside {req.specifier}"


def test_the_installed_set_is_the_tested_one():
    # what this suite runs on is what constraints.txt names (CI installs with -c constraints.txt)
    pins = _pins()
    for dep in _project()["dependencies"]:
        name = canonicalize_name(Requirement(dep).name)
        assert metadata.version(name) == pins[name], f"{name} {metadata.version(name)} installed, constraints.txt tests {pins[name]}"


def test_ci_and_readme_install_with_the_constraints():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert 'pip install -q -c constraints.txt -e ".[test]"' in ci
    assert readme.count("-c constraints.txt") >= 2
