"""Every program of scripts/ and benchmarks/ that needs an extra says which, in one line.

Statically: each import of a module an extra installs (:data:`scripts._common.EXTRAS`:
scikit-learn, matplotlib, pandas, pyarrow, dask; and ``emoadapt.extract``, which needs pyarrow)
is either guarded (inside ``try: ... except ImportError``, the program going on without it) or
announced by a ``require(...)`` call of the program, whose extra is one of pyproject.toml's and
installs that module. Then for real: each program run with ``--help`` where a module its
top-level ``require`` names is hidden (a ``sitecustomize`` that refuses the import) exits with
one line on stderr naming ``pip install -e ".[EXTRA]"``, no traceback.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from scripts._common import EXTRAS  # noqa: E402

PROGRAMS = sorted(
    p for folder in ("scripts", "benchmarks") for p in (ROOT / folder).glob("*.py") if 'if __name__ == "__main__"' in p.read_text(encoding="utf-8")
)
#: what a program may import that an extra installs, and the module it needs
NEEDS = {**{m: m for m in EXTRAS}, "emoadapt.extract": "pyarrow"}


def _extras() -> dict[str, list[str]]:
    """pyproject.toml's extras: name -> the modules of its distributions."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    out = {}
    for extra, reqs in deps.items():
        names = {re.split(r"[<>=\[ ;]", r, maxsplit=1)[0] for r in reqs}
        out[extra] = [m for m, (dist, _) in EXTRAS.items() if dist.split("[")[0] in names]
    return out


def _guarded(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside the body of a ``try`` that catches ImportError (or ModuleNotFoundError)."""
    child, p = node, parents.get(node)
    while p is not None:
        if isinstance(p, ast.Try) and child in p.body:
            caught = [h.type for h in p.handlers]
            names = {getattr(t, "id", None) for c in caught for t in (c.elts if isinstance(c, ast.Tuple) else [c]) if c is not None}
            if names & {"ImportError", "ModuleNotFoundError"}:
                return True
        child, p = p, parents.get(p)
    return False


def _analyse(path: Path) -> tuple[dict[str, int], list[tuple[str, tuple[str, ...], str | None]], list[tuple[str, ...]]]:
    """(unguarded optional imports: module -> line, every require call: (where, modules, extra),
    the modules of the module-level require calls)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parents = {c: p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
    needed: dict[str, int] = {}
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module]
        for name in names:
            need = NEEDS.get(name) or NEEDS.get(name.split(".")[0])
            if need is not None and not _guarded(node, parents):
                needed.setdefault(need, node.lineno)
    calls, top = [], []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "require":
            mods = tuple(a.value for a in node.args if isinstance(a, ast.Constant))
            extra = next((k.value.value for k in node.keywords if k.arg == "extra" and isinstance(k.value, ast.Constant)), None)
            where = "module" if isinstance(parents.get(parents.get(node)), ast.Module) else "function"
            calls.append((where, mods, extra))
            if where == "module":
                top.append(mods)
    return needed, calls, top


def test_every_optional_import_is_announced():
    extras = _extras()
    problems = []
    for path in PROGRAMS:
        rel = path.relative_to(ROOT)
        needed, calls, _ = _analyse(path)
        announced = {m for _, mods, _ in calls for m in mods}
        for module, line in sorted(needed.items()):
            if module not in announced:
                problems.append(f"{rel}:{line}: imports what {module} provides without require({module!r}) or a guard")
        for _, mods, extra in calls:
            for m in mods:
                which = extra or EXTRAS[m][1]
                if which not in extras or m not in extras[which]:
                    problems.append(f"{rel}: require({m!r}) names the extra {which!r}, which does not install it")
    assert problems == [], "\n".join(problems)
    assert any(_analyse(p)[1] for p in PROGRAMS if p.name == "eval_ravdess.py")  # the one the issue names


def _hidden_runs() -> list[tuple[Path, str]]:
    return [(path, m) for path in PROGRAMS for mods in _analyse(path)[2] for m in mods]


@pytest.mark.parametrize("path, module", _hidden_runs(), ids=lambda v: v.name if isinstance(v, Path) else v)
def test_a_missing_extra_is_one_line(tmp_path, path, module):
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name == {module!r} or name.startswith({module + '.'!r}):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "        return None\n"
        "sys.meta_path.insert(0, _Hide())\n"
    )
    rel = path.relative_to(ROOT)
    cmd = [sys.executable, "-m", f"scripts.{path.stem}", "--help"] if rel.parts[0] == "scripts" else [sys.executable, str(rel), "--help"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    extra = next(e for w, mods, e in _analyse(path)[1] if w == "module" and module in mods) or EXTRAS[module][1]
    lines = r.stderr.splitlines()
    assert r.returncode == 1 and len(lines) == 1, (r.returncode, r.stderr)
    assert lines[0].startswith(f"{rel} needs ") and f'pip install -e ".[{extra}]" from the repository root' in lines[0], lines
    assert r.stdout == ""
