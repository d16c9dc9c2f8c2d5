"""Evaluating a checkpoint (``evaluate_checkpoint`` and ``agegender evaluate``), end to end on
the tiny generated UTKFace-style dataset of ``conftest.py`` (``tiny_utkface``, ``cv_run``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from agegender.cli import app
from conftest import BROKEN, N_IMAGES


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
    from agegender.artifact import load_model
    from agegender.evaluate.predict_batch import load_faces, predict_images

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
