"""The HTTP service: ``POST /v1/predict``, ``GET /healthz``, ``GET /`` (upload page), ``/docs``.

>>> app = create_app(Predictor.load("model.onnx"), ServeSettings(max_file_bytes=5_000_000))
>>> uvicorn.run(app, host="127.0.0.1", port=8000)

Requests are multipart forms with one or several images in the field ``files`` (or
``file``). Limits (all in :class:`ServeSettings`) answer with a JSON error
``{"error": "...", "detail": ...}``:

=====  ==========================================================================
408    the request body did not arrive within ``body_timeout_s`` (the connection
       is closed)
413    a file over ``max_file_bytes``, a body over the total limit, more than
       ``max_files`` files, an image over ``max_pixels`` pixels, or a request over
       ``max_request_pixels`` decoded pixels in all (counted from the image headers
       before anything is decoded; decompression bombs included)
415    a part whose content type (or, for ``application/octet-stream``, whose
       bytes) is not JPEG, PNG, WebP, BMP, GIF, TIFF, HEIC/HEIF or AVIF; a body
       that is not multipart
422    no file in the request, or no file in it could be decoded
503    the server is busy: the request's lane (see :mod:`agegender.serve.admission`)
       is full; ``Retry-After`` says when to try again
504    the request did not finish within ``timeout_s`` (its work is stopped)
=====  ==========================================================================

A request with several images where only some fail to decode (or hold no face) answers
200, with ``error`` set on those images' results. Inference runs in bounded worker lanes,
never on the event loop; the faces of all images of one request are classified together in
batches. Every response carries ``Content-Security-Policy``, ``X-Content-Type-Options:
nosniff`` and ``Referrer-Policy: no-referrer``; ``/docs`` serves Swagger UI from the
``fastapi-swagger`` package's files, so it works offline.

With ``ServeSettings.token`` set, every route but ``/healthz``, the page (``/``,
``/static/``) and the docs (``/docs``, ``/docs-assets/``, ``/openapi.json``) answers 401
without ``Authorization: Bearer <token>``: see :mod:`agegender.serve.auth`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agegender.data.imageio import header_pixels, heif_kind
from agegender.infer.predictor import Cancelled, Predictor
from agegender.serve.admission import Busy, Lane
from agegender.serve.auth import BearerAuthMiddleware, is_open

STATIC_DIR = Path(__file__).resolve().parent / "static"

ACCEPTED_TYPES = {
    "image/jpeg": "JPEG",
    "image/jpg": "JPEG",
    "image/pjpeg": "JPEG",
    "image/png": "PNG",
    "image/webp": "WEBP",
    "image/bmp": "BMP",
    "image/x-bmp": "BMP",
    "image/x-ms-bmp": "BMP",
    "image/gif": "GIF",
    "image/tiff": "TIFF",
    "image/heic": "HEIF",
    "image/heif": "HEIF",
    "image/heic-sequence": "HEIF",
    "image/heif-sequence": "HEIF",
    "image/avif": "AVIF",
}
_KINDS = "JPEG, PNG, WebP, BMP, GIF, TIFF, HEIC/HEIF or AVIF"
_GENERIC_TYPES = {"", "application/octet-stream"}
_MAGIC = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
)


@dataclass
class ServeSettings:
    """Service limits and options."""

    max_file_bytes: int = 10 * 1024 * 1024
    max_files: int = 16
    max_pixels: int = 40_000_000  # per image
    max_request_pixels: int = 48_000_000  # all images of one request, decoded
    heavy_pixels: int = 4_000_000  # a request over this goes to the heavy lane
    timeout_s: float = 30.0
    max_concurrency: int = 2  # ordinary requests running inference at once
    max_queue: int = 16  # ordinary requests waiting; more are answered 503
    heavy_queue: int = 2  # pixel-heavy requests waiting (one runs at a time)
    body_timeout_s: float = 15.0  # a request body must arrive within this
    max_connections: int = 256  # uvicorn's limit_concurrency: more get 503
    batch_size: int = 64
    model: str | None = None  # for create_app(predictor=None): Predictor.load(model)
    runtime: str = "auto"
    detector: str = "blazeface"
    # Authorization: Bearer <token> required (see agegender.serve.auth); None: open.
    # Kept out of repr() so it never reaches a log.
    token: str | None = field(default=None, repr=False)

    @property
    def max_request_bytes(self) -> int:
        return self.max_files * self.max_file_bytes + 64 * 1024


class ApiError(Exception):
    """A client error answered as ``{"error": message, "detail": detail}``."""

    def __init__(
        self, status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(error)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers


def _error(
    status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


#: Sent with every response. The page and /docs load scripts and styles only from this
#: server (images may be data:/blob: URLs: the page draws the uploaded photos and crops).
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data: blob:; "
    "style-src 'self'; script-src 'self'; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


class SecurityHeadersMiddleware:
    """Add :data:`SECURITY_HEADERS` to every HTTP response that does not set them itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                have = {k.decode("latin-1").lower() for k, _ in headers}
                for key, value in SECURITY_HEADERS.items():
                    if key not in have:
                        headers.append((key.encode("latin-1"), value.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyLimitMiddleware:
    """Refuse request bodies over ``limit`` bytes with 413, by header or while streaming,
    and bodies that do not arrive within ``timeout_s`` with 408 (and a closed connection)."""

    def __init__(self, app: ASGIApp, limit: int, timeout_s: float = 15.0) -> None:
        self.app, self.limit, self.timeout_s = app, limit, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await _error(413, "request too large", {"bytes": int(length), "limit": self.limit})(
                scope, receive, send
            )
            return
        received = 0
        body_done = False
        deadline = time.monotonic() + self.timeout_s

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # afterwards only a disconnect can come: no deadline
                return await receive()
            with anyio.move_on_after(max(0.0, deadline - time.monotonic())) as scope:
                message = await receive()
            if scope.cancelled_caught:
                raise ApiError(
                    408,
                    "request body not received in time",
                    {"timeout_s": self.timeout_s},
                    headers={"connection": "close"},
                )
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise ApiError(413, "request too large", {"limit": self.limit})
                body_done = not message.get("more_body", False)
            return message

        await self.app(scope, limited_receive, send)


def _sniff(head: bytes) -> str | None:
    for magic, ctype in _MAGIC:
        if head.startswith(magic):
            return ctype
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    kind = heif_kind(head)
    if kind is not None:
        return "image/avif" if kind == "AVIF" else "image/heif"
    return None


_OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "one or several images (JPEG, PNG, WebP, BMP, GIF, "
                            "TIFF, HEIC/HEIF, AVIF)",
                        },
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "a single image (alternative to files)",
                        },
                    },
                }
            }
        },
    }
}


