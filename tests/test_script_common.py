"""scripts/_common.py: what every script and benchmark shares (data lookup, labels, run records,
flags); scripts/ as a package (no import cycle, no sys.path changes, runs as python -m scripts.x)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from _scripts import ROOT, cremad_label
from _scripts import common as _common


def test_data_dir_honours_emoadapt_data(monkeypatch, tmp_path):
    monkeypatch.delenv("EMOADAPT_DATA", raising=False)
    assert _common.data_dir() == ROOT.parent / "shared" / "data"
    monkeypatch.setenv("EMOADAPT_DATA", str(tmp_path))
    assert _common.data_dir() == tmp_path


def test_label_maps_on_the_real_file_names(cremad_clips, data_dir):
    assert sorted(cremad_label(c) for c in cremad_clips) == ["angry", "disgust", "fear", "happy", "neutral", "sad"]
    tw = sorted(p.name for p in (data_dir / "faces" / "taiwanese").glob("*.jpg"))
    labels = {_common.taiwanese_label(n) for n in tw}
    assert labels == set(_common.TAIWANESE_LETTERS.values())


def test_write_json_writes_a_run_record_beside_it(tmp_path):
    out = _common.write_json(tmp_path / "sub" / "results.json", {"acc": 0.5, "path": Path("x")})
    assert json.loads(out.read_text()) == {"acc": 0.5, "path": "x"}
    rec = json.loads((tmp_path / "sub" / "results.run.json").read_text())
    manifest = json.loads((ROOT / "models" / "manifest.json").read_text())["models"]
    assert rec["models_sha256"] == {k: v["sha256"] for k, v in manifest.items()}
    assert len(rec["git_commit"]) == 40 and isinstance(rec["git_dirty"], bool)
    assert "numpy" in rec["libraries"] and rec["command"] and rec["time_utc"].endswith("+00:00")
    assert _common.write_run_record(tmp_path) == tmp_path / "run.json"  # a folder: run.json inside


def test_flags_have_one_spelling_and_old_ones_still_parse(tmp_path):
    ap = argparse.ArgumentParser()
    _common.add_common_args(ap, threads="t", repeat=3, out=tmp_path, data=True)
    a = ap.parse_args([])
    assert (a.threads, a.repeat, a.out) == (None, 3, tmp_path)
    a = ap.parse_args(["--blas-threads", "2", "--repeats", "5", "--out-dir", "o"])
    assert (a.threads, a.repeat, a.out) == (2, 5, Path("o"))
    assert "--blas-threads" not in ap.format_help() and "--threads" in ap.format_help()


def _script_imports() -> dict[str, set[str]]:
    """``scripts.<module>`` -> the ``scripts.*`` modules it imports (anywhere in the file)."""
    import ast

    graph: dict[str, set[str]] = {}
    for path in sorted((ROOT / "scripts").rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.split(".")[0] == "scripts":
                deps |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.split(".")[0] == "scripts"}
        graph[name] = deps
    return {k: {d for d in v if d in graph and d != k} for k, v in graph.items()}


def test_scripts_are_a_package_without_import_cycles():
    """scripts/ is a package whose modules import each other as scripts.<name>, with no cycle
    (face_backbone and train_backbone share scripts.backbone_common instead of importing each
    other), and no script of scripts/ puts a directory on sys.path."""
    graph = _script_imports()
    assert "scripts" in graph and "scripts.backbone_common" in graph["scripts.train_backbone"] | graph["scripts.face_backbone"]
    assert "scripts.face_backbone" in graph["scripts.train_backbone"] and "scripts.train_backbone" not in graph["scripts.face_backbone"]
    state: dict[str, int] = {}

    def visit(node: str, path: tuple[str, ...]) -> None:
        if state.get(node) == 1:
            raise AssertionError(f"import cycle: {' -> '.join((*path, node))}")
        if state.get(node) == 2:
            return
        state[node] = 1
        for dep in sorted(graph[node]):
            visit(dep, (*path, node))
        state[node] = 2

    for node in sorted(graph):
        visit(node, ())
    hacks = [p.name for p in (ROOT / "scripts").glob("*.py") if "sys.path" in p.read_text(encoding="utf-8").replace("``sys.path``", "")]
    assert hacks == []


@pytest.mark.parametrize("args,expected", [(["build_models", "--list"], "mobilefacenet"), (["train_backbone", "--help"], "--export-only")])
def test_scripts_run_as_modules_from_the_repository_root(args, expected):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the root (cwd) is what makes scripts importable
    out = subprocess.run([sys.executable, "-m", f"scripts.{args[0]}", *args[1:]], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert expected in out.stdout
