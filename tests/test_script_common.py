"""scripts/_common.py: what every script and benchmark shares (data lookup, labels, run records, flags)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

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
