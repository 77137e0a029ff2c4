"""Worker process for the Recognizer-level reliability tests (run as a script, not collected).

    python _recognizer_worker.py burst HOME --worker W --n N [--adapt-every K]
    python _recognizer_worker.py loop  HOME --seed S [--adapt-every K] [--adapt-each A]

Both build a :class:`emoadapt.Recognizer` on ``HOME`` (models loaded, lazily loaded parts
warmed up), print ``READY``, then one line per event, flushed at once:

    S <worker> <i> <user>                       correct() called
    C <id> <worker> <i> <user> <label> <T>      correct() returned <id> (the row is committed)
    A+ <user>                                   adapt() started (automatic or explicit)
    A- <user> <version|none> <accepted 0/1>     adapt() returned
    H+ <user>                                   Store.save_head called (inside adapt)
    H- <user> <version>                         Store.save_head returned <version>

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

import argparse
import os
import sys
from functools import cache
from pathlib import Path

import numpy as np

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


def emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def instrument(rec) -> None:  # noqa: ANN001
    """Print markers around every adapt() and Store.save_head of ``rec`` (instance attributes:
    ``correct`` calls ``self.adapt`` and ``adapt_user`` calls ``store.save_head``)."""
    adapt, st = rec.adapt, rec.store
    save_head = st.save_head

    def adapt_marked(user, **kw):  # noqa: ANN001, ANN003, ANN202
        emit(f"A+ {user}")
        rep = adapt(user, **kw)
        emit(f"A- {user} {'none' if rep.version is None else rep.version} {int(rep.accepted)}")
        return rep

    def save_head_marked(user, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        emit(f"H+ {user}")
        v = save_head(user, *a, **kw)
        emit(f"H- {user} {v}")
        return v

    rec.adapt = adapt_marked
    st.save_head = save_head_marked


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=("burst", "loop"))
    ap.add_argument("home")
    ap.add_argument("--worker", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=75)
    ap.add_argument("--adapt-every", type=int, default=10)
    ap.add_argument("--adapt-each", type=int, default=5, help="loop: explicit adapt() every this many ops")
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
    instrument(rec)
    emit("READY")
    if a.mode == "burst":
        sys.stdin.readline()  # start barrier
    worker = a.worker if a.mode == "burst" else a.seed
    i = 0
    while a.mode == "loop" or i < a.n:
        user, clip, label, force = burst_op(worker, i) if a.mode == "burst" else loop_op(a.seed, i)
        emit(f"S {worker} {i} {user}")
        cid = rec.correct(clip, label, user=user, force=force, new_label=True)
        emit(f"C {cid} {worker} {i} {user} {label} {len(clip)}")
        if a.mode == "loop" and a.adapt_each and i % a.adapt_each == a.adapt_each - 1:
            rec.adapt(user)
        i += 1
    rec.close()
    emit("DONE")
    return 0


if __name__ == "__main__":
    sys.exit(main())
