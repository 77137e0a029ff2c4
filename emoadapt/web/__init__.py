"""``emoadapt serve``: a local web app for the validation mode (an optional extra).

A person records a short clip from the webcam (or uploads a file), sees the emotion the
:class:`~emoadapt.Recognizer` gives it (probability bar chart, per-frame timeline), confirms
it or picks the right emotion (:meth:`~emoadapt.Recognizer.correct`), enrols themselves, sees
their corrections and the history of their personal model, adapts it now and can forget
themselves. The page is plain HTML/JS/CSS served from the package (``emoadapt/web/static``);
nothing is fetched from the network.

Needs the ``serve`` extra (Starlette and uvicorn): ``pip install -e ".[serve]"`` in the checkout.

    from emoadapt import Recognizer
    from emoadapt.web import create_app
    app = create_app(Recognizer())          # an ASGI app: uvicorn.run(app, host="127.0.0.1")

Safety:

* Every request must name an allowed host (``Host`` header: the loopback names and the bound
  address by default), which defeats DNS rebinding. The check cannot be turned off: a server
  bound to every address (``0.0.0.0``, ``::``) needs the names its clients use, listed
  (:func:`allowed_hosts_for`).
* Writes (``POST``/``DELETE``) are refused when they come from another origin (``Origin``
  or ``Sec-Fetch-Site`` headers) or lack the server's token: a random value made when the app
  starts, embedded in the page and sent back in the ``X-Emoadapt-Token`` header.
* Uploads are limited in size (``max_upload_mb``) and length (``max_seconds``: a clip
  whose container announces more is refused; whatever it announces, at most
  ``max_seconds * MAX_CLIP_FPS`` frames of at most ``MAX_CLIP_FRAME_PIXELS`` pixels on
  average are decoded, the rest is cut). An upload lives in a
  temporary file that has no name on disk where the system allows it (Linux: the kernel
  frees it when the process ends, even killed), inside a directory private to the process
  that the next server removes if the process was killed; it is closed right after its
  request, whatever happens. The store receives features only (what
  :meth:`Recognizer.correct` keeps), never pixels. A confirmation or correction therefore
  sends the clip again (the browser keeps it in memory): the server holds no clip between
  requests.
* Over HTTP a face decides who is who: a correction or an enrolment under a name that has a
  face must show that face (409 ``identity_mismatch``); the library's ``force=True``
  override is not offered.
* Errors are JSON ``{"error": code, "message": text}`` with an HTTP status
  (:data:`ERROR_STATUS`): ``no_face`` and ``bad_file`` 422, ``unknown_user`` 404,
  ``identity_mismatch`` 409, ``ambiguous_user`` 409 (a name a store upgrade gave up: it was
  another user's before names were normalised; with ``users``, the listed names it could
  mean), ``invalid_input`` and ``unknown_label`` 400 (with ``known`` and
  ``suggestions``), ``too_large``/``too_long`` 413,
  ``forbidden`` 403.
"""

from __future__ import annotations

import atexit
import dataclasses
import hmac
import json
import logging
import math
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no stale upload directories are swept
    fcntl = None  # type: ignore[assignment]

try:
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import Headers
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles
    from starlette.types import ASGIApp, Receive, Scope, Send
except ImportError as e:  # pragma: no cover - exercised by tests/test_csv_output.py with the module hidden
    from ..errors import MissingDependencyError

    raise MissingDependencyError.for_extra("emoadapt serve (Starlette and uvicorn)", "serve") from e

from .. import errors as _err
from ..store import normalize_label, normalize_user_name

