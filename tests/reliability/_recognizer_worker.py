"""Worker process for the Recognizer-level reliability tests (run as a script, not collected).

    python _recognizer_worker.py burst HOME --worker W --n N [--adapt-every K]
    python _recognizer_worker.py loop  HOME --seed S [--adapt-every K] [--adapt-each A] [--stop-at POINT [--nth N]]

Both build a :class:`emoadapt.Recognizer` on ``HOME`` (models loaded, lazily loaded parts
warmed up), print ``READY``, then one line per event, flushed at once:

    S <worker> <i> <user>                       correct() called
    C <id> <worker> <i> <user> <label> <T>      correct() returned <id> (the row is committed)
    A+ <user>                                   adapt() started (automatic or explicit)
    A- <user> <version|none> <accepted 0/1>     adapt() returned
    H+ <user>                                   Store.save_head called (inside adapt)
    H- <user> <version>                         Store.save_head returned <version>
    STOP <point> <user>                         reached the N-th time the point of --stop-at,
                                                and waits there for ever (to be killed)

The points of ``--stop-at`` (:data:`POINTS`), each a precise moment of ``correct`` / ``adapt``:
``between`` (a correct returned and its id was printed), ``correct.before_commit`` (the
correction's row about to be written), ``correct.committed`` (written and committed, correct not
returned yet), ``adapt.training`` (an adapt read its corrections: training comes next),
``save_head.temp_written`` (the head's temporary file complete and fsynced),
``save_head.renamed`` (renamed to ``v<N>.npz`` inside the write transaction, not committed) and
``save_head.committed`` (the row committed, save_head not returned yet). A parent that kills
the worker when it prints ``STOP`` kills it exactly there: no timing decides where.

``C`` is written only after ``correct`` has returned, so every id the parent reads is
committed. ``burst`` waits for a line on stdin (a start barrier, so that the workers really
overlap), does N corrections and prints ``DONE``; ``loop`` runs until it is killed.

The clips are small real ones, to keep the per-call cost low:

* the *shared* user's face: CREMA-D actor 1001, two frames of each of the six clips resized
  to 240x180, labelled with the clip's emotion;
* worker W's own user ``worker<W>``: RAVDESS actor ``OWN_ACTORS[W]`` (one 398x224 frame, and
  the same frame mirrored), people whose faces the identity model tells apart from 1001 and
  from each other (well below the identity model's threshold, see emoadapt.identity.THRESHOLDS).
"""

from __future__ import annotations

import os
import sys
from functools import cache
from pathlib import Path

import numpy as np

try:
    from ._procs import emit, parser, ready, steps
except ImportError:  # run as a script (python _x_worker.py): this folder is sys.path[0]
    from _procs import emit, parser, ready, steps

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("EMOADAPT_DATA", ROOT.parent / "shared" / "data"))
CREMAD = DATA / "clips" / "cremad"

