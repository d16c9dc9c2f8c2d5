"""The reference experiments (configs/reference/, benchmarks/reference.py): every config
validates and builds; the reports' parameter counts that are reproducible are reproduced
exactly; one row runs end to end on a tiny budget and writes its row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from agegender.artifact import build_model, make_meta
from agegender.config.load import load_config
from agegender.models import keras_param_count
from conftest import REPO, load_script

reference = load_script("benchmarks/reference.py")
ROWS = reference.load_rows()
CONFIGS = sorted((REPO / "configs" / "reference").glob("*.yaml"))
RUN_CONFIGS = [p for p in CONFIGS if p.name != "rows.yaml"]


@pytest.fixture(autouse=True)
def _data_root(config_data_root: Path) -> None:
    """Configs name ``${AGEGENDER_DATA}``; validating and building them reads no data, so
    in a clone with nothing beside it a temporary root stands in."""


def _model(path: Path):
    config = load_config(path)
    meta = make_meta(
        config, size=config.data.size, input_size=config.data.input_size, code_version="test"
    )
    return config, build_model(meta)


def test_rows_cover_every_config_once():
    used = {r.config for r in ROWS}
    assert set(RUN_CONFIGS) == used, "a config without a row, or a row without a config"
    assert len({r.id for r in ROWS}) == len(ROWS)
    assert {r.report for r in ROWS} == {"000", "001", "002", "003", "004"}
    # the reports' three sweeps (16 + 4 + 8 trials) run their whole grids
    from agegender.sweep.space import read_space

    sizes = {r.id: read_space(r.space).grid_size for r in ROWS if r.kind == "sweep"}
    assert sizes == {
        "002_sweep_batch_lr_fc": 16,
        "002_sweep_weight_decay": 4,
        "002_sweep_dropout": 8,
    }


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.stem)
def test_reference_config_validates_and_builds(path: Path, one_torch_thread):
    config, model = _model(path)
    header = path.read_text(encoding="utf-8").splitlines()[0]
    assert header.startswith("# Report 0"), f"{path.name}: no header naming its report"
    assert config.name == path.stem
    import torch

    n = config.data.input_size
    with torch.inference_mode():
        out = model.eval()(torch.zeros(2, 3, n, n))
    assert set(out) == set(model.tasks.outputs())
    for task, shape in model.tasks.outputs().items():
        assert tuple(out[task].shape) == (2, *shape)


COUNTED = [r for r in ROWS if r.extra.get("report_params")]


@pytest.mark.parametrize("row", COUNTED, ids=lambda r: r.id)
def test_report_parameter_counts_are_reproduced(row):
    """001's four models, 002's Hassner CNN, 004's gender/age/multi-task/Xception models:
    the count each report prints, exactly (Keras counting)."""
    _, model = _model(row.config)
    assert keras_param_count(model) == row.extra["report_params"]


def test_counted_rows_are_the_reproducible_ones():
    ids = {r.id for r in COUNTED}
    assert {"001_mobilenetv2", "001_vgg16", "001_vgg19", "001_efficientnetv2"} <= ids
    assert {"002_hassner_cnn", "004_gender", "004_age", "004_transfer_xception"} <= ids
    assert {"004_multitask_g03", "004_multitask_g05", "004_multitask_g07"} <= ids


def test_keras_count_is_pytorch_count_with_bn_statistics_and_one_sigmoid_unit():
    from agegender.models import TaskSpec, create_model

    model = create_model("small_cnn", TaskSpec(gender=True, age="groups"))
    torch_count = sum(p.numel() for p in model.parameters())
    bn = sum(m.num_features for m in model.modules() if m.__class__.__name__ == "BatchNorm2d")
    gender_in = [m for m in model.heads["gender"].modules() if hasattr(m, "in_features")][-1]
    assert keras_param_count(model) == torch_count + 2 * bn - (gender_in.in_features + 1)


def test_bad_rows_file_names_file_and_row(tmp_path: Path):
    rows = yaml.safe_load(reference.ROWS_FILE.read_text(encoding="utf-8"))
    rows["rows"][1]["epochs"] = 3
    bad = tmp_path / "rows.yaml"
    bad.write_text(yaml.safe_dump(rows))
    with pytest.raises(reference.RowError, match=r"rows.yaml: row 2 \(.+\): unknown key"):
        reference.load_rows(bad)
    rows["rows"][1].pop("epochs")
    rows["rows"][0]["after"] = ["004_gender"]
    bad.write_text(yaml.safe_dump(rows))
    with pytest.raises(reference.RowError, match="not an earlier row"):
        reference.load_rows(bad)


def test_tiny_budget_row_runs_end_to_end_and_writes_its_row(tiny_utkface: Path, tmp_path):
    sets = [
        f"data.path={tiny_utkface}",
        "data.size=32",
        "data.input_size=32",
        "train.epochs=1",
        "train.batch_size=16",
        "data.limit=null",
    ]
    argv = [
        "--row",
        "003_modelA",
        "--runs-dir",
        str(tmp_path / "runs"),
        "--out-dir",
        str(tmp_path / "out"),
    ] + [x for s in sets for x in ("--set", s)]
    assert reference.main(argv) == 0
    doc = json.loads((tmp_path / "out" / "reference.json").read_text())
    row = next(r for r in doc["rows"] if r["id"] == "003_modelA")
    ours = row["ours"]
    assert ours["epochs"] == 1
    assert 0 <= ours["metrics"]["gender_accuracy"] <= 1
    assert ours["metrics"]["age_mae"] > 0
    assert ours["params_keras"] > 0 and ours["forward_ms_per_face"] > 0
    assert row["report_figure"].startswith("gender val accuracy")
    others = [r for r in doc["rows"] if r["id"] != "003_modelA"]
    assert all(r["ours"] is None for r in others)
    md = (tmp_path / "out" / "reference.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("| `003_modelA`"))
    assert "not run" not in line
    # a second run skips the finished row (no new training: same summary)
    summary = tmp_path / "runs" / "003_modelA" / "summary.json"
    before = summary.stat().st_mtime_ns
    assert reference.main(argv) == 0
    assert summary.stat().st_mtime_ns == before


def test_a_row_is_claimed_once_and_a_dead_claim_is_taken_over(tmp_path: Path):
    import subprocess
    import sys

    lock = tmp_path / "runs" / "004_gender.lock"
    assert reference.claim(lock)
    assert lock.read_text() == str(__import__("os").getpid())
    assert not reference.claim(lock)  # held by a live process (this one)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    lock.write_text(gone)  # a claim whose process has exited
    assert reference.claim(lock)
