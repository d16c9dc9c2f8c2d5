"""``predict --engine ray``: a real local Ray (2 CPUs) started here, real photos, real kills.

- the Ray engine's rows equal the local engine's, row for row (FairFace-540 and bad inputs);
- an actor killed mid-run (its process, SIGKILL): the job completes, every input once;
- the driver killed with SIGKILL mid-run, then ``--resume``: every input exactly once in
  the union, and the second run predicted only what the first had not written;
- a ``ray.data.Dataset`` of bytes or paths gives the same rows as the path list;
- an ``--address`` where nothing answers: a one-line error within seconds.

Every test skips with its reason where Ray is not installed or cannot start. The driver
kill runs first, before this process starts its own Ray (the two would share 2 cores).
"""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")
pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'ray[data]')")
psutil = pytest.importorskip("psutil", reason="psutil is not installed (the dev extra)")
pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed")

from agegender.infer.job import predict_job  # noqa: E402
from agegender.infer.parquet import read_output  # noqa: E402
from agegender.infer.predictor import PredictorConfig  # noqa: E402
from conftest import assert_inputs_once  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ACTOR_TITLE = "ray::MapWorker(MapBatches(PredictActor))"
CONFIG = PredictorConfig(threads=1)  # the bundled default model, BlazeFace


def _fairface_photos(fairface_dir: Path) -> list[Path]:
    photos = sorted((fairface_dir / "images").glob("*.jpg"))
    assert len(photos) == 540
    return photos


