"""Every command that reads a dataset prints how many rows it read, kept and rejected (and
why) and puts the same counts in its JSON output, on a small CSV manifest with known bad
rows: 2 lines the reader rejects, 1 unreadable image, 2 copies of one photo labelled with
different genders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from agegender.cli import app
from agegender.data.prepare import RowCounts, read_rows

N_GOOD = 30
READ = N_GOOD + 2 + 2  # + the copy, the broken image, and 2 bad lines
#: what reading with the audit keeps: all but the bad lines, the broken image, the conflict
AUDITED = {
    "read": READ,
    "kept": N_GOOD - 1,
    "rejected": 5,
    "reasons": {"bad_rows": 2, "unreadable": 1, "conflicting": 2},
}
#: ... and without it (the broken image fails to decode; the conflict is not seen)
UNAUDITED = {
    "read": READ,
    "kept": N_GOOD + 1,
    "rejected": 3,
    "reasons": {"bad_rows": 2, "unreadable": 1},
}


def _face(rng: np.random.Generator, female: bool) -> np.ndarray:
    """A random low-frequency texture (distinct perceptual hashes) tinted by the class."""
    grid = rng.uniform(40, 215, size=(6, 6))
    tex = np.asarray(Image.fromarray(grid.astype(np.uint8)).resize((48, 48), Image.BILINEAR))
    img = np.repeat(tex.astype(float)[..., None] * 0.35, 3, axis=-1)
    img[..., 0 if female else 2] += 150
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("odd_csv")
    (root / "img").mkdir()
    rng = np.random.default_rng(0)
    lines = ["path,gender,age"]
    for i in range(N_GOOD):
        female = i % 2
        Image.fromarray(_face(rng, bool(female))).save(root / "img" / f"{i:02d}.jpg", quality=95)
        lines.append(f"img/{i:02d}.jpg,{female},{[4, 26, 40, 65][(i // 2) % 4]}")
    shutil.copy(root / "img" / "00.jpg", root / "img" / "copy.jpg")  # same bytes
    lines.append("img/copy.jpg,1,4")  # ... labelled female: 00.jpg says male
    (root / "img" / "broken.jpg").write_bytes(b"not a jpeg")
    lines.append("img/broken.jpg,0,30")
    lines.append("img/01.jpg,robot,30")  # bad row: unrecognised gender
    lines.append("img/missing.jpg,1,30")  # bad row: image not found
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root / "labels.csv"


def _line(counts: dict, path: Path) -> str:
    return RowCounts.from_dict({**counts, "path": str(path)}).line()


def _stderr(res) -> str:
    return " ".join(res.stderr.split())  # rich may wrap long lines


def test_counts_and_their_one_line(manifest: Path) -> None:
    rows = read_rows(manifest, workers=1)
    assert rows.counts.to_dict() == {"path": str(manifest), **AUDITED}
    assert len(rows.table) == AUDITED["kept"]
    assert rows.counts.line() == (
        f"read 34 rows from {manifest}: kept 29, rejected 5 "
        "(2 bad rows, 1 unreadable, 2 conflicting)"
    )
    counts = RowCounts("x", 23_708, {"bad_rows": 1})
    counts.reject("limit", 0)
    assert counts.line() == "read 23,708 rows from x: kept 23,707, rejected 1 (1 bad row)"
    with pytest.raises(ValueError, match="unknown reason"):
        counts.reject("tired", 1)
    plain = read_rows(manifest, audit=False, limit=10, seed=0)
    assert plain.counts.to_dict()["reasons"] == {"bad_rows": 2, "limit": 22}
    assert plain.counts.kept == len(plain.table) == 10


def test_data_folds_audit_and_cache_print_and_return_the_counts(
    manifest: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    folds = tmp_path / "folds.csv"
    res = runner.invoke(
        app, ["data", "folds", str(manifest), "--out", str(folds), "--k", "2", "--json"]
    )
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["row_counts"] == {"path": str(manifest), **AUDITED}
    assert len(pd.read_csv(folds)) == info["faces"] == AUDITED["kept"]
    assert _line(AUDITED, manifest) in _stderr(res)

    res = runner.invoke(
        app,
        ["data", "folds", str(manifest), "--out", str(folds), "--k", "2", "--conflicts", "keep"],
    )
    assert res.exit_code == 0, res.output
    kept = {"read": READ, "kept": N_GOOD + 1, "rejected": 3}
    kept["reasons"] = {"bad_rows": 2, "unreadable": 1}
    assert _line(kept, manifest) in _stderr(res) and len(pd.read_csv(folds)) == N_GOOD + 1

    res = runner.invoke(app, ["data", "audit", str(manifest), "--json", "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["row_counts"] == {"path": str(manifest), **AUDITED}
    assert _line(AUDITED, manifest) in _stderr(res)

    args = ["data", "cache", str(manifest), "--size", "32", "--cache-dir", str(tmp_path / "c")]
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["row_counts"] == {"path": str(manifest), **UNAUDITED}
    assert _line(UNAUDITED, manifest) in _stderr(res)


def _config(tmp: Path, manifest: Path, **data) -> Path:
    cfg = {
        "name": "odd",
        "data": {"path": str(manifest), "size": 32, "input_size": 32, **data},
        "model": {"name": "small_cnn"},
        "task": {"gender": True, "age": "groups", "gamma": 0.8},
        "optim": {"name": "adam", "lr": 0.003},
        "schedule": {"name": "none"},
        "train": {"epochs": 1, "batch_size": 8, "progress_bar": False},
        "trainer": {"accelerator": "cpu", "threads": 1},
        "logger": {"tensorboard": False, "csv": False},
    }
    path = tmp / "odd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def train_run(manifest: Path, tmp_path_factory: pytest.TempPathFactory):
    """``agegender train`` for one epoch on the manifest, with the audit."""
    tmp = tmp_path_factory.mktemp("train")
    cfg = _config(tmp, manifest, audit=True)
    res = CliRunner().invoke(app, ["train", str(cfg), "--out", str(tmp / "run")])
    assert res.exit_code == 0, res.output
    return tmp / "run", res


def test_train_prints_and_records_the_counts(manifest: Path, train_run) -> None:
    run, res = train_run
    summary = json.loads((run / "summary.json").read_text())
    assert summary["dataset"]["row_counts"] == {"path": str(manifest), **AUDITED}
    assert summary["dataset"]["used"] == AUDITED["kept"]
    assert _line(AUDITED, manifest) in _stderr(res)


def test_train_without_the_audit_counts_what_the_cache_rejects(
    manifest: Path, tmp_path: Path
) -> None:
    from agegender.config import load_config
    from agegender.train.data import prepare_data

    cfg = load_config(_config(tmp_path, manifest, limit=12, seed=1))
    data = prepare_data(cfg)
    counts = data.info["row_counts"]
    assert counts["read"] == READ and counts["kept"] == len(data.table) == 12 - (
        counts["reasons"].get("unreadable", 0)
    )
    assert counts["reasons"]["bad_rows"] == 2 and counts["reasons"]["limit"] == N_GOOD + 2 - 12
    assert [c.to_dict() for c in data.row_counts] == [counts]


def test_cv_folds_record_the_counts(manifest: Path, tmp_path: Path) -> None:
    from agegender.config import load_config
    from agegender.evaluate.cv import build_folds

    info = build_folds(load_config(_config(tmp_path, manifest)), 2, tmp_path, workers=1)
    assert info["row_counts"] == {"path": str(manifest), **AUDITED}
    assert json.loads((tmp_path / "folds.json").read_text())["row_counts"] == info["row_counts"]
    assert info["faces"] == AUDITED["kept"]


def test_evaluate_prints_and_records_the_counts(manifest: Path, train_run) -> None:
    run, _ = train_run
    ckpt = run / "checkpoints" / "best.ckpt"
    res = CliRunner().invoke(app, ["evaluate", str(ckpt), "--data", str(manifest), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads((run / "eval" / "results.json").read_text())
    assert out["row_counts"] == {"path": str(manifest), **UNAUDITED}
    assert out["row_counts"]["kept"] == out["n_evaluated"]
    assert json.loads(res.stdout)["row_counts"] == out["row_counts"]
    assert _line(UNAUDITED, manifest) in _stderr(res)

    res = CliRunner().invoke(
        app, ["evaluate", str(ckpt), "--data", str(manifest), "--limit", "8", "--json"]
    )
    assert res.exit_code == 0, res.output
    counts = json.loads(res.stdout)["row_counts"]
    assert counts["reasons"]["limit"] == N_GOOD + 2 - 8 and counts["read"] == READ
    assert counts["kept"] == json.loads(res.stdout)["n_evaluated"]
