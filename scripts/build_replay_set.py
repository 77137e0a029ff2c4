#!/usr/bin/env python
"""Build the replay set used when fine-tuning personal heads (``models/replay_<backbone>.npz``).

A personal head is fine-tuned on a handful of one user's corrections. Classes the user never
corrected are then at risk: nothing in the fine-tuning data supports them. A small replay of
universal training data for those classes keeps them alive (``emoadapt.adaptation``). The
replay set is ``--per-class`` backbone feature vectors per class of FER2013 *training* faces,
drawn at random (seeded); only the D-dimensional features are stored, never pixels.

Measured with ``scripts/eval_personalization.py`` (CK+ leave-one-sequence-out per subject,
CREMA-D halves): see docs/personalization.md.

    python -m scripts.build_replay_set [--backbone NAME] [--per-class 20] [--seed 0]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
from scripts._common import add_common_args  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", help="manifest backbone (default: the manifest default)")
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    add_common_args(ap, data=True)  # reads <data>/fer2013.npz
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from emoadapt import Backbone, zoo
    from scripts.build_models import set_backbone_heads, update_manifest

    bb = Backbone(args.backbone)
    d = np.load(args.data / "fer2013.npz", allow_pickle=False)
    x, y = d["x_train"], d["y_train"]
    rng = np.random.default_rng(args.seed)
    idx = np.concatenate([rng.choice(np.flatnonzero(y == c), args.per_class, replace=False) for c in range(len(bb.classes))])
    feats = bb.embed(x[idx]).astype(np.float32)
    labels = np.array([bb.classes[int(c)] for c in y[idx]])
    name = f"replay_{bb.name}"
    out = zoo.models_dir() / f"{name}.npz"
    np.savez(out, features=feats, labels=labels)
    update_manifest(
        [
            {
                "name": name,
                "file": out.name,
                "kind": "replay_set",
                "backbone": bb.name,
                "source": {
                    "package": "emoadapt (built by scripts/build_replay_set.py)",
                    "data": "FER2013 train split",
                    "what": f"{args.per_class} backbone feature vectors per class of randomly drawn (seed {args.seed}) training faces; no pixels",
                },
                "licence": "MIT (features derived from FER2013: research use)",
                "inputs": {"features": int(feats.shape[1]), "from": bb.name},
                "outputs": {"features": list(feats.shape), "labels": len(labels)},
            }
        ],
        zoo.models_dir(),
    )
    set_backbone_heads(zoo.models_dir() / "manifest.json", bb.name, replay_set=name)  # what Recognizer(backbone=...) uses
    print(f"wrote {out} ({len(labels)} vectors of {feats.shape[1]} features)")


if __name__ == "__main__":
    main()
