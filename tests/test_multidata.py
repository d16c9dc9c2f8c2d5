"""Several datasets in one run (data.extra), face boxes for loose crops, FairFace bins."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from agegender.config import ConfigError, load_config
from agegender.data.cache import build_cache
from agegender.data.imageio import load_resized
from agegender.data.readers import default_crop, read_dataset
from agegender.data.readers.celeba import ALIGNED_FACE_CROP
from agegender.evaluate.metrics import age_bin_metrics, fairness_table, prediction_metrics
from test_train import FAST, write_config


def test_crop_cuts_the_box_before_resizing(tmp_path: Path) -> None:
    img = np.zeros((100, 80, 3), np.uint8)
    img[50:, :, 0] = 255  # bottom half red
    path = tmp_path / "a.png"
    Image.fromarray(img).save(path)
    whole = load_resized(path, 10)
    bottom = load_resized(path, 10, crop=(0.0, 0.5, 1.0, 1.0))
    assert whole[:4, :, 0].max() == 0 and bottom[..., 0].min() == 255


def test_cache_key_depends_on_the_crop(tmp_path: Path) -> None:
    from agegender.data.records import make_table

    for i in range(3):
        Image.fromarray(np.full((40, 30, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    table = make_table([{"path": str(tmp_path / f"{i}.png"), "gender": 0} for i in range(3)])
    a = build_cache(table, 16, cache_dir=tmp_path / "c", progress=False)
    b = build_cache(table, 16, cache_dir=tmp_path / "c", progress=False, crop=(0, 0, 0.5, 0.5))
    assert a.key != b.key and b.meta.get("crop", [0, 0, 0.5, 0.5]) == [0, 0, 0.5, 0.5]
    again = build_cache(table, 16, cache_dir=tmp_path / "c", progress=False, crop=(0, 0, 0.5, 0.5))
    assert again.reused and again.key == b.key


def test_celeba_reader_brings_its_face_box(celeba_dir: Path) -> None:
    assert default_crop("celeba") == ALIGNED_FACE_CROP
    assert default_crop("utkface") is None


def test_extra_config_is_validated(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {path: ., extra: [{path: ., weight: 0}]}\n")
    with pytest.raises(ConfigError, match=r"data.extra\[0\].weight: must be > 0"):
        load_config(cfg)
    cfg.write_text("data: {path: ., extra: [{path: ., crop: [0.5, 0, 0.2, 1]}]}\n")
    with pytest.raises(ConfigError, match=r"data.extra\[0\].crop"):
        load_config(cfg)
    cfg.write_text("data: {path: ., extra: [{path: ., format: celebb}]}\n")
    with pytest.raises(ConfigError, match=r"data.extra\[0\].format: .*unknown format 'celebb'"):
        load_config(cfg)


@pytest.mark.realdata
def test_utkface_plus_celeba_trains_with_masked_age(
    utkface_dir: Path, celeba_dir: Path, tmp_path: Path
) -> None:
    """CelebA (gender only) joins UTKFace's training and validation splits; its missing ages
    are masked in the loss, the test split stays UTKFace's, and the summary counts both."""
    from agegender.train import train

    cfg = write_config(tmp_path, utkface_dir)
    extra = f"[{{path: '{celeba_dir}', limit: 200, weight: 0.5, val_fraction: 0.2}}]"
    lines: list[str] = []
    res = train(
        cfg,
        tmp_path / "run",
        overrides=[
            *FAST,
            "task.age=dex",
            "data.split=[0.7, 0.15, 0.15]",
            "train.epochs=1",
            f"data.extra={extra}",
        ],
        printer=lines.append,
    )
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    src = s["dataset"]["sources"]
    assert set(src) == {"utkface", "celeba-10k"}
    cel = src["celeba-10k"]
    assert cel["used"] == 200 and cel["crop"] == list(ALIGNED_FACE_CROP)
    assert cel["val"] > 0 and cel["train"] == round(0.5 * (200 - cel["val"]))
    counts = cel["row_counts"]  # one line per dataset read: UTKFace, then CelebA
    assert counts["kept"] == 200 and counts["reasons"]["limit"] == counts["read"] - 200
    assert [ln.split(":")[0] for ln in lines if ln.startswith("read ")] == [
        f"read {s['dataset']['row_counts']['read']:,} rows from {utkface_dir}",
        f"read {counts['read']:,} rows from {celeba_dir}",
    ]
    utk = src["utkface"]
    assert s["dataset"]["splits"]["train"] == utk["train"] + cel["train"]
    assert s["dataset"]["splits"]["val"] == utk["val"] + cel["val"]
    assert s["dataset"]["splits"]["test"] == utk["test"]
    assert np.isfinite(s["best"]["val/loss"]) and np.isfinite(s["test"]["test/age_mae"])
    assert res.best_checkpoint is not None
    # validation metrics per dataset as well as overall; CelebA has no ages to score
    best = s["best"]
    for name in ("gender_acc", "age_acc", "age_mae"):
        assert 0 <= best[f"val/utkface/{name}"] < 100
    assert 0 <= best["val/celeba-10k/gender_acc"] <= 1
    assert "val/celeba-10k/age_mae" not in best and "val/celeba-10k/age_acc" not in best
    # the overall gender accuracy is the two datasets' weighted by their validation faces
    n_utk, n_cel = utk["val"], cel["val"]
    pooled = best["val/utkface/gender_acc"] * n_utk + best["val/celeba-10k/gender_acc"] * n_cel
    assert abs(best["val/gender_acc"] - pooled / (n_utk + n_cel)) < 1e-4
    # the test split is UTKFace's alone: its per-dataset line is the overall one
    assert s["test"]["test/utkface/gender_acc"] == s["test"]["test/gender_acc"]
    assert "test/celeba-10k/gender_acc" not in s["test"]


