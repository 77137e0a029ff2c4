"""Command-line interface: ``emoadapt predict``, ``emoadapt annotate`` and user management.

    emoadapt predict clip.mp4 other.avi          # one line per clip
    emoadapt predict --format json clips/*.mp4   # a JSON array, one object per clip (--json is the same)
    emoadapt predict --format csv clip.mp4       # one row per face per frame
    emoadapt annotate clip.mp4 -o annotated.mp4  # boxes and labels drawn on every frame
    emoadapt enroll alice alice1.mp4 alice.jpg   # register a face
    emoadapt correct clip.mp4 surprise           # feedback (user recognised by face)
    emoadapt correct clip.mp4 calm --new-label   # a label outside the 7 classes: opt in
    emoadapt adapt alice; emoadapt models alice  # adapt now; show her models (no training)
    emoadapt users; emoadapt forget alice
    emoadapt export alice -o phone/              # her model as TFLite + JSON for a phone app
    emoadapt extract corpus/ -o features/        # a resumable Parquet dataset of every clip
    emoadapt serve                               # the validation-mode web app on 127.0.0.1
    emoadapt live 0                              # camera 0: one line per window (--json: JSON lines)

Common options (``--home``, ``--backbone``, ``-v``, ``-q``) go before or after the command.
stderr carries emoadapt's own messages only (``emoadapt: error: ...``); progress bars appear
only on a terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from ._cli_common import _bar, _list_faces, _recognizer, _sampling, _show_progress, _user
from ._cli_users import cmd_adapt, cmd_correct, cmd_export, cmd_forget, cmd_models, cmd_users
from ._csv import DictWriter as SafeDictWriter
from .errors import EmoadaptError, InvalidInputError, MissingDependencyError

__all__ = ["main"]

log = logging.getLogger("emoadapt.cli")

T = TypeVar("T")


def _predict_error(args: argparse.Namespace, e: EmoadaptError) -> str:
    return f"{type(e).__name__}: {cli_message(e, args.parser) if 'parser' in args else e}"


def cmd_predict(args: argparse.Namespace) -> int:
    rec = _recognizer(args)
    fmt = args.format
    failed = 0
    many = len(args.clips) > 1
    out: list[dict[str, Any]] = []
    writer: SafeDictWriter | None = None
    timeline = fmt == "csv" or bool(args.timeline)  # else memory does not grow with a clip's length
    for clip in _bar(args, args.clips, unit="clip", disable=not many):
        try:
            res = rec.predict(clip, progress=not many and _show_progress(args), timeline=timeline, **_sampling(args))
        except Exception as e:
            # each error is reported once: in the results where the format has a place for it
            # (a text line, a JSON object), else (csv) on stderr
            failed += 1
            if not isinstance(e, EmoadaptError):  # a bug: reported with its traceback at -v
                log.debug("unexpected error on %s", clip, exc_info=True)
            msg = _predict_error(args, e) if isinstance(e, EmoadaptError) else f"{type(e).__name__}: {e}"
            if fmt == "json":
                out.append({"clip": str(clip), "error": msg})
            elif fmt == "text":
                print(f"{clip}\tERROR\t{msg}", flush=True)
            else:
                log.error("%s: %s", clip, msg)
            continue
        if fmt == "json":
            d = res.to_dict()
            if args.timeline:  # each frame's time in seconds of the clip, as in the CSV and the web API
                d["timeline"] = [{"index": f["index"], "time": res._time(f["index"]), **f} for f in d["timeline"]]
            else:
                d.pop("timeline", None)
            out.append({"clip": str(clip), **d})
        elif fmt == "csv":
            rows = res.rows(args.table)
            if rows and writer is None:
                writer = SafeDictWriter(sys.stdout, fieldnames=list(rows[0]), lineterminator="\n")  # formulas escaped
                writer.writeheader()
            if writer is not None:
                writer.writerows(rows)
            sys.stdout.flush()
        else:
            top = "  ".join(f"{k} {v:.2f}" for k, v in res.top(3))
            label = res.label if res.label is not None else "(no face)"
            user = f"\tuser={res.user}" if res.user else ""
            print(f"{clip}\t{label}\t{top}\tfaces {res.faces}/{res.frames}{user}", flush=True)
    if fmt == "json":  # one shape: an array of one object per clip, in the order given, one clip too
        json.dump(out, sys.stdout, indent=2)
        print()
    if failed and fmt != "csv" and not sys.stdout.isatty():
        log.error("%d of %d clip(s) could not be analysed (errors in the output)", failed, len(args.clips))
    return 1 if failed else 0


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name the same file (any spelling, symlink or hard link)."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def cmd_annotate(args: argparse.Namespace) -> int:
    """Write the annotated video to a temporary file beside the output and rename it over the
    output only when every frame was written: the input is never the output, and a failure
    (codec, container, decoding) leaves a pre-existing output file as it was."""
    from ._paths import as_path
    from .annotate import annotated_frames, default_fourcc, open_writer
    from .video import Sampling, video_info

    src = as_path(args.clip, "clip")
    out = as_path(args.output, "output").expanduser()
    if _same_file(src, out) or os.path.abspath(src) == os.path.abspath(out):
        raise InvalidInputError(f"the output {out} is the input clip: choose another file name")
    if not out.parent.is_dir():
        raise InvalidInputError(f"the output's directory {out.parent} does not exist")
    if out.is_dir():
        raise InvalidInputError(f"the output {out} is a directory")
    rec = _recognizer(args)
    try:
        fps = video_info(src)["fps"] or 25.0
    except EmoadaptError:
        fps = 25.0
    if args.fps:
        fps = min(fps, args.fps)
    # the suffix is kept: OpenCV picks the container from it
    try:
        fd, name = tempfile.mkstemp(dir=out.parent, prefix=".emoadapt-annotate-", suffix=f".part{out.suffix[:32]}")
    except OSError as e:
        raise InvalidInputError(f"cannot write in {out.parent}: {e.strerror or e}") from e
    os.close(fd)
    tmp = Path(name)
    writer = None
    n_faces = n_frames = 0
    ok = False
    try:
        frames = annotated_frames(rec, src, sampling=Sampling(fps=args.fps, max_frames=args.max_frames), window=args.window or None)
        fourcc = args.fourcc or default_fourcc(out)
        for _, img, faces in _bar(args, frames, unit="frame"):
            if writer is None:
                h, w = img.shape[:2]
                writer = open_writer(tmp, fps, (w, h), fourcc, quiet=args.verbose < 2)  # OpenCV's own notices kept at -vv
                if writer is None:
                    log.error("cannot write %s with codec %s (container %r): %s left unchanged", out.name, fourcc, out.suffix, out)
                    return 1
            n_faces += len(faces)
            writer.write(img)
            n_frames += 1
        if writer is not None:
            writer.release()
            writer = None
        if n_frames == 0 or tmp.stat().st_size == 0:
            log.error("%s: nothing was written; %s left unchanged", src, out)
            return 1
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp made it 0600: the output follows the umask, as a new file would
        os.replace(tmp, out)
        ok = True
    except EmoadaptError as e:
        log.error("%s: %s (%s left unchanged)", src, e, out)
        return 1
    finally:
        if writer is not None:
            writer.release()
        if not ok:
            tmp.unlink(missing_ok=True)
    print(f"wrote {out} ({n_frames} frames, {n_faces} faces labelled)")
    return 0


def _umask() -> int:
    """The process's umask (read by setting it and back: the command line owns its process)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fourcc(value: str) -> str:
    """argparse type of ``--fourcc``: exactly four printable ASCII characters."""
    if len(value) != 4 or not all(32 <= ord(c) < 127 for c in value):
        raise argparse.ArgumentTypeError(f"a FourCC is exactly 4 printable ASCII characters (e.g. mp4v, MJPG, XVID), got {value!r}")
    return value


