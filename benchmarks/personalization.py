#!/usr/bin/env python
"""Personalization on real people: universal vs personal, per person, strategy by strategy.

Data (``../shared/data``):

* **Taiwanese faces** (19 people): for each person and elicitation style s (1 theatrical,
  2 FACS, 3 personal event) the person corrects the first M photos (by serial) of each
  emotion acted in style s (neutral photos have no style: the first M of all but the last),
  and is tested on a held-out set that is the same for every M: all their photos of the
  two other styles and their last neutral photo (the style-s photos not corrected are not
  tested, so that the curve over M compares the same photos). M = 1, 2, 3, 5 (fewer where
  a person has fewer). Per person: the mean over the three styles. ``--protocol all``
  tests on all the photos not corrected instead (the first pass's protocol: the test set
  then shrinks with M, losing the same-style and neutral photos).
* **CK+**: every subject with 4+ emotions, leave-one-sequence-out (as
  ``scripts/eval_personalization.py``): the tested emotion is one the user never corrected.
* **CREMA-D** (actor 1001): corrects the first half of each clip, predicts the second half.
* **RAVDESS action units**: the paper's protocol of ``scripts/eval_ravdess.py`` (users =
  actors 1-5, universal max-pooling head on actors 6-24, 80/20 split, seeds 0-4).

Features are read once per photo through the public API (``Recognizer.analyze``: the same
per-frame features ``correct()`` stores; predictions are deterministic) and every strategy is
compared on them side by side. The headline figures of the default (``Recognizer.correct(...,
user=, force=True)`` / ``adapt()`` / ``predict()``, one home per person so identity routing
cannot interfere) are then produced through the API itself, and compared with the cached run
of the same strategy.

    python benchmarks/personalization.py [--people 5] [--api-styles 1] [--skip-api]

Writes ``benchmarks/out/personalization/``: ``results.json``, ``tables.md`` and
``accuracy_vs_m.png`` (the paper's Fig. 5: personal heads and one shared adapted head).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out" / "personalization"
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
from _common import TAIWANESE_LETTERS, add_common_args, ckplus_rgb, cremad_label, data_dir, require, taiwanese_label, write_json, write_run_record  # noqa: E402

require("sklearn", "matplotlib")  # the ceilings and the figure: the eval extra, said in one line

DATA = data_dir()

from emoadapt.adaptation import DEFAULT_ANCHOR, IDENTITY_EXPERT_WEIGHT, fit_personal, personalize, user_offset
from emoadapt.heads import BlendHead, CenteredHead, ClipContext, PrototypeHead

M_GRID = (1, 2, 3, 5)
STYLES = ("1", "2", "3")
TODAY_ANCHOR = 0.1  # the anchor before this benchmark (issue 15's baseline)
IDENTITY: str | None = None  # identity model (None: the Recognizer's default)
PROTOCOL = "fixed"  # Taiwanese test set: "fixed" (the same for every M) or "all" (every photo not corrected)
log = logging.getLogger("personalization")

DEFAULT = "default: guard + centred finetune + identity expert"
NO_EXPERT = "guard + centred finetune (no identity expert)"
FIRST_PASS = "guard + finetune, not centred (first pass)"
# A strategy: (universal head, replay, adaptation clips, labels, their identity embeddings)
# -> a head over feature clips (an IdentityExpertHead also reads the test clips' embeddings).
Strategy = Callable[[Any, Any, list, list, list], Any]


def _strategies() -> dict[str, Strategy]:
    def guarded(**kw: Any) -> Strategy:
        return lambda u, r, c, y, e: personalize(u, c, y, replay=r, **kw)[0]

    def with_expert(weight: float) -> Strategy:
        return lambda u, r, c, y, e: personalize(u, c, y, replay=r, embeddings=e, identity_model=IDENTITY, expert_weight=weight)[0]

    def centred(anchor: float | None) -> Strategy:
        # features centred on the user (user_offset), then the universal head (anchor None) or a fine-tune
        def fit(u: Any, r: Any, c: list, y: list, e: list) -> Any:
            off = user_offset(c, y, r)
            if off is None:
                return u if anchor is None else fit_personal(u, c, y, replay=r, anchor=anchor)
            personal = u if anchor is None else fit_personal(u, [x - off for x in c], y, replay=r, anchor=anchor)
            return CenteredHead(BlendHead(u, personal, 1.0), off)

        return fit

    def proto(kind: str) -> Strategy:
        # nearest prototypes on features, probabilities or both (probabilities: the universal head's)
        def fit(u: Any, r: Any, c: list, y: list, e: list) -> Any:
            return _OnInputs(PrototypeHead().fit(_inputs(u, c, kind), y), u, kind)

        return fit

    return {
        "finetune (today: anchor 0.1)": lambda u, r, c, y, e: fit_personal(u, c, y, replay=r, anchor=TODAY_ANCHOR),
        f"finetune (anchor {DEFAULT_ANCHOR:g})": lambda u, r, c, y, e: fit_personal(u, c, y, replay=r),
        "finetune (anchor 3)": lambda u, r, c, y, e: fit_personal(u, c, y, replay=r, anchor=3.0),
        "centred universal (no fine-tune)": centred(None),
        f"centred finetune (anchor {DEFAULT_ANCHOR:g})": centred(DEFAULT_ANCHOR),
        "centred finetune (anchor 3)": centred(3.0),
        "logistic on own features": lambda u, r, c, y, e: fit_personal(u, c, y, strategy="logistic"),
        "prototypes: features": proto("f"),
        "prototypes: probabilities": proto("p"),
        "prototypes: both": proto("fp"),
        "mix n/(n+7): universal + prototypes": lambda u, r, c, y, e: BlendHead(u, PrototypeHead().fit(c, y), len(y) / (len(y) + 7.0)),
        "mix n/(n+7): universal + finetune": lambda u, r, c, y, e: BlendHead(u, fit_personal(u, c, y, replay=r), len(y) / (len(y) + 7.0)),
        "guard + prototypes": guarded(strategy="prototype"),
        "guard + logistic": guarded(strategy="logistic"),
        FIRST_PASS: guarded(center=False),
        NO_EXPERT: guarded(),
        "guard + centred finetune + identity expert, weight 0.3": with_expert(0.3),
        "guard + centred finetune + identity expert, weight 0.7": with_expert(0.7),
        DEFAULT: with_expert(IDENTITY_EXPERT_WEIGHT),
    }


BASELINE = "finetune (today: anchor 0.1)"


def _inputs(u: Any, clips: list, kind: str) -> list:
    out = []
    for c in clips:
        parts = []
        if "f" in kind:
            parts.append(c)
        if "p" in kind:
            parts.append(np.sqrt(np.asarray(u.predict_proba([c]))[0])[None].repeat(len(c), 0))
        out.append(np.concatenate(parts, axis=1))
    return out


class _OnInputs:
    """A head fitted on derived inputs (probabilities / both), predicting from feature clips."""

    def __init__(self, head: Any, universal: Any, kind: str) -> None:
        self.head, self.u, self.kind, self.classes_ = head, universal, kind, head.classes_

    def predict(self, clips: list, context: ClipContext | None = None) -> np.ndarray:
        return self.head.predict(_inputs(self.u, clips, self.kind))


def _acc(head: Any, clips: list, labels: list, embeddings: list | None = None, probabilities: list | None = None) -> float:
    """Accuracy of ``head`` on ``clips``, given what a head may read besides the features: the
    clips' identity ``embeddings`` (an identity expert's) and frame ``probabilities``."""
    if not labels:
        return float("nan")
    pred = head.predict(clips, ClipContext(probabilities=probabilities, embeddings=embeddings))
    return float(np.mean(np.asarray(pred).astype(str) == np.asarray(labels, str)))


# -------------------------------------------------------------------------------------------
# Taiwanese faces
# -------------------------------------------------------------------------------------------
def taiwanese_files(people: int | None) -> list[Path]:
    files = sorted((DATA / "faces" / "taiwanese").glob("*.jpg"))
    ids = sorted({f.name[:2] for f in files})[:people]
    return [f for f in files if f.name[:2] in ids]


def taiwanese_split(names: list[str], person: str, style: str, m: int) -> tuple[list[int], list[int]]:
    """(adaptation, test) indices of ``person``: the first ``m`` photos of each emotion acted
    in ``style`` (neutral: the first ``m`` neutral photos but the last), and (``PROTOCOL``
    ``"fixed"``) their photos of the other styles and their last neutral photo, the same
    photos for every ``m``, or (``"all"``) all their other photos."""
    idx = [i for i, n in enumerate(names) if n[:2] == person]
    train: list[int] = []
    test: list[int] = []
    for emo in TAIWANESE_LETTERS.values():
        want = "0" if emo == "neutral" else style
        cand = sorted((i for i in idx if names[i][2] == want and taiwanese_label(names[i]) == emo), key=lambda i: names[i])
        if emo == "neutral" and PROTOCOL == "fixed":
            train += cand[:-1][:m]
            test += cand[-1:]
        else:
            train += cand[:m]
    if PROTOCOL == "fixed":
        return train, test + [i for i in idx if names[i][2] not in ("0", style)]
    return train, [i for i in idx if i not in set(train)]


def cache_features(rec: Any, files: list[Path]) -> tuple[list[str], list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Per-frame features and identity embedding (what ``correct()`` stores) and probabilities
    of each photo, through the public API."""
    names, feats, probs, embs = [], [], [], []
    for f in files:
        r = rec.analyze(str(f), identity=True)
        if r.faces == 0 or r.embedding is None:
            log.warning("no face in %s: skipped", f.name)
            continue
        names.append(f.name)
        feats.append(np.asarray(r.features, np.float32))
        probs.append(np.asarray(r.frame_probabilities, np.float32))
        embs.append(np.asarray(r.embedding, np.float32))
    return names, feats, probs, embs


