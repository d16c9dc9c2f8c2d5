"""Evaluation, test-time augmentation, k-fold cross-validation and reports, end to end on a
tiny generated UTKFace-style dataset whose two genders differ visibly (red vs blue tint)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from agegender.cli import app
from agegender.evaluate.tta import average_views, crop_offsets, tta_views

N_IMAGES = 80
BROKEN = "30_0_0_20170101120000999.jpg.chip.jpg"
FIGURES = ("learning_curves", "confusion_gender", "confusion_age_group", "age_error", "reliability")


# --------------------------------------------------------------------------- TTA
def test_oversample_gives_ten_views_of_the_right_crops():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    views = tta_views(x, 6, "oversample")
    assert views.shape == (10, 2, 3, 6, 6)
    assert crop_offsets(8, 6) == [(0, 0), (0, 2), (2, 0), (2, 2), (1, 1)]
    for v, (t, left) in enumerate(crop_offsets(8, 6)):
        assert torch.equal(views[v], x[:, :, t : t + 6, left : left + 6])
        assert torch.equal(views[v + 5], x[:, :, t : t + 6, left : left + 6].flip(-1))
    assert tta_views(x, 6, "none").shape == (1, 2, 3, 6, 6)
    assert torch.equal(tta_views(x, 6, "none")[0], x[:, :, 1:7, 1:7])
    flip = tta_views(x, 6, "flip")
    assert flip.shape == (2, 2, 3, 6, 6) and torch.equal(flip[1], flip[0].flip(-1))


def test_views_of_an_image_smaller_than_the_input_are_resized_up():
    x = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    assert tta_views(x, 6, "oversample").shape == (10, 1, 3, 6, 6)
    with pytest.raises(ValueError, match="unknown tta"):
        tta_views(x, 4, "five")


def test_average_views_is_the_mean_of_probabilities():
    a = {"gender": torch.tensor([[0.2, 0.8]]), "age": torch.tensor([30.0])}
    b = {"gender": torch.tensor([[0.6, 0.4]]), "age": torch.tensor([40.0])}
    mean = average_views([a, b])
    assert torch.allclose(mean["gender"], torch.tensor([[0.4, 0.6]]))
    assert torch.allclose(mean["age"], torch.tensor([35.0]))


# --------------------------------------------------------------------------- tiny data
def _face(rng: np.random.Generator, female: bool) -> np.ndarray:
    """Random low-frequency texture (distinct perceptual hashes) tinted by the class."""
    grid = rng.uniform(40, 215, size=(6, 6))
    tex = np.asarray(Image.fromarray(grid.astype(np.uint8)).resize((48, 48), Image.BILINEAR))
    tex = tex.astype(float)
    img = np.stack([tex * 0.35, tex * 0.35, tex * 0.35], axis=-1)
    img[..., 0 if female else 2] += 150
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def tiny_utkface(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny_utkface")
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        female = i % 2 == 1
        age = [4, 26, 40, 65][(i // 2) % 4]
        race = i % 5
        name = f"{age}_{int(female)}_{race}_2017010{i % 10}1200{i:04d}.jpg.chip.jpg"
        Image.fromarray(_face(rng, female)).save(root / name, quality=95)
    (root / BROKEN).write_text("not a jpeg")  # the audit leaves it out; evaluate reports it
    return root


@pytest.fixture(scope="module")
def tiny_config(tiny_utkface: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = {
        "name": "tiny",
        "data": {"path": str(tiny_utkface), "format": "utkface", "size": 32, "input_size": 32},
        "model": {"name": "small_cnn"},
        "task": {"gender": True, "age": "dex", "gamma": 0.7},
        "optim": {"name": "adamw", "lr": 0.01, "weight_decay": 0.0},
        "schedule": {"name": "none"},
        "train": {
            "epochs": 3,
            "batch_size": 16,
            "progress_bar": False,
            "early_stopping": {"monitor": "val/loss", "patience": None},
        },
        "augment": {"recipe": [{"hflip": 0.5}]},
        "trainer": {"accelerator": "cpu"},
        "logger": {"tensorboard": False, "csv": False},
    }
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def cv_run(tiny_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``agegender cv`` with 2 folds on the tiny dataset (through the CLI)."""
    out = tmp_path_factory.mktemp("cv") / "tiny-cv"
    res = CliRunner().invoke(
        app, ["cv", str(tiny_config), "--folds", "2", "--out", str(out)], catch_exceptions=False
    )
    assert res.exit_code == 0, res.output
    return out


