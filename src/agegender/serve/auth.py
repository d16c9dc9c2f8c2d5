"""Bearer-token access to the service (off unless ``ServeSettings.token`` is set).

With a token, every request needs ``Authorization: Bearer <token>`` except these, which
stay open so the page and the API docs load in a plain browser visit and a load balancer
can probe the service:

* ``GET``/``HEAD`` ``/healthz`` (liveness; it never shows the token),
* ``GET``/``HEAD`` ``/`` (the upload page) and ``/static/...`` (its script and style),
* ``GET``/``HEAD`` ``/docs``, ``/docs-assets/...`` (Swagger UI) and ``/openapi.json``.

Everything else (``POST /v1/predict``, any route added later, unknown paths) answers
``401 {"error": ..., "detail": null}`` with ``WWW-Authenticate: Bearer`` without the right
token. The token is compared with :func:`hmac.compare_digest` (constant time). The page
sends the token typed into its field (kept in ``sessionStorage``); Swagger UI's *Authorize*
button does the same (the OpenAPI schema declares an HTTP bearer scheme).
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

#: Paths readable without the token (GET and HEAD only).
OPEN_PATHS = frozenset({"/healthz", "/", "/docs", "/openapi.json"})
#: Path prefixes readable without the token (GET and HEAD only): the page's and /docs' files.
OPEN_PREFIXES = ("/static/", "/docs-assets/")
#: The environment variable ``agegender serve`` reads the token from (``--token-file`` wins).
TOKEN_ENV = "AGEGENDER_TOKEN"


def is_open(method: str, path: str) -> bool:
    """Whether a request may go without the token."""
    if method not in ("GET", "HEAD"):
        return False
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def check_token(token: str) -> str:
    """``token`` if it can be sent in a header: printable ASCII without spaces (RFC 6750's
    token characters and more); ValueError saying why not."""
    if not token:
        raise ValueError("empty token")
    if not all(0x21 <= ord(c) <= 0x7E for c in token):
        raise ValueError("the token must be one line of printable ASCII without spaces")
    return token


def read_token_file(path: str | Path) -> str:
    """The token in ``path`` (surrounding whitespace and the trailing newline stripped);
    ValueError ``"<path>: <reason>"`` for a missing, unreadable, empty or bad file."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{path}: no such token file") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a directory, not a token file") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the token file ({exc.strerror or exc})") from None
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ValueError(f"{path}: the token must be printable ASCII") from None
    if not text:
        raise ValueError(f"{path}: empty token file")
    try:
        return check_token(text)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def token_from_env(environ: dict[str, str] | None = None) -> str | None:
    """The token in ``$AGEGENDER_TOKEN`` (None when unset); ValueError when set but empty
    or unusable, so a typo never silently turns access control off."""
    value = (os.environ if environ is None else environ).get(TOKEN_ENV)
    if value is None:
        return None
    try:
        return check_token(value.strip())
    except ValueError as exc:
        raise ValueError(f"{TOKEN_ENV}: {exc}") from None


def _unauthorized(error: str, challenge: str) -> JSONResponse:
    return JSONResponse(
        {"error": error, "detail": None},
        status_code=401,
        headers={"www-authenticate": challenge},
    )


class BearerAuthMiddleware:
    """Answer 401 to every HTTP request but the open ones (:func:`is_open`) that lacks
    ``Authorization: Bearer <token>``."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._token = check_token(token).encode("ascii")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        header = next((v for k, v in scope.get("headers") or [] if k == b"authorization"), None)
        if header is None:
            response = _unauthorized(
                "authorization required: send Authorization: Bearer <token>", "Bearer"
            )
        else:
            scheme, _, given = header.strip().partition(b" ")
            given = given.strip()
            if scheme.lower() != b"bearer" or not given:
                response = _unauthorized(
                    "malformed Authorization header: expected Bearer <token>",
                    'Bearer error="invalid_request"',
                )
            elif hmac.compare_digest(given, self._token):
                await self.app(scope, receive, send)
                return
            else:
                response = _unauthorized("invalid token", 'Bearer error="invalid_token"')
        await response(scope, receive, send)
