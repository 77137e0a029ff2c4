#!/usr/bin/env python
"""Personalization one correction at a time: the journeys of real users, through the public API.

A user of the app confirms or corrects one clip at a time. Per person, corrections arrive in an
*order*; after k = 1, 2, 3, 5, 8, 13 corrections ``Recognizer.adapt()`` runs and the person's
other items (those the journey never corrects, the same set for every k) are predicted. Every
number is compared with the universal model on the same items.

Orders (``--seeds`` journeys of each per person):

* ``random``: the person's items in random order;
* ``skewed``: drawn with the frequencies a validation-mode user confirms them (neutral and
  happy most, :data:`SKEW`);
* ``one-class``: the first five from one expression (chosen at random among those with five
  items), then random; CK+ and CREMA-D have too few items per expression for it;
* ``noisy``: random, with 10 % of the labels replaced by a wrong one (of the universal classes).

Data (``../shared/data``): the Taiwanese photos (19 people, about 44 photos each, tested on the
photos not in the journey's first 13), CK+ (subjects with 5+ sequences of the universal
classes, each sequence's 3 frames one clip; journeys as long as the subject allows, tested on
the sequences not in the journey), and the six CREMA-D clips of actor 1001, where every clip is
corrected first once (``single``: after one true correction, the other five clips against the
universal model) and the orders above run on the clips not yet corrected.

Everything goes through the public API: each photo/clip is analysed once
(``Recognizer.analyze(..., identity=True)``), ``correct(result, label, user=, force=True)``
(force: own faces the identity check would refuse must not end a journey: that is identity's
benchmark), ``adapt(user)`` and ``reclassify(result, user=)`` (the same head ``predict()``
uses, on the same features, without decoding the photo again).

    python benchmarks/journeys.py [--datasets taiwanese ckplus cremad] [--seeds 3] [--people N]

Writes ``benchmarks/out/journeys/``: ``results.json``, ``tables.md`` and ``accuracy_vs_k_<order>.png``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out" / "journeys"
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
from _common import ckplus_rgb, cremad_label, data_dir, require, taiwanese_label, write_json

require("matplotlib")  # the figures: the eval extra, said in one line

import emoadapt

log = logging.getLogger("journeys")

KS = (1, 2, 3, 5, 8, 13)
ORDERS = ("random", "skewed", "one-class", "noisy")
#: how often a validation-mode user confirms each expression (skewed order)
SKEW = {"neutral": 0.35, "happy": 0.3, "sad": 0.1, "surprise": 0.1, "angry": 0.05, "fear": 0.05, "disgust": 0.05}
NOISE = 0.1
CK_MAP = {"anger": "angry", "disgust": "disgust", "fear": "fear", "happy": "happy", "sadness": "sad", "surprise": "surprise"}


@contextmanager
def recognizer() -> Iterator[Any]:
    with tempfile.TemporaryDirectory() as home:
        rec = emoadapt.Recognizer(home=home, adapt_every=0)
        try:
            yield rec
        finally:
            rec.close()


def order_of(kind: str, labels: list[str], rng: np.random.Generator, classes: list[str]) -> tuple[list[int], list[str]] | None:
    """Indices of a person's items in the order ``kind`` and the labels the user gives them."""
    n = len(labels)
    idx = list(rng.permutation(n))
    given = list(labels)
    if kind == "skewed":
        w = np.array([SKEW.get(labels[i], 0.05) for i in idx])
        idx = [idx[j] for j in rng.choice(n, size=n, replace=False, p=w / w.sum())]
    elif kind == "one-class":
        five = sorted({lab for lab in labels if labels.count(lab) >= 5})
        if not five:
            return None
        c = five[int(rng.integers(len(five)))]
        first = [i for i in idx if labels[i] == c][:5]
        idx = first + [i for i in idx if i not in first]
    elif kind == "noisy":
        for i in idx:
            if rng.random() < NOISE:
                given[i] = str(rng.choice([c for c in classes if c != labels[i]]))
    return idx, given


def journey(
    rec: Any, user: str, items: list[Any], labels: list[str], order: list[int], given: list[str], ks: tuple[int, ...], test: list[int]
) -> dict[str, Any]:
    """Correct ``order`` one at a time; after each k in ``ks`` adapt and score ``test``."""
    truth = np.array([labels[i] for i in test])
    uni = np.array([rec.reclassify(items[i]).label for i in test])
    out: dict[str, Any] = {"universal": int((uni == truth).sum()), "n_test": len(test), "k": {}, "choices": {}}
    done = 0
    for k in ks:
        for i in order[done:k]:
            rec.correct(items[i], given[i], user=user, force=True)
        done = k
        rep = rec.adapt(user)
        got = np.array([rec.reclassify(items[i], user=user).label for i in test])
        out["k"][k] = int((got == truth).sum())
        out["choices"][k] = rep.choice
    return out