def _universal_acc(rec: Any, feats: list, probs: list, labels: list) -> float:
    """Accuracy of the stranger's (universal) head, on what it reads."""
    return _acc(rec.universal, feats, labels, probabilities=probs)


def taiwanese_cached(
    rec: Any, names: list[str], feats: list[np.ndarray], probs: list[np.ndarray], embs: list[np.ndarray], strategies: dict[str, Strategy]
) -> dict[str, Any]:
    u, replay = rec.personal_base, rec.replay
    labels = [taiwanese_label(n) for n in names]
    people = sorted({n[:2] for n in names})
    out: dict[str, Any] = {}
    for m in M_GRID:
        per: dict[str, dict[str, list[float]]] = {s: {p: [] for p in people} for s in ["universal", *strategies, "shared"]}
        for style in STYLES:
            splits = {p: taiwanese_split(names, p, style, m) for p in people}
            pool_c = [feats[i] for p in people for i in splits[p][0]]
            shared = personalize(u, pool_c, [labels[i] for p in people for i in splits[p][0]], replay=replay)[0]
            for p in people:
                tr, te = splits[p]
                tc, ty, te_e = [feats[i] for i in te], [labels[i] for i in te], [embs[i] for i in te]
                per["universal"][p].append(_universal_acc(rec, tc, [probs[i] for i in te], ty))
                per["shared"][p].append(_acc(shared, tc, ty))
                for name, fit in strategies.items():
                    head = fit(u, replay, [feats[i] for i in tr], [labels[i] for i in tr], [embs[i] for i in tr])
                    per[name][p].append(_acc(head, tc, ty, te_e))
        out[str(m)] = {s: {p: float(np.mean(v)) for p, v in d.items()} for s, d in per.items()}
        log.info("taiwanese M=%d: %s", m, {s: round(float(np.mean(list(d.values()))), 3) for s, d in out[str(m)].items()})
    return out


