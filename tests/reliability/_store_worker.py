"""Worker process for the store reliability tests (run as a script, not collected by pytest).

    python _store_worker.py burst HOME --worker W --n N --head-every K --users a,b
    python _store_worker.py loop  HOME --seed S --users a,b [--head-every K] [--rollback-every R]

Both print ``READY`` once the store is open, then one line per *committed* operation,
written and flushed only after the store call has returned (i.e. after COMMIT):

    C <id> <worker> <i> <user>             add_correction returned <id>
    H <user> <version> <worker> <i>        save_head returned <version>
    R <user> <version|none> <worker> <i>   rollback_head returned

``burst`` waits for a line on stdin (a start barrier, so that workers really overlap), does
N corrections (a head every K) and prints ``DONE``; ``loop`` runs until it is killed.
The data of operation (worker, i) is a deterministic function of (worker, i), see
:func:`correction_payload` and :func:`head_payload`, so the parent can check the contents.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np

try:
    from ._procs import emit, parser, ready, steps
except ImportError:  # run as a script (python _x_worker.py): this folder is sys.path[0]
    from _procs import emit, parser, ready, steps

ROOT = Path(__file__).resolve().parents[2]
T_FRAMES, DIM, DESC_DIM = 75, 128, 256
LABELS = ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")


def import_store() -> types.ModuleType:
    """``emoadapt.store`` without running ``emoadapt/__init__`` (which loads OpenCV and the
    TFLite runtime): the crash harness starts this worker dozens of times."""
    if "emoadapt.store" in sys.modules:
        return sys.modules["emoadapt.store"]
    if "emoadapt" not in sys.modules:
        pkg = types.ModuleType("emoadapt")
        pkg.__path__ = [str(ROOT / "emoadapt")]  # type: ignore[attr-defined]
        sys.modules["emoadapt"] = pkg
    import emoadapt.store as store  # noqa: E402

    return store


def correction_payload(worker: int, i: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(frame features (T, D) float32, descriptor (D',) float32, label) of operation (worker, i)."""
    rng = np.random.default_rng([worker, i, 1])
    t = 1 + (worker * 7 + i) % T_FRAMES
    return (
        rng.standard_normal((t, DIM), dtype=np.float32),
        rng.standard_normal(DESC_DIM, dtype=np.float32),
        LABELS[(worker + i) % len(LABELS)],
    )


def head_payload(worker: int, i: int, size: int = 64) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """(arrays, meta) of the head saved by operation (worker, i)."""
    rng = np.random.default_rng([worker, i, 2])
    return (
        {"coef": rng.standard_normal((len(LABELS), size * 8)), "intercept": rng.standard_normal(len(LABELS)), "classes": np.array(LABELS)},
        {"worker": worker, "i": i},
    )


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    ap.add_argument("--users", default="alice,bob")
    ap.add_argument("--head-every", type=int, default=15)
    ap.add_argument("--head-size", type=int, default=64)
    ap.add_argument("--rollback-every", type=int, default=0)
    ap.add_argument("--keep-heads", default="none")
    a = ap.parse_args(argv)

    store = import_store()
    users = a.users.split(",")
    keep = None if a.keep_heads == "none" else int(a.keep_heads)
    st = store.Store(a.home, keep_heads=keep)
    for u in users:
        st.add_user(u)
    worker = ready(a)
    for i in steps(a):
        user = users[i % len(users)]
        feats, desc, label = correction_payload(worker, i)
        cid = st.add_correction(user, label, feats, desc, f"worker-{worker}")
        emit(f"C {cid} {worker} {i} {user}")
        if a.head_every and i % a.head_every == a.head_every - 1:
            arrays, meta = head_payload(worker, i, a.head_size)
            v = st.save_head(user, arrays, meta, {"i": i})
            emit(f"H {user} {v} {worker} {i}")
        if a.rollback_every and i % a.rollback_every == a.rollback_every - 1:
            r = st.rollback_head(user)
            emit(f"R {user} {'none' if r is None else r} {worker} {i}")
    st.close()
    emit("DONE")
    return 0


if __name__ == "__main__":
    sys.exit(main())
