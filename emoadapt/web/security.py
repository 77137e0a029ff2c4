"""The trust boundary of the web app: every request must name an allowed host (which defeats
DNS rebinding; the check cannot be turned off), and writes must come from the same origin
with the server's token (:class:`Guard`); the host names a bind address answers
(:func:`allowed_hosts_for`)."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import errors as _err
from .serialization import error_response

__all__ = ["LOOPBACK_HOSTS", "WILDCARD_HOSTS", "TOKEN_HEADER", "Guard", "host_name", "allowed_hosts_for"]

log = logging.getLogger(__package__)

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})
"""Bind addresses meaning every address of the computer: a server bound there must be told
the host names its clients use (:func:`allowed_hosts_for`)."""
TOKEN_HEADER = "x-emoadapt-token"
_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _hostname(host: str) -> str | None:
    try:
        name = urlsplit("//" + host).hostname
    except ValueError:
        return None
    return name.lower() if name else None


class Guard:
    """ASGI middleware: allowed ``Host`` on every request; same origin and the token on writes."""

    def __init__(self, app: ASGIApp, *, token: str, hosts: frozenset[str]) -> None:
        self.app, self.token, self.hosts = app, token, hosts

    def refusal(self, method: str, headers: Headers) -> str | None:
        """Why a request is refused (403), ``None`` when it passes."""
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
                await error_response(403, "forbidden", why)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def host_name(name: Any) -> str:
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
    names = {host_name(n) for n in extra}
    if host.strip("[]") in WILDCARD_HOSTS:
        if not names:
            raise _err.InvalidInputError(
                f"serving on {host or 'every address'} (every address of this computer) needs the host names its users "
                "type in the browser, listed: --allowed-host NAME (repeatable; e.g. this computer's name or its address "
                "on the network). Any name is never accepted: a web page elsewhere could reach the app through DNS rebinding"
            )
        return LOOPBACK_HOSTS | names
    return LOOPBACK_HOSTS | {host_name(host)} | names
