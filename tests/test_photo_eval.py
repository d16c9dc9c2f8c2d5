"""The per-photo scores of the predictor's face path: two age read-outs, intervals over people."""

import numpy as np
import pandas as pd
import pytest

from agegender.evaluate.intervals import photo_intervals, photo_scores, readout_groups
from agegender.evaluate.metrics import P_AGE
from agegender.evaluate.photos import photo_metrics


def frame_of(rows: list[dict]) -> pd.DataFrame:
    """A :func:`predict_photos`-like frame: labels, face_found, decision, age outputs."""
    out = []
    for i, r in enumerate(rows):
        probs = np.full(8, np.nan) if not r["found"] else np.eye(8)[r["mass"]] * 0.6 + 0.05
        out.append(
            {
                "path": f"/p/{i}.jpg",
                "subject": r.get("subject", ""),
                "gender": r["gender"],
                "age_group": r["group"],
                "face_found": r["found"],
                "pred_gender": r["pred"] if r["found"] else None,
                "p_female": 0.5,
                "pred_age": r["age"] if r["found"] else np.nan,
                **dict(zip(P_AGE, probs, strict=True)),
            }
        )
    f = pd.DataFrame(out)
    for col in ("gender", "age_group", "pred_gender"):
        f[col] = pd.array(f[col], dtype="Int8")
    return f


ROWS = [
    # the mass in 25-32 but an expected age of 36, nearest 38-43: exact one way only
    dict(subject="a/1", gender=1, pred=1, group=4, mass=4, age=36.0, found=True),
    dict(subject="a/1", gender=1, pred=0, group=4, mass=5, age=30.0, found=True),
    dict(subject="b/2", gender=0, pred=0, group=0, mass=0, age=1.0, found=True),
    dict(subject="b/2", gender=0, pred=0, group=0, mass=2, age=12.0, found=True),
    dict(subject="c/3", gender=0, pred=None, group=7, mass=0, age=0.0, found=False),
    dict(subject="", gender=None, pred=1, group=None, mass=1, age=5.0, found=True),
]


def test_two_readouts_and_misses_count():
    f = frame_of(ROWS)
    groups = readout_groups(f)
    assert groups["mass"].tolist() == [4, 5, 0, 2, -1, 1]
    assert groups["nearest"].tolist() == [5, 4, 0, 2, -1, 1]
    s = photo_scores(f)
    assert s["faces_found"].tolist() == [1, 1, 1, 1, 0, 1]
    assert s["gender"].tolist()[:5] == [1, 0, 1, 1, 0] and np.isnan(s["gender"].iloc[5])
    assert s["age_group_exact_mass"].tolist()[:5] == [1, 0, 1, 0, 0]
    assert s["age_group_exact_nearest"].tolist()[:5] == [0, 1, 1, 0, 0]
    assert s["age_group_one_off_mass"].tolist()[:5] == [1, 1, 1, 0, 0]
    m = photo_metrics(f)
    assert m["age_group_exact_mass_all"] == pytest.approx(2 / 5)
    assert m["age_group_exact_nearest_all"] == pytest.approx(2 / 5)
    assert m["age_group_one_off_mass_all"] == pytest.approx(3 / 5)
    assert m["gender_accuracy_all"] == pytest.approx(3 / 5)


def test_intervals_count_photos_and_people():
    f = frame_of(ROWS)
    ci = photo_intervals(f, n_resamples=500)
    o = ci["overall"]
    m = photo_metrics(f)
    for key in ("gender_accuracy_all", "age_group_exact_mass_all", "faces_found"):
        assert o[key]["value"] == pytest.approx(m[key])
        assert o[key]["low"] <= o[key]["value"] <= o[key]["high"]
    # the photo without a subject is its own person; the one without gender is left out
    assert (o["faces_found"]["photos"], o["faces_found"]["people"]) == (6, 4)
    assert (o["gender_accuracy_all"]["photos"], o["gender_accuracy_all"]["people"]) == (5, 3)
    assert o["gender_recall_female_all"]["value"] == pytest.approx(0.5)
    assert o["gender_recall_male_all"]["value"] == pytest.approx(2 / 3)
    assert o["gender_balanced_accuracy_all"]["value"] == pytest.approx((0.5 + 2 / 3) / 2)
    by = ci["by_age_group"]
    assert set(by) == {"0-2", "25-32", "60+"}
    assert by["0-2"]["age_group_exact_mass_all"]["photos"] == 2
    assert by["0-2"]["age_group_exact_mass_all"]["people"] == 1


def test_interval_over_people_is_wide_when_people_disagree():
    """Two people, 40 photos each, one always right and one always wrong: 50 %, and an
    interval over people spanning nearly everything (over photos it would be +- 11 points)."""
    rows = [dict(subject="x", gender=1, pred=1, group=4, mass=4, age=30.0, found=True)] * 40
    rows += [dict(subject="y", gender=1, pred=0, group=4, mass=4, age=30.0, found=True)] * 40
    o = photo_intervals(frame_of(rows), n_resamples=500)["overall"]["gender_accuracy_all"]
    assert o["value"] == pytest.approx(0.5) and o["people"] == 2
    assert o["low"] == pytest.approx(0.0) and o["high"] == pytest.approx(1.0)


def test_ratios_match_the_single_accuracy_and_share_resamples():
    """grouped_ratios_ci: the value and the people of grouped_accuracy_ci for a plain
    accuracy, a recall counting one class's photos only, and their balanced mean."""
    from agegender.evaluate.bootstrap import grouped_accuracy_ci, grouped_ratios_ci

    rng = np.random.default_rng(1)
    people = np.repeat(np.arange(30), rng.integers(1, 20, 30))
    label = (people % 2).astype(int)  # one gender per person
    right = rng.random(len(people)) < np.where(label == 1, 0.9, 0.6)
    hits = np.stack([right, right & (label == 1), right & (label == 0)], 1)
    totals = np.stack([np.ones(len(people)), label == 1, label == 0], 1)
    acc, rec_f, rec_m, bal = grouped_ratios_ci(hits, totals, people, means=[[1, 2]])
    single = grouped_accuracy_ci(right, people)
    assert acc["value"] == pytest.approx(single["value"]) and acc["people"] == 30
    assert acc["photos"] == len(people) and rec_f["people"] == rec_m["people"] == 15
    assert rec_f["value"] == pytest.approx(right[label == 1].mean())
    assert bal["value"] == pytest.approx((rec_f["value"] + rec_m["value"]) / 2)
    for c in (acc, rec_f, rec_m, bal):
        assert c["low"] < c["value"] < c["high"]
    # the same resampling scheme: intervals of the one accuracy agree within a point
    assert acc["low"] == pytest.approx(single["low"], abs=0.02)
    assert acc["high"] == pytest.approx(single["high"], abs=0.02)
