"""Uploads: where a clip lives during its request, what of it is analysed, and the limits.

Each process keeps its uploads in one private directory per base directory
(:class:`UploadDirs`), named ``emoadapt-uploads-<pid>-<random>`` and locked (flock on its
``.lock`` file) while the process lives: the lock goes with the process however it ends, so the
next server removes the directories whose lock it can take (:func:`sweep_uploads`). Where the
system allows it (Linux), the upload itself is a file without a name
(``tempfile.TemporaryFile``), read through a link to ``/proc/<pid>/fd/<n>``: a killed process
leaves no byte of it, at most a dangling link. What is analysed of a video upload is bounded
whatever its container declares (:class:`UploadFrames`, :func:`clip_to_analyse`).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import math
import os
import re
import secrets
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any

from starlette.requests import Request

from .. import errors as _err
from .._lazy import ProcessDefault
from .serialization import ApiError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no stale upload directories are swept
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DEFAULT_MAX_UPLOAD_MB",
    "DEFAULT_MAX_SECONDS",
    "MAX_CLIP_FPS",
    "MAX_CLIP_FRAME_PIXELS",
    "Limits",
    "UploadDirs",
    "default_upload_dirs",
    "sweep_uploads",
    "receive_upload",
    "UploadFrames",
    "clip_to_analyse",
    "display_name",
    "upload_file_name",
]

log = logging.getLogger(__package__)

DEFAULT_MAX_UPLOAD_MB = 20.0
"""Largest upload accepted by default (megabytes)."""
DEFAULT_MAX_SECONDS = 10.0
"""Longest clip analysed by default (seconds)."""
MAX_CLIP_FPS = 60.0
"""Frames a second of clip may hold: at most ``max_seconds * MAX_CLIP_FPS`` frames of an upload
are decoded, whatever rate and length its container declares (a faster clip is cut)."""
MAX_CLIP_FRAME_PIXELS = 1920 * 1080
"""Pixels a frame of those may have on average: an upload's decoded frames hold at most
``max_seconds * MAX_CLIP_FPS * MAX_CLIP_FRAME_PIXELS`` pixels in all (the first frame is always
decoded), so larger frames mean fewer of them."""

_UPLOADS_PREFIX = "emoadapt-uploads-"
_UPLOADS_RE = re.compile(r"^emoadapt-uploads-(\d+)-[A-Za-z0-9_]+$")
_NEW_UPLOADS_RE = re.compile(r"^\.emoadapt-uploads-new-(\d+)-[A-Za-z0-9_]+$")
_LOCK_NAME = ".lock"


@dataclasses.dataclass
class Limits:
    """What an app accepts of an upload."""

    max_upload_bytes: int
    max_seconds: float
    fps: float | None
    """Frames a second analysed (``None``: every frame)."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


