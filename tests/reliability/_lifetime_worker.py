"""Create and drop Recognizers and Backbones, many times, while their worker threads are busy
(run by tests/reliability/test_lifetime.py in a fresh process).

    python -m tests.reliability._lifetime_worker ROUNDS HOME CLIP FER2013_NPZ

Each round: two Recognizers (one with its own backbone, one sharing a Backbone with 1 or 2
TFLite threads) predict a real clip in threads (the emotion network runs in each one's worker
thread, chunk=2 keeps it busy) while a third thread runs the shared Backbone on FER2013 faces;
the main thread drops every reference to them at once, collects garbage, and runs a third
Recognizer on a generator that fails midway (worker busy when the error propagates), then
closes it. The objects die in whichever thread drops the last reference. Every TFLite
``Interpreter.__del__`` is counted: a sound lifetime destroys none while the process runs
(interpreters go back to the process-wide pool). Prints one JSON line; a crash is a
non-zero exit (faulthandler prints the stack).
"""

from __future__ import annotations

import faulthandler
import gc
import json
import sys
import threading

faulthandler.enable()

from ai_edge_litert import interpreter as _litert

_DESTROYED = [0]
_del = _litert.Interpreter.__del__


def _counting_del(self) -> None:
    _DESTROYED[0] += 1
    _del(self)


_litert.Interpreter.__del__ = _counting_del

import numpy as np

import emoadapt
from emoadapt.errors import InvalidInputError
from emoadapt.features import Backbone
from emoadapt.video import iter_frames


def main() -> int:
    rounds, home, clip, fer = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    with np.load(fer, allow_pickle=False) as z:
        faces = z["x_public_test"][:48]
    frames = [f.image for f in iter_frames(clip, sampling=None)][:12]
    labels: list[str | None] = []
    errors: list[str] = []

    def busy_predict(rec: emoadapt.Recognizer) -> None:
        try:
            labels.append(rec.predict(clip, max_frames=24).label)
        except Exception as e:  # noqa: BLE001 - reported, makes the test fail
            errors.append(f"{type(e).__name__}: {e}")

    def busy_backbone(bb: Backbone) -> None:
        try:
            for _ in range(3):
                p = bb.predict_proba(faces)
                assert p.shape == (len(faces), len(bb.classes)) and np.allclose(p.sum(1), 1, atol=1e-4)
        except Exception as e:  # noqa: BLE001
            errors.append(f"{type(e).__name__}: {e}")

    def failing_source():
        yield from frames
        raise OSError("camera unplugged")

    for i in range(rounds):
        threads = 1 + i % 2
        bb = Backbone(num_threads=threads)
        own = emoadapt.Recognizer(home=home, num_threads=threads, chunk=2)
        shared = emoadapt.Recognizer(home=home, backbone=bb, chunk=2)
        workers = [
            threading.Thread(target=busy_predict, args=(own,)),
            threading.Thread(target=busy_predict, args=(shared,)),
            threading.Thread(target=busy_backbone, args=(bb,)),
        ]
        for t in workers:
            t.start()
        del own, shared, bb  # the threads hold the last references now
        gc.collect()
        third = emoadapt.Recognizer(home=home, chunk=2)
        try:
            third.predict(failing_source())
            errors.append("the failing source did not raise")
        except InvalidInputError:
            pass
        third.close()
        del third
        for t in workers:
            t.join()
        gc.collect()
    print(json.dumps({"rounds": rounds, "labels": labels, "errors": errors, "destroyed": _DESTROYED[0]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
