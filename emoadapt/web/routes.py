"""The routes of the web app and what they share (:class:`Handlers`: one Recognizer, the
limits, this server's adaptation reports), and the table of routes (:func:`routes`)."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from .. import errors as _err
from ..store import normalize_label, normalize_user_name
from .serialization import PAGE_HEADERS, ApiError, head_version_json, html_attr, json_response, prediction_json, report_json
from .uploads import Limits, UploadDirs, clip_to_analyse, default_upload_dirs, receive_upload

__all__ = ["STATIC_DIR", "Handlers", "routes"]

log = logging.getLogger(__package__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
_MAX_REPORTS = 100  # adaptation reports kept per user in memory (the store keeps the versions)


class Handlers:
    """The routes' state: one Recognizer, limits, the upload directories, and this server's
    adapt reports; a method per route."""

    def __init__(self, rec: Any, limits: Limits, upload_dir: str | None, uploads: UploadDirs | None = None) -> None:
        self.rec, self.limits, self.upload_dir = rec, limits, upload_dir
        self.uploads = default_upload_dirs() if uploads is None else uploads
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

    def upload(self, request: Request) -> AbstractAsyncContextManager[Path]:
        """The request's upload as a file for the time of the request
        (:func:`~emoadapt.web.uploads.receive_upload` with this app's limit and directories)."""
        return receive_upload(request, self.limits.max_upload_bytes, self.uploads, self.upload_dir)

    def check_face(self, user: str, path: Path) -> None:
        """IdentityMismatchError unless the face in the upload is ``user``'s, when ``user`` is
        enrolled: over HTTP only a person's face adds faces to their name (what
        :meth:`Recognizer.correct` checks without ``force``). A new name is anyone's."""
        rec = self.rec
        if not rec.store.has_user(user):
            return
        theirs = rec.store.embeddings(user, model=rec.identity).get(user)
        if theirs is None:
            other = rec.reenroll_needed().get(user)
            if other:
                raise _err.IdentityMismatchError(
                    f"{user!r} is enrolled with another identity model ({', '.join(other)}), whose faces this server cannot "
                    f"compare: re-enrol them on this computer (emoadapt enroll {user} CLIP)"
                )
            return
        clip, kw, _ = clip_to_analyse(path, self.limits)
        res = rec.analyze(clip, identity=True, **kw)
        if res.embedding is None:
            raise ApiError(422, "no_face", f"no face found in the {res.frames} frame(s) of the clip: face the camera, in good light")
        ok, score = rec.matcher.verify(res.embedding, theirs)
        if not ok:
            raise _err.IdentityMismatchError(f"the face in the clip does not match {user!r} (similarity {rec.matcher.describe(score, verify=True)})")

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
        d = report_json(report)
        kept = self.reports.setdefault(user, [])
        kept.append(d)
        del kept[:-_MAX_REPORTS]
        return d

    # -- routes -------------------------------------------------------------------------------
    async def index(self, request: Request) -> Response:
        page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
        config = {"maxUploadBytes": self.limits.max_upload_bytes, "maxSeconds": self.limits.max_seconds, "classes": self.rec.classes}
        page = page.replace("{{token}}", request.app.state.token).replace("{{config}}", html_attr(json.dumps(config)))
        return HTMLResponse(page, headers=PAGE_HEADERS)

    async def info(self, request: Request) -> Response:
        users = await self.read(self.rec.users)
        return json_response(
            {
                "classes": self.rec.classes,
                "users": users,
                "max_upload_bytes": self.limits.max_upload_bytes,
                "max_seconds": self.limits.max_seconds,
                "fps": self.limits.fps,
            }
        )

    async def users(self, request: Request) -> Response:
        return json_response({"users": await self.read(self.rec.users)})

    async def predict(self, request: Request) -> Response:
        async with self.upload(request) as path:

            def work() -> tuple[Any, bool]:
                clip, kw, frames = clip_to_analyse(path, self.limits)
                res = self.rec.predict(clip, **kw)
                return res, bool(frames is not None and (frames.cut or res.frames >= kw["max_frames"]))

            res, truncated = await self.run(work)
        if res.label is None:
            raise ApiError(422, "no_face", f"no face found in the {res.frames} frame(s) of the clip: face the camera, in good light")
        return json_response(prediction_json(res, truncated))

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
                clip, kw, _ = clip_to_analyse(path, self.limits)
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
        return json_response(out)

    async def enroll(self, request: Request) -> Response:
        user = request.query_params.get("user", "")
        if not user.strip():
            raise ApiError(400, "invalid_input", "type your name first: it is what the enrolment is stored under")
        raw, user = user, normalize_user_name(user)
        async with self.upload(request) as path:

            def work() -> int:
                self.new_name(raw)
                self.check_face(user, path)
                clip, kw, _ = clip_to_analyse(path, self.limits)
                return int(self.rec.enroll(user, clip, **kw))

            added = await self.run(work)
        return json_response({"user": user, "added": int(added), "users": await self.run(self.rec.users)})

    async def corrections(self, request: Request) -> Response:
        user = await self.read(self.listed_name, request.path_params["user"])
        rows = await self.read(self.rec.corrections, user)
        return json_response({"user": user, "corrections": rows})

    async def history(self, request: Request) -> Response:
        user = await self.read(self.listed_name, request.path_params["user"])

        def read() -> list[dict[str, Any]]:
            return [head_version_json(h, *self.held_out(user, h)) for h in self.rec.store.head_versions(user)]

        versions = await self.read(read)
        return json_response({"user": user, "versions": versions, "reports": self.reports.get(user, [])})

    async def adapt(self, request: Request) -> Response:
        user = await self.read(self.listed_name, request.path_params["user"])
        report = await self.run(self.rec.adapt, user)
        return json_response(self.log_report(user, report))

    async def forget(self, request: Request) -> Response:
        raw = request.path_params["user"]
        user = await self.read(self.listed_name, raw)
        rep = await self.run(self.rec.forget, raw)  # as sent: the store refuses a former name of another user
        self.reports.pop(user, None)
        out = dataclasses.asdict(rep) if dataclasses.is_dataclass(rep) and not isinstance(rep, type) else {}
        return json_response({"user": user, **out, "users": await self.run(self.rec.users)})


def routes(h: Handlers) -> list[BaseRoute]:
    """The app's routes: the page, the JSON API and the static files."""
    return [
        Route("/", h.index, methods=["GET"]),
        Route("/api/info", h.info, methods=["GET"]),
        Route("/api/users", h.users, methods=["GET"]),
        Route("/api/predict", h.predict, methods=["POST"]),
        Route("/api/correct", h.correct, methods=["POST"]),
        Route("/api/enroll", h.enroll, methods=["POST"]),
        Route("/api/users/{user}/corrections", h.corrections, methods=["GET"]),
        Route("/api/users/{user}/history", h.history, methods=["GET"]),
        Route("/api/users/{user}/adapt", h.adapt, methods=["POST"]),
        Route("/api/users/{user}", h.forget, methods=["DELETE"]),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
    ]