# --------------------------------------------------------------------------- cv
def test_cv_writes_mean_std_and_per_fold_values(cv_run: Path):
    res = json.loads((cv_run / "results.json").read_text())
    assert res["folds"] == 2 and len(res["per_fold"]) == 2
    folds = pd.read_csv(cv_run / "folds.csv")
    assert len(folds) == N_IMAGES and sorted(folds["fold"].unique()) == [0, 1]
    rows = res["dataset"]["row_counts"]  # the broken image is left out
    assert rows["read"] == N_IMAGES + 1 and rows["kept"] == N_IMAGES
    assert rows["reasons"] == {"unreadable": 1}
    for f in res["per_fold"]:
        assert f["n_test"] == int((folds["fold"] == f["fold"]).sum())
        assert f["n_train"] + f["n_val"] == N_IMAGES - f["n_test"]
        assert f["train_seconds"] > 0 and f["train_images_per_second"] > 0
        assert f["epochs_run"] == 3
        fold_dir = cv_run / f"fold_{f['fold']}"
        epochs = pd.read_csv(fold_dir / "metrics.csv")  # one row per epoch, no test row
        assert epochs["epoch"].tolist() == [0, 1, 2] and epochs["train/loss"].notna().all()
        assert not any(c.startswith("test/") for c in epochs.columns)
        summary = json.loads((fold_dir / "summary.json").read_text())
        assert summary["test"]["test/loss"] > 0 and summary["last"]["epoch"] == 2
        split = pd.read_csv(fold_dir / "split.csv")
        test_paths = set(folds.loc[folds["fold"] == f["fold"], "path"])
        assert set(split.loc[split["fold"] == 2, "path"]) == test_paths  # test = CV fold
    for key in ("gender_accuracy", "age_group_exact", "age_group_one_off", "age_mae", "age_cs5"):
        stat = res["metrics"][key]
        values = [f["metrics"][key] for f in res["per_fold"]]
        assert stat["values"] == pytest.approx(values)
        assert stat["mean"] == pytest.approx(np.mean(values))
        assert stat["std"] == pytest.approx(np.std(values, ddof=1))
    assert res["timing"]["train_seconds"]["mean"] > 0
    # the red/blue tint is easy: well above chance (0.5 +- 0.056 over 80) on held-out folds
    assert res["metrics"]["gender_accuracy"]["mean"] > 0.65
    pred = pd.read_csv(cv_run / "predictions.csv")
    assert len(pred) == N_IMAGES and set(pred["path"]) == set(folds["path"])
    assert np.allclose(pred["p_male"] + pred["p_female"], 1.0, atol=1e-5)
    assert (
        pred[[c for c in pred.columns if c.startswith("p_age_")]]
        .sum(axis=1)
        .between(0.999, 1.001)
        .all()
    )
    fair = pd.DataFrame(res["pooled"]["fairness"])
    assert fair.loc[fair["by"] == "race", "n"].sum() == N_IMAGES


def test_cv_resume_skips_finished_folds_and_resumes_an_interrupted_one(
    cv_run: Path, tiny_config: Path
):
    from agegender.evaluate.cv import run_cv

    before = (cv_run / "fold_0" / "checkpoints" / "best.ckpt").stat().st_mtime_ns
    lines: list[str] = []
    res = run_cv(tiny_config, 2, cv_run, printer=lines.append)
    assert sum("skipped" in line for line in lines) == 2
    assert (cv_run / "fold_0" / "checkpoints" / "best.ckpt").stat().st_mtime_ns == before
    assert res["folds"] == 2
    # fold 1 interrupted after its last checkpoint: results and summary gone
    (cv_run / "fold_1" / "results.json").unlink()
    (cv_run / "fold_1" / "summary.json").unlink()
    lines.clear()
    res2 = run_cv(tiny_config, 2, cv_run, printer=lines.append)
    assert any("fold 1/2" in line and "skipped" in line for line in lines)
    assert any("fold 2/2: resuming" in line for line in lines)
    assert (cv_run / "fold_1" / "results.json").is_file()
    assert res2["metrics"]["gender_accuracy"]["values"][0] == pytest.approx(
        res["metrics"]["gender_accuracy"]["values"][0]
    )
    # another config into the same run dir is refused
    from agegender.config import ConfigError

    with pytest.raises(ConfigError, match="different config"):
        run_cv(tiny_config, 2, cv_run, ["optim.lr=0.5"], printer=lines.append)