__all__ = [
    "DEFAULT_MAX_SECONDS",
    "DEFAULT_MAX_UPLOAD_MB",
    "ERROR_STATUS",
    "LOOPBACK_HOSTS",
    "MAX_CLIP_FPS",
    "MAX_CLIP_FRAME_PIXELS",
    "STATIC_DIR",
    "WILDCARD_HOSTS",
    "ApiError",
    "allowed_hosts_for",
    "create_app",
    "error_for",
    "serve",
    "sweep_uploads",
]

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
DEFAULT_MAX_UPLOAD_MB = 20.0
"""Largest upload accepted by default (megabytes)."""
DEFAULT_MAX_SECONDS = 10.0
"""Longest clip analysed by default (seconds)."""
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})
"""Bind addresses meaning every address of the computer: a server bound there must be told
the host names its clients use (:func:`allowed_hosts_for`)."""
MAX_CLIP_FPS = 60.0
"""Frames a second of clip may hold: at most ``max_seconds * MAX_CLIP_FPS`` frames of an upload
are decoded, whatever rate and length its container declares (a faster clip is cut)."""
MAX_CLIP_FRAME_PIXELS = 1920 * 1080
"""Pixels a frame of those may have on average: an upload's decoded frames hold at most
``max_seconds * MAX_CLIP_FPS * MAX_CLIP_FRAME_PIXELS`` pixels in all (the first frame is always
decoded), so larger frames mean fewer of them."""
TOKEN_HEADER = "x-emoadapt-token"

#: HTTP status and error code of each library error (the first matching class wins)
ERROR_STATUS: tuple[tuple[type[_err.EmoadaptError], int, str], ...] = (
    (_err.UnknownUserError, 404, "unknown_user"),
    (_err.IdentityMismatchError, 409, "identity_mismatch"),
    (_err.VideoDecodeError, 422, "bad_file"),
    (_err.UnknownLabelError, 400, "unknown_label"),
    (_err.AmbiguousUserError, 409, "ambiguous_user"),
    (_err.InvalidInputError, 400, "invalid_input"),
    (_err.StoreError, 500, "store_error"),
    (_err.ModelIntegrityError, 500, "model_error"),
    (_err.EmoadaptError, 500, "error"),
)

_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_MAX_REPORTS = 100  # adaptation reports kept per user in memory (the store keeps the versions)
_CHUNK = 1 << 16