def run_people(name: str, people: dict[str, tuple[list[Any], list[str]]], orders: tuple[str, ...], seeds: int, pool: int) -> dict[str, Any]:
    """Journeys of every person in ``people`` (items, labels) for each order and seed."""
    res: dict[str, Any] = {}
    classes = list(SKEW)
    for kind in orders:
        rows = []
        for p, (items, labels) in people.items():
            for seed in range(seeds):
                rng = np.random.default_rng([seed, int.from_bytes(p.encode(), "little") % 2**31, ORDERS.index(kind)])
                o = order_of(kind, labels, rng, classes)
                if o is None:
                    continue
                idx, given = o
                m = min(pool, len(idx) - 3)
                ks = tuple(k for k in KS if k <= m)
                with recognizer() as rec:
                    r = journey(rec, f"{name}-{p}", items, labels, idx, given, ks, idx[m:])
                r.update(person=p, seed=seed)
                rows.append(r)
        res[kind] = summarise(rows)
        log.info("%s %s: %s", name, kind, {k: (v["personal"], v["universal"], v["worse"]) for k, v in res[kind]["by_k"].items()})
    return res


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    by_k: dict[str, Any] = {}
    for k in KS:
        have = [r for r in rows if k in r["k"]]
        if not have:
            continue
        by_k[str(k)] = {
            "personal": float(np.mean([r["k"][k] / r["n_test"] for r in have])),
            "universal": float(np.mean([r["universal"] / r["n_test"] for r in have])),
            "worse": int(sum(r["universal"] - r["k"][k] > 1 for r in have)),
            "any_worse": int(sum(r["universal"] - r["k"][k] > 0 for r in have)),
            "journeys": len(have),
            "choices": dict(sorted({c: sum(r["choices"][k] == c for r in have) for c in {r["choices"][k] for r in have}}.items())),
        }
    return {
        "by_k": by_k,
        "journeys": [{**r, "k": {str(a): b for a, b in r["k"].items()}, "choices": {str(a): b for a, b in r["choices"].items()}} for r in rows],
    }


# -- data -------------------------------------------------------------------------------------
def taiwanese(rec: Any, limit: int | None) -> dict[str, tuple[list[Any], list[str]]]:
    files = sorted((DATA / "faces" / "taiwanese").glob("*.jpg"))
    people: dict[str, tuple[list[Any], list[str]]] = {}
    for f in files:
        p = f.name[:2]
        if limit is not None and p not in people and len(people) >= limit:
            continue
        r = rec.analyze(str(f), identity=True)
        if r.features is None or not len(r.features) or r.embedding is None:
            log.warning("no face in %s: left out", f.name)
            continue
        items, labels = people.setdefault(p, ([], []))
        items.append(r)
        labels.append(taiwanese_label(f.name))
    return people


def ckplus(rec: Any, limit: int | None) -> dict[str, tuple[list[Any], list[str]]]:
    with np.load(DATA / "ckplus48.npz", allow_pickle=False) as z:
        x, y, subject, seq = z["x"], z["y"], z["subject"], z["sequence"]
        classes = [str(c) for c in z["classes"]]
    people: dict[str, tuple[list[Any], list[str]]] = {}
    keys = sorted({(str(s), str(q)) for s, q in zip(subject, seq)})
    by_subject: dict[str, list[tuple[str, str]]] = {}
    for s, q in keys:
        by_subject.setdefault(s, []).append((s, q))
    for s, ks in by_subject.items():
        items, labels = [], []
        for key in ks:
            rows = np.flatnonzero((subject.astype(str) == key[0]) & (seq.astype(str) == key[1]))
            lab = CK_MAP.get(classes[int(y[rows[0]])])
            if lab is None:  # contempt: not a universal class
                continue
            r = rec.analyze(np.stack([ckplus_rgb(x[i]) for i in rows]), identity=True)
            if r.features is None or not len(r.features) or r.embedding is None:
                continue
            items.append(r)
            labels.append(lab)
        if len(items) >= 5:
            people[s] = (items, labels)
        if limit is not None and len(people) >= limit:
            break
    return people


def cremad(rec: Any) -> tuple[list[Any], list[str]]:
    clips = sorted((DATA / "clips" / "cremad").glob("*.flv"))
    return [rec.analyze(str(c), identity=True) for c in clips], [cremad_label(c) for c in clips]


def cremad_single(items: list[Any], labels: list[str]) -> dict[str, Any]:
    """Each clip corrected first (its true label), the other five scored."""
    out = {}
    for i, lab in enumerate(labels):
        test = [j for j in range(len(labels)) if j != i]
        with recognizer() as rec:
            r = journey(rec, "cremad", items, labels, [i], labels, (1,), test)
        out[lab] = {"universal": r["universal"], "personal": r["k"][1], "n_test": r["n_test"], "choice": r["choices"][1]}
    log.info("CREMA-D single corrections: %s", {k: (v["universal"], v["personal"]) for k, v in out.items()})
    return out


