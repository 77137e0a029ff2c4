"""Command-line interface: ``emoadapt predict``, ``emoadapt annotate`` and user management.

    emoadapt predict clip.mp4 other.avi          # one line per clip
    emoadapt predict --json clips/*.mp4          # machine-readable
    emoadapt annotate clip.mp4 -o annotated.mp4  # boxes and labels drawn on every frame
    emoadapt enroll alice alice1.mp4 alice.jpg   # register a face
    emoadapt correct clip.mp4 surprise           # feedback (user recognised by face)
    emoadapt adapt alice; emoadapt users; emoadapt forget alice
    emoadapt extract corpus/ -o features/        # a resumable Parquet dataset of every clip
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from .errors import EmoadaptError

log = logging.getLogger("emoadapt.cli")

#: BGR colours per emotion for annotated videos.
COLORS: dict[str, tuple[int, int, int]] = {
    "angry": (0, 0, 255),
    "disgust": (0, 128, 0),
    "fear": (128, 0, 128),
    "happy": (0, 215, 255),
    "sad": (255, 0, 0),
    "surprise": (255, 255, 0),
    "neutral": (200, 200, 200),
}


def _recognizer(args: argparse.Namespace, **kw: Any):
    from .recognizer import Recognizer

    return Recognizer(home=args.home, backbone=args.backbone, **kw)


def _sampling(args: argparse.Namespace) -> dict[str, Any]:
    return {"fps": args.fps, "max_frames": args.max_frames}


def cmd_predict(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    rec = _recognizer(args)
    status = 0
    many = len(args.clips) > 1
    out: list[dict[str, Any]] = []
    for clip in tqdm(args.clips, unit="clip", disable=not many or args.quiet, leave=False, file=sys.stderr):
        try:
            res = rec.predict(clip, progress=not many and not args.quiet and sys.stderr.isatty(), **_sampling(args))
        except EmoadaptError as e:
            status = 1
            log.error("%s: %s", clip, e)
            if args.json:
                out.append({"clip": str(clip), "error": f"{type(e).__name__}: {e}"})
            else:
                print(f"{clip}\tERROR\t{type(e).__name__}: {e}", flush=True)
            continue
        if args.json:
            d = res.to_dict()
            if not args.timeline:
                d.pop("timeline")
            out.append({"clip": str(clip), **d})
        else:
            top = "  ".join(f"{k} {v:.2f}" for k, v in res.top(3))
            label = res.label if res.label is not None else "(no face)"
            user = f"\tuser={res.user}" if res.user else ""
            print(f"{clip}\t{label}\t{top}\tfaces {res.faces}/{res.frames}{user}", flush=True)
    if args.json:
        json.dump(out if many else out[0], sys.stdout, indent=2)
        print()
    return status


def cmd_annotate(args: argparse.Namespace) -> int:
    import cv2
    from tqdm.auto import tqdm

    from .video import Sampling, iter_frames, video_info

    rec = _recognizer(args)
    src = Path(args.clip)
    try:
        fps = video_info(src)["fps"] or 25.0
    except EmoadaptError:
        fps = 25.0
    if args.fps:
        fps = min(fps, args.fps)
    writer = None
    n_faces = 0
    try:
        frames = iter_frames(src, sampling=Sampling(fps=args.fps, max_frames=args.max_frames))
        for fr in tqdm(frames, unit="frame", disable=args.quiet, leave=False, file=sys.stderr):
            img = cv2.cvtColor(fr.image, cv2.COLOR_RGB2BGR)
            if writer is None:
                h, w = img.shape[:2]
                writer = cv2.VideoWriter(str(args.output), cv2.VideoWriter_fourcc(*args.fourcc), fps, (w, h))
                if not writer.isOpened():
                    log.error("cannot open %s for writing with codec %s", args.output, args.fourcc)
                    return 1
            for face in rec.faces_in(fr.image):
                n_faces += 1
                draw_face(img, face.box, face.label, face.probabilities[face.label])
            writer.write(img)
    except EmoadaptError as e:
        log.error("%s: %s", src, e)
        return 1
    finally:
        if writer is not None:
            writer.release()
    print(f"wrote {args.output} ({n_faces} faces labelled)")
    return 0


def cmd_enroll(args: argparse.Namespace) -> int:
    rec = _recognizer(args)
    n = rec.enroll(args.user, [Path(c) for c in args.clips], **_sampling(args))
    print(f"enrolled {args.user}: {n} face embedding(s) added")
    return 0


def cmd_correct(args: argparse.Namespace) -> int:
    rec = _recognizer(args, adapt_every=args.adapt_every)
    cid = rec.correct(args.clip, args.label, user=args.user, force=args.force, **_sampling(args))
    print(f"correction {cid} recorded")
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
    rep = _recognizer(args).adapt(args.user)
    if args.json:
        json.dump(rep.to_dict(), sys.stdout, indent=2)
        print()
    else:
        state = f"head v{rep.version} active" if rep.version else "universal head in use"
        acc = ""
        if rep.held_out_accuracy_after is not None:
            acc = f"; held-out accuracy {rep.held_out_accuracy_before:.2f} -> {rep.held_out_accuracy_after:.2f}"
        print(f"{args.user}: {'adapted' if rep.accepted else 'kept the current head'} ({rep.reason}); {rep.n_corrections} corrections{acc}; {state}; {rep.seconds:.2f}s")
    return 0


def cmd_users(args: argparse.Namespace) -> int:
    rec = _recognizer(args)
    for u in rec.users():
        n = len(rec.corrections(u))
        print(f"{u}\t{n} corrections")
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    rep = _recognizer(args).forget(args.user)
    print(f"forgot {args.user}: {rep.corrections} corrections, {rep.embeddings} embeddings, {rep.heads} heads removed")
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    from .extract import extract

    kw = {} if args.backbone is None else {"backbone": args.backbone}
    rep = extract(args.input, args.output, workers=args.workers, scheduler=args.scheduler, fps=args.fps,
                  max_frames=args.max_frames, retry_errors=args.retry_errors, progress=False if args.quiet else None,
                  detect_every=args.detect_every, **kw)  # fmt: skip
    print(f"{rep.out}: {rep.done} clips analysed ({rep.errors} errors, {rep.frames} frames), {rep.skipped} done before"
          + (f", {rep.lost} not finished: rerun to resume" if rep.lost else "") + f"; {rep.seconds:.1f} s")
    return 1 if rep.lost else 0


def draw_face(img, box, label: str, prob: float) -> None:
    """Draw a coloured box and the emotion's name on a BGR image in place."""
    import cv2

    color = COLORS.get(label, (255, 255, 255))
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    t = max(1, round(min(img.shape[:2]) / 240))
    cv2.rectangle(img, (x1, y1), (x2, y2), color, t)
    text = f"{label} {prob:.0%}"
    scale = max(0.4, min(img.shape[:2]) / 720)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, t)
    ty = y1 - 4 if y1 - th - base - 4 >= 0 else y2 + th + 4
    cv2.rectangle(img, (x1, ty - th - base), (x1 + tw + 4, ty + base), color, -1)
    cv2.putText(img, text, (x1 + 2, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), t, cv2.LINE_AA)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="emoadapt", description="On-device, personalized facial-emotion recognition in video.")
    ap.add_argument("--home", help="user data directory (default: $EMOADAPT_HOME or ~/.local/share/emoadapt)")
    ap.add_argument("--backbone", help="emotion backbone (a model name from the manifest)")
    ap.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = ap.add_subparsers(dest="command", required=True)

    def sampling(p: argparse.ArgumentParser) -> None:
        p.add_argument("--fps", type=float, help="sample about this many frames per second")
        p.add_argument("--max-frames", type=int, help="use at most this many frames per clip")

    p = sub.add_parser("predict", help="predict the emotion of each clip")
    p.add_argument("clips", nargs="+", help="video or image files")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--timeline", action="store_true", help="include per-frame results in --json output")
    sampling(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("annotate", help="write the video with each face boxed and labelled")
    p.add_argument("clip")
    p.add_argument("-o", "--output", required=True, type=Path)
    p.add_argument("--fourcc", default="mp4v", help="video codec (default mp4v)")
    sampling(p)
    p.set_defaults(func=cmd_annotate)

    p = sub.add_parser("enroll", help="register a user's face from clips or photos")
    p.add_argument("user")
    p.add_argument("clips", nargs="+")
    sampling(p)
    p.set_defaults(func=cmd_enroll)

    p = sub.add_parser("correct", help="record the true emotion of a clip (personalization feedback)")
    p.add_argument("clip")
    p.add_argument("label")
    p.add_argument("--user", help="whose correction (default: recognised from the face)")
    p.add_argument("--force", action="store_true", help="record it even if the face does not match --user")
    p.add_argument("--adapt-every", type=int, default=5, help="fine-tune after this many new corrections (0: never)")
    sampling(p)
    p.set_defaults(func=cmd_correct)

    p = sub.add_parser("adapt", help="fine-tune a user's personal head now")
    p.add_argument("user")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_adapt)

    p = sub.add_parser(
        "extract", help="analyse a corpus of clips into a resumable Parquet dataset",
        description="Analyse every clip of INPUT with the universal model and write OUT/frames (one row per analysed "
                    "frame and face track: box, landmarks, probabilities, backbone features) and OUT/clips (one row per "
                    "clip: label, probabilities, frames, faces, error). Clips already done in OUT are skipped; a clip that "
                    "fails is recorded with its error. Needs pyarrow (pip install 'emoadapt[extract]').")  # fmt: skip
    p.add_argument("input", help="a folder (searched recursively for videos and images), a manifest (.csv with a 'path' "
                                 "column and optional 'label' and 'user' columns, or .txt with one path per line), a glob "
                                 "pattern (quote it) or one file")  # fmt: skip
    p.add_argument("-o", "--output", required=True, type=Path, help="output folder of the Parquet dataset (created; reruns resume)")
    p.add_argument("--workers", type=int, default=None, help="local worker processes (default: the CPU count; 1: this process)")
    p.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="run on this Dask scheduler instead of local processes "
                                                                 "(needs emoadapt[dask]; OUTPUT must be visible to every worker)")  # fmt: skip
    p.add_argument("--detect-every", type=int, default=10, help="full face detection at least every this many frames, tracking between (default 10)")
    p.add_argument("--retry-errors", action="store_true", help="also redo the clips an earlier run recorded with an error")
    sampling(p)
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("users", help="list enrolled users")
    p.set_defaults(func=cmd_users)

    p = sub.add_parser("forget", help="delete every trace of a user")
    p.add_argument("user")
    p.set_defaults(func=cmd_forget)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except EmoadaptError as e:
        log.error("%s", e)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
