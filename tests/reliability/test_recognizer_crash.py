"""Crash safety at the Recognizer level: a process is SIGKILLed at chosen moments of
``correct`` and ``adapt`` on a home directory that lives on across the trials.

Each trial starts one ``_recognizer_worker.py loop`` process, which alternately corrects
``alice`` (CREMA-D actor 1001, small 2-frame clips, ``force=True``) and ``bob`` (a RAVDESS
actor, identity verified) with ``adapt_every=3`` and calls ``adapt`` explicitly every 5
corrections, printing each correction id only after ``correct`` has returned and markers
around every adapt and every ``Store.save_head``. The trial names a point of the worker
(``--stop-at``, :data:`_recognizer_worker.POINTS`, the nth time it is reached): between two
calls, before a correction's row is written, after it is committed but before ``correct``
returns, after an adapt read its data (training), after a head's temporary file is written,
after it is renamed inside the uncommitted transaction, after the head's row is committed. The
worker prints ``STOP`` there and waits; the parent kills it then, so every point is hit
deterministically (the trials cycle through them). After each kill it checks:

* a fresh ``Store(home, create=False)`` opens and ``check()`` is clean (SQLite integrity
  and foreign keys, every head row's file present and matching its sha256);
* every correction id any worker ever reported is present, under its user and label; a
  correction killed before its commit is not there, one killed after it is (exactly one
  committed id the worker never reported);
* each user has at most one active head; it loads with ``strict=True`` (never a fallback),
  is a valid head (``head_from_arrays``) that predicts a distribution on real backbone
  features; the newest head version is the newest a worker saw ``save_head`` return, or one
  more exactly when the kill came after the head's commit;
* a kill after the temporary file leaves a new temporary file, one after the rename a new
  ``v<N>.npz`` that no row references (never used as a head); corrections are consumed only by
  versions that exist or existed;
* a fresh ``Recognizer(home)`` still predicts, routing alice's face to alice.

The default run does 21 trials (each point 3 times); ``-m slow`` runs 70.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import emoadapt
from emoadapt.heads import ClipContext, head_from_arrays
from emoadapt.store import Store, user_dir_name

from . import _procs
from . import _recognizer_worker as worker

WORKER = Path(worker.__file__).resolve()
MODES = ("anytime", "adapt", "save_head")


class _Worker:
    """A loop worker whose stdout is read line by line without blocking."""

    def __init__(self, home: Path, seed: int, stop_at: str, nth: int) -> None:
        self.p = subprocess.Popen(
            _procs.command(WORKER, "loop", home, seed=seed, adapt_every=3, adapt_each=5, stop_at=stop_at, nth=nth),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
            env=_procs.child_env(EMOADAPT_THREADS="1"),
        )
        self.lines: list[str] = []
        self._buf = b""
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.p.stdout, selectors.EVENT_READ)

    def _pump(self, timeout: float) -> bool:
        if not self._sel.select(timeout):
            return False
        chunk = os.read(self.p.stdout.fileno(), 65536)
        if not chunk:
            return False
        self._buf += chunk
        *done, self._buf = self._buf.split(b"\n")
        self.lines += [d.decode() for d in done]
        return True

    def wait_for(self, prefix: str, nth: int = 1, timeout: float = 600.0) -> bool:
        """Read until the ``nth`` line starting with ``prefix`` (False when the worker exits;
        ``timeout`` only bounds a worker that hangs, it decides nothing)."""
        deadline = time.monotonic() + timeout
        while sum(line.startswith(prefix) for line in self.lines) < nth:
            left = deadline - time.monotonic()
            if left <= 0 or (not self._pump(min(left, 0.5)) and self.p.poll() is not None):
                return False
        return True

    def kill(self) -> list[str]:
        """SIGKILL the worker and return every complete line it printed."""
        if self.p.poll() is None:
            os.kill(self.p.pid, signal.SIGKILL)
        self.p.wait(timeout=30)
        while self._pump(0.0):
            pass
        self._sel.close()
        err = self.p.stderr.read().decode()
        self.p.stdout.close()
        self.p.stderr.close()
        assert self.p.returncode == -signal.SIGKILL, (self.p.returncode, err[-3000:])
        return self.lines  # a line cut by the kill stays in _buf


def _files(home: Path, user: str) -> dict[str, int]:
    """``{file name: inode}`` of the user's head directory."""
    d = home / "heads" / user_dir_name(user)
    return {q.name: q.stat().st_ino for q in d.iterdir()} if d.is_dir() else {}


