#!/usr/bin/env python
"""Is ``emoadapt annotate`` as fast as ``predict``? Frames per second over the six CREMA-D clips.

Three ways over the same frames (best of ``--repeat`` passes, wall clock, one process):

* ``predict``: :meth:`Recognizer.predict` (decode, tracked detection, alignment, backbone);
* ``annotate``: :func:`emoadapt.annotate.annotated_frames` (predict's analysis, then the clip
  decoded again and every face drawn), encoding left out as in the other two;
* ``per-frame faces_in``: what ``annotate`` did before, the full detector and the backbone on
  every frame (:meth:`Recognizer.faces_in`), drawn.

    nice -n 10 python benchmarks/annotate_speed.py [--repeat 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
from _common import add_common_args, data_dir  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, repeat=2)  # passes per method; the best is reported
    args = ap.parse_args()
    import cv2

    import emoadapt
    from emoadapt.annotate import annotated_frames, draw_face
    from emoadapt.video import iter_frames

    clips = sorted((data_dir() / "clips" / "cremad").glob("*.flv"))
    with tempfile.TemporaryDirectory() as home:
        rec = emoadapt.Recognizer(home=home, opencv_threads=1)  # as the command line

        def predict() -> int:
            return sum(rec.predict(c).frames for c in clips)

        def annotate() -> int:
            return sum(1 for c in clips for _ in annotated_frames(rec, c))

        def per_frame() -> int:
            n = 0
            for c in clips:
                for fr in iter_frames(c):
                    img = cv2.cvtColor(fr.image, cv2.COLOR_RGB2BGR)
                    for f in rec.faces_in(fr.image):
                        draw_face(img, f.box, f.label, f.probabilities[f.label])
                    n += 1
            return n

        predict()  # warm-up: models loaded, caches filled
        for name, fn in [("predict", predict), ("annotate", annotate), ("per-frame faces_in (old annotate)", per_frame)]:
            best = float("inf")
            for _ in range(args.repeat):
                t = time.perf_counter()
                n = fn()
                best = min(best, time.perf_counter() - t)
            print(f"{name}: {n} frames in {best:.2f} s = {n / best:.1f} frames/s")


if __name__ == "__main__":
    main()
