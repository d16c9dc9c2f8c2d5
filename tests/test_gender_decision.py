"""The gender decision by predicted age, and one story per face.

A model's ``gender_decision`` may hold a threshold per band of its own predicted age
(``agegender calibrate --by-age``, with the global threshold where a band has too few
validation faces) and the slope of the reported probability; every output (Predictor
results, predict's CSV / JSON / table, the service, evaluate's predictions) then reports
the P(female) of that decision, so the label is always the more probable gender. A model
without a decision reports the network's output at 0.5, as before.

The models here read flat-coloured 32 px "faces" (:class:`ColourModel`): P(female) from
the red level, the DEX age from the green level, so a test sets each face's predicted age
and probability through its colour, and a biased model is a shift of the red level.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from agegender.artifact import parse_meta
from agegender.cli import app
from agegender.evaluate.calibrate import (
    choose_age_bands,
    choose_threshold,
    fit_probability,
    parse_age_bands,
)
from agegender.infer import Predictor
from agegender.infer.onnx import export_onnx, read_onnx_meta
from agegender.readout import GenderDecision, gender_labels, gender_probability, parse_decision

pytestmark = pytest.mark.usefixtures("one_torch_thread")

META = {
    "name": "colour",
    "arch": "colour",
    "tasks": {"gender": True, "age": "dex"},
    "preprocessing": {"input_size": 32, "resize": 32, "mean": [0.5] * 3, "std": [0.5] * 3},
}
BANDS = {
    "edges": [13, 20],
    "bands": [{"threshold": 0.3}, {"threshold": 0.5}, {"threshold": 0.7}],
}


class ColourModel(torch.nn.Module):
    """P(female) = sigmoid(10 * (red - 0.5)); the age distribution peaks at 100 * green."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        rgb = x.mean(dim=(2, 3)) * 0.5 + 0.5  # undo the (x - 0.5) / 0.5 normalisation
        red, green = rgb[:, 0], rgb[:, 1]
        gender = torch.stack([torch.zeros_like(red), 10 * (red - 0.5)], dim=1)
        years = torch.arange(101, dtype=x.dtype)
        age = -((years[None, :] - 100 * green[:, None]) ** 2) / 4
        return {"gender": gender, "age": age}


def colour_face(p_female: float, age: float) -> np.ndarray:
    """A flat 32 px face the ColourModel reads as about this P(female) and age."""
    red = 0.5 + np.log(p_female / (1 - p_female)) / 10
    rgb = np.array([red, age / 100, 0.5]) * 255
    return np.broadcast_to(np.clip(np.round(rgb), 0, 255).astype(np.uint8), (32, 32, 3)).copy()


def colour_model(tmp_path: Path, decision: dict | None = None) -> Path:
    meta = json.loads(json.dumps(META))
    if decision is not None:
        meta["gender_decision"] = decision
    return export_onnx(ColourModel().eval(), meta, tmp_path / "colour.onnx")


def labelled_faces(root: Path, rng: np.random.Generator) -> Path:
    """Validation faces: children (predicted 6 years) the model calls boys too often (their
    P(female) lower by 1.5 in log-odds), a few teenagers (15: 10 of each gender, too few for
    a band of their own), adults (40) without a bias."""
    lines = ["path,gender,age"]
    i = 0
    for age, n, bias in ((6, 60, -1.5), (15, 10, 0.0), (40, 60, 0.0)):
        for gender in (0, 1):
            for _ in range(n):
                logit = rng.normal(1.5 if gender else -1.5, 1.2) + bias
                p = float(np.clip(1 / (1 + np.exp(-logit)), 0.02, 0.98))
                Image.fromarray(colour_face(p, age)).save(root / f"{i}.png")
                lines.append(f"{i}.png,{gender},{age}")
                i += 1
    (root / "val.csv").write_text("\n".join(lines) + "\n")
    return root / "val.csv"


# ------------------------------------------------------------------ the decision function
def test_decision_by_predicted_age_band_and_fallback() -> None:
    d = parse_decision({"threshold": 0.45, "age_bands": BANDS})
    p = np.array([0.35, 0.35, 0.35, 0.35, 0.6, 0.6, 0.6, np.nan])
    age = np.array([5, 15, 30, np.nan, 12.99, 13.0, 20.0, 30])
    # <13 at 0.3, 13-19 at 0.5, 20+ at 0.7, no predicted age: the global 0.45
    assert gender_labels(p, d, age).tolist() == [1, 0, 0, 0, 1, 1, 0, -1]
    assert gender_labels(p, d).tolist() == [0, 0, 0, 0, 1, 1, 1, -1]  # no ages: global
    assert d.band_names() == ["<13", "13-19", "20+"]
    q = gender_probability(p, d, age)
    labels = gender_labels(p, d, age)
    assert ((q > 0.5) == (labels == 1))[:-1].all() and np.isnan(q[-1])
    # at its band's threshold a face reads 0.5 exactly
    assert gender_probability([0.3, 0.7], d, [5, 40]) == pytest.approx([0.5, 0.5])