def _db_max_versions(st: Store) -> dict[str, int]:
    return {u: max((r.version for r in st.head_versions(u)), default=0) for u in st.users()}


def _run_trials(home: Path, trials: int) -> dict:
    reported: dict[int, tuple[str, str, int]] = {}  # id -> (user, label, frames)
    max_saved = Counter()  # user -> newest version a worker saw save_head return
    db_max: dict[str, int] = {}  # user -> newest head version in the store before the trial
    feats = None  # real backbone features of a held-apart clip, computed once
    shared = None  # a Recognizer holding the models; per trial a fresh one on the home
    stats = Counter()
    unreported = 0  # committed correction ids no worker reported (killed between commit and print)
    for trial in range(trials):
        point = worker.POINTS[trial % len(worker.POINTS)]
        nth = 1 + (trial // len(worker.POINTS)) % 2  # the first or the second time the point is reached
        before = {u: _files(home, u) for u in ("alice", "bob")}
        w = _Worker(home, seed=trial, stop_at=point, nth=nth)
        assert w.wait_for("READY"), (w.lines, w.p.poll())
        assert w.wait_for("STOP"), (point, nth, w.lines[-5:], w.p.poll())  # it stopped there: kill it now
        lines = w.kill()
        _, stopped, who = lines[-1].split()
        assert stopped == point, lines[-1]
        stats[f"killed at {point}"] += 1
        saved_now: Counter = Counter()
        for line in lines:
            kind, *f = line.split()
            if kind == "C":
                cid = int(f[0])
                assert cid not in reported, f"id {cid} reported twice"
                user, clip, label, _ = worker.loop_op(int(f[1]), int(f[2]))
                assert (f[3], f[4], int(f[5])) == (user, label, len(clip))
                reported[cid] = (user, label, len(clip))
            elif kind == "A-":
                stats["adapts_completed"] += 1
            elif kind == "H-":
                saved_now[f[0]] = max(saved_now[f[0]], int(f[1]))
                max_saved[f[0]] = max(max_saved[f[0]], int(f[1]))
                stats["heads_saved"] += 1

        with Store(home, create=False) as st:
            problems = st.check()
            assert problems == [], (trial, point, problems)
            in_db: dict[int, tuple[str, str, int]] = {}
            consumed: dict[str, set[int]] = {}
            users = st.users()
            for user in users:
                for r in st.corrections(user):
                    in_db[r.id] = (r.user, r.label, r.n_frames)
                    if r.consumed_by_head is not None:
                        consumed.setdefault(user, set()).add(r.consumed_by_head)
            missing = [cid for cid in reported if cid not in in_db]
            assert not missing, f"trial {trial} ({point}): committed ids lost: {missing[:10]}"
            assert all(in_db[cid] == v for cid, v in reported.items())
            stats["ids_verified"] += len(reported)
            # a correct killed after its commit (at correct.committed, or in the automatic adapt
            # that follows it) has its row there, unreported; one killed before has none
            kinds = [line.split()[0] for line in lines]
            in_correct = "S" in kinds and ("C" not in kinds or kinds[::-1].index("S") < kinds[::-1].index("C"))
            after_commit = point == "correct.committed" or (in_correct and point.startswith(("adapt.", "save_head.")))
            stats["kills inside correct after its commit"] += after_commit
            now_unreported = len(set(in_db) - set(reported))
            assert now_unreported - unreported == after_commit, (trial, point, in_correct, now_unreported, unreported)
            unreported = now_unreported

            if feats is None and "alice" in users:
                shared = emoadapt.Recognizer(home=home)
                feats = shared.analyze(worker.shared_clips(worker.HELD_APART_FRAMES)[0][0])
                assert feats.features is not None and feats.features.shape == (3, shared.backbone.dim)
            db_now = _db_max_versions(st)
            for user in users:
                recs = st.head_versions(user)
                assert all(re.fullmatch(r"v[0-9]+\.npz", r.file) for r in recs)
                assert sum(r.status == "active" for r in recs) <= 1
                # versions only grow; a correction is consumed only by a version that was committed
                assert db_now[user] >= max(max_saved[user], *consumed.get(user, {0}))
                # every head committed in this trial was reported, but the one killed after its commit
                newest_reported = max(saved_now[user], db_max.get(user, 0))
                killed_committed = point == "save_head.committed" and who == user
                assert db_now[user] == newest_reported + killed_committed, (trial, point, user, db_now, saved_now, db_max)
                h = st.active_head(user, strict=True)
                if h is None:
                    assert db_now[user] == 0
                else:
                    assert not h.fell_back and h.version == db_now[user]
                    head = head_from_arrays(h.arrays)
                    p = np.asarray(head.predict_proba([feats.features], ClipContext(probabilities=[feats.frame_probabilities])))
                    assert p.shape == (1, len(head.classes_)) and np.isfinite(p).all() and abs(float(p.sum()) - 1) < 1e-5
                    stats["heads_verified"] += 1
            db_max = db_now
        # what a kill inside save_head leaves: a new temporary file (before the rename) or a new
        # v<N+1>.npz that no row references (after the rename, before the commit)
        if point in ("save_head.temp_written", "save_head.renamed"):
            new = {n for n, ino in _files(home, who).items() if before[who].get(n) != ino}
            if point == "save_head.temp_written":
                assert any(n.startswith(".tmp-head-") for n in new), (point, new)
            else:
                assert f"v{db_max[who] + 1}.npz" in new, (point, new, db_max)
            stats[f"kills at {point} leaving the file"] += 1
        if shared is not None:  # end to end: a fresh Recognizer on the home still works
            with emoadapt.Recognizer(home=home, backbone=shared.backbone) as rec:
                res = rec.predict(worker.shared_clips(worker.HELD_APART_FRAMES)[1][0])
                assert res.user == "alice" and res.label is not None
        stats["trials"] += 1
    if shared is not None:
        shared.close()
    stats["distinct_ids"] = len(reported)
    stats["unreported"] = unreported
    return stats


@pytest.mark.parametrize(
    "trials", [3 * len(worker.POINTS), pytest.param(10 * len(worker.POINTS), marks=pytest.mark.slow)], ids=["each point 3x", "each point 10x"]
)
def test_sigkill_during_correct_and_adapt_loses_nothing(tmp_path, trials, record_property):
    worker.require_data()  # the workers read the real clips and photos
    stats = _run_trials(tmp_path / "home", trials)
    assert stats["trials"] == trials
    assert all(stats[f"killed at {p}"] == trials // len(worker.POINTS) for p in worker.POINTS), stats
    assert stats["heads_saved"] > 0 and stats["heads_verified"] > 0
    where = ", ".join(f"{stats[f'killed at {p}']} at {p}" for p in worker.POINTS)
    msg = (
        f"{stats['trials']} trials, each killed at a chosen point ({where}): "
        f"{stats['distinct_ids']} committed correction ids reported, {stats['ids_verified']} id checks (cumulative), "
        f"none lost; {stats['unreported']} committed after the worker's last report (one per kill inside correct after its commit, "
        f"{stats['kills inside correct after its commit']}); "
        f"{stats['adapts_completed']} adaptations completed, {stats['heads_saved']} heads saved, "
        f"{stats['heads_verified']} active heads verified (strict load + prediction)"
    )
    print("\n" + msg)
    record_property("recognizer_crash", msg)
