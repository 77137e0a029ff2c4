#!/usr/bin/env python
"""Derive the ``fer2013`` alignment template: where MTCNN's 5 landmarks sit in FER2013 crops.

FER2013 faces are loosely centred 48x48 gray crops. For crops made at run time to look like
them, we run our MTCNN on FER2013 training images (upscaled 4x, with a replicated border so
the detector sees some context), take the landmarks of the detected face in unit-square
coordinates of the original crop, and average them (median per point, then made
left-right symmetric, since training uses horizontal flips). Prints the template for
``emoadapt/alignment.py`` and the spread of each point.

    python -m scripts.derive_fer_template --n 3000
"""

from __future__ import annotations

import argparse
import logging

import cv2
import numpy as np

from scripts._common import add_common_args


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, data=True)  # reads <data>/fer2013.npz
    ap.add_argument("--n", type=int, default=3000, help="training images to use")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from tqdm import tqdm

    from emoadapt.detection import MTCNN

    det = MTCNN(min_face_size=40)
    d = np.load(args.data / "fer2013.npz", allow_pickle=False)
    rng = np.random.default_rng(args.seed)
    x_train = d["x_train"]
    idx = rng.choice(len(x_train), args.n, replace=False)
    up, pad = 4, 48
    pts = []
    for i in tqdm(idx, unit="face"):
        g = cv2.resize(x_train[i], (48 * up, 48 * up), interpolation=cv2.INTER_CUBIC)
        g = cv2.copyMakeBorder(g, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        r = det.detect(cv2.cvtColor(g, cv2.COLOR_GRAY2RGB))
        if len(r) == 0 or r.scores[0] < 0.95:
            continue
        pts.append((r.landmarks[0] - pad) / (48 * up))
    p = np.array(pts)
    med = np.median(p, axis=0)
    mirror = med[[1, 0, 2, 4, 3]] * np.array([-1, 1]) + np.array([1, 0])
    t = (med + mirror) / 2
    logging.info("faces found: %d / %d", len(p), args.n)
    logging.info("per-point IQR (unit square):\n%s", np.round(np.percentile(p, 75, 0) - np.percentile(p, 25, 0), 4))
    print("fer2013 template (unit square, MTCNN order):")
    print(np.array2string(np.round(t, 4), separator=", "))


if __name__ == "__main__":
    main()
