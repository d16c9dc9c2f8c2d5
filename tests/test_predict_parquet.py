"""``predict --out x.parquet`` and ``--resume`` on the local engine, and the bad inputs the
issue names: missing files in a list, an ``--out`` that is not ours, ``--resume`` against
another model's output. Real photos from ``examples/`` (shipped in the repository), the
bundled models, no Ray."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from agegender.cli import app

pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed")
pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed")

from agegender.infer.job import predict_job  # noqa: E402
from agegender.infer.outputs import BASE_COLUMNS  # noqa: E402
from agegender.infer.parquet import read_output  # noqa: E402
from agegender.infer.predictor import PredictorConfig  # noqa: E402
from conftest import assert_inputs_once  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples").glob("*.jpg"))
CONFIG = PredictorConfig(threads=1, workers=1)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture()
def photos(tmp_path: Path) -> Path:
    """12 real photos (the 3 examples, 4 names each), a broken one and a blank one."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for k in range(4):
        for p in EXAMPLES:
            shutil.copy(p, folder / f"{p.stem}_{k}.jpg")
    (folder / "broken.jpg").write_bytes(EXAMPLES[0].read_bytes()[:2000])
    Image.new("RGB", (300, 300), (90, 90, 90)).save(folder / "blank.png")
    return folder


def _cli(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, ["predict", *args, "--threads", "1", "--workers", "1"])
    return res.exit_code, res.output


def test_parquet_has_the_csv_rows_and_columns(photos: Path, tmp_path: Path) -> None:
    code, out = _cli(str(photos), "--out", str(tmp_path / "a.csv"))
    assert code == 1, out  # broken.jpg cannot be read
    code, out = _cli(str(photos), "--out", str(tmp_path / "a.parquet"))
    assert code == 1 and "14 images:" in out and "1 could not be read" in out, out
    table = pq.read_table(tmp_path / "a.parquet")
    rows = list(csv.DictReader((tmp_path / "a.csv").open()))
    csv_columns = list(rows[0])
    assert csv_columns[: len(BASE_COLUMNS)] == list(BASE_COLUMNS)
    assert table.column_names == [*csv_columns, "file_size", "file_mtime_ns", "run_id"]
    as_text = [
        {k: "" if v is None else str(v) for k, v in r.items() if k in csv_columns}
        for r in table.to_pylist()
    ]
    assert as_text == rows  # same rows, same order, same values
    assert len(set(table["run_id"].to_pylist())) == 1
    meta = json.loads(table.schema.metadata[b"agegender"])
    assert meta["model"] == "default" and meta["detector"] == "blazeface"
    assert len(meta["model_sha1"]) == 40
    sizes = {r["path"]: r["file_size"] for r in table.to_pylist()}
    assert all(sizes[p] == os.stat(p).st_size for p in sizes)
    assert not (tmp_path / "a.parquet.parts").exists()


