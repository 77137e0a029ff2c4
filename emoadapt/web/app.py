"""The web app: :func:`create_app` puts the routes (:mod:`~emoadapt.web.routes`), the trust
boundary (:mod:`~emoadapt.web.security`), the upload limits (:mod:`~emoadapt.web.uploads`)
and the error answers (:mod:`~emoadapt.web.serialization`) together; :func:`serve` runs it."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Iterable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from .. import errors as _err
from .routes import Handlers, routes
from .security import LOOPBACK_HOSTS, Guard, allowed_hosts_for, host_name
from .serialization import ApiError, error_for, error_response, library_error_response
from .uploads import DEFAULT_MAX_SECONDS, DEFAULT_MAX_UPLOAD_MB, Limits, sweep_uploads

__all__ = ["create_app", "serve"]

log = logging.getLogger(__package__)


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
    hosts = frozenset(host_name(h) for h in allowed_hosts)
    if not hosts:
        raise _err.InvalidInputError("allowed_hosts is empty: name at least one host the server answers to")
    if upload_dir is not None and not os.path.isdir(upload_dir):
        raise _err.InvalidInputError(f"upload_dir {os.fspath(upload_dir)!r} is not an existing directory")
    limits = Limits(int(max_upload_mb * 1e6), float(max_seconds), None if fps is None else float(fps))
    sweep_uploads(upload_dir)
    state = Handlers(recognizer, limits, None if upload_dir is None else os.fspath(upload_dir))

    async def on_api_error(request: Request, e: Exception) -> Response:
        assert isinstance(e, ApiError)
        return error_response(e.status, e.code, e.message)

    async def on_library_error(request: Request, e: Exception) -> Response:
        assert isinstance(e, _err.EmoadaptError)
        status, _ = error_for(e)
        if status >= 500:
            log.error("%s %s: %s: %s", request.method, request.url.path, type(e).__name__, e)
        return library_error_response(e)

    app = Starlette(routes=routes(state), exception_handlers={ApiError: on_api_error, _err.EmoadaptError: on_library_error})
    app.state.token = token or secrets.token_urlsafe(32)
    app.state.emoadapt = state
    app.add_middleware(Guard, token=app.state.token, hosts=hosts)
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