def _face(value: str) -> int | tuple[float, float, float, float]:
    """argparse type of ``enroll --face``: a face's index, or its box ``X1,Y1,X2,Y2``."""
    try:
        if "," not in value:
            return int(value)
        box = tuple(float(v) for v in value.split(","))
    except ValueError:
        box = ()
    if len(box) != 4:
        raise argparse.ArgumentTypeError(f"--face takes a face's index (0, 1, ...) or its box X1,Y1,X2,Y2 in pixels, got {value!r}")
    return box  # four floats


def cmd_enroll(args: argparse.Namespace) -> int:
    from .errors import IdentityConflictError, MultipleFacesError

    _user(args)
    rec = _recognizer(args)
    clips = [Path(c) for c in args.clips]
    try:
        n = rec.enroll(args.user, clips, face=args.face, allow_shared_face=args.allow_shared_face, **_sampling(args))
    except MultipleFacesError as e:
        _list_faces(clips[e.item], e.faces, "enrol")
        return 2
    except IdentityConflictError as e:  # this computer's user may know who is enrolled (emoadapt users)
        log.error(
            "%s: the face already matches the enrolled user %r (similarity %.4f); --allow-shared-face enrols it anyway", args.user, e.other_user, e.similarity
        )
        return 1
    where = f" (the enrolled user {n.user})" if n.user != args.user else ""
    print(f"enrolled {args.user}{where}: {n} face embedding(s) added")
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    from .extract import extract

    kw = {} if args.backbone is None else {"backbone": args.backbone}
    rep = extract(args.input, args.output, workers=args.workers, scheduler=args.scheduler, fps=args.fps,
                  max_frames=args.max_frames, retry_errors=args.retry_errors, progress=False if args.quiet else None,
                  detect_every=args.detect_every, **kw)  # fmt: skip
    print(
        f"{rep.out}: {rep.done} clips analysed ({rep.errors} errors, {rep.frames} frames), {rep.skipped} done before"
        + (f", {rep.lost} not finished: rerun to resume" if rep.lost else "")
        + f"; {rep.seconds:.1f} s"
    )
    return 1 if rep.lost else 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn  # noqa: F401 - checked here, used by web.serve

        from . import web
    except ImportError:
        log.error("%s", MissingDependencyError.for_extra("emoadapt serve (Starlette and uvicorn)", "serve"))
        return 1
    try:
        hosts = web.allowed_hosts_for(args.host, args.allowed_host or ())
    except InvalidInputError as e:
        log.error("%s", e)
        return 2
    rec = _recognizer(args, adapt_every=args.adapt_every)
    if args.host not in web.LOOPBACK_HOSTS:
        log.warning("serving on %s: anyone who can reach this address can use the app, its camera clips and the users' data", args.host)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"emoadapt serve: http://{shown}:{args.port}/ (Ctrl-C stops)", flush=True)
    print(f"answering the host names: {', '.join(sorted(hosts))} (--allowed-host adds one)", flush=True)
    web.serve(
        rec,
        host=args.host,
        port=args.port,
        allowed_hosts=hosts,
        max_upload_mb=args.max_upload_mb,
        max_seconds=args.max_seconds,
        fps=args.fps,
        log_level="info" if args.verbose else "warning",
    )
    return 0


