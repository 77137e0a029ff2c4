"""Identity matcher on real faces: genuine/impostor cosine scores, FAR/FRR, EER, threshold.

Embeddings: our MTCNN (:class:`emoadapt.detection.MTCNN`) finds the face and its 5 landmarks,
:class:`emoadapt.identity.FaceEmbedder` gives dlib's 128-D descriptor, and a sample (photo,
clip, CK+ sequence) is one :func:`emoadapt.identity.clip_embedding` -- exactly what the
Recognizer enrols and matches. Scores are cosine similarities between sample embeddings (what
:class:`emoadapt.identity.IdentityMatcher` thresholds). All data is real, read from
``../shared/data`` (or ``$EMOADAPT_DATA``):

* **photos** -- ``faces/identity``: Obama (``obama.jpg``, ``obama2.jpg``, ``obama3.jpg`` and
  the two ``obama_partial_face*.jpg``), Biden (``biden.jpg``); ``faces/ravdess_actors``: 24
  RAVDESS actors, one frame each; the faces of the six group photos ``sample1-6.jpg``
  (identities unknown, some people repeat across photos: used only as impostors against the
  named people, never paired with each other). The two partial faces are crops of
  ``obama.jpg`` itself (template match 0.999), so pairs among those three are the same
  capture and are left out of the genuine set (they would flatter it).
  Face selection: the largest face of a single-person photo; in group photos every face with
  MTCNN score >= 0.7 and side >= 100 px (the two smaller detections in these photos are
  background false positives, checked by eye).
* **clips** -- CREMA-D actor 1001, six clips (one per emotion), 480x360. Clip embedding as the
  Recognizer computes it (every 5th frame of the face track, at most 8 frames: ``recognizer``;
  ``--clip-frames all`` or ``every3`` for the alternatives; the table always shows all three
  plus single frames). Genuine: pairs of different clips of 1001; impostor: each 1001 clip
  vs every photo face above.
* **CK+** -- ``ckplus48.npz``: 48x48 gray faces upscaled to 192x192 (bicubic) with a 48 px
  replicated border so MTCNN sees the whole head; one embedding per sequence (its 3 frames).
  Genuine: same subject, different sequence; impostor: different subjects (all pairs, or a
  seeded sample of ``--ck-max-impostors``). Low resolution: reported on its own, not used to
  choose the threshold.

Identification (the matcher's real use): every identity is enrolled with ONE sample (one
photo / clip embedding). Closed set: a probe of an enrolled person (Obama, 1001) against a
gallery of everyone, enrolled with another of its samples (every enrol/probe choice and every
enrolment choice of the other multi-sample identity is run): correct, rejected (None) or
misrouted (someone else's head). Open set: a probe whose identity is not enrolled (each
person in turn, gallery = everyone else; group faces only against the named people): a false
accept is any match. CK+ the same way on its own: half the subjects (seeded) enrolled with one
sequence each, the other half as strangers.

Threshold rule: the smallest threshold on a 0.005 grid whose pooled high-resolution (photos +
clips) pair-level impostor accept rate is <= ``--target-far`` (default 0.1 %), and no lower
than the cosine equivalent of the mean of a Gaussian fitted to the impostor scores + z(target)
sigma (a guard against the small sample). With G enrolled users an impostor probe is falsely
accepted with probability about G x FAR, so 0.1 % per pair keeps a 10-user device near 1 %.

    python benchmarks/identity.py [--out benchmarks/out/identity] [--target-far 0.001]

Prints the tables and ends with ``identity_threshold=<t> far=<pair FAR> frr=<pair FRR>``
(pooled high-res). Writes ``genuine_impostor_hist.png``, ``det.png`` and ``embeddings.npz``
(a cache of the per-face descriptors, reused when the data and settings are unchanged) to
``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from emoadapt.identity import DEFAULT_THRESHOLD, IdentityMatcher, clip_embedding, normalize  # noqa: E402

log = logging.getLogger("benchmarks.identity")

DATA = Path(os.environ.get("EMOADAPT_DATA", ROOT.parent / "shared" / "data"))
OUT = ROOT / "benchmarks" / "out" / "identity"

#: photos that are crops of one and the same photograph (checked: template match 0.999)
SAME_CAPTURE = {"obama.jpg": "obama#1", "obama_partial_face.jpg": "obama#1", "obama_partial_face2.jpg": "obama#1"}
GROUP_MIN_SCORE, GROUP_MIN_SIDE = 0.7, 100.0
CK_SIZE, CK_BORDER = 192, 48
RECOGNIZER_STRIDE, RECOGNIZER_FRAMES = 5, 8  # emoadapt.recognizer: every 5th track frame, at most 8
CACHE_VERSION = 1
THRESHOLDS = (0.86, 0.88, 0.90, 0.91, 0.92, 0.93, 0.94, 0.95)


# ------------------------------------------------------------------------------ extraction


@dataclass
class Faces:
    """Per-face descriptors with their provenance (one row per detected face)."""

    desc: np.ndarray  # (N, 128) float32, raw dlib descriptors
    source: np.ndarray  # photo | actor | group | cremad | ckplus
    ident: np.ndarray  # identity label ("" never)
    sample: np.ndarray  # photo file / clip stem / CK+ sequence
    frame: np.ndarray  # frame index within the sample (0 for photos)

    def select(self, mask: np.ndarray) -> "Faces":
        return Faces(*(getattr(self, k)[mask] for k in ("desc", "source", "ident", "sample", "frame")))


def _largest(det) -> int | None:
    if not len(det):
        return None
    side = (det.boxes[:, 2] - det.boxes[:, 0]) * (det.boxes[:, 3] - det.boxes[:, 1])
    return int(np.argmax(side))


def _rgb(path: Path) -> np.ndarray:
    im = cv2.imread(str(path))
    if im is None:
        raise SystemExit(f"cannot read {path}")
    return cv2.cvtColor(im, cv2.COLOR_BGR2RGB)


def _data_key(data: Path, args: argparse.Namespace) -> str:
    files = sorted(
        [*(data / "faces" / "identity").glob("*.jpg"), *(data / "faces" / "ravdess_actors").glob("*.png"), *(data / "clips" / "cremad").glob("*.flv"), data / "ckplus48.npz"]
    )
    manifest = ROOT / "emoadapt" / "models" / "manifest.json"
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    if manifest.exists():
        h.update(manifest.read_bytes())
    h.update(json.dumps([CACHE_VERSION, GROUP_MIN_SCORE, GROUP_MIN_SIDE, CK_SIZE, CK_BORDER, args.cremad_step]).encode())
    return h.hexdigest()


def extract(data: Path, args: argparse.Namespace) -> Faces:
    from emoadapt.detection import MTCNN
    from emoadapt.identity import FaceEmbedder
    from emoadapt.video import Sampling, iter_frames

    det, emb = MTCNN(num_threads=args.threads), FaceEmbedder(num_threads=args.threads)
    rows: list[tuple[np.ndarray, str, str, str, int]] = []
    t0 = time.perf_counter()

    for p in sorted((data / "faces" / "identity").glob("*.jpg")):
        img = _rgb(p)
        d = det.detect(img)
        if p.name.startswith("sample"):
            side = np.minimum(d.boxes[:, 2] - d.boxes[:, 0], d.boxes[:, 3] - d.boxes[:, 1])
            keep = np.flatnonzero((d.scores >= GROUP_MIN_SCORE) & (side >= GROUP_MIN_SIDE))
            for k, e in zip(keep, emb.embed_faces(img, d.landmarks[keep])):
                rows.append((e, "group", f"group:{p.stem}#{k}", f"{p.name}#{k}", 0))
            log.info("%s: %d faces kept of %d detected", p.name, len(keep), len(d))
            continue
        k = _largest(d)
        if k is None:
            log.warning("no face in %s", p.name)
            continue
        who = "obama" if p.name.startswith("obama") else p.stem
        rows.append((emb.embed_faces(img, d.landmarks[k][None])[0], "photo", who, p.name, 0))
    for p in sorted((data / "faces" / "ravdess_actors").glob("Actor_*.png")):
        img = _rgb(p)
        k = _largest(d := det.detect(img))
        if k is None:
            log.warning("no face in %s", p.name)
            continue
        rows.append((emb.embed_faces(img, d.landmarks[k][None])[0], "actor", f"ravdess:{p.stem}", p.name, 0))
    log.info("photos: %d faces in %.1f s", len(rows), time.perf_counter() - t0)

    t1 = time.perf_counter()
    n0 = len(rows)
    for p in sorted((data / "clips" / "cremad").glob("*.flv")):
        actor = p.name.split("_")[0]
        for fr in iter_frames(p, sampling=Sampling(step=args.cremad_step)):
            k = _largest(d := det.detect(fr.image))
            if k is not None:
                rows.append((emb.embed_faces(fr.image, d.landmarks[k][None])[0], "cremad", f"cremad:{actor}", p.stem, fr.index))
    log.info("CREMA-D: %d frames with a face in %.1f s", len(rows) - n0, time.perf_counter() - t1)

    t2 = time.perf_counter()
    with np.load(data / "ckplus48.npz", allow_pickle=False) as z:
        x, subj, seq = z["x"], z["subject"].astype(str), z["sequence"].astype(str)
    missed = 0
    for i, (im, s, q) in enumerate(zip(x, subj, seq)):
        u = cv2.resize(im, (CK_SIZE, CK_SIZE), interpolation=cv2.INTER_CUBIC)
        u = cv2.copyMakeBorder(u, CK_BORDER, CK_BORDER, CK_BORDER, CK_BORDER, cv2.BORDER_REPLICATE)
        rgb = np.ascontiguousarray(np.repeat(u[:, :, None], 3, axis=2))
        k = _largest(d := det.detect(rgb))
        if k is None:
            missed += 1
            continue
        rows.append((emb.embed_faces(rgb, d.landmarks[k][None])[0], "ckplus", f"ck:{s}", q, i))
    log.info("CK+: %d of %d faces detected in %.1f s", len(x) - missed, len(x), time.perf_counter() - t2)

    return Faces(
        np.stack([r[0] for r in rows]).astype(np.float32),
        np.array([r[1] for r in rows]),
        np.array([r[2] for r in rows]),
        np.array([r[3] for r in rows]),
        np.array([r[4] for r in rows], dtype=np.int64),
    )


def load_or_extract(data: Path, out: Path, args: argparse.Namespace) -> Faces:
    cache = out / "embeddings.npz"
    key = _data_key(data, args)
    if cache.exists() and not args.no_cache:
        with np.load(cache, allow_pickle=False) as z:
            if str(z["key"]) == key:
                log.info("using cached descriptors %s", cache)
                return Faces(z["desc"], z["source"], z["ident"], z["sample"], z["frame"])
    f = extract(data, args)
    np.savez_compressed(cache, key=np.array(key), desc=f.desc, source=f.source, ident=f.ident, sample=f.sample, frame=f.frame)
    return f


# ------------------------------------------------------------------------------- samples


@dataclass
class Samples:
    """One embedding per sample (photo / clip / sequence), as the matcher sees them."""

    emb: np.ndarray  # (S, 128) unit vectors
    source: list[str]
    ident: list[str]
    capture: list[str]  # samples sharing a capture are never a genuine pair
    names: list[str]  # photo file / clip stem / sequence

    def select(self, keep: list[bool]) -> "Samples":
        idx = [i for i, k in enumerate(keep) if k]
        return Samples(self.emb[idx], *([getattr(self, a)[i] for i in idx] for a in ("source", "ident", "capture", "names")))

    def __len__(self) -> int:
        return len(self.ident)

    def __add__(self, o: "Samples") -> "Samples":
        return Samples(np.concatenate([self.emb, o.emb]), self.source + o.source, self.ident + o.ident, self.capture + o.capture, self.names + o.names)


def _pick(frames: np.ndarray, mode: str) -> np.ndarray:
    """Row indices of a sample's detected frames (sorted by frame) used for its embedding."""
    if mode == "recognizer":
        return frames[::RECOGNIZER_STRIDE][:RECOGNIZER_FRAMES]
    if mode == "every3":
        return frames[::3]
    if mode == "all":
        return frames
    raise ValueError(mode)