class ApiError(Exception):
    """An error answered as JSON ``{"error": code, "message": message}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": _public(message)}, status_code=status, headers={"Cache-Control": "no-store"})


_OVERRIDE = re.compile(r"[;,]?\s*(?:or\s+)?pass\s+force\s*=\s*True\b[^;.]*", re.IGNORECASE)


def _public(message: str) -> str:
    """A library message as said over HTTP: without the Python API's ``force=True`` advice
    (the HTTP API has no override of the identity check)."""
    return _OVERRIDE.sub("", message).strip()


_NOT_THEIR_FACE = "; corrections and enrolments under a name must show that person's face: leave the name empty to be recognised, or use your own name"


def error_for(e: _err.EmoadaptError) -> tuple[int, str]:
    """``(status, code)`` of a library error; a clip without a face is ``(422, "no_face")``."""
    for cls, status, code in ERROR_STATUS:
        if isinstance(e, cls):
            if cls is _err.InvalidInputError and str(e).startswith("no face"):
                return 422, "no_face"
            return status, code
    return 500, "error"  # pragma: no cover - EmoadaptError is last in ERROR_STATUS


def _hostname(host: str) -> str | None:
    try:
        name = urlsplit("//" + host).hostname
    except ValueError:
        return None
    return name.lower() if name else None


class _Guard:
    """ASGI middleware: allowed ``Host`` on every request; same origin and the token on writes."""

    def __init__(self, app: ASGIApp, *, token: str, hosts: frozenset[str]) -> None:
        self.app, self.token, self.hosts = app, token, hosts

    def refusal(self, method: str, headers: Headers) -> str | None:
        host = headers.get("host", "")
        if _hostname(host) not in self.hosts:
            # the allowed names are not told: a rebound page could read them
            return f"host {host!r} is not served here (emoadapt serve --allowed-host adds a name)"
        if method not in _UNSAFE:
            return None
        origin = headers.get("origin")
        if origin is not None:
            try:
                netloc = urlsplit(origin).netloc.lower()
            except ValueError:
                netloc = ""
            if netloc != host.lower():
                return f"cross-origin request from {origin!r} refused"
        site = headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            return f"cross-site request refused (Sec-Fetch-Site: {site})"
        sent = headers.get(TOKEN_HEADER, "")
        if not hmac.compare_digest(sent.encode(), self.token.encode()):
            return "missing or wrong token: reload the page" if sent else "missing token: use the page served by emoadapt serve"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            why = self.refusal(scope["method"], Headers(scope=scope))
            if why is not None:
                log.warning("refused %s %s: %s", scope["method"], scope.get("path"), why)
                await _error(403, "forbidden", why)(scope, receive, send)
                return
        await self.app(scope, receive, send)


# -- upload storage ---------------------------------------------------------------------------
# Each process keeps its uploads in one private directory per base directory, named
# emoadapt-uploads-<pid>-<random> and locked (flock on its .lock file) while the process lives:
# the lock goes with the process however it ends, so the next server removes the directories
# whose lock it can take (sweep_uploads). Where the system allows it (Linux), the upload itself
# is a file without a name (tempfile.TemporaryFile), read through a link to /proc/<pid>/fd/<n>:
# a killed process leaves no byte of it, at most a dangling link.

_UPLOADS_PREFIX = "emoadapt-uploads-"
_UPLOADS_RE = re.compile(r"^emoadapt-uploads-(\d+)-[A-Za-z0-9_]+$")
_NEW_UPLOADS_RE = re.compile(r"^\.emoadapt-uploads-new-(\d+)-[A-Za-z0-9_]+$")
_LOCK_NAME = ".lock"
_private: dict[str, tuple[Path, int]] = {}  # base directory -> (this process's directory, lock fd)
_private_lock = threading.Lock()
_anonymous: bool | None = None  # can an unnamed file be read through /proc/<pid>/fd/<n>?


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


def _private_dir(base: str | None) -> Path:
    """This process's upload directory under ``base`` (made, locked and owner-only on first use)."""
    key = tempfile.gettempdir() if base is None else base
    with _private_lock:
        known = _private.get(key)
        if known is not None and known[0].is_dir():
            return known[0]
        tag = secrets.token_hex(6)
        new = Path(tempfile.mkdtemp(prefix=f".emoadapt-uploads-new-{os.getpid()}-", dir=key))  # mode 0700
        fd = os.open(new / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        final = Path(key) / f"{_UPLOADS_PREFIX}{os.getpid()}-{tag}"
        os.rename(new, final)  # visible to sweep_uploads only once locked
        _private[key] = (final, fd)
        return final


def _remove_private_dirs() -> None:
    """At exit: this process's upload directories (a killed process leaves them to sweep_uploads)."""
    with _private_lock:
        for path, fd in _private.values():
            shutil.rmtree(path, ignore_errors=True)
            os.close(fd)
        _private.clear()


atexit.register(_remove_private_dirs)


def _anonymous_files(directory: Path) -> bool:
    """Whether a file without a name can be opened by path here (through /proc/<pid>/fd/<n>),
    as OpenCV must; probed once."""
    global _anonymous
    if _anonymous is None:
        link = directory / f"probe-{secrets.token_hex(4)}"
        try:
            with tempfile.TemporaryFile(dir=directory) as f:
                f.write(b"emoadapt")
                f.flush()
                os.symlink(f"/proc/{os.getpid()}/fd/{f.fileno()}", link)
                with open(link, "rb") as g:
                    _anonymous = g.read() == b"emoadapt"
        except OSError:
            _anonymous = False
        finally:
            link.unlink(missing_ok=True)
        log.debug("uploads are %s", "unnamed files" if _anonymous else "named files in a private directory")
    return _anonymous


class _Frames:
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


@dataclasses.dataclass
class _Limits:
    max_upload_bytes: int
    max_seconds: float
    fps: float | None


class _App:
    """The routes' state: one Recognizer, limits, and this server's adapt reports."""

    def __init__(self, rec: Any, limits: _Limits, upload_dir: str | None) -> None:
        self.rec, self.limits, self.upload_dir = rec, limits, upload_dir
        self.reports: dict[str, list[dict[str, Any]]] = {}
        self.choices: dict[tuple[str, int, str], str | None] = {}  # (user, version, sha256) -> the guard's choice
        # one analysis at a time: on a small device concurrent ones only share the cores and
        # multiply the memory of decoded frames
        self.work = threading.Lock()

    # -- helpers ------------------------------------------------------------------------------
    async def run(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """``fn(*args, **kw)`` in a worker thread, one such call at a time (analyses, writes)."""

        def locked() -> Any:
            with self.work:
                return fn(*args, **kw)

        return await run_in_threadpool(locked)

    async def read(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in a worker thread, beside a running analysis (store reads)."""
        return await run_in_threadpool(fn, *args)

    @asynccontextmanager
    async def upload(self, request: Request) -> AsyncIterator[Path]:
        """The request body as a file (a path OpenCV can open) for the time of the request,
        gone on leaving whatever happens: an unnamed file where the system allows it (the
        path is a link to it), else a named one, in this process's private directory."""
        limit = self.limits.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, "too_large", f"the upload is {int(declared) / 1e6:.1f} MB; the limit is {limit / 1e6:.1f} MB")
        directory = _private_dir(self.upload_dir)
        path = directory / f"emoadapt-upload-{secrets.token_hex(8)}.clip"
        f: IO[bytes]
        if _anonymous_files(directory):
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
                shown = _display_name(request.query_params.get("name"))
                e.args = tuple(a.replace(path.name, shown) if isinstance(a, str) else a for a in e.args)
                raise
        finally:
            path.unlink(missing_ok=True)
            f.close()

    def clip(self, path: Path) -> tuple[Any, dict[str, Any], _Frames | None]:
        """What to analyse of an upload: ``(clip, sampling arguments, frames)``. A video is
        decoded through :class:`_Frames` (``frames``: at most ``max_seconds * MAX_CLIP_FPS``
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
            if seconds > self.limits.max_seconds + 2 / fps:  # the count can be an estimate: 2 frames of slack
                raise ApiError(413, "too_long", f"the clip is {seconds:.1f} s long; the limit is {self.limits.max_seconds:g} s")
        decoded = max(1, math.ceil(self.limits.max_seconds * MAX_CLIP_FPS))
        kept = min(self.limits.fps or rate, rate)
        source = _Frames(path, decoded)
        return source, {"fps": self.limits.fps, "source_fps": rate, "max_frames": min(decoded, max(1, math.ceil(self.limits.max_seconds * kept)))}, source

    def check_face(self, user: str, path: Path) -> None:
        """IdentityMismatchError unless the face in the upload is ``user``'s, when ``user`` is
        enrolled: over HTTP only a person's face adds faces to their name (what
        :meth:`Recognizer.correct` checks without ``force``). A new name is anyone's."""
        rec = self.rec
        if not rec.store.has_user(user):
            return
        theirs = rec.store.embeddings(user, model=rec.identity).get(user)
        if theirs is None:
            other = rec.reenrol_needed().get(user)
            if other:
                raise _err.IdentityMismatchError(
                    f"{user!r} is enrolled with another identity model ({', '.join(other)}), whose faces this server cannot "
                    f"compare: re-enrol them on this computer (emoadapt enroll {user} CLIP)"
                )
            return
        clip, kw, _ = self.clip(path)
        res = rec.analyze(clip, identity=True, **kw)
        if res.embedding is None:
            raise ApiError(422, "no_face", f"no face found in the {res.frames} frame(s) of the clip: face the camera, in good light")
        ok, score = rec.matcher.verify(res.embedding, theirs)
        if not ok:
            raise _err.IdentityMismatchError(f"the face in the clip does not match {user!r} (similarity {score:.3f} < {rec.matcher.threshold:.3f})")

    def held_out(self, user: str, h: Any) -> tuple[float | None, float | None]:
        """Held-out accuracy ``(before, after)`` of head version ``h``: the universal head's and
        the installed candidate's (its ``choice``, in the head file's meta), ``None`` where not
        measured (a single correction). Heads of older versions stored the pair itself."""
        m = h.metrics or {}
        if "held_out_accuracy_before" in m or "held_out_accuracy_after" in m:
            return m.get("held_out_accuracy_before"), m.get("held_out_accuracy_after")
        if "held_out_universal" not in m:
            return None, None
        key = (user, int(h.version), h.sha256)
        if key not in self.choices:
            try:
                choice = self.rec.store.load_head(user, int(h.version)).meta.get("choice")
            except _err.EmoadaptError as e:
                log.warning("head v%s of %r cannot be read (%s): its held-out accuracy after adapting is not shown", h.version, user, e)
                choice = None
            if len(self.choices) >= 4096:
                self.choices.pop(next(iter(self.choices)))
            self.choices[key] = choice
        choice = self.choices[key]
        return m["held_out_universal"], None if choice is None else m.get(f"held_out_{choice}")

    def active_version(self, user: str | None) -> int | None:
        if not user or not self.rec.store.has_user(user):
            return None
        return next((int(h.version) for h in self.rec.store.head_versions(user) if h.status == "active"), None)

    def listed_name(self, raw: str) -> str:
        """The name ``users()`` lists for the existing user that ``raw`` (a path parameter as
        sent) names, read by the store: a name another user had before the store was upgraded
        is AmbiguousUserError (a full-width ``Carol`` that was another user never reaches ``Carol``),
        none is UnknownUserError."""
        return str(self.rec.store.user(raw).name)

    def new_name(self, raw: str) -> str:
        """``raw`` as a user name for an enrolment or a correction (perhaps a new user),
        normalised; AmbiguousUserError when it is the former name of another user."""
        name = normalize_user_name(raw)
        self.rec.store.has_user(raw)  # raises for a former name that now reads as another user
        return name

    def owner(self, cid: int) -> str | None:
        """The user a correction id belongs to (when the face chose the user)."""
        return next((u for u in self.rec.users() if any(r["id"] == cid for r in self.rec.corrections(u))), None)

    def log_report(self, user: str, report: Any) -> dict[str, Any]:
        d = report.to_dict() if hasattr(report, "to_dict") else dict(report)
        if hasattr(report, "explanation"):  # what the user's model now does, in plain words (the page shows it)
            d["explanation"] = report.explanation()
        d["time"] = time.time()
        kept = self.reports.setdefault(user, [])
        kept.append(d)
        del kept[:-_MAX_REPORTS]
        return d

    # -- routes -------------------------------------------------------------------------------
    async def index(self, request: Request) -> Response:
        page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
        config = {"maxUploadBytes": self.limits.max_upload_bytes, "maxSeconds": self.limits.max_seconds, "classes": self.rec.classes}
        page = page.replace("{{token}}", request.app.state.token).replace("{{config}}", _attr(json.dumps(config)))
        return HTMLResponse(page, headers=_PAGE_HEADERS)

    async def info(self, request: Request) -> Response:
        users = await self.read(self.rec.users)
        return _json(
            {
                "classes": self.rec.classes,
                "users": users,
                "max_upload_bytes": self.limits.max_upload_bytes,
                "max_seconds": self.limits.max_seconds,
                "fps": self.limits.fps,
            }
        )

    async def users(self, request: Request) -> Response:
        return _json({"users": await self.read(self.rec.users)})

    async def predict(self, request: Request) -> Response:
        async with self.upload(request) as path:

            def work() -> tuple[Any, bool]:
                clip, kw, frames = self.clip(path)
                res = self.rec.predict(clip, **kw)
                return res, bool(frames is not None and (frames.cut or res.frames >= kw["max_frames"]))

            res, truncated = await self.run(work)
        if res.label is None:
            raise ApiError(422, "no_face", f"no face found in the {res.frames} frame(s) of the clip: face the camera, in good light")
        d = res.to_dict()
        d.update(fps=res.fps, tracks=max(1, len(res.tracks)), top=[k for k, _ in res.top(3)], truncated=truncated)
        for f in d["timeline"]:
            f["time"] = round(f["index"] / res.fps, 4) if res.fps else 0.0
        return _json(d)

    async def correct(self, request: Request) -> Response:
        q = request.query_params
        label, user = q.get("label", ""), q.get("user") or None
        new_label = q.get("new_label", "") in ("1", "true", "yes")  # no "force": a face decides who is who here
        async with self.upload(request) as path:

            def work() -> dict[str, Any]:
                t0 = time.time()
                if user is not None:
                    self.new_name(user)
                extra = {"new_label": True} if new_label else {}
                clip, kw, _ = self.clip(path)
                c = self.rec.correct(clip, label, user=user, **extra, **kw)
                cid = int(getattr(c, "id", c))  # a Correction (an int carrying the outcome) or a plain id
                who = getattr(c, "user", None) or user or self.owner(cid)
                report = getattr(c, "adapt_report", None)
                error = getattr(c, "adapt_error", None)
                adapted: dict[str, Any] | None = None
                if report is not None and who:
                    adapted = self.log_report(who, report)
                elif who:  # a head saved during this call: an automatic adapt installed it
                    new = [h for h in self.rec.store.head_versions(who) if h.created >= t0]
                    if new:
                        before, after = self.held_out(who, new[-1])
                        adapted = {"user": who, "accepted": True, "version": int(new[-1].version), "reason": "automatic adapt", **new[-1].metrics}
                        adapted.update(held_out_accuracy_before=before, held_out_accuracy_after=after)
                n = len(self.rec.corrections(who)) if who else None
                return {
                    "id": cid,
                    "user": who,
                    "label": getattr(c, "label", None) or normalize_label(label),
                    "corrections": n,
                    "adapted": adapted,
                    "adapt_error": None if error is None else str(error),
                }

            out = await self.run(work)
        return _json(out)

    async def enroll(self, request: Request) -> Response:
        user = request.query_params.get("user", "")
        if not user.strip():
            raise ApiError(400, "invalid_input", "type your name first: it is what the enrolment is stored under")
        raw, user = user, normalize_user_name(user)
        async with self.upload(request) as path:

            def work() -> int:
                self.new_name(raw)
                self.check_face(user, path)
                clip, kw, _ = self.clip(path)
                return int(self.rec.enroll(user, clip, **kw))

            added = await self.run(work)
        return _json({"user": user, "added": int(added), "users": await self.run(self.rec.users)})

    async def corrections(self, request: Request) -> Response:
        user = await self.read(self.listed_name, request.path_params["user"])
        rows = await self.read(self.rec.corrections, user)
        return _json({"user": user, "corrections": rows})

    async def history(self, request: Request) -> Response:
        user = await self.read(self.listed_name, request.path_params["user"])

        def read() -> list[dict[str, Any]]:
            out = []
            for h in self.rec.store.head_versions(user):
                before, after = self.held_out(user, h)
                out.append(
                    {
                        "version": int(h.version),
                        "created": h.created,
                        "status": h.status,
                        "n_trained": h.n_trained,
                        "n_corrections": h.metrics.get("n_corrections", h.n_trained),
                        "held_out_accuracy_before": before,
                        "held_out_accuracy_after": after,
                        "metrics": h.metrics,
                    }
                )
            return out

        versions = await self.read(read)
        return _json({"user": user, "versions": versions, "reports": self.reports.get(user, [])})

    async def adapt(self, request: Request) -> Response:
        user = await self.read(self.listed_name, request.path_params["user"])
        report = await self.run(self.rec.adapt, user)
        return _json(self.log_report(user, report))

    async def forget(self, request: Request) -> Response:
        raw = request.path_params["user"]
        user = await self.read(self.listed_name, raw)
        rep = await self.run(self.rec.forget, raw)  # as sent: the store refuses a former name of another user
        self.reports.pop(user, None)
        out = dataclasses.asdict(rep) if dataclasses.is_dataclass(rep) and not isinstance(rep, type) else {}
        return _json({"user": user, **out, "users": await self.run(self.rec.users)})


def _display_name(name: str | None) -> str:
    """The upload's file name as the client gave it (printable, at most 80 characters), else "the upload"."""
    name = "".join(ch for ch in (name or "") if ch.isprintable())[:80].strip()
    return name or "the upload"


def _attr(text: str) -> str:
    """Text escaped for an HTML attribute value in double quotes."""
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")


def _json(data: Any) -> JSONResponse:
    return JSONResponse(data, headers={"Cache-Control": "no-store"})


_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # everything from this server; the camera preview and the recorded clip are blob:/mediastream: URLs
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob: mediastream:; connect-src 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'none'",
}