def test_cv_folds_run_in_two_processes_then_combine(tiny_config: Path, tmp_path: Path):
    """``--fold k`` in two processes at once over one --out: no clash on the shared files,
    each trains only its fold, and the combined results equal a plain aggregate."""
    out = tmp_path / "split-cv"
    cmd = [sys.executable, "-m", "agegender", "cv", str(tiny_config), "--folds", "2"]
    cmd += ["--out", str(out)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    procs = [
        subprocess.Popen(
            [*cmd, "--fold", str(k)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for k in (0, 1)
    ]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    for k, text in enumerate(outputs):  # each process trained its own fold only
        assert f"fold {k + 1}/2: training" in text and f"fold {2 - k}/2: training" not in text
    assert not list(out.rglob("*.tmp"))
    res = json.loads((out / "results.json").read_text())  # written by the last to finish
    assert res["complete"] and [f["fold"] for f in res["per_fold"]] == [0, 1]
    from agegender.evaluate.cv import run_cv

    lines: list[str] = []
    again = run_cv(tiny_config, 2, out, printer=lines.append)  # nothing left to train
    assert sum("skipped" in line for line in lines) == 2
    assert again["metrics"]["gender_accuracy"] == res["metrics"]["gender_accuracy"]
    from agegender.config import ConfigError

    with pytest.raises(ConfigError, match="--fold: no fold 2"):
        run_cv(tiny_config, 2, out, only=[2], printer=lines.append)


def test_cv_one_fold_alone_is_partial(tiny_config: Path, tmp_path: Path):
    from agegender.evaluate.cv import run_cv

    lines: list[str] = []
    res = run_cv(tiny_config, 2, tmp_path / "one", only=[1], printer=lines.append)
    assert res["complete"] is False and [f["fold"] for f in res["per_fold"]] == [1]
    assert not (tmp_path / "one" / "results.json").exists()
    assert not (tmp_path / "one" / "fold_0").exists()
    assert any("1 of 2 folds have results" in line for line in lines)
    res = CliRunner().invoke(app, ["report", str(tmp_path / "one"), "--out", str(tmp_path / "r")])
    assert res.exit_code != 0
    assert "cross-validation not finished (1 of the 1 started folds have results)" in " ".join(
        res.output.split()
    )


# --------------------------------------------------------------------------- evaluate
def test_evaluate_checkpoint_tta_and_haar(cv_run: Path, tiny_utkface: Path, tmp_path: Path):
    from agegender.evaluate import evaluate_checkpoint

    ckpt = cv_run / "fold_0" / "checkpoints" / "best.ckpt"
    out = tmp_path / "results.json"
    res = {t: evaluate_checkpoint(ckpt, tiny_utkface, tta=t, out=out) for t in ("none", "flip")}
    res["oversample"] = evaluate_checkpoint(ckpt, tiny_utkface, tta="oversample")
    for t, views in (("none", 1), ("flip", 2), ("oversample", 10)):
        r = res[t]
        assert r["timing"]["views"] == views
        assert r["n_images"] == N_IMAGES + 1 and r["n_evaluated"] == N_IMAGES
        assert r["n_failed"] == 1 and BROKEN in r["failed"][0]
        assert r["metrics"]["n_gender"] == N_IMAGES and r["metrics"]["n_age"] == N_IMAGES
        assert r["fairness"][0]["n"] == N_IMAGES
    pred = pd.read_csv(tmp_path / "predictions.csv")  # the last written: flip
    broken = pred["path"].str.endswith(BROKEN)
    assert broken.sum() == 1 and pred.loc[broken, "p_female"].isna().all()
    assert pred.loc[broken, "error"].notna().all() and pred.loc[~broken, "error"].isna().all()
    assert len(pred) == N_IMAGES + 1 and {"p_female", "pred_age", "p_age_25-32"} <= set(
        pred.columns
    )
    assert json.loads(out.read_text())["tta"] == "flip"
    # the flip average equals the mean of the two single views
    from agegender.evaluate.predict_batch import load_faces, predict_images
    from agegender.train import load_model

    model, meta = load_model(ckpt)
    table = pd.read_csv(cv_run / "folds.csv").head(8)
    faces = load_faces(table, 32)
    one = predict_images(model, meta, faces, tta="none")
    faces.images = np.ascontiguousarray(np.asarray(faces.images)[:, :, ::-1])  # mirrored
    mirrored = predict_images(model, meta, faces, tta="none")
    both = predict_images(model, meta, load_faces(table, 32), tta="flip")
    assert np.allclose(both.p_gender, (one.p_gender + mirrored.p_gender) / 2, atol=1e-5)
    # Haar finds no face in these textures: every image falls back to the whole image
    haar = evaluate_checkpoint(ckpt, tiny_utkface, detector="haar", limit=12)
    assert haar["n_evaluated"] >= 11 and haar["no_face"] == haar["n_evaluated"]


def test_evaluate_cli_reports_bad_input_in_one_line(cv_run: Path, tmp_path: Path):
    runner = CliRunner()
    res = runner.invoke(app, ["evaluate", str(tmp_path / "none.ckpt"), "--data", str(tmp_path)])
    assert res.exit_code == 2 and "checkpoint not found" in res.output
    ckpt = cv_run / "fold_0" / "checkpoints" / "best.ckpt"
    res = runner.invoke(app, ["evaluate", str(ckpt), "--data", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "missing" in res.output


def test_evaluate_cli_writes_results_and_predictions(cv_run: Path, tiny_utkface: Path):
    ckpt = cv_run / "fold_1" / "checkpoints" / "best.ckpt"
    res = CliRunner().invoke(
        app, ["evaluate", str(ckpt), "--data", str(tiny_utkface), "--limit", "20", "--json"]
    )
    assert res.exit_code == 0, res.output
    out = cv_run / "fold_1" / "eval" / "results.json"
    saved = json.loads(out.read_text())
    assert saved["n_images"] == 20 and saved["n_evaluated"] + saved["n_failed"] == 20
    assert len(pd.read_csv(out.with_name("predictions.csv"))) == 20


# --------------------------------------------------------------------------- report
def test_report_writes_figures_and_comparison(cv_run: Path, tmp_path: Path):
    from agegender.evaluate import make_report

    report = make_report([cv_run], tmp_path / "one")
    text = report.read_text()
    for fig in FIGURES:
        png = tmp_path / "one" / f"tiny-cv_{fig}.png"
        assert png.is_file() and png.stat().st_size > 1000, fig
        assert png.name in text
    assert "Fairness" in text and "| race | white |" in text

    res = CliRunner().invoke(
        app, ["report", str(cv_run), str(cv_run / "fold_0"), "--out", str(tmp_path / "two")]
    )
    assert res.exit_code == 0, res.output
    text = (tmp_path / "two" / "report.md").read_text()
    table = [
        line
        for line in text.splitlines()
        if line.startswith("| tiny-cv") or line.startswith("| fold_0")
    ]
    assert len(table) == 2 and "2-fold CV" in table[0]
    assert (tmp_path / "two" / "fold_0_learning_curves.png").is_file()
    res = CliRunner().invoke(app, ["report", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "not found" in res.output


def test_cv_resume_accepts_a_config_saved_before_new_keys(tiny_config: Path, tmp_path: Path):
    """A run dir written by an older version (no keys added since, e.g. data.align) still
    resumes; a real change is refused with the key and both values named."""
    import yaml

    from agegender.config import ConfigError, load_config
    from agegender.evaluate.cv import _check_same_config

    config = load_config(tiny_config)
    _check_same_config(config, tmp_path, 2)  # writes cv_config.yaml
    saved = yaml.safe_load((tmp_path / "cv_config.yaml").read_text())
    del saved["config"]["data"]["align"], saved["config"]["data"]["extra"]
    (tmp_path / "cv_config.yaml").write_text(yaml.safe_dump(saved))
    _check_same_config(config, tmp_path, 2)  # an older file: fine
    changed = load_config(tiny_config, ["optim.lr=0.5"])
    with pytest.raises(ConfigError, match=r"optim.lr \(0.01 -> 0.5\)"):
        _check_same_config(changed, tmp_path, 2)
