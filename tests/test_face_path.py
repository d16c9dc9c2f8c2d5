"""The one face path (detect -> padded retry -> align / crop) used by predict, serve and
evaluate; evaluate on any model predict loads; FairFace-style photo evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from agegender.cli import app
from agegender.infer import Predictor
from agegender.infer.align import UTKFACE_TEMPLATE, align_face, similarity_transform
from agegender.infer.detector import make_detector
from agegender.infer.faces import detect_faces, find_faces

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def utk_face(utkface_dir: Path) -> np.ndarray:
    path = sorted(utkface_dir.glob("*.jpg"))[500]
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def blaze():
    return make_detector("blazeface")


def test_similarity_transform_recovers_rotation_and_scale() -> None:
    t = np.array(UTKFACE_TEMPLATE)
    assert np.allclose(similarity_transform(t * 200, 100), [[0.5, 0, 0], [0, 0.5, 0]], atol=1e-9)
    th = np.deg2rad(30)
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    marks = (t * 100 - 50) @ rot.T * 2 + 300  # the template turned 30 degrees, 2x, moved
    m = similarity_transform(marks, 100)
    back = marks @ m[:, :2].T + m[:, 2]
    assert np.allclose(back, t * 100, atol=1e-6)
    with pytest.raises(ValueError, match="coincide"):
        similarity_transform(np.zeros((4, 2)), 100)


def test_a_tight_crop_is_found_and_aligned_like_the_training_face(blaze, utk_face) -> None:
    """A UTKFace crop (the training framing) comes back nearly unchanged when aligned."""
    faces = find_faces(utk_face, blaze, 64, margin=0.0, shift=0.0)
    assert len(faces) == 1 and faces[0].aligned and faces[0].source in ("detected", "padded")
    target = cv2.resize(utk_face, (64, 64), interpolation=cv2.INTER_AREA).astype(float)
    got = faces[0].crop.astype(float)
    assert got.shape == (64, 64, 3)
    assert np.corrcoef(got.ravel(), target.ravel())[0, 1] > 0.85


def test_a_tilted_face_in_a_photo_comes_out_upright(blaze, utk_face) -> None:
    canvas = np.full((480, 640, 3), 90, np.uint8)
    canvas[140:340, 220:420] = utk_face
    m = cv2.getRotationMatrix2D((320, 240), 25, 1.0)
    tilted = cv2.warpAffine(canvas, m, (640, 480), borderMode=cv2.BORDER_REPLICATE)
    faces = find_faces(tilted, blaze, 64, margin=0.0, shift=0.0)
    assert faces and faces[0].source == "detected"
    upright = cv2.resize(utk_face, (64, 64), interpolation=cv2.INTER_AREA).astype(float)
    aligned = faces[0].crop.astype(float)
    box_crop = find_faces(tilted, blaze, 64, margin=0.03, shift=0.0, align=False)[0].crop
    r_aligned = np.corrcoef(aligned.ravel(), upright.ravel())[0, 1]
    r_box = np.corrcoef(box_crop.astype(float).ravel(), upright.ravel())[0, 1]
    assert r_aligned > 0.8 and r_aligned > r_box + 0.05


def test_padded_retry_maps_boxes_back(blaze) -> None:
    class OnlyPadded:
        name, margin, shift = "fake", 0.0, 0.0

        def detect(self, rgb):
            from agegender.infer.detector import Box

            h, w = rgb.shape[:2]
            if h == 100:  # the original: nothing
                return []
            return [Box(40, 45, 100, 100, 0.9, ((70.0, 80.0), (110, 80), (90, 100), (90, 120)))]

    boxes, how = detect_faces(OnlyPadded(), np.zeros((100, 100, 3), np.uint8))
    assert how == "padded" and len(boxes) == 1
    b = boxes[0]
    assert (b.x, b.y, b.w, b.h) == (15, 20, 85, 80)  # pad 25 removed, clipped to the image
    assert b.landmarks[0] == (45.0, 55.0)
    assert detect_faces(blaze, np.zeros((100, 100, 3), np.uint8)) == ([], "padded")


def test_large_face_is_area_averaged_before_warping(utk_face) -> None:
    big = cv2.resize(utk_face, (1000, 1000), interpolation=cv2.INTER_CUBIC)
    marks = np.array(UTKFACE_TEMPLATE) * 1000
    out = align_face(big, marks, 50)
    ref = cv2.resize(utk_face, (50, 50), interpolation=cv2.INTER_AREA)
    assert np.abs(out.astype(int) - ref.astype(int)).mean() < 6


def test_exif_rotated_and_odd_images_through_the_predictor(tmp_path: Path, utk_face) -> None:
    canvas = np.full((300, 400, 3), 120, np.uint8)
    canvas[50:250, 100:300] = utk_face
    sideways = Image.fromarray(np.rot90(canvas, 1).copy())  # stored turned 90 deg left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    sideways.save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    Image.fromarray(canvas).convert("L").save(tmp_path / "gray.png")
    arr16 = canvas[..., 0].astype(np.uint16) * 257
    Image.fromarray(arr16).save(tmp_path / "deep.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    Image.fromarray(np.full((200, 200, 3), 30, np.uint8)).save(tmp_path / "blank.png")
    p = Predictor.load(threads=1)
    names = ["phone.jpg", "gray.png", "deep.png", "broken.jpg", "blank.png"]
    res = {n: r for n, r in zip(names, p.predict([str(tmp_path / n) for n in names]), strict=True)}
    for n in ("phone.jpg", "gray.png", "deep.png"):
        assert res[n].ok and len(res[n].faces) == 1, (n, res[n].error)
        f = res[n].faces[0]
        assert f.aligned and len(f.landmarks) == 6 and f.face_source == "detected"
    assert (res["phone.jpg"].width, res["phone.jpg"].height) == (400, 300)  # shown upright
    assert res["broken.jpg"].error and "\n" not in res["broken.jpg"].error
    assert res["blank.png"].error == "no face found"


@pytest.mark.realdata
def test_evaluate_takes_a_bundled_model_name(adience_dir: Path, tmp_path: Path) -> None:
    from agegender.data.prepare import RowCounts

    out = tmp_path / "ev" / "results.json"
    r = CliRunner().invoke(
        app, ["evaluate", "default", "--data", str(adience_dir), "--out", str(out)]
    )
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert res["n_images"] == 19 and res["detector"] == "blazeface"
    counts = res["row_counts"]  # kept: the photos with a face (the main metrics)
    assert counts["read"] == 19 + res["label_problems"] and counts["kept"] == res["n_evaluated"]
    assert counts["rejected"] == counts["read"] - counts["kept"]
    assert RowCounts.from_dict(counts).line() in " ".join(r.stderr.split())
    m = res["metrics"]
    assert m["faces_found"] >= 17 / 19
    assert m["gender_accuracy_all"] <= m["gender_accuracy"] + 1e-6
    rows = (tmp_path / "ev" / "predictions.csv").read_text().splitlines()
    assert len(rows) == 20 and "face_found" in rows[0]
    bad = CliRunner().invoke(app, ["evaluate", "nosuchmodel", "--data", str(adience_dir)])
    assert bad.exit_code == 2 and "nosuchmodel" in bad.output


@pytest.mark.realdata
def test_fairface_photos_through_the_default_path(fairface_dir: Path) -> None:
    from agegender.data.readers import read_table
    from agegender.evaluate.photos import evaluate_photos

    _, table, _ = read_table(fairface_dir)
    table = table.iloc[::6].reset_index(drop=True)  # 90 photos, every bin and gender
    r = evaluate_photos(Predictor.load(threads=1), table)
    m = r["metrics"]
    assert m["n_photos"] == 90 and m["faces_found"] >= 0.97
    assert m["gender_accuracy_all"] > 0.6  # far above the 0.5 of a coin
    assert 0 <= m["age_bin_exact_all"] <= m["age_bin_one_off"] <= 1
    bins = r["fairness"][r["fairness"]["by"] == "age_bin"]
    assert len(bins) == 9 and bins["n"].sum() == r["predictions"]["face_found"].sum()


def test_cache_align_keeps_faces_and_reports_photos_without_one(tmp_path: Path, utk_face) -> None:
    from agegender.data.cache import build_cache
    from agegender.data.records import make_table

    canvas = np.full((300, 400, 3), 120, np.uint8)
    canvas[60:260, 120:320] = utk_face
    Image.fromarray(canvas).save(tmp_path / "photo.jpg")
    Image.fromarray(np.full((300, 400, 3), 30, np.uint8)).save(tmp_path / "empty.jpg")
    table = make_table(
        [
            {"path": str(tmp_path / n), "gender": 0, "line": i}
            for i, n in enumerate(["photo.jpg", "empty.jpg"], 1)
        ]
    )
    plain = build_cache(table, 48, cache_dir=tmp_path / "c", progress=False)
    aligned = build_cache(table, 48, cache_dir=tmp_path / "c", progress=False, align="blazeface")
    assert aligned.key != plain.key and aligned.meta["align"] == "blazeface"
    assert list(aligned.ok) == [True, False]
    assert [(p.path, p.line, p.reason) for p in aligned.problems] == [
        (str(tmp_path / "empty.jpg"), 2, "no face found")
    ]
    ref = cv2.resize(utk_face, (48, 48), interpolation=cv2.INTER_AREA).astype(float)
    assert np.corrcoef(aligned.images[0].astype(float).ravel(), ref.ravel())[0, 1] > 0.85


def test_service_returns_the_aligned_crop_on_request(utk_face) -> None:
    import base64
    import io

    from fastapi.testclient import TestClient

    from agegender.serve import create_app

    canvas = np.full((300, 400, 3), 120, np.uint8)
    canvas[50:250, 100:300] = utk_face
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="PNG")
    client = TestClient(create_app(Predictor.load(threads=1)))
    files = {"files": ("p.png", buf.getvalue(), "image/png")}
    plain = client.post("/v1/predict", files=files).json()["results"][0]["faces"][0]
    assert "crop" not in plain and len(plain["landmarks"]) == 6 and plain["aligned"]
    face = client.post("/v1/predict?crops=1", files=files).json()["results"][0]["faces"][0]
    head, data = face["crop"].split(",", 1)
    assert head == "data:image/png;base64"
    crop = np.asarray(Image.open(io.BytesIO(base64.b64decode(data))))
    assert crop.shape[2] == 3 and crop.shape[0] == crop.shape[1] >= 32
