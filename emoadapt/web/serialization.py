"""What the web app says: JSON responses, the HTTP status and code of each library error, the
page's headers, and the JSON of a prediction, a head version and an adaptation report."""

from __future__ import annotations

import re
import time
from typing import Any

from starlette.responses import JSONResponse

from .. import errors as _err

__all__ = [
    "ERROR_STATUS",
    "PAGE_HEADERS",
    "ApiError",
    "error_for",
    "error_response",
    "library_error_response",
    "json_response",
    "html_attr",
    "prediction_json",
    "head_version_json",
    "report_json",
]

#: HTTP status and error code of each library error (the first matching class wins)
ERROR_STATUS: tuple[tuple[type[_err.EmoadaptError], int, str], ...] = (
    (_err.UnknownUserError, 404, "unknown_user"),
    (_err.IdentityMismatchError, 409, "identity_mismatch"),
    (_err.IdentityConflictError, 409, "identity_conflict"),  # its message names no one
    (_err.VideoDecodeError, 422, "bad_file"),
    (_err.UnknownLabelError, 400, "unknown_label"),
    (_err.AmbiguousUserError, 409, "ambiguous_user"),
    (_err.InvalidInputError, 400, "invalid_input"),
    (_err.PersonalizationUnsupportedError, 409, "cannot_adapt"),
    (_err.StoreError, 500, "store_error"),
    (_err.ModelIntegrityError, 500, "model_error"),
    (_err.EmoadaptError, 500, "error"),
)

#: headers of the page: nothing from elsewhere, never framed, never cached
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # everything from this server; the camera preview and the recorded clip are blob:/mediastream: URLs
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob: mediastream:; connect-src 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'none'",
}
_NO_STORE = {"Cache-Control": "no-store"}


class ApiError(Exception):
    """An error answered as JSON ``{"error": code, "message": message}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


_OVERRIDE = re.compile(r"[;,]?\s*(?:or\s+)?pass\s+(?:force|allow_shared_face)\s*=\s*True\b[^;.]*", re.IGNORECASE)


#: the library's words that mean nothing to a person using the page, and what the page says instead
_WEB_WORDS = (
    ("not a video or image OpenCV can read", "it is not a video or a photo in a format this app reads (MP4, WebM, MOV, AVI, FLV, JPEG, PNG)"),
    ("OpenCV", "the video reader"),
)


def _public(message: str) -> str:
    """A library message as said over HTTP: without the Python API's ``force=True`` advice
    (the HTTP API has no override of the identity check), in the page's words (no library names)."""
    message = _OVERRIDE.sub("", message).strip()
    for words, said in _WEB_WORDS:
        message = message.replace(words, said)
    return message


_NOT_THEIR_FACE = "; corrections and enrolments under a name must show that person's face: leave the name empty to be recognised, or use your own name"


def error_for(e: _err.EmoadaptError) -> tuple[int, str]:
    """``(status, code)`` of a library error; a clip without a face is ``(422, "no_face")``."""
    for cls, status, code in ERROR_STATUS:
        if isinstance(e, cls):
            if cls is _err.InvalidInputError and str(e).startswith("no face"):
                return 422, "no_face"
            return status, code
    return 500, "error"  # pragma: no cover - EmoadaptError is last in ERROR_STATUS


def error_response(status: int, code: str, message: str) -> JSONResponse:
    """``{"error": code, "message": message}`` (without the Python API's ``force=True`` advice)."""
    return JSONResponse({"error": code, "message": _public(message)}, status_code=status, headers=_NO_STORE)


def library_error_response(e: _err.EmoadaptError) -> JSONResponse:
    """The answer to a library error: :func:`error_for`'s status and code; an ambiguous user
    name carries the listed names it could mean, an unknown label the known labels and
    suggestions, a face that is not the named user's says what to do."""
    status, code = error_for(e)
    if isinstance(e, _err.AmbiguousUserError):  # the listed names it could mean
        return JSONResponse({"error": code, "message": str(e), "name": e.name, "users": e.users}, status_code=status, headers=_NO_STORE)
    if isinstance(e, _err.UnknownLabelError):  # what the page offers instead
        return JSONResponse(
            {"error": code, "message": str(e), "label": e.label, "known": e.known, "suggestions": e.suggestions},
            status_code=status,
            headers=_NO_STORE,
        )
    message = str(e)
    if isinstance(e, _err.IdentityMismatchError) and message.startswith("the face in the clip does not match"):
        message = _public(message) + _NOT_THEIR_FACE
    return error_response(status, code, message)


def json_response(data: Any) -> JSONResponse:
    """``data`` as JSON, never cached."""
    return JSONResponse(data, headers=_NO_STORE)


def html_attr(text: str) -> str:
    """Text escaped for an HTML attribute value in double quotes."""
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")


def prediction_json(res: Any, truncated: bool) -> dict[str, Any]:
    """What ``POST /api/predict`` answers: the :class:`~emoadapt.Result` as a dict, with its
    frame rate, number of face tracks, top 3 labels, whether the upload was cut, and each
    timeline frame's time in seconds."""
    d: dict[str, Any] = res.to_dict()
    d.update(fps=res.fps, tracks=max(1, len(res.tracks)), top=[k for k, _ in res.top(3)], truncated=truncated)
    for f in d["timeline"]:
        f["time"] = round(f["index"] / res.fps, 4) if res.fps else 0.0
    return d


def head_version_json(h: Any, before: float | None, after: float | None) -> dict[str, Any]:
    """A personal head version of the history: its store record and its held-out accuracy
    before (universal) and after (the installed candidate)."""
    return {
        "version": int(h.version),
        "created": h.created,
        "status": h.status,
        "n_trained": h.n_trained,
        "n_corrections": h.metrics.get("n_corrections", h.n_trained),
        "held_out_accuracy_before": before,
        "held_out_accuracy_after": after,
        "metrics": h.metrics,
    }


def report_json(report: Any) -> dict[str, Any]:
    """An adaptation report as the page shows it: its fields, its plain-words explanation, the time."""
    d = report.to_dict() if hasattr(report, "to_dict") else dict(report)
    if hasattr(report, "explanation"):  # what the user's model now does, in plain words (the page shows it)
        d["explanation"] = report.explanation()
    d["time"] = time.time()
    return d