def _live_source(args: argparse.Namespace) -> tuple[Any, float | None]:
    """``emoadapt live``'s source for :meth:`Recognizer.stream`: a camera index, a path, or with
    ``--loop`` a generator replaying the file endlessly (with the file's frame rate)."""
    if args.source.isdigit():
        if args.loop:
            raise InvalidInputError("--loop applies to a video file, not a camera")
        return int(args.source), None
    if not args.loop:
        return args.source, None
    from .video import Sampling, iter_frames, source_rate

    rate = source_rate(args.source)

    def frames() -> Iterator[Any]:
        while True:
            for fr in iter_frames(args.source, sampling=Sampling()):
                yield fr.image

    return frames(), rate


def _window_line(res: Any) -> str:
    """One text line per stream window: times, main face's label, top 3, faces, other faces."""
    label = res.label if res.label is not None else "(no face)"
    top = "  ".join(f"{k} {v:.2f}" for k, v in res.top(3))
    user = f"\tuser={res.user}" if res.user else ""
    more = f"\t+{len(res.tracks) - 1} face(s)" if len(res.tracks) > 1 else ""
    return f"{res.start:.2f}-{res.end:.2f}s\t{label}\t{top}\tfaces {res.faces}/{res.frames}{user}{more}"


def cmd_live(args: argparse.Namespace) -> int:
    """Stream windows until the source ends, ``--max-windows`` or Ctrl-C (exit status 130,
    no traceback: :func:`main`)."""
    source, rate = _live_source(args)
    rec = _recognizer(args)
    kw: dict[str, Any] = {"window": args.window, "hop": args.hop, "fps": args.fps}
    if rate is not None:
        kw["source_fps"] = rate
    stream = rec.stream(source, **kw)
    try:
        for n, res in enumerate(stream, 1):
            if args.format == "json":
                d = res.to_dict()
                d.pop("timeline")
                if len(res.tracks) > 1:
                    d["tracks"] = [{k: v for k, v in t.to_dict().items() if k != "timeline"} for t in res.tracks]
                print(json.dumps(d), flush=True)
            else:
                print(_window_line(res), flush=True)
            if args.max_windows is not None and n >= args.max_windows:
                break
    finally:
        stream.close()
        rec.close()
    return 0


