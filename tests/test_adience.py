"""Adience as it is: its fold file's spellings, unlabelled rows, the person as split unit."""

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from agegender.data.datamodule import split_by_fractions
from agegender.data.folds import make_folds
from agegender.data.prepare import RowCounts, read_rows
from agegender.data.readers import read_dataset
from agegender.data.records import AGE_GROUP_NAMES

HEADER = (
    "user_id\toriginal_image\tface_id\tage\tgender\tx\ty\tdx\tdy\ttilt_ang\t"
    "fiducial_yaw_angle\tfiducial_score\n"
)


def fold_file(root: Path, rows: list[tuple[str, str, int, str, str]]) -> None:
    """``fold_0_data.txt`` and a distinct image for each row (user, image, face, age, gender)."""
    rng = np.random.default_rng(0)
    lines = [HEADER]
    for user, image, face, age, gender in rows:
        p = root / "faces" / user / f"coarse_tilt_aligned_face.{face}.{image}"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(p)
        lines.append(f"{user}\t{image}\t{face}\t{age}\t{gender}\t0\t0\t9\t9\t0\t0\t1\n")
    (root / "fold_0_data.txt").write_text("".join(lines))


def test_spellings_and_unlabelled_rows_counted(tmp_path):
    fold_file(
        tmp_path,
        [
            ("a", "1.jpg", 1, "(8, 12)", "f"),
            ("a", "2.jpg", 1, "(8, 12)", "f"),
            ("a", "3.jpg", 2, "(60, 100)", "m"),
            ("b", "4.jpg", 1, "(25, 32)", ""),
            ("b", "5.jpg", 2, "None", "m"),
            ("b", "6.jpg", 3, "(0, 2)", "u"),
        ],
    )
    r = read_dataset(tmp_path)
    t = r.table.sort_values("path").reset_index(drop=True)
    assert r.problems == []
    groups = [None if pd.isna(g) else AGE_GROUP_NAMES[g] for g in t["age_group"]]
    assert groups == ["8-13", "8-13", "60+", "25-32", None, "0-2"]
    assert t["gender"].tolist()[:3] == [1, 1, 0] and t["gender"].isna().tolist()[3:] == [
        True,
        False,
        True,
    ]
    assert t["age"].isna().all()  # groups only, never an invented exact age
    # the person is user_id + face_id: "a/1" and "b/1" are different people
    assert t["subject"].tolist() == ["a/1", "a/1", "a/2", "b/1", "b/2", "b/3"]
    assert r.notes == {
        "age (8, 12) read as 8-13": 2,
        "age (60, 100) read as 60+": 1,
        "without gender": 2,
        "without age": 1,
    }
    counts = RowCounts.of(r, tmp_path)
    assert counts.read == counts.kept == 6
    assert counts.line().endswith(
        "; as read: 2 age (8, 12) read as 8-13, 1 age (60, 100) read as 60+, "
        "2 without gender, 1 without age"
    )
    assert RowCounts.from_dict(counts.to_dict()).notes == counts.notes


def test_person_never_on_both_sides(tmp_path):
    """Many photos per person, people sharing a user_id: folds and splits by person."""
    rows = []
    for user in ("u1", "u2", "u3"):
        for face in range(1, 5):
            for k in range((face * 3) % 7 + 2):
                rows.append((user, f"{face}_{k}.jpg", face, "(25, 32)", "mf"[face % 2]))
    fold_file(tmp_path, rows)
    t = read_dataset(tmp_path).table
    assert t["subject"].nunique() == 12 and len(t) == len(rows)
    res = make_folds(t, 4, seed=0)
    assert not res.official and res.k == 4  # all rows in fold 0: grouped folds instead
    assert (res.table.groupby("subject")["fold"].nunique() == 1).all()
    assert res.table.groupby("fold")["subject"].nunique().sum() == 12
    s = split_by_fractions(t, [4, 3, 3], seed=0)
    sub = t["subject"].to_numpy()
    sides = [set(sub[i]) for i in (s.train, s.val, s.test)]
    assert all(sides) and sum(len(x) for x in sides) == 12
    assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])


def test_real_fold0_part(adience_part_dir):
    """1,586 rows, every one with its image; 93 people; Adience's spellings counted."""
    rows = read_rows(adience_part_dir, workers=1)
    r = rows.result
    assert r.format == "adience" and len(r.table) == 1586 and r.problems == []
    assert r.table["subject"].nunique() == 93
    assert r.notes == {
        "age (8, 12) read as 8-13": 6,
        "age (60, 100) read as 60+": 30,
        "without gender": 1,
        "without age": 1,
    }
    assert r.table["gender"].value_counts().to_dict() == {0: 949, 1: 636}
    groups = r.table["age_group"].value_counts().to_dict()
    assert groups == {4: 950, 1: 258, 0: 238, 5: 71, 7: 30, 6: 22, 3: 10, 2: 6}
    # the audit: one pair of copies of one baby's face labelled as two people (84 and 87)
    s = rows.report.summary
    assert s["label_conflict_groups"] == 1 and s["duplicate_groups"] == 59
    assert rows.counts.kept == 1584 and rows.counts.reasons == {"conflicting": 2}
    res = make_folds(rows.table, 5, seed=0, dup_group=rows.dup_group)
    assert res.k == 5 and (res.table.groupby("subject")["fold"].nunique() == 1).all()


def test_data_audit_and_folds_say_how_the_fold_file_was_read(tmp_path):
    """``agegender data audit`` and ``data folds`` print the spellings and the unlabelled
    rows in their row counts, and write person-exclusive folds from a single fold file."""
    import json

    from typer.testing import CliRunner

    from agegender.cli import app

    rows = [
        (user, f"{face}_{k}.jpg", face, "(8, 12)" if face == 1 else "(25, 32)", "fm"[face % 2])
        for user in ("u1", "u2")
        for face in (1, 2, 3)
        for k in range(3)
    ]
    rows += [("u3", "x.jpg", 1, "(60, 100)", ""), ("u3", "y.jpg", 2, "None", "m")]
    fold_file(tmp_path / "ad", rows)
    res = CliRunner().invoke(app, ["data", "audit", str(tmp_path / "ad"), "--json"])
    assert res.exit_code == 0, res.output
    counts = json.loads(res.stdout)["row_counts"]
    assert counts["read"] == counts["kept"] == 20
    assert counts["notes"] == {
        "age (8, 12) read as 8-13": 6,
        "age (60, 100) read as 60+": 1,
        "without gender": 1,
        "without age": 1,
    }
    out = tmp_path / "folds.csv"
    res = CliRunner().invoke(
        app, ["data", "folds", str(tmp_path / "ad"), "--k", "3", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "as read: 6 age (8, 12) read as 8-13" in res.output
    folds = pd.read_csv(out)
    assert sorted(folds["fold"].unique()) == [0, 1, 2]
    assert (folds.groupby("subject")["fold"].nunique() == 1).all()
    assert folds["subject"].nunique() == 8