def _result_dict(result: Any, crops: bool) -> dict[str, Any]:
    """An ImageResult as JSON; with ``crops`` each face carries the aligned crop the model
    saw as a PNG data URL (``crop``)."""
    from agegender.infer.drawing import crop_data_url

    d = result.to_dict()
    if crops:
        for face, fd in zip(result.faces, d["faces"], strict=True):
            fd["crop"] = None if face.crop is None else crop_data_url(face.crop)
    return d


def create_app(
    predictor: Predictor | None = None, settings: ServeSettings | None = None
) -> FastAPI:
    """The FastAPI app over ``predictor`` (default: ``Predictor.load(settings.model)``)."""
    settings = settings or ServeSettings()
    if predictor is None:
        predictor = Predictor.load(
            settings.model, runtime=settings.runtime, detector=settings.detector
        )
    predictor.max_pixels = min(predictor.max_pixels, settings.max_pixels)
    predictor.keep_crops = True  # ?crops=1 returns the aligned face the model saw
    light = Lane("light", settings.max_concurrency, settings.max_queue)
    heavy = Lane("heavy", 1, settings.heavy_queue)
    heavy_decode = ThreadPoolExecutor(1, thread_name_prefix="serve-heavy-decode")

    app = FastAPI(
        title="agegender",
        description="Face gender and age prediction. Upload photos to /v1/predict.",
        version="1",
        docs_url=None,
        redoc_url=None,
    )
    app.state.predictor = predictor
    app.state.settings = settings
    app.state.lanes = {"light": light, "heavy": heavy}
    app.add_middleware(
        BodyLimitMiddleware, limit=settings.max_request_bytes, timeout_s=settings.body_timeout_s
    )
    if settings.token:  # inside the security headers (a 401 has them), before the body
        app.add_middleware(BearerAuthMiddleware, token=settings.token)
        _declare_bearer(app)
    app.add_middleware(SecurityHeadersMiddleware)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    swagger_dir = _swagger_dir()
    if swagger_dir is not None:
        app.mount("/docs-assets", StaticFiles(directory=swagger_dir), name="docs-assets")

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.error, exc.detail, exc.headers)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Liveness plus the model being served and the work lanes' state."""
        lanes = {name: lane.stats() for name, lane in app.state.lanes.items()}
        return {"status": "ok", **predictor.info(), "lanes": lanes}

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        if swagger_dir is None:
            raise ApiError(404, "API docs need the fastapi-swagger package")
        return HTMLResponse(_DOCS_HTML)

    async def _read_form(request: Request) -> list[UploadFile]:
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            raise ApiError(
                415,
                "expected a multipart/form-data body with images in the field 'files'",
                {"content_type": ctype or None},
            )
        try:
            form = await request.form(max_files=settings.max_files + 1, max_fields=100)
        except ApiError:
            raise
        except Exception as exc:  # starlette's MultiPartException and friends
            msg = str(getattr(exc, "message", exc))
            if "Too many files" in msg:
                raise ApiError(413, "too many files", {"limit": settings.max_files}) from exc
            raise ApiError(422, "cannot parse the multipart body", msg) from exc
        uploads = [
            v for k, v in form.multi_items() if k in ("files", "file") and isinstance(v, UploadFile)
        ]
        if not uploads:
            fields = sorted({k for k, _ in form.multi_items()})
            raise ApiError(422, "no file in the request: send images in the field 'files'", fields)
        if len(uploads) > settings.max_files:
            raise ApiError(
                413, "too many files", {"files": len(uploads), "limit": settings.max_files}
            )
        return uploads

    async def _check(upload: UploadFile) -> bytes:
        name = upload.filename or "upload"
        size = upload.size
        if size is not None and size > settings.max_file_bytes:
            raise ApiError(
                413, f"file too large: {name}", {"bytes": size, "limit": settings.max_file_bytes}
            )
        data = await upload.read(settings.max_file_bytes + 1)
        if len(data) > settings.max_file_bytes:
            raise ApiError(413, f"file too large: {name}", {"limit": settings.max_file_bytes})
        declared = (upload.content_type or "").split(";")[0].strip().lower()
        if declared not in ACCEPTED_TYPES:
            sniffed = _sniff(data[:64]) if declared in _GENERIC_TYPES else None
            if sniffed is None:
                what = declared or "none"
                if declared in _GENERIC_TYPES:
                    what += f" (and its bytes are not {_KINDS})"
                raise ApiError(
                    415,
                    f"unsupported content type for {name}: {what}",
                    {"accepted": sorted(set(ACCEPTED_TYPES))},
                )
        return data

    @app.post("/v1/predict", openapi_extra=_OPENAPI_BODY)
    async def predict(request: Request) -> JSONResponse:
        """Detect faces and predict gender and age for each uploaded image."""
        start = time.perf_counter()
        deadline = time.monotonic() + settings.timeout_s
        crops = request.query_params.get("crops", "").lower() in ("1", "true", "yes")
        uploads = await _read_form(request)
        blobs = [await _check(u) for u in uploads]
        names = [u.filename or f"file{i}" for i, u in enumerate(uploads)]
        pixels = await anyio.to_thread.run_sync(lambda: [header_pixels(b) for b in blobs])
        for name, n in zip(names, pixels, strict=True):
            if n is not None and n > settings.max_pixels:
                raise ApiError(
                    413, f"image too large: {name}", {"pixels": n, "limit": settings.max_pixels}
                )
        total = sum(n or 0 for n in pixels)
        if total > settings.max_request_pixels:
            raise ApiError(
                413,
                "request over its pixel budget",
                {"pixels": total, "limit": settings.max_request_pixels},
            )
        is_heavy = total > settings.heavy_pixels
        lane = heavy if is_heavy else light
        stop = threading.Event()

        def cancelled() -> bool:
            return stop.is_set() or time.monotonic() > deadline

        def run() -> list[Any]:
            if cancelled():  # timed out or client gone while waiting in the queue
                raise Cancelled("skipped")
            return list(
                predictor.predict_iter(
                    blobs,
                    batch_size=settings.batch_size,
                    sources=names,
                    cancel=cancelled,
                    pool=heavy_decode if is_heavy else None,
                )
            )

        try:
            future = asyncio.wrap_future(lane.submit(run))
        except Busy as exc:
            return _error(
                503,
                "server busy, try again later",
                {"lane": exc.lane, "retry_after_s": exc.retry_after},
                headers={"retry-after": str(exc.retry_after)},
            )
        future.add_done_callback(_consume)
        try:
            results = await _wait(future, request, deadline)
        except Cancelled:
            results = None
        finally:
            stop.set()  # a no-op when finished; otherwise the work stops at its next check
        if results is None:
            return _error(504, "inference timed out", {"timeout_s": settings.timeout_s})
        decoded = [r for r in results if r.width is not None]
        if not decoded:
            raise ApiError(
                422,
                "no image in the request could be decoded",
                [{"source": r.source, "error": r.error} for r in results],
            )
        return JSONResponse(
            {
                "model": predictor.name,
                "runtime": predictor.runtime,
                "elapsed_ms": round((time.perf_counter() - start) * 1000, 2),
                "results": [_result_dict(r, crops) for r in results],
            }
        )

    return app


