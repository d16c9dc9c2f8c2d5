"""Knowledge distillation (distill.teacher): teacher outputs, the loss, CV folds, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from agegender.config import ConfigError, load_config
from agegender.train import train
from agegender.train.distill import TEACHER_FILE, distill_loss, soft_kl, with_fold

QUIET = ["trainer.threads=1", "train.progress_bar=false"]


def _student(tmp: Path, tiny_config: Path, teacher: str, **distill: object) -> Path:
    raw = yaml.safe_load(tiny_config.read_text())
    raw["name"] = "student"
    raw["data"].update(size=24, input_size=24)  # not the teacher's 32 px
    raw["distill"] = {"teacher": teacher, **distill}
    path = tmp / "student.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_soft_kl_is_zero_for_the_teachers_own_outputs_and_skips_rows_without_one() -> None:
    t = torch.tensor([[2.0, -1.0], [0.5, 0.5], [float("nan"), float("nan")]])
    assert soft_kl(t.clone(), t, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    far = torch.tensor([[-2.0, 1.0], [0.5, 0.5], [9.0, -9.0]])
    loss = soft_kl(far, t, 2.0)
    # only rows 0-1 count (batchmean over 2): row 0 differs, row 2 has no teacher output
    q = torch.softmax(t[:1] / 2, -1)
    expected = (q * (q.log() - torch.log_softmax(far[:1] / 2, -1))).sum() / 2 * 4
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    none = torch.full((2, 2), float("nan"))
    assert soft_kl(far[:2], none, 1.0).item() == 0.0
    out = {"gender": far[:2], "age": torch.zeros(2, 5)}
    batch = {"teacher_gender": t[:2], "teacher_age": torch.zeros(2, 5)}
    assert distill_loss(out, batch, 0.5, 2.0).item() == pytest.approx(0.5 * loss.item(), rel=1e-5)


def test_student_learns_from_the_fold_teacher_in_cv(
    cv_run: Path, tiny_config: Path, tmp_path: Path
) -> None:
    """Each CV fold's student gets that fold's teacher; its stored targets are the teacher's
    own predictions on exactly the training faces, and it learns the task."""
    from typer.testing import CliRunner

    from agegender.artifact import load_model
    from agegender.cli import app
    from agegender.evaluate.predict_batch import load_faces, predict_images

    teacher = str(cv_run / "fold_{fold}" / "checkpoints" / "best.ckpt")
    cfg = _student(tmp_path, tiny_config, teacher, weight=0.7, temperature=2.0)
    out = tmp_path / "student-cv"
    res = CliRunner().invoke(
        app, ["cv", str(cfg), "--folds", "2", "--out", str(out)], catch_exceptions=False
    )
    assert res.exit_code == 0, res.output
    for k in (0, 1):
        summary = json.loads((out / f"fold_{k}" / "summary.json").read_text())
        info = summary["distill"]
        assert info["teacher"] == teacher.replace("{fold}", str(k))
        assert info["faces"] == summary["dataset"]["splits"]["train"]
        metrics = pd.read_csv(out / f"fold_{k}" / "metrics.csv")
        assert metrics["train/loss_distill"].notna().all()
        assert "val/loss_distill" not in metrics  # validation loss stays the labels' own
    # fold 0's stored targets = the fold-0 teacher's probabilities on its training rows
    # (compared as sorted values: the student's table order is its own)
    with np.load(out / "fold_0" / TEACHER_FILE) as z:
        gender = z["teacher_gender"]
    split = pd.read_csv(out / "fold_0" / "split.csv")
    train_paths = split.loc[split["fold"] == 0, "path"].tolist()
    has = ~np.isnan(gender).any(1)
    assert has.sum() == len(train_paths)
    model, meta = load_model(cv_run / "fold_0" / "checkpoints" / "best.ckpt")
    faces_table = pd.DataFrame({"path": train_paths})
    faces = load_faces(faces_table, 32)
    pred = predict_images(model, meta, faces)
    stored = torch.softmax(torch.from_numpy(gender[has]), -1).numpy()
    assert np.allclose(np.sort(stored[:, 1]), np.sort(pred.p_gender[:, 1]), atol=1e-4)
    results = json.loads((out / "results.json").read_text())
    assert results["metrics"]["gender_accuracy"]["mean"] > 0.8  # red vs blue: the student learns


def test_teacher_outputs_are_reused_on_resume(cv_run: Path, tiny_config: Path, tmp_path: Path):
    teacher = str(cv_run / "fold_0" / "checkpoints" / "best.ckpt")
    cfg = _student(tmp_path, tiny_config, teacher)
    out = tmp_path / "run"
    lines: list[str] = []
    train(cfg, out, overrides=[*QUIET, "train.epochs=1"], printer=lines.append)
    assert any(line.startswith("teacher outputs:") and "px in" in line for line in lines)
    lines.clear()
    train(cfg, out, resume=True, overrides=[*QUIET, "train.epochs=2"], printer=lines.append)
    assert any("reusing" in line for line in lines)


def test_bad_teachers_are_one_line_errors(cv_run: Path, tiny_config: Path, tmp_path: Path):
    best = cv_run / "fold_0" / "checkpoints" / "best.ckpt"
    cfg = _student(tmp_path, tiny_config, str(tmp_path / "nope.ckpt"))
    with pytest.raises(ConfigError, match=r"^distill.teacher: no such file"):
        train(cfg, tmp_path / "a", overrides=QUIET)
    cfg = _student(tmp_path, tiny_config, str(best))
    with pytest.raises(ConfigError, match=r"distill.teacher: .*age is 'dex', the student's"):
        train(cfg, tmp_path / "b", overrides=[*QUIET, "task.age=groups"])
    with pytest.raises(ConfigError, match=r"distill: a regression age"):
        load_config(cfg, ["task.age=regression"])
    with pytest.raises(ConfigError, match=r"distill.weight: .*within \[0, 1\]"):
        load_config(cfg, ["distill.weight=1.5"])
    cfg = _student(tmp_path, tiny_config, str(cv_run / "fold_{fold}" / "best.ckpt"))
    with pytest.raises(ConfigError, match=r"distill.teacher: .*\{fold\} but no fold is set"):
        with_fold(load_config(cfg), None)
    junk = tmp_path / "junk.ckpt"
    junk.write_text("not a checkpoint")
    cfg = _student(tmp_path, tiny_config, str(junk))
    with pytest.raises(ConfigError, match=r"^distill.teacher: "):
        train(cfg, tmp_path / "c", overrides=QUIET)


def test_cv_refuses_a_teacher_whose_folds_differ(
    cv_run: Path, tiny_config: Path, tmp_path: Path
) -> None:
    """A teacher CV with other folds would leak test faces into the student: refused."""
    import shutil

    from agegender.evaluate.cv import run_cv

    fake = tmp_path / "teacher-cv"
    shutil.copytree(cv_run, fake)
    folds = pd.read_csv(fake / "folds.csv")
    folds["fold"] = 1 - folds["fold"]  # every face in the other fold
    folds.to_csv(fake / "folds.csv", index=False)
    cfg = _student(tmp_path, tiny_config, str(fake / "fold_{fold}" / "checkpoints" / "best.ckpt"))
    with pytest.raises(ConfigError, match=r"distill.teacher: .*folds.csv puts \d+ faces in other"):
        run_cv(cfg, folds=2, out_dir=tmp_path / "s", overrides=QUIET)


def test_teacher_framed_its_own_way_reads_the_faces_through_its_face_path(
    utkface_dir: Path, tmp_path: Path
) -> None:
    """A face-backbone teacher (the bundled accurate model: dlib's 150 px chip) teaches a
    student trained on UTKFace's own 32 px crops: the teacher sees every training face cut
    its way (face path, its template), so its gender is right on real faces. The teacher
    is named as a bundled model (``distill.teacher: accurate``)."""
    raw = {
        "name": "student",
        "data": {"path": str(utkface_dir), "size": 32, "input_size": 32, "limit": 80},
        "model": {"name": "small_cnn"},
        "task": {"gender": True, "age": "dex"},
        "distill": {"teacher": "accurate", "weight": 0.5},
        "optim": {"name": "adamw", "lr": 0.003},
        "schedule": {"name": "none"},
        "train": {"epochs": 1, "batch_size": 16, "progress_bar": False},
        "logger": {"tensorboard": False, "csv": False},
    }
    cfg = tmp_path / "student.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    from agegender.train.data import prepare_data

    config = load_config(cfg, overrides=QUIET)
    assert Path(config.distill.teacher).name == "accurate.pt"
    result = train(config, tmp_path / "run", printer=lambda s: None)
    info = result.summary["distill"]
    assert info["teacher_framing"] == "the teacher's own (face path)"
    with np.load(tmp_path / "run" / TEACHER_FILE) as z:
        gender = z["teacher_gender"]
    has = ~np.isnan(gender).any(1)
    assert has.sum() == info["faces"] - info.get("faces_without_teacher", 0)
    assert has.sum() > 40  # the training faces (most of the 80) the detector found
    labels = prepare_data(config).table["gender"].to_numpy()  # the same rows, in order
    right = gender[has].argmax(1) == labels[has]
    assert right.mean() >= 0.8, f"teacher right on {right.mean():.0%} of its faces"
