"""Local API security: users, roles, sessions, login rate limit, CSRF, and the middleware that enforces them.

When it is on: whenever the store config names `api.users_file`. A gateway whose `api.host` is not a loopback
address must name one (edge/config.py refuses the config otherwise); a loopback-only gateway without users keeps
the open developer/test mode — nothing off the machine can reach it (docs/security.md).

With auth on, every request goes through `AuthMiddleware` (pure ASGI, so SSE streams pass untouched):

- public: `GET /api/health`, `POST /api/auth/login`, the login page and `/static/*` (page shells hold no data);
- `/metrics`: open to loopback clients (the node's own Prometheus agent), else like a manager route;
- every other `/api/...` route: 401 without a valid session, 403 when the user's role lacks the grant the route
  needs (`PERMISSIONS`, first match wins; a route nobody listed falls to `DEFAULT_READ`/`DEFAULT_WRITE`, so a
  new router is never open by accident);
- every other page: a browser without a session is sent to `/login?next=…` (303).

Sessions: a random 32-byte token, sent as `Authorization: Bearer` by API clients or as the HttpOnly, SameSite=
Strict cookie `sg_session` by pages; only its SHA-256 is kept, in memory (a restart logs everyone out — a
store's staff log in again, nothing else is lost). Cookie-authenticated writes must carry the session's CSRF
token in `X-CSRF-Token` (the login answer and the readable cookie `sg_csrf` give it to the page): a form on
another site can make the browser send the cookie but cannot read the token (OWASP CSRF Prevention Cheat Sheet,
"Synchronizer token" and "Signed double-submit cookie").

Passwords: argon2id (RFC 9106) via argon2-cffi's `PasswordHasher` defaults; the users file is JSON, mode 0600,
replaced atomically (`shelfgate users …` writes it; the gateway re-reads it when it changes, so a removed user
or a changed role takes effect on the next request).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from edge.audit import Actor, audit_for, current_actor
from edge.config import is_loopback_host

_log = logging.getLogger(__name__)

ROLES: Final = ("staff", "manager", "installer", "admin")
"""Store clerk/cashier, store manager, device installer, gateway administrator (DOMAIN.md)."""

ROLE_GRANTS: Final[dict[str, frozenset[str]]] = {
    "staff": frozenset({"staff"}),
    "manager": frozenset({"staff", "manager"}),
    "installer": frozenset({"staff", "installer"}),
    "admin": frozenset({"staff", "manager", "installer", "admin"}),
}
"""What each role may do, as grants the permission table asks for. Manager and installer are not ranked: a
manager does not calibrate scales, an installer does not read staff audit trails."""

PUBLIC: Final = "public"
WRITE_METHODS: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})

PERMISSIONS: Final[tuple[tuple[str, str, str], ...]] = (
    # (methods: "*" or "GET,POST", path regex (full match), grant needed) — first match wins.
    ("GET,HEAD", r"/api/health", PUBLIC),
    ("POST", r"/api/auth/login", PUBLIC),
    ("GET,HEAD", r"/login|/static/.*|/favicon\.ico", PUBLIC),
    ("*", r"/api/auth/(logout|me)", "staff"),
    ("*", r"/api/users(/.*)?", "admin"),
    ("*", r"/api/config(/.*)?", "admin"),
    ("*", r"/api/audit(/.*)?", "manager"),
    # The replenishment list is the restocking clerk's work list; the page opens for staff too and shows the
    # manager tabs (ABC, slow movers, staff performance — issue #6 part 9: managers only) as "managers only".
    ("GET,HEAD", r"/api/reports/replenishment(\.csv)?|/reports", "staff"),
    # Reports (ABC, slow movers, staff performance), forecasts and loss: a manager's view.
    ("*", r"/api/(reports|forecasts?|loss|shrink)(/.*)?", "manager"),
    ("*", r"/api/installer(/.*)?|/installer", "installer"),
    ("*", r"/api/cameras(/.*)?", "installer"),  # incl. the snapshot: store pixels are for the installer only
    ("*", r"/metrics", "manager"),  # loopback clients are let through before this table (module docstring)
    ("POST", r"/api/alerts/[^/]+/ack", "staff"),
    ("*", r"/api/lanes(/.*)?|/lane", "staff"),  # cashiers run their lane
    ("POST", r"/api/stocktakes/[^/]+/confirm", "manager"),  # a confirmed count rewrites book stock
    ("POST", r"/api/receipts/[^/]+/commit", "manager"),
    ("*", r"/api/(stocktakes|receipts)(/.*)?|/stocktake", "staff"),
    ("GET,HEAD", r"/|/board", "staff"),
    ("GET,HEAD", r"/docs|/redoc|/openapi\.json|/docs/.*", "manager"),
)
"""Routes and the grant they need. Anything not listed: `DEFAULT_READ` for GET/HEAD, `DEFAULT_WRITE` else."""

WEB_DIR: Final = Path(__file__).resolve().parent / "web"

DEFAULT_READ: Final = "staff"
DEFAULT_WRITE: Final = "manager"

_RULES: Final = tuple(
    (frozenset(m.split(",")) if m != "*" else None, re.compile(p), grant) for m, p, grant in PERMISSIONS
)

SESSION_COOKIE: Final = "sg_session"
CSRF_COOKIE: Final = "sg_csrf"
CSRF_HEADER: Final = "x-csrf-token"


def required_grant(method: str, path: str) -> str:
    """The grant a request needs (`public`, `staff`, `manager`, `installer` or `admin`)."""
    method = method.upper()
    for methods, pattern, grant in _RULES:
        if (methods is None or method in methods) and pattern.fullmatch(path):
            return grant
    return DEFAULT_READ if method in ("GET", "HEAD", "OPTIONS") else DEFAULT_WRITE


def may(role: str, grant: str) -> bool:
    """Whether `role` holds `grant`."""
    return grant == PUBLIC or grant in ROLE_GRANTS.get(role, frozenset())


# --- users -------------------------------------------------------------------------------------------------

USERNAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
MIN_PASSWORD_CHARS: Final = 8

_hasher = PasswordHasher()  # argon2id, RFC 9106 "second recommended option" parameters (argon2-cffi defaults)


class UserError(ValueError):
    """A refused user operation (bad name, unknown role, short password, unknown user)."""


@dataclass(frozen=True, slots=True)
class User:
    """One account of the users file."""

    name: str
    role: str
    password_hash: str
    created_at: str = ""


def hash_password(password: str) -> str:
    """An argon2id PHC string (`$argon2id$v=19$m=…`)."""
    if len(password) < MIN_PASSWORD_CHARS:
        raise UserError(f"a password needs at least {MIN_PASSWORD_CHARS} characters")
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """Constant-time argon2 verification; a malformed hash is a mismatch, not a crash."""
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


@functools.cache
def _dummy_hash() -> str:
    """Verified against for an unknown user, so 'no such user' costs as long as 'wrong password'. Made on the
    first such login, not at import: one argon2 hash (64 MiB, tens of ms) that every import of the API paid."""
    return _hasher.hash("not-a-real-password-only-for-timing")


class UserStore:
    """The users file: read when it changed (mtime/size), written atomically with mode 0600."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, User] = {}
        self._lock = threading.Lock()

    def users(self) -> dict[str, User]:
        """Every user by name (re-read if the file changed since last time; empty when there is no file)."""
        with self._lock:
            try:
                st = self.path.stat()
            except FileNotFoundError:
                self._stamp, self._users = None, {}
                return {}
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                try:
                    self._users = self._read()
                except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                    # A hand-edited, broken file: nobody logs in (never everybody) until it is fixed.
                    _log.error("users file %s unreadable, no one can log in: %s", self.path, exc)
                    self._users = {}
                self._stamp = stamp
            return dict(self._users)

    def get(self, name: str) -> User | None:
        """One user, or None."""
        return self.users().get(name)

    def _read(self) -> dict[str, User]:
        data = json.loads(self.path.read_text(encoding="utf-8"))
        out: dict[str, User] = {}
        for item in data.get("users", []):
            user = User(
                str(item["name"]), str(item["role"]), str(item["password_hash"]), item.get("created_at", "")
            )
            if user.role in ROLES:  # an unknown role grants nothing: skip rather than guess
                out[user.name] = user
        return out

    def _write(self, users: Iterable[User]) -> None:
        body = {
            "users": [
                {"name": u.name, "role": u.role, "password_hash": u.password_hash, "created_at": u.created_at}
                for u in sorted(users, key=lambda u: u.name)
            ]
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".users-", dir=self.path.parent)  # mkstemp creates it 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(body, f, ensure_ascii=False, indent=2)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        with self._lock:
            self._stamp = None  # re-read on next access

    def add(self, name: str, role: str, password: str) -> User:
        """Create a user; refuses an existing name, an unknown role or a short password."""
        if not USERNAME_RE.fullmatch(name):
            raise UserError(f"bad user name {name!r}: letters, digits and . _ @ - (at most 64)")
        if role not in ROLES:
            raise UserError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
        users = self.users()
        if name in users:
            raise UserError(f"user {name!r} already exists (use `passwd` or remove it first)")
        user = User(name, role, hash_password(password), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        self._write([*users.values(), user])
        return user

    def remove(self, name: str) -> User:
        """Delete a user (its sessions end on their next request)."""
        users = self.users()
        if name not in users:
            raise UserError(f"no user {name!r}")
        gone = users.pop(name)
        self._write(users.values())
        return gone

    def set_password(self, name: str, password: str) -> User:
        """Replace a user's password hash."""
        users = self.users()
        if name not in users:
            raise UserError(f"no user {name!r}")
        old = users[name]
        users[name] = User(old.name, old.role, hash_password(password), old.created_at)
        self._write(users.values())
        return users[name]


# --- sessions and the login rate limit ---------------------------------------------------------------------


@dataclass(slots=True)
class Session:
    """A logged-in user; the token itself is never stored, only its SHA-256."""

    user: str
    csrf: str
    expires_at: float


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass
class RateLimiter:
    """At most `max_attempts` login attempts per (client ip, user name) in any `window_s`, and four times that per
    client ip across names (password spraying). Counts every attempt: a limit that counted only failures would
    tell an attacker which guess was right by letting the next one through."""

    max_attempts: int
    window_s: float = 60.0
    clock: Callable[[], float] = time.monotonic
    _hits: dict[tuple[str, str], deque[float]] = field(default_factory=dict)

    def check(self, ip: str, user: str) -> float | None:
        """Record an attempt; None when allowed, else seconds until the next one may come."""
        now = self.clock()
        waits = [
            self._take((ip, user), self.max_attempts, now),
            self._take((ip, "\0any"), 4 * self.max_attempts, now),
        ]
        refused = [w for w in waits if w is not None]
        return max(refused) if refused else None

    def _take(self, key: tuple[str, str], limit: int, now: float) -> float | None:
        hits = self._hits.setdefault(key, deque())
        while hits and hits[0] <= now - self.window_s:
            hits.popleft()
        if len(hits) >= limit:
            return hits[0] + self.window_s - now
        hits.append(now)
        if len(self._hits) > 10_000:  # bound memory under a flood of made-up names
            for k in [k for k, v in self._hits.items() if not v or v[-1] <= now - self.window_s]:
                del self._hits[k]
        return None


class Auth:
    """Users, sessions and the login limiter of one gateway API."""

    def __init__(
        self,
        users_file: Path | None,
        *,
        session_ttl_s: float = 12 * 3600,
        login_max_attempts_per_min: int = 5,
        audit_dir: Path | None = None,
    ) -> None:
        self.users = None if users_file is None else UserStore(users_file)
        self.session_ttl_s = session_ttl_s
        self.limiter = RateLimiter(login_max_attempts_per_min)
        self.clock: Callable[[], float] = time.time
        """Session expiry clock (wall time; tests move it)."""
        self._sessions: dict[str, Session] = {}
        self.audit_dir = audit_dir

    @property
    def enabled(self) -> bool:
        """Auth is on exactly when a users file is configured."""
        return self.users is not None

    async def login(self, name: str, password: str) -> tuple[str, Session, User] | None:
        """Verify (argon2 off the event loop) and open a session: (token, session, user), or None."""
        assert self.users is not None  # noqa: S101 — the login route exists only with auth on
        user = self.users.get(name)
        ok = await asyncio.to_thread(verify_password, user.password_hash if user else _dummy_hash(), password)
        if user is None or not ok:
            return None
        token = secrets.token_urlsafe(32)
        session = Session(user.name, secrets.token_urlsafe(32), self.clock() + self.session_ttl_s)
        self._prune()
        self._sessions[_token_hash(token)] = session
        return token, session, user

    def session(self, token: str) -> tuple[Session, User] | None:
        """The live session of a token and its user's current record; None when unknown, expired or removed."""
        key = _token_hash(token)
        s = self._sessions.get(key)
        if s is None:
            return None
        if s.expires_at <= self.clock():
            del self._sessions[key]
            return None
        user = self.users.get(s.user) if self.users is not None else None
        if user is None:  # removed since login
            del self._sessions[key]
            return None
        return s, user

    def logout(self, token: str) -> bool:
        """End a session; True when it existed."""
        return self._sessions.pop(_token_hash(token), None) is not None

    def _prune(self) -> None:
        now = self.clock()
        for k in [k for k, s in self._sessions.items() if s.expires_at <= now]:
            del self._sessions[k]


# --- the middleware ----------------------------------------------------------------------------------------

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def _token_of(headers: dict[str, str]) -> tuple[str | None, bool]:
    """(token, came from the cookie)."""
    authz = headers.get("authorization", "")
    if authz[:7].lower() == "bearer ":
        return authz[7:].strip() or None, False
    if "cookie" in headers:
        jar: SimpleCookie = SimpleCookie()
        with contextlib.suppress(Exception):
            jar.load(headers["cookie"])
        if SESSION_COOKIE in jar:
            return jar[SESSION_COOKIE].value or None, True
    return None, False


def client_ip(scope: Scope) -> str:
    """The peer address (no proxy headers are trusted: the gateway is reached directly on the store LAN)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


async def _answer(
    send: Send, status: int, detail: str, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps({"detail": detail}).encode("utf-8")
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": body})


class AuthMiddleware:
    """Enforces `PERMISSIONS` on every HTTP request (the module docstring lists the rules)."""

    def __init__(self, app: ASGIApp, auth: Auth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not self.auth.enabled:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":  # the API has none; refuse rather than let one through unchecked
            await send({"type": "websocket.close", "code": 1008})
            return
        method = str(scope.get("method", "GET")).upper()
        path = str(scope.get("path", "/"))
        ip = client_ip(scope)
        grant = required_grant(method, path)
        if grant == PUBLIC or (path == "/metrics" and is_loopback_host(ip)):
            token = current_actor.set(Actor("anonymous", "none", ip))
            try:
                await self.app(scope, receive, send)
            finally:
                current_actor.reset(token)
            return
        headers = _headers(scope)
        raw, via_cookie = _token_of(headers)
        found = None if raw is None else self.auth.session(raw)
        if found is None:
            if not path.startswith("/api/") and path != "/metrics" and method in ("GET", "HEAD"):
                query = scope.get("query_string", b"").decode("latin-1")
                target = path + (f"?{query}" if query else "")
                location = f"/login?next={quote(target, safe='')}".encode("latin-1")
                await _answer(send, 303, "login required", [(b"location", location)])
            else:
                await _answer(
                    send, 401, "login required", [(b"www-authenticate", b'Bearer realm="shelfgate"')]
                )
            return
        session, user = found
        if not may(user.role, grant):
            await _answer(send, 403, f"role {user.role!r} may not {method} {path} (needs {grant})")
            return
        if via_cookie and method in WRITE_METHODS:
            sent = headers.get(CSRF_HEADER, "")
            if not sent or not hmac.compare_digest(sent.encode(), session.csrf.encode()):
                await _answer(send, 403, "missing or wrong X-CSRF-Token (cookie-authenticated write)")
                return
        token = current_actor.set(Actor(user.name, user.role, ip))
        try:
            await self.app(scope, receive, send)
        finally:
            current_actor.reset(token)


# --- routes ------------------------------------------------------------------------------------------------


class LoginRequest(BaseModel):
    """Body of POST /api/auth/login."""

    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


def auth_router(auth: Auth) -> APIRouter:
    """`/api/auth/login|logout|me`; with auth off, `me` answers the anonymous developer user."""
    r = APIRouter(tags=["auth"])

    @r.get("/login", include_in_schema=False)
    async def login_page() -> FileResponse:
        return FileResponse(WEB_DIR / "login.html", media_type="text/html; charset=utf-8")

    @r.post("/api/auth/login")
    async def login(body: LoginRequest, request: Request, response: Response) -> dict[str, Any]:
        if not auth.enabled:
            raise HTTPException(status_code=404, detail="auth is off: this gateway has no `api.users_file`")
        ip = client_ip(request.scope)
        wait_s = auth.limiter.check(ip, body.username)
        if wait_s is not None:
            retry = str(max(1, int(wait_s + 0.999)))
            raise HTTPException(
                status_code=429,
                detail=f"too many login attempts; retry in {retry} s",
                headers={"Retry-After": retry},
            )
        opened = await auth.login(body.username, body.password)
        if opened is None:
            raise HTTPException(status_code=401, detail="wrong user name or password")
        token, session, user = opened
        secure = request.url.scheme == "https"
        max_age = int(auth.session_ttl_s)
        response.set_cookie(
            SESSION_COOKIE, token, max_age=max_age, httponly=True, samesite="strict", secure=secure, path="/"
        )
        response.set_cookie(
            CSRF_COOKIE,
            session.csrf,
            max_age=max_age,
            httponly=False,
            samesite="strict",
            secure=secure,
            path="/",
        )
        response.headers["Cache-Control"] = "no-store"
        if auth.audit_dir is not None:
            await audit_for(auth.audit_dir).arecord(
                "auth.login", user.name, None, {"role": user.role}, actor=Actor(user.name, user.role, ip)
            )
        return {
            "token": token,
            "csrf_token": session.csrf,
            "user": user.name,
            "role": user.role,
            "expires_in_s": max_age,
        }

    @r.post("/api/auth/logout")
    async def logout(request: Request, response: Response) -> dict[str, Any]:
        raw, _ = _token_of({k.lower(): v for k, v in request.headers.items()})
        ended = auth.logout(raw) if raw else False
        response.delete_cookie(SESSION_COOKIE, path="/")
        response.delete_cookie(CSRF_COOKIE, path="/")
        return {"logged_out": ended}

    @r.get("/api/auth/me")
    async def me() -> dict[str, Any]:
        actor = current_actor.get()
        grants = sorted(ROLE_GRANTS.get(actor.role, frozenset()))
        return {"user": actor.user, "role": actor.role, "grants": grants, "auth": auth.enabled}

    return r


__all__ = [
    "CSRF_COOKIE",
    "CSRF_HEADER",
    "DEFAULT_READ",
    "DEFAULT_WRITE",
    "PERMISSIONS",
    "ROLES",
    "ROLE_GRANTS",
    "SESSION_COOKIE",
    "Auth",
    "AuthMiddleware",
    "User",
    "UserError",
    "UserStore",
    "auth_router",
    "hash_password",
    "is_loopback_host",
    "may",
    "required_grant",
    "verify_password",
]
