"""Real-time speed of the emoadapt pipeline, side by side with the `fer` peer.

Inputs (real data from ``../shared/data``):

* ``cremad``: the six CREMA-D clips (480x360 FLV, 379 frames, one actor);
* ``720p``: a 1280x720 MPEG-4 stream (RAVDESS's frame size) made from real frames: two
  CREMA-D clips upscaled 2x (bicubic) to 960x720 and padded to 1280x720 (mirrored
  background), written once to ``benchmarks/out/stream720.mp4``;
* ``group``: the six group photos ``faces/identity/sample*.jpg`` (about 1920x1400, 1-5
  faces each).

Tables printed:

1. per-stage cost (ms per frame or per face, wall and CPU): decode, detection (full
   MTCNN cascade), tracking (O-Net refine), detection as run (``detect_every=10``:
   amortised full + tracking), alignment, backbone (as the Recognizer runs it: with the
   backbone's flip TTA on still images, without on video frames), identity embedding, clip
   pooling/head;
2. end to end (``Recognizer.predict`` on the file, decode included) in frames per second,
   with tracking (``detect_every=10``, the default) and per-frame detection
   (``detect_every=1``), vs the peer ``fer`` (decode + ``FER(mtcnn=True).detect_emotions``
   per frame) run by ``benchmarks/peer_fer.py`` in its own environment;
3. accuracy / agreement on the CREMA-D clips (labels from the file names), and the
   per-frame probability difference between tracking and per-frame detection, next to the
   difference an equally valid detector setting makes (pyramid factor 0.72 vs 0.709);
4. cold start (fresh process: import, model load, first frame) and peak RSS of a Recognizer
   with every model loaded (detector, backbone, head, identity embedder), ours and the peer's.

Timing: each measurement is repeated ``--repeat`` times and the best is kept (the least
disturbed by other jobs); wall time (``perf_counter``) and process CPU time (``process_time``,
all threads) are both reported. On a shared machine trust the CPU figures: they do not count
time the process waited for a core. Our models run with 1 TFLite thread; the peer is run
with 1 torch thread by default (``--peer-threads``; with torch's default of one thread per
core it is several times slower on a loaded 2-core machine, spin-waiting).

    bash benchmarks/setup_peer_env.sh            # once: the peer's separate environment
    nice -n 10 python benchmarks/pipeline_speed.py [--repeat 3] [--no-peer]

Ends with the key figure: the end-to-end speed-up over the peer on the CREMA-D clips.

``--enrolled-only`` measures only the CREMA-D clips end to end with users enrolled (so every
face track is also embedded and matched for identity), for each identity model in
``--identity`` (default: both), against the same run with nobody enrolled:

    nice -n 10 python benchmarks/pipeline_speed.py --enrolled-only [--identity mobilefacenet] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from _common import add_common_args, cremad_label, data_dir, write_json  # noqa: E402

from emoadapt.heads import ClipContext  # noqa: E402

DATA = data_dir()
OUT = ROOT / "benchmarks" / "out"
PEER_PY = ROOT / "benchmarks" / ".peer-env" / "bin" / "python"


# --------------------------------------------------------------------------- helpers
def best_of(fn: Callable[[], Any], repeat: int) -> tuple[float, float, Any]:
    """(best wall s, best CPU s, last result) over ``repeat`` calls."""
    bw = bc = float("inf")
    out = None
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        bw, bc = min(bw, time.perf_counter() - t), min(bc, time.process_time() - c)
    return bw, bc, out


def load_avg() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def make_720p(clips: list[Path], path: Path) -> Path:
    """1280x720 mp4v stream from real CREMA-D frames (2x bicubic, mirrored side padding)."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (1280, 720))
    if not w.isOpened():
        raise SystemExit("OpenCV cannot write mp4v here")
    for clip in clips:
        cap = cv2.VideoCapture(str(clip))
        while True:
            ok, f = cap.read()
            if not ok:
                break
            big = cv2.resize(f, (960, 720), interpolation=cv2.INTER_CUBIC)
            w.write(cv2.copyMakeBorder(big, 0, 0, 160, 160, cv2.BORDER_REFLECT_101))
        cap.release()
    w.release()
    return path


