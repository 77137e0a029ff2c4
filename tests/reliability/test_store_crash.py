"""Crash safety: workers are SIGKILLed at random moments while writing to the store.

Each trial starts one or two ``_store_worker.py loop`` processes on the same home (the home
lives on across trials, so every trial also recovers from the previous crashes). A worker
adds corrections, saves a ~230 kB head every 3 corrections and rolls a head back every 10,
printing each id/version only after the call has returned (after COMMIT). After a random,
seeded delay the parent SIGKILLs it, then checks:

* the store opens and SQLite's integrity and foreign-key checks pass;
* every correction id any worker ever reported is present, with the worker's exact data;
* at most one operation per killed worker committed without being reported;
* head versions never go backwards, every head row's file is complete and passes its
  sha256 check, the active head loads with ``strict=True`` and holds exactly the arrays
  of the save that created it, and no temporary file is ever referenced as a head.

The default run does 50 trials (about 30-40 s here); ``-m slow`` runs 300.
"""

from __future__ import annotations

import os
import random
import re
import selectors
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from emoadapt.store import Store, user_dir_name

from . import _procs
from . import _store_worker as worker

WORKER = Path(worker.__file__).resolve()
USERS = ("alice", "bob")


def _start(home: Path, seed: int) -> subprocess.Popen:
    return subprocess.Popen(
        _procs.command(WORKER, "loop", home, seed=seed, users=",".join(USERS), head_every=3, head_size=512, rollback_every=10, keep_heads=3),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_procs.child_env(),
        bufsize=0,  # unbuffered: readline("READY") must not swallow lines that communicate() then misses
    )


def _wait_ready(p: subprocess.Popen, timeout: float = 30.0) -> None:
    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ)
    try:
        if not sel.select(timeout):
            raise AssertionError("worker did not get ready")
    finally:
        sel.close()
    line = p.stdout.readline()
    assert line == b"READY\n", (line, p.stderr.read() if p.poll() is not None else b"")


def _kill(p: subprocess.Popen) -> list[str]:
    """SIGKILL the worker and return the complete lines it printed after READY."""
    if p.poll() is None:
        os.kill(p.pid, signal.SIGKILL)
    out, err = p.communicate(timeout=30)
    assert p.returncode == -signal.SIGKILL, (p.returncode, err.decode()[-2000:])
    text = out.decode()
    lines = text.split("\n")
    return lines[:-1]  # the last element is "" or a line cut by the kill


def _run_trials(home: Path, trials: int, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    reported: dict[int, tuple[int, int, str]] = {}  # id -> (worker seed, i, user)
    max_reported_version = {u: 0 for u in USERS}
    stats = dict(trials=0, kills=0, ids_verified=0, unreported_commits=0, heads_verified=0, temp_leftovers=0, orphans_max=0, reported_heads=0, rollbacks=0)
    for trial in range(trials):
        n_workers = 1 + trial % 2
        seeds = [1000 * (trial + 1) + k for k in range(n_workers)]
        procs = [_start(home, s) for s in seeds]
        for p in procs:
            _wait_ready(p)
        # kill each worker at its own random moment: 0-400 ms into its loop
        delays = sorted((rng.uniform(0.0, 0.4), k) for k in range(n_workers))
        t0 = time.monotonic()
        outs: dict[int, list[str]] = {}
        for delay, k in delays:
            time.sleep(max(0.0, delay - (time.monotonic() - t0)))
            outs[k] = _kill(procs[k])
            stats["kills"] += 1

        new_ids: set[int] = set()
        for lines in outs.values():
            for line in lines:
                kind, *f = line.split()
                if kind == "C":
                    cid = int(f[0])
                    assert cid not in reported, f"id {cid} reported twice"
                    reported[cid] = (int(f[1]), int(f[2]), f[3])
                    new_ids.add(cid)
                elif kind == "H":
                    max_reported_version[f[0]] = max(max_reported_version[f[0]], int(f[1]))
                    stats["reported_heads"] += 1
                elif kind == "R":
                    stats["rollbacks"] += 1

        with Store(home, create=False) as st:
            problems = st.check()  # integrity_check, foreign keys, every head row's file + sha256
            assert problems == [], (trial, problems)
            in_db: set[int] = set()
            for user in USERS:
                data = st.correction_data(user)
                in_db |= set(data.ids)
                by_id = dict(zip(data.ids, data.features))
                for cid in new_ids:
                    w, i, u = reported[cid]
                    if u == user:
                        assert by_id[cid].tobytes() == worker.correction_payload(w, i)[0].tobytes()
            missing = set(reported) - in_db
            assert not missing, f"trial {trial}: committed ids lost: {sorted(missing)[:10]}"
            stats["ids_verified"] += len(reported)
            unreported = in_db - set(reported)
            new_unreported = len(unreported) - stats["unreported_commits"]
            assert 0 <= new_unreported <= n_workers, (trial, new_unreported)
            stats["unreported_commits"] = len(unreported)

            temps = orphans = 0
            for user in USERS:
                recs = st.head_versions(user)
                assert all(re.fullmatch(r"v[0-9]+\.npz", r.file) for r in recs)
                assert sum(r.status == "active" for r in recs) <= 1
                if recs:
                    assert max(r.version for r in recs) >= max_reported_version[user]
                h = st.active_head(user, strict=True)
                if h is not None:
                    assert not h.fell_back
                    arrays, meta = worker.head_payload(h.meta["worker"], h.meta["i"], 512)
                    assert all(np.array_equal(h.arrays[k], arrays[k]) for k in arrays)
                    stats["heads_verified"] += 1
                d = home / "heads" / user_dir_name(user)
                if d.is_dir():
                    names = {p.name for p in d.iterdir()}
                    referenced = {r.file for r in recs}
                    temps += sum(n.startswith(".tmp-head-") for n in names)
                    orphans += len({n for n in names if n.startswith("v")} - referenced)
            stats["temp_leftovers"] = temps
            stats["orphans_max"] = max(stats["orphans_max"], orphans)
        stats["trials"] += 1
    stats["distinct_ids"] = len(reported)
    return stats


@pytest.mark.parametrize("trials", [50, pytest.param(300, marks=pytest.mark.slow)], ids=["50", "300"])
def test_sigkill_never_loses_a_commit_or_activates_a_partial_head(tmp_path, trials, record_property):
    t0 = time.perf_counter()
    stats = _run_trials(tmp_path / "home", trials, seed=20240607 + trials)
    wall = time.perf_counter() - t0
    assert stats["trials"] == trials
    assert stats["reported_heads"] > 0 and stats["heads_verified"] > 0
    msg = (
        f"{stats['trials']} trials, {stats['kills']} SIGKILLs in {wall:.1f} s: "
        f"{stats['distinct_ids']} committed ids reported, {stats['ids_verified']} id checks (cumulative), "
        f"{stats['unreported_commits']} commits the worker had no time to report, "
        f"{stats['reported_heads']} heads saved, {stats['rollbacks']} rollbacks, "
        f"{stats['heads_verified']} active heads verified, "
        f"unreferenced v*.npz at most {stats['orphans_max']} at once (removed by the next save), "
        f"temp files left {stats['temp_leftovers']} (never referenced)"
    )
    print("\n" + msg)
    record_property("crash", msg)
