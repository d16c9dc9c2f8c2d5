"""Load and abuse test of the HTTP service, on loopback, bounded in count and time.

Starts ``agegender serve`` (the real command: uvicorn, the bundled model, BlazeFace) on a
free loopback port and measures, one phase after another:

1. ``normal``: 8 clients x 50 requests of a real 448 px photo: all must be 200;
   p50 / p95 / p99 latency and requests/s.
2. ``under_heavy``: the same while 4 clients send pixel-heavy requests (two send the
   attack that used to stall the service, 16 all-black 6000 x 6000 PNGs per request; two
   send one 36 MP PNG, inside the per-request budget). Normal requests' p99 must stay under
   2 s and none may fail; the heavy requests' status codes are counted (413 / 503 / 200).
3. ``trickle``: 200 connections that send headers and then a byte a second: every one must
   be answered (408 after the body timeout, or 503 when over the connection cap) and closed.
4. ``memory``: the server's RSS before and after 2,000 more normal requests (growth must
   stay under 20 MB).

    python benchmarks/serve_load.py                 # full run (~2-3 min on 2 cores)
    python benchmarks/serve_load.py --json out.json
    python benchmarks/serve_load.py --reduced       # the small version the test suite runs

Prints a table and writes ``benchmarks/serve_load.json`` (full run only, unless --json).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "examples" / "woman_30-39.jpg"


@dataclass
class Plan:
    clients: int = 8
    requests: int = 50
    heavy_clients: int = 4
    heavy_side: int = 6000
    attack_files: int = 16
    trickles: int = 200
    body_timeout: float = 10.0
    memory_requests: int = 2000

    @classmethod
    def reduced(cls) -> Plan:
        return cls(
            clients=4,
            requests=10,
            heavy_clients=2,
            heavy_side=3000,
            attack_files=16,
            trickles=20,
            body_timeout=1.5,
            memory_requests=100,
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Server:
    """``agegender serve`` in a subprocess on a free loopback port."""

    def __init__(self, body_timeout: float, model: str = "default") -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "agegender", "serve", "--model", model]
        cmd += ["--port", str(self.port), "--body-timeout", str(body_timeout)]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agegender serve exited: {self.proc.stderr.read()[-2000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("agegender serve did not start in 90 s")

    @property
    def rss_mb(self) -> float:
        return _rss_mb(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (side, side), 0).save(buf, format="PNG")
    return buf.getvalue()


def _latency(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 1),
        "p95_ms": round(float(np.percentile(a, 95)), 1),
        "p99_ms": round(float(np.percentile(a, 99)), 1),
        "max_ms": round(float(a.max()), 1),
    }


def normal_load(url: str, clients: int, requests: int, photo: bytes) -> dict:
    """``clients`` x ``requests`` normal requests; status counts, latency, throughput."""

    def run(_: int) -> list[tuple[int, float]]:
        out = []
        with httpx.Client(base_url=url, timeout=60) as c:
            for _ in range(requests):
                t = time.perf_counter()
                r = c.post("/v1/predict", files={"files": ("p.jpg", photo, "image/jpeg")})
                out.append((r.status_code, (time.perf_counter() - t) * 1000))
        return out

    t = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        got = [x for part in pool.map(run, range(clients)) for x in part]
    elapsed = time.perf_counter() - t
    codes = [c for c, _ in got]
    return {
        "requests": len(got),
        "ok": codes.count(200),
        "codes": {str(c): codes.count(c) for c in sorted(set(codes))},
        **_latency([ms for _, ms in got]),
        "req_per_s": round(len(got) / elapsed, 1),
        "seconds": round(elapsed, 1),
    }


def heavy_load(url: str, plan: Plan, stop: threading.Event) -> dict[str, int]:
    """Pixel-heavy requests from ``plan.heavy_clients`` clients until ``stop``."""
    one = _png(plan.heavy_side)
    attack = [("files", (f"black{i}.png", one, "image/png")) for i in range(plan.attack_files)]
    single = [("files", ("black.png", one, "image/png"))]
    codes: dict[str, int] = {}
    lock = threading.Lock()

    def run(i: int) -> None:
        files = attack if i % 2 == 0 else single
        with httpx.Client(base_url=url, timeout=60) as c:
            while not stop.is_set():
                r = c.post("/v1/predict", files=files)
                with lock:
                    codes[str(r.status_code)] = codes.get(str(r.status_code), 0) + 1
                if r.status_code == 503:
                    time.sleep(0.1)  # a client that respects "busy" a little

    threads = [threading.Thread(target=run, args=(i,)) for i in range(plan.heavy_clients)]
    for th in threads:
        th.start()
    stop.wait()
    for th in threads:
        th.join(120)
    return codes


def trickle(port: int, n: int, body_timeout: float) -> dict:
    """``n`` connections that send headers, then a byte a second; how each one ended."""
    head = (
        b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n"
    )
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.sendall(head)
        s.setblocking(False)
        socks.append(s)
    start = time.monotonic()
    status: dict[int, str] = {}
    closed_at: dict[int, float] = {}
    data: dict[int, bytes] = {i: b"" for i in range(n)}
    limit = start + body_timeout + 20
    while len(closed_at) < n and time.monotonic() < limit:
        for i, s in enumerate(socks):
            if i in closed_at:
                continue
            try:
                chunk = s.recv(65536)
            except BlockingIOError:
                try:
                    s.send(b"x")  # the trickle
                except OSError:
                    closed_at[i] = time.monotonic() - start
                continue
            except OSError:
                closed_at[i] = time.monotonic() - start
                continue
            if chunk:
                data[i] += chunk
            else:
                closed_at[i] = time.monotonic() - start
        time.sleep(1.0)
    for i, s in enumerate(socks):
        first = data[i].split(b"\r\n", 1)[0].decode(errors="replace")
        status[i] = first.split(" ")[1] if first.startswith("HTTP/") else "none"
        s.close()
    codes = [status[i] for i in range(n)]
    times = sorted(closed_at.values())
    return {
        "connections": n,
        "closed_by_server": len(closed_at),
        "codes": {c: codes.count(c) for c in sorted(set(codes))},
        "closed_after_s_max": round(times[-1], 1) if times else None,
        "body_timeout_s": body_timeout,
    }


def run(plan: Plan) -> dict:
    photo = PHOTO.read_bytes()
    server = Server(plan.body_timeout)
    try:
        # warm up (model, detector, thread pools)
        normal_load(server.url, 2, 5, photo)
        out: dict = {"plan": plan.__dict__, "photo": PHOTO.name}
        out["normal"] = normal_load(server.url, plan.clients, plan.requests, photo)

        stop = threading.Event()
        heavy_codes: dict[str, int] = {}
        th = threading.Thread(target=lambda: heavy_codes.update(heavy_load(server.url, plan, stop)))
        th.start()
        time.sleep(1.0)  # the heavy clients are busy before the normal ones start
        try:
            under = normal_load(server.url, plan.clients, plan.requests, photo)
        finally:
            stop.set()
            th.join(180)
        under["heavy_codes"] = heavy_codes
        out["under_heavy"] = under

        out["trickle"] = trickle(server.port, plan.trickles, plan.body_timeout)
        after = normal_load(server.url, 2, 3, photo)  # still serving after the trickle
        out["trickle"]["served_after"] = after["ok"] == after["requests"]

        before = server.rss_mb
        per_client = max(1, plan.memory_requests // 4)
        mem = normal_load(server.url, 4, per_client, photo)
        rss_after = server.rss_mb
        out["memory"] = {
            "requests": mem["requests"],
            "ok": mem["ok"],
            "rss_before_mb": round(before, 1),
            "rss_after_mb": round(rss_after, 1),
            "growth_mb": round(rss_after - before, 1),
        }
        out["health"] = httpx.get(server.url + "/healthz", timeout=10).json().get("lanes")
    finally:
        server.stop()
    out["checks"] = checks(out)
    return out


def checks(out: dict) -> dict[str, bool]:
    """The targets: what must hold for the service to pass."""
    n, u, t, m = out["normal"], out["under_heavy"], out["trickle"], out["memory"]
    return {
        "normal_all_ok": n["ok"] == n["requests"],
        "under_heavy_all_ok": u["ok"] == u["requests"],
        "under_heavy_p99_under_2s": u["p99_ms"] < 2000,
        "trickles_all_closed": t["closed_by_server"] == t["connections"],
        "served_after_trickle": bool(t["served_after"]),
        "memory_growth_under_20mb": m["growth_mb"] < 20,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reduced", action="store_true", help="the small version (tests)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    plan = Plan.reduced() if args.reduced else Plan()
    out = run(plan)
    out["cpu_count"] = os.cpu_count()
    for phase in ("normal", "under_heavy", "trickle", "memory"):
        print(f"{phase:12s} {json.dumps(out[phase])}")
    print("checks      ", json.dumps(out["checks"]))
    path = args.json or (None if args.reduced else REPO / "benchmarks" / "serve_load.json")
    if path is not None:
        path.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {path}")
    sys.exit(0 if all(out["checks"].values()) else 1)


if __name__ == "__main__":
    main()
