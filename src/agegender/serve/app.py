"""The HTTP service: ``POST /v1/predict``, ``GET /healthz``, ``GET /`` (upload page), ``/docs``.

>>> app = create_app(Predictor.load("model.onnx"), ServeSettings(max_file_bytes=5_000_000))
>>> uvicorn.run(app, host="127.0.0.1", port=8000)

Requests are multipart forms with one or several images in the field ``files`` (or
``file``). Limits (all in :class:`ServeSettings`) answer with a JSON error
``{"error": "...", "detail": ...}``:

=====  ==========================================================================
413    a file over ``max_file_bytes``, a body over the total limit, more than
       ``max_files`` files, or an image over ``max_pixels`` pixels
415    a part whose content type (or, for ``application/octet-stream``, whose
       bytes) is not JPEG, PNG, WebP, BMP, GIF or TIFF; a body that is not multipart
422    no file in the request, or no file in it could be decoded
504    inference took longer than ``timeout_s``
=====  ==========================================================================

A request with several images where only some fail to decode (or hold no face) answers
200, with ``error`` set on those images' results. Inference runs in worker threads
(at most ``max_concurrency`` requests at once), never on the event loop; the faces of all
images of one request are classified together in batches.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from PIL import Image
from starlette.datastructures import UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agegender.infer.predictor import Predictor

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
}
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
    max_pixels: int = 40_000_000
    timeout_s: float = 30.0
    max_concurrency: int = 2  # requests running inference at once
    batch_size: int = 64
    model: str | None = None  # for create_app(predictor=None): Predictor.load(model)
    runtime: str = "auto"
    detector: str = "blazeface"

    @property
    def max_request_bytes(self) -> int:
        return self.max_files * self.max_file_bytes + 64 * 1024


class ApiError(Exception):
    """A client error answered as ``{"error": message, "detail": detail}``."""

    def __init__(self, status: int, error: str, detail: Any = None) -> None:
        super().__init__(error)
        self.status, self.error, self.detail = status, error, detail


def _error(status: int, error: str, detail: Any = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status)


class BodyLimitMiddleware:
    """Refuse request bodies over ``limit`` bytes with 413, by header or while streaming."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

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

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise ApiError(413, "request too large", {"limit": self.limit})
            return message

        await self.app(scope, limited_receive, send)


def _sniff(head: bytes) -> str | None:
    for magic, ctype in _MAGIC:
        if head.startswith(magic):
            return ctype
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def _image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from the image header, without decoding (None: unreadable)."""
    import io

    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Exception:  # noqa: BLE001 - the decoder reports the real reason later
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
                            "TIFF)",
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
    from agegender.infer.predictor import crop_data_url

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
    limiter = anyio.CapacityLimiter(max(1, settings.max_concurrency))

    app = FastAPI(
        title="agegender",
        description="Face gender and age prediction. Upload photos to /v1/predict.",
        version="1",
    )
    app.state.predictor = predictor
    app.state.settings = settings
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_request_bytes)

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.error, exc.detail)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Liveness plus the model being served."""
        return {"status": "ok", **predictor.info()}

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

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
            sniffed = _sniff(data[:16]) if declared in _GENERIC_TYPES else None
            if sniffed is None:
                what = declared or "none"
                if declared in _GENERIC_TYPES:
                    what += " (and its bytes are not JPEG, PNG, WebP, BMP, GIF or TIFF)"
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
        crops = request.query_params.get("crops", "").lower() in ("1", "true", "yes")
        uploads = await _read_form(request)
        blobs = [await _check(u) for u in uploads]
        names = [u.filename or f"file{i}" for i, u in enumerate(uploads)]
        sizes = await anyio.to_thread.run_sync(lambda: [_image_size(b) for b in blobs])
        for name, size in zip(names, sizes, strict=True):
            if size is not None and size[0] * size[1] > settings.max_pixels:
                raise ApiError(
                    413,
                    f"image too large: {name}",
                    {"pixels": size[0] * size[1], "size": size, "limit": settings.max_pixels},
                )

        def run() -> list[Any]:
            return list(
                predictor.predict_iter(blobs, batch_size=settings.batch_size, sources=names)
            )

        try:
            with anyio.fail_after(settings.timeout_s):
                results = await anyio.to_thread.run_sync(
                    run, limiter=limiter, abandon_on_cancel=True
                )
        except TimeoutError:
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


def serve(
    predictor: Predictor,
    settings: ServeSettings | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
) -> None:
    """Run the app with uvicorn (blocking)."""
    import uvicorn

    uvicorn.run(create_app(predictor, settings), host=host, port=port, log_level="info")