@pytest.fixture(scope="module")
def bad_inputs(fairface_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A broken JPEG (a real photo cut short), a text file, a blank image and a 1x1 image."""
    folder = tmp_path_factory.mktemp("bad")
    real = (fairface_dir / "images" / "fairface_0001.jpg").read_bytes()
    (folder / "broken.jpg").write_bytes(real[: len(real) // 3])
    (folder / "notes.jpg").write_text("this is a text file, not a photo")
    Image.new("RGB", (448, 448), (128, 128, 128)).save(folder / "blank.png")
    Image.new("RGB", (1, 1), (200, 150, 120)).save(folder / "tiny.png")
    return folder


def _rows(table) -> list[dict]:
    """Rows without run_id, in (path, face) order."""
    rows = [{k: v for k, v in r.items() if k != "run_id"} for r in table.to_pylist()]
    return sorted(rows, key=lambda r: (r["path"], r["face_index"] or 0))


def _same_row(a: dict, b: dict) -> bool:
    """Every column equal; probabilities and ages (written to 6 digits) may differ by one
    unit in the last digit: ONNX Runtime's sums depend on how many faces share a batch,
    and the engines batch differently (Ray's blocks vary with timing)."""
    if a.keys() != b.keys():
        return False
    for k, va in a.items():
        vb = b[k]
        if isinstance(va, float) and isinstance(vb, float):
            if abs(va - vb) > 2.5e-6 * max(1.0, abs(va)):
                return False
        elif va != vb:
            return False
    return True


def _same_rows(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(_same_row(ra, rb) for ra, rb in zip(a, b, strict=True))


def _csv_rows(path: Path) -> tuple[list[str], list[dict]]:
    """A CSV's header and its rows in (path, face) order, numbers as floats."""

    def num(v: str) -> object:
        try:
            return float(v)
        except ValueError:
            return v

    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = [{k: num(v) for k, v in r.items()} for r in reader]
    rows.sort(key=lambda r: (r["path"], str(r["face_index"])))
    return list(reader.fieldnames or []), rows


def _skip_if_ray_did_not_start(code: int | None, output: str) -> None:
    if code == 2 and "Ray did not start" in output:
        pytest.skip("Ray cannot start here: " + output.strip().splitlines()[-1])


def _ray_descendants(title: str, root: int | None = None) -> list:
    me = psutil.Process(root or os.getpid())
    found = []
    for p in me.children(recursive=True):
        try:
            if " ".join(p.cmdline()).startswith(title):
                found.append(p)
        except psutil.Error:
            continue
    return found


# --------------------------------------------------------------- the driver, SIGKILLed
def test_driver_sigkill_then_resume(fairface_dir: Path, tmp_path: Path) -> None:
    photos = _fairface_photos(fairface_dir)
    folder = tmp_path / "photos"
    for copy in ("a", "b"):  # 1,080 inputs: 540 photos under two names each
        (folder / copy).mkdir(parents=True)
        for p in photos:
            os.symlink(p, folder / copy / p.name)
    expected = {str(p) for p in sorted(folder.rglob("*.jpg"))}
    out = tmp_path / "faces.parquet"
    parts = tmp_path / "faces.parquet.parts"
    cmd = [sys.executable, "-m", "agegender", "predict", str(folder), "--engine", "ray"]
    cmd += ["--actors", "2", "--threads", "1", "--out", str(out), "--part-size", "40"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    driver = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    tree: dict[int, psutil.Process] = {}
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and driver.poll() is None:
            for p in psutil.Process(driver.pid).children(recursive=True):
                tree[p.pid] = p  # Ray's processes, to clean up after the kill
            if parts.is_dir() and len(list(parts.glob("part-*.parquet"))) >= 4:
                break
            time.sleep(0.05)
        if driver.poll() is not None:
            text = driver.stdout.read().decode()
            _skip_if_ray_did_not_start(driver.returncode, text)
            raise AssertionError(f"the driver ended before the kill:\n{text[-3000:]}")
        os.kill(driver.pid, signal.SIGKILL)  # halfway: 4+ parts of 40 inputs are written
        driver.wait(timeout=30)
    finally:
        for p in tree.values():  # the local Ray this driver had started
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(list(tree.values()), timeout=20)
        if driver.poll() is None:
            driver.kill()
    assert not out.exists()  # never merged: the run did not end
    first = pq.ParquetDataset(sorted(str(p) for p in parts.glob("part-*.parquet"))).read()
    first_paths = set(first["path"].to_pylist())
    assert 160 <= len(first_paths) < len(expected), len(first_paths)
    assert len(set(first["run_id"].to_pylist())) == 1

    res = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    todo = len(expected) - len(first_paths)
    assert (
        f"resuming {out}: {len(first_paths):,} of {len(expected):,} inputs already there"
        in res.stderr
    )
    assert f"{todo} images:" in res.stderr
    assert "predicting (2 Ray actors)" not in res.stderr  # no progress bar off a terminal
    assert out.is_file() and not parts.exists()
    table = pq.read_table(out)
    assert_inputs_once(table, expected)
    frame = table.to_pandas()
    runs = frame.groupby("run_id")["path"].nunique()
    assert len(runs) == 2
    run1 = first["run_id"][0].as_py()
    assert runs[run1] == len(first_paths)  # the first run's inputs, kept as they were
    assert runs.drop(run1).iloc[0] == todo  # the second run did only the rest
    second = set(frame.loc[frame["run_id"] != run1, "path"])
    assert not second & first_paths


# ------------------------------------------------------- this process's own local Ray
@pytest.fixture(scope="module")
def local_ray():
    import ray

    try:
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            object_store_memory=200 * 1024 * 1024,
            logging_level="warning",
        )
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"Ray cannot start here: {str(exc).splitlines()[0] if str(exc) else exc}")
    yield ray
    ray.shutdown()


def test_ray_rows_equal_local_rows(
    local_ray, fairface_dir: Path, bad_inputs: Path, tmp_path: Path
) -> None:
    photos = _fairface_photos(fairface_dir)
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join([str(bad_inputs / "gone.jpg"), *map(str, photos[:3])]) + "\n")
    inputs = [str(fairface_dir / "images"), str(bad_inputs), str(listing)]
    local = predict_job(inputs, tmp_path / "local.parquet", CONFIG, engine="local")
    ray_ = predict_job(inputs, tmp_path / "ray.parquet", CONFIG, engine="ray", actors=2)
    n = 540 + 4 + 1 + 3
    assert local.predicted == ray_.predicted == n
    assert ray_.actors == 2 and ray_.repeated == 0
    a, b = (
        _rows(pq.read_table(tmp_path / "local.parquet")),
        _rows(pq.read_table(tmp_path / "ray.parquet")),
    )
    assert len(a) == len(b) > n - 5
    for ra, rb in zip(a, b, strict=True):
        assert _same_row(ra, rb), (ra, rb)  # row for row, every column
    errors = {Path(r["path"]).name: r["error"] for r in b if r["error"]}
    assert errors["gone.jpg"] == "file not found"
    assert errors["notes.jpg"].startswith("not an image")
    assert "truncated" in errors["broken.jpg"] or "corrupt" in errors["broken.jpg"]
    assert errors["blank.png"] == "no face found" and errors["tiny.png"] == "no face found"
    assert local.unreadable == ray_.unreadable == 3  # gone, notes, broken
    assert len({r["path"] for r in b}) == n - 3  # the three listed photos are in the folder
    # CSV from the Ray engine: the same rows as the local engine's CSV
    predict_job(inputs, tmp_path / "local.csv", CONFIG, engine="local")
    predict_job(inputs, tmp_path / "ray.csv", CONFIG, engine="ray", actors=2)
    la, lb = _csv_rows(tmp_path / "local.csv"), _csv_rows(tmp_path / "ray.csv")
    assert la[0] == lb[0] and _same_rows(la[1], lb[1])


def test_killed_actor_loses_and_repeats_nothing(
    local_ray, fairface_dir: Path, tmp_path: Path
) -> None:
    photos = _fairface_photos(fairface_dir)
    out = f"{tmp_path / 'faces.parquet'}/"  # a folder of parts
    killed: list[int] = []
    seen: set[int] = set()

    def killer() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            actors = _ray_descendants(ACTOR_TITLE)
            seen.update(p.pid for p in actors)
            if len(actors) == 2 and len(list(Path(out).glob("part-*.parquet"))) >= 2:
                victim = actors[0]
                os.kill(victim.pid, signal.SIGKILL)  # mid-run: 2 of ~11 parts written
                killed.append(victim.pid)
            time.sleep(0.05)
        while time.monotonic() < deadline and not done.is_set():
            seen.update(p.pid for p in _ray_descendants(ACTOR_TITLE))  # the restarted one
            time.sleep(0.1)

    done = threading.Event()
    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        summary = predict_job(
            [str(p) for p in photos], out, CONFIG, engine="ray", actors=2, part_size=50
        )
    finally:
        done.set()
        thread.join(timeout=30)
    assert killed, "no actor was killed: the job ended first"
    assert not psutil.pid_exists(killed[0]) or psutil.Process(killed[0]).status() == "zombie"
    assert len(seen) >= 3  # the two actors, and the one Ray started in the killed one's place
    assert summary.predicted == 540
    table = read_output(out)
    assert_inputs_once(table, {str(p) for p in photos})
    assert table.num_rows == summary.faces + summary.failed
    print(f"actor {killed[0]} killed; results of an input seen twice: {summary.repeated}")


def test_dataset_of_bytes_and_of_paths(local_ray, fairface_dir: Path, tmp_path: Path) -> None:
    import ray.data

    from agegender.infer.distributed import predict_dataset

    photos = [str(p) for p in _fairface_photos(fairface_dir)[:12]]
    local = predict_job(photos, tmp_path / "local.parquet", CONFIG)
    want = _rows(pq.read_table(tmp_path / "local.parquet"))
    drop = ("file_size", "file_mtime_ns")
    as_bytes = ray.data.from_items([{"path": p, "bytes": Path(p).read_bytes()} for p in photos])
    got = predict_dataset(as_bytes, CONFIG, actors=2).materialize()
    got_rows = _rows(_concat(got))
    assert _same_rows(
        [{k: v for k, v in r.items() if k not in drop} for r in got_rows],
        [{k: v for k, v in r.items() if k not in drop} for r in want],
    )
    assert all(r["file_size"] == os.stat(r["path"]).st_size for r in got_rows)
    as_paths = ray.data.from_items([{"path": p} for p in photos])
    assert _same_rows(_rows(_concat(predict_dataset(as_paths, CONFIG, actors=1))), want)
    assert local.predicted == 12


def _concat(ds):
    import pyarrow as pa

    return pa.concat_tables([b for b in ds.iter_batches(batch_format="pyarrow", batch_size=None)])


# ----------------------------------------------------------------------- bad addresses
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_address_that_does_not_answer_is_one_line_within_seconds(tmp_path: Path) -> None:
    from agegender.infer.distributed import RayUnavailable, check_address

    photo = REPO / "examples" / "man_40-49.jpg"
    address = f"127.0.0.1:{_closed_port()}"
    out = tmp_path / "x.parquet"
    cmd = [sys.executable, "-m", "agegender", "predict", str(photo), "--engine", "ray"]
    started = time.monotonic()
    res = subprocess.run(
        [*cmd, "--address", address, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    took = time.monotonic() - started
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --address " + address), lines
    assert "nothing answers" in lines[0]
    assert took < 20, took  # Python and torch start-up included; Ray itself would wait minutes
    assert not out.exists()
    # TEST-NET-2, where nobody is: the connect times out, is unreachable, or (a sandbox that
    # intercepts outbound TCP) something answers that is not a Ray head; never a hang
    started = time.monotonic()
    with pytest.raises(RayUnavailable, match="nothing answers"):
        check_address("198.51.100.7:6379", timeout=1.0)
    assert time.monotonic() - started < 5
    with pytest.raises(RayUnavailable, match="expected auto, HOST:PORT"):
        check_address("no-port-here")


def test_cli_joins_a_running_cluster(local_ray, fairface_dir: Path, tmp_path: Path) -> None:
    """``--address HOST:PORT`` of a live head (this process's Ray): the CLI's actors run
    there and its rows equal the local engine's."""
    from agegender.infer.distributed import check_address

    address = local_ray.get_runtime_context().gcs_address
    assert check_address(address) == address
    photos = [str(p) for p in _fairface_photos(fairface_dir)[:16]]
    predict_job(photos, tmp_path / "local.parquet", CONFIG)
    out = tmp_path / "remote.parquet"
    cmd = [sys.executable, "-m", "agegender", "predict", *photos, "--engine", "ray"]
    cmd += ["--address", address, "--actors", "2", "--threads", "1", "--out", str(out)]
    res = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "16 images:" in res.stderr
    assert _rows(pq.read_table(out)) == _rows(pq.read_table(tmp_path / "local.parquet"))


def test_auto_without_a_cluster_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from agegender.infer import distributed

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(distributed, "_resolve_auto", lambda: None)
    with pytest.raises(distributed.RayUnavailable, match="no running Ray cluster found"):
        distributed.check_address("auto")


def test_actors_beyond_the_cluster_are_one_line(local_ray) -> None:
    from agegender.infer.distributed import RayUnavailable, cluster_actors

    assert cluster_actors(None) == 2 and cluster_actors(1) == 1
    with pytest.raises(RayUnavailable, match="--actors 3: the Ray cluster has 2 CPUs"):
        cluster_actors(3)