def test_framing_template_follows_the_crop() -> None:
    """A box k times the UTKFace box shrinks the landmark template k times about the same
    face; the reader's own box (or none given) keeps UTKFace's template exactly."""
    from agegender.infer.align import UTKFACE_TEMPLATE, framing_template

    assert framing_template(None, None) == UTKFACE_TEMPLATE
    assert framing_template(None, ALIGNED_FACE_CROP) == UTKFACE_TEMPLATE
    assert framing_template(list(ALIGNED_FACE_CROP), ALIGNED_FACE_CROP) == UTKFACE_TEMPLATE
    # UTKFace chips: the middle half of the chip is a 2x zoom on the face
    zoom = framing_template([0.25, 0.25, 0.75, 0.75], None)
    assert np.allclose(zoom, [((u - 0.25) * 2, (v - 0.25) * 2) for u, v in UTKFACE_TEMPLATE])
    # CelebA: a box 1.6x the reader's (same centre) keeps the face centred at 1/1.6 its size
    x0, y0, x1, y1 = ALIGNED_FACE_CROP
    cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, 0.8 * (x1 - x0), 0.8 * (y1 - y0)
    wide = np.asarray(framing_template([cx - hw, cy - hh, cx + hw, cy + hh], ALIGNED_FACE_CROP))
    utk = np.asarray(UTKFACE_TEMPLATE)
    assert np.allclose(wide - 0.5, (utk - 0.5) / 1.6, atol=1e-3)


@pytest.mark.realdata
def test_a_wider_crop_travels_with_the_model(
    utkface_dir: Path, celeba_dir: Path, tmp_path: Path
) -> None:
    """A model trained on CelebA faces cut wider than UTKFace's records the smaller
    template, the predictor aligns photos with it, and mixing that framing with UTKFace's
    tight chips in one run is refused naming the key."""
    from agegender.infer import Predictor
    from agegender.infer.align import framing_template
    from agegender.train import train

    wide = [0.0408, 0.1536, 0.9592, 0.9035]
    cfg = write_config(tmp_path, celeba_dir)
    res = train(
        cfg,
        tmp_path / "run",
        overrides=[*FAST, "task.age=none", "train.epochs=1", f"data.crop={wide}"],
        printer=lambda _: None,
    )
    want = framing_template(wide, ALIGNED_FACE_CROP)
    eyes = want[1][0] - want[0][0]
    assert 0.2 < eyes < 0.3  # UTKFace's eyes are 0.39 of the side apart
    p = Predictor.load(res.best_checkpoint, detector="blazeface")
    assert np.allclose(p.spec.template, want)
    rgb = np.asarray(Image.open(sorted((celeba_dir / "img_align_celeba").glob("*.jpg"))[0]))
    face = p.predict(rgb).faces[0]
    assert face.aligned and 0 <= face.p_female <= 1
    p.close()
    (tmp_path / "m").mkdir()
    mixed = write_config(tmp_path / "m", utkface_dir)
    extra = f"[{{path: '{celeba_dir}', limit: 50, crop: {wide}}}]"
    with pytest.raises(ConfigError, match=r"data\.extra\[0\]\.crop: .*framed unlike"):
        train(mixed, tmp_path / "m" / "run", overrides=[*FAST, f"data.extra={extra}"])