def test_interrupted_run_resumes_with_nothing_lost_or_twice(photos: Path, tmp_path: Path) -> None:
    """Ctrl-C after 5 inputs (parts of 2): all 5 are written (the 5th flushed on the way
    out); --resume predicts exactly the other 9."""
    out = tmp_path / "r.parquet"
    expected = {str(p) for p in photos.iterdir()}
    seen = []

    def interrupt(result) -> None:
        seen.append(result.source)
        if len(seen) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        predict_job([photos], out, CONFIG, part_size=2, on_result=interrupt)
    parts = sorted((tmp_path / "r.parquet.parts").glob("part-*.parquet"))
    assert len(parts) == 3 and not out.exists()  # 2 + 2 + the one held when it stopped
    first = set(pq.ParquetDataset([str(p) for p in parts]).read()["path"].to_pylist())
    assert first == set(seen)

    summary = predict_job([photos], out, CONFIG, resume=True, part_size=2)
    assert (summary.skipped, summary.changed, summary.predicted) == (5, 0, 9)
    runs = assert_inputs_once(pq.read_table(out), expected)
    assert sorted(runs.values()) == [5, 9]
    assert not (tmp_path / "r.parquet.parts").exists()
    again = predict_job([photos], out, CONFIG, resume=True)  # all done: nothing to do
    assert (again.skipped, again.predicted) == (14, 0)
    assert assert_inputs_once(pq.read_table(out), expected) == runs

    # a changed input is predicted again, its old rows removed: still once each
    changed = photos / "man_40-49_2.jpg"
    shutil.copy(EXAMPLES[0], changed)  # another photo under the same name
    os.utime(changed, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    third = predict_job([photos], out, CONFIG, resume=True)
    assert (third.skipped, third.changed, third.predicted) == (13, 1, 1)
    table = pq.read_table(out)
    runs3 = assert_inputs_once(table, expected)
    assert runs3[third.run_id] == 1
    row = next(r for r in table.to_pylist() if r["path"] == str(changed))
    assert row["file_mtime_ns"] == 1_700_000_000_000_000_000
    assert row["file_size"] == EXAMPLES[0].stat().st_size

    # without --resume the output is replaced, not added to
    fresh = predict_job([photos], out, CONFIG)
    assert fresh.predicted == 14
    assert assert_inputs_once(pq.read_table(out), expected) == {fresh.run_id: 14}


def test_merged_parts_left_behind_are_not_read_twice(photos: Path, tmp_path: Path) -> None:
    """A kill after the merged file's rename but before its parts were removed: the parts
    it lists are removed on the next run, never read again."""
    out = tmp_path / "m.parquet"
    expected = {str(p) for p in photos.iterdir()}
    stop = []

    def interrupt(result) -> None:
        stop.append(1)
        if len(stop) == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        predict_job([photos], out, CONFIG, part_size=3, on_result=interrupt)
    saved = tmp_path / "saved"
    shutil.copytree(tmp_path / "m.parquet.parts", saved)
    predict_job([photos], out, CONFIG, resume=True, part_size=3)
    shutil.copytree(saved, tmp_path / "m.parquet.parts")  # as if their removal never ran
    table = read_output(out)
    assert_inputs_once(table, expected)
    assert table.num_rows == pq.read_table(out).num_rows
    again = predict_job([photos], out, CONFIG, resume=True)
    assert again.skipped == 14 and again.predicted == 0
    assert not (tmp_path / "m.parquet.parts").exists()
    assert_inputs_once(pq.read_table(out), expected)


def test_folder_of_parts(photos: Path, tmp_path: Path) -> None:
    out = f"{tmp_path / 'faces.parquet'}/"
    code, text = _cli(str(photos), "--out", out, "--part-size", "4")
    assert code == 1, text
    parts = sorted(Path(out).glob("part-*.parquet"))
    assert len(parts) == 4  # 14 inputs, 4 a part: never merged
    expected = {str(p) for p in photos.iterdir()}
    # any Parquet reader reads the folder
    assert_inputs_once(pq.ParquetDataset(out).read(), expected)
    code, text = _cli(str(photos), "--out", out, "--resume")
    assert code == 0 and "14 of 14 inputs already there" in text and "0 images:" in text, text
    assert sorted(Path(out).glob("part-*.parquet")) == parts


def test_missing_files_in_a_list_get_rows_with_the_reason(photos: Path, tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    good = sorted(photos.glob("*_0.jpg"))
    listing.write_text("\n".join([str(good[0]), "gone/nowhere.jpg", str(good[1]), "lost.png"]))
    code, text = _cli(str(listing), "--out", str(tmp_path / "l.parquet"))
    assert code == 1 and "4 images:" in text and "2 could not be read" in text, text
    rows = {r["path"]: r for r in pq.read_table(tmp_path / "l.parquet").to_pylist()}
    missing = [str(tmp_path / "gone/nowhere.jpg"), str(tmp_path / "lost.png")]
    for path in missing:
        assert rows[path]["error"] == "file not found"
        assert rows[path]["file_size"] is None and rows[path]["file_mtime_ns"] is None
    assert all(rows[str(p)]["gender"] in ("female", "male") for p in good[:2])
    # on --resume a file still missing stays done; one that appeared is predicted
    shutil.copy(EXAMPLES[1], tmp_path / "lost.png")
    code, text = _cli(str(listing), "--out", str(tmp_path / "l.parquet"), "--resume")
    assert "3 of 4 inputs already there, 1 changed since" in text and "1 images:" in text, text
    rows = {r["path"]: r for r in pq.read_table(tmp_path / "l.parquet").to_pylist()}
    assert rows[missing[1]]["error"] is None and rows[missing[0]]["error"] == "file not found"


@pytest.mark.parametrize("kind", ["labels.csv", "notes.json", "other.parquet", "junk.parquet"])
def test_out_that_is_not_ours_is_refused(kind: str, photos: Path, tmp_path: Path) -> None:
    target = tmp_path / kind
    if kind == "labels.csv":
        target.write_text("file,gender,age\na.jpg,f,30\n")
    elif kind == "notes.json":
        target.write_text('{"my": "settings"}\n')
    elif kind == "other.parquet":
        pq.write_table(pa.table({"path": ["a.jpg"], "score": [0.5]}), target)
    else:
        target.write_bytes(b"PAR1 not really")
    before = target.read_bytes()
    for extra in ([], ["--resume"]) if kind.endswith(".parquet") else ([],):
        code, text = _cli(str(photos), "--out", str(target), *extra)
        lines = text.strip().splitlines()
        assert code == 2 and len(lines) == 1, text
        assert lines[0].startswith(f"error: {target}: exists and is not ")
        assert "nothing was overwritten" in lines[0]
        assert target.read_bytes() == before


def test_folder_with_other_files_is_refused(photos: Path, tmp_path: Path) -> None:
    folder = tmp_path / "results.parquet"
    folder.mkdir()
    (folder / "part-0.parquet").write_text("someone else's")
    code, text = _cli(str(photos), "--out", f"{folder}/")
    lines = text.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "which agegender predict did not write" in lines[0]
    assert (folder / "part-0.parquet").read_text() == "someone else's"


def test_resume_against_another_model_names_both(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "d.parquet"
    code, _ = _cli(str(photos), "--out", str(out))
    before = out.read_bytes()
    code, text = _cli(str(photos), "--out", str(out), "--resume", "--model", "accurate")
    lines = text.strip().splitlines()
    assert code == 2 and len(lines) == 1, text
    assert f"error: {out}: written by model 'default'" in lines[0]
    assert "this run's model is 'accurate'" in lines[0]
    assert out.read_bytes() == before
    code, text = _cli(str(photos), "--out", str(out), "--resume", "--detector", "haar")
    assert code == 2 and "face path" in text and "'detector': 'haar'" in text, text
    # the mirror views change every row too: not mixed into a run without them
    code, text = _cli(str(photos), "--out", str(out), "--resume", "--tta", "flip")
    assert code == 2 and "'tta': 'none'" in text and "'tta': 'flip'" in text, text
    assert out.read_bytes() == before


def test_resume_needs_parquet_and_ray_is_named(photos: Path, tmp_path: Path) -> None:
    code, text = _cli(str(photos), "--out", str(tmp_path / "x.csv"), "--resume")
    assert code == 2 and "--resume needs a Parquet --out" in text, text
    code, text = _cli(str(photos), "--out", str(tmp_path / "x.txt"))
    assert code == 2 and ".parquet" in text
    code, text = _cli(str(photos), "--out", f"{tmp_path / 'x.csv'}/")
    assert code == 2 and "only a .parquet output can be a folder" in text
    code, text = _cli(str(photos), "--engine", "spark")
    assert code == 2 and "--engine spark: choose local or ray" in text


@pytest.mark.skipif(shutil.which("script") is None, reason="util-linux `script` (a pty) absent")
def test_progress_bar_at_a_terminal_only(tmp_path: Path) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    for k in range(40):
        shutil.copy(EXAMPLES[k % 3], folder / f"p{k:02d}.jpg")
    out = tmp_path / "t.parquet"
    cmd = f"{sys.executable} -m agegender predict {folder} --out {out} --threads 1"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "COLUMNS": "150"}
    tty = subprocess.run(
        ["script", "-qec", cmd, "/dev/null"], capture_output=True, text=True, timeout=300, env=env
    ).stdout
    assert "predicting" in tty and "photos/s" in tty and "eta" in tty, tty[-2000:]
    piped = subprocess.run(cmd.split(), capture_output=True, text=True, timeout=300, env=env)
    assert piped.returncode == 0, piped.stderr
    assert "predicting" not in piped.stderr and "40 images:" in piped.stderr