CREMA = {"ANG": "angry", "DIS": "disgust", "FEA": "fear", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
SHARED_FRAMES = (10, 13)  # frames of each CREMA-D clip used for corrections
HELD_APART_FRAMES = (40, 43, 46)  # frames the parent predicts on (never corrected)
SMALL = (240, 180)  # (width, height)
OWN_ACTORS = (1, 2, 4, 6, 7, 8, 3, 5)  # RAVDESS actor per worker index (mod len)
OWN_LABELS = ("calm", "happy")  # label of the actor frame / of the mirrored frame
SHARED_USER = "shared"
#: the CREMA-D clip the repository ships (examples/README.md): the same file as the data's
#: ``clips/cremad/1001_DFA_HAP_XX.flv``, so ``example_clip(f)`` equals ``shared_clips(f)[3][0]``
EXAMPLE_CLIP = ROOT / "examples" / "cremad_1001_DFA_HAP_XX.flv"


def _data(*parts: str) -> Path:
    """A path under the real data. Imported by a test, the tests' own check: a missing path
    skips the test with the one-line reason of ``tests/conftest.py`` (fails it under
    ``EMOADAPT_REQUIRE_DATA=1``). Run as a worker, the parent test has checked already."""
    if __name__ == "__main__":
        return DATA.joinpath(*parts)
    from conftest import need_data  # tests/conftest.py (tests/ is on sys.path under pytest)

    return need_data(*parts)


def require_data() -> None:
    """For a test that starts workers: skip (or fail) it before any worker starts when the
    clips or photos the workers read are absent."""
    _data("clips", "cremad")
    _data("faces", "ravdess_actors")


def cremad_small(path: Path, frames: tuple[int, ...]) -> np.ndarray:
    """Frames ``frames`` of a CREMA-D clip, resized to 240x180: a (T, 180, 240, 3) RGB clip."""
    import cv2

    from emoadapt.video import Sampling, iter_frames

    wanted = set(frames)
    got = {f.index: f.image for f in iter_frames(path, sampling=Sampling(max_frames=max(frames) + 1)) if f.index in wanted}
    assert sorted(got) == sorted(wanted), (path, sorted(got))
    return np.stack([cv2.resize(got[i], SMALL, interpolation=cv2.INTER_AREA) for i in frames])


@cache
def shared_clips(frames: tuple[int, ...] = SHARED_FRAMES) -> tuple[tuple[np.ndarray, str], ...]:
    """(clip, label) for each of the six CREMA-D clips."""
    clips = tuple((cremad_small(p, frames), CREMA[p.stem.split("_")[2]]) for p in sorted(_data("clips", "cremad").glob("*.flv")))
    assert len(clips) == 6, f"{len(clips)} CREMA-D clips in {CREMAD}, expected 6"
    return clips


@cache
def example_clip(frames: tuple[int, ...] = SHARED_FRAMES) -> np.ndarray:
    """``cremad_small`` of the shipped example clip (actor 1001, happy): no data needed."""
    return cremad_small(EXAMPLE_CLIP, frames)


def actor_image(k: int) -> np.ndarray:
    import cv2

    path = _data("faces", "ravdess_actors", f"Actor_{k:02d}.png")
    img = cv2.imread(str(path))
    assert img is not None, path
    return np.ascontiguousarray(img[:, :, ::-1])


def own_user(worker: int) -> str:
    return f"worker{worker}"


@cache
def own_clips(worker: int) -> tuple[tuple[np.ndarray, str], ...]:
    """(one-frame clip, label): the worker's actor frame and the same frame mirrored."""
    img = actor_image(OWN_ACTORS[worker % len(OWN_ACTORS)])
    return ((img[None], OWN_LABELS[0]), (np.ascontiguousarray(img[:, ::-1])[None], OWN_LABELS[1]))


def burst_op(worker: int, i: int) -> tuple[str, np.ndarray, str, bool]:
    """(user, clip, label, force) of operation (worker, i): every third one is the shared user's."""
    if i % 3 == 2:
        clip, label = shared_clips()[(worker + i // 3) % 6]
        return SHARED_USER, clip, label, True
    clip, label = own_clips(worker)[(i + i // 3) % 2]
    return own_user(worker), clip, label, False


def loop_op(seed: int, i: int) -> tuple[str, np.ndarray, str, bool]:
    """(user, clip, label, force) of operation i of a crash-loop worker: alternately
    ``alice`` (CREMA-D face, force=True) and ``bob`` (a RAVDESS actor, verified)."""
    if i % 2 == 0:
        clip, label = shared_clips()[(seed + i // 2) % 6]
        return "alice", clip, label, True
    clip, label = own_clips(0)[(seed + i // 2) % 2]
    return "bob", clip, label, False


#: the points where ``--stop-at`` stops a loop worker (see the module docstring)
POINTS = (
    "between",
    "correct.before_commit",
    "correct.committed",
    "adapt.training",
    "save_head.temp_written",
    "save_head.renamed",
    "save_head.committed",
)


class Stopper:
    """Counts the points reached; at the ``nth`` time of ``stop_at`` prints ``STOP`` and waits
    for ever (the parent kills the process there)."""

    def __init__(self, stop_at: str | None, nth: int = 1) -> None:
        assert stop_at is None or stop_at in POINTS, stop_at
        self.stop_at, self.nth, self.seen = stop_at, nth, 0

    def reached(self, point: str, user: str) -> None:
        if point != self.stop_at:
            return
        self.seen += 1
        if self.seen == self.nth:
            emit(f"STOP {point} {user}")
            import threading

            threading.Event().wait()  # until SIGKILL


def instrument(rec, stopper: Stopper | None = None) -> None:  # noqa: ANN001
    """Print markers around every adapt (explicit, or automatic inside ``correct``) and
    Store.save_head of ``rec``, and let ``stopper`` stop at its point. Hooks on instance
    attributes: the object whose ``adapt`` ``correct`` calls (``rec.personal`` when the
    Recognizer delegates to one), the Store's methods, and the rename step of save_head
    (``emoadapt.store.files.install_head_file``)."""
    from emoadapt.store import files

    stop = stopper or Stopper(None)
    target = getattr(rec, "personal", rec)
    adapt, st = target.adapt, rec.store
    save_head, add_correction, correction_data, write_temp = st.save_head, st.add_correction, st.correction_data, st._write_temp_head
    install = files.install_head_file
    saving: list[str] = []  # the user whose head is being saved, while save_head runs

    def adapt_marked(user, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        emit(f"A+ {user}")
        rep = adapt(user, *a, **kw)
        emit(f"A- {user} {'none' if rep.version is None else rep.version} {int(rep.accepted)}")
        return rep

    def save_head_marked(user, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        emit(f"H+ {user}")
        saving[:] = [user]
        v = save_head(user, *a, **kw)
        stop.reached("save_head.committed", user)
        emit(f"H- {user} {v}")
        return v

    def write_temp_marked(udir, blob, name, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        tmp = write_temp(udir, blob, name, *a, **kw)
        stop.reached("save_head.temp_written", name)
        return tmp

    def install_marked(tmp, final):  # noqa: ANN001, ANN202
        out = install(tmp, final)
        stop.reached("save_head.renamed", saving[0] if saving else "?")
        return out

    def add_correction_marked(user, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        stop.reached("correct.before_commit", user)
        cid = add_correction(user, *a, **kw)
        stop.reached("correct.committed", user)
        return cid

    def correction_data_marked(user, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        out = correction_data(user, *a, **kw)
        stop.reached("adapt.training", user)
        return out

    target.adapt = adapt_marked
    st.save_head, st._write_temp_head = save_head_marked, write_temp_marked
    st.add_correction, st.correction_data = add_correction_marked, correction_data_marked
    files.install_head_file = install_marked


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    ap.add_argument("--adapt-every", type=int, default=10)
    ap.add_argument("--adapt-each", type=int, default=5, help="loop: explicit adapt() every this many ops")
    ap.add_argument("--stop-at", choices=POINTS, help="loop: stop (print STOP and wait to be killed) at this point")
    ap.add_argument("--nth", type=int, default=1, help="loop: ... the nth time it is reached")
    a = ap.parse_args(argv)

    import emoadapt

    rec = emoadapt.Recognizer(home=a.home, adapt_every=a.adapt_every)
    # warm up what loads lazily (embedder, trainable head, replay set), and the clips
    _ = rec.embedder, rec.personal_base, rec.replay
    if a.mode == "burst":
        own_clips(a.worker)
    else:
        own_clips(0)
    shared_clips()
    stopper = Stopper(a.stop_at, a.nth)
    instrument(rec, stopper)
    worker = ready(a)
    for i in steps(a):
        user, clip, label, force = burst_op(worker, i) if a.mode == "burst" else loop_op(a.seed, i)
        emit(f"S {worker} {i} {user}")
        cid = rec.correct(clip, label, user=user, force=force, new_label=True)
        emit(f"C {cid} {worker} {i} {user} {label} {len(clip)}")
        stopper.reached("between", user)
        if a.mode == "loop" and a.adapt_each and i % a.adapt_each == a.adapt_each - 1:
            rec.adapt(user)
    rec.close()
    emit("DONE")
    return 0


if __name__ == "__main__":
    sys.exit(main())
