#!/usr/bin/env python
"""Reference fixture for face-api.js's faceExpressionNet: the upstream graph's own outputs.

    python -m scripts.make_faceapi_expression_fixtures   # writes tests/fixtures/faceapi_expression_reference.npz

Needs the unpacked npm package ``@vladmandic/face-api@1.7.15`` (``scripts/builders/faceapi_expression.py``
fetches it with ``npm pack`` when missing; ``FACE_API_DIR`` points elsewhere), ``node`` (the
package's bundled TF.js runs the upstream network on its CPU backend) and only the TFLite
runtime on the Python side. For the largest face of each real photo in
``shared/data/faces/identity`` (the single-person ones), ``faces/ravdess_actors`` and every
40th ``faces/taiwanese`` photo: our MTCNN gives the 5 landmarks, :func:`emoadapt.alignment.norm_crop`
the 112x112 RGB crop (template :data:`TEMPLATE`), and face-api's ``FaceExpressionNet`` **as
published** (weights decoded by TF.js, its own ops) the 7 probabilities (upstream order:
neutral, happy, sad, angry, fearful, disgusted, surprised) and the 256 pooled features.
Stored: file names, landmarks, the template, the upstream outputs, the class names, the
sha256 of the two weight files and the TF.js version (no pixels: the photos stay in
shared/data). ``tests/test_faceapi_expression.py`` recomputes the crops from the stored
landmarks and checks the shipped model (and, with the package, the numpy reference) against
these outputs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
from scripts._common import add_common_args, data_dir, largest_faces, reference_photos, write_fixture  # noqa: E402

DATA = data_dir()
OUT = ROOT / "tests" / "fixtures"
NAME = "faceapi_expression_reference.npz"
#: the crops are aligned onto this template (unit square) at 112 px
TEMPLATE = "fer2013"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(ap, data=True, out=OUT)
    args = ap.parse_args(argv)
    from emoadapt.alignment import TEMPLATES, norm_crop
    from scripts.builders import faceapi_expression as fa

    names, landmarks, crops = largest_faces(reference_photos(args.data, taiwanese_every=40), lambda img, lm: norm_crop(img, lm, fa.INPUT_SIZE, TEMPLATE))
    probs, feats, info = fa.run_upstream_tfjs(crops.astype(np.float32))
    out = write_fixture(
        args.out / NAME,
        names=names,
        landmarks=landmarks,
        template=TEMPLATES[TEMPLATE],
        size=np.array(fa.INPUT_SIZE),
        upstream_probs=probs.astype(np.float32),
        upstream_features=feats.astype(np.float32),
        upstream_classes=np.array(fa.FACEAPI_CLASSES),
        upstream_sha256=np.array([f"{k} {v}" for k, v in fa.UPSTREAM_SHA256.items() if fa.MODEL in k]),
        source=np.array(f"npm {fa.PACKAGE}@{fa.VERSION} model/{fa.MODEL}*; run by TF.js {info['tfjs']} ({info['backend']} backend) in node"),
    )
    print(f"wrote {out}: {len(names)} faces (TF.js {info['tfjs']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
