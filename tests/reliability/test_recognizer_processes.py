"""Several processes share one Recognizer home for correct/adapt (``_recognizer_worker.py burst``).

Four worker processes each build their own :class:`emoadapt.Recognizer` on one home
directory (which none of them has created yet), wait at a start barrier, then call
``rec.correct`` on small real clips: two of every three on the worker's own user (a RAVDESS
actor's face, identity verified), one on a user all workers share (CREMA-D actor 1001,
``force=True``). With ``adapt_every=10`` every process fine-tunes heads automatically, so
adaptations of the shared user run concurrently in several processes.

The parent then checks that every id a worker got back is in the store exactly once, under
the right user and label, that nothing else is there, that head versions were never handed
out twice, that every user's active head is the newest one, loads with ``strict=True`` and
is what ``predict`` uses, and that a fresh ``Recognizer(home)`` routes each face to its user.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

import emoadapt
from emoadapt.heads import ClipContext, head_from_arrays, identity_expert_of
from emoadapt.store import Store

from . import _procs
from . import _recognizer_worker as worker

WORKER = Path(worker.__file__).resolve()


def _run_burst(home: Path, n_workers: int, n_each: int, adapt_every: int) -> tuple[list[list[str]], float, float]:
    commands = [_procs.command(WORKER, "burst", home, worker=w, n=n_each, adapt_every=adapt_every) for w in range(n_workers)]
    return _procs.run_burst(commands, env=_procs.child_env(EMOADAPT_THREADS="1"), timeout=600)


@pytest.mark.parametrize(
    "n_workers,n_each",
    [(4, 75), pytest.param(6, 150, marks=pytest.mark.slow)],
    ids=["4x75", "6x150"],
)
def test_processes_share_one_recognizer_home(tmp_path, n_workers, n_each, record_property):
    worker.require_data()  # the workers read the real clips and photos
    home = tmp_path / "home"  # does not exist yet: the workers race to create it
    adapt_every = 10
    outs, wall, startup = _run_burst(home, n_workers, n_each, adapt_every)

    reported: dict[int, tuple[int, int, str, str, int]] = {}  # id -> (worker, i, user, label, frames)
    saved: dict[str, list[int]] = defaultdict(list)  # user -> head versions save_head returned
    adapts = Counter()
    rejected: set[str] = set()
    for w, lines in enumerate(outs):
        assert lines[-1] == "DONE"
        for line in lines:
            kind, *f = line.split()
            if kind == "C":
                cid = int(f[0])
                assert cid not in reported, f"id {cid} returned twice"
                reported[cid] = (int(f[1]), int(f[2]), f[3], f[4], int(f[5]))
                assert int(f[1]) == w
                user, clip, label, _ = worker.burst_op(w, int(f[2]))
                assert (f[3], f[4], int(f[5])) == (user, label, len(clip))
            elif kind == "A-":
                adapts[f[0]] += 1
                if f[2] == "0":
                    rejected.add(f[0])
            elif kind == "H-":
                saved[f[0]].append(int(f[1]))
    total = n_workers * n_each
    assert len(reported) == total
    users = [worker.SHARED_USER] + [worker.own_user(w) for w in range(n_workers)]
    with emoadapt.Recognizer(home=tmp_path / "elsewhere") as rec:
        held_apart_analysis = rec.analyze(worker.shared_clips(worker.HELD_APART_FRAMES)[0][0])

    with Store(home) as st:
        assert st.check() == []
        assert sorted(st.users()) == sorted(users)
        seen: list[int] = []
        for user in users:
            for r in st.corrections(user):
                seen.append(r.id)
                w, i, u, label, frames = reported[r.id]
                assert (r.user, r.label, r.n_frames) == (u, label, frames) == (user, label, frames)
        # every returned id present exactly once, and nothing else
        assert Counter(seen) == Counter(list(reported))
        assert len(seen) == total

        # heads: versions never handed out twice; the newest is active, complete and loads
        # a real clip's backbone features and frame probabilities (what a head reads)
        ana = held_apart_analysis
        for user in users:
            versions = saved[user]
            assert versions, f"{user} never got a head"
            assert len(set(versions)) == len(versions), (user, sorted(versions))
            recs = st.head_versions(user)
            assert sum(r.status == "active" for r in recs) == 1
            active = st.active_head(user, strict=True)
            assert active.version == max(versions) == max(r.version for r in recs)
            head = head_from_arrays(active.arrays)
            p = np.asarray(head.predict_proba([ana.features], ClipContext(probabilities=[ana.frame_probabilities])))
            assert p.shape == (1, len(head.classes_)) and np.isfinite(p).all() and abs(p.sum() - 1) < 1e-5
            if user not in rejected:  # every trigger led to a save: no automatic adaptation was lost
                assert st.count_since_last_head(user) < adapt_every, user
            leftovers = [q.name for q in (home / "heads").rglob("*") if q.name.startswith(".tmp")]
            assert leftovers == []
        actives = {u: st.active_head(u, strict=True) for u in users}
    # the shared user, corrected by every process, was adapted automatically; how often depends
    # on how the processes' corrections interleave (a correct adapts when the pending count it
    # reads after its commit is a multiple of adapt_every), so only that it happened is asserted
    assert adapts[worker.SHARED_USER] >= 1

    # a fresh Recognizer on the home routes each face to its user, with that user's active head
    with emoadapt.Recognizer(home=home) as rec:
        for clip, _label in worker.shared_clips(worker.HELD_APART_FRAMES):
            res = rec.predict(clip)
            assert res.user == worker.SHARED_USER
            head = head_from_arrays(actives[res.user].arrays)
            # the corrections carried the faces' identity embeddings: predict() feeds the expert the face's own
            assert identity_expert_of(head) is not None and res.embedding is not None
            ctx = ClipContext(probabilities=[res.frame_probabilities], embeddings=[res.embedding])
            p = np.asarray(head.predict_proba([res.features], ctx))[0]
            assert np.allclose([res.probabilities[str(c)] for c in head.classes_], p, atol=1e-5)
        for w in range(n_workers):
            assert rec.predict(worker.own_clips(w)[0][0]).user == worker.own_user(w)
        assert rec.predict(worker.actor_image(12)).user is None  # a stranger

    n_adapts = sum(adapts.values())
    n_saved = sum(len(v) for v in saved.values())
    msg = (
        f"{n_workers} processes x {n_each} Recognizer.correct (adapt_every={adapt_every}): {total} ids verified "
        f"(each exactly once, {sum(1 for v in reported.values() if v[2] == worker.SHARED_USER)} on the shared user), "
        f"{n_adapts} adaptations ({adapts[worker.SHARED_USER]} of the shared user), {n_saved} heads saved, "
        f"{len(users)} active heads verified; start-up {startup:.1f} s, {wall:.1f} s wall, "
        f"{total / wall:.1f} corrections/s overall"
    )
    print("\n" + msg)
    record_property("recognizer_concurrency", msg)