# -- output -----------------------------------------------------------------------------------
def tables(res: dict[str, Any]) -> str:
    lines = []
    for ds, by_order in res["datasets"].items():
        lines.append(f"### {ds}\n")
        for kind, r in by_order.items():
            if kind == "single":
                lines.append("After one true correction, the other five clips (right answers):\n")
                lines.append("| clip corrected | universal | personal | chosen |\n|---|---|---|---|")
                lines += [f"| {lab} | {v['universal']}/{v['n_test']} | {v['personal']}/{v['n_test']} | {v['choice']} |" for lab, v in r.items()]
                lines.append("")
                continue
            if not r["by_k"]:
                continue
            lines.append(f"Order `{kind}` ({r['by_k'][next(iter(r['by_k']))]['journeys']} journeys):\n")
            lines.append("| k | universal | personal | gain | journeys worse by >1 item | worse at all | chosen |\n|---|---|---|---|---|---|---|")
            for k, v in r["by_k"].items():
                ch = ", ".join(f"{c} {n}" for c, n in v["choices"].items())
                lines.append(
                    f"| {k} | {v['universal']:.3f} | {v['personal']:.3f} | {v['personal'] - v['universal']:+.3f} | {v['worse']} of {v['journeys']} | {v['any_worse']} | {ch} |"
                )
            lines.append("")
    return "\n".join(lines)


def plot(res: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for kind in ORDERS:
        if not any(by_order.get(kind, {}).get("by_k") for by_order in res["datasets"].values()):
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
        for i, (ds, by_order) in enumerate(res["datasets"].items()):
            r = by_order.get(kind)
            if not r or not r["by_k"]:
                continue
            ks = [int(k) for k in r["by_k"]]
            gain = [100 * (v["personal"] - v["universal"]) for v in r["by_k"].values()]
            n = [v["journeys"] for v in r["by_k"].values()]
            ax.plot(ks, gain, "o-", color=f"C{i}", label=f"{ds} ({n[0]} journeys{'' if len(set(n)) == 1 else f', {n[-1]} at k={ks[-1]}'})")
        ax.axhline(0.0, color="0.4", lw=1, ls="--", label="universal model")
        ax.set_xlabel("corrections so far (k)", fontsize=11)
        ax.set_ylabel("accuracy gain over universal (points)", fontsize=11)
        ax.set_title(f"Personalization one correction at a time: order '{kind}'", fontsize=11)
        ax.set_xticks(list(KS))
        ax.tick_params(labelsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9, loc="upper left")
        fig.tight_layout()
        p = out / f"accuracy_vs_k_{kind}.png"
        fig.savefig(p)
        plt.close(fig)
        paths.append(p)
    return paths


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["taiwanese", "ckplus", "cremad"], choices=["taiwanese", "ckplus", "cremad"])
    ap.add_argument("--orders", nargs="+", default=list(ORDERS), choices=list(ORDERS))
    ap.add_argument("--seeds", type=int, default=3, help="journeys per person and order (default 3)")
    ap.add_argument("--people", type=int, default=None, help="only the first N people / subjects (quick runs)")
    ap.add_argument("-o", "--out", type=Path, default=OUT, help=f"output folder (default {OUT.relative_to(ROOT)})")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    t0 = time.time()
    res: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "datasets": {}}
    orders = tuple(args.orders)
    with recognizer() as rec:
        data = {
            "taiwanese": (lambda: taiwanese(rec, args.people)) if "taiwanese" in args.datasets else None,
            "ckplus": (lambda: ckplus(rec, args.people)) if "ckplus" in args.datasets else None,
        }
        loaded = {k: f() for k, f in data.items() if f is not None}
        crema = cremad(rec) if "cremad" in args.datasets else None
    for name, people in loaded.items():
        log.info("%s: %d people, %d items", name, len(people), sum(len(v[1]) for v in people.values()))
        res["datasets"][name] = run_people(name, people, orders, args.seeds, pool=13)
    if crema is not None:
        cr: dict[str, Any] = {"single": cremad_single(*crema)}
        cr.update(run_people("cremad", {"1001": crema}, tuple(o for o in orders if o != "one-class"), max(args.seeds, 6), pool=5))
        res["datasets"]["cremad"] = cr
    res["seconds"] = time.time() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "results.json", res)
    (args.out / "tables.md").write_text(tables(res) + "\n")
    plot(res, args.out)
    print(tables(res))
    print(f"({res['seconds']:.0f} s) written to {args.out}")
    return res


DATA = data_dir()

if __name__ == "__main__":
    main()