def samples(f: Faces, sources: tuple[str, ...], mode: str = "recognizer") -> Samples:
    """Sample embeddings of the given sources; ``mode="frame"``: every face row is its own sample."""
    m = np.isin(f.source, sources)
    g = f.select(m)
    if mode == "frame":
        names = [f"{a}@{i}" for a, i in zip(g.sample, g.frame)]
        return Samples(normalize(g.desc), g.source.tolist(), g.ident.tolist(), g.sample.tolist(), names)  # a clip = one capture
    emb, src, ident, cap, names = [], [], [], [], []
    for s in dict.fromkeys(g.sample.tolist()):
        rows = np.flatnonzero(g.sample == s)
        rows = rows[np.argsort(g.frame[rows], kind="stable")]
        emb.append(clip_embedding(g.desc[_pick(rows, mode)]))
        src.append(str(g.source[rows[0]]))
        ident.append(str(g.ident[rows[0]]))
        cap.append(SAME_CAPTURE.get(s, s))
        names.append(s)
    return Samples(np.stack(emb), src, ident, cap, names)


def pair_scores(a: Samples, b: Samples | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Genuine and impostor cosine scores: all pairs within ``a`` (``b`` None) or across a x b.

    Genuine: same identity, different capture. Impostor: different identities, except two
    group-photo faces (unknown identities, never compared with each other).
    """
    same_set = b is None
    b = a if b is None else b
    s = a.emb @ b.emb.T
    ia, ib = np.array(a.ident), np.array(b.ident)
    ca, cb = np.array(a.capture), np.array(b.capture)
    ga, gb = np.array(a.source) == "group", np.array(b.source) == "group"
    mask = np.triu(np.ones(s.shape, bool), 1) if same_set else np.ones(s.shape, bool)
    gen = mask & (ia[:, None] == ib[None]) & (ca[:, None] != cb[None])
    imp = mask & (ia[:, None] != ib[None]) & ~(ga[:, None] & gb[None])
    return s[gen], s[imp]


# ------------------------------------------------------------------------------- metrics


def far_frr(gen: np.ndarray, imp: np.ndarray, t: float) -> tuple[float, float]:
    far = float(np.mean(imp >= t)) if len(imp) else float("nan")
    frr = float(np.mean(gen < t)) if len(gen) else float("nan")
    return far, frr


def rates(gen: np.ndarray, imp: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FAR(t) = P(impostor >= t) and FRR(t) = P(genuine < t) for every t in ``ts``."""
    gs, is_ = np.sort(gen), np.sort(imp)
    far = 1 - np.searchsorted(is_, ts, side="left") / max(len(is_), 1)
    frr = np.searchsorted(gs, ts, side="left") / max(len(gs), 1)
    return far, frr


def eer(gen: np.ndarray, imp: np.ndarray) -> tuple[float, float]:
    """(EER, threshold): where FAR(t) and FRR(t) cross over the observed scores."""
    ts = np.unique(np.concatenate([gen, imp]))
    ts = np.concatenate([ts, [ts[-1] + 1e-6]])
    far, frr = rates(gen, imp, ts)
    i = int(np.argmin(np.abs(far - frr)))
    return float((far[i] + frr[i]) / 2), float(ts[i])


def choose_threshold(gen: np.ndarray, imp: np.ndarray, target: float) -> tuple[float, dict]:
    """Smallest 0.005-grid threshold with empirical impostor FAR <= target, raised to the
    Gaussian-tail estimate mean + z(target) * std of the impostor scores if that is higher."""
    from statistics import NormalDist

    grid = np.round(np.arange(0.5, 1.0001, 0.005), 3)
    emp = next(float(t) for t in grid if far_frr(gen, imp, t)[0] <= target)
    z = NormalDist().inv_cdf(1 - target)
    gauss = float(imp.mean() + z * imp.std(ddof=1))
    t = max(emp, math.ceil(gauss / 0.005) * 0.005)
    return round(t, 3), {"empirical": emp, "gaussian": gauss, "z": z}


# ------------------------------------------------------------------------- identification


def _rates(outcomes: list[str]) -> dict[str, float]:
    n = max(len(outcomes), 1)
    return {k: outcomes.count(k) / n for k in ("correct", "reject", "misroute", "accept")} | {"n": len(outcomes)}


def identification(s: Samples, t: float, groups_as_users: bool = True) -> dict[str, dict[str, float]]:
    """Closed/open-set identification with one enrolment per identity (see module docstring)."""
    matcher = IdentityMatcher(t)
    by_id: dict[str, list[int]] = {}
    for i, who in enumerate(s.ident):
        by_id.setdefault(who, []).append(i)
    group = {who for who, src in zip(s.ident, s.source) if src == "group"}
    named = [w for w in by_id if w not in group]
    multi = [w for w in named if len(by_id[w]) > 1]

    def galleries(exclude: set[str], with_groups: bool):
        """All galleries: every named identity but ``exclude`` with one enrolment (all
        combinations over the multi-sample ones), plus the group faces as users if asked."""
        fixed = {w: s.emb[by_id[w][0]][None] for w in named if w not in exclude and w not in multi}
        if with_groups:
            fixed |= {w: s.emb[by_id[w][0]][None] for w in group}
        choose = [w for w in multi if w not in exclude]
        for combo in itertools.product(*(by_id[w] for w in choose)):
            yield fixed | {w: s.emb[i][None] for w, i in zip(choose, combo)}

    closed: list[str] = []
    for who in multi:
        for e, p in itertools.permutations(by_id[who], 2):
            if s.capture[e] == s.capture[p]:
                continue
            for gal in galleries({who}, groups_as_users):
                gal[who] = s.emb[e][None]
                user, _ = matcher.identify(s.emb[p], gal)
                closed.append("correct" if user == who else "reject" if user is None else "misroute")
    opened: list[str] = []
    for who, idx in by_id.items():
        for p in idx:
            for gal in galleries({who}, groups_as_users and who not in group):
                user, _ = matcher.identify(s.emb[p], gal)
                opened.append("reject" if user is None else "accept")
    return {"closed": _rates(closed), "open": _rates(opened)}


def ck_identification(s: Samples, t: float, seed: int) -> dict[str, dict[str, float]]:
    """CK+: half the subjects enrolled with one random sequence, the rest strangers."""
    rng = np.random.default_rng(seed)
    matcher = IdentityMatcher(t)
    ids = np.array(s.ident)
    subjects = np.unique(ids)
    enrolled = set(rng.permutation(subjects)[: len(subjects) // 2].tolist())
    gallery, enrol_idx = {}, set()
    for w in sorted(enrolled):
        i = int(rng.choice(np.flatnonzero(ids == w)))
        gallery[w] = s.emb[i][None]
        enrol_idx.add(i)
    closed, opened = [], []
    for i, w in enumerate(ids):
        if i in enrol_idx:
            continue
        user, _ = matcher.identify(s.emb[i], gallery)
        if w in enrolled:
            closed.append("correct" if user == w else "reject" if user is None else "misroute")
        else:
            opened.append("reject" if user is None else "accept")
    return {"closed": _rates(closed), "open": _rates(opened)}


# ---------------------------------------------------------------------------------- plots


def plots(sets: dict[str, tuple[np.ndarray, np.ndarray]], t: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(sets)
    fig, axes = plt.subplots(len(names), 1, figsize=(8, 2.3 * len(names)), sharex=True)
    bins = np.linspace(0.5, 1.0, 101)
    for ax, name in zip(np.atleast_1d(axes), names):
        gen, imp = sets[name]
        ax.hist(imp, bins=bins, density=True, alpha=0.6, color="tab:red", label=f"impostor (n={len(imp)})")
        ax.hist(gen, bins=bins, density=True, alpha=0.6, color="tab:green", label=f"genuine (n={len(gen)})")
        ax.axvline(t, color="k", ls="--", lw=1, label=f"threshold {t:.3f}")
        ax.set_title(name, fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    np.atleast_1d(axes)[-1].set_xlabel("cosine similarity of sample embeddings")
    fig.tight_layout()
    fig.savefig(out / "genuine_impostor_hist.png", dpi=110)
    plt.close(fig)

    keep = [n for n in names if n not in ("clips (every3)", "clips (all)")]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 5))
    ts = np.linspace(0.8, 1.0, 801)
    for name in keep:
        gen, imp = sets[name]
        far, frr = rates(gen, imp, ts)
        (line,) = ax.plot(ts, np.where(far > 0, far, np.nan), label=f"{name} FAR")
        ax.plot(ts, np.where(frr > 0, frr, np.nan), "--", color=line.get_color(), label=f"{name} FRR")
        # DET: zero rates are drawn at 0.5/n so the curves stay on log axes
        fl_far, fl_frr = 0.5 / max(len(imp), 1), 0.5 / max(len(gen), 1)
        bx.plot(np.maximum(far, fl_far), np.maximum(frr, fl_frr), color=line.get_color(), label=name)
        fa, fr = far_frr(gen, imp, t)
        bx.plot(max(fa, fl_far), max(fr, fl_frr), "o", color=line.get_color())
    ax.axvline(t, color="k", ls=":", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("threshold (cosine)")
    ax.set_ylabel("rate (zeros not drawn)")
    ax.set_title(f"FAR (solid) / FRR (dashed) vs threshold; dotted: {t:.3f}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    bx.set_xscale("log")
    bx.set_yscale("log")
    bx.set_xlabel("false accept rate (impostor pairs)")
    bx.set_ylabel("false reject rate (genuine pairs)")
    bx.set_title(f"DET; dots at {t:.3f}; a zero rate is drawn at 0.5/n", fontsize=9)
    bx.grid(True, which="both", alpha=0.3)
    bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "det.png", dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--target-far", type=float, default=0.001, help="pair-level impostor accept rate to stay under")
    ap.add_argument("--clip-frames", choices=("recognizer", "every3", "all"), default="recognizer", help="clip embedding used for the pooled set")
    ap.add_argument("--cremad-step", type=int, default=1, help="decode every n-th CREMA-D frame (1: all)")
    ap.add_argument("--ck-max-impostors", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-cache", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    f = load_or_extract(args.data, args.out, args)
    photos = samples(f, ("photo", "actor", "group"))
    clips = {m: samples(f, ("cremad",), m) for m in ("recognizer", "every3", "all", "frame")}
    ck = samples(f, ("ckplus",))
    n_ck_faces = int((f.source == "ckplus").sum())
    print(f"faces: {len(photos)} photo faces ({sum(x == 'group' for x in photos.source)} from group photos), "
          f"{len(clips['frame'])} CREMA-D frames in {len(clips['all'])} clips, {n_ck_faces} CK+ faces in {len(ck)} sequences "
          f"of {len(set(ck.ident))} subjects")

    sets: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    sets["photos"] = pair_scores(photos)
    for m in ("recognizer", "every3", "all", "frame"):
        g, _ = pair_scores(clips[m])
        _, i = pair_scores(clips[m], photos)
        sets[f"clips ({m})"] = (g, i)
    main_clips = f"clips ({args.clip_frames})"
    sets["pooled high-res"] = (np.concatenate([sets["photos"][0], sets[main_clips][0]]), np.concatenate([sets["photos"][1], sets[main_clips][1]]))
    # the same without the two half-face crops (landmarks extrapolated off the image)
    full = photos.select([not c.startswith("obama#1") or cap == "obama.jpg" for c, cap in zip(photos.capture, photos.names)])
    g_full, i_full = pair_scores(full)
    _, i_clip_full = pair_scores(clips[args.clip_frames], full)
    sets["pooled full faces"] = (np.concatenate([g_full, sets[main_clips][0]]), np.concatenate([i_full, i_clip_full]))
    gen, imp = pair_scores(ck)
    if len(imp) > args.ck_max_impostors:
        imp = np.random.default_rng(args.seed).choice(imp, args.ck_max_impostors, replace=False)
    sets["CK+ 48px"] = (gen, imp)

    pg, pi = sets["pooled high-res"]
    t, how = choose_threshold(pg, pi, args.target_far)

    cols = ["set", "n_gen", "n_imp", "gen_min", "gen_mean", "imp_mean", "imp_max", "EER", "@EER_t", f"FAR@{t:.3f}", f"FRR@{t:.3f}"]
    print()
    print(f"pair-level scores (cosine of sample embeddings); pooled = photos + {main_clips}")
    print(" | ".join(f"{c:>18}" if i == 0 else f"{c:>9}" for i, c in enumerate(cols)))
    for name, (g, i) in sets.items():
        e, et = eer(g, i)
        fa, fr = far_frr(g, i, t)
        print(f"{name:>18} | {len(g):>9} | {len(i):>9} | {g.min():9.4f} | {g.mean():9.4f} | {i.mean():9.4f} | {i.max():9.4f} | {e:9.4f} | {et:9.4f} | {fa:9.5f} | {fr:9.4f}")

    print()
    print("FAR / FRR at other thresholds")
    print(f"{'set':>18} | " + " | ".join(f"{x:>13.3f}" for x in THRESHOLDS))
    for name, (g, i) in sets.items():
        print(f"{name:>18} | " + " | ".join("{:>6.4f}/{:<6.3f}".format(*far_frr(g, i, x)) for x in THRESHOLDS))

    hi = photos + clips[args.clip_frames]
    hi_full = full + clips[args.clip_frames]
    print()
    print("identification, one enrolment per identity (rates over trials)")
    print(f"{'set':>19} | {'threshold':>9} | {'closed n':>8} | {'correct':>7} | {'reject':>7} | {'misroute':>8} | {'open n':>7} | {'false acc':>9}")
    for thr in sorted({t, DEFAULT_THRESHOLD, 0.90, 0.92, 0.94}):
        for name, r in (("high-res", identification(hi, thr)), ("high-res full faces", identification(hi_full, thr)), ("CK+ 48px", ck_identification(ck, thr, args.seed))):
            c, o = r["closed"], r["open"]
            print(f"{name:>19} | {thr:9.3f} | {c['n']:8d} | {c['correct']:7.4f} | {c['reject']:7.4f} | {c['misroute']:8.4f} | {o['n']:7d} | {o['accept']:9.4f}")

    plots({k: v for k, v in sets.items() if k != "pooled high-res"} | {"pooled high-res": sets["pooled high-res"]}, t, args.out)
    far, frr = far_frr(pg, pi, t)
    e, et = eer(pg, pi)
    print()
    print(f"threshold rule: smallest 0.005-grid t with pooled high-res impostor FAR <= {args.target_far:g} "
          f"(empirical: {how['empirical']:.3f}), not below the Gaussian impostor tail mean+{how['z']:.2f}sd = {how['gaussian']:.4f}")
    from statistics import NormalDist

    n_acc = int((pi >= t).sum())
    upper = 1 - 0.05 ** (1 / len(pi)) if n_acc == 0 else float("nan")  # one-sided 95 % bound for 0 events
    gauss_far = 1 - NormalDist(float(pi.mean()), float(pi.std(ddof=1))).cdf(t)
    print(f"pooled high-res: EER {e:.4f} at {et:.4f}; at {t:.3f}: FAR {far:.5f} ({n_acc}/{len(pi)}"
          + (f", 95% upper bound {upper:.4f}" if n_acc == 0 else "") + f"; Gaussian tail {gauss_far:.1e}), "
          f"FRR {frr:.4f} ({int((pg < t).sum())}/{len(pg)})")
    fg, fi = sets["pooled full faces"]
    print(f"pooled full faces (no half-face crops): at {t:.3f}: FAR {far_frr(fg, fi, t)[0]:.5f}, FRR {far_frr(fg, fi, t)[1]:.4f} ({int((fg < t).sum())}/{len(fg)})")
    print(f"plots: {args.out / 'genuine_impostor_hist.png'}, {args.out / 'det.png'}  ({time.perf_counter() - t0:.0f} s)")
    print(f"identity_threshold={t:.3f} far={far:.5f} frr={frr:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