# --------------------------------------------------------------------------- FairFace
def test_fairface_reader(fairface_dir: Path) -> None:
    r = read_dataset(fairface_dir)
    assert r.format == "fairface" and not r.problems
    t = r.table
    assert len(t) == 540 and t["age"].isna().all()
    counts = t.groupby(["age_min", "gender"]).size()
    assert len(counts) == 18 and (counts == 30).all()
    assert t["age_max"].max() == np.inf


def test_fairface_bad_rows_are_reported_with_their_line(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / "a.jpg")
    (tmp_path / "fairface_label_val.csv").write_text(
        "file,age,gender,race\n"
        "images/a.jpg,20-29,Female,East Asian\n"
        "images/a.jpg,20-30,Male,White\n"
        "images/missing.jpg,3-9,Male,White\n"
        "images/a.jpg,more than 70,Robot,White\n"
        "images/a.jpg,0-2\n"
    )
    r = read_dataset(tmp_path)
    assert r.format == "fairface" and len(r.table) == 1
    row = r.table.iloc[0]
    assert row["gender"] == 1 and row["race"] == 2 and (row["age_min"], row["age_max"]) == (20, 29)
    lines = {p.line: p.reason for p in r.problems}
    assert set(lines) == {3, 4, 5, 6}
    assert "age bin" in lines[3] and "missing image" in lines[4] and "gender" in lines[5]


def test_age_bin_metrics() -> None:
    lo = np.array([0, 20, 20, 70, 3.0])
    hi = np.array([2, 29, 29, np.inf, 9.0])
    pred = np.array([2.5, 29.9, 35.0, 71.0, np.nan])
    m = age_bin_metrics(lo, hi, pred)
    assert m["n_age_bin"] == 4
    assert m["age_bin_exact"] == pytest.approx(3 / 4)  # 2.5 in [0, 3), 29.9 in [20, 30)
    assert m["age_bin_error"] == pytest.approx(5 / 4)  # 35 is 5 years past 30
    assert m["age_bin_one_off"] == 1.0  # 35 falls in the next bin start (edges 0, 20, 70)


def test_fairness_table_breaks_down_by_bin() -> None:
    import pandas as pd

    frame = pd.DataFrame(
        {
            "gender": [0, 1, 1, 0],
            "age": [np.nan] * 4,
            "age_group": pd.array([None] * 4, dtype="Int8"),
            "age_min": [0, 0, 70, 70.0],
            "age_max": [2, 2, np.inf, np.inf],
            "p_female": [0.1, 0.9, 0.2, 0.3],
            "pred_age": [1.0, 10.0, 75.0, 60.0],
        }
    )
    m = prediction_metrics(frame)
    assert m["gender_accuracy"] == 0.75 and m["age_bin_exact"] == 0.5
    f = fairness_table(frame)
    bins = f[f["by"] == "age_bin"].set_index("group")
    assert list(bins.index) == ["0-2", "70+"]
    assert bins.loc["70+", "gender_accuracy"] == 0.5 and bins.loc["0-2", "age_bin_exact"] == 0.5
    assert "age_group" not in set(f["by"])


# --------------------------------------------------------------------------- copies across datasets
def _faces_table(n: int) -> pd.DataFrame:
    from agegender.data.records import make_table

    return make_table(
        [dict(path=f"x{k}.jpg", gender=k % 2, age=20 + k, subject="", source="x") for k in range(n)]
    )


