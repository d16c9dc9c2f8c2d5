"""k-fold cross-validation (``agegender cv``, ``agegender.evaluate.cv``) on the tiny
generated UTKFace-style dataset of ``conftest.py``: results, resume, folds in parallel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from agegender.cli import app
from agegender.config import ConfigError
from conftest import N_IMAGES


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


def test_cv_calibrate_scores_each_fold_at_its_validation_threshold(
    cv_run: Path, tiny_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """``cv --calibrate equal-recall`` on finished folds: nothing is retrained; each fold's
    threshold is the one choose_threshold picks on that fold's validation predictions, its
    test decisions are made at it, and results.json gives the thresholds' mean ± std. Too
    few validation faces is a one-line error naming the fold."""
    import shutil

    import agegender.evaluate.calibrate as calibrate
    from agegender.artifact import load_model
    from agegender.data.records import DatasetError
    from agegender.evaluate.calibrate import choose_threshold
    from agegender.evaluate.cv import fold_val_table, run_cv
    from agegender.evaluate.evaluation import evaluate_model

    out = tmp_path / "cv"
    shutil.copytree(cv_run, out)
    before = (out / "fold_0" / "checkpoints" / "best.ckpt").stat().st_mtime_ns
    lines: list[str] = []
    # the tiny folds have about 8 validation faces: fewer than a threshold needs
    with pytest.raises(DatasetError, match=r"fold 0 validation faces: .*at least 20 faces"):
        run_cv(tiny_config, 2, out, calibrate="equal-recall", printer=lines.append)
    with pytest.raises(ConfigError, match="--calibrate: unknown rule 'best'"):
        run_cv(tiny_config, 2, out, calibrate="best", printer=lines.append)

    monkeypatch.setattr(calibrate, "MIN_FACES_PER_GENDER", 2)
    lines.clear()
    res = run_cv(tiny_config, 2, out, calibrate="equal-recall", printer=lines.append)
    assert sum("training already finished, evaluating" in line for line in lines) == 2
    assert (out / "fold_0" / "checkpoints" / "best.ckpt").stat().st_mtime_ns == before
    assert res["calibrate"] == "equal-recall"
    folds = pd.read_csv(out / "folds.csv")
    thresholds = []
    for f in res["per_fold"]:
        fold_dir = out / f"fold_{f['fold']}"
        model, meta = load_model(fold_dir / "checkpoints" / "best.ckpt")
        val = fold_val_table(folds, pd.read_csv(fold_dir / "split.csv"))
        assert len(val) == f["n_val"]
        _, vpred = evaluate_model(model, meta, val)
        want = choose_threshold(vpred["gender"], vpred["p_female"], "equal-recall")
        got = json.loads((fold_dir / "results.json").read_text())["gender_decision"]
        assert got["threshold"] == want["threshold"] and got["faces"] == len(val)
        pred = pd.read_csv(fold_dir / "predictions.csv")
        female = (pred["p_female_raw"] > got["threshold"]).astype(int)
        assert (pred["pred_gender"] == female).all()
        assert ((pred["p_female"] > 0.5).astype(int) == female).all()  # one story
        assert f["metrics"]["gender_accuracy"] == pytest.approx(
            (pred["pred_gender"] == pred["gender"]).mean()
        )
        thresholds.append(got["threshold"])
    assert res["gender_threshold"]["values"] == pytest.approx(thresholds)

    lines.clear()  # the same scoring again: skipped; without calibrate: re-scored at 0.5
    run_cv(tiny_config, 2, out, calibrate="equal-recall", printer=lines.append)
    assert sum("skipped" in line for line in lines) == 2
    plain = run_cv(tiny_config, 2, out, printer=lines.append)
    assert plain["calibrate"] is None and "gender_threshold" not in plain
    assert plain["metrics"]["gender_accuracy"]["values"] == pytest.approx(
        json.loads((cv_run / "results.json").read_text())["metrics"]["gender_accuracy"]["values"]
    )
