"""``emoadapt serve``: a local web app for the validation mode (an optional extra).

A person records a short clip from the webcam (or uploads a file), sees the emotion the
:class:`~emoadapt.Recognizer` gives it (probability bar chart, per-frame timeline), confirms
it or picks the right emotion (:meth:`~emoadapt.Recognizer.correct`), enrols themselves, sees
their corrections and the history of their personal model, adapts it now and can forget
themselves. The page is plain HTML/JS/CSS served from the package (``emoadapt/web/static``);
nothing is fetched from the network.

Needs the ``serve`` extra (Starlette and uvicorn): ``pip install "emoadapt[serve]"``.

    from emoadapt import Recognizer
    from emoadapt.web import create_app
    app = create_app(Recognizer())          # an ASGI app: uvicorn.run(app, host="127.0.0.1")

Safety:

* Every request must name an allowed host (``Host`` header: the loopback names and the bound
  address by default), which defeats DNS rebinding.
* Writes (``POST``/``DELETE``) are refused when they come from another origin (``Origin``
  or ``Sec-Fetch-Site`` headers) or lack the server's token: a random value made when the app
  starts, embedded in the page and sent back in the ``X-Emoadapt-Token`` header.
* Uploads are limited in size (``max_upload_mb``) and length (``max_seconds``: a clip
  whose container announces more is refused; decoding never goes past it). An upload lives
  in a private temporary file only while its request is analysed and is deleted right after,
  whatever happens. The store receives features only (what :meth:`Recognizer.correct`
  keeps), never pixels. A confirmation or correction therefore sends the clip again (the
  browser keeps it in memory): the server holds no clip between requests.
* Errors are JSON ``{"error": code, "message": text}`` with an HTTP status
  (:data:`ERROR_STATUS`): ``no_face`` and ``bad_file`` 422, ``unknown_user`` 404,
  ``identity_mismatch`` 409, ``invalid_input`` and ``unknown_label`` 400 (with ``known`` and
  ``suggestions``), ``too_large``/``too_long`` 413,
  ``forbidden`` 403.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import math
import os
import secrets
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

try:
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import Headers
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles
    from starlette.types import ASGIApp, Receive, Scope, Send
except ImportError as e:  # pragma: no cover - exercised by the CLI test with the module hidden
    raise ImportError('emoadapt serve needs the "serve" extra (Starlette and uvicorn): pip install "emoadapt[serve]"') from e

from .. import errors as _err
from ..store import normalize_label, normalize_user_name

__all__ = [
    "DEFAULT_MAX_SECONDS",
    "DEFAULT_MAX_UPLOAD_MB",
    "ERROR_STATUS",
    "LOOPBACK_HOSTS",
    "STATIC_DIR",
    "ApiError",
    "allowed_hosts_for",
    "create_app",
    "error_for",
    "serve",
]

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
DEFAULT_MAX_UPLOAD_MB = 20.0
"""Largest upload accepted by default (megabytes)."""
DEFAULT_MAX_SECONDS = 10.0
"""Longest clip analysed by default (seconds)."""
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
TOKEN_HEADER = "x-emoadapt-token"

#: HTTP status and error code of each library error (the first matching class wins)
ERROR_STATUS: tuple[tuple[type[_err.EmoadaptError], int, str], ...] = (
    (_err.UnknownUserError, 404, "unknown_user"),
    (_err.IdentityMismatchError, 409, "identity_mismatch"),
    (_err.VideoDecodeError, 422, "bad_file"),
    (_err.UnknownLabelError, 400, "unknown_label"),
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
    return JSONResponse({"error": code, "message": message}, status_code=status, headers={"Cache-Control": "no-store"})


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

    def __init__(self, app: ASGIApp, *, token: str, hosts: frozenset[str] | None) -> None:
        self.app, self.token, self.hosts = app, token, hosts

    def refusal(self, method: str, headers: Headers) -> str | None:
        host = headers.get("host", "")
        if self.hosts is not None and _hostname(host) not in self.hosts:
            return f"host {host!r} is not served here (allowed: {', '.join(sorted(self.hosts))})"
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
        """The request body in a private temporary file, deleted on leaving (whatever happens)."""
        limit = self.limits.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, "too_large", f"the upload is {int(declared) / 1e6:.1f} MB; the limit is {limit / 1e6:.1f} MB")
        fd, name = tempfile.mkstemp(prefix="emoadapt-upload-", suffix=".clip", dir=self.upload_dir)
        path = Path(name)
        try:
            size = 0
            with os.fdopen(fd, "wb") as f:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise ApiError(413, "too_large", f"the upload is over the limit of {limit / 1e6:.1f} MB")
                    f.write(chunk)
            if size == 0:
                raise ApiError(400, "bad_file", "empty upload: send the clip's bytes as the request body")
            try:
                yield path
            except _err.EmoadaptError as e:  # name the upload as the person knows it, not by its temporary name
                shown = _display_name(request.query_params.get("name"))
                e.args = tuple(a.replace(path.name, shown) if isinstance(a, str) else a for a in e.args)
                raise
        finally:
            path.unlink(missing_ok=True)

    def sampling(self, path: Path) -> dict[str, Any]:
        """``fps`` and ``max_frames`` for a clip; ApiError 413 when its container announces
        more than ``max_seconds`` (a container that announces nothing is cut there)."""
        from ..video import source_rate, video_info

        rate = source_rate(path)
        if rate is None:  # a still image
            return {}
        info = video_info(path)
        frames, fps = info["frames"], info["fps"]
        if math.isfinite(frames) and frames > 0 and math.isfinite(fps) and 0 < fps < 1000:
            seconds = frames / fps
            if seconds > self.limits.max_seconds + 2 / fps:  # the count can be an estimate: 2 frames of slack
                raise ApiError(413, "too_long", f"the clip is {seconds:.1f} s long; the limit is {self.limits.max_seconds:g} s")
        kept = min(self.limits.fps or rate, rate)
        return {"fps": self.limits.fps, "max_frames": max(1, math.ceil(self.limits.max_seconds * kept))}

    def active_version(self, user: str | None) -> int | None:
        if not user or not self.rec.store.has_user(user):
            return None
        return next((int(h.version) for h in self.rec.store.head_versions(user) if h.status == "active"), None)

    def owner(self, cid: int) -> str | None:
        """The user a correction id belongs to (when the face chose the user)."""
        return next((u for u in self.rec.users() if any(r["id"] == cid for r in self.rec.corrections(u))), None)

    def log_report(self, user: str, report: Any) -> dict[str, Any]:
        d = report.to_dict() if hasattr(report, "to_dict") else dict(report)
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

            def work() -> tuple[Any, dict[str, Any]]:
                kw = self.sampling(path)
                return self.rec.predict(path, **kw), kw

            res, kw = await self.run(work)
        if res.label is None:
            raise ApiError(422, "no_face", f"no face found in the {res.frames} frame(s) of the clip: face the camera, in good light")
        d = res.to_dict()
        d.update(
            fps=res.fps, tracks=max(1, len(res.tracks)), top=[k for k, _ in res.top(3)], truncated=bool(kw.get("max_frames") and res.frames >= kw["max_frames"])
        )
        for f in d["timeline"]:
            f["time"] = round(f["index"] / res.fps, 4) if res.fps else 0.0
        return _json(d)

    async def correct(self, request: Request) -> Response:
        q = request.query_params
        label, user = q.get("label", ""), q.get("user") or None
        force, new_label = (q.get(k, "") in ("1", "true", "yes") for k in ("force", "new_label"))
        async with self.upload(request) as path:

            def work() -> dict[str, Any]:
                t0 = time.time()
                extra = {"new_label": True} if new_label else {}
                c = self.rec.correct(path, label, user=user, force=force, **extra, **self.sampling(path))
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
                        adapted = {"user": who, "accepted": True, "version": int(new[-1].version), "reason": "automatic adapt", **new[-1].metrics}
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
        user = normalize_user_name(user)
        async with self.upload(request) as path:
            added = await self.run(lambda: self.rec.enroll(user, path, **self.sampling(path)))
        return _json({"user": user, "added": int(added), "users": await self.run(self.rec.users)})

    async def corrections(self, request: Request) -> Response:
        user = normalize_user_name(request.path_params["user"])
        rows = await self.read(self.rec.corrections, user)
        return _json({"user": user, "corrections": rows})

    async def history(self, request: Request) -> Response:
        user = normalize_user_name(request.path_params["user"])

        def read() -> list[dict[str, Any]]:
            if not self.rec.store.has_user(user):
                raise _err.UnknownUserError(f"unknown user {user!r}")
            return [
                {"version": int(h.version), "created": h.created, "status": h.status, "n_trained": h.n_trained, "metrics": h.metrics}
                for h in self.rec.store.head_versions(user)
            ]

        versions = await self.read(read)
        return _json({"user": user, "versions": versions, "reports": self.reports.get(user, [])})

    async def adapt(self, request: Request) -> Response:
        user = normalize_user_name(request.path_params["user"])
        report = await self.run(self.rec.adapt, user)
        return _json(self.log_report(user, report))

    async def forget(self, request: Request) -> Response:
        user = normalize_user_name(request.path_params["user"])
        rep = await self.run(self.rec.forget, user)
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


def allowed_hosts_for(host: str) -> frozenset[str] | None:
    """The ``Host`` names a server bound to ``host`` answers: the loopback names and ``host``
    itself; ``None`` (any) for a wildcard address (0.0.0.0, ::), where the clients' names for
    the machine cannot be known."""
    if host in ("0.0.0.0", "::", ""):
        return None
    return LOOPBACK_HOSTS | {host.strip("[]").lower()}


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
        allowed_hosts: host names the ``Host`` header may carry (``None``: any;
            :func:`allowed_hosts_for` gives those of a bind address).
        token: the write token (default: a new random one; ``app.state.token``).
        upload_dir: directory of the temporary upload files (default: the system's).
    """
    if not (isinstance(max_upload_mb, (int, float)) and 0 < max_upload_mb < 1e6):
        raise _err.InvalidInputError(f"max_upload_mb must be a positive number of megabytes, got {max_upload_mb!r}")
    if not (isinstance(max_seconds, (int, float)) and 0 < max_seconds <= 3600):
        raise _err.InvalidInputError(f"max_seconds must be a positive number of seconds (at most 3600), got {max_seconds!r}")
    if fps is not None and not (isinstance(fps, (int, float)) and fps > 0):
        raise _err.InvalidInputError(f"fps must be a positive number or None, got {fps!r}")
    limits = _Limits(int(max_upload_mb * 1e6), float(max_seconds), None if fps is None else float(fps))
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
        if isinstance(e, _err.UnknownLabelError):  # what the page offers instead
            return JSONResponse(
                {"error": code, "message": str(e), "label": e.label, "known": e.known, "suggestions": e.suggestions},
                status_code=status,
                headers={"Cache-Control": "no-store"},
            )
        return _error(status, code, str(e))

    app = Starlette(routes=routes, exception_handlers={ApiError: on_api_error, _err.EmoadaptError: on_library_error})
    app.state.token = token or secrets.token_urlsafe(32)
    app.state.emoadapt = state
    hosts = None if allowed_hosts is None else frozenset(h.lower() for h in allowed_hosts)
    app.add_middleware(_Guard, token=app.state.token, hosts=hosts)
    return app


def serve(recognizer: Any, *, host: str = "127.0.0.1", port: int = 8765, log_level: str = "warning", **kw: Any) -> None:
    """Run :func:`create_app` under uvicorn until interrupted (keyword arguments: those of
    :func:`create_app`)."""
    try:
        import uvicorn
    except ImportError as e:
        raise ImportError('emoadapt serve needs the "serve" extra (Starlette and uvicorn): pip install "emoadapt[serve]"') from e
    kw.setdefault("allowed_hosts", allowed_hosts_for(host))
    app = create_app(recognizer, **kw)
    uvicorn.run(app, host=host, port=port, log_level=log_level, server_header=False)
