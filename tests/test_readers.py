"""Readers on files the tests make, and on the real data beside the repo."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agegender.data.readers import DatasetError, detect_format, parse_utkface_name, read_dataset

ADIENCE_HEADER = (
    "user_id\toriginal_image\tface_id\tage\tgender\tx\ty\tdx\tdy\ttilt_ang\t"
    "fiducial_yaw_angle\tfiducial_score\n"
)


def img(path: Path, color=(120, 80, 60), size=(32, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


@pytest.mark.parametrize(
    "name,expected",
    [
        ("25_1_2_20170116174525125.jpg.chip.jpg", {"age": 25.0, "gender": 1, "race": 2}),
        ("39_1_20170116174525125.jpg.chip.jpg", {"age": 39.0, "gender": 1, "race": None}),
        ("24_0_1_20170116220224657 .jpg.chip.jpg", {"age": 24.0, "gender": 0, "race": 1}),
        ("55_0_0_20170116232725357jpg.chip.jpg", {"age": 55.0, "gender": 0, "race": 0}),
    ],
)
def test_utkface_names_including_real_quirks(name, expected):
    assert parse_utkface_name(name) == expected


def test_utkface_reports_unparseable_names(tmp_path):
    img(tmp_path / "30_1_0_2017.jpg.chip.jpg")
    img(tmp_path / "61_1_20170109142408075.jpg.chip.jpg")
    img(tmp_path / "holiday.jpg")
    img(tmp_path / "30_7_0_2017.jpg.chip.jpg")
    r = read_dataset(tmp_path, "utkface")
    assert len(r.table) == 2
    assert {Path(p.path).name for p in r.problems} == {"holiday.jpg", "30_7_0_2017.jpg.chip.jpg"}
    assert all("holiday.jpg" in p.reason or "gender" in p.reason for p in r.problems)


def test_adience_truncated_and_missing_rows_have_file_and_line(tmp_path):
    img(tmp_path / "faces" / "u1" / "coarse_tilt_aligned_face.1.a.jpg")
    img(tmp_path / "aligned" / "u2" / "landmark_aligned_face.2.b.jpg")
    (tmp_path / "fold_0_data.txt").write_text(
        ADIENCE_HEADER
        + "u1\ta.jpg\t1\t(25, 32)\tf\t0\t0\t1\t1\t0\t0\t1\n"
        + "u2\tb.jpg\t2\t35\tm\t0\t0\t1\t1\t0\t0\t1\n"
    )
    (tmp_path / "fold_1_data.txt").write_text(
        ADIENCE_HEADER
        + "u3\tc.jpg\t3\tNone\tu\t0\t0\t1\t1\t0\t0\t1\n"
        + "u4\td.jpg\t4\t(0, 2)\tm\t0\t0\t1\t1\t0\t0\t1\n"
        + "u4\td.jpg\t4\t(0, 2)"
    )
    r = read_dataset(tmp_path)
    assert r.format == "adience"
    t = r.table.sort_values("subject")
    assert list(t["subject"]) == ["u1/1", "u2/2"]
    assert list(t["gender"]) == [1, 0]
    assert (
        list(t["age_group"]) == [4, 5] and t["age"].iloc[1] == 35.0 and np.isnan(t["age"].iloc[0])
    )
    assert list(t["fold"]) == [0, 0]
    where = {(Path(p.path).name, p.line): p.reason for p in r.problems}
    assert ("fold_1_data.txt", 2) in where and "image not found" in where[("fold_1_data.txt", 2)]
    assert "truncated row" in where[("fold_1_data.txt", 4)]
    assert len(r.problems) == 3


def test_adience_bad_header(tmp_path):
    (tmp_path / "fold_0_data.txt").write_text("hello\tworld\n")
    with pytest.raises(DatasetError, match=r"fold_0_data.txt:1"):
        read_dataset(tmp_path, "adience")


def test_celeba(tmp_path):
    for n in ("000001.jpg", "000002.jpg", "000003.jpg"):
        img(tmp_path / "img_align_celeba" / n)
    (tmp_path / "list_attr_celeba.txt").write_text(
        "4\n5_o_Clock_Shadow Male Smiling\n"
        "000001.jpg  -1  1 -1\n000002.jpg -1 -1  1\n000003.jpg 1 1\n000004.jpg 1 1 1\n"
    )
    (tmp_path / "list_eval_partition.txt").write_text("000001.jpg 0\n000002.jpg 2\n")
    (tmp_path / "identity_CelebA.txt").write_text("000001.jpg 10\n000002.jpg 11\n")
    r = read_dataset(tmp_path)
    assert r.format == "celeba"
    assert list(r.table["gender"]) == [0, 1]
    assert list(r.table["fold"]) == [0, 2]
    assert list(r.table["subject"]) == ["10", "11"]
    lines = sorted(p.line for p in r.problems)
    assert lines == [5, 6]


def test_folders_kaggle_layout(tmp_path):
    img(tmp_path / "Training" / "male" / "a.jpg")
    img(tmp_path / "Training" / "female" / "b.png")
    img(tmp_path / "Validation" / "Female" / "c.jpg")
    img(tmp_path / "stray.jpg")
    r = read_dataset(tmp_path)
    assert r.format == "folders"
    assert sorted(r.table["gender"].tolist()) == [0, 1, 1]
    assert [Path(p.path).name for p in r.problems] == ["stray.jpg"]


def test_csv_manifest(tmp_path):
    img(tmp_path / "im" / "a.jpg")
    img(tmp_path / "im" / "b.jpg")
    img(tmp_path / "im" / "c.jpg")
    (tmp_path / "labels.csv").write_text(
        "path,gender,age,subject\n"
        "im/a.jpg,female,31,s1\n"
        'im/b.jpg,m,"(25, 32)",s2\n'
        "im/c.jpg,robot,3,s3\n"
        "im/missing.jpg,f,3,s4\n"
        "im/a.jpg,f\n"
    )
    r = read_dataset(tmp_path / "labels.csv")
    assert r.format == "csv"
    assert r.table["gender"].tolist() == [1, 0]
    assert r.table["age"].iloc[0] == 31 and r.table["age_group"].tolist() == [4, 4]
    assert r.table["subject"].tolist() == ["s1", "s2"]
    assert r.table["line"].tolist() == [2, 3]
    reasons = {p.line: p.reason for p in r.problems}
    assert set(reasons) == {4, 5, 6}
    assert "gender" in reasons[4] and "not found" in reasons[5]


def test_csv_race_and_fold_codes(tmp_path):
    """Whole-number codes as pandas writes a column with gaps (``2.0``) are read; a code
    that is not whole is a problem naming its line, and the other rows are still read."""
    for name in "abc":
        img(tmp_path / f"{name}.jpg")
    (tmp_path / "labels.csv").write_text(
        "path,gender,race,fold\na.jpg,f,2.0,1\nb.jpg,m,,3.0\nc.jpg,m,2.5,0\n"
    )
    r = read_dataset(tmp_path / "labels.csv")
    assert r.table["race"].tolist()[0] == 2 and r.table["fold"].tolist() == [1, 3]
    assert [(p.line, p.reason) for p in r.problems] == [(4, "race '2.5': expected a whole number")]


def test_csv_without_path_column(tmp_path):
    (tmp_path / "labels.csv").write_text("file_name,sex\nx.jpg,m\n")
    with pytest.raises(DatasetError, match=r"labels.csv:1: no path column"):
        read_dataset(tmp_path / "labels.csv")


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        read_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images found"):
        read_dataset(tmp_path / "empty")
    with pytest.raises(DatasetError, match="no images found"):
        read_dataset(tmp_path / "empty", "utkface")
    with pytest.raises(DatasetError, match="unknown format"):
        read_dataset(tmp_path, "imagenet")


def test_real_utkface(utkface_dir):
    r = read_dataset(utkface_dir)
    assert r.format == "utkface"
    assert len(r.table) == 23707 and r.problems == []
    assert r.table["race"].isna().sum() == 3
    assert r.table["gender"].value_counts().to_dict() == {0: 12390, 1: 11317}
    assert r.table["age"].between(1, 116).all()
    assert detect_format(utkface_dir) == "utkface"


def test_real_adience_sample(adience_dir):
    r = read_dataset(adience_dir)
    assert r.format == "adience" and len(r.table) == 19
    truncated = [p for p in r.problems if "truncated" in p.reason]
    assert sorted(Path(p.path).name for p in truncated) == [
        "fold_2_data.txt",
        "fold_3_data.txt",
        "fold_4_data.txt",
    ]
    total_rows = sum(
        len((adience_dir / f"fold_{k}_data.txt").read_text().splitlines()) - 1 for k in range(5)
    )
    assert len(r.table) + len(r.problems) == total_rows  # every row read or reported


def test_csv_manifest_bad_quotes_and_field_counts_lose_no_other_row(tmp_path) -> None:
    """A stray quote must not swallow the lines after it, and a row with too many fields is
    an error, not silently accepted (every bad line named, every good line kept)."""
    from PIL import Image

    from agegender.data.readers import read_dataset

    for name in ("a", "b", "c", "d"):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{name}.jpg")
    (tmp_path / "m.csv").write_text(
        "path,gender,age\n"
        "a.jpg,m,30\n"
        '"b.jpg,f,20\n'  # line 3: unbalanced quote
        "c.jpg,f,40\n"
        "d.jpg,m,50,extra,fields\n"  # line 5: too many fields
        '"d.jpg",m,"(25, 32)"\n'
    )
    r = read_dataset(tmp_path / "m.csv")
    assert sorted(r.table["line"].tolist()) == [2, 4, 6]
    reasons = {p.line: p.reason for p in r.problems}
    assert reasons == {3: "unbalanced quote", 5: "5 fields, header has 3"}


def test_readers_own_their_format() -> None:
    """Each reader module declares one Reader; FORMATS, auto and default_crop ask them."""
    from agegender.data.readers import FORMATS, READERS, Reader, default_crop
    from agegender.data.readers.celeba import ALIGNED_FACE_CROP

    assert set(READERS) == {"adience", "celeba", "fairface", "aaf", "folders", "utkface", "csv"}
    assert all(isinstance(r, Reader) and r.name == name for name, r in READERS.items())
    assert FORMATS[0] == "auto" and FORMATS[1:] == tuple(READERS)
    assert list(READERS)[-1] == "csv"  # the catch-all is asked last
    assert default_crop("celeba") == ALIGNED_FACE_CROP and default_crop("csv") is None


@pytest.mark.parametrize(
    "files,expected",
    [
        (["25_1_2_2017.jpg.chip.jpg", "m.csv"], "utkface"),  # UTKFace names beat a lone CSV
        (["male/25_1_2_2017.jpg.chip.jpg"], "folders"),  # class folders beat names
        (["fold_0_data.txt", "a.csv"], "adience"),
        (["Anno/list_attr_celeba.txt"], "celeba"),
        (["fairface_label_val.csv", "val/1.jpg"], "fairface"),  # not the generic CSV
        (["m.csv", "x.jpg"], "csv"),
    ],
)
def test_auto_precedence(tmp_path, files, expected) -> None:
    for f in files:
        if f.endswith(".jpg"):
            img(tmp_path / f)
        else:
            (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / f).write_text("x\n")
    assert detect_format(tmp_path) == expected
    label = next((tmp_path / f for f in files if not f.endswith(".jpg")), None)
    if label is not None and expected != "utkface":
        assert detect_format(label) == expected


def test_auto_unrecognised_names_every_layout(tmp_path) -> None:
    from agegender.data.readers import READERS

    img(tmp_path / "holiday.jpg")
    with pytest.raises(DatasetError, match="cannot recognise") as err:
        detect_format(tmp_path)
    assert all(r.layout in str(err.value) for r in READERS.values())
    with pytest.raises(DatasetError, match="unknown format 'imagenet'; choose one of auto, "):
        read_dataset(tmp_path, "imagenet")


def test_predict_output_is_never_read_as_labels(tmp_path) -> None:
    """``predict --out photos/preds.csv`` then ``evaluate --data photos/``: our own
    predictions are refused as labels with a one-line error naming the file, and the
    columns that mark them are the predictor's own."""
    from PIL import Image

    from agegender.data.readers import read_dataset
    from agegender.data.readers.csv_manifest import PREDICTION_COLUMNS
    from agegender.data.records import DatasetError
    from agegender.infer.outputs import BASE_COLUMNS

    assert set(BASE_COLUMNS) >= PREDICTION_COLUMNS
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (40, 40)).save(folder / "a.jpg")
    preds = folder / "preds.csv"
    preds.write_text(
        ",".join(BASE_COLUMNS) + "\na.jpg,0,1,1,30,30,0.9,0.2,0.8,male,30.0,25-32,detected,\n"
    )
    with pytest.raises(DatasetError, match="written by agegender predict") as err:
        read_dataset(folder)
    assert str(preds) in str(err.value) and "\n" not in str(err.value)