def taiwanese_ceilings(names: list[str], feats: list[np.ndarray], embs: list[np.ndarray], replay: Any) -> dict[str, float]:
    """What one style's photos can teach about the others: a logistic regression (scikit-learn,
    features standardised with the replay set's statistics, embeddings as unit vectors times
    10) fitted on *all* of a person's photos of one style (and all their neutral photos but the
    last), tested on the fixed test set (mean over styles, then people); and, for contrast,
    the same regression leave-one-out over all the person's photos, every style."""
    from sklearn.linear_model import LogisticRegression

    mu, sd = replay[0].mean(0), replay[0].std(0) + 1e-6
    x_f = (np.stack([f.mean(0) for f in feats]) - mu) / sd
    e = np.stack(embs).astype(np.float64)
    x_fe = np.hstack([x_f, 10 * e / np.linalg.norm(e, axis=1, keepdims=True)])
    y = np.array([taiwanese_label(n) for n in names])
    people = sorted({n[:2] for n in names})
    out: dict[str, float] = {}
    for what, x in (("features", x_f), ("features + embedding", x_fe)):
        cross, loo = [], []
        for p in people:
            per = []
            for style in STYLES:
                tr, te = taiwanese_split(names, p, style, 99)
                per.append(float(np.mean(LogisticRegression(C=1.0, max_iter=3000).fit(x[tr], y[tr]).predict(x[te]) == y[te])))
            cross.append(float(np.mean(per)))
            idx = np.array([i for i, n in enumerate(names) if n[:2] == p])
            hits = [
                LogisticRegression(C=1.0, max_iter=3000).fit(x[np.delete(idx, j)], y[np.delete(idx, j)]).predict(x[idx[j : j + 1]])[0] == y[idx[j]]
                for j in range(len(idx))
            ]
            loo.append(float(np.mean(hits)))
        out[f"own {what}, all of one style -> other styles"] = float(np.mean(cross))
        out[f"own {what}, leave-one-out over every style"] = float(np.mean(loo))
    log.info("taiwanese ceilings: %s", {k: round(v, 3) for k, v in out.items()})
    return out