def test_threshold_alone_is_a_shift_and_no_decision_is_the_network() -> None:
    p = np.linspace(0.01, 0.99, 99)
    old = parse_decision({"threshold": 0.4265})  # a model calibrated before: same labels
    assert old == GenderDecision(0.4265) and not old.identity
    assert gender_labels(p, old).tolist() == (p > 0.4265).tolist()
    q = gender_probability(p, old)
    assert ((q > 0.5) == (p > 0.4265)).all()
    logit = np.log(q / (1 - q)) - np.log(p / (1 - p))  # the same shift for every face
    assert np.allclose(logit, -np.log(0.4265 / 0.5735))
    none = parse_meta(META).gender_decision
    assert none.identity and gender_probability(p, none) is not None
    assert np.array_equal(gender_probability(p, none), p)
    assert gender_labels(p, none).tolist() == (p > 0.5).tolist()
    assert parse_meta(META).gender_threshold == 0.5  # on the reported P(female), always


def test_decision_meta_is_checked() -> None:
    def bad(decision: dict, match: str) -> None:
        with pytest.raises(ValueError, match=match):
            parse_meta({**META, "gender_decision": decision})

    bad({"threshold": 0.4, "probability": {"slope": 0}}, r"probability\.slope")
    bad({"threshold": 0.4, "probability": {"slope": "1"}}, r"probability\.slope")
    bad({"threshold": 0.4, "age_bands": {"edges": [20, 13], "bands": []}}, r"age_bands\.edges")
    bad({"threshold": 0.4, "age_bands": {"edges": [0, 13], "bands": []}}, r"age_bands\.edges")
    bad({"threshold": 0.4, "age_bands": {"edges": [13], "bands": [{}]}}, r"2 bands")
    bad(
        {"threshold": 0.4, "age_bands": {"edges": [13], "bands": [{"threshold": 0.2}, {}]}},
        r"bands\[1\]\.threshold",
    )
    spec = parse_meta({**META, "gender_decision": {"threshold": 0.4, "age_bands": BANDS}})
    assert spec.gender_decision.band_thresholds == (0.3, 0.5, 0.7)
    assert parse_age_bands("13,20") == (13.0, 20.0) and parse_age_bands("12.5") == (12.5,)
    for text in ("20,13", "0,13", "x", ""):
        with pytest.raises(ValueError):
            parse_age_bands(text)


def test_bands_equalise_recall_within_each_band_and_fall_back() -> None:
    rng = np.random.default_rng(0)
    n = 400
    age = np.repeat([6.0, 15.0, 40.0], [n, 30, n])
    y = rng.integers(0, 2, len(age))
    bias = np.where(age < 13, -1.0, 0.0)  # children: girls called boys
    p = 1 / (1 + np.exp(-(rng.normal(np.where(y == 1, 1.5, -1.5), 1.0) + bias)))
    glob = choose_threshold(y, p)["threshold"]
    b = choose_age_bands(y, p, age, (13, 20), global_threshold=glob, min_faces=50)
    child, teen, adult = b["bands"]
    assert child["fallback"] is None and adult["fallback"] is None
    assert teen["fallback"].startswith("fewer than 50 faces") and teen["threshold"] == glob
    assert b["fallbacks"] == 1 and b["edges"] == [13.0, 20.0]
    assert child["threshold"] < glob < adult["threshold"] + 0.1
    for band in (child, adult):
        at, before = band["at_threshold"], band["at_global"]
        gap = abs(at["female_recall"] - at["male_recall"])
        assert gap <= abs(before["female_recall"] - before["male_recall"]) + 1e-9
        assert gap < 0.03
    with pytest.raises(ValueError, match="at least 20"):
        choose_age_bands(y, p, age, (13,), global_threshold=glob, min_faces=5)


def test_platt_slope_keeps_the_labels_and_improves_log_loss() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 3000)
    x = rng.normal(np.where(y == 1, 1.0, -1.0), 1.0)  # the true log-odds are 2x
    p = 1 / (1 + np.exp(-3 * x))  # overconfident: 1.5 times the log-odds it should have
    d = parse_decision({"threshold": 0.5})
    fit = fit_probability(y, p, d)
    assert fit["slope"] == pytest.approx(2 / 3, rel=0.1)
    assert fit["reported"]["log_loss"] < fit["network"]["log_loss"]
    assert fit["reported"]["ece"] < fit["network"]["ece"]
    shift = fit_probability(y, p, d, fit="shift")
    assert shift["slope"] == 1.0 and shift["reported"] == shift["shift"]
    fitted = GenderDecision(0.5, fit["slope"])
    assert np.array_equal(gender_labels(p, fitted), gender_labels(p, d))


