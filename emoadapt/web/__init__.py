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
  ``cannot_adapt`` 409 (a backbone that cannot adapt), ``forbidden`` 403.

Modules: :mod:`~emoadapt.web.app` (:func:`create_app`, :func:`serve`),
:mod:`~emoadapt.web.routes` (the handlers), :mod:`~emoadapt.web.security` (host and token
checks), :mod:`~emoadapt.web.uploads` (upload files, limits, what is analysed) and
:mod:`~emoadapt.web.serialization` (JSON answers, error codes).
"""

from __future__ import annotations

try:  # the serve extra: a typed error naming the install line, before any module needs it
    import starlette  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised by tests/test_csv_output.py with the module hidden
    from ..errors import MissingDependencyError

    raise MissingDependencyError.for_extra("emoadapt serve (Starlette and uvicorn)", "serve") from e

from .app import create_app, serve
from .routes import STATIC_DIR
from .security import LOOPBACK_HOSTS, WILDCARD_HOSTS, allowed_hosts_for
from .serialization import ERROR_STATUS, ApiError, error_for
from .uploads import DEFAULT_MAX_SECONDS, DEFAULT_MAX_UPLOAD_MB, MAX_CLIP_FPS, MAX_CLIP_FRAME_PIXELS, sweep_uploads

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