def taiwanese_api(make_rec: Callable[[str], Any], files: list[Path], styles: tuple[str, ...]) -> dict[str, Any]:
    """The default through ``correct(user=, force=True)`` / ``adapt()`` / ``predict()``."""
    names = [f.name for f in files]
    by_name = {f.name: f for f in files}
    people = sorted({n[:2] for n in names})
    out: dict[str, Any] = {}
    for m in M_GRID:
        per: dict[str, dict[str, list[float]]] = {"universal": {p: [] for p in people}, "personal": {p: [] for p in people}}
        choices: dict[str, int] = {}
        for style in styles:
            for p in people:
                tr, te = taiwanese_split(names, p, style, m)
                with tempfile.TemporaryDirectory() as home:
                    rec = make_rec(home)
                    truth = [taiwanese_label(names[i]) for i in te]
                    uni = [rec.predict(str(by_name[names[i]])).label for i in te]
                    for i in tr:
                        rec.correct(str(by_name[names[i]]), taiwanese_label(names[i]), user=f"p{p}", force=True)
                    rep = rec.adapt(f"p{p}")
                    choices[rep.choice] = choices.get(rep.choice, 0) + 1
                    res = [rec.predict(str(by_name[names[i]])) for i in te]
                    assert all(r.user == f"p{p}" for r in res), "identity routing interfered"
                    rec.close()
                per["universal"][p].append(float(np.mean(np.array(uni) == np.array(truth))))
                per["personal"][p].append(float(np.mean(np.array([r.label for r in res]) == np.array(truth))))
        out[str(m)] = {**{s: {p: float(np.mean(v)) for p, v in d.items()} for s, d in per.items()}, "choices": choices}
        log.info(
            "taiwanese API M=%d: universal %.3f personal %.3f choices %s",
            m,
            np.mean(list(out[str(m)]["universal"].values())),
            np.mean(list(out[str(m)]["personal"].values())),
            choices,
        )
    return out


# -------------------------------------------------------------------------------------------
# CK+, CREMA-D, RAVDESS
# -------------------------------------------------------------------------------------------
def ckplus(rec: Any, strategies: dict[str, Strategy], subjects_limit: int | None) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "scripts"))
    from eval_personalization import ck_sequences

    y, probs, feats, idx, per_subject, subjects = ck_sequences(rec)
    subjects = subjects[:subjects_limit]
    u, replay = rec.personal_base, rec.replay
    seq_emb = ckplus_embeddings(rec, idx, {k for s in subjects for k in per_subject[s]})
    per: dict[str, dict[str, float]] = {s: {} for s in ["universal", *strategies]}
    for s in subjects:
        ks = per_subject[s]
        labels = [str(y[idx[k][0]]) for k in ks]
        hits: dict[str, list[bool]] = {n: [] for n in per}
        for t, k in enumerate(ks):
            if labels[t] == "contempt":  # unknown to the universal model: adaptation data only
                continue
            a = [i for i in range(len(ks)) if i != t]
            hits["universal"].append(_universal_acc(rec, [feats[idx[k]]], [probs[idx[k]]], [labels[t]]) == 1.0)
            for name, fit in strategies.items():
                head = fit(u, replay, [feats[idx[ks[i]]] for i in a], [labels[i] for i in a], [seq_emb[ks[i]] for i in a])
                hits[name].append(_acc(head, [feats[idx[k]]], [labels[t]], [seq_emb[k]]) == 1.0)
        for n, scores in per.items():
            scores[s] = float(np.mean(hits[n]))
    log.info("CK+: %s", {n: round(float(np.mean(list(v.values()))), 3) for n, v in per.items()})
    return per