# ------------------------------------------------------------ calibrate --by-age, end to end
def _consistent(p_female: float, p_male: float, gender: str) -> bool:
    """One story: the label's probability is at least 0.5 and the two sum to 1."""
    mine = p_female if gender == "female" else p_male
    return mine >= 0.5 and abs(p_female + p_male - 1) < 1e-5


def test_cli_calibrate_by_age_and_every_output_tells_one_story(tmp_path: Path) -> None:
    src = colour_model(tmp_path)
    data = labelled_faces(tmp_path, np.random.default_rng(2))
    out = tmp_path / "calibrated.onnx"
    args = ["calibrate", str(src), "--data", str(data), "--out", str(out), "--detector", "none"]
    res = CliRunner().invoke(app, [*args, "--by-age", "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    child, teen, adult = d["age_bands"]["bands"]
    assert (child["predicted_age"], teen["predicted_age"], adult["predicted_age"]) == (
        "<13",
        "13-19",
        "20+",
    )
    assert (child["faces"], teen["faces"], adult["faces"]) == (120, 20, 120)
    assert teen["fallback"] and teen["threshold"] == d["threshold"]  # 10 + 10 < 50
    assert child["fallback"] is None and child["threshold"] < adult["threshold"]
    for band in (child, adult):
        at = band["at_threshold"]
        assert abs(at["female_recall"] - at["male_recall"]) <= 2 / 60 + 1e-9
    assert d["probability"]["method"] == "platt" and d["probability"]["slope"] > 0
    stored = read_onnx_meta(out)["gender_decision"]
    assert stored["age_bands"]["bands"][1]["fallback"] == teen["fallback"]
    assert stored["probability"]["slope"] == d["probability"]["slope"]

    # the human-readable report names each band and the fallback
    res = CliRunner().invoke(app, [*args, "--age-bands", "13,20"])
    assert res.exit_code == 0, res.output
    assert "predicted age    <13" in res.output and "the global threshold" in res.output
    assert "log loss" in res.output and "ECE" in res.output

    # the predictor decides each face at its band's threshold and reports that decision
    calibrated = Predictor.load(out, detector="none")
    decision = calibrated.spec.gender_decision
    assert decision.band_thresholds == (child["threshold"], teen["threshold"], adult["threshold"])
    paths = sorted(tmp_path.glob("*.png"), key=lambda q: int(q.stem))
    results = list(calibrated.predict_paths(paths))
    for r in results:
        (f,) = r.faces
        band = 0 if f.age < 13 else 1 if f.age < 20 else 2
        female = f.p_female_raw > decision.band_thresholds[band]
        assert (f.gender == "female") == female
        assert _consistent(f.p_female, f.p_male, f.gender)
    assert calibrated.info()["gender_threshold"] == 0.5
    assert calibrated.info()["gender_decision"]["age_bands"][1]["threshold"] == teen["threshold"]

    # predict's CSV and JSON, and the terminal table
    for kind in ("csv", "json"):
        target = tmp_path / f"faces.{kind}"
        res = CliRunner().invoke(
            app,
            [
                "predict",
                *map(str, paths),
                "--model",
                str(out),
                "--detector",
                "none",
                "--out",
                str(target),
            ],  # fmt: skip
        )
        assert res.exit_code == 0, res.output
        rows = (
            list(csv.DictReader(io.StringIO(target.read_text())))
            if kind == "csv"
            else json.loads(target.read_text())
        )
        assert len(rows) == len(paths)
        for row in rows:
            assert _consistent(float(row["p_female"]), float(row["p_male"]), row["gender"])
    from agegender.cli.predict import _face_table_rows

    for r in results:
        (row,) = _face_table_rows(r)
        label, pct = row[2].split(" (")
        assert int(pct.rstrip(" %)")) >= 50 and label == r.faces[0].gender

    # evaluate's per-photo predictions: the decision and its probabilities
    from agegender.data.readers import read_dataset
    from agegender.evaluate.photos import evaluate_photos

    frame = evaluate_photos(calibrated, read_dataset(data).table)["predictions"]
    mine = np.where(frame["pred_gender"] == 1, frame["p_female"], frame["p_male"])
    assert (mine >= 0.5).all() and "p_female_raw" in frame.columns


def test_service_reports_the_decisions_probability(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from agegender.serve import ServeSettings, create_app

    decision = {"threshold": 0.45, "age_bands": BANDS, "probability": {"slope": 0.8}}
    out = colour_model(tmp_path, decision)
    predictor = Predictor.load(out, detector="none", workers=1)
    settings = ServeSettings(max_file_bytes=300_000, max_files=8, timeout_s=20)
    faces = [(0.35, 6), (0.35, 30), (0.6, 15), (0.6, 40), (0.45, 16), (0.9, 8)]
    files = []
    for i, (p, age) in enumerate(faces):
        buf = io.BytesIO()
        Image.fromarray(colour_face(p, age)).save(buf, format="PNG")
        files.append(("files", (f"{i}.png", buf.getvalue(), "image/png")))
    with TestClient(create_app(predictor, settings)) as client:
        res = client.post("/v1/predict", files=files)
        assert res.status_code == 200, res.text
        got = [r["faces"][0] for r in res.json()["results"]]
        health = client.get("/healthz").json()
    genders = [g["gender"] for g in got]
    # 0.35 is female under 13 (0.3) only; 0.6 female at 13-19 (0.5), male at 20+ (0.7)
    assert genders[:4] == ["female", "male", "female", "male"]
    for face in got:
        assert _consistent(face["p_female"], face["p_male"], face["gender"])
        assert "p_female_raw" in face
    assert json.dumps(health).count("gender_decision") >= 1


def test_a_model_without_the_meta_is_unchanged(tmp_path: Path) -> None:
    model = ColourModel().eval()
    predictor = Predictor.from_module(model, META, detector="none")
    images = [colour_face(p, a) for p, a in ((0.2, 5), (0.49, 15), (0.51, 40), (0.8, 70))]
    batch = predictor.preprocess(images)
    probs = predictor.classify(batch)["gender_probs"]
    faces = [predictor.predict(im).faces[0] for im in images]
    for f, (pm, pf) in zip(faces, probs, strict=True):
        assert (f.p_male, f.p_female) == (float(pm), float(pf))  # exactly the network's
        assert f.p_female_raw == f.p_female
        assert f.gender == ("female" if pf > 0.5 else "male")
    assert predictor.info()["gender_decision"] == {"threshold": 0.5, "slope": 1.0}


def test_predictions_frame_applies_the_decision() -> None:
    from agegender.evaluate.predict_batch import FaceImages, Predictions, predictions_frame

    table = pd.DataFrame({"path": list("abcd"), "gender": [1, 0, 1, 0]})
    ok = np.ones(4, bool)
    faces = FaceImages(None, np.arange(4), ok, np.array([""] * 4, dtype=object))
    p = np.array([0.35, 0.35, 0.6, 0.6])
    pred = Predictions(np.stack([1 - p, p], 1), None, np.array([6.0, 30.0, 15.0, 40.0]), 0.0, 1, {})
    decision = parse_decision({"threshold": 0.45, "age_bands": BANDS})
    frame = predictions_frame(table, faces, pred, decision)
    assert frame["pred_gender"].tolist() == [1, 0, 1, 0]
    mine = np.where(frame["pred_gender"] == 1, frame["p_female"], frame["p_male"])
    assert (mine >= 0.5).all()
    assert frame["p_female_raw"].tolist() == pytest.approx(p.tolist())
    plain = predictions_frame(table, faces, pred)  # no decision: the network's own output
    assert plain["p_female"].tolist() == pytest.approx(p.tolist())
    assert plain["pred_gender"].tolist() == [0, 0, 1, 1]


def test_cli_calibrate_by_age_bad_input(tmp_path: Path) -> None:
    data = labelled_faces(tmp_path, np.random.default_rng(3))
    src = colour_model(tmp_path)

    def fails(*extra: str, model: Path = src) -> str:
        out = tmp_path / "out.onnx"
        args = ["calibrate", str(model), "--data", str(data), "--out", str(out)]
        res = CliRunner().invoke(app, [*args, "--detector", "none", *extra])
        assert res.exit_code == 2, res.output
        assert len(res.output.strip().splitlines()) == 1, res.output
        assert not out.exists()  # nothing written
        return res.output

    assert "--age-bands" in fails("--age-bands", "20,13")
    assert "--age-bands" in fails("--age-bands", "teens")
    assert "--probability" in fails("--probability", "isotonic")
    out = tmp_path / "out.onnx"
    res = CliRunner().invoke(  # a usage error: the usage, then the reason
        app,
        [
            "calibrate",
            str(src),
            "--data",
            str(data),
            "--out",
            str(out),
            "--by-age",
            "--min-band-faces",
            "5",
        ],  # fmt: skip
    )
    assert res.exit_code == 2 and "--min-band-faces" in res.output and not out.exists()
    ageless = tmp_path / "ageless"
    ageless.mkdir()
    meta = {**META, "tasks": {"gender": True, "age": "none"}}
    no_age = export_onnx(ColourModel().eval(), meta, ageless / "g.onnx")
    assert "does not predict age" in fails("--by-age", model=no_age)
