"""Bad paths, bad constructor values and unknown keyword arguments: every one is an
``EmoadaptError`` subclass (InvalidInputError, VideoDecodeError, StoreError), never a raw
``OSError`` / ``PermissionError`` / ``TypeError`` / ``ValueError`` / ``RuntimeError``.

The path cases are ones that really fail when the tests run as root (a name over 255 bytes,
a path under a regular file, a symlink loop, a path-like object whose ``__fspath__`` returns
bytes or raises); the permission cases (an unreadable directory, a home that cannot be
entered) are skipped as root, which bypasses file modes.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

import emoadapt
from emoadapt.detection import MTCNN
from emoadapt.errors import InvalidInputError, StoreError, VideoDecodeError
from emoadapt.features import Backbone
from emoadapt.video import video_info

ROOT_USER = hasattr(os, "geteuid") and os.geteuid() == 0
needs_non_root = pytest.mark.skipif(ROOT_USER, reason="root bypasses file modes: a chmod 000 directory stays readable")


class BytesPath:
    def __init__(self, p: str) -> None:
        self.p = p

    def __fspath__(self) -> bytes:
        return os.fsencode(self.p)


class RaisingPath:
    def __fspath__(self) -> str:
        raise RuntimeError("the network share went away")


def _paths(tmp_path: Path, clip_path: Path) -> dict[str, object]:
    loop = tmp_path / "loop.mp4"
    if not loop.is_symlink():
        os.symlink(loop, loop)
    return {
        "name over 255 bytes": str(tmp_path / ("a" * 256 + ".mp4")),
        "255 multibyte characters": str(tmp_path / ("\u00e9" * 130 + ".mp4")),  # 260 bytes in UTF-8
        "directory name over 255 bytes": str(tmp_path / ("d" * 300) / "clip.mp4"),
        "path over 4096 bytes": str(tmp_path / "/".join(["x" * 200] * 25) / "clip.mp4"),
        "path under a regular file": str(clip_path) + "/clip.mp4",
        "symlink loop": loop,
        "PathLike returning bytes": BytesPath(str(clip_path)),
        "PathLike raising": RaisingPath(),
        "NUL character": str(clip_path) + "\0.mp4",
        "lone surrogate": str(tmp_path / "\ud800.mp4"),
        "not a path (int)": 3,
    }


PATH_CASES = [
    "name over 255 bytes",
    "255 multibyte characters",
    "directory name over 255 bytes",
    "path over 4096 bytes",
    "path under a regular file",
    "symlink loop",
    "PathLike returning bytes",
    "PathLike raising",
    "NUL character",
    "lone surrogate",
]


@pytest.mark.parametrize("case", PATH_CASES)
def test_bad_clip_paths(recognizer, tmp_path, clip_path, case):
    p = _paths(tmp_path, clip_path)[case]
    with pytest.raises((InvalidInputError, VideoDecodeError)) as e:
        recognizer.predict(p)
    assert str(e.value)
    with pytest.raises((InvalidInputError, VideoDecodeError)):
        video_info(p)  # type: ignore[arg-type]


@pytest.mark.parametrize("case", PATH_CASES + ["not a path (int)"])
def test_bad_home_paths(tmp_path, clip_path, case):
    """A home that cannot be a directory fails when the Recognizer is made (a bad value) or
    when the store is first needed (StoreError), never with a raw OSError/TypeError."""
    home = _paths(tmp_path, clip_path)[case]
    try:
        rec = emoadapt.Recognizer(home=home)  # type: ignore[arg-type]
    except InvalidInputError:
        return
    with pytest.raises((StoreError, InvalidInputError)):
        rec.enroll("alice", clip_path, max_frames=3)
    try:
        users = rec.users()
    except StoreError:  # a home that cannot be looked into
        return
    assert users == []  # a home that does not exist has no users


@needs_non_root
def test_unreadable_directory_and_home_that_cannot_be_entered(tmp_path, clip_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "clip.flv").write_bytes(clip_path.read_bytes())
    locked.chmod(0)
    try:
        rec = emoadapt.Recognizer(home=locked / "home")
        with pytest.raises(VideoDecodeError):
            rec.predict(locked / "clip.flv")
        with pytest.raises(StoreError):
            rec.users()
        with pytest.raises(StoreError):
            rec.enroll("alice", clip_path, max_frames=3)
    finally:
        locked.chmod(0o700)


BAD_CONSTRUCTOR = {
    "identity_threshold": ["x", math.nan, 2.0, True, [0.9]],
    "num_threads": [10**9, -3, 0, 2.5, "2", True],
    "min_face_score": ["x", math.nan, 1.5, -0.1],
    "max_faces": ["x", 0, -1, 2.5],
    "chunk": [None, 0, 10**9, "32"],
    "identity_frames": ["x", 0],
    "detect_every": [0, "10", 1.5],
    "opencv_threads": [-1, "x", 10**9],
    "adapt_every": [-1, "x", 1.5, True],
    "min_face_size": ["x", 0, math.inf],
    "backbone": [3, b"emoadapt_fer_int8", ["emoadapt_fer_int8"]],
    "home": [b"/tmp/x", BytesPath("/tmp/x"), RaisingPath(), "", 3.5],
}


@pytest.mark.parametrize("arg,value", [(k, v) for k, vs in BAD_CONSTRUCTOR.items() for v in vs], ids=repr)
def test_bad_constructor_values(tmp_path, arg, value):
    kw = {"home": tmp_path / "home", arg: value}
    with pytest.raises(InvalidInputError, match=arg if arg != "home" else "home"):
        emoadapt.Recognizer(**kw)
    assert not (tmp_path / "home").exists()


@pytest.mark.parametrize(
    "make",
    [
        lambda: Backbone(num_threads=10**9),
        lambda: Backbone(num_threads=-3),
        lambda: Backbone(batch_size="x"),
        lambda: Backbone(batch_size=0),
        lambda: MTCNN(num_threads=10**9),
        lambda: MTCNN(num_threads="1"),
        lambda: __import__("emoadapt.identity").identity.FaceEmbedder(num_threads=-3),
    ],
    ids=[
        "backbone threads 1e9",
        "backbone threads -3",
        "backbone batch x",
        "backbone batch 0",
        "mtcnn threads 1e9",
        "mtcnn threads str",
        "embedder threads -3",
    ],
)
def test_bad_model_constructor_values(make):
    with pytest.raises(InvalidInputError):
        make()


def test_unknown_keyword_arguments_are_refused_before_any_work(recognizer, clip_path, portrait):
    # the Recognizer's methods spell out their keywords (mypy checks callers): Python refuses
    # an unknown one before the call starts, as for predict
    calls = {
        "predict": lambda: recognizer.predict(clip_path, frames=3),
        "enroll": lambda: recognizer.enroll("kw-user", clip_path, frames=3),
        "correct": lambda: recognizer.correct(clip_path, "happy", user="kw-user", max_frame=3),
        "frame_features": lambda: recognizer.frame_features(clip_path, maxframes=3),
        "adapt": lambda: recognizer.adapt("kw-user", epoch=3),
    }
    for call in calls.values():
        with pytest.raises(TypeError, match="unexpected keyword"):
            call()
    with pytest.raises(InvalidInputError, match="unexpected keyword"):
        recognizer.detector.detect_batch([portrait], min_size=20)
    assert "kw-user" not in recognizer.users()
