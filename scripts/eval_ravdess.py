#!/usr/bin/env python
"""RAVDESS actor-split personalisation protocol (Churaev & Savchenko 2023, Table 3).

Needs the ``eval`` extra (scikit-learn, matplotlib): ``pip install -e ".[eval]"`` from the repository root.

Two input modes share one protocol (per-clip descriptors are just one-frame clips):

    # real OpenFace action units of the 1440 RAVDESS speech clips (per-clip descriptors)
    python -m scripts.eval_ravdess --descriptors ../shared/data/ravdess_au35.csv \\
        --out results/ravdess_au --json results/ravdess_au.json

    # a RAVDESS video tree Actor_01/01-01-03-01-01-01-01.mp4 ...: per-frame features of each
    # clip's main face track, from an `emoadapt extract` Parquet dataset at --cache (made on
    # the fly, resumable; or beforehand, e.g. on a Dask cluster)
    python -m scripts.eval_ravdess --root /data/RAVDESS --cache cache/ravdess \\
        --heads max,single_attention,self_attention --out results/ravdess_video

Protocol
--------
* users = actors ``--users`` (default 1-5); the *universal* model is trained on all clips of
  the other actors (6-24);
* each user's clips are split 80/20, stratified by emotion, with a seeded shuffle
  (``sklearn.model_selection.train_test_split``, ``random_state = 1000 * seed + actor``);
  the *personal* model is a copy of the universal one fine-tuned (``partial_fit``) on the
  80 %; both are scored on the same 20 %;
* the curve: accuracy vs ``M`` adaptation clips per emotion (``M = 0 .. all``; classes
  with fewer than ``M`` adaptation clips use all of theirs), averaged over ``--seeds``
  splits, for personal models and for ONE *shared* model adapted on the union of all users'
  selected clips (the paper's dashed lines);
* the random (non-actor) split for comparison: all actors pooled, stratified 80/20;
* ``sklearn_lr``: the reference baseline, a plain ``LogisticRegression`` on standardised
  (pooled) features; its personal model is ``warm_start`` LR refitted on the user's
  adaptation clips (the LR objective is convex, so this is the user-only LR).

The statistical heads' hyper-parameters are tuned honestly, on the universal actors only:
``l2`` by leave-actors-out cross-validation (GroupKFold) of the universal accuracy inside
the universal actors, then the fine-tuning parameters (``anchor``, ``finetune_lr``,
``finetune_epochs``) by the same protocol run on pseudo-users drawn from the universal
actors (each held-out fold's actors are adapted 80/20 on a universal model trained on the
other folds). The users' clips are never looked at while tuning.

Output: a table like the paper's Table 3 on stdout; ``--json`` with every number;
``--out`` PNGs (confusion matrices, the curve) when matplotlib is installed.
Deterministic for given arguments.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
from emoadapt.heads import SelfAttentionHead, SingleAttentionHead, StatPoolingHead, pool  # noqa: E402
from scripts._common import RAVDESS_EMOTIONS as EMOTIONS  # noqa: E402
from scripts._common import add_common_args, require, write_json  # noqa: E402

require("sklearn")  # the eval extra, said in one line (matplotlib is optional: without it no PNGs)

log = logging.getLogger("eval_ravdess")

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".flv")

STAT_POOLINGS: dict[str, tuple[str, ...]] = {
    "max": ("max",),
    "mean": ("mean",),
    "mean_std": ("mean", "std"),
    "max_mean_std": ("max", "mean", "std"),
}
ATTENTION_HEADS = ("single_attention", "self_attention")
BASELINE = "sklearn_lr"

# hyper-parameter grids for the honest tuning (universal actors only)
L2_GRID = (1e-4, 1e-3, 1e-2, 3e-2)
FINETUNE_GRID = tuple({"anchor": a, "finetune_lr": lr, "finetune_epochs": ep} for a in (0.0, 0.01, 0.1) for lr in (0.01, 0.05) for ep in (30, 100))


# ---------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------
@dataclass
class Dataset:
    """Clips (list of (T, D) arrays), emotion labels (names), actors (ints), clip names."""

    clips: list[np.ndarray]
    labels: np.ndarray
    actors: np.ndarray
    names: list[str]
    descriptors: bool  # True: one-frame clips (per-clip descriptors)
    source: str = ""

    @property
    def classes(self) -> list[str]:
        order = {v: k for k, v in EMOTIONS.items()}
        return sorted(set(self.labels.tolist()), key=lambda s: order.get(s, 99))

    def subset(self, idx: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        return [self.clips[i] for i in idx], self.labels[idx]


def parse_ravdess_name(stem: str) -> dict[str, int]:
    """Fields of a RAVDESS file stem ``MM-VC-EE-II-SS-RR-AA``."""
    parts = stem.split("-")
    if len(parts) != 7 or not all(p.isdigit() for p in parts):
        raise ValueError(f"not a RAVDESS file name: {stem!r}")
    keys = ("modality", "channel", "emotion", "intensity", "statement", "repetition", "actor")
    return dict(zip(keys, (int(p) for p in parts)))


def load_descriptors(path: Path) -> Dataset:
    """Per-clip descriptors CSV: ``clip, actor, emotion_code, feature...``."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0][:3] != ["clip", "actor", "emotion_code"]:
        raise SystemExit(f"{path}: expected columns clip, actor, emotion_code, features...")
    body = [r for r in rows[1:] if r]
    x = np.array([[float(v) for v in r[3:]] for r in body], dtype=np.float64)
    if not np.isfinite(x).all():
        raise SystemExit(f"{path}: non-finite feature values")
    actors = np.array([int(r[1]) for r in body])
    labels = np.array([EMOTIONS[int(r[2])] for r in body])
    log.info("%s: %d clips, %d actors, %d features", path, len(body), len(set(actors.tolist())), x.shape[1])
    return Dataset([row[None, :] for row in x], labels, actors, [r[0] for r in body], True, str(path))