def _host_name(name: Any) -> str:
    """A host name or address as the ``Host`` check compares it (lower case, IPv6 without brackets)."""
    if not isinstance(name, str):
        raise _err.InvalidInputError(f"a host name must be a string, got {type(name).__name__}")
    clean = name.strip().strip("[]").lower()
    if not clean or clean in WILDCARD_HOSTS or "*" in clean or any(c.isspace() or c in "/@?#" for c in clean):
        raise _err.InvalidInputError(f"{name!r} is not a host name or address a browser would send (wildcards are not accepted)")
    return clean


def allowed_hosts_for(host: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """The ``Host`` names a server bound to ``host`` answers: the loopback names, ``host``
    itself and the names in ``extra`` (how clients elsewhere name this computer). A wildcard
    address (:data:`WILDCARD_HOSTS`: 0.0.0.0, ::), where the clients' names cannot be known,
    needs ``extra``: InvalidInputError without it (accepting any name would let a web page
    reach the server through DNS rebinding)."""
    names = {_host_name(n) for n in extra}
    if host.strip("[]") in WILDCARD_HOSTS:
        if not names:
            raise _err.InvalidInputError(
                f"serving on {host or 'every address'} (every address of this computer) needs the host names its users "
                "type in the browser, listed: --allowed-host NAME (repeatable; e.g. this computer's name or its address "
                "on the network). Any name is never accepted: a web page elsewhere could reach the app through DNS rebinding"
            )
        return LOOPBACK_HOSTS | names
    return LOOPBACK_HOSTS | {_host_name(host)} | names


def create_app(
    recognizer: Any,
    *,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    fps: float | None = None,
    allowed_hosts: Iterable[str] | None = LOOPBACK_HOSTS,
    token: str | None = None,
    upload_dir: str | os.PathLike[str] | None = None,
) -> Starlette:
    """The web app (an ASGI application) around ``recognizer``.

    Args:
        recognizer: the :class:`~emoadapt.Recognizer` that analyses, stores and adapts.
        max_upload_mb: largest upload accepted, in megabytes (413 ``too_large`` above).
        max_seconds: longest clip accepted, in seconds: 413 ``too_long`` when the container
            announces more; decoding stops there when it announces nothing.
        fps: analyse about this many frames per second (``None``: every frame).
        allowed_hosts: host names the ``Host`` header may carry (at least one; the check
            cannot be turned off: :func:`allowed_hosts_for` gives those of a bind address).
        token: the write token (default: a new random one; ``app.state.token``).
        upload_dir: where this process's private directory of uploads goes (default: the
            system's temporary directory); the directories a killed server left there are
            removed now (:func:`sweep_uploads`).
    """
    if not (isinstance(max_upload_mb, (int, float)) and 0 < max_upload_mb < 1e6):
        raise _err.InvalidInputError(f"max_upload_mb must be a positive number of megabytes, got {max_upload_mb!r}")
    if not (isinstance(max_seconds, (int, float)) and 0 < max_seconds <= 3600):
        raise _err.InvalidInputError(f"max_seconds must be a positive number of seconds (at most 3600), got {max_seconds!r}")
    if fps is not None and not (isinstance(fps, (int, float)) and fps > 0):
        raise _err.InvalidInputError(f"fps must be a positive number or None, got {fps!r}")
    if allowed_hosts is None or isinstance(allowed_hosts, str):
        raise _err.InvalidInputError(
            f"allowed_hosts must list the host names the server answers to, got {allowed_hosts!r} (the Host check cannot be turned off)"
        )
    hosts = frozenset(_host_name(h) for h in allowed_hosts)
    if not hosts:
        raise _err.InvalidInputError("allowed_hosts is empty: name at least one host the server answers to")
    if upload_dir is not None and not os.path.isdir(upload_dir):
        raise _err.InvalidInputError(f"upload_dir {os.fspath(upload_dir)!r} is not an existing directory")
    limits = _Limits(int(max_upload_mb * 1e6), float(max_seconds), None if fps is None else float(fps))
    sweep_uploads(upload_dir)
    state = _App(recognizer, limits, None if upload_dir is None else os.fspath(upload_dir))
    routes = [
        Route("/", state.index, methods=["GET"]),
        Route("/api/info", state.info, methods=["GET"]),
        Route("/api/users", state.users, methods=["GET"]),
        Route("/api/predict", state.predict, methods=["POST"]),
        Route("/api/correct", state.correct, methods=["POST"]),
        Route("/api/enroll", state.enroll, methods=["POST"]),
        Route("/api/users/{user}/corrections", state.corrections, methods=["GET"]),
        Route("/api/users/{user}/history", state.history, methods=["GET"]),
        Route("/api/users/{user}/adapt", state.adapt, methods=["POST"]),
        Route("/api/users/{user}", state.forget, methods=["DELETE"]),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
    ]

    async def on_api_error(request: Request, e: Exception) -> Response:
        assert isinstance(e, ApiError)
        return _error(e.status, e.code, e.message)

    async def on_library_error(request: Request, e: Exception) -> Response:
        assert isinstance(e, _err.EmoadaptError)
        status, code = error_for(e)
        if status >= 500:
            log.error("%s %s: %s: %s", request.method, request.url.path, type(e).__name__, e)
        if isinstance(e, _err.AmbiguousUserError):  # the listed names it could mean
            return JSONResponse({"error": code, "message": str(e), "name": e.name, "users": e.users}, status_code=status, headers={"Cache-Control": "no-store"})
        if isinstance(e, _err.UnknownLabelError):  # what the page offers instead
            return JSONResponse(
                {"error": code, "message": str(e), "label": e.label, "known": e.known, "suggestions": e.suggestions},
                status_code=status,
                headers={"Cache-Control": "no-store"},
            )
        message = str(e)
        if isinstance(e, _err.IdentityMismatchError) and message.startswith("the face in the clip does not match"):
            message = _public(message) + _NOT_THEIR_FACE
        return _error(status, code, message)

    app = Starlette(routes=routes, exception_handlers={ApiError: on_api_error, _err.EmoadaptError: on_library_error})
    app.state.token = token or secrets.token_urlsafe(32)
    app.state.emoadapt = state
    app.add_middleware(_Guard, token=app.state.token, hosts=hosts)
    return app


def serve(recognizer: Any, *, host: str = "127.0.0.1", port: int = 8765, log_level: str = "warning", **kw: Any) -> None:
    """Run :func:`create_app` under uvicorn until interrupted (keyword arguments: those of
    :func:`create_app`; ``allowed_hosts`` defaults to :func:`allowed_hosts_for` ``(host)``,
    which a wildcard ``host`` refuses: name the hosts)."""
    try:
        import uvicorn
    except ImportError as e:
        raise _err.MissingDependencyError.for_extra("emoadapt serve (Starlette and uvicorn)", "serve") from e
    if kw.get("allowed_hosts") is None:
        kw["allowed_hosts"] = allowed_hosts_for(host)
    app = create_app(recognizer, **kw)
    uvicorn.run(app, host=host, port=port, log_level=log_level, server_header=False)
