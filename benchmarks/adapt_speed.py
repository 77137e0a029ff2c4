#!/usr/bin/env python
"""How long does ``Recognizer.adapt`` take on 100 stored corrections? (target: under 1 s)

The corrections are real: per-frame backbone features of the six CREMA-D clips of actor 1001
(cut into 100 windows of 8-30 frames, labelled with the clip's emotion) and the identity
embedding of each clip's face track (every window of a clip gets its clip's), written to a
fresh store with ``Store.add_correction`` exactly as ``Recognizer.correct`` does. Then
``adapt`` runs (read the corrections; the guard: every 5th correction held out, the
candidates fine-tuned on the others and scored on it; refit on all; fit the identity expert;
save the head atomically) several times; the median is reported.

    python benchmarks/adapt_speed.py [--n 100] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
from _common import add_common_args, cremad_label, data_dir  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100)
    add_common_args(ap, repeat=5)
    args = ap.parse_args()
    import emoadapt

    with tempfile.TemporaryDirectory() as home:
        rec = emoadapt.Recognizer(home=home, adapt_every=0)
        scans = {cremad_label(c): rec.analyze(c, identity=True) for c in sorted((data_dir() / "clips" / "cremad").glob("*.flv"))}
        feats = {k: r.features for k, r in scans.items()}
        rng = np.random.default_rng(0)
        labels = list(feats)
        rec.store.add_user("actor1001")
        t = time.perf_counter()
        for i in range(args.n):
            lab = labels[i % len(labels)]
            f = feats[lab]
            n = int(rng.integers(8, 31))
            s = int(rng.integers(0, len(f) - n))
            w = f[s : s + n]
            rec.store.add_correction("actor1001", lab, w, w.mean(0), rec.model_version, embedding=scans[lab].embedding, embedding_model=rec.identity)
        t_store = (time.perf_counter() - t) / args.n
        times, cpu, rep = [], [], None
        for _ in range(args.repeat):
            t, c = time.perf_counter(), time.process_time()
            rep = rec.adapt("actor1001")
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        rec.close()
    head = type(rec.personal_base).__name__
    print(
        "| corrections | personal head | adapt median wall (s) | min | max | median CPU (s) | held-out acc universal -> chosen | guard choice"
        " | identity expert on | store write per correction (ms) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.n} | {head} | {statistics.median(times):.3f} | {min(times):.3f} | {max(times):.3f} | {statistics.median(cpu):.3f} | "
        f"{rep.held_out_accuracy_before:.2f} -> {rep.held_out_accuracy_after:.2f} | {rep.choice} | {rep.identity_expert} | {t_store * 1000:.1f} |"
    )
    print(f"adapt_seconds_100={statistics.median(times):.3f}")


if __name__ == "__main__":
    main()