def find_videos(root: Path, channel: int = 1) -> list[Path]:
    """RAVDESS videos under ``root`` (``Actor_XX/...``), one per recording.

    Full-AV (modality 01) and video-only (02) files of one recording hold the same frames,
    so only one of them is kept (video-only preferred) to avoid duplicate clips.
    """
    best: dict[tuple[int, ...], tuple[int, Path]] = {}
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() not in VIDEO_SUFFIXES:
            continue
        try:
            f = parse_ravdess_name(p.stem)
        except ValueError:
            continue
        if f["channel"] != channel or f["modality"] not in (1, 2) or f["emotion"] not in EMOTIONS:
            continue
        key = (f["emotion"], f["intensity"], f["statement"], f["repetition"], f["actor"])
        rank = 0 if f["modality"] == 2 else 1
        if key not in best or rank < best[key][0]:
            best[key] = (rank, p)
    return [p for _, p in sorted(best.values(), key=lambda t: str(t[1]))]


# -- feature extraction (video mode) -------------------------------------------------------
def extract_features(
    paths: Sequence[str | os.PathLike[str]], cache_dir: str | os.PathLike[str], *, workers: int | None = None, **frame_kw: Any
) -> dict[str, np.ndarray]:
    """Per-frame features ``(T, D)`` of the main face track of every clip.

    The clips go through :func:`emoadapt.extract.extract` into the Parquet dataset
    ``cache_dir`` (one Recognizer per worker process, ``workers`` processes, default all
    cores; ``frame_kw``: ``fps`` / ``max_frames``); clips already in it are skipped, so an
    interrupted run resumes where it stopped, and ``emoadapt extract`` (also on a Dask
    cluster) can fill it beforehand. Track 0 of a clip is what
    ``Recognizer().frame_features(path, **frame_kw)`` returns. Clips recorded with an error
    are logged and left out of the result; clips without a detected face map to a ``(0, D)``
    array.
    """
    require("pyarrow", "pandas", extra="extract")  # clips go through an `emoadapt extract` dataset
    from emoadapt.extract import extract, read_clips, track_arrays

    rep = extract(list(map(str, paths)), cache_dir, workers=workers, **frame_kw)
    log.info("frame features: %d clips extracted now, %d found in %s", rep.done, rep.skipped, cache_dir)
    if rep.errors or rep.lost:
        clips = read_clips(cache_dir)
        for r in clips[clips["error_type"].notna()].itertuples():
            log.warning("%s: %s: %s", r.clip, r.error_type, r.error)
    out: dict[str, np.ndarray] = {}
    for p in paths:
        t = track_arrays(cache_dir, p)
        if t is not None:
            out[str(p)] = t["features"]
    return out


