"""A clone without ``../shared/data``: the tests that need the real data skip with one line
saying where the data goes, what runs on the repository's own files (models, the example
clip) still passes, and under ``EMOADAPT_REQUIRE_DATA=1`` (``.ci/run``) a missing data path
fails instead of skipping. Each case runs pytest in a subprocess with ``$EMOADAPT_DATA``
pointing at an empty directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: one of each way a test reaches the data: a fixture (images), need_data in the test body,
#: a parametrization over the committed reference fixture, the recognizer worker
NEEDS_DATA = [
    "tests/test_identity_embedder.py::test_embed_faces_on_a_photo",
    "tests/test_fer2013_benchmark.py::test_taiwanese_labels_from_file_names",
    "tests/test_detection.py::test_fixture_covers_every_photo",
    "tests/test_detection.py::test_parity_with_facenet_pytorch[identity/obama.jpg]",
    "tests/reliability/test_recognizer_processes.py::test_processes_share_one_recognizer_home[4x75]",
]
#: runs on what the repository ships (the MTCNN model and examples/cremad_1001_DFA_HAP_XX.flv)
SHIPPED_ONLY = ["tests/test_detection.py::test_video_frame_has_one_face"]


def _reason(data: Path) -> str:
    return f"real data not found at {data} (put ../shared/data beside the repository, or set $EMOADAPT_DATA)"


def _pytest(data: Path, *args: str, require: bool = False) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("EMOADAPT_DATA", "EMOADAPT_REQUIRE_DATA", "PYTEST_ADDOPTS")}
    env["EMOADAPT_DATA"] = str(data)
    if require:
        env["EMOADAPT_REQUIRE_DATA"] = "1"
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rsf", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_tests_that_need_the_data_skip_with_one_line_saying_where_it_goes(tmp_path):
    data = tmp_path / "empty"
    data.mkdir()
    r = _pytest(data, *NEEDS_DATA, *SHIPPED_ONLY)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert re.search(rf"\b1 passed, {len(NEEDS_DATA)} skipped\b", out), out[-4000:]
    reasons = re.findall(r"^SKIPPED \[(\d+)\] [^:]+:\d+: (.*)$", r.stdout, re.MULTILINE)
    assert sum(int(n) for n, _ in reasons) == len(NEEDS_DATA), r.stdout[-4000:]
    assert {reason for _, reason in reasons} == {_reason(data)}


def test_missing_data_fails_the_run_under_require_data(tmp_path):
    data = tmp_path / "empty"
    data.mkdir()
    r = _pytest(data, *NEEDS_DATA, *SHIPPED_ONLY, require=True)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out[-4000:]
    summary = dict((k, int(n)) for n, k in re.findall(r"(\d+) (failed|passed|errors?|skipped)", out.splitlines()[-1]))
    # a fixture that fails counts as an error of the test's setup, a test body's as a failure
    failed = summary.get("failed", 0) + summary.get("error", 0) + summary.get("errors", 0)
    assert failed == len(NEEDS_DATA) and summary.get("passed") == 1 and "skipped" not in summary, out[-4000:]
    # each failure names the missing path after the same reason
    assert out.count(f"{_reason(data)}; missing: {data}") >= len(NEEDS_DATA), out[-4000:]


def test_the_whole_suite_collects_without_the_data(tmp_path):
    """Parametrizations over data files come from committed fixtures, never from the data."""
    r = _pytest(tmp_path / "nowhere", "--collect-only", "-m", "", "tests")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "error" not in out.splitlines()[-1].lower(), out[-4000:]
    n = int(re.search(r"(\d+) tests? collected", out).group(1))
    assert n > 800
