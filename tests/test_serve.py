"""The HTTP service against a real uvicorn server on 127.0.0.1 (a free port, loopback only)."""

from __future__ import annotations

import io
import re
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import uvicorn
from PIL import Image

from agegender.infer import Predictor
from agegender.infer.bench import make_photos
from agegender.models import TaskSpec, create_model
from agegender.serve import ServeSettings, create_app


class LiveServer:
    """uvicorn serving ``app`` in a background thread on a loopback socket bound up front."""

    def __init__(self, app) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # accepted connections inherit this: without it keep-alive responses wait ~40 ms
        # (Nagle + delayed ACK), as asyncio only sets it for sockets it creates itself
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_keep_alive=30)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def make_predictor(**kw) -> Predictor:
    torch.manual_seed(0)
    model = create_model("small_cnn", TaskSpec(gender=True, age="groups")).eval()
    cfg = model.default_cfg
    meta = {
        "name": "test-small_cnn",
        "arch": "small_cnn",
        "tasks": {"gender": True, "age": "groups"},
        "preprocessing": {k: cfg[k] for k in ("input_size", "resize", "mean", "std")},
    }
    return Predictor.from_module(model, meta, runtime="onnxruntime", threads=1, **kw)


SETTINGS = ServeSettings(
    max_file_bytes=300_000, max_files=4, max_pixels=2_000_000, timeout_s=20, max_concurrency=2
)


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    live = LiveServer(create_app(make_predictor(workers=2), SETTINGS))
    yield live
    live.stop()


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def photos(utkface_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return make_photos(utkface_dir, tmp_path_factory.mktemp("photos"), n=6, seed=3)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _face_photo(photos: list[Path]) -> bytes:
    return photos[0].read_bytes()


def _assert_error(resp: httpx.Response, status: int, text: str) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error", "detail"} and text in body["error"], body
    return body


def test_healthz_docs_and_page(client: httpx.Client) -> None:
    h = client.get("/healthz").json()
    assert h["status"] == "ok" and h["model"] == "test-small_cnn"
    assert h["runtime"] == "onnxruntime" and h["tasks"] == {"gender": True, "age": "groups"}
    assert set(h["lanes"]) == {"light", "heavy"} and h["lanes"]["light"]["slots"] == 2
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert "files" in body["multipart/form-data"]["schema"]["properties"]
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    script = client.get("/static/app.js")
    assert script.status_code == 200 and 'createElement("canvas")' in script.text
    assert "<script>" not in page.text and "<style>" not in page.text  # nothing inline
    for text in (page.text, script.text):  # no CDN or other external resource
        assert "http://" not in text and "https://" not in text
    # /docs: Swagger UI from the installed package, every asset it names served here
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger-ui" in docs.text
    assert "http://" not in docs.text and "https://" not in docs.text
    for asset in re.findall(r'(?:src|href)="([^"]+)"', docs.text):
        got = client.get("/" + asset)
        assert got.status_code == 200 and len(got.content) > 50, asset
    # safe headers on every kind of response
    for resp in (page, script, docs, client.get("/healthz"), client.get("/nope")):
        assert resp.headers["x-content-type-options"] == "nosniff"
        assert resp.headers["referrer-policy"] == "no-referrer"
        csp = resp.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp


def test_predict_one_and_several(client: httpx.Client, photos: list[Path]) -> None:
    r = client.post("/v1/predict", files={"files": ("a.jpg", _face_photo(photos), "image/jpeg")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "test-small_cnn" and len(body["results"]) == 1
    res = body["results"][0]
    assert (
        res["source"] == "a.jpg"
        and res["error"] is None
        and (res["width"], res["height"])
        == (
            250,
            250,
        )
    )
    face = res["faces"][0]
    x, y, w, h = face["box"]
    assert 0 <= x < x + w <= 250 and 0 <= y < y + h <= 250
    assert abs(face["p_female"] + face["p_male"] - 1) < 1e-4 and face["gender"] in (
        "male",
        "female",
    )
    assert face["age_group"] in face["age_group_probs"] and face["age"] > 0
    # several files, in "files" and "file", a PNG, an octet-stream JPEG, a broken one, no face
    blank = _png(Image.new("RGB", (120, 90), (200, 200, 200)))
    files = [
        ("files", ("b.jpg", photos[1].read_bytes(), "image/jpeg")),
        ("files", ("c.png", _png(Image.open(photos[2])), "image/png")),
        ("files", ("d.bin", photos[3].read_bytes(), "application/octet-stream")),
        ("file", ("broken.jpg", b"\xff\xd8\xff garbage", "image/jpeg")),
    ]
    r = client.post("/v1/predict", files=files)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["source"] for x in results] == ["b.jpg", "c.png", "d.bin", "broken.jpg"]
    assert all(x["faces"] for x in results[:3])
    assert results[3]["faces"] == [] and "not an image" in results[3]["error"]
    r = client.post("/v1/predict", files={"file": ("blank.png", blank, "image/png")})
    assert r.status_code == 200 and r.json()["results"][0]["error"] == "no face found"


def test_limits_answer_clear_4xx(client: httpx.Client, photos: list[Path]) -> None:
    face = _face_photo(photos)
    noise = np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)
    big_file = _png(Image.fromarray(noise))
    assert len(big_file) > SETTINGS.max_file_bytes
    body = _assert_error(
        client.post("/v1/predict", files={"files": ("big.png", big_file, "image/png")}),
        413,
        "file too large: big.png",
    )
    assert body["detail"]["limit"] == 300_000
    five = [("files", (f"{i}.jpg", face, "image/jpeg")) for i in range(5)]
    _assert_error(client.post("/v1/predict", files=five), 413, "too many files")
    huge = _png(Image.new("RGB", (2000, 1500), (10, 20, 30)))  # few bytes, 3 Mpx
    body = _assert_error(
        client.post("/v1/predict", files={"files": ("huge.png", huge, "image/png")}),
        413,
        "image too large: huge.png",
    )
    assert body["detail"]["pixels"] == 3_000_000
    _assert_error(
        client.post("/v1/predict", files={"files": ("x.txt", b"hello", "text/plain")}),
        415,
        "unsupported content type for x.txt: text/plain",
    )
    _assert_error(
        client.post(
            "/v1/predict", files={"files": ("x.bin", b"%PDF-1.4", "application/octet-stream")}
        ),
        415,
        "unsupported content type",
    )
    _assert_error(client.post("/v1/predict", json={"files": []}), 415, "multipart/form-data")
    _assert_error(
        client.post(
            "/v1/predict", data={"name": "x"}, files={"other": ("a.jpg", face, "image/jpeg")}
        ),
        422,
        "no file in the request",
    )
    body = _assert_error(
        client.post("/v1/predict", files={"files": ("bad.jpg", b"not a jpeg", "image/jpeg")}),
        422,
        "no image in the request could be decoded",
    )
    assert body["detail"][0]["source"] == "bad.jpg" and "not an image" in body["detail"][0]["error"]
    # a body over the total limit is refused from its Content-Length, before it is read
    total = SETTINGS.max_request_bytes + 10
    r = client.post(
        "/v1/predict",
        content=b"x" * total,
        headers={"content-type": "multipart/form-data; boundary=zzz"},
    )
    _assert_error(r, 413, "request too large")
    # the server still works after all that
    r = client.post("/v1/predict", files={"files": ("ok.jpg", face, "image/jpeg")})
    assert r.status_code == 200 and r.json()["results"][0]["faces"]


def test_timeout_is_504(photos: list[Path]) -> None:
    predictor = make_predictor()
    fast = predictor.backend

    def slow(batch):
        time.sleep(1.0)
        return fast(batch)

    predictor.backend = slow
    live = LiveServer(create_app(predictor, ServeSettings(timeout_s=0.2)))
    try:
        with httpx.Client(base_url=live.url, timeout=10) as c:
            t = time.perf_counter()
            r = c.post("/v1/predict", files={"files": ("a.jpg", _face_photo(photos), "image/jpeg")})
            body = _assert_error(r, 504, "inference timed out")
            assert body["detail"] == {"timeout_s": 0.2}
            assert time.perf_counter() - t < 0.9  # answered at the timeout, not after the work
            assert c.get("/healthz").status_code == 200
    finally:
        live.stop()


def test_concurrent_clients_no_failures(server: LiveServer, photos: list[Path]) -> None:
    small = io.BytesIO()
    Image.open(photos[4]).resize((96, 96)).save(small, format="JPEG", quality=90)
    data = small.getvalue()

    def client_run(_: int) -> list[int]:
        codes = []
        with httpx.Client(base_url=server.url, timeout=30) as c:
            for _ in range(50):
                r = c.post("/v1/predict", files={"files": ("s.jpg", data, "image/jpeg")})
                codes.append(r.status_code)
                assert r.json()["results"][0]["source"] == "s.jpg"
        return codes

    t = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        codes = [c for run in pool.map(client_run, range(8)) for c in run]
    elapsed = time.perf_counter() - t
    assert len(codes) == 400 and codes.count(200) == 400, {c: codes.count(c) for c in set(codes)}
    print(f"400 requests from 8 clients in {elapsed:.1f}s ({400 / elapsed:.0f} req/s)")


def _slow_predictor(delay: float, calls: list[int]) -> Predictor:
    """A predictor whose classifier sleeps ``delay`` per batch and counts its batches."""
    predictor = make_predictor(workers=1, batch_size=1)
    fast = predictor.backend

    def slow(batch):
        time.sleep(delay)
        calls.append(len(batch))
        return fast(batch)

    predictor.backend = slow
    return predictor


def test_pixel_budget_and_bombs_are_413_before_decoding(client: httpx.Client) -> None:
    # four 1.2 Mpx images pass one by one (2 Mpx limit) but not together (4 Mpx budget)
    live = LiveServer(
        create_app(
            make_predictor(), ServeSettings(max_pixels=2_000_000, max_request_pixels=4_000_000)
        )
    )
    try:
        part = _png(Image.new("RGB", (1200, 1000), (90, 90, 90)))
        with httpx.Client(base_url=live.url, timeout=30) as c:
            t = time.perf_counter()
            four = [("files", (f"{i}.png", part, "image/png")) for i in range(4)]
            body = _assert_error(c.post("/v1/predict", files=four), 413, "pixel budget")
            assert body["detail"] == {"pixels": 4_800_000, "limit": 4_000_000}
            assert time.perf_counter() - t < 2.0
            three = [("files", (f"{i}.png", part, "image/png")) for i in range(3)]
            assert c.post("/v1/predict", files=three).status_code == 200
    finally:
        live.stop()
    # a 30000 x 30000 PNG (PIL refuses to even open it) is "too large", not "undecodable"
    buf = io.BytesIO()
    Image.new("1", (30000, 30000)).save(buf, format="PNG")
    body = _assert_error(
        client.post("/v1/predict", files={"files": ("bomb.png", buf.getvalue(), "image/png")}),
        413,
        "image too large: bomb.png",
    )
    assert body["detail"]["pixels"] == 900_000_000


def test_full_lane_answers_503_with_retry_after(photos: list[Path]) -> None:
    calls: list[int] = []
    predictor = _slow_predictor(1.0, calls)
    live = LiveServer(create_app(predictor, ServeSettings(max_concurrency=1, max_queue=1)))
    face = _face_photo(photos)
    try:

        def post(_: int) -> httpx.Response:
            with httpx.Client(base_url=live.url, timeout=30) as c:
                return c.post("/v1/predict", files={"files": ("a.jpg", face, "image/jpeg")})

        t = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            responses = list(pool.map(post, range(4)))
        codes = sorted(r.status_code for r in responses)
        assert codes == [200, 200, 503, 503], codes  # one running, one waiting, two refused
        for r in responses:
            if r.status_code == 503:
                body = _assert_error(r, 503, "server busy")
                assert body["detail"]["lane"] == "light"
                assert int(r.headers["retry-after"]) >= 1
        assert time.perf_counter() - t < 6.0
    finally:
        live.stop()


def test_timed_out_work_is_stopped_not_finished(photos: list[Path]) -> None:
    calls: list[int] = []
    predictor = _slow_predictor(0.5, calls)  # one face per batch, 0.5 s each
    live = LiveServer(create_app(predictor, ServeSettings(timeout_s=0.6, batch_size=1)))
    files = [("files", (f"{i}.jpg", photos[i].read_bytes(), "image/jpeg")) for i in range(4)]
    try:
        with httpx.Client(base_url=live.url, timeout=30) as c:
            t = time.perf_counter()
            _assert_error(c.post("/v1/predict", files=files), 504, "inference timed out")
            assert time.perf_counter() - t < 1.5
            time.sleep(2.5)  # the four faces would take 2 s: the work stopped after 1-2
            assert 1 <= len(calls) <= 2, calls
            lanes = c.get("/healthz").json()["lanes"]
            assert lanes["light"]["pending"] == 0  # the slot was given back
    finally:
        live.stop()


def test_client_that_goes_away_stops_its_work(photos: list[Path]) -> None:
    calls: list[int] = []
    predictor = _slow_predictor(0.5, calls)
    live = LiveServer(create_app(predictor, ServeSettings(batch_size=1)))
    files = [("files", (f"{i}.jpg", photos[i].read_bytes(), "image/jpeg")) for i in range(6)]
    try:
        with httpx.Client(base_url=live.url, timeout=0.8) as c, pytest.raises(httpx.ReadTimeout):
            c.post("/v1/predict", files=files)  # gives up and closes the connection
        time.sleep(3.5)  # six faces would take 3 s
        assert 1 <= len(calls) <= 3, calls
    finally:
        live.stop()


def test_slow_body_is_cut_off_with_408(photos: list[Path]) -> None:
    live = LiveServer(create_app(make_predictor(), ServeSettings(body_timeout_s=0.5)))
    host, port = live.url.removeprefix("http://").split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(
                b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n"
                b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n"
            )
            t = time.perf_counter()
            data = b""
            while chunk := s.recv(65536):  # the server answers, then closes the connection
                data += chunk
            elapsed = time.perf_counter() - t
        assert data.startswith(b"HTTP/1.1 408"), data[:200]
        assert b"request body not received in time" in data
        assert 0.4 < elapsed < 3.0
    finally:
        live.stop()


def test_reduced_load_and_abuse_benchmark() -> None:
    """benchmarks/serve_load.py --reduced against the real ``agegender serve``: normal
    requests all succeed (also while clients send pixel-heavy requests), trickled bodies
    are cut off, memory does not grow."""
    from conftest import load_script

    bench = load_script("benchmarks/serve_load.py")
    out = bench.run(bench.Plan.reduced())
    checks = dict(out["checks"])
    # p99 on a shared 2-core CI machine: asserted loosely here, strictly in the benchmark
    checks.pop("under_heavy_p99_under_2s")
    assert all(checks.values()), out
    assert out["under_heavy"]["p99_ms"] < 5000, out["under_heavy"]
    heavy = out["under_heavy"]["heavy_codes"]
    assert heavy.get("413", 0) > 0  # the 16-image attack is refused before decoding
    assert set(heavy) <= {"200", "413", "503", "504"}, heavy
    assert out["trickle"]["codes"] == {"408": out["trickle"]["connections"]}


TOKEN = "s3cret-Token_42"


def test_no_token_by_default(client: httpx.Client) -> None:
    """Off unless configured: no security scheme, no 401, the token out of repr()."""
    assert ServeSettings().token is None
    assert "s3cret" not in repr(ServeSettings(token=TOKEN))
    spec = client.get("/openapi.json").json()
    assert "securitySchemes" not in spec.get("components", {})
    r = client.post("/v1/predict", files={"files": ("x.txt", b"hello", "text/plain")})
    assert r.status_code == 415 and "www-authenticate" not in r.headers


def test_bearer_token_guards_every_route_but_the_open_ones(photos: list[Path]) -> None:
    settings = ServeSettings(max_file_bytes=300_000, max_files=1, token=TOKEN)
    live = LiveServer(create_app(make_predictor(), settings))
    try:
        with httpx.Client(base_url=live.url, timeout=30) as c:
            # open: liveness (never showing the token), the page and its files, the docs
            h = c.get("/healthz")
            assert h.status_code == 200 and h.json()["status"] == "ok"
            assert TOKEN not in h.text
            page = c.get("/")
            assert page.status_code == 200 and 'id="token"' in page.text
            script = c.get("/static/app.js")
            assert script.status_code == 200 and "Authorization" in script.text
            docs = c.get("/docs")
            assert docs.status_code == 200 and "swagger-ui" in docs.text
            for asset in re.findall(r'(?:src|href)="([^"]+)"', docs.text):
                assert c.get("/" + asset).status_code == 200, asset
            spec = c.get("/openapi.json").json()
            assert spec["components"]["securitySchemes"]["bearer"] == {
                "type": "http",
                "scheme": "bearer",
            }
            assert spec["paths"]["/v1/predict"]["post"]["security"] == [{"bearer": []}]
            assert spec["paths"]["/healthz"]["get"]["security"] == []

            files = {"files": ("a.jpg", _face_photo(photos), "image/jpeg")}
            cases = [
                ({}, "authorization required", "Bearer"),
                ({"Authorization": "Bearer wrong-token"}, "invalid token", "Bearer"),
                ({"Authorization": f"Bearer {TOKEN}x"}, "invalid token", "Bearer"),
                ({"Authorization": f"Basic {TOKEN}"}, "malformed", "Bearer"),
                ({"Authorization": TOKEN}, "malformed", "Bearer"),
                ({"Authorization": "Bearer"}, "malformed", "Bearer"),
            ]
            for headers, text, challenge in cases:
                r = c.post("/v1/predict", files=files, headers=headers)
                _assert_error(r, 401, text)
                assert r.headers["www-authenticate"].startswith(challenge), headers
                assert r.headers["x-content-type-options"] == "nosniff"  # the usual headers
            # every other route, unknown ones and non-GET methods on open paths too
            _assert_error(c.get("/nope"), 401, "authorization required")
            _assert_error(c.post("/healthz"), 401, "authorization required")
            # the body limit answers only after the token: no limits shown to strangers
            big = b"x" * 400_000  # over the body limit (300 kB + 64 kB)
            _assert_error(c.post("/v1/predict", content=big), 401, "authorization required")
            ok = {"Authorization": f"Bearer {TOKEN}"}
            _assert_error(c.post("/v1/predict", content=big, headers=ok), 413, "too large")

            for scheme in ("Bearer", "bearer"):
                r = c.post(
                    "/v1/predict", files=files, headers={"Authorization": f"{scheme} {TOKEN}"}
                )
                assert r.status_code == 200, r.text
                assert len(r.json()["results"]) == 1
            assert c.get("/nope", headers=ok).status_code == 404
    finally:
        live.stop()


def test_serve_token_file_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``serve --token-file``: bad files are one line and exit 2 before anything loads;
    a good file (trailing newline stripped) or $AGEGENDER_TOKEN reaches the settings."""
    from typer.testing import CliRunner

    import agegender.cli.predict as cli_predict
    import agegender.serve as serve_pkg
    from agegender.cli import app

    started: list[ServeSettings] = []

    class FakePredictor:
        name, runtime = "fake", "none"

    monkeypatch.setattr(cli_predict, "_load_predictor", lambda *a, **k: FakePredictor())
    monkeypatch.setattr(serve_pkg, "serve", lambda p, settings, **k: started.append(settings))
    monkeypatch.delenv("AGEGENDER_TOKEN", raising=False)

    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    spaced = tmp_path / "spaced.txt"
    spaced.write_text("two words\n")
    for path, reason in (
        (tmp_path / "missing.txt", "no such token file"),
        (empty, "empty token file"),
        (tmp_path, "is a directory"),
        (spaced, "printable ASCII without spaces"),
    ):
        res = CliRunner().invoke(app, ["serve", "--token-file", str(path)])
        lines = [line for line in res.stderr.splitlines() if line.strip()]
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
        assert len(lines) == 1 and lines[0].startswith(f"error: {path}: "), lines
        assert reason in lines[0], lines
    assert started == []  # the server never started

    from agegender.serve.auth import read_token_file

    def denied(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    with monkeypatch.context() as m:  # unreadable (root reads any mode: simulated)
        m.setattr(Path, "read_bytes", denied)
        with pytest.raises(ValueError, match=r"secret\.txt: cannot read the token file "):
            read_token_file(tmp_path / "secret.txt")

    good = tmp_path / "token.txt"
    good.write_text(TOKEN + "\n")
    res = CliRunner().invoke(app, ["serve", "--token-file", str(good)])
    assert res.exit_code == 0, res.output
    assert started[-1].token == TOKEN and TOKEN not in res.output

    res = CliRunner().invoke(app, ["serve"])
    assert res.exit_code == 0 and started[-1].token is None  # off by default

    monkeypatch.setenv("AGEGENDER_TOKEN", "from-env")
    res = CliRunner().invoke(app, ["serve"])
    assert res.exit_code == 0 and started[-1].token == "from-env"
    res = CliRunner().invoke(app, ["serve", "--token-file", str(good)])  # the file wins
    assert res.exit_code == 0 and started[-1].token == TOKEN
    monkeypatch.setenv("AGEGENDER_TOKEN", "")  # set but empty: an error, never silently open
    res = CliRunner().invoke(app, ["serve"])
    assert res.exit_code == 2 and res.stderr.strip() == "error: AGEGENDER_TOKEN: empty token"