def test_extra_copies_follow_the_side_of_their_group() -> None:
    """An extra face copied from a main training face trains, one copied from a validation
    face validates, one copied from a test face is held out; the rest split by their own
    groups, and a later extra follows the sides an earlier one took."""
    from agegender.train.data import HELD_OUT, TRAIN, VAL, _Sides

    main = np.array([0, 1, 2, 3])  # main rows' groups: train, train, val, test
    first = np.r_[0, 2, 3, 10:30]  # copies of main 0 (train), 2 (val), 3 (test), then 20 new
    second = np.array([12, 13, 40, 41])  # copies of two of the first extra's faces
    sides = _Sides(np.r_[main, first, second], [4, 4 + len(first)], {})
    sides.side_of.update({0: TRAIN, 1: TRAIN, 2: VAL, 3: HELD_OUT})
    s1 = sides.place(0, _faces_table(len(first)), 0.3, seed=0)
    assert s1[:3].tolist() == [TRAIN, VAL, HELD_OUT]
    assert set(s1[3:].tolist()) == {TRAIN, VAL} and 3 <= (s1[3:] == VAL).sum() <= 9
    s2 = sides.place(1, _faces_table(len(second)), 0.0, seed=0)
    assert s2[:2].tolist() == s1[5:7].tolist() and s2[2:].tolist() == [TRAIN, TRAIN]
    # without the audit nothing is linked: the extra splits by itself alone
    alone = _Sides(None, [], {}).place(0, _faces_table(len(first)), 0.3, seed=0)
    assert HELD_OUT not in alone.tolist()


@pytest.mark.realdata
def test_audit_and_folds_find_faces_copied_across_datasets(
    utkface_dir: Path, tmp_path: Path
) -> None:
    """UTKFace crops re-framed All-Age-Faces style (hair, shoulders, another size) are found
    as copies of their UTKFace files across the two datasets, and folded together."""
    import shutil

    from typer.testing import CliRunner

    from agegender.cli import app
    from agegender.data.readers import parse_utkface_name

    files = sorted(utkface_dir.iterdir())[::700][:34]
    utk, aaf = tmp_path / "utk", tmp_path / "aaf"
    utk.mkdir()
    for f in files[:24]:
        shutil.copy(f, utk / f.name)
    copied = files[:24:4] + files[24:]  # 6 copies of utk's faces, 10 faces it lacks
    rng = np.random.default_rng(0)
    (aaf / "aglined faces").mkdir(parents=True)
    (aaf / "image sets").mkdir()
    lines = []
    for k, f in enumerate(copied):
        lab = parse_utkface_name(f.name)
        face = Image.open(f).convert("RGB").resize((236, 236), Image.Resampling.BICUBIC)
        canvas = rng.normal(110, 12, (395, 309, 3)).clip(0, 255).astype(np.uint8)
        page = Image.fromarray(canvas)
        page.paste(face, (36, 70))
        face_id = k if lab["gender"] == 1 else 7381 + k
        name = f"{face_id:05d}A{int(lab['age']) % 100:02d}.jpg"
        page.save(aaf / "aglined faces" / name, quality=90)
        lines.append(f"{name} {1 - lab['gender']}")
    (aaf / "image sets" / "train.txt").write_text("\n".join(lines) + "\n")

    res = CliRunner().invoke(app, ["data", "audit", str(utk), str(aaf), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert [d["format"] for d in out["datasets"]] == ["utkface", "aaf"]
    cross = out["cross_dataset"]
    assert cross["dataset_pairs"] == {"utk + aaf": 6}
    assert cross["cross_dataset_groups"] == 6 and cross["cross_dataset_files"] == 12
    assert cross["datasets"]["aaf"]["faces_framed"] == len(copied) == 16

    folds_csv = tmp_path / "folds.csv"
    res = CliRunner().invoke(
        app, ["data", "folds", str(utk), str(aaf), "--k", "3", "--out", str(folds_csv), "--json"]
    )
    assert res.exit_code == 0, res.output
    assert [c["read"] for c in json.loads(res.stdout)["row_counts"]] == [24, 16]
    folds = pd.read_csv(folds_csv)
    fold_of = dict(zip(folds["path"].map(lambda p: Path(p).name), folds["fold"], strict=True))
    for k, f in enumerate(copied[:6]):
        lab = parse_utkface_name(f.name)
        face_id = k if lab["gender"] == 1 else 7381 + k
        assert fold_of[f.name] == fold_of[f"{face_id:05d}A{int(lab['age']) % 100:02d}.jpg"]
