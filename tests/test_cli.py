from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "cremad_1001_DFA_HAP_XX.flv"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emoadapt.cli", "-q", *args], capture_output=True, text=True, timeout=300)


def test_predict_text_and_json(tmp_path, cremad_clips):
    r = run("predict", str(DEMO))
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip()
    assert line.startswith(str(DEMO)) and "\thappy\t" in line and "faces 56/56" in line
    r = run("predict", "--json", "--timeline", "--max-frames", "10", str(cremad_clips[0]), str(cremad_clips[4]))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [o["clip"] for o in out] == [str(cremad_clips[0]), str(cremad_clips[4])]
    for o in out:
        assert o["frames"] == 10 and o["faces"] == 10 and len(o["timeline"]) == 10
        assert abs(sum(o["probabilities"].values()) - 1) < 1e-4


def test_predict_reports_bad_files_and_continues(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    r = run("predict", str(bad), str(DEMO))
    assert r.returncode == 1
    assert "VideoDecodeError" in r.stdout and "\thappy\t" in r.stdout
    assert "Traceback" not in r.stderr


def test_annotate_writes_labelled_video(tmp_path):
    out = tmp_path / "annotated.mp4"
    r = run("annotate", str(DEMO), "-o", str(out), "--max-frames", "12")
    assert r.returncode == 0, r.stderr
    cap = cv2.VideoCapture(str(out))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    assert len(frames) == 12 and frames[0].shape == (360, 480, 3)
    orig = cv2.VideoCapture(str(DEMO)).read()[1]
    # the box and label were drawn: some pixels changed a lot, most did not
    diff = (abs(frames[0].astype(int) - orig.astype(int)).sum(2) > 120).mean()
    assert 0.002 < diff < 0.2
