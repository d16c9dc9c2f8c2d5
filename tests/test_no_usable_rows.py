"""Nothing to do is an error: every command that reads a dataset exits 2 when no row of it
can be used, with one line naming the dataset, the first rejected rows (file, line,
reason) after it, and with ``--json`` all of them on stdout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from agegender.cli import app
from agegender.cli.base import SHOWN_ROWS
from agegender.data.prepare import NoRowsError, read_rows
from agegender.infer import save_torch_model
from agegender.models import TaskSpec, create_model

#: 5 images that do not exist, 3 genders and 3 ages the reader cannot read: lines 2..12
BAD = [f"img/{i}.jpg,1,30" for i in range(5)] + ["img/x.jpg,robot,30"] * 3
BAD += ["img/y.jpg,0,old"] * 3


@pytest.fixture(scope="module")
def bad_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad")
    (root / "img").mkdir()
    (root / "img" / "x.jpg").write_bytes(b"x")
    (root / "img" / "y.jpg").write_bytes(b"y")
    path = root / "bad.csv"
    path.write_text("\n".join(["path,gender,age", *BAD]) + "\n")
    return path


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small untrained model file (nothing is ever predicted with it here)."""
    torch.manual_seed(0)
    model = create_model("small_cnn", TaskSpec(gender=True, age="groups")).eval()
    cfg = model.default_cfg
    meta = {
        "name": "tiny",
        "arch": "small_cnn",
        "tasks": {"gender": True, "age": "groups"},
        "preprocessing": {k: cfg[k] for k in ("input_size", "resize", "mean", "std")},
    }
    return save_torch_model(model, meta, tmp_path_factory.mktemp("m") / "tiny.pt")


def _config(tmp: Path, data: Path) -> Path:
    cfg = {
        "name": "bad",
        "data": {"path": str(data), "size": 32, "input_size": 32},
        "model": {"name": "small_cnn"},
        "train": {"epochs": 1, "batch_size": 8, "progress_bar": False},
        "trainer": {"accelerator": "cpu", "threads": 1},
        "logger": {"tensorboard": False, "csv": False},
    }
    path = tmp / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _commands(name: str, data: Path, model: Path, tmp: Path) -> list[str]:
    return {
        "evaluate": ["evaluate", str(model), "--data", str(data), "--out", str(tmp / "e.json")],
        "calibrate": ["calibrate", str(model), "--data", str(data), "--out", str(tmp / "c.pt")],
        "cv": ["cv", str(_config(tmp, data)), "--folds", "2", "--out", str(tmp / "cv")],
        "train": ["train", str(_config(tmp, data)), "--out", str(tmp / "run")],
        "data folds": ["data", "folds", str(data), "--out", str(tmp / "folds.csv")],
    }[name]


COMMANDS = ("evaluate", "calibrate", "cv", "train", "data folds")


@pytest.mark.parametrize("command", COMMANDS)
def test_a_dataset_of_bad_rows_exits_2_naming_it_and_its_rows(
    command: str, bad_csv: Path, model_file: Path, tmp_path: Path
) -> None:
    res = CliRunner().invoke(app, _commands(command, bad_csv, model_file, tmp_path))
    assert res.exit_code == 2, res.output
    lines = res.stderr.splitlines()
    error = [i for i, line in enumerate(lines) if line.startswith("error:")]
    assert len(error) == 1, res.stderr
    i = error[0]
    assert lines[i] == f"error: {bad_csv}: no usable rows: read 11, rejected 11 (11 bad rows)"
    shown = lines[i + 1 : i + 1 + SHOWN_ROWS]
    assert shown == [
        f"  {bad_csv}:{n}: image not found: {bad_csv.parent}/img/{n - 2}.jpg" for n in range(2, 7)
    ]
    assert lines[i + 1 + SHOWN_ROWS] == f"  and {len(BAD) - SHOWN_ROWS} more rejected rows"
    assert res.stdout == ""  # the JSON only with --json
    assert not (tmp_path / "e.json").exists() and not (tmp_path / "folds.csv").exists()


