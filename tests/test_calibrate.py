"""The gender threshold: one decision rule (``readout.gender_labels``), chosen on
validation faces by ``agegender calibrate``, carried in the model's meta and applied by the
predictor (both runtimes), the evaluation frames and the metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from agegender.artifact import parse_meta
from agegender.cli import app
from agegender.evaluate.calibrate import (
    MIN_FACES_PER_GENDER,
    choose_threshold,
    recalls_at,
    write_with_meta,
)
from agegender.infer import Predictor, save_torch_model
from agegender.infer.onnx import export_onnx, read_onnx_meta
from agegender.models import TaskSpec, create_model
from agegender.readout import gender_labels

pytestmark = pytest.mark.usefixtures("one_torch_thread")

META = {
    "name": "t",
    "arch": "small_cnn",
    "tasks": {"gender": True, "age": "groups"},
    "preprocessing": {"input_size": 32, "resize": 32, "mean": [0.5] * 3, "std": [0.5] * 3},
    "model_options": {},
}


def _model(seed: int = 0, gender: bool = True):
    torch.manual_seed(seed)
    model = create_model("small_cnn", TaskSpec(gender=gender, age="groups"), input_size=32)
    meta = json.loads(json.dumps(META))
    meta["tasks"]["gender"] = gender
    return model.eval(), meta


def test_gender_labels_is_the_rule() -> None:
    p = np.array([0.1, 0.5, 0.50001, 0.9, np.nan])
    assert gender_labels(p).tolist() == [0, 0, 1, 1, -1]
    assert gender_labels(p, 0.05).tolist() == [1, 1, 1, 1, -1]
    assert gender_labels(p, 0.95).tolist() == [0, 0, 0, 0, -1]


def test_meta_threshold_is_read_and_checked() -> None:
    assert parse_meta(META).gender_decision.threshold == 0.5
    spec = parse_meta({**META, "gender_decision": {"threshold": 0.42}})
    assert spec.gender_decision.threshold == 0.42
    assert spec.gender_threshold == 0.5  # on the reported P(female), moved to match
    for bad in (0.0, 1.0, -0.1, "0.4", None, True):
        with pytest.raises(ValueError, match=r"gender_decision\.threshold"):
            parse_meta({**META, "gender_decision": {"threshold": bad}})
    with pytest.raises(ValueError, match=r"gender_decision\.threshold"):
        parse_meta({**META, "gender_decision": 0.4})


def test_equal_recall_threshold_equalises_the_recalls() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 3000)
    p = np.clip(rng.normal(0.3 + 0.3 * y, 0.2), 0, 1)  # biased towards "male"
    d = choose_threshold(y, p)
    at, before = d["at_threshold"], d["at_0.5"]
    assert d["threshold"] < 0.5  # the bias is corrected downwards
    assert abs(at["female_recall"] - at["male_recall"]) < 0.005
    assert abs(before["female_recall"] - before["male_recall"]) > 0.05
    # nothing on a fine grid equalises them better
    grid = [recalls_at(y, p, t) for t in np.linspace(0.01, 0.99, 981)]
    best_gap = min(abs(r["female_recall"] - r["male_recall"]) for r in grid)
    assert abs(at["female_recall"] - at["male_recall"]) <= best_gap + 1e-12
    assert d["faces"] == 3000 and d["female_faces"] + d["male_faces"] == 3000
    # balanced accuracy: no grid threshold beats it
    b = choose_threshold(y, p, "balanced-accuracy")["at_threshold"]
    best_bal = max((r["female_recall"] + r["male_recall"]) / 2 for r in grid)
    assert (b["female_recall"] + b["male_recall"]) / 2 >= best_bal - 1e-12


def test_threshold_ties_go_to_one_half_and_are_short() -> None:
    y = np.array([0] * 30 + [1] * 30)
    p = np.concatenate([np.linspace(0.1, 0.2, 30), np.linspace(0.8, 0.9, 30)])
    assert choose_threshold(y, p)["threshold"] == 0.5  # every t in (0.2, 0.8) is perfect
    d = choose_threshold(y, np.clip(p - 0.3, 0, 1))  # the gap now lies in (0, 0.5)
    assert 0.0 < d["threshold"] < 0.5 and d["at_threshold"]["accuracy"] == 1.0
    assert d["threshold"] == round(d["threshold"], 6)


def test_threshold_needs_both_genders_and_a_known_rule() -> None:
    n = MIN_FACES_PER_GENDER
    y = np.array([1] * (n - 1) + [0] * 100 + [np.nan] * 5)
    p = np.linspace(0.01, 0.99, len(y))
    with pytest.raises(ValueError, match=rf"val\.csv: .* {n} faces .* got {n - 1} female"):
        choose_threshold(y, p, where="val.csv")
    with pytest.raises(ValueError, match="unknown rule 'best'"):
        choose_threshold(y, p, rule="best")


def test_metrics_follow_the_frames_decision() -> None:
    import pandas as pd

    from agegender.evaluate.metrics import confusion, prediction_metrics

    frame = pd.DataFrame(
        {
            "gender": [1, 1, 0, 0],
            "p_female": [0.45, 0.7, 0.3, 0.44],
            "p_male": [0.55, 0.3, 0.7, 0.56],
        }
    )
    assert prediction_metrics(frame)["gender_accuracy"] == 0.75  # at 0.5
    frame["pred_gender"] = pd.array(gender_labels(frame["p_female"], 0.445), dtype="Int8")
    m = prediction_metrics(frame)
    assert m["gender_accuracy"] == 1.0 and m["gender_recall_female"] == 1.0
    assert confusion(frame, "gender").tolist() == [[2, 0], [0, 2]]


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
def test_predictor_decides_at_the_models_threshold(tmp_path: Path, runtime: str) -> None:
    model, meta = _model(1)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(24)]
    p = np.array(
        [
            Predictor.from_module(model, meta, detector="none").predict(im).faces[0].p_female
            for im in images
        ]
    )
    t = float(np.median(p))
    meta["gender_decision"] = {"threshold": t}
    predictor = Predictor.from_module(model, meta, runtime=runtime, detector="none")
    assert predictor.spec.gender_decision.threshold == t
    faces = [predictor.predict(im).faces[0] for im in images]
    got = np.array([f.gender == "female" for f in faces])
    assert got.tolist() == (np.array([f.p_female_raw for f in faces]) > t).tolist()
    assert np.allclose([f.p_female_raw for f in faces], p, atol=1e-5)
    # one story: the reported P(female) is above 0.5 exactly for the women
    assert got.tolist() == (np.array([f.p_female for f in faces]) > 0.5).tolist()
    assert 0 < got.sum() < len(got)  # the threshold really splits them


def _labelled_crops(root: Path, n: int = 60) -> Path:
    """``n`` random 32 px images and a label manifest, half women."""
    from PIL import Image

    rng = np.random.default_rng(3)
    lines = ["path,gender,age,race"]
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / f"{i}.png")
        lines.append(f"{i}.png,{i % 2},{20 + i % 40},{float(i % 5)}")  # race as pandas writes it
    (root / "val.csv").write_text("\n".join(lines) + "\n")
    return root / "val.csv"


@pytest.mark.parametrize("kind", [".pt", ".onnx"])
def test_cli_calibrate_writes_a_model_that_uses_it(tmp_path: Path, kind: str) -> None:
    model, meta = _model(2)
    src = tmp_path / f"m{kind}"
    if kind == ".pt":
        save_torch_model(model, meta, src)
    else:
        export_onnx(model, meta, src)
    data = _labelled_crops(tmp_path)
    out = tmp_path / f"calibrated{kind}"
    args = ["calibrate", str(src), "--data", str(data), "--out", str(out), "--detector", "none"]
    res = CliRunner().invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert d["faces"] == 60 and d["female_faces"] == d["male_faces"] == 30
    at = d["at_threshold"]
    assert abs(at["female_recall"] - at["male_recall"]) <= 1 / 30 + 1e-9
    calibrated = Predictor.load(out, detector="none")
    assert calibrated.spec.gender_decision.threshold == d["threshold"] != 0.5
    assert calibrated.info()["gender_decision"]["threshold"] == d["threshold"]  # /healthz
    assert calibrated.info()["gender_threshold"] == 0.5  # on the reported P(female)
    assert d["probability"]["slope"] > 0 and "age_bands" not in d
    stored = read_onnx_meta(out) if kind == ".onnx" else torch.load(out)["meta"]
    assert stored["gender_decision"]["rule"] == "equal-recall"
    assert stored["gender_decision"]["chosen_on"] == str(data)
    # the weights are untouched: the same probabilities as the source
    original = Predictor.load(src, detector="none")
    image = tmp_path / "7.png"
    a, b = original.predict(image).faces[0], calibrated.predict(image).faces[0]
    assert a.p_female == pytest.approx(b.p_female_raw, abs=1e-6)
    # the evaluation (the predictor's face path) decides at the stored threshold too
    from agegender.data.readers import read_dataset
    from agegender.evaluate.photos import evaluate_photos

    m = evaluate_photos(calibrated, read_dataset(data).table)["metrics"]
    assert m["gender_recall_female"] == pytest.approx(at["female_recall"], abs=1e-9)
    assert m["gender_recall_male"] == pytest.approx(at["male_recall"], abs=1e-9)
    # human-readable output
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0 and "equal-recall threshold" in res.output


def test_cli_calibrate_bad_input(tmp_path: Path) -> None:
    model, meta = _model(4)
    src = save_torch_model(model, meta, tmp_path / "m.pt")
    data = _labelled_crops(tmp_path)
    run = CliRunner().invoke

    def fails(*extra: str) -> str:
        res = run(app, ["calibrate", *extra])
        assert res.exit_code == 2, res.output
        assert len(res.output.strip().splitlines()) == 1, res.output
        return res.output

    base = [str(src), "--data", str(data), "--detector", "none"]
    assert "write a .pt model to a .pt file" in fails(*base, "--out", str(tmp_path / "x.onnx"))
    assert "unknown rule" in fails(*base, "--out", str(tmp_path / "x.pt"), "--rule", "best")
    assert "unknown detector" in fails(
        str(src), "--data", str(data), "--out", str(tmp_path / "x.pt"), "--detector", "dlib"
    )
    men = tmp_path / "men.csv"
    men.write_text("path,gender\n" + "".join(f"{i}.png,0\n" for i in range(0, 60, 2)))
    msg = fails(str(src), "--data", str(men), "--detector", "none", "--out", str(tmp_path / "y.pt"))
    assert "men.csv" in msg and "got 0 female and 30 male" in msg
    assert not (tmp_path / "y.pt").exists()  # nothing half-written
    no_gender = save_torch_model(*_model(5, gender=False), tmp_path / "age.pt")
    msg = fails(str(no_gender), "--data", str(data), "--out", str(tmp_path / "z.pt"))
    assert "does not predict gender" in msg
    assert "not found" in fails("nope.onnx", "--data", str(data), "--out", str(tmp_path / "n.onnx"))


def test_write_with_meta_keeps_a_checkpoint_loadable(cv_run: Path, tmp_path: Path) -> None:
    from agegender.artifact import load_model

    ckpt = next(cv_run.glob("fold_0/checkpoints/best.ckpt"))
    model, meta = load_model(ckpt)
    meta = {k: v for k, v in meta.items() if k not in ("config", "epoch", "global_step")}
    meta["gender_decision"] = {"threshold": 0.4, "rule": "equal-recall"}
    out = write_with_meta(ckpt, tmp_path / "cal.ckpt", meta)
    again, meta2 = load_model(out)
    assert meta2["gender_decision"]["threshold"] == 0.4 and meta2["config"] is not None
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert Predictor.load(out, detector="none").spec.gender_decision.threshold == 0.4