def load_videos(root: Path, cache_dir: Path, workers: int | None, frame_kw: dict[str, Any]) -> Dataset:
    paths = find_videos(root)
    if not paths:
        raise SystemExit(f"no RAVDESS speech videos found under {root}")
    feats = extract_features(paths, cache_dir, workers=workers, **frame_kw)
    clips, labels, actors, names = [], [], [], []
    for p in paths:
        f = feats.get(str(p))
        if f is None or len(f) == 0:
            continue
        fields = parse_ravdess_name(p.stem)
        clips.append(np.asarray(f, dtype=np.float32))
        labels.append(EMOTIONS[fields["emotion"]])
        actors.append(fields["actor"])
        names.append(p.stem)
    dropped = len(paths) - len(clips)
    if dropped:
        log.warning("%d of %d clips have no features (no face / decode error) and are left out", dropped, len(paths))
    return Dataset(clips, np.array(labels), np.array(actors), names, False, str(root))


# ---------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------
class SklearnLR:
    """The reference baseline: StandardScaler + LogisticRegression on max-pooled clips.

    ``partial_fit`` refits with ``warm_start`` on the new clips only (so the personal model
    is the user-only LR, since the objective is convex); the scaler stays that of the
    universal data.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    @staticmethod
    def _x(clips: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack([pool(c, "max") for c in clips])

    def fit(self, clips: Sequence[np.ndarray], y: np.ndarray) -> SklearnLR:
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        x = self._x(clips)
        self.scaler_ = StandardScaler().fit(x)
        self.lr_ = LogisticRegression(max_iter=5000, warm_start=True, random_state=self.seed).fit(self.scaler_.transform(x), y)
        self.classes_ = self.lr_.classes_
        return self

    def partial_fit(self, clips: Sequence[np.ndarray], y: np.ndarray) -> SklearnLR:
        if len(set(np.asarray(y).tolist())) < 2:  # LR needs two classes; keep the universal model
            return self
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.lr_.fit(self.scaler_.transform(self._x(clips)), y)
        self.classes_ = self.lr_.classes_
        return self

    def predict(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        return self.lr_.predict(self.scaler_.transform(self._x(clips)))

    def copy(self) -> SklearnLR:
        import copy

        return copy.deepcopy(self)


def make_head(name: str, params: dict[str, Any] | None = None, seed: int = 0) -> Any:
    """A fresh (unfitted) model for a head name."""
    params = dict(params or {})
    if name == BASELINE:
        return SklearnLR(seed=seed)
    if name in STAT_POOLINGS:
        return StatPoolingHead(STAT_POOLINGS[name], seed=seed, **params)
    if name == "single_attention":
        return SingleAttentionHead(seed=seed, **params)
    if name == "self_attention":
        return SelfAttentionHead(seed=seed, **params)
    raise SystemExit(f"unknown head {name!r}; choose from {', '.join([*STAT_POOLINGS, *ATTENTION_HEADS, BASELINE])}")


def accuracy(model: Any, clips: Sequence[np.ndarray], y: np.ndarray) -> float:
    return float(np.mean(model.predict(clips) == y))


def stratified_split(idx: np.ndarray, y: np.ndarray, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of ``idx`` (labels ``y`` aligned with ``idx``)."""
    from sklearn.model_selection import train_test_split

    tr, te = train_test_split(idx, test_size=test_size, stratify=y, random_state=seed, shuffle=True)
    return np.sort(tr), np.sort(te)