def ckplus_embeddings(rec: Any, idx: dict[Any, np.ndarray], keys: set[Any]) -> dict[Any, np.ndarray | None]:
    """The identity embedding of each CK+ sequence in ``keys`` through the public API
    (``analyze(identity=True)`` of ``_common.ckplus_rgb``, as in ``benchmarks/identity.py``):
    the mean of its images' unit embeddings, normalised."""
    with np.load(DATA / "ckplus48.npz", allow_pickle=False) as z:
        x = z["x"]
    out: dict[Any, np.ndarray | None] = {}
    for k in sorted(keys):
        es = []
        for i in idx[k]:
            e = rec.analyze(ckplus_rgb(x[i]), identity=True).embedding
            if e is not None:
                es.append(np.asarray(e, np.float64) / np.linalg.norm(e))
        out[k] = None if not es else np.mean(es, axis=0) / np.linalg.norm(np.mean(es, axis=0))
    log.info("CK+: %d of %d sequences embedded", sum(v is not None for v in out.values()), len(out))
    return out


def cremad(make_rec: Callable[[str], Any], variants: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from emoadapt.video import iter_frames

    halves = {}
    for c in sorted((DATA / "clips" / "cremad").glob("*.flv")):
        frames = np.stack([f.image for f in iter_frames(c)])
        halves[cremad_label(c)] = (frames[: len(frames) // 2], frames[len(frames) // 2 :])
    out: dict[str, Any] = {}
    for name, kw in variants.items():
        with tempfile.TemporaryDirectory() as home:
            rec = make_rec(home)
            if "universal" not in out:
                out["universal"] = float(np.mean([rec.predict(b).label == lab for lab, (_, b) in halves.items()]))
            for lab, (a, _) in halves.items():
                rec.correct(a, lab, user="actor1001", force=True)
            rep = rec.adapt("actor1001", **kw)
            out[name] = float(np.mean([rec.predict(b).label == lab for lab, (_, b) in halves.items()]))
            out[name + " choice"] = rep.choice
            rec.close()
    log.info("CREMA-D: %s", out)
    return out


def ravdess(seeds: int) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "scripts"))
    import eval_ravdess as ev

    data = ev.load_descriptors(DATA / "ravdess_au35.csv")
    users = [1, 2, 3, 4, 5]
    uni_idx = np.flatnonzero(~np.isin(data.actors, users))
    uni = ev.make_head("max", {}, 0).fit(*data.subset(uni_idx))
    res: dict[str, list[float]] = {"universal": [], "personal (today: partial_fit)": [], DEFAULT: []}
    for s in range(seeds):
        for u in users:
            aidx = np.flatnonzero(data.actors == u)
            atr, ate = ev.stratified_split(aidx, data.labels[aidx], 0.2, 1000 * s + u)
            tc, ty = data.subset(ate)
            ac, ay = data.subset(atr)
            res["universal"].append(_acc(uni, tc, list(ty)))
            res["personal (today: partial_fit)"].append(_acc(uni.copy().partial_fit(ac, ay), tc, list(ty)))
            res[DEFAULT].append(_acc(personalize(uni, list(ac), [str(v) for v in ay], anchor=None)[0], tc, list(ty)))
    out = {k: float(np.mean(v)) for k, v in res.items()}
    log.info("RAVDESS AU: %s", out)
    return out


# -------------------------------------------------------------------------------------------
# report
# -------------------------------------------------------------------------------------------
def _mean(d: dict[str, float]) -> float:
    return float(np.mean(list(d.values())))


def _hurt(d: dict[str, float], u: dict[str, float]) -> int:
    return int(sum(d[p] < u[p] - 1e-9 for p in d))


def tables(res: dict[str, Any]) -> str:
    lines = []
    tw = res["taiwanese_cached"]
    names = [n for n in tw[str(M_GRID[0])] if n != "universal"]
    lines += [
        "### Taiwanese faces, strategies (cached features; mean accuracy / people made worse)",
        "",
        "| strategy | " + " | ".join(f"M={m}" for m in M_GRID) + " |",
        "|---|" + "---|" * len(M_GRID),
    ]
    lines.append("| universal | " + " | ".join(f"{_mean(tw[str(m)]['universal']):.3f}" for m in M_GRID) + " |")
    for n in names:
        lines.append(f"| {n} | " + " | ".join(f"{_mean(tw[str(m)][n]):.3f} / {_hurt(tw[str(m)][n], tw[str(m)]['universal'])}" for m in M_GRID) + " |")
    if "taiwanese_ceilings" in res:
        lines += ["", "### Taiwanese faces, ceilings of the person's own data (logistic regression)", "", "| fitted on | accuracy |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in res["taiwanese_ceilings"].items()]
    if "taiwanese_api" in res:
        api = res["taiwanese_api"]
        lines += [
            "",
            f"### Taiwanese faces, the default through correct()/adapt()/predict() (styles {res['api_styles']})",
            "",
            "| M | universal | personal | people made worse | guard choices |",
            "|---|---|---|---|---|",
        ]
        for m in M_GRID:
            a = api[str(m)]
            lines.append(f"| {m} | {_mean(a['universal']):.3f} | {_mean(a['personal']):.3f} | {_hurt(a['personal'], a['universal'])} | {a['choices']} |")
        m1 = api[str(M_GRID[0])]
        lines += [
            "",
            "Per person, M=1 (universal -> personal):",
            "",
            ", ".join(
                f"{p} {m1['universal'][p]:.2f}->{m1['personal'][p]:.2f}{' (worse)' if m1['personal'][p] < m1['universal'][p] - 1e-9 else ''}"
                for p in sorted(m1["universal"])
            ),
        ]
    if "ckplus" in res:
        ck = res["ckplus"]
        lines += ["", "### CK+ leave-one-sequence-out (mean accuracy / subjects made worse)", "", "| strategy | accuracy |", "|---|---|"]
        lines += [f"| {n} | {_mean(v):.3f} / {_hurt(v, ck['universal'])} |" for n, v in ck.items()]
    if "cremad" in res:
        lines += ["", "### CREMA-D actor 1001 (through the API)", "", "| variant | accuracy |", "|---|---|"]
        lines += [f"| {k} | {v if isinstance(v, str) else f'{v:.3f}'} |" for k, v in res["cremad"].items()]
    if "ravdess" in res:
        lines += ["", "### RAVDESS action units (users 1-5, 80/20, mean over seeds)", "", "| model | accuracy |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in res["ravdess"].items()]
    return "\n".join(lines) + "\n"


def plot(res: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tw = res["taiwanese_cached"]
    fig, ax = plt.subplots(figsize=(6, 4))
    series = (
        ("universal", "universal (same test photos)", "-.", "gray"),
        (DEFAULT, "personal (default)", "-o", None),
        ("shared", "one shared adapted model", "--s", None),
        (BASELINE, "personal (today's fine-tune)", ":^", None),
    )
    for key, label, style, color in series:
        ax.plot(list(M_GRID), [_mean(tw[str(m)][key]) for m in M_GRID], style, label=label, color=color)
    ax.set_xticks(list(M_GRID))
    ax.set_xlabel("M corrected photos per emotion (one style; mean over 3 styles)")
    ax.set_ylabel("accuracy, other styles" if res.get("protocol") == "fixed" else "accuracy on the person's other photos")
    ax.set_title("Taiwanese faces, 19 people" if len(tw[str(M_GRID[0])]["universal"]) == 19 else "Taiwanese faces (subset)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict[str, Any]:
    global M_GRID, STYLES, PROTOCOL, IDENTITY
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--people", type=int, help="only the first N Taiwanese people (and N CK+ subjects)")
    ap.add_argument("--api-styles", default="1", help="elicitation styles for the through-the-API run (default 1; '123' for all)")
    ap.add_argument("--skip-api", action="store_true", help="no through-the-API Taiwanese run")
    ap.add_argument("--only", default="taiwanese,ckplus,cremad,ravdess", help="comma-separated parts to run")
    ap.add_argument("--ravdess-seeds", type=int, default=5)
    ap.add_argument("--styles", default="".join(STYLES), help="elicitation styles of the cached comparison (default 123)")
    ap.add_argument("--m", default=",".join(map(str, M_GRID)), help="adaptation photos per emotion to run (default 1,2,3,5)")
    add_common_args(ap, out=OUT)
    ap.add_argument(
        "--protocol",
        choices=("fixed", "all"),
        default=PROTOCOL,
        help="Taiwanese test set: the same held-out photos for every M (default) or all photos not corrected",
    )
    ap.add_argument("--identity", help="identity model whose embeddings the identity expert reads (default: the Recognizer's)")
    args = ap.parse_args(argv)
    M_GRID = tuple(int(m) for m in args.m.split(","))
    STYLES = tuple(args.styles)
    PROTOCOL = args.protocol
    import inspect

    import emoadapt

    IDENTITY = args.identity or inspect.signature(emoadapt.Recognizer).parameters["identity"].default
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def make_rec(home: str) -> Any:
        # one user per home: identity routing cannot send a face to anyone else
        return emoadapt.Recognizer(home=home, adapt_every=0, identity_threshold=-1.0, identity=IDENTITY)

    only = set(args.only.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    strategies = _strategies()
    res: dict[str, Any] = {"api_styles": args.api_styles, "styles": "".join(STYLES), "protocol": PROTOCOL, "identity": IDENTITY}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as home:
        rec = make_rec(home)
        if "taiwanese" in only:
            files = taiwanese_files(args.people)
            names, feats, probs, embs = cache_features(rec, files)
            res["taiwanese_cached"] = taiwanese_cached(rec, names, feats, probs, embs, strategies)
            if PROTOCOL == "fixed":
                res["taiwanese_ceilings"] = taiwanese_ceilings(names, feats, embs, rec.replay)
            if not args.skip_api:
                res["taiwanese_api"] = taiwanese_api(make_rec, [f for f in files if f.name in set(names)], tuple(args.api_styles))
        if "ckplus" in only:
            res["ckplus"] = ckplus(
                rec,
                {
                    k: strategies[k]
                    for k in (
                        BASELINE,
                        f"finetune (anchor {DEFAULT_ANCHOR:g})",
                        "finetune (anchor 3)",
                        "centred universal (no fine-tune)",
                        f"centred finetune (anchor {DEFAULT_ANCHOR:g})",
                        "prototypes: features",
                        FIRST_PASS,
                        NO_EXPERT,
                        DEFAULT,
                    )
                },
                args.people,
            )
    if "cremad" in only:
        res["cremad"] = cremad(
            make_rec,
            {
                "personal (today: anchor 0.1, no guard)": {"anchor": TODAY_ANCHOR, "use_guard": False, "expert_weight": 0.0},
                FIRST_PASS: {"center": False, "expert_weight": 0.0},
                NO_EXPERT: {"expert_weight": 0.0},
                DEFAULT: {},
            },
        )
    if "ravdess" in only:
        res["ravdess"] = ravdess(args.ravdess_seeds)
    res["seconds"] = time.perf_counter() - t0
    write_json(args.out / "results.json", res, record=False)
    write_run_record(args.out)
    text = tables(res) if "taiwanese_cached" in res else ""
    (args.out / "tables.md").write_text(text)
    if "taiwanese_cached" in res:
        plot(res, args.out / "accuracy_vs_m.png")
    print(text)
    if "taiwanese_api" in res:
        for m in M_GRID:
            a = res["taiwanese_api"][str(m)]
            print(f"taiwanese_M{m}_universal={_mean(a['universal']):.3f} personal={_mean(a['personal']):.3f} worse={_hurt(a['personal'], a['universal'])}")
    return res


if __name__ == "__main__":
    main()