def _declare_bearer(app: FastAPI) -> None:
    """Declare the bearer scheme in the OpenAPI schema (Swagger UI's *Authorize* button)
    on every operation but the open ones."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
            schemes["bearer"] = {"type": "http", "scheme": "bearer"}
            for path, operations in schema.get("paths", {}).items():
                for method, operation in operations.items():
                    if isinstance(operation, dict):
                        operation["security"] = (
                            [] if is_open(method.upper(), path) else [{"bearer": []}]
                        )
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _consume(future: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned job's outcome so asyncio does not log it as never retrieved."""
    if not future.cancelled():
        future.exception()


async def _wait(future: asyncio.Future[Any], request: Request, deadline: float) -> Any:
    """The job's result; :class:`Cancelled` at the deadline or when the client went away
    (the caller then tells the job to stop)."""
    while True:
        left = deadline - time.monotonic()
        done, _ = await asyncio.wait({future}, timeout=max(0.0, min(0.25, left)))
        if done:
            return future.result()
        if left <= 0 or await request.is_disconnected():
            raise Cancelled("timed out or client gone")


def _swagger_dir() -> Path | None:
    """Swagger UI 5 (it reads OpenAPI 3.1) as shipped by the PyPI package fastapi-swagger."""
    import importlib.util

    spec = importlib.util.find_spec("fastapi_swagger")
    if spec is None or not spec.submodule_search_locations:  # pragma: no cover - a dependency
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "resources"
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


#: Swagger UI from the package's own files (no CDN), started by static/docs.js.
_DOCS_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>agegender API</title>
<link rel="stylesheet" href="docs-assets/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="docs-assets/swagger-ui-bundle.js"></script>
<script src="static/docs.js"></script></body></html>
"""


def serve(
    predictor: Predictor,
    settings: ServeSettings | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
) -> None:
    """Run the app with uvicorn (blocking)."""
    import uvicorn

    settings = settings or ServeSettings()
    uvicorn.run(
        create_app(predictor, settings),
        host=host,
        port=port,
        log_level="info",
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=5,
    )