def table(title: str, header: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(h) for h in header]] + [[c if isinstance(c, str) else f"{c:.2f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "  ".join(c.rjust(wd) if i else c.ljust(wd) for i, (c, wd) in enumerate(zip(r, widths)))  # noqa: E731
    out = [f"\n{title}", line(cells[0]), "  ".join("-" * wd for wd in widths)] + [line(r) for r in cells[1:]]
    text = "\n".join(out)
    print(text, flush=True)
    return text


# --------------------------------------------------------------------------- our stages
def stage_costs(rec: Any, name: str, paths: list[Path], repeat: int) -> dict[str, Any]:
    """Per-stage cost on ``paths`` (all frames), per frame / per face, wall and CPU ms."""
    from emoadapt.alignment import norm_crop
    from emoadapt.detection import TrackingDetector
    from emoadapt.video import iter_frames

    det, bb = rec.detector, rec.backbone
    size, gray = bb.input_size, bb.channels == 1
    res: dict[str, Any] = {}

    w, c, frames = best_of(lambda: [[f.image for f in iter_frames(p)] for p in paths], repeat)
    n = sum(len(v) for v in frames)
    res["decode"] = (w / n, c / n, "frame")
    for v in frames:  # warm the interpreters for these shapes
        det.detect(v[0])
    w, c, refs = best_of(lambda: [[det.detect(f) for f in v] for v in frames], repeat)
    res["detect (full cascade)"] = (w / n, c / n, "frame")
    conf = [[r.boxes[r.scores >= rec.scanner.settings.min_face_score] for r in rv] for rv in refs]
    # tracking: each frame with the previous frame's faces (a photo: with its own faces)
    pairs = [(v[t], cv[max(t - 1, 0)]) for v, cv in zip(frames, conf) for t in range(min(1, len(v) - 1), len(v)) if len(cv[max(t - 1, 0)])]
    if pairs:
        w, c, _ = best_of(lambda: [det.refine(f, b) for f, b in pairs], repeat)
        res["track (O-Net refine)"] = (w / len(pairs), c / len(pairs), "frame")

    def tracked() -> list[Any]:
        out = []
        for v in frames:
            t = TrackingDetector(det, detect_every=rec.scanner.settings.detect_every, min_score=rec.scanner.settings.min_face_score)
            out.extend(t(f) for f in v)
        return out

    w, c, _ = best_of(tracked, repeat)
    res[f"detection as run (detect_every={rec.scanner.settings.detect_every})"] = (w / n, c / n, "frame")
    faces = [(f, r.landmarks[i]) for v, rv in zip(frames, refs) for f, r in zip(v, rv) for i in rec.scanner.analysis().select(r)]
    nf = len(faces)
    w, c, crops = best_of(lambda: [norm_crop(f, lm, size, bb.template, gray=gray) for f, lm in faces], repeat)
    res["align (norm_crop)"] = (w / nf, c / nf, "face")
    arr = np.stack(crops)
    # as the Recognizer runs it: still images with the backbone's flip TTA, video frames without
    # (unless video_tta)
    tta = rec.scanner.analysis().tta_for(max(len(v) for v in frames))
    w, c, _ = best_of(lambda: [bb.infer(arr[s : s + rec.scanner.settings.chunk], tta=tta) for s in range(0, nf, rec.scanner.settings.chunk)], repeat)
    res[f"backbone (batches of {rec.scanner.settings.chunk}, as run)"] = (w / nf, c / nf, "face")
    emb = rec.embedder
    emb.embed_faces(faces[0][0], faces[0][1][None])
    sub = faces[:: max(1, nf // 40)]
    w, c, _ = best_of(lambda: [emb.embed_faces(f, lm[None]) for f, lm in sub], repeat)
    res["identity embedding (enrolled users only)"] = (w / len(sub), c / len(sub), "face")
    P, F = bb.infer(arr)
    head = rec.universal
    per_clip = [(F[: len(v)], ClipContext.one(probabilities=P[: len(v)])) for v in frames]
    w, c, _ = best_of(lambda: [head.predict_proba([f], ctx) for f, ctx in per_clip], repeat)
    res[f"pooling + head ({type(head).__name__})"] = (w / len(per_clip), c / len(per_clip), "clip")
    try:  # the trainable head personal heads are fine-tuned from (a user's head costs the same)
        personal = rec.personal_base
    except Exception:  # noqa: BLE001 - no trainable head in the manifest
        personal = None
    if personal is not None:
        feats = [F[: len(v)] for v in frames]
        personal.predict_proba([feats[0]])
        w, c, _ = best_of(lambda: [personal.predict_proba([f]) for f in feats], repeat)
        res[f"pooling + personal head ({type(personal).__name__})"] = (w / len(feats), c / len(feats), "clip")
    res["_frames"], res["_faces"] = n, nf
    return res


def end_to_end(rec_factory: Callable[[int], Any], paths: list[Path], repeat: int, every: int) -> dict[str, Any]:
    rec = rec_factory(every)
    rec.predict(paths[0], max_frames=2)  # warm-up: interpreters for this frame size
    w, c, results = best_of(lambda: [rec.predict(p) for p in paths], repeat)
    n = sum(r.frames for r in results)
    return {
        "frames": n,
        "wall_s": w,
        "cpu_s": c,
        "fps_wall": n / w,
        "fps_cpu": n / c,
        "results": results,
        "faces": sum(r.faces for r in results),
        "faces_total": sum(sum(t.faces for t in (r.tracks or [r])) for r in results),
    }


# --------------------------------------------------------------------------- cold start / RSS
COLD = r"""
import json, sys, time
t0, c0 = time.perf_counter(), time.process_time()
import emoadapt
t1 = time.perf_counter()
rec = emoadapt.Recognizer(home=sys.argv[1], opencv_threads=1)
t2 = time.perf_counter()
res = rec.predict(sys.argv[2], max_frames=1)
t3 = time.perf_counter()
assert res.faces == 1
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_frame_s": t3 - t2, "total_s": t3 - t0,
                  "total_cpu_s": time.process_time() - c0}))
"""

RSS = r"""
import json, sys
def rss(field="VmRSS"):  # VmHWM: peak RSS of this process image (ru_maxrss would include the parent's before exec)
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024
import numpy, cv2
base = rss()
import emoadapt
from emoadapt.errors import ModelIntegrityError
rec = emoadapt.Recognizer(home=sys.argv[1], opencv_threads=1)
rec.embedder  # identity model
try:
    rec.personal_base
except ModelIntegrityError:
    pass
loaded = rss()
rec.enroll("bench", sys.argv[2])  # a user is enrolled: identity embeddings are computed too
for p in sys.argv[2:]:
    r = rec.predict(p)
    assert r.faces > 0, p
print(json.dumps({"baseline_mb": base, "loaded_mb": loaded, "after_mb": rss(),
                  "peak_mb": rss("VmHWM")}))
"""


def fresh_process(code: str, args: list[str], repeat: int) -> list[dict[str, Any]]:
    out = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as home:
            t = time.perf_counter()
            p = subprocess.run([sys.executable, "-c", code, home, *args], capture_output=True, text=True, cwd=ROOT)
            if p.returncode:
                raise SystemExit(f"subprocess failed:\n{p.stderr[-3000:]}")
            d = json.loads(p.stdout.strip().splitlines()[-1])
            d["process_s"] = time.perf_counter() - t
            out.append(d)
    return out


# --------------------------------------------------------------------------- peer
def run_peer(peer_py: Path, inputs: list[Path], repeat: int, threads: int, max_frames: int | None) -> dict[str, Any]:
    cmd = [str(peer_py), str(ROOT / "benchmarks" / "peer_fer.py"), *map(str, inputs), "--repeat", str(repeat), "--threads", str(threads)]
    if max_frames:
        cmd += ["--max-frames", str(max_frames)]
    print(f"[peer] {' '.join(cmd[:2])} ... ({len(inputs)} inputs, {repeat} passes, {threads} torch thread(s))", flush=True)
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if p.returncode:
        raise SystemExit(f"peer failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def peer_totals(peer: dict[str, Any], paths: list[Path]) -> dict[str, float]:
    ins = [peer["inputs"][str(p)] for p in paths]
    n = sum(d["frames"] for d in ins)
    reps = len(ins[0]["runs"])
    tot = lambda k: min(sum(d["runs"][r][k] for d in ins) for r in range(reps))  # noqa: E731
    w, c = tot("wall_s"), tot("cpu_s")
    return {
        "frames": n,
        "wall_s": w,
        "cpu_s": c,
        "fps_wall": n / w,
        "fps_cpu": n / c,
        "mtcnn_ms_cpu": 1e3 * tot("mtcnn_cpu_s") / n,
        "mtcnn_ms_wall": 1e3 * tot("mtcnn_wall_s") / n,
        "nms_ms": 1e3 * tot("nms_s") / n,
        "faces": sum(1 for d in ins for fr in d["per_frame"] if fr),
        "faces_total": sum(len(fr) for d in ins for fr in d["per_frame"]),
    }


def peer_main_face(faces: list[dict[str, Any]]) -> dict[str, float] | None:
    if not faces:
        return None
    return max(faces, key=lambda e: e["box"][2] * e["box"][3])["emotions"]


# --------------------------------------------------------------------------- accuracy
def accuracy(ours: list[Any], ours1: list[Any], peer: dict[str, Any] | None, clips: list[Path], classes: list[str]) -> tuple[list[list[Any]], dict[str, Any]]:
    rows, agg = [], {"agree": [], "acc_ours": [], "acc_peer": [], "mad": [], "agree_track": []}
    for clip, r, r1 in zip(clips, ours, ours1):
        gt = cremad_label(clip)
        ia = {f.index: i for i, f in enumerate(r.timeline)}
        ib = {f.index: i for i, f in enumerate(r1.timeline)}
        common = sorted(set(ia) & set(ib))
        pa = r.frame_probabilities[[ia[i] for i in common]]
        pb = r1.frame_probabilities[[ib[i] for i in common]]
        agg["mad"].append(float(np.abs(pa - pb).mean()))
        agg["agree_track"].append(float((pa.argmax(1) == pb.argmax(1)).mean()))
        ours_frame = {f.index: f.label for f in r.timeline}
        agg["acc_ours"] += [lab == gt for lab in ours_frame.values()]
        row = [clip.name, gt, f"{r.label}/{r1.label}", f"{r.faces}/{r.frames}"]
        if peer is not None:
            pf = peer["inputs"][str(clip)]["per_frame"]
            em = [peer_main_face(f) for f in pf]
            got = [e for e in em if e is not None]
            mean = {k: float(np.mean([e[k] for e in got])) for k in got[0]} if got else {}
            plabel = max(mean, key=mean.get) if mean else None
            pframe = {i: max(e, key=e.get) for i, e in enumerate(em) if e is not None}
            both = sorted(set(pframe) & set(ours_frame))
            agree = float(np.mean([pframe[i] == ours_frame[i] for i in both])) if both else float("nan")
            agg["agree"] += [pframe[i] == ours_frame[i] for i in both]
            agg["acc_peer"] += [lab == gt for lab in pframe.values()]
            row += [str(plabel), f"{len(got)}/{len(pf)}", f"{agree:.2f}"]
        rows.append(row)
    summary = {
        "clips_correct_ours": sum(r.label == cremad_label(c) for c, r in zip(clips, ours)),
        "clips_correct_ours_every1": sum(r.label == cremad_label(c) for c, r in zip(clips, ours1)),
        "frame_acc_ours": float(np.mean(agg["acc_ours"])),
        "mad_track_vs_every_frame": float(np.mean(agg["mad"])),
        "frame_label_agreement_track_vs_every_frame": float(np.mean(agg["agree_track"])),
    }
    if peer is not None:
        summary["frame_acc_peer"] = float(np.mean(agg["acc_peer"]))
        summary["frame_label_agreement_ours_vs_peer"] = float(np.mean(agg["agree"]))
        summary["clips_correct_peer"] = sum(
            (lambda em: max((m := {k: np.mean([e[k] for e in em]) for k in em[0]}), key=m.get) if em else None)(
                [e for e in (peer_main_face(f) for f in peer["inputs"][str(c)]["per_frame"]) if e is not None]
            )
            == cremad_label(c)
            for c in clips
        )
    return rows, summary


def noise_floor(rec: Any, clips: list[Path]) -> dict[str, float]:
    """Per-frame probability difference between two equally valid detector settings
    (pyramid factor 0.709 vs 0.72, both per-frame detection): the scale of differences that
    alignment noise alone causes in this backbone's frame probabilities."""
    from emoadapt.alignment import norm_crop
    from emoadapt.detection import MTCNN
    from emoadapt.video import iter_frames

    other = MTCNN(factor=0.72)
    bb = rec.backbone
    mad, agree = [], []
    for clip in clips:
        frames = [f.image for f in iter_frames(clip)]
        lms = []
        for d in (rec.detector, other):
            lms.append([d.detect(f) for f in frames])
        ok = [i for i in range(len(frames)) if len(lms[0][i]) and len(lms[1][i])]
        P = [bb.predict_proba(np.stack([norm_crop(frames[i], L[i].landmarks[0], bb.input_size, bb.template, gray=bb.channels == 1) for i in ok])) for L in lms]
        mad.append(float(np.abs(P[0] - P[1]).mean()))
        agree.append(float((P[0].argmax(1) == P[1].argmax(1)).mean()))
    return {"mad": float(np.mean(mad)), "agreement": float(np.mean(agree))}


# --------------------------------------------------------------------------- main
def enrolled_speed(identities: list[str], repeat: int) -> None:
    """CREMA-D clips end to end (``detect_every=10``) with 11 users enrolled -- actor 1001
    (from one frame of another clip, so that the clips' tracks match her), Obama, Biden and 8
    RAVDESS actors -- for each identity model, next to the same Recognizer with nobody enrolled."""
    import emoadapt
    from emoadapt.video import Sampling, iter_frames

    clips = sorted((DATA / "clips" / "cremad").glob("*.flv"))
    faces = DATA / "faces"
    photos = {"obama": faces / "identity" / "obama.jpg", "biden": faces / "identity" / "biden.jpg"}
    photos |= {f"actor{i:02d}": faces / "ravdess_actors" / f"Actor_{i:02d}.png" for i in range(1, 9)}
    frame_1001 = next(iter_frames(clips[0], sampling=Sampling(step=30))).image
    print(f"machine: {os.cpu_count()} CPUs, load average {load_avg()} (other jobs running); best of {repeat} passes", flush=True)
    rows = []
    for ident in identities:
        with tempfile.TemporaryDirectory() as home:
            rec = emoadapt.Recognizer(home=home, identity=ident, opencv_threads=1)
            empty = end_to_end(lambda every, r=rec: r, clips, repeat, 10)
            rec.enroll("1001", frame_1001)
            for user, p in photos.items():
                rec.enroll(user, str(p))
            full = end_to_end(lambda every, r=rec: r, clips, repeat, 10)
            routed = sum(r.user == "1001" for r in full["results"])
            rows.append(
                [ident, f"{empty['fps_wall']:.1f} / {empty['fps_cpu']:.1f}", f"{full['fps_wall']:.1f} / {full['fps_cpu']:.1f}", f"{routed}/{len(clips)}"]
            )
            rec.close()
    print(
        table(
            f"CREMA-D clips end to end, fps wall / CPU (best of {repeat}; load average now {load_avg()})",
            ["identity model", "nobody enrolled", "11 users enrolled", "clips routed to 1001"],
            rows,
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(ap, repeat=3, out=OUT)  # --repeat: passes per measurement, the best is kept; --out: speed.json, stream720.mp4
    ap.add_argument("--no-peer", action="store_true", help="skip the fer peer")
    ap.add_argument("--peer-python", type=Path, default=PEER_PY, help="the peer environment's python")
    ap.add_argument("--peer-threads", type=int, default=1, help="torch threads for the peer (default 1, like ours)")
    ap.add_argument("--peer-repeat", type=int, default=2)
    ap.add_argument("--enrolled-only", action="store_true", help="only the CREMA-D clips end to end, with users enrolled vs none")
    ap.add_argument("--identity", nargs="+", default=["mobilefacenet", "dlib_resnet"], help="identity models for --enrolled-only")
    args = ap.parse_args()
    if args.enrolled_only:
        enrolled_speed(args.identity, args.repeat)
        return

    import emoadapt

    clips = sorted((DATA / "clips" / "cremad").glob("*.flv"))
    photos = sorted((DATA / "faces" / "identity").glob("sample*.jpg"))
    if len(clips) != 6 or not photos:
        raise SystemExit(f"real data missing under {DATA}")
    stream = make_720p([clips[3], clips[0]], args.out / "stream720.mp4")
    group = cv2.cvtColor(cv2.imread(str(photos[4])), cv2.COLOR_BGR2RGB)  # sample5.jpg, five faces
    sets = {
        "cremad 480x360": clips,
        "720p 1280x720": [stream],
        "group photos": photos,
        "group as video": [np.ascontiguousarray(np.broadcast_to(group, (10, *group.shape)))],
    }
    home = tempfile.mkdtemp(prefix="emoadapt-bench-")
    report: dict[str, Any] = {"load_avg_start": load_avg(), "cpus": os.cpu_count(), "repeat": args.repeat, "threads": os.environ.get("EMOADAPT_THREADS", "1")}
    print(
        f"machine: {os.cpu_count()} CPUs, load average {report['load_avg_start']} (other jobs running); "
        f"TFLite threads {report['threads']}; best of {args.repeat} passes",
        flush=True,
    )

    rec = emoadapt.Recognizer(home=home, opencv_threads=1)
    stages = {k: stage_costs(rec, k, v, args.repeat) for k, v in sets.items()}
    names = list(stages["cremad 480x360"].keys())
    names = [n for n in names if not n.startswith("_")]
    rows = []
    for n in names:
        unit = stages["cremad 480x360"][n][2]
        rows.append([f"{n} [ms/{unit}]"] + [f"{stages[k][n][0] * 1e3:.2f} / {stages[k][n][1] * 1e3:.2f}" if n in stages[k] else "-" for k in sets])
    rows.append(["frames / faces"] + [f"{stages[k]['_frames']} / {stages[k]['_faces']}" for k in sets])
    texts = [table("Per-stage cost, ours (wall / CPU ms)", ["stage"] + list(sets), rows)]

    def factory(every: int) -> Any:
        return emoadapt.Recognizer(home=home, detect_every=every, opencv_threads=1)

    e2e = {(k, ev): end_to_end(factory, v, args.repeat if ev == 10 else max(1, args.repeat - 1), ev) for k, v in sets.items() for ev in (10, 1)}

    peer = None
    if not args.no_peer:
        if not args.peer_python.exists():
            raise SystemExit(f"{args.peer_python} missing: run `bash benchmarks/setup_peer_env.sh` (or pass --no-peer)")
        peer = run_peer(args.peer_python, [*clips, stream, *photos], args.peer_repeat, args.peer_threads, None)
    rows = []
    for k, v in sets.items():
        a, b = e2e[(k, 10)], e2e[(k, 1)]
        row = [k, f"{a['fps_wall']:.1f} / {a['fps_cpu']:.1f}", f"{b['fps_wall']:.1f} / {b['fps_cpu']:.1f}"]
        if peer is not None:
            pt = peer_totals(peer, v if k != "group as video" else [photos[4]])
            row += [
                f"{pt['fps_wall']:.2f} / {pt['fps_cpu']:.2f}",
                f"{a['fps_wall'] / pt['fps_wall']:.1f}x / {a['fps_cpu'] / pt['fps_cpu']:.1f}x",
                f"{a['faces_total']}/{b['faces_total']} in {a['frames']}; {pt['faces_total']} in {pt['frames']}",
            ]
            report.setdefault("peer_totals", {})[k] = pt
        rows.append(row)
    hdr = ["input", "ours fps (track, wall/CPU)", "ours fps (every frame)"]
    if peer is not None:
        hdr += ["fer fps (wall/CPU)", "speed-up (wall/CPU)", "faces found: ours track/every; fer"]
    texts.append(table("End to end, frames per second (best of passes; decoding included)", hdr, rows))
    if peer is not None:
        pt = report["peer_totals"]
        texts.append(
            table(
                "fer (peer) per frame, CPU ms",
                ["input", "MTCNN (torch)", "of which NMS stand-in", "rest (decode, emotion model, crops)"],
                [
                    [k, f"{pt[k]['mtcnn_ms_cpu']:.1f}", f"{pt[k]['nms_ms']:.2f}", f"{1e3 * pt[k]['cpu_s'] / pt[k]['frames'] - pt[k]['mtcnn_ms_cpu']:.1f}"]
                    for k in sets
                ],
            )
        )

    classes = rec.classes
    acc_rows, acc = accuracy(e2e[("cremad 480x360", 10)]["results"], e2e[("cremad 480x360", 1)]["results"], peer, clips, classes)
    floor = noise_floor(rec, clips)
    hdr = ["clip", "truth", "ours track/every", "faces"] + (["fer", "fer faces", "frame agreement"] if peer else [])
    texts.append(table("CREMA-D clips: labels (clip = mean of frame probabilities)", hdr, acc_rows))
    lines = [
        f"clips correct: ours {acc['clips_correct_ours']}/6 (tracking), {acc['clips_correct_ours_every1']}/6 (every frame)"
        + (f", fer {acc['clips_correct_peer']}/6" if peer else ""),
        f"frame accuracy vs clip label: ours {acc['frame_acc_ours']:.3f}"
        + (f", fer {acc['frame_acc_peer']:.3f}; frame-label agreement ours vs fer {acc['frame_label_agreement_ours_vs_peer']:.3f}" if peer else ""),
        f"tracking vs per-frame detection: mean |dp| {acc['mad_track_vs_every_frame']:.4f}, frame-label agreement {acc['frame_label_agreement_track_vs_every_frame']:.3f}",
        f"noise floor (per-frame detection, pyramid factor 0.709 vs 0.72): mean |dp| {floor['mad']:.4f}, frame-label agreement {floor['agreement']:.3f}",
    ]
    print("\n".join(lines), flush=True)
    texts.append("\n".join(lines))

    cold = fresh_process(COLD, [str(clips[0])], args.repeat)
    workloads = {"CREMA-D clips": clips, "720p stream": [stream], "group photo (sample5)": [photos[4]], "all of them": [*clips, stream, photos[4]]}
    rss_all = {k: fresh_process(RSS, list(map(str, v)), 1)[0] for k, v in workloads.items()}
    med = lambda k: float(np.median([d[k] for d in cold]))  # noqa: E731
    rows = [
        ["ours (emoadapt)", f"{med('import_s'):.2f}", f"{med('load_s'):.2f}", f"{med('first_frame_s'):.2f}", f"{med('total_s'):.2f}", f"{med('process_s'):.2f}"]
    ]
    if peer is not None:
        pc = peer["cold_start"]
        rows.append(["fer (peer)", f"{pc['import_s']:.2f}", f"{pc['load_s']:.2f}", f"{pc['first_frame_s']:.2f}", f"{pc['total_s']:.2f}", "-"])
    texts.append(
        table(
            f"Cold start (s, fresh process, median of {len(cold)}; first frame = predict(clip, max_frames=1))",
            ["pipeline", "import", "model load", "first frame", "total", "whole process"],
            rows,
        )
    )
    rows = [[f"ours: {k}", f"{v['loaded_mb']:.0f}", f"{v['peak_mb']:.0f}"] for k, v in rss_all.items()]
    if peer is not None:
        rows.append(["fer (peer): all inputs above, 1 process", "-", f"{peer['peak_rss_mb']:.0f}"])
    texts.append(
        table(
            "Memory (MB RSS; fresh process per row; all models loaded, a user enrolled so identity runs)",
            ["workload", "RSS with models loaded", "peak RSS"],
            rows,
        )
    )

    a = e2e[("cremad 480x360", 10)]
    key = f"KEY: ours {a['fps_wall']:.0f} fps wall / {a['fps_cpu']:.0f} fps CPU end to end on the CREMA-D clips"
    if peer is not None:
        pt = report["peer_totals"]["cremad 480x360"]
        key += f"; fer {pt['fps_wall']:.1f} / {pt['fps_cpu']:.1f}: speed-up {a['fps_wall'] / pt['fps_wall']:.1f}x wall, {a['fps_cpu'] / pt['fps_cpu']:.1f}x CPU"
    report["load_avg_end"] = load_avg()
    print(f"\nload average at the end: {report['load_avg_end']}")
    print(key)
    report.update(
        {
            "stages_ms": {k: {n: [v[0] * 1e3, v[1] * 1e3, v[2]] for n, v in s.items() if not n.startswith("_")} for k, s in stages.items()},
            "end_to_end": {f"{k}|every={ev}": {kk: vv for kk, vv in d.items() if kk != "results"} for (k, ev), d in e2e.items()},
            "accuracy": acc,
            "noise_floor": floor,
            "cold_start": cold,
            "rss": rss_all,
            "key": key,
            "peer": {k: v for k, v in peer.items() if k != "inputs"} if peer else None,
            "tables": texts,
        }
    )
    write_json(args.out / "speed.json", report)


if __name__ == "__main__":
    main()