def sweep_uploads(base: str | os.PathLike[str] | None = None) -> list[Path]:
    """Remove the upload directories under ``base`` (default: the system's temporary
    directory) that processes which ended without cleaning up left behind (a killed server);
    returns them. A directory is removed only when its owner's lock is free, i.e. its process
    is gone (a running server's directory is never touched). Needs ``fcntl`` (POSIX)."""
    if fcntl is None:  # pragma: no cover - Windows
        return []
    root = Path(tempfile.gettempdir() if base is None else os.fspath(base))
    try:
        entries = list(os.scandir(root))
    except OSError:
        return []
    removed = []
    for entry in entries:
        if _UPLOADS_RE.match(entry.name):
            if not entry.is_dir(follow_symlinks=False):
                continue
            try:
                fd = os.open(os.path.join(entry.path, _LOCK_NAME), os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
            except FileNotFoundError:
                fd = None  # made by hand or damaged: no process owns it
            except OSError:
                continue
            try:
                if fd is not None:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except OSError:
                        continue  # its process runs
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(Path(entry.path))
            finally:
                if fd is not None:
                    os.close(fd)
        else:
            m = _NEW_UPLOADS_RE.match(entry.name)  # killed while making its directory
            if m and entry.is_dir(follow_symlinks=False) and not _pid_alive(int(m.group(1))):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(Path(entry.path))
    for path in removed:
        log.info("removed %s, the uploads of a server that did not stop cleanly", path)
    return removed


class UploadDirs:
    """This process's private upload directories, one per base directory: made, locked and
    owner-only on first use (:meth:`directory`), removed by :meth:`remove_all` (registered to
    run at exit when the first one is made; a killed process leaves them to
    :func:`sweep_uploads`). Thread-safe. The apps of a process share
    :func:`default_upload_dirs`."""

    def __init__(self) -> None:
        self._dirs: dict[str, tuple[Path, int]] = {}  # base directory -> (this process's directory, lock fd)
        self._lock = threading.Lock()
        self._at_exit = False
        self._anonymous: bool | None = None  # can an unnamed file be read through /proc/<pid>/fd/<n>?

    def directory(self, base: str | None) -> Path:
        """This process's upload directory under ``base`` (default: the system's temporary directory)."""
        key = tempfile.gettempdir() if base is None else base
        with self._lock:
            known = self._dirs.get(key)
            if known is not None and known[0].is_dir():
                return known[0]
            tag = secrets.token_hex(6)
            new = Path(tempfile.mkdtemp(prefix=f".emoadapt-uploads-new-{os.getpid()}-", dir=key))  # mode 0700
            fd = os.open(new / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            final = Path(key) / f"{_UPLOADS_PREFIX}{os.getpid()}-{tag}"
            os.rename(new, final)  # visible to sweep_uploads only once locked
            self._dirs[key] = (final, fd)
            if not self._at_exit:
                atexit.register(self.remove_all)
                self._at_exit = True
            return final

    def remove_all(self) -> None:
        """Remove this process's upload directories (at exit)."""
        with self._lock:
            for path, fd in self._dirs.values():
                shutil.rmtree(path, ignore_errors=True)
                os.close(fd)
            self._dirs.clear()

    def anonymous_files(self, directory: Path) -> bool:
        """Whether a file without a name can be opened by path here (through /proc/<pid>/fd/<n>),
        as OpenCV must; probed once."""
        if self._anonymous is None:
            link = directory / f"probe-{secrets.token_hex(4)}"
            try:
                with tempfile.TemporaryFile(dir=directory) as f:
                    f.write(b"emoadapt")
                    f.flush()
                    os.symlink(f"/proc/{os.getpid()}/fd/{f.fileno()}", link)
                    with open(link, "rb") as g:
                        self._anonymous = g.read() == b"emoadapt"
            except OSError:
                self._anonymous = False
            finally:
                link.unlink(missing_ok=True)
            log.debug("uploads are %s", "unnamed files" if self._anonymous else "named files in a private directory")
        return self._anonymous


_DEFAULT = ProcessDefault(UploadDirs)


def default_upload_dirs() -> UploadDirs:
    """The process's :class:`UploadDirs`, made on first use (what every app of the process uses)."""
    return _DEFAULT.get()


def display_name(name: str | None) -> str:
    """The upload's file name as the client gave it (printable, at most 80 characters), else "the upload"."""
    name = "".join(ch for ch in (name or "") if ch.isprintable())[:80].strip()
    return name or "the upload"


def upload_file_name(name: str | None) -> str:
    """The name an upload gets on disk, in a directory of its own: the file name the client
    gave (``name``, its last path part), so that whatever the library says about the file
    (a truncated video's warning in the server log, an error) names it as the person knows
    it; separators, control characters and leading dots replaced, at most 100 bytes of UTF-8;
    ``upload`` when there is none."""
    base = re.split(r"[/\\]", name or "")[-1]
    clean = "".join(ch if ch.isprintable() and ch not in "/\\:" else "_" for ch in base).strip().lstrip(".")
    while len(clean.encode()) > 100:
        stem, dot, ext = clean.rpartition(".")
        clean = (stem[:-1] + dot + ext) if dot and stem and len(ext) <= 10 else clean[:-1]
    return clean or "upload"


@asynccontextmanager
async def receive_upload(request: Request, limit: int, dirs: UploadDirs, base: str | None) -> AsyncIterator[Path]:
    """The request body as a file (a path OpenCV can open) for the time of the request, gone
        on leaving whatever happens: an unnamed file where the system allows it (the path is a
        link to it), else a named one, in a directory of its own in this process's private directory
    under ``base``, named as the client named it (:func:`upload_file_name`). At
        most ``limit`` bytes (ApiError 413 ``too_large``); an error of the library inside names
        the upload as the person knows it (the ``name`` query parameter), not by its temporary name."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "too_large", f"the upload is {int(declared) / 1e6:.1f} MB; the limit is {limit / 1e6:.1f} MB")
    directory = dirs.directory(base)
    own = directory / f"upload-{secrets.token_hex(8)}"  # a directory per upload: the file keeps the name it was sent with
    os.mkdir(own, 0o700)
    path = own / upload_file_name(request.query_params.get("name"))
    f: IO[bytes]
    if dirs.anonymous_files(directory):
        f = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 - closed below
    else:  # pragma: no cover - systems without /proc
        f = open(path, "xb")  # noqa: SIM115 - closed below
        os.chmod(path, 0o600)
    try:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "too_large", f"the upload is over the limit of {limit / 1e6:.1f} MB")
            f.write(chunk)
        if size == 0:
            raise ApiError(400, "bad_file", "empty upload: send the clip's bytes as the request body")
        f.flush()
        if not os.path.lexists(path):
            os.symlink(f"/proc/{os.getpid()}/fd/{f.fileno()}", path)
        try:
            yield path
        except _err.EmoadaptError as e:  # name the upload as the person knows it, not by its temporary name
            shown = display_name(request.query_params.get("name"))
            e.args = tuple(a.replace(path.name, shown) if isinstance(a, str) else a for a in e.args)
            raise
    finally:
        path.unlink(missing_ok=True)
        f.close()
        with contextlib.suppress(OSError):
            own.rmdir()


class UploadFrames:
    """The frames of a video file, decoded lazily: at most ``limit`` of them, of at most
    ``limit * MAX_CLIP_FRAME_PIXELS`` pixels in all (``cut``: there were more). What the
    Recognizer analyses of an upload: the limits bound the work whatever the container declares."""

    def __init__(self, path: Path, limit: int) -> None:
        self.path, self.limit, self.cut, self.decoded, self.pixels = path, limit, False, 0, 0

    def __iter__(self) -> Iterator[Any]:
        from ..video import iter_frames

        frames = iter_frames(self.path)
        budget = self.limit * MAX_CLIP_FRAME_PIXELS
        try:
            for frame in frames:
                size = frame.image.shape[0] * frame.image.shape[1]
                if self.decoded >= self.limit or (self.decoded and self.pixels + size > budget):
                    self.cut = True
                    log.warning("an upload holds more than %d frames (%.0f MP): analysed up to there", self.decoded, self.pixels / 1e6)
                    return
                self.decoded += 1
                self.pixels += size
                yield frame.image
        finally:
            getattr(frames, "close", lambda: None)()


def clip_to_analyse(path: Path, limits: Limits) -> tuple[Any, dict[str, Any], UploadFrames | None]:
    """What to analyse of an upload: ``(clip, sampling arguments, frames)``. A video is
    decoded through :class:`UploadFrames` (``frames``: at most ``max_seconds * MAX_CLIP_FPS``
    frames, whatever its container declares), sampled at ``fps`` and its container's rate,
    and refused (ApiError 413) when the container announces more than ``max_seconds``;
    a still image is the path itself (``frames`` None). Call it once per analysis: the
    frames are read once."""
    from ..video import source_rate, video_info

    rate = source_rate(path)
    if rate is None:  # a still image
        return path, {}, None
    info = video_info(path)
    frames, fps = info["frames"], info["fps"]
    if math.isfinite(frames) and frames > 0 and math.isfinite(fps) and 0 < fps < 1000:
        seconds = frames / fps
        if seconds > limits.max_seconds + 2 / fps:  # the count can be an estimate: 2 frames of slack
            raise ApiError(413, "too_long", f"the clip is {seconds:.1f} s long; the limit is {limits.max_seconds:g} s")
    decoded = max(1, math.ceil(limits.max_seconds * MAX_CLIP_FPS))
    kept = min(limits.fps or rate, rate)
    source = UploadFrames(path, decoded)
    return source, {"fps": limits.fps, "source_fps": rate, "max_frames": min(decoded, max(1, math.ceil(limits.max_seconds * kept)))}, source
