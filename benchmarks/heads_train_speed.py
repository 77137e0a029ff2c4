"""Training speed of the clip heads on real backbone features.

Feature source: the default shipped backbone (``emoadapt_fer_int8``, D = 256; D = 128 with ``fer_minixception``, via
:class:`emoadapt.features.Backbone`) embeds the real FER2013 faces of the public-test split
(3589 faces, used to build the training clips) and of the private-test split (3589 faces,
used to build held-out clips and the "personal" clips). A clip of label ``c`` is
``--frames`` feature vectors of faces labelled ``c`` drawn at random (with replacement) from
its split, so every frame is a real face embedding; the temporal order is not meaningful.

Prints, per head type: seconds to ``fit`` a universal head on ``--clips`` clips, epochs run,
held-out accuracy (a sanity check, not a result), and seconds for a personal fine-tune
(``copy()`` + ``partial_fit``) on ``--personal`` clips. Targets on the 2-core dev machine:
fit < 60 s per head, fine-tune < 1 s.

    python benchmarks/heads_train_speed.py [--clips 3000 --frames 75 --personal 100] [--threads 1]

On a small, busy machine OpenBLAS threading hurts these medium-sized GEMMs; compare with
``--threads 1``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from emoadapt.heads import SelfAttentionHead, SingleAttentionHead, StatPoolingHead  # noqa: E402

log = logging.getLogger("heads_train_speed")

from _common import add_common_args, data_dir, write_json  # noqa: E402

HEADS = {
    "max": lambda: StatPoolingHead(("max",)),
    "max_mean_std": lambda: StatPoolingHead(("max", "mean", "std")),
    "single_attention": lambda: SingleAttentionHead(),
    "self_attention": lambda: SelfAttentionHead(d_k=64),
}


def embed_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    from emoadapt.features import Backbone

    z = np.load(data_dir() / "fer2013.npz", allow_pickle=False)
    x, y = z[f"x_{split}"], z[f"y_{split}"]
    t = time.perf_counter()
    feats = Backbone(num_threads=os.cpu_count()).embed(x)
    log.info("embedded %d FER2013 %s faces in %.1f s", len(x), split, time.perf_counter() - t)
    return feats, y


def make_clips(feats: np.ndarray, y: np.ndarray, n: int, frames: int, rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray]:
    classes = np.unique(y)
    labels = rng.choice(classes, size=n)
    by_class = {c: np.flatnonzero(y == c) for c in classes}
    clips = [feats[rng.choice(by_class[c], size=frames)] for c in labels]
    return clips, labels


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=3000)
    ap.add_argument("--frames", type=int, default=75)
    ap.add_argument("--personal", type=int, default=100)
    ap.add_argument("--heads", default=",".join(HEADS))
    ap.add_argument("--seed", type=int, default=0)
    add_common_args(ap, threads="limit BLAS threads while training (threadpoolctl); default: library default")
    ap.add_argument("--json", type=Path, help="also write the numbers to this JSON file (and its run record beside it)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    rng = np.random.default_rng(args.seed)
    f_tr, y_tr = embed_split("public_test")
    f_te, y_te = embed_split("private_test")
    train, ytrain = make_clips(f_tr, y_tr, args.clips, args.frames, rng)
    test, ytest = make_clips(f_te, y_te, 500, args.frames, rng)
    pers, ypers = make_clips(f_te, y_te, args.personal, args.frames, rng)
    log.info("%d training clips of %d x %d real features", len(train), args.frames, train[0].shape[1])

    results: dict = {}
    if args.threads:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=args.threads):
            _run(args, train, ytrain, test, ytest, pers, ypers, results)
    else:
        _run(args, train, ytrain, test, ytest, pers, ypers, results)
    if args.json:
        write_json(args.json, results, indent=2)
    return results


def _run(args, train, ytrain, test, ytest, pers, ypers, results) -> None:
    print(f"{'head':<18}{'fit s':>8}{'epochs':>8}{'acc':>8}{'finetune s':>12}{'ft epochs':>10}")
    for name in args.heads.split(","):
        head = HEADS[name]()
        t = time.perf_counter()
        head.fit(train, ytrain)
        fit_s = time.perf_counter() - t
        acc = head.score(test, ytest)
        t = time.perf_counter()
        personal = head.copy().partial_fit(pers, ypers)
        ft_s = time.perf_counter() - t
        results[name] = {
            "fit_s": fit_s,
            "epochs": head.n_iter_,
            "heldout_acc": acc,
            "finetune_s": ft_s,
            "finetune_epochs": personal.n_iter_,
            "finetune_clips": args.personal,
        }
        print(f"{name:<18}{fit_s:>8.2f}{head.n_iter_:>8d}{acc:>8.3f}{ft_s:>12.3f}{personal.n_iter_:>10d}", flush=True)


if __name__ == "__main__":
    main()
