#!/usr/bin/env python
"""Personalization on real faces: does a user's personal head beat the universal model?

Two experiments, both through the library's own API (``Recognizer.correct`` / ``adapt`` /
``predict`` or the same fine-tuning on backbone features of real face images):

* **CK+** (``ckplus48.npz``): every subject with 4+ emotions. A sequence (3 near-identical
  apex frames) is one clip; CK+ has one sequence per subject and emotion. Split by sequence
  inside each subject, leave-one-out: the personal head is fine-tuned on the subject's other
  sequences (labels as the user would correct them, ``contempt`` included although the
  universal model does not know it) and both heads are scored on the held-out sequence.
* **CREMA-D** (the six clips of actor 1001): each clip is cut in two halves by time; the
  user corrects the first halves (``Recognizer.correct``), the head is adapted
  (``Recognizer.adapt``) and the second halves are predicted with ``Recognizer.predict``
  (the actor is recognised by face and routed to their head) and compared with a stranger's
  universal prediction.

    python -m scripts.eval_personalization [--json out.json]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from scripts._common import cremad_label, data_dir, write_json

DATA = data_dir()
CK_TO_OURS = {"anger": "angry", "disgust": "disgust", "fear": "fear", "happy": "happy", "sadness": "sad", "surprise": "surprise", "contempt": "contempt"}

log = logging.getLogger("eval_personalization")


def ck_sequences(rec) -> tuple:
    """CK+ through ``rec``'s backbone: ``(labels per image, probabilities, features,
    {(subject, sequence): image indices}, {subject: its sequences}, subjects with 4+
    emotions)``."""
    d = np.load(DATA / "ckplus48.npz", allow_pickle=False)
    classes = [str(c) for c in d["classes"]]
    y = np.array([CK_TO_OURS[classes[i]] for i in d["y"]])
    subj, seq = d["subject"].astype(str), d["sequence"].astype(str)
    probs, feats = rec.backbone.infer(d["x"])
    keys = sorted({(s, q) for s, q in zip(subj, seq)})
    clip_idx = {k: np.flatnonzero((subj == k[0]) & (seq == k[1])) for k in keys}
    per_subject: dict[str, list[tuple[str, str]]] = {}
    for k in keys:
        per_subject.setdefault(k[0], []).append(k)
    subjects = [s for s, ks in per_subject.items() if len({y[clip_idx[k][0]] for k in ks}) >= 4]
    return y, probs, feats, clip_idx, per_subject, subjects


def ckplus(rec) -> dict:
    """Leave-one-sequence-out inside each subject with 4+ emotions (CK+ has exactly one
    sequence per subject and emotion, so the held-out emotion is one the user never
    corrected: this measures whether personal fine-tuning helps, or at least does not hurt,
    the emotions a user has not corrected yet)."""
    from emoadapt.adaptation import fine_tune
    from emoadapt.heads import ClipContext

    y, probs, feats, clip_idx, per_subject, subjects = ck_sequences(rec)
    rows, hits_u, hits_p = {}, [], []
    variants = {"personal": {"replay": rec.replay}, "personal_no_replay": {"replay": None}}
    hits_v: dict[str, list[bool]] = {v: [] for v in variants}
    for s in subjects:
        ks = per_subject[s]
        labels = [str(y[clip_idx[k][0]]) for k in ks]
        su, sp = [], []
        for t, k in enumerate(ks):
            if labels[t] == "contempt":  # unknown to the universal model: adaptation data only
                continue
            a = [i for i in range(len(ks)) if i != t]
            # the universal head reads what it needs (features, or frame probabilities) from the clip's context
            ctx = ClipContext(probabilities=[probs[clip_idx[k]]])
            u = str(np.asarray(rec.universal.predict([feats[clip_idx[k]]], ctx))[0]) == labels[t]
            su.append(u)
            for v, kw in variants.items():
                head = fine_tune(rec.personal_base, [feats[clip_idx[ks[i]]] for i in a], [labels[i] for i in a], **kw)
                ok = str(np.asarray(head.predict([feats[clip_idx[k]]]))[0]) == labels[t]
                hits_v[v].append(ok)
                if v == "personal":
                    sp.append(ok)
        rows[s] = {"universal": float(np.mean(su)), "personal": float(np.mean(sp)), "sequences": len(ks)}
        hits_u += su
        hits_p += sp
    return {
        "subjects": len(rows),
        "test_sequences": len(hits_u),
        "universal_mean": float(np.mean(hits_u)),
        "personal_mean": float(np.mean(hits_p)),
        **{f"{v}_mean": float(np.mean(h)) for v, h in hits_v.items()},
        "improved_subjects": int(sum(r["personal"] > r["universal"] for r in rows.values())),
        "worse_subjects": int(sum(r["personal"] < r["universal"] for r in rows.values())),
        "per_subject": rows,
    }


def cremad(rec_factory) -> dict:
    from emoadapt.video import iter_frames

    clips = sorted((DATA / "clips" / "cremad").glob("*.flv"))
    halves = {}
    for c in clips:
        frames = np.stack([f.image for f in iter_frames(c)])
        h = len(frames) // 2
        halves[cremad_label(c)] = (frames[:h], frames[h:])
    with tempfile.TemporaryDirectory() as home:
        rec = rec_factory(home)
        stranger = {lab: rec.predict(second).label for lab, (_, second) in halves.items()}
        t0 = time.perf_counter()
        for lab, (first, _) in halves.items():
            rec.correct(first, lab, user="actor1001")
        report = rec.adapt("actor1001")
        t_adapt = time.perf_counter() - t0
        personal = {}
        routed = {}
        for lab, (_, second) in halves.items():
            r = rec.predict(second)
            personal[lab], routed[lab] = r.label, r.user
    truth = list(halves)
    return {
        "universal_accuracy": float(np.mean([stranger[k] == k for k in truth])),
        "personal_accuracy": float(np.mean([personal[k] == k for k in truth])),
        "universal_labels": stranger,
        "personal_labels": personal,
        "routed_to": routed,
        "adapt_report": report.to_dict(),
        "correct_and_adapt_seconds": t_adapt,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="write every number to this JSON file (and its run record beside it)")
    ap.add_argument("--backbone")
    ap.add_argument("--personal-head", help="manifest name of the head personal heads start from (default: manifest default)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import emoadapt

    def factory(home):
        return emoadapt.Recognizer(home=home, backbone=args.backbone, personal_head=args.personal_head, adapt_every=0)

    with tempfile.TemporaryDirectory() as h:
        rec = factory(h)
        ck = ckplus(rec)
    print(
        f"CK+ ({ck['subjects']} subjects with 4+ emotions, leave-one-sequence-out, {ck['test_sequences']} test sequences; "
        f"backbone {rec.backbone.name}, universal {type(rec.universal).__name__}, personal from {type(rec.personal_base).__name__})"
    )
    print(
        f"  universal accuracy {ck['universal_mean']:.3f}   personal accuracy {ck['personal_mean']:.3f} "
        f"(without replay {ck['personal_no_replay_mean']:.3f})   subjects improved {ck['improved_subjects']}, worse {ck['worse_subjects']}"
    )
    cr = cremad(factory)
    print("CREMA-D actor 1001 (corrected on first halves, predicted on second halves through Recognizer.predict)")
    print(
        f"  universal accuracy {cr['universal_accuracy']:.3f}   personal accuracy {cr['personal_accuracy']:.3f}   routed to {sorted(set(cr['routed_to'].values()), key=str)}"
    )
    for k in cr["universal_labels"]:
        print(f"    {k:8s} universal {cr['universal_labels'][k]:8s} personal {cr['personal_labels'][k]}")
    out = {"ckplus": ck, "cremad": cr}
    if args.json:
        write_json(args.json, out, indent=2)
    print(
        f"ckplus_personal_gain={ck['personal_mean'] - ck['universal_mean']:.3f} cremad_personal_gain={cr['personal_accuracy'] - cr['universal_accuracy']:.3f}"
    )


if __name__ == "__main__":
    main()