def test_row_counts_name_the_label_file(tmp_path) -> None:
    from PIL import Image

    from agegender.data.prepare import read_rows

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (40, 40)).save(folder / "a.jpg")
    (folder / "labels.csv").write_text("path,gender\na.jpg,f\n")
    counts = read_rows(folder, "auto", audit=False).counts
    assert counts.labels == str(folder / "labels.csv")
    assert f"(labels: {folder / 'labels.csv'})" in counts.line()
    assert counts.to_dict()["labels"] == str(folder / "labels.csv")


# --------------------------------------------------------------------------- All-Age-Faces
def make_aaf(root: Path) -> Path:
    """A tiny All-Age-Faces layout: ids 0, 1 and 7380 are women by the id rule, 7381 and
    9000 men; val.txt labels 9000 female (a deliberate disagreement) and has two bad lines;
    one image's name breaks the naming rule."""
    rng = np.random.default_rng(3)
    for folder in ("aglined faces", "original images"):
        for name in ("00000A02.jpg", "00001A25.jpg", "07380A40.jpg", "07381A30.jpg",
                     "09000A61.jpg", "face.jpg"):  # fmt: skip
            pixels = rng.integers(0, 255, (40, 31, 3), dtype=np.uint8)
            (root / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / folder / name)
    sets = root / "image sets"
    sets.mkdir()
    (sets / "train.txt").write_text("00000A02.jpg 0\n07381A30.jpg 1\n")
    (sets / "val.txt").write_text(
        "00001A25.jpg 0\n09000A61.jpg 0\n\nmissing.jpg 1\n07380A40.jpg\n07381A30.jpg 2\n"
    )
    (sets / "train_.txt").write_text("07380A40.jpg 0\n09000A61.jpg 1\n")
    return root


