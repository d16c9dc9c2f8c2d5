"""The reference experiments (configs/reference/, benchmarks/reference.py): every config
validates and builds; the reports' parameter counts that are reproducible are reproduced
exactly; one row runs end to end on a tiny budget and writes its row."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
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


# ------------------------------------------------------------- rows on Adience
def test_adience_rows_are_the_reports_adience_experiments():
    marked = {r.id: r.variants["adience"] for r in ROWS if "adience" in r.variants}
    assert {r.split("_")[0] for r in marked} == {"000", "002", "004"}
    assert all(marked[r.id] == "run" for r in ROWS if r.report == "004")
    assert marked["002_celeba_frozen"] == "evaluate"  # the report's "Adience 0.7868"
    assert not any(r.startswith(("001", "003")) for r in marked)  # CelebA / UTKFace reports
    variants = {v.id: v for v in reference.variant_rows(ROWS, "adience")}
    assert len(variants) == len(marked)
    stage2 = variants["adience/000_exp2_adience_finetune"]
    assert stage2.after == ["000_exp2_celeba_pretrain"]  # the CelebA stage is shared
    assert stage2.sets == ["data.path=${AGEGENDER_DATA}/adience-fold0-part"]
    by_id = {r.id: r for r in [*ROWS, *variants.values()]}
    order = [r.id for r in reference.with_dependencies([stage2], by_id)]
    assert order == ["000_exp2_celeba_pretrain", "adience/000_exp2_adience_finetune"]
    cmd = reference.commands(variants["adience/002_celeba_zw"], by_id, Path("/r"), [], 1)
    assert cmd[0][3:5] == ["evaluate", "/r/002_celeba_zw/checkpoints/best.ckpt"]
    assert cmd[0][-2:] == ["--out", "/r/adience/002_celeba_zw/results.json"]
    cv = reference.commands(variants["adience/004_gender"], by_id, Path("/r"), [], 1)[0]
    assert cv[3] == "cv" and "data.path=${AGEGENDER_DATA}/adience-fold0-part" in cv


def test_bad_adience_marks_name_file_and_row(tmp_path: Path):
    rows = yaml.safe_load(reference.ROWS_FILE.read_text(encoding="utf-8"))
    bad = tmp_path / "rows.yaml"
    sweep = next(i for i, r in enumerate(rows["rows"]) if r["kind"] == "sweep")
    for i, value, message in (
        (0, "yes", r"row 1 \(.+\): adience must be one of run, evaluate"),
        (sweep, "run", rf"row {sweep + 1} \(.+\): adience: run is for train and cv rows"),
    ):
        changed = yaml.safe_load(yaml.safe_dump(rows))
        changed["rows"][i]["adience"] = value
        bad.write_text(yaml.safe_dump(changed))
        with pytest.raises(reference.RowError, match=message):
            reference.load_rows(bad)


def test_people_figures_count_people_and_majority():
    import pandas as pd

    # 3 people: A (4 photos, all right), B (4, all wrong), C (2, right); 8 men, 2 women
    pred = pd.DataFrame(
        {
            "path": [f"{i}.jpg" for i in range(10)],
            "subject": ["A"] * 4 + ["B"] * 4 + ["C"] * 2,
            "gender": [0] * 8 + [1, 1],
            "pred_gender": [0] * 4 + [1] * 4 + [1, 1],
            "age_group": [4] * 10,
        }
    )
    from agegender.evaluate.metrics import P_AGE

    for k, col in enumerate(P_AGE):  # the predicted distribution's mass: 25-32, then 15-20
        pred[col] = [float(k == 4)] * 5 + [float(k == 3)] * 5
    out = reference.people_figures(pred)
    assert (out["photos"], out["people"]) == (10, 3)
    gender = out["gender_accuracy"]
    assert gender["value"] == pytest.approx(0.6) and gender["people"] == 3
    assert gender["low"] < 0.6 < gender["high"]
    assert out["gender_majority"] == pytest.approx(0.8)
    balanced = out["gender_balanced"]["value"]
    assert balanced == pytest.approx((4 / 8 + 2 / 2) / 2)  # the mean of the two recalls
    assert out["age_group_exact"]["value"] == pytest.approx(0.5)
    assert out["age_majority"] == pytest.approx(1.0)


def _tiny_adience(root: Path, people: int = 12, photos: int = 4) -> Path:
    """An Adience layout (fold_0_data.txt, faces/<user>/coarse_tilt_aligned_face.*) of
    ``people`` people with ``photos`` photos each, genders visibly apart as tiny_utkface."""
    from PIL import Image

    from conftest import _face

    rng = np.random.default_rng(1)
    lines = [
        "user_id\toriginal_image\tface_id\tage\tgender\tx\ty\tdx\tdy\ttilt_ang\t"
        "fiducial_yaw_angle\tfiducial_score\n"
    ]
    for person in range(people):
        user, female = f"u{person % 3}@N0", person % 2 == 1
        for k in range(photos):
            image = f"{person}_{k}.jpg"
            p = root / "faces" / user / f"coarse_tilt_aligned_face.{person}.{image}"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_face(rng, female)).save(p, quality=95)
            age = ["(25, 32)", "(0, 2)", "(60, 100)"][person % 3]
            g = "f" if female else "m"
            lines.append(f"{user}\t{image}\t{person}\t{age}\t{g}\t0\t0\t9\t9\t0\t0\t1\n")
    (root / "fold_0_data.txt").write_text("".join(lines))
    return root


def test_tiny_budget_adience_row_runs_and_counts_people(tmp_path: Path, monkeypatch):
    data = _tiny_adience(tmp_path / "adience")
    monkeypatch.setitem(reference.DATASETS, "adience", str(data))
    sets = ["data.size=32", "data.input_size=32", "train.epochs=1", "train.batch_size=8"]
    argv = [
        "--dataset",
        "adience",
        "--row",
        "000_exp2_no_pretrain",
        "--runs-dir",
        str(tmp_path / "runs"),
        "--out-dir",
        str(tmp_path / "out"),
    ] + [x for s in sets for x in ("--set", s)]
    assert reference.main(argv) == 0
    assert not (tmp_path / "runs" / "000_exp2_no_pretrain").exists()  # only the Adience run
    doc = json.loads((tmp_path / "out" / "reference.json").read_text())
    row = next(r for r in doc["rows"] if r["id"] == "000_exp2_no_pretrain")
    assert row["ours"] is None
    people = row["adience"]["people_figures"]
    run = tmp_path / "runs" / "adience" / "000_exp2_no_pretrain"
    summary = json.loads((run / "summary.json").read_text())
    test_faces = summary["dataset"]["splits"]["test"]
    # the held-out photos are the run's own test split, whole people (4 photos each)
    assert people["photos"] == test_faces and people["people"] * 4 == test_faces
    assert people["gender_accuracy"]["value"] == pytest.approx(
        row["adience"]["metrics"]["gender_accuracy"], abs=1e-6
    )
    pred = reference.pd.read_csv(run / "test_predictions.csv")
    assert pred["subject"].nunique() == people["people"]
    md = (tmp_path / "out" / "reference.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("| `000_exp2_no_pretrain`"))
    assert f"({test_faces}, {people['people']})" in line
    assert "## On Adience" in md


def test_paired_difference_is_left_minus_right_on_shared_photos_over_people():
    import pandas as pd

    people = [f"p{i // 5}" for i in range(40)]  # 8 people, 5 photos each
    truth = [i % 2 for i in range(40)]
    left = pd.DataFrame(
        {"path": [f"{i}.jpg" for i in range(40)], "subject": people, "gender": truth}
    )
    left["pred_gender"] = truth  # all right
    right = left.copy()
    right["pred_gender"] = [t if i < 20 else 1 - t for i, t in enumerate(truth)]  # half
    right = right.iloc[::-1]  # another order: photos are matched by path
    diff = reference.paired_difference(left, right, "gender_accuracy")
    assert diff["value"] == pytest.approx(0.5)
    assert (diff["photos"], diff["people"]) == (40, 8)
    assert 0 < diff["low"] <= 0.5 <= diff["high"] <= 1
    assert reference._resolved(diff) == ""
    assert diff["left"]["value"] == 1 and diff["right"]["value"] == pytest.approx(0.5)
    same = reference.paired_difference(left, left, "gender_accuracy")
    assert same["value"] == 0 and reference._resolved(same) == " (not resolved)"
    assert reference.paired_difference(left, right.iloc[:0], "gender_accuracy") is None
