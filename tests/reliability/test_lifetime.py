"""Model lifetime: creating and dropping Recognizers and Backbones, with their worker threads
busy, never crashes and never destroys a TFLite interpreter while the process runs.

The README's test command once died with a segmentation fault in ai_edge_litert's
``Interpreter.__del__`` (called from ``benchmarks/fer2013.py``, which drops a Backbone that
Recognizer worker threads had used). Interpreters now live in a process-wide pool
(``emoadapt.zoo.Lease``): dropping or closing a Backbone / MTCNN / FaceEmbedder gives them
back, so no native teardown runs while the process runs, from whatever thread collects them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from . import _procs

ROOT = Path(__file__).resolve().parents[2]


def _stress(tmp_path: Path, clip_path: Path, data_dir: Path, rounds: int) -> dict:
    argv = [sys.executable, "-m", "tests.reliability._lifetime_worker", str(rounds), str(tmp_path / "home"), str(clip_path), str(data_dir / "fer2013.npz")]
    r, stderr = _procs.run_json(argv, timeout=1200, env=_procs.child_env(OMP_NUM_THREADS="1"), cwd=ROOT)
    assert "Fatal Python error" not in stderr, stderr[-4000:]
    assert r["errors"] == [], r["errors"]
    assert len(r["labels"]) == 2 * rounds and all(lb is not None for lb in r["labels"]), r
    assert len(set(r["labels"])) == 1  # the same clip, the same answer, whichever Recognizer
    assert r["destroyed"] == 0, f"{r['destroyed']} TFLite interpreters destroyed while the process ran"
    return r


def test_create_and_drop_with_busy_worker_threads(tmp_path, clip_path, data_dir):
    _stress(tmp_path, clip_path, data_dir, rounds=4)


@pytest.mark.slow
@pytest.mark.parametrize("run", range(3))
def test_create_and_drop_with_busy_worker_threads_long(tmp_path, clip_path, data_dir, run):
    _stress(tmp_path, clip_path, data_dir, rounds=40)


def test_close_then_use_again(recognizer, clip_path, tmp_path):
    """close() gives the interpreters back; the Recognizer (and a caller's Backbone) stays usable."""
    import emoadapt
    from emoadapt.features import Backbone

    bb = Backbone()
    rec = emoadapt.Recognizer(home=tmp_path / "home", backbone=bb)
    a = rec.predict(clip_path, max_frames=6)
    rec.close()
    assert bb._lease.held  # the caller's backbone is the caller's to close
    assert not rec.detector._nets.held
    b = rec.predict(clip_path, max_frames=6)
    assert a.label == b.label and a.probabilities == pytest.approx(b.probabilities, abs=1e-6)
    bb.close()
    assert not bb._lease.held
    assert len(bb.predict(np.zeros((2, 48, 48), np.uint8))) == 2  # leased again on use
    assert bb._lease.held