def test_aaf_reader_checks_its_label_sources(tmp_path: Path) -> None:
    from agegender.data.prepare import RowCounts

    root = make_aaf(tmp_path / "all-age-faces")
    assert detect_format(root) == "aaf" and detect_format(root / "aglined faces") == "aaf"
    r = read_dataset(root)
    t = r.table.set_index(r.table["path"].map(lambda p: Path(p).name))
    assert r.format == "aaf" and Path(t["path"].iloc[0]).parent.name == "aglined faces"
    # id rule: 0..7380 female (1 in our coding), above male; exact age from the name
    assert t["gender"].to_dict() == {
        "00000A02.jpg": 1, "00001A25.jpg": 1, "07380A40.jpg": 1, "07381A30.jpg": 0
    }  # fmt: skip
    assert t["age"].tolist() == [2, 25, 40, 30] and t["age_group"].tolist() == [0, 4, 5, 4]
    assert (t["source"] == "aaf").all() and (t["subject"] == "").all()
    assert t["fold"].isna().all()  # the publisher's lists are not person-disjoint folds
    # the face whose list disagrees with the id rule is left out and named, never kept
    (dis,) = r.disagreements
    assert dis.path.endswith("09000A61.jpg")
    assert "id rule says male" in dis.reason and "image sets/val.txt:2 says female" in dis.reason
    reasons = sorted((Path(p.path).name, p.line, p.reason) for p in r.problems)
    assert reasons == [
        ("face.jpg", 0, "cannot parse All-Age-Faces name 'face.jpg' (expected NNNNNAxx.jpg)"),
        ("val.txt", 4, "image not found: missing.jpg"),
        ("val.txt", 5, "expected 2 fields, got 1"),
        ("val.txt", 6, "gender '2' is not 0 or 1"),
    ]
    counts = RowCounts.of(r, root).to_dict()
    assert counts["read"] == 4 + 4 + 1 and counts["kept"] == 4
    assert counts["reasons"] == {"bad_rows": 4, "label_disagreement": 1}
    # the original images instead of the aligned faces: the same labels, the same checks
    orig = read_dataset(root / "original images")
    assert [Path(p).parent.name for p in orig.table["path"]] == ["original images"] * 4
    assert len(orig.disagreements) == 1