def _positive(value: str) -> float:
    """argparse type of the serve limits: a positive finite number."""
    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not (v > 0 and v < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {value!r}")
    return v


def _port(value: str) -> int:
    """argparse type of ``--port``: 1-65535."""
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise argparse.ArgumentTypeError(f"a port is a number from 1 to 65535, got {value!r}")
    return int(value)


# -- parser -----------------------------------------------------------------------------------
_COMMON = ("home", "backbone", "identity", "verbose", "quiet")


def _emotion_backbones() -> list[str] | None:
    """Emotion backbones of the manifest (``None`` when it cannot be read: the Recognizer then
    reports the problem)."""
    try:
        from .zoo import manifest

        return sorted(k for k, v in manifest()["models"].items() if v.get("kind") == "emotion_backbone")
    except (EmoadaptError, AttributeError, KeyError, TypeError):
        return None


def _add_common(p: argparse.ArgumentParser, *, top: bool) -> None:
    """Options every command takes, before or after the command's name.

    On the subcommands they default to SUPPRESS and land in ``sub_*`` attributes, so that a
    value given after the command overrides one given before it and an absent one leaves it
    alone; :func:`_merge_common` then combines them.
    """
    g = p.add_argument_group("common options (before or after the command)")
    pre = "" if top else "sub_"
    dflt: dict[str, Any] = {} if top else {"default": argparse.SUPPRESS}
    backbones = _emotion_backbones()
    g.add_argument(
        "--home",
        dest=pre + "home",
        metavar="DIR",
        **dflt,
        help="user data directory: enrolments, corrections, personal heads (default: $EMOADAPT_HOME, else $XDG_DATA_HOME/emoadapt or ~/.local/share/emoadapt)",
    )
    g.add_argument(
        "--backbone",
        dest=pre + "backbone",
        choices=backbones,
        metavar="NAME",
        **dflt,
        help="emotion backbone" + (f", one of: {', '.join(backbones)}" if backbones else "") + " (default: the manifest's default)",
    )
    g.add_argument(
        "--identity",
        dest=pre + "identity",
        choices=("mobilefacenet", "dlib_resnet"),
        metavar="NAME",
        **({"default": "mobilefacenet"} if top else dflt),
        help="identity model that recognises enrolled users: mobilefacenet (default) or dlib_resnet; users enrolled with the other one must be re-enrolled",
    )
    g.add_argument(
        "-v",
        "--verbose",
        dest=pre + "verbose",
        action="count",
        **({"default": 0} if top else dflt),
        help="more messages: -v progress information, -vv debugging, including the video decoder's and OpenCV's own",
    )
    g.add_argument(
        "-q", "--quiet", dest=pre + "quiet", action="store_true", **({"default": False} if top else dflt), help="no progress bars and no warnings, only errors"
    )


def _merge_common(args: argparse.Namespace) -> argparse.Namespace:
    for name in _COMMON:
        sub = getattr(args, "sub_" + name, None)
        if sub is not None:
            if name == "verbose":
                sub += args.verbose
            setattr(args, name, sub)
        if hasattr(args, "sub_" + name):
            delattr(args, "sub_" + name)
    return args


def build_parser() -> argparse.ArgumentParser:
    """The ``emoadapt`` argument parser (also what the documentation's CLI page is made from)."""
    from . import __version__

    ap = argparse.ArgumentParser(prog="emoadapt", description="On-device, personalized facial-emotion recognition in video.")
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}", help="print the version and exit")
    _add_common(ap, top=True)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands", help="what to do (emoadapt COMMAND --help for its options)")

    def command(name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=description or help[0].upper() + help[1:] + ".")
        _add_common(p, top=False)
        return p

    def sampling(p: argparse.ArgumentParser) -> None:
        g = p.add_argument_group("frame sampling")
        g.add_argument("--fps", type=float, metavar="RATE", help="analyse about RATE frames per second of video (default: every frame)")
        g.add_argument("--max-frames", type=int, metavar="N", help="analyse at most N frames per clip (default: all)")

    p = command(
        "predict",
        "predict the emotion of each clip",
        "Predict the emotion of each clip: one text line or CSV rows per clip, or with --format json one "
        "JSON array of one object per clip (for one clip too). "
        "Faces are tracked; a recognised enrolled user's personal head is used for their face.",
    )
    p.add_argument("clips", nargs="+", metavar="CLIP", help="video or image files")
    p.add_argument(
        "--format",
        choices=("text", "json", "csv"),
        default="text",
        help="output: text (one line per clip, default), json, or csv (one row per face per frame, or per face track with --table clips)",
    )
    p.add_argument("--json", dest="format", action="store_const", const="json", help="same as --format json")
    p.add_argument(
        "--timeline",
        action="store_true",
        help="include each clip's per-frame results in JSON output: index, time (seconds), box, score, probabilities (needs --format json)",
    )
    p.add_argument(
        "--table",
        choices=("frames", "clips"),
        default="frames",
        help="with --format csv: one row per face per frame (frames, default) or per face track of each clip (clips)",
    )
    sampling(p)
    p.set_defaults(func=cmd_predict)

    p = command(
        "annotate",
        "write the video with each face boxed and labelled",
        "Write the video with each face boxed and labelled with its emotion, as predict analyses it "
        "(face tracks, personal heads of recognised users); one label per face track and window.",
    )
    p.add_argument("clip", metavar="CLIP", help="the video to annotate")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="FILE", help="the annotated video to write")
    p.add_argument(
        "--fourcc",
        type=_fourcc,
        metavar="CODE",
        help="four-character video codec of the output (default: by its suffix, what browsers play: "
        ".mp4 VP9 (vp09), .webm VP8 (VP80); any other suffix mp4v, which desktop players play and browsers do not)",
    )
    p.add_argument(
        "--window",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="a face's label is decided per window of this many seconds (default 1; 0: one label per face track)",
    )
    sampling(p)
    p.set_defaults(func=cmd_annotate)

    def face_option(p: argparse.ArgumentParser, verb: str, default: str) -> None:
        p.add_argument(
            "--face",
            type=_face,
            metavar="INDEX|X1,Y1,X2,Y2",
            help=f"which face to {verb} where a clip shows several: its index, as listed when there are several, or its box in pixels ({default})",
        )

    p = command("enroll", "register a user's face from clips or photos")
    p.add_argument("user", metavar="USER", help="the user's name")
    p.add_argument("clips", nargs="+", metavar="CLIP", help="videos or photos of the user's face (one embedding each)")
    face_option(p, "enrol", "without it such a clip is refused")
    p.add_argument("--allow-shared-face", action="store_true", help="enrol the face even if it already matches another enrolled user")
    sampling(p)
    p.set_defaults(func=cmd_enroll)

    from .labels import CANONICAL

    p = command(
        "correct",
        f"record the true emotion of a clip (personalization feedback): {', '.join(CANONICAL)}",
        "Record the true emotion of a clip. LABEL is one of: "
        + ", ".join(CANONICAL)
        + "; a synonym of one (anger, mad, disgusted, afraid, scared, fearful, joy, happiness, sadness, "
        "surprised, ...; any case); or a custom label the user already has. Anything else is refused "
        "unless --new-label is given.",
    )
    p.add_argument("clip", metavar="CLIP", help="the video or image")
    p.add_argument("label", metavar="LABEL", help=f"its true emotion: one of {', '.join(CANONICAL)}, a synonym, or the user's custom label")
    p.add_argument("--user", help="whose correction (default: recognised from the face); a new name is enrolled from the clip")
    p.add_argument("--force", action="store_true", help="record it even if the face does not match --user")
    p.add_argument("--new-label", action="store_true", help="accept a label that is not known yet as a new class of the user's head")
    p.add_argument("--adapt-every", type=int, default=5, metavar="N", help="fine-tune after every N new corrections (0: never; default 5)")
    face_option(p, "correct", "default: the main face; a new USER is enrolled only from a face chosen")
    sampling(p)
    p.set_defaults(func=cmd_correct)

    def user_report(name: str, help: str, description: str, json_help: str, func: Callable[[argparse.Namespace], int]) -> None:
        """A command about one enrolled USER that prints plain words, or JSON with --json."""
        p = command(name, help, description)
        p.add_argument("user", metavar="USER", help="an enrolled user")
        p.add_argument("--json", action="store_true", help=json_help)
        p.set_defaults(func=func)

    user_report(
        "adapt",
        "adapt a user's personal model to their corrections now",
        "Adapt a user's personal model to their corrections now (a new version is made and checked): prints, in "
        "plain words, which model answers for them and how sure it is; -v adds the check's figures, --json the "
        "full report. To look without training, use emoadapt models USER.",
        "print the adaptation report as JSON (with its plain-words explanation)",
        cmd_adapt,
    )
    user_report(
        "models",
        "show a user's personal models and their evidence, without training",
        "Show a user's corrections (per emotion, and how many no model has learnt from yet) and every version of "
        "their personal model: which is active, what it does in plain words and how it did on corrections it had "
        "not seen. Nothing is trained or written; -v adds each candidate's figures, --json everything.",
        "print it as JSON",
        cmd_models,
    )

    p = command(
        "export",
        "write a user's model (or the universal one) as a TFLite file for phone apps",
        "Write the head predict uses for USER (their personal model; without USER, the universal model for "
        "strangers) into DIR as a TFLite model and a JSON manifest beside it (classes, inputs, the backbone and "
        "identity model it expects, sha256): an Android or iOS app runs it with LiteRT on the shipped backbone's "
        "outputs (docs/mobile.md). A user without a personal model yet gets the universal model.",
    )
    p.add_argument("user", metavar="USER", nargs="?", help="an enrolled user (default: none, the universal model)")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="DIR", help="the folder to write into (made if missing)")
    p.set_defaults(func=cmd_export)

    p = command(
        "extract", "analyse a corpus of clips into a resumable Parquet dataset",
        "Analyse every clip of INPUT with the universal model and write OUT/frames (one row per analysed "
                    "frame and face track: box, landmarks, probabilities, backbone features) and OUT/clips (one row per "
                    "clip: label, probabilities, frames, faces, error). Clips already done in OUT are skipped; a clip that "
                    "fails is recorded with its error. Needs pyarrow (pip install -e '.[extract]' in the checkout).")  # fmt: skip
    p.add_argument("input", help="a folder (searched recursively for videos and images), a manifest (.csv with a 'path' "
                                 "column and optional 'label' and 'user' columns, or .txt with one path per line), a glob "
                                 "pattern (quote it; videos and images only) or one file")  # fmt: skip
    p.add_argument(
        "-o",
        "--output",
        required=True,
        type=Path,
        help="output folder of the Parquet dataset: new, empty, or one an earlier extract made (reruns resume; any other non-empty folder is refused)",
    )
    p.add_argument("--workers", type=int, default=None, help="local worker processes (default: the CPU count; 1: this process)")
    p.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="run on this Dask scheduler instead of local processes "
                                                                 "(needs the dask extra; OUTPUT must be visible to every worker)")  # fmt: skip
    p.add_argument("--detect-every", type=int, default=10, help="full face detection at least every this many frames, tracking between (default 10)")
    p.add_argument("--retry-errors", action="store_true", help="also redo the clips an earlier run recorded with an error")
    sampling(p)
    p.set_defaults(func=cmd_extract)

    p = command("users", "list enrolled users")
    p.set_defaults(func=cmd_users)

    p = command("forget", "delete every trace of a user")
    p.add_argument("user", metavar="USER", help="the user to delete (profile, embeddings, corrections, heads)")
    p.set_defaults(func=cmd_forget)

    p = command(
        "serve",
        "run the validation-mode web app (needs the serve extra)",
        "Run the validation-mode web app: record a clip from the webcam or upload one, see the emotion, confirm "
        "or correct it (personalization feedback), enrol, see your corrections and personal model, forget "
        'yourself. Needs the serve extra: pip install -e ".[serve]" in the checkout. Binds 127.0.0.1 by default; writes '
        "need the page's token and its origin; uploads live in a temporary file only while analysed.",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this computer only; another address lets anyone who can reach it use the app)",
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        metavar="NAME",
        help="a host name or address browsers may use for this server besides the loopback names and --host (repeatable); "
        "needed with --host 0.0.0.0 or ::, where requests naming any other host are refused (DNS rebinding)",
    )
    p.add_argument("--port", type=_port, default=8765, help="TCP port (default 8765)")
    p.add_argument("--max-upload-mb", type=_positive, default=20.0, metavar="MB", help="largest clip or photo accepted, in megabytes (default 20)")
    p.add_argument(
        "--max-seconds",
        type=_positive,
        default=10.0,
        metavar="SECONDS",
        help="longest clip accepted, in seconds (default 10): longer ones are refused, or cut there when their container does not say",
    )
    p.add_argument("--fps", type=_positive, metavar="RATE", help="analyse about RATE frames per second of video (default: every frame)")
    p.add_argument(
        "--adapt-every",
        type=int,
        default=5,
        metavar="N",
        help="fine-tune a user's model after every N new corrections (0: only with the page's Adapt button; default 5)",
    )
    p.set_defaults(func=cmd_serve)

    p = command(
        "live",
        "recognise emotions live from a camera or a video, one line per window",
        "Recognise emotions continuously from a camera or a video: every HOP seconds, the emotion of each face "
        "over the last WINDOW seconds (the main face on the line, with how many other faces), as predict "
        "would see those frames (face tracks, personal heads of recognised users). Each frame is analysed "
        "once. Ctrl-C stops (exit status 130).",
    )
    p.add_argument("source", metavar="SOURCE", help="a camera index (0 is the first camera) or a video file")
    p.add_argument("--window", type=_positive, default=2.0, metavar="SECONDS", help="length of each window in seconds (default 2)")
    p.add_argument("--hop", type=_positive, default=0.5, metavar="SECONDS", help="a window every this many seconds (default 0.5)")
    p.add_argument("--fps", type=_positive, metavar="RATE", help="analyse about RATE frames per second (default: every frame)")
    p.add_argument("--format", choices=("text", "json"), default="text", help="output: text (one line per window, default) or json (one JSON object per line)")
    p.add_argument("--json", dest="format", action="store_const", const="json", help="same as --format json")
    p.add_argument("--loop", action="store_true", help="replay a video file endlessly (a stand-in for a camera)")
    p.add_argument("--max-windows", type=int, metavar="N", help="stop after N windows (default: when the source ends)")
    p.set_defaults(func=cmd_live)
    return ap


