"""Who may read the app, checked on every request before any handler runs, and the headers every answer
carries.

* With a token (required when the app listens beyond this machine), a request must carry it: the header
  ``Authorization: Bearer TOKEN``, the query parameter ``?token=TOKEN`` (what a link in a chat can carry), or
  the cookie the app sets when a page was opened with ``?token=`` (so its links and its live updates need not
  repeat it). Compared in constant time (``hmac.compare_digest``), so the answer's timing does not spell out
  the token.
* Without a token the app listens on loopback only, and a request must name this machine in its ``Host``
  header: a web page the user visits could otherwise point a domain of its own at 127.0.0.1 (DNS rebinding)
  and read the store through the user's browser.
* Every answer says: no caching, no sniffing, no referrer (a token in the URL must not leak to another site),
  no framing.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

__all__ = ["COOKIE", "Guard", "LOCAL_HOSTS"]

COOKIE = "runlens_token"
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_HEADERS = [
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class Guard:
    """ASGI middleware: the token or host check, then the common headers on the way out."""

    def __init__(self, app: ASGIApp, *, token: str | None, allowed_hosts: frozenset[str] | None) -> None:
        self.app = app
        self.token = token.encode("utf-8") if token else None
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.allowed_hosts is not None and _hostname(headers.get("host", "")) not in self.allowed_hosts:
            await _refuse(send, 403, "this runlens ui answers only requests addressed to this machine")
            return
        set_cookie = False
        if self.token is not None:
            given, from_query = _presented(scope, headers)
            if given is None or not hmac.compare_digest(given.encode("utf-8"), self.token):
                await _refuse(send, 401, "a valid token is required (Authorization: Bearer TOKEN, or ?token=)")
                return
            set_cookie = from_query and _cookie(headers) != given

        async def send_with_headers(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                extra = list(_HEADERS)
                if set_cookie:
                    assert self.token is not None
                    extra.append((b"set-cookie", COOKIE.encode() + b"=" + self.token
                                  + b"; Path=/; HttpOnly; SameSite=Strict"))
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _hostname(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _cookie(headers: dict[str, str]) -> str | None:
    raw = headers.get("cookie")
    if not raw:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(raw)
    except Exception:   # a malformed Cookie header is no token, not an error
        return None
    morsel = jar.get(COOKIE)
    return morsel.value if morsel is not None else None


def _presented(scope: Scope, headers: dict[str, str]) -> tuple[str | None, bool]:
    """The token the request carries and whether it came in the query string."""
    auth = headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip(), False
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if query.get("token"):
        return query["token"][0], True
    return _cookie(headers), False


async def _refuse(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message, "status": status}).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *_HEADERS]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="runlens"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