def first_m_per_class(idx: np.ndarray, y: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """``m`` clips per class (all of a class when it has fewer), chosen by ``rng``."""
    out = []
    for c in sorted(set(y.tolist())):
        cls = idx[y == c]
        out.extend(rng.permutation(cls)[:m].tolist())
    return np.array(sorted(out), dtype=np.int64)


# ---------------------------------------------------------------------------------------
# tuning (universal actors only)
# ---------------------------------------------------------------------------------------
def tune_head(name: str, data: Dataset, universal: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """Leave-actors-out CV inside the universal actors: l2, then fine-tuning parameters."""
    from sklearn.model_selection import GroupKFold

    uidx = np.flatnonzero(np.isin(data.actors, universal))
    groups = data.actors[uidx]
    folds = list(GroupKFold(n_splits=args.tune_folds).split(uidx, groups=groups))
    l2_grid = L2_GRID if not args.fast_tune else L2_GRID[1:3]
    ft_grid = FINETUNE_GRID if not args.fast_tune else tuple(g for g in FINETUNE_GRID if g["finetune_epochs"] == 30 and g["finetune_lr"] == 0.05)
    cv_l2: dict[str, float] = {}
    for l2 in l2_grid:
        accs = []
        for tr, te in folds:
            h = make_head(name, {"l2": l2}, args.seed).fit(*data.subset(uidx[tr]))
            accs.append(accuracy(h, *data.subset(uidx[te])))
        cv_l2[repr(l2)] = float(np.mean(accs))
    best_l2 = float(max(l2_grid, key=lambda v: (cv_l2[repr(v)], -l2_grid.index(v))))
    log.info("%s: CV universal accuracy by l2 %s -> l2=%g", name, {k: round(v, 4) for k, v in cv_l2.items()}, best_l2)
    # pseudo-users: the actors of each held-out fold, adapted on 80 % of their clips
    fold_models = [make_head(name, {"l2": best_l2}, args.seed).fit(*data.subset(uidx[tr])) for tr, _ in folds]
    cv_ft: list[dict[str, Any]] = []
    for g in ft_grid:
        accs = []
        for (_tr, te), uni in zip(folds, fold_models):
            for actor in sorted(set(groups[te].tolist())):
                aidx = uidx[te][groups[te] == actor]
                atr, ate = stratified_split(aidx, data.labels[aidx], args.test_size, 1000 * args.seed + actor)
                h = uni.copy().set_params(**g)
                h.partial_fit(*data.subset(atr))
                accs.append(accuracy(h, *data.subset(ate)))
        cv_ft.append({**g, "cv_personal": float(np.mean(accs))})
    best = max(range(len(cv_ft)), key=lambda i: (round(cv_ft[i]["cv_personal"], 9), -i))
    best_ft = {k: v for k, v in cv_ft[best].items() if k != "cv_personal"}
    log.info("%s: CV pseudo-user personal accuracy best %s (%.4f)", name, best_ft, cv_ft[best]["cv_personal"])
    return {"l2": best_l2, **best_ft, "cv": {"l2": cv_l2, "finetune": cv_ft}}


# ---------------------------------------------------------------------------------------
# the protocol
# ---------------------------------------------------------------------------------------
@dataclass
class HeadResult:
    universal: dict[int, float] = field(default_factory=dict)
    personal: dict[int, float] = field(default_factory=dict)
    seeds_universal: list[float] = field(default_factory=list)
    seeds_personal: list[float] = field(default_factory=list)
    confusion_universal: np.ndarray | None = None
    confusion_personal: np.ndarray | None = None
    curve_personal: list[float] = field(default_factory=list)
    curve_shared: list[float] = field(default_factory=list)
    random_split: list[float] = field(default_factory=list)
    hyperparams: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def _confusion(y: Sequence[str], pred: Sequence[str], classes: list[str]) -> np.ndarray:
    pos = {c: i for i, c in enumerate(classes)}
    m = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for a, b in zip(y, pred):
        m[pos[a], pos[b]] += 1
    return m


def run_protocol(data: Dataset, heads: list[str], args: argparse.Namespace) -> dict[str, Any]:
    users = [int(u) for u in args.users.split(",")]
    present = sorted(set(data.actors.tolist()))
    missing = [u for u in users if u not in present]
    if missing:
        raise SystemExit(f"users {missing} have no clips")
    universal_actors = np.array([a for a in present if a not in users])
    uni_idx = np.flatnonzero(np.isin(data.actors, universal_actors))
    classes = data.classes
    seeds = [args.seed + s for s in range(args.seeds)]
    # splits per (seed, user): adaptation / test indices
    splits: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    for s in seeds:
        for u in users:
            aidx = np.flatnonzero(data.actors == u)
            splits[(s, u)] = stratified_split(aidx, data.labels[aidx], args.test_size, 1000 * s + u)
    max_m = max(int(np.max(np.unique(data.labels[splits[k][0]], return_counts=True)[1])) for k in splits)
    m_grid = list(range(0, max_m + 1))
    results: dict[str, HeadResult] = {}
    for name in heads:
        t0 = time.perf_counter()
        res = HeadResult()
        params: dict[str, Any] = {}
        if name in STAT_POOLINGS and args.tune:
            tuned = tune_head(name, data, universal_actors, args)
            params = {k: v for k, v in tuned.items() if k != "cv"}
            res.hyperparams = tuned
        elif name == BASELINE:
            res.hyperparams = {"model": "StandardScaler + LogisticRegression(C=1, lbfgs)", "personal": "warm_start refit on the user's adaptation clips"}
        else:
            res.hyperparams = dict(params)
        uni = make_head(name, params, args.seed).fit(*data.subset(uni_idx))
        log.info("%s: universal model trained on %d clips of actors %s", name, len(uni_idx), universal_actors.tolist())
        cu = np.zeros((len(classes), len(classes)), dtype=np.int64)
        cp = cu.copy()
        curve_p = np.zeros((len(seeds), len(m_grid)))
        curve_s = np.zeros((len(seeds), len(m_grid)))
        for si, s in enumerate(seeds):
            su, sp = [], []
            for u in users:
                atr, ate = splits[(s, u)]
                te_clips, te_y = data.subset(ate)
                pred_u = uni.predict(te_clips)
                personal = uni.copy()
                personal.partial_fit(*data.subset(atr))
                pred_p = personal.predict(te_clips)
                au, ap = float(np.mean(pred_u == te_y)), float(np.mean(pred_p == te_y))
                su.append(au)
                sp.append(ap)
                if si == 0:
                    res.universal[u], res.personal[u] = au, ap
                    cu += _confusion(te_y, pred_u, classes)
                    cp += _confusion(te_y, pred_p, classes)
            res.seeds_universal.append(float(np.mean(su)))
            res.seeds_personal.append(float(np.mean(sp)))
            # the curve: M adaptation clips per emotion
            for mi, m in enumerate(m_grid):
                pers, chosen = [], []
                for u in users:
                    atr, ate = splits[(s, u)]
                    te_clips, te_y = data.subset(ate)
                    if m == 0:
                        pers.append(accuracy(uni, te_clips, te_y))
                        continue
                    rng = np.random.default_rng([s, u, 7])
                    sel = first_m_per_class(atr, data.labels[atr], m, rng)
                    chosen.append(sel)
                    h = uni.copy()
                    h.partial_fit(*data.subset(sel))
                    pers.append(accuracy(h, te_clips, te_y))
                curve_p[si, mi] = np.mean(pers)
                if m == 0:
                    curve_s[si, mi] = curve_p[si, mi]
                else:
                    shared = uni.copy()
                    shared.partial_fit(*data.subset(np.concatenate(chosen)))
                    curve_s[si, mi] = np.mean([accuracy(shared, *data.subset(splits[(s, u)][1])) for u in users])
            # random (non-actor) split
            all_idx = np.arange(len(data.labels))
            rtr, rte = stratified_split(all_idx, data.labels, args.test_size, 1000 * s + 999)
            res.random_split.append(accuracy(make_head(name, params, args.seed).fit(*data.subset(rtr)), *data.subset(rte)))
        res.confusion_universal, res.confusion_personal = cu, cp
        res.curve_personal = curve_p.mean(axis=0).tolist()
        res.curve_shared = curve_s.mean(axis=0).tolist()
        res.seconds = time.perf_counter() - t0
        results[name] = res
        log.info(
            "%s: universal %.4f personal %.4f (seed %d); over %d seeds %.4f / %.4f; random split %.4f (%.1f s)",
            name, np.mean(list(res.universal.values())), np.mean(list(res.personal.values())), seeds[0], len(seeds),
            np.mean(res.seeds_universal), np.mean(res.seeds_personal), np.mean(res.random_split), res.seconds,
        )  # fmt: skip
    return to_json(data, heads, results, users, universal_actors, m_grid, seeds, classes, args)


def _r(x: float) -> float:
    return round(float(x), 6)


def to_json(
    data: Dataset,
    heads: list[str],
    results: dict[str, HeadResult],
    users: list[int],
    universal_actors: np.ndarray,
    m_grid: list[int],
    seeds: list[int],
    classes: list[str],
    args: argparse.Namespace,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "config": {
            "source": "descriptors" if data.descriptors else "video",
            "n_clips": len(data.labels),
            "n_features": int(data.clips[0].shape[1]),
            "users": users,
            "universal_actors": universal_actors.tolist(),
            "test_size": args.test_size,
            "seeds": seeds,
            "table_seed": seeds[0],
            "classes": classes,
            "heads": heads,
        },
        "heads": {},
        "curve": {"M": m_grid, "per_head": {}},
        "random_split": {},
    }
    for name in heads:
        r = results[name]

        def block(per_user: dict[int, float], over: list[float]) -> dict[str, Any]:
            return {
                "mean": _r(np.mean(list(per_user.values()))),
                "per_user": {str(u): _r(per_user[u]) for u in users},
                "mean_over_seeds": _r(np.mean(over)),
                "std_over_seeds": _r(np.std(over)),
            }

        out["heads"][name] = {
            "universal": block(r.universal, r.seeds_universal),
            "personal": block(r.personal, r.seeds_personal),
            "confusion": {"labels": classes, "universal": r.confusion_universal.tolist(), "personal": r.confusion_personal.tolist()},
            "hyperparams": _jsonable(r.hyperparams),
        }
        out["curve"]["per_head"][name] = {"personal": [_r(v) for v in r.curve_personal], "shared": [_r(v) for v in r.curve_shared]}
        out["random_split"][name] = {
            "accuracy": _r(r.random_split[0]),
            "mean_over_seeds": _r(np.mean(r.random_split)),
            "std_over_seeds": _r(np.std(r.random_split)),
        }
    return out


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return _r(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


# ---------------------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------------------
def format_table(res: dict[str, Any]) -> str:
    users = res["config"]["users"]
    lines = []
    hdr = f"{'head':<18}{'model':<11}{'mean':>7}" + "".join(f"{'A' + str(u):>7}" for u in users) + f"{'seeds':>15}"
    lines.append(
        f"RAVDESS actor split ({res['config']['source']}, {res['config']['n_clips']} clips, users {users}; per-user columns = split seed {res['config']['table_seed']}; 'seeds' = mean+-std over {len(res['config']['seeds'])} splits)"
    )
    lines.append(hdr)
    lines.append("-" * len(hdr))
    for name, h in res["heads"].items():
        for kind in ("universal", "personal"):
            b = h[kind]
            lines.append(
                f"{name:<18}{kind:<11}{100 * b['mean']:>7.1f}" + "".join(f"{100 * b['per_user'][str(u)]:>7.1f}" for u in users)
                + f"{100 * b['mean_over_seeds']:>9.1f}+-{100 * b['std_over_seeds']:<4.1f}"
            )  # fmt: skip
    lines.append("")
    lines.append("accuracy vs M adaptation clips per emotion (mean over seeds; personal / shared)")
    ms = res["curve"]["M"]
    lines.append(f"{'head':<18}{'':<9}" + "".join(f"{'M=' + str(m):>7}" for m in ms))
    for name, c in res["curve"]["per_head"].items():
        lines.append(f"{name:<18}{'personal':<9}" + "".join(f"{100 * v:>7.1f}" for v in c["personal"]))
        lines.append(f"{'':<18}{'shared':<9}" + "".join(f"{100 * v:>7.1f}" for v in c["shared"]))
    lines.append("")
    lines.append("random (non-actor) 80/20 split, all actors pooled")
    for name, r in res["random_split"].items():
        lines.append(f"{name:<18}{100 * r['accuracy']:>7.1f}   (over seeds {100 * r['mean_over_seeds']:.1f}+-{100 * r['std_over_seeds']:.1f})")
    return "\n".join(lines)


def save_plots(res: dict[str, Any], out: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning('matplotlib is not installed (pip install -e ".[eval]" from the repository root); no PNGs written')
        return []
    out.mkdir(parents=True, exist_ok=True)
    written = []
    labels = res["config"]["classes"]
    for name, h in res["heads"].items():
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
        for ax, kind in zip(axes, ("universal", "personal")):
            m = np.array(h["confusion"][kind], dtype=float)
            norm = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
            ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
            for i in range(len(labels)):
                for j in range(len(labels)):
                    if m[i, j]:
                        ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=8, color="white" if norm[i, j] > 0.5 else "black")
            ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
            ax.set_yticks(range(len(labels)), labels, fontsize=8)
            ax.set_xlabel("predicted")
            ax.set_ylabel("true")
            ax.set_title(f"{name} {kind}: {100 * h[kind]['mean']:.1f}%")
        fig.tight_layout()
        p = out / f"confusion_{name}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        written.append(p)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ms = res["curve"]["M"]
    for i, (name, c) in enumerate(res["curve"]["per_head"].items()):
        color = f"C{i}"
        ax.plot(ms, [100 * v for v in c["personal"]], "-o", color=color, label=f"{name} personal")
        ax.plot(ms, [100 * v for v in c["shared"]], "--", color=color, label=f"{name} shared (all users)")
    ax.set_xlabel("adaptation clips per emotion (M)")
    ax.set_ylabel("accuracy on users' test clips, %")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    p = out / "curve.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    written.append(p)
    log.info("wrote %s", ", ".join(str(w) for w in written))
    return written


# ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description="RAVDESS actor-split personalisation protocol (universal vs personal heads)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Protocol")[0],
    )
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--descriptors", type=Path, help="CSV of per-clip descriptors: clip, actor, emotion_code, features...")
    src.add_argument("--root", type=Path, help="RAVDESS video tree (Actor_XX/MM-VC-EE-II-SS-RR-AA.mp4)")
    ap.add_argument("--cache", type=Path, help="`emoadapt extract` dataset of the --root clips, made or completed here (default: <out or .>/ravdess_features)")
    ap.add_argument("--workers", type=int, default=None, help="feature extraction processes (default: all cores; 1: this process)")
    ap.add_argument("--fps", type=float, default=None, help="sample frames at about this rate in --root mode (default: every frame)")
    ap.add_argument("--users", default="1,2,3,4,5", help="actors used as users (default 1,2,3,4,5)")
    ap.add_argument(
        "--heads",
        default=None,
        help=f"comma list from {', '.join([*STAT_POOLINGS, *ATTENTION_HEADS])} (default: max for descriptors, max,single_attention,self_attention for video)",
    )
    ap.add_argument("--no-baseline", action="store_true", help=f"skip the {BASELINE} reference row")
    ap.add_argument("--seeds", type=int, default=5, help="number of seeded 80/20 splits for the curve and the +-std (default 5)")
    ap.add_argument("--seed", type=int, default=0, help="first split seed and model seed")
    ap.add_argument("--test-size", type=float, default=0.2)
    ap.add_argument("--no-tune", dest="tune", action="store_false", help="use default hyper-parameters for the statistical heads")
    ap.add_argument("--tune-folds", type=int, default=4, help="leave-actors-out folds inside the universal actors")
    ap.add_argument("--fast-tune", action="store_true", help="a smaller tuning grid (for tests)")
    ap.add_argument("--out", type=Path, help="directory for PNG plots")
    ap.add_argument("--json", type=Path, help="write every number here")
    add_common_args(ap, threads="BLAS threads while training (default: 1 for descriptors, library default for video)")
    ap.add_argument("-v", "--verbose", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.descriptors:
        data = load_descriptors(args.descriptors)
        default_heads = ["max"]
    else:
        cache = args.cache or ((args.out or Path(".")) / "ravdess_features")
        data = load_videos(args.root, cache, args.workers, {} if args.fps is None else {"fps": args.fps})
        default_heads = ["max", "single_attention", "self_attention"]
    heads = args.heads.split(",") if args.heads else default_heads
    for h in heads:
        make_head(h)  # validates the name
    if data.descriptors:
        dropped = [h for h in heads if h not in STAT_POOLINGS]
        if dropped:
            log.warning("per-clip descriptors: only statistical heads apply; skipping %s", dropped)
        heads = [h for h in heads if h in STAT_POOLINGS]
    if not args.no_baseline:
        heads.append(BASELINE)
    threads = args.threads if args.threads is not None else (1 if data.descriptors else None)
    try:
        import sklearn.linear_model  # noqa: F401 - load scipy's BLAS before limiting threads
        import sklearn.model_selection  # noqa: F401
    except ImportError:
        sys.exit('eval_ravdess.py needs scikit-learn, the eval extra: pip install -e ".[eval]" from the repository root')

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - comes with scikit-learn
        threadpool_limits = None
    if threads and threadpool_limits is not None:
        # tiny matrices: BLAS thread start-up and contention cost more than they save
        with threadpool_limits(limits=threads):
            res = run_protocol(data, heads, args)
    else:
        res = run_protocol(data, heads, args)
    print(format_table(res), flush=True)
    if args.json:
        write_json(args.json, res)
        log.info("wrote %s", args.json)
    if args.out:
        save_plots(res, args.out)
    return res


if __name__ == "__main__":
    main()
