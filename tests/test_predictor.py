"""The predictor: detection, crops, batching, typed results and bad input, on real faces."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from agegender import bundled as bundled_mod
from agegender.cli import app
from agegender.data.records import AGE_GROUP_NAMES
from agegender.infer import (
    AGE_GROUP_MIDPOINTS,
    ImageResult,
    NoModelError,
    Predictor,
    save_torch_model,
)
from agegender.models import TaskSpec, create_model


def make_model(arch: str = "small_cnn", age: str = "groups", seed: int = 0, **kw):
    torch.manual_seed(seed)
    model = create_model(arch, TaskSpec(gender=True, age=age), **kw).eval()
    cfg = model.default_cfg
    meta = {
        "name": f"test-{arch}-{age}",
        "arch": arch,
        "tasks": {"gender": True, "age": age},
        "preprocessing": {k: cfg[k] for k in ("input_size", "resize", "mean", "std")},
    }
    return model, meta


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    model, meta = make_model()
    return Predictor.from_module(model, meta, detector="haar", workers=2)


def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


def test_bad_and_odd_inputs_each_get_a_result(
    predictor: Predictor, photos: list[Path], utkface_dir: Path, tmp_path: Path
) -> None:
    face_img = Image.open(photos[0]).convert("RGB")
    ref = predictor.predict(photos[0])
    assert ref.error is None and ref.faces, ref.error
    # odd colour modes of the same photo
    gray = _save(face_img.convert("L"), tmp_path / "gray.png")
    rgba = face_img.convert("RGBA")
    rgba.putalpha(255)
    rgba_p = _save(rgba, tmp_path / "rgba.png")
    cmyk = _save(face_img.convert("CMYK"), tmp_path / "cmyk.jpg", quality=95)
    g16 = np.asarray(face_img.convert("L")).astype(np.uint16) * 257
    g16_p = _save(Image.fromarray(g16), tmp_path / "gray16.png")
    # EXIF rotation: pixels stored rotated, the Orientation tag says how to turn them back
    rotated = face_img.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view": undoes ROTATE_90 (counter-clockwise)
    exif_p = _save(rotated, tmp_path / "exif.jpg", exif=exif.tobytes(), quality=95)
    # many faces: a 2x2 tile of four pasted-face photos
    tile = Image.new("RGB", (500, 500))
    for i, p in enumerate(photos[:4]):
        tile.paste(Image.open(p), ((i % 2) * 250, (i // 2) * 250))
    tile_p = _save(tile, tmp_path / "tile.jpg", quality=95)
    # failures
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(photos[1].read_bytes()[:300])
    blank = _save(Image.new("RGB", (250, 250), (120, 130, 140)), tmp_path / "blank.png")
    missing = tmp_path / "missing.jpg"
    inputs = [photos[0], gray, text, rgba_p, missing, cmyk, truncated, g16_p, blank]
    inputs += [exif_p, tile_p, photos[1]]
    results = list(predictor.predict_paths(inputs, batch_size=4))
    assert [r.source for r in results] == [str(p) for p in inputs]
    by = {Path(r.source).name: r for r in results}
    for name in ("gray.png", "rgba.png", "cmyk.jpg", "gray16.png", "exif.jpg"):
        assert by[name].error is None and len(by[name].faces) >= 1, (name, by[name].error)
    assert by["notes.jpg"].error.startswith("not an image")
    assert by["missing.jpg"].error == "file not found"
    assert "truncated" in by["truncated.jpg"].error or "corrupt" in by["truncated.jpg"].error
    assert by["blank.png"].error == "no face found" and by["blank.png"].width == 250
    assert len(by["tile.jpg"].faces) >= 3
    assert [f.face_index for f in by["tile.jpg"].faces] == list(range(len(by["tile.jpg"].faces)))
    # the EXIF-rotated copy is seen upright: same box as the original photo (JPEG re-encode)
    (x0, y0, w0, _), (x1, y1, w1, _) = ref.faces[0].box, by["exif.jpg"].faces[0].box
    assert abs(x0 - x1) <= 12 and abs(y0 - y1) <= 12 and abs(w0 - w1) <= 20
    assert by["exif.jpg"].width == 250 and by["exif.jpg"].height == 250
    # the same photo in the same call gets the same prediction as alone
    assert by[photos[0].name].faces[0].p_female == pytest.approx(ref.faces[0].p_female, abs=1e-6)


def test_pixel_limit_is_a_per_image_error(photos: list[Path]) -> None:
    model, meta = make_model()
    p = Predictor.from_module(model, meta, max_pixels=200 * 200)
    small = np.asarray(Image.open(photos[0]).convert("RGB").resize((150, 150)))
    results = p.predict([photos[0], small])
    assert "too large" in results[0].error and "62500 pixels" in results[0].error
    assert results[1].error in (None, "no face found")


def test_decoding_stays_within_the_pixel_budget(photos: list[Path], tmp_path: Path) -> None:
    """Large images are decoded one at a time under the budget; all still get results."""
    model, meta = make_model()
    p = Predictor.from_module(model, meta, workers=4, decode_pixels=1_500_000)
    big = [
        _save(Image.open(photos[i]).resize((1100, 1100)), tmp_path / f"{i}.png") for i in range(6)
    ]
    results = p.predict(big)
    assert len(results) == 6 and all(r.width == 1100 for r in results)
    assert p.budget.peak <= 1_500_000  # never two 1.21 Mpx images at once, with 4 threads
    assert p.budget.held == 0


def test_cancel_stops_between_images(photos: list[Path]) -> None:
    from agegender.infer.predictor import Cancelled

    model, meta = make_model()
    p = Predictor.from_module(model, meta, workers=1, batch_size=1)
    seen = []
    calls = iter(range(1000))

    def cancel() -> bool:
        return next(calls) >= 3

    with pytest.raises(Cancelled):
        for r in p.predict_iter([photos[0]] * 20, cancel=cancel):
            seen.append(r)
    assert len(seen) < 20


def test_input_types_agree(predictor: Predictor, photos: list[Path]) -> None:
    path = photos[2]
    data = path.read_bytes()
    pil = Image.open(io.BytesIO(data))
    arr = np.asarray(Image.open(path).convert("RGB"))
    results = predictor.predict([path, str(path), data, pil, arr, arr / 255.0])
    assert isinstance(results, list) and len(results) == 6
    assert results[2].source == "<bytes 2>" and results[4].source == "<image 4>"
    probs = [r.faces[0].p_female for r in results]
    assert max(probs) - min(probs) < 1e-3, probs
    single = predictor.predict(arr)
    assert isinstance(single, ImageResult)
    gray = predictor.predict(np.asarray(Image.open(path).convert("L")))
    assert gray.error is None and gray.faces
    bad = predictor.predict(np.zeros((10, 10, 5), np.uint8))
    assert "unsupported array shape" in bad.error


def test_batching_across_images_matches_one_by_one(
    predictor: Predictor, photos: list[Path]
) -> None:
    batched = list(predictor.predict_paths(photos, batch_size=7))
    single = list(predictor.predict_paths(photos, batch_size=1))
    assert len(batched) == len(single) == len(photos)
    n = 0
    for a, b in zip(batched, single, strict=True):
        assert a.source == b.source and len(a.faces) == len(b.faces)
        for fa, fb in zip(a.faces, b.faces, strict=True):
            assert fa.box == fb.box
            assert fa.p_female == pytest.approx(fb.p_female, abs=1e-5)
            assert fa.age == pytest.approx(fb.age, abs=1e-3)
            n += 1
    assert n >= 0.75 * len(photos)


@pytest.mark.parametrize("age", ["groups", "dex", "regression"])
def test_age_outputs(age: str, utkface_dir: Path) -> None:
    model, meta = make_model("small_cnn", age=age, seed=3)
    p = Predictor.from_module(model, meta, detector="none")
    files = sorted(utkface_dir.glob("*.jpg"))[:6]
    results = p.predict(files)
    for r in results:
        assert r.error is None and len(r.faces) == 1
        f = r.faces[0]
        assert f.box == (0, 0, 200, 200) and f.detector_score == 1.0
        assert f.p_female + f.p_male == pytest.approx(1.0, abs=1e-5)
        assert f.gender == ("female" if f.p_female > 0.5 else "male")
        if age == "groups":
            probs = np.array([f.age_group_probs[g] for g in AGE_GROUP_NAMES])
            assert probs.sum() == pytest.approx(1.0, abs=1e-5)
            assert f.age == pytest.approx(float(probs @ np.array(AGE_GROUP_MIDPOINTS)), abs=1e-4)
            assert f.age_group == AGE_GROUP_NAMES[int(probs.argmax())]
            assert f.age_probs is None
        elif age == "dex":
            assert len(f.age_probs) == 101 and sum(f.age_probs) == pytest.approx(1.0, abs=1e-4)
            assert f.age == pytest.approx(float(np.dot(f.age_probs, np.arange(101))), abs=1e-3)
            assert sum(f.age_group_probs.values()) == pytest.approx(1.0, abs=1e-4)
            assert f.age_group == max(f.age_group_probs, key=f.age_group_probs.get)
        else:
            assert f.age_group_probs is None and f.age >= 0
            assert f.age_group in AGE_GROUP_NAMES
        d = f.to_dict()
        assert json.loads(json.dumps(d))["box"] == [0, 0, 200, 200]


def test_load_without_bundled_model_is_clear(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(bundled_mod, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(NoModelError, match="no bundled model is installed"):
        Predictor.load()
    with pytest.raises(NoModelError, match="not found"):
        Predictor.load(tmp_path / "nope.ckpt")


def test_torch_file_roundtrip_and_bundled_lookup(
    monkeypatch, tmp_path: Path, utkface_dir: Path
) -> None:
    model, meta = make_model("small_cnn", age="dex", seed=5)
    save_torch_model(model, meta, tmp_path / "default.pt")
    files = sorted(utkface_dir.glob("*.jpg"))[:4]
    direct = Predictor.from_module(model, meta, detector="none").predict(files)
    loaded = Predictor.load(tmp_path / "default.pt", detector="none").predict(files)
    monkeypatch.setattr(bundled_mod, "WEIGHTS_DIR", tmp_path)
    bundled = Predictor.load(detector="none")
    assert bundled.source == "default" and bundled.spec.age == "dex"
    for a, b in zip(direct, loaded, strict=True):
        assert a.faces[0].p_female == pytest.approx(b.faces[0].p_female, abs=1e-6)
        assert a.faces[0].age == pytest.approx(b.faces[0].age, abs=1e-4)


# ----------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, meta = make_model("small_cnn", age="groups", seed=7)
    return save_torch_model(model, meta, tmp_path_factory.mktemp("m") / "small.pt")


def test_cli_predict_csv_json_annotate(
    model_file: Path, photos: list[Path], tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    for p in photos[:3]:
        (folder / "sub" / p.name).write_bytes(p.read_bytes())
    (folder / "broken.jpg").write_text("nope")
    (folder / "readme.md").write_text("not an image name: skipped")
    listing = tmp_path / "list.csv"
    listing.write_text(f"path,label\n{photos[3]},x\ngone.jpg,y\n")
    out = tmp_path / "out.csv"
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "predict",
            str(folder),
            str(listing),
            "--model",
            str(model_file),
            "--out",
            str(out),
            "--annotate",
            str(tmp_path / "ann"),
            "--batch-size",
            "2",
        ],
    )
    assert res.exit_code == 1, res.output  # two inputs could not be read, the rest written
    rows = list(csv.DictReader(out.open()))
    paths = {r["path"] for r in rows}
    assert len(paths) == 6  # 3 in sub/, broken.jpg, the listed photo, the missing one
    errors = {Path(r["path"]).name: r["error"] for r in rows if r["error"]}
    assert errors["broken.jpg"].startswith("not an image")
    assert errors["gone.jpg"] == "file not found"
    faces = [r for r in rows if r["face_index"] != ""]
    assert faces and all(r["gender"] in ("female", "male") for r in faces)
    assert {"x", "y", "w", "h", "detector_score", "p_female", "p_male", "age", "age_group"} <= set(
        rows[0]
    )
    assert "p_age_25-32" in rows[0]
    for r in faces:
        probs = [float(r[f"p_age_{g}"]) for g in AGE_GROUP_NAMES]
        assert sum(probs) == pytest.approx(1.0, abs=1e-4)
    annotated = sorted((tmp_path / "ann").glob("*.jpg"))
    assert len(annotated) == len({r["path"] for r in faces})
    assert Image.open(annotated[0]).size == (250, 250)

    res = runner.invoke(
        app, ["predict", str(photos[4]), str(folder / "broken.jpg"), "--model", str(model_file)]
    )
    assert res.exit_code == 1 and "1 could not be read" in res.output
    both = [str(folder / "broken.jpg"), str(photos[4]), "--model", str(model_file), "--strict"]
    res = runner.invoke(app, ["predict", *both, "--out", str(tmp_path / "strict.csv")])
    assert res.exit_code == 1  # stopped at the broken file
    assert len(list(csv.DictReader((tmp_path / "strict.csv").open()))) == 1
    res = runner.invoke(app, ["predict", str(photos[4]), "--model", str(model_file)])
    assert res.exit_code == 0, res.output
    out_json = tmp_path / "out.json"
    res = runner.invoke(
        app, ["predict", str(photos[5]), "--model", str(model_file), "--out", str(out_json)]
    )
    assert res.exit_code == 0, res.output
    data = json.loads(out_json.read_text())
    assert isinstance(data, list) and data[0]["path"] == str(photos[5])


def test_cli_predict_argument_errors(model_file: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["predict", str(tmp_path / "nothing"), "--model", str(model_file)])
    assert res.exit_code == 2 and "no such file or folder" in res.output
    (tmp_path / "empty").mkdir()
    res = runner.invoke(app, ["predict", str(tmp_path / "empty"), "--model", str(model_file)])
    assert res.exit_code == 2 and "no images found" in res.output
    res = runner.invoke(
        app, ["predict", str(tmp_path), "--model", str(model_file), "--out", "x.txt"]
    )
    assert res.exit_code == 2 and "--out" in res.output
    img = tmp_path / "img" / "a.png"
    img.parent.mkdir()
    Image.new("RGB", (32, 32)).save(img)
    res = runner.invoke(app, ["predict", str(img), "--model", str(tmp_path / "m.onnx")])
    assert res.exit_code == 2 and "model file not found" in res.output
    # one missing argument among real ones: its own row, the others still predicted
    gone = tmp_path / "gone.jpg"
    args = ["predict", str(img), str(gone), "--model", str(model_file), "--detector", "none"]
    res = runner.invoke(app, [*args, "--out", "-"])
    assert res.exit_code == 1, res.output  # one input missing: exit 1, the other predicted
    text = res.output[res.output.index("path,") :]
    rows = {r["path"]: r for r in csv.DictReader(io.StringIO(text))}
    assert rows[str(gone)]["error"] == "file not found" and rows[str(img)]["error"] == ""


def test_cli_bench_predict_json(utkface_dir: Path) -> None:
    res = CliRunner().invoke(
        app,
        ["bench", "predict", "--json", "--model", "small_cnn", "--seconds", "0.1"]
        + ["--photos", "8"],
    )
    assert res.exit_code == 0, res.output
    figures = json.loads(res.output)
    for key in (
        "faces_per_s_batch1_torch",
        "faces_per_s_batch64_torch",
        "faces_per_s_batch64_onnx",
        "photos_per_s_end_to_end",
    ):
        assert figures[key] > 0, key
    assert figures["arch"] == "small_cnn" and 0.5 <= figures["detected_fraction"] <= 1.0
    # the phone-photo (12 MP JPEG) and group-photo cases, one core
    assert figures["ms_per_photo_phone_12mp"] > 0 and figures["ms_per_photo_group"] > 0
    assert figures["with_face_phone_12mp"] == 1.0 and figures["faces_found_phone_12mp"] >= 1
    assert figures["faces_found_group"] >= 10  # of 12


@pytest.mark.parametrize("age", ["groups", "dex", "regression"])
def test_flip_tta_averages_each_face_and_its_mirror(age: str) -> None:
    """``tta="flip"``: every output is the mean of the face's and its mirror's outputs,
    so a face and its mirror image get the same answer; ``none`` is the plain pass."""
    model, meta = make_model("small_cnn", age=age, seed=5)
    plain = Predictor.from_module(model, meta, detector="none")
    flip = Predictor.from_module(model, meta, detector="none", tta="flip")
    rng = np.random.default_rng(0)
    s = plain.spec.input_size
    batch = rng.standard_normal((5, 3, s, s)).astype(np.float32)
    a, b = plain.classify(batch), plain.classify(np.ascontiguousarray(batch[..., ::-1]))
    t = flip.classify(batch)
    assert set(t) == set(a)
    for k in a:
        assert t[k].shape == a[k].shape
        np.testing.assert_allclose(t[k], (a[k] + b[k]) / 2, atol=1e-5)
        assert np.abs(a[k] - b[k]).max() > 1e-4  # the random model is not symmetric
    # through predict: an image of the input size and its mirror get the same answer
    images = [rng.integers(0, 256, (s, s, 3), dtype=np.uint8) for _ in range(4)]
    mirrors = [np.ascontiguousarray(im[:, ::-1]) for im in images]
    for r, rm in zip(flip.predict(images), flip.predict(mirrors), strict=True):
        f, fm = r.faces[0], rm.faces[0]
        assert f.p_female == pytest.approx(fm.p_female, abs=1e-4)
        assert f.age == pytest.approx(fm.age, abs=1e-2)
        assert f.gender == ("female" if f.p_female > 0.5 else "male")
    assert flip.info()["tta"] == "flip" and plain.info()["tta"] == "none"
    with pytest.raises(ValueError, match="unknown tta 'oversample'"):
        Predictor.from_module(model, meta, tta="oversample")


def test_cli_predict_tta(model_file: Path, tmp_path: Path) -> None:
    img = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), np.uint8)).save(img)
    mirror = tmp_path / "b.png"
    Image.open(img).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirror)
    runner = CliRunner()
    base = ["predict", str(img), str(mirror), "--model", str(model_file), "--detector", "none"]
    res = runner.invoke(app, [*base, "--tta", "flip", "--out", "-"])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(res.output[res.output.index("path,") :])))
    assert len(rows) == 2
    assert float(rows[0]["p_female"]) == pytest.approx(float(rows[1]["p_female"]), abs=1e-5)
    res = runner.invoke(app, [*base, "--tta", "ten"])
    assert res.exit_code == 2 and "--tta" in res.output and "ten" in res.output