def _check(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Option combinations argparse cannot express (reported like argparse's own errors)."""
    if args.command == "predict":
        ap = next(p for p in _subparsers(ap) if p.prog.endswith(" predict"))
        if args.timeline and args.format != "json":
            ap.error("--timeline applies to --format json only (--format csv is one row per frame already)")
        if args.table != "frames" and args.format != "csv":
            ap.error("--table applies to --format csv only")


# -- messages ---------------------------------------------------------------------------------
def cli_message(e: BaseException, parser: argparse.ArgumentParser) -> str:
    """An exception's message in the CLI's words: a Python argument the message names
    (``user=``, ``force=True``) becomes the command's option (``--user``, ``--force``)."""
    flags: dict[str, str] = {}
    for p in [parser, *_subparsers(parser)]:
        for a in p._actions:
            long = [o for o in a.option_strings if o.startswith("--")]
            if long and a.dest not in flags:
                flags[a.dest] = long[0]

    def sub(m: re.Match[str]) -> str:
        flag = flags.get(m.group(1))
        if flag is None:
            return m.group(0)
        return flag if m.group(2) else f"{flag} {m.group(1).upper()}"

    return re.sub(r"\b([a-z_]+)=(True)?(?![\w'\"])", sub, str(e))


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    return [p for a in parser._actions if isinstance(a, argparse._SubParsersAction) for p in a.choices.values()]


class _Formatter(logging.Formatter):
    """``emoadapt: error: message`` (with the logger's name when verbose)."""

    def __init__(self, verbose: int) -> None:
        super().__init__()
        self.verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        where = f" [{record.name}]" if self.verbose else ""
        msg = f"emoadapt: {record.levelname.lower()}{where}: {record.getMessage()}"
        if record.exc_info and self.verbose > 1:
            msg += "\n" + self.formatException(record.exc_info)
        return msg


def quiet_native_logs(verbose: int = 0) -> None:
    """Silence what FFmpeg and OpenCV print to stderr themselves (their failures reach us as
    errors and return values, which emoadapt reports in its own words); kept at -vv.

    The TFLite runtime's routine notice is filtered where interpreters are made: the command
    line owns its process, so it opts in (``emoadapt.zoo.default_pool().quiet_native``), which
    the library never does by itself."""
    if verbose >= 2:
        return
    from . import zoo

    zoo.default_pool().quiet_native = True
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET; read at the first capture
    os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")
    import cv2

    with contextlib.suppress(AttributeError, cv2.error):
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.ERROR if args.quiet else logging.WARNING - 10 * min(args.verbose, 2)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(args.verbose))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


@contextlib.contextmanager
def _logs_beside_bars(args: argparse.Namespace) -> Iterator[None]:
    """While a progress bar may be on screen, log lines are written above it, not into it."""
    if not _show_progress(args):
        yield
        return
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm():
        yield


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = _merge_common(ap.parse_args(argv))
    _check(ap, args)
    args.parser = ap
    _setup_logging(args)
    quiet_native_logs(args.verbose)
    try:
        with _logs_beside_bars(args):
            return int(args.func(args) or 0)
    except EmoadaptError as e:
        log.error("%s", cli_message(e, ap), exc_info=args.verbose > 1)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