def test_aaf_audit_reports_the_disagreements(tmp_path: Path) -> None:
    from agegender.data.prepare import read_rows

    root = make_aaf(tmp_path / "aaf")
    rows = read_rows(root, workers=1)
    s = rows.report.to_dict()
    assert s["label_source_disagreements"] == 1 and s["rows"] == 4
    assert s["label_source_examples"][0]["path"].endswith("09000A61.jpg")
    assert s["images"] == 6  # 4 rows, the unparseable name and the disagreeing face
    assert "label sources disagree" in " ".join(p["reason"] for p in s["problems"])
    assert "1 with disagreeing label sources" in rows.counts.line()


def test_real_aaf(aaf_dir: Path) -> None:
    """The publisher's counts: 13,322 faces, 7,381 women and 5,941 men, ages 2-80; its
    five lists agree with its id rule on every face."""
    r = read_dataset(aaf_dir)
    assert r.format == "aaf" and len(r.table) == 13322
    assert r.problems == [] and r.disagreements == []
    assert r.table["gender"].value_counts().to_dict() == {1: 7381, 0: 5941}
    assert r.table["age"].min() == 2 and r.table["age"].max() == 80
    assert detect_format(aaf_dir) == "aaf"


def test_real_aaf_folds_keep_copies_together(aaf_dir: Path) -> None:
    """All-Age-Faces has no subject ids: its 382 groups of copies (the audit's) each fall
    in one fold; the 149 whose labels disagree are dropped and counted."""
    from agegender.data.prepare import read_folds

    rows, folds = read_folds(aaf_dir, "auto", 5)
    assert rows.counts.to_dict()["reasons"] == {"conflicting": 317}
    t = folds.table
    assert len(t) == 13322 - 317 and sorted(t["fold"].unique().tolist()) == [0, 1, 2, 3, 4]
    assert (t.groupby("split_group")["fold"].nunique() == 1).all()
    assert t["split_group"].nunique() < len(t)  # copies share a group
