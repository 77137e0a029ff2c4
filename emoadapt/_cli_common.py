"""What the command handlers share: the Recognizer the flags ask for, sampling flags, progress bars, user names, plurals."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterable
from typing import Any, TypeVar

log = logging.getLogger("emoadapt.cli")

T = TypeVar("T")


def _recognizer(args: argparse.Namespace, **kw: Any):
    from .recognizer import Recognizer

    # the command line owns its process: OpenCV on one thread (many small operations, see
    # Recognizer's opencv_threads)
    kw.setdefault("opencv_threads", 1)
    return Recognizer(home=args.home, backbone=args.backbone, identity=args.identity, **kw)


def _sampling(args: argparse.Namespace) -> dict[str, Any]:
    return {"fps": args.fps, "max_frames": args.max_frames}


def _show_progress(args: argparse.Namespace) -> bool:
    """Progress bars only on a terminal (never into a pipe or a log file) and never with -q."""
    return not args.quiet and sys.stderr.isatty()


def _bar(args: argparse.Namespace, items: Iterable[T], **kw: Any) -> Iterable[T]:
    if not _show_progress(args):
        return items
    from tqdm.auto import tqdm

    return tqdm(items, leave=False, file=sys.stderr, dynamic_ncols=True, **kw)


def _user(args: argparse.Namespace) -> None:
    """Normalise ``args.user`` (what the library stores and looks up) before anything else:
    an invalid name fails before the models load, and messages show the stored name."""
    from .store import normalize_user_name

    if getattr(args, "user", None) is not None:
        args.user = normalize_user_name(args.user)


def _plural(n: int, word: str, plural: str | None = None) -> str:
    """``"1 correction"``, ``"2 corrections"``."""
    return f"{n} {word if n == 1 else plural or word + 's'}"


def _list_faces(item: object, faces: list[dict[str, Any]], verb: str) -> None:
    """Say which faces a clip showed (a MultipleFacesError) and how to choose one with --face."""
    print(f"{item}: {len(faces)} faces; {verb} one of them with --face INDEX (or --face X1,Y1,X2,Y2):")
    for f in faces:
        x1, y1, x2, y2 = (round(float(v)) for v in f["box"])
        print(f"  face {f['index']}: box ({x1}, {y1})-({x2}, {y2}), {f['size']} px, {f['frames']} frame(s)")
