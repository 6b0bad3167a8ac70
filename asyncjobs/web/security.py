"""Dashboard security: where it may listen, who may read, who may change things.

* **Bind**: ``check_bind`` refuses a non-loopback address without a token (or ``insecure``).
  Mounted in another app, the same rule is applied per request to the address the request
  arrived on.
* **Host**: without a token only loopback ``Host`` names (and ``allowed_hosts``) are served,
  so a web page cannot reach the dashboard by DNS rebinding.
* **Token**: with a token every ``/api`` call (and ``/metrics``) needs ``Authorization:
  Bearer <token>`` or the session cookie (``HttpOnly``, ``SameSite=Strict``) the viewer gets
  by opening ``/?token=<token>`` once; the viewer's HTML, JS and CSS hold no data and are public.
* **CSRF**: a POST with the session cookie (or with no token configured) must carry the
  ``X-CSRF-Token`` header equal to the ``asyncjobs_csrf`` cookie (double submit: a page of
  another origin can neither read the cookie nor send the header without a CORS preflight
  we never answer), and its ``Origin``, when sent, must be our own or an allowed one.
  Bearer-token calls carry no ambient credential and need no CSRF token.
* **Headers**: a strict Content-Security-Policy (no inline script, no other origin),
  ``nosniff``, ``no-referrer``, no framing.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode

from asyncjobs.errors import ConfigurationError
from asyncjobs.web.serialize import dumps
from asyncjobs.web.settings import DashboardSettings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SESSION_COOKIE = "asyncjobs_session"
CSRF_COOKIE = "asyncjobs_csrf"
CSRF_HEADER = "x-csrf-token"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
        b"form-action 'self'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


def is_loopback(host: str) -> bool:
    """Whether a bind address or host name stays on this machine."""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, settings: DashboardSettings) -> None:
    """Raise ``ConfigurationError`` for a non-loopback address without token or insecure."""
    if not is_loopback(host) and settings.token is None and not settings.insecure:
        raise ConfigurationError(
            f"refusing to serve the dashboard on {host!r} without a token: anyone who can "
            "reach it could read run arguments and trigger or cancel jobs. Set a token "
            "(--token / ASYNCJOBS_DASHBOARD_TOKEN), bind to 127.0.0.1, or pass --insecure."
        )


def session_value(token: str) -> str:
    """The session cookie for a token (changing the token logs every browser out)."""
    return hmac.new(token.encode(), b"asyncjobs-dashboard-session", hashlib.sha256).hexdigest()


class SecurityMiddleware:
    """Pure ASGI middleware (so SSE streams pass through untouched) applying the rules above."""

    def __init__(self, app: ASGIApp, settings: DashboardSettings) -> None:
        self.app = app
        self.settings = settings
        self._session = None if settings.token is None else session_value(settings.token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = _Request(scope)
        denied = self._check(request)
        if denied is not None:
            status, message = denied
            await _respond(send, status, {"error": {"type": "Forbidden", "message": message}})
            return
        if self._is_login(request):
            await self._login(request, send)
            return
        extra = list(SECURITY_HEADERS)
        if request.method == "GET" and not request.is_api and CSRF_COOKIE not in request.cookies:
            extra.append((b"set-cookie", _cookie(request, CSRF_COOKIE, secrets.token_urlsafe(32))))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _check(self, request: _Request) -> tuple[int, str] | None:
        settings = self.settings
        if settings.token is None and not settings.insecure:
            server = request.scope.get("server")
            # a unix socket (port None) is only reachable through a local proxy
            if server and server[1] is not None and not is_loopback(str(server[0])):
                return 403, "the dashboard is reachable from the network without a token"
            if not is_loopback(request.host) and request.host not in settings.allowed_hosts:
                return 403, f"unexpected Host {request.host!r} (add it to allowed_hosts)"
        if not request.is_api:
            return None
        bearer = self._bearer_ok(request)
        if settings.token is not None and not bearer and not self._session_ok(request):
            if request.method in SAFE_METHODS:
                return 401, "authentication required: open the dashboard with ?token=..."
            return 403, "a token is required"
        if request.method not in SAFE_METHODS and not bearer:
            return self._check_csrf(request)
        return None

    def _bearer_ok(self, request: _Request) -> bool:
        token = self.settings.token
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        return (
            token is not None
            and scheme.lower() == "bearer"
            and hmac.compare_digest(value.strip().encode(), token.encode())
        )

    def _session_ok(self, request: _Request) -> bool:
        cookie = request.cookies.get(SESSION_COOKIE, "")
        return self._session is not None and hmac.compare_digest(cookie, self._session)

    def _check_csrf(self, request: _Request) -> tuple[int, str] | None:
        cookie = request.cookies.get(CSRF_COOKIE, "")
        header = request.headers.get(CSRF_HEADER, "")
        if not cookie or not hmac.compare_digest(cookie.encode(), header.encode()):
            return 403, "missing or wrong CSRF token (send cookie asyncjobs_csrf as X-CSRF-Token)"
        origin = request.headers.get("origin")
        if origin is not None and origin not in (request.origin, *self.settings.allowed_origins):
            return 403, f"cross-origin request from {origin!r} refused"
        return None

    def _is_login(self, request: _Request) -> bool:
        return request.method == "GET" and not request.is_api and "token" in request.query

    async def _login(self, request: _Request, send: Send) -> None:
        """``/?token=...``: set the session cookie and reload without the token in the URL."""
        token = self.settings.token
        given = request.query["token"]
        if token is None or not hmac.compare_digest(given.encode(), token.encode()):
            await _respond(send, 403, {"error": {"type": "Forbidden", "message": "wrong token"}})
            return
        rest = urlencode([(k, v) for k, v in request.query_list if k != "token"])
        location = request.root_path + request.path + (f"?{rest}" if rest else "")
        headers = [
            (b"location", location.encode()),
            (b"set-cookie", _cookie(request, SESSION_COOKIE, self._session or "", http_only=True)),
            (b"cache-control", b"no-store"),
            *SECURITY_HEADERS,
        ]
        await send({"type": "http.response.start", "status": 303, "headers": headers})
        await send({"type": "http.response.body", "body": b""})


class _Request:
    """The parts of an HTTP scope the checks read."""

    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self.method: str = scope["method"]
        self.root_path: str = scope.get("root_path", "")
        self.path: str = scope["path"]
        if self.root_path and self.path.startswith(self.root_path):
            self.path = self.path[len(self.root_path) :]  # starlette keeps the mount prefix
        # data endpoints: the API and the Prometheus metrics (queue and job names, loads)
        self.is_api = self.path.startswith("/api/") or self.path == "/metrics"
        self.headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
        }
        self.query_list = parse_qsl(scope.get("query_string", b"").decode("latin-1"))
        self.query = dict(self.query_list)
        cookies: SimpleCookie = SimpleCookie()
        try:
            cookies.load(self.headers.get("cookie", ""))
        except Exception:  # a malformed cookie header counts as no cookies
            cookies = SimpleCookie()
        self.cookies = {k: m.value for k, m in cookies.items()}
        host_header = self.headers.get("host", "")
        self.host = _host_name(host_header)
        self.origin = f"{scope.get('scheme', 'http')}://{host_header}"
        self.secure = scope.get("scheme") == "https"


def _host_name(host_header: str) -> str:
    """``Host`` header → host name without the port (IPv6 brackets removed)."""
    if host_header.startswith("["):
        return host_header[1 : host_header.find("]")].lower()
    return host_header.rsplit(":", 1)[0].lower() if host_header.count(":") == 1 else host_header


def _cookie(request: _Request, name: str, value: str, *, http_only: bool = False) -> bytes:
    parts = [f"{name}={value}", f"Path={request.root_path or ''}/", "SameSite=Strict"]
    if http_only:
        parts.append("HttpOnly")
    if request.secure:
        parts.append("Secure")
    return "; ".join(parts).encode()


async def _respond(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = dumps(body)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        *SECURITY_HEADERS,
    ]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="asyncjobs"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
