"""Every command over a table of bad inputs: one line on stderr that names the file, no
traceback, exit status 2. Every case fails before any training or inference starts.

The table runs in-process (``CliRunner``: one torch import for all); a few cases also run
the installed entry point in a subprocess, where stray warnings and log lines would show.
"""

from __future__ import annotations

import errno
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import agegender.config.paths
from agegender.cli import app
from agegender.errors import ModelFileError, check_writable, error_line, torch_load

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of bad inputs: files that are not models, broken configs, a regular file
    where a folder should be, an empty dataset folder."""
    d = tmp_path_factory.mktemp("bad")
    for name in ("text.pt", "text.onnx", "text.ckpt"):
        (d / name).write_text("hello, I am not a model\n", encoding="utf-8")
    (d / "pickled.pt").write_bytes(pickle.dumps({"weights": [1, 2, 3]}, protocol=4))
    (d / "random.pt").write_bytes(os.urandom(4096))
    (d / "random.ckpt").write_bytes(os.urandom(4096))
    (d / "zero.onnx").write_bytes(b"")
    (d / "zero.pt").write_bytes(b"")
    torch.save({"x": torch.zeros(2)}, d / "tensors.pt")  # tensors, but no model meta
    (d / "regular").write_text("a file, not a folder\n", encoding="utf-8")
    (d / "empty").mkdir()  # a dataset folder without images
    (d / "faces").mkdir()  # data.path of the configs: exists (nothing reads it)
    (d / "good.yaml").write_text(
        f"data:\n  path: {d / 'faces'}\nmodel:\n  name: small_cnn\n", encoding="utf-8"
    )
    (d / "env.yaml").write_text(
        "data:\n  path: ${AGEGENDER_DATA}/utkface\nmodel:\n  name: small_cnn\n",
        encoding="utf-8",
    )
    (d / "syntax.yaml").write_text("data:\n  path: [faces\nmodel: {}\n", encoding="utf-8")
    (d / "unknown.yaml").write_text(f"data:\n  path: {d / 'faces'}\n  bogus: 1\n", encoding="utf-8")
    (d / "space.yaml").write_text(
        "metric: val/loss\ndirection: minimize\nparams:\n  optim.lr: {grid: [0.01, 0.02]}\n",
        encoding="utf-8",
    )
    return d


# (id, command line ({bad}: the folder above, {ex}: examples/), substring of the error)
CASES = [
    # configs: train, cv, sweep
    ("train-no-config", "train {bad}/nope.yaml", "nope.yaml: config file not found"),
    ("train-yaml-syntax", "train {bad}/syntax.yaml", "syntax.yaml:3: invalid YAML"),
    ("train-unknown-key", "train {bad}/unknown.yaml", "unknown.yaml: data.bogus: unknown key"),
    ("train-set-no-value", "train {bad}/good.yaml --set optim.lr", "--set optim.lr"),
    ("train-set-bad-value", "train {bad}/good.yaml --set optim.lr=-1", "good.yaml: optim.lr"),
    ("train-no-data", "train {bad}/good.yaml --set data.path={bad}/nodata", "nodata"),
    (
        "train-init-from-text",
        "train {bad}/good.yaml --set model.init_from={bad}/text.pt",
        "text.pt",
    ),
    (
        "train-init-from-pickle",
        "train {bad}/good.yaml --set model.init_from={bad}/pickled.pt",
        "pickled.pt: not a model file we can load",
    ),
    (
        "train-pretrained-file-random",
        "train {bad}/good.yaml --set model.name=efficientnet_lite0 "
        "--set model.pretrained_file={bad}/random.pt",
        "random.pt: not a model file we can load",
    ),
    ("train-out-under-file", "train {bad}/good.yaml --out {bad}/regular/run", "regular/run"),
    ("cv-no-config", "cv {bad}/nope.yaml", "nope.yaml"),
    ("cv-init-from-empty", "cv {bad}/good.yaml --set model.init_from={bad}/zero.pt", "zero.pt"),
    ("cv-out-under-file", "cv {bad}/good.yaml --out {bad}/regular/cv", "regular/cv"),
    ("sweep-no-config", "sweep {bad}/nope.yaml --space {bad}/space.yaml", "nope.yaml"),
    ("sweep-no-space", "sweep {bad}/good.yaml --space {bad}/nospace.yaml", "nospace.yaml"),
    (
        "sweep-init-from-text",
        "sweep {bad}/good.yaml --space {bad}/space.yaml --out {bad}/sweep "
        "--set model.init_from={bad}/text.ckpt",
        "text.ckpt",
    ),
    (
        "sweep-out-under-file",
        "sweep {bad}/good.yaml --space {bad}/space.yaml --out {bad}/regular/s",
        "regular/s",
    ),
    # data
    ("data-folds-no-path", "data folds {bad}/nodata --out {bad}/f.csv", "nodata"),
    ("data-folds-out-under-file", "data folds {bad}/empty --out {bad}/regular/f.csv", "regular"),
    ("data-folds-no-images", "data folds {bad}/empty --out {bad}/f.csv", "empty: no images"),
    ("data-audit-no-path", "data audit {bad}/nodata", "nodata"),
    ("data-audit-a-file", "data audit {bad}/regular", "regular: not a dataset"),
    ("data-cache-no-path", "data cache {bad}/nodata --size 32", "nodata"),
    (
        "data-cache-dir-is-file",
        "data cache {bad}/empty --size 32 --cache-dir {bad}/regular",
        "regular: exists and is not a folder",
    ),
    # model files: predict, evaluate, export, serve, bench
    ("predict-model-text", "predict {ex} --model {bad}/text.pt", "text.pt"),
    ("predict-model-pickle", "predict {ex} --model {bad}/pickled.pt", "pickled.pt"),
    ("predict-model-random", "predict {ex} --model {bad}/random.pt", "random.pt"),
    ("predict-model-empty-pt", "predict {ex} --model {bad}/zero.pt", "zero.pt: not a model"),
    ("predict-model-empty-onnx", "predict {ex} --model {bad}/zero.onnx", "zero.onnx"),
    ("predict-model-text-onnx", "predict {ex} --model {bad}/text.onnx", "text.onnx"),
    ("predict-model-random-ckpt", "predict {ex} --model {bad}/random.ckpt", "random.ckpt"),
    ("predict-model-tensors", "predict {ex} --model {bad}/tensors.pt", "tensors.pt"),
    ("predict-model-missing", "predict {ex} --model {bad}/nope.onnx", "nope.onnx"),
    ("predict-model-not-model", "predict {ex} --model {bad}/regular", "regular: not a model"),
    ("predict-no-input", "predict {bad}/nope.jpg", "nope.jpg"),
    ("predict-out-under-file", "predict {ex} --out {bad}/regular/p.csv", "regular/p.csv"),
    ("predict-annotate-file", "predict {ex} --annotate {bad}/regular", "regular"),
    ("evaluate-pt-text", "evaluate {bad}/text.pt --data {bad}/empty", "text.pt"),
    ("evaluate-pt-pickle", "evaluate {bad}/pickled.pt --data {bad}/empty", "pickled.pt"),
    ("evaluate-onnx-empty", "evaluate {bad}/zero.onnx --data {bad}/empty", "zero.onnx"),
    ("evaluate-ckpt-random", "evaluate {bad}/random.ckpt --data {bad}/empty", "random.ckpt"),
    ("evaluate-ckpt-missing", "evaluate {bad}/nope.ckpt --data {bad}/empty", "nope.ckpt"),
    ("evaluate-no-data", "evaluate default --data {bad}/nodata", "nodata"),
    ("evaluate-no-images", "evaluate default --data {bad}/empty", "empty: no images"),
    (
        "evaluate-out-under-file",
        "evaluate default --data {bad}/empty --out {bad}/regular/r.json",
        "regular/r.json",
    ),
    ("export-random", "export {bad}/random.pt --onnx {bad}/x.onnx", "random.pt"),
    ("export-ckpt-text", "export {bad}/text.ckpt --pt {bad}/x.pt", "text.ckpt"),
    ("export-missing", "export {bad}/nope.ckpt --onnx {bad}/x.onnx", "nope.ckpt"),
    ("export-out-under-file", "export {bad}/tensors.pt --onnx {bad}/regular/x.onnx", "regular"),
    ("serve-model-text", "serve --model {bad}/text.pt", "text.pt"),
    ("serve-model-empty-onnx", "serve --model {bad}/zero.onnx", "zero.onnx"),
    ("bench-model-random", "bench predict --model {bad}/random.pt", "random.pt"),
    ("bench-model-onnx", "bench predict --model {bad}/text.onnx", "text.onnx"),
    # reports
    ("report-no-run", "report {bad}/norun", "norun"),
    ("report-out-under-file", "report {bad}/empty --out {bad}/regular/rep", "regular/rep"),
]


def _argv(line: str, bad: Path) -> list[str]:
    return [a.format(bad=bad, ex=EXAMPLES) for a in line.split()]


def assert_one_line_error(code: int, stderr: str, output: str, expected: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, f"exit {code}:\n{output}"
    assert "Traceback" not in output, output
    assert len(lines) == 1, f"{len(lines)} lines on stderr:\n{stderr}"
    assert lines[0].startswith("error: "), lines[0]
    assert expected in lines[0], lines[0]
    assert "weights_only" not in lines[0]  # never PyTorch's advice to unpickle objects


@pytest.mark.parametrize("line, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_naming_the_file(bad: Path, line: str, expected: str) -> None:
    res = CliRunner().invoke(app, _argv(line, bad))
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception  # show the traceback
    assert_one_line_error(res.exit_code, res.stderr, res.output, expected)


def test_data_root_unset_and_default_missing(bad: Path, monkeypatch) -> None:
    """``${AGEGENDER_DATA}`` in a config, the variable unset, no ``../shared/data``: one
    line that says how to set it."""
    monkeypatch.delenv("AGEGENDER_DATA", raising=False)
    monkeypatch.setattr(agegender.config.paths, "DEFAULT_DATA_ROOT", bad / "no" / "shared" / "data")
    for command in ("train", "cv"):
        res = CliRunner().invoke(app, [command, str(bad / "env.yaml")])
        assert_one_line_error(res.exit_code, res.stderr, res.output, "env.yaml: data.path:")
        assert "AGEGENDER_DATA is not set" in res.stderr or "${AGEGENDER_DATA}" in res.stderr
        assert "set AGEGENDER_DATA=/path/to/data" in res.stderr
    # set but empty is the same as unset (not "/utkface")
    monkeypatch.setenv("AGEGENDER_DATA", "")
    res = CliRunner().invoke(app, ["train", str(bad / "env.yaml")])
    assert_one_line_error(res.exit_code, res.stderr, res.output, "is not set")


def test_disk_full_and_permission_are_one_line(bad: Path, monkeypatch) -> None:
    """OSErrors from deep inside a command (a full disk, a denied write) are one line
    naming the file; a bug (any other exception) keeps its traceback."""
    import agegender.evaluate.report as report

    for err, reason in (
        (OSError(errno.ENOSPC, "No space left on device", "rep/report.md"), "disk full"),
        (PermissionError(errno.EACCES, "Permission denied", "rep/fig.png"), "permission"),
    ):

        def boom(*args, err=err, **kwargs):
            raise err

        monkeypatch.setattr(report, "make_report", boom)
        res = CliRunner().invoke(app, ["report", str(bad)])
        assert_one_line_error(res.exit_code, res.stderr, res.output, "rep/")
        assert reason in res.stderr

    def bug(*args, **kwargs):
        raise KeyError("oops")

    monkeypatch.setattr(report, "make_report", bug)
    res = CliRunner().invoke(app, ["report", str(bad)])
    assert isinstance(res.exception, KeyError)  # not hidden behind a one-line error


def test_listing_commands_fail_only_on_usage() -> None:
    """``models`` and ``detectors`` read no files: their only failure is a usage error
    (click's usage message, exit 2), never a traceback."""
    for cmd in ("models", "detectors"):
        res = CliRunner().invoke(app, [cmd, "--bogus"])
        assert res.exit_code == 2 and "Traceback" not in res.output and "--bogus" in res.output


def test_out_in_a_missing_folder_is_created(tmp_path: Path) -> None:
    """The choice for --out in a folder that does not exist: made, like every writer's
    (atomic_path) folders, not an error."""
    out = tmp_path / "new" / "deeper" / "faces.csv"
    res = CliRunner().invoke(
        app, ["predict", str(EXAMPLES / "man_40-49.jpg"), "--out", str(out), "--detector", "none"]
    )
    assert res.exit_code == 0, res.output
    assert out.read_text(encoding="utf-8").startswith("path,")


def test_helpers(bad: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="the file is empty"):
        torch_load(bad / "zero.pt")
    with pytest.raises(ModelFileError, match="pickled.pt: not a model file we can load"):
        torch_load(bad / "pickled.pt")
    assert set(torch_load(bad / "tensors.pt", mmap=True)) == {"x"}
    assert check_writable(tmp_path / "a" / "b.csv") == tmp_path / "a" / "b.csv"
    assert not (tmp_path / "a").exists()  # checks, creates nothing
    with pytest.raises(IsADirectoryError):
        check_writable(tmp_path)
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(PermissionError) as info:
            check_writable(locked / "out", folder=True)
        assert error_line(info.value).startswith(f"{locked / 'out'}: permission denied")
    line = error_line(OSError(errno.ENOSPC, "No space left on device", "x.csv"))
    assert line == "x.csv: no space left on device (disk full)"


def test_weights_that_do_not_fit_their_meta(tmp_path: Path) -> None:
    from agegender.artifact import load_model, save_torch_model
    from agegender.models import TaskSpec, create_model

    model = create_model("small_cnn", TaskSpec(gender=True, age="groups"))
    cfg = model.default_cfg
    meta = {
        "arch": "small_cnn",
        "tasks": {"gender": True, "age": "groups"},
        "preprocessing": {k: cfg[k] for k in ("input_size", "resize", "mean", "std")},
    }
    path = save_torch_model(model, meta, tmp_path / "m.pt")
    blob = torch.load(path, weights_only=True)
    torch.save({"meta": blob["meta"], "state_dict": {"x": torch.zeros(1)}}, path)
    with pytest.raises(ModelFileError, match=r"m\.pt: the weights do not fit the model it describ"):
        load_model(path)


@pytest.mark.parametrize(
    "line, expected",
    [
        ("predict {ex} --model {bad}/pickled.pt", "pickled.pt"),
        ("train {bad}/good.yaml --set model.init_from={bad}/text.pt", "text.pt"),
    ],
    ids=["predict-pickle", "train-init-from"],
)
def test_installed_command_prints_one_line(bad: Path, line: str, expected: str) -> None:
    """The real entry point in a subprocess: warnings and log lines would show here."""
    exe = shutil.which("agegender")
    argv = [exe] if exe else [sys.executable, "-m", "agegender"]
    proc = subprocess.run(
        argv + _argv(line, bad), capture_output=True, text=True, timeout=120, cwd=bad
    )
    assert_one_line_error(proc.returncode, proc.stderr, proc.stdout + proc.stderr, expected)