@pytest.mark.parametrize("command", ("evaluate", "calibrate", "cv", "data folds"))
def test_json_carries_every_rejected_row(
    command: str, bad_csv: Path, model_file: Path, tmp_path: Path
) -> None:
    args = [*_commands(command, bad_csv, model_file, tmp_path), "--json"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    out = json.loads(res.stdout)  # stdout is the one JSON object
    assert out["error"] == f"{bad_csv}: no usable rows: read 11, rejected 11 (11 bad rows)"
    assert out["dataset"] == str(bad_csv)
    assert out["row_counts"] == {
        "path": str(bad_csv),
        "read": 11,
        "kept": 0,
        "rejected": 11,
        "reasons": {"bad_rows": 11},
    }
    rows = out["rejected_rows"]
    assert [r["line"] for r in rows] == list(range(2, 13))
    assert {r["path"] for r in rows} == {str(bad_csv)}
    reasons = [r["reason"] for r in rows]
    assert reasons[:5] == [f"image not found: {bad_csv.parent}/img/{i}.jpg" for i in range(5)]
    assert all("robot" in r for r in reasons[5:8]) and all("old" in r for r in reasons[8:])
    assert len(res.stderr.splitlines()) >= 1 + SHOWN_ROWS  # the terminal still gets the lines


def test_rows_the_audit_drops_are_listed_with_the_decoders_reason(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "b.jpg").write_bytes(b"not a jpeg either")
    data = tmp_path / "broken.csv"
    data.write_text("path,gender,age\na.jpg,0,30\nb.jpg,1,40\n")
    with pytest.raises(NoRowsError) as info:
        read_rows(data, workers=1)
    exc = info.value
    assert str(exc) == f"{data}: no usable rows: read 2, rejected 2 (2 unreadable)"
    assert [(Path(p.path).name, p.line) for p in exc.rejected] == [("a.jpg", 2), ("b.jpg", 3)]
    assert all(p.reason.startswith("unreadable") for p in exc.rejected)
    # without the audit the reader keeps them (the image decoder rejects them later)
    assert len(read_rows(data, audit=False).table) == 2

    res = CliRunner().invoke(
        app, ["data", "folds", str(data), "--out", str(tmp_path / "f.csv"), "--json"]
    )
    assert res.exit_code == 2, res.output
    out = json.loads(res.stdout)
    assert out["row_counts"]["reasons"] == {"unreadable": 2}
    assert [r["line"] for r in out["rejected_rows"]] == [2, 3]
    assert f"{tmp_path}/a.jpg:2: unreadable" in res.stderr


@pytest.fixture(scope="module")
def ckpt_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A training checkpoint as ``agegender train`` writes it (meta + ``model.`` state)."""
    from agegender.artifact import build_model, make_meta
    from agegender.config import Config

    tmp = tmp_path_factory.mktemp("ckpt")
    cfg = Config.model_validate(
        {"data": {"path": str(tmp), "size": 32, "input_size": 32}, "model": {"name": "small_cnn"}}
    )
    meta = make_meta(cfg, size=32, input_size=32, code_version="test")
    torch.manual_seed(0)
    state = {f"model.{k}": v for k, v in build_model(meta).state_dict().items()}
    torch.save({"agegender": meta, "state_dict": state}, tmp / "tiny.ckpt")
    return tmp / "tiny.ckpt"


@pytest.mark.parametrize("command", ("evaluate .pt", "evaluate .ckpt", "train"))
def test_images_that_never_decode_are_no_usable_rows(
    command: str, model_file: Path, ckpt_file: Path, tmp_path: Path
) -> None:
    """Without the audit the rows are kept until their images fail to decode; when not one
    does, that is no usable row either (a photo where no face is found is a result)."""
    for name in "abc":
        (tmp_path / f"{name}.jpg").write_bytes(b"not a jpeg")
    data = tmp_path / "broken.csv"
    data.write_text("path,gender,age\na.jpg,0,30\nb.jpg,1,40\nc.jpg,1,50\n")
    out = ["--out", str(tmp_path / "e.json")]
    args = {
        "evaluate .pt": ["evaluate", str(model_file), "--data", str(data), *out],
        "evaluate .ckpt": ["evaluate", str(ckpt_file), "--data", str(data), *out],
        "train": ["train", str(_config(tmp_path, data)), "--out", str(tmp_path / "run")],
    }[command]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    lines = res.stderr.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith("error:"))
    assert lines[i] == f"error: {data}: no usable rows: read 3, rejected 3 (3 unreadable)"
    assert [line.split(": unreadable")[0] for line in lines[i + 1 : i + 4]] == [
        f"  {tmp_path}/{name}.jpg:{n}" for n, name in zip((2, 3, 4), "abc", strict=True)
    ]
    assert not (tmp_path / "e.json").exists()
