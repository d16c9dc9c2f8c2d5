"""Evaluation metrics against values computed by hand on tiny examples."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from agegender.data.records import AGE_GROUP_NAMES, ages_to_groups
from agegender.evaluate.metrics import (
    age_group_metrics,
    age_metrics,
    confusion,
    expected_calibration_error,
    fairness_table,
    gender_metrics,
    predicted_groups,
    prediction_metrics,
    reliability_bins,
)


def test_gender_metrics_by_hand():
    # true: m m f f ; P(female) .1 .6 .8 .9 -> predicted m f f f
    m = gender_metrics([0, 0, 1, 1], [0.1, 0.6, 0.8, 0.9])
    assert m["n_gender"] == 4
    assert m["gender_accuracy"] == pytest.approx(0.75)
    assert m["gender_balanced_accuracy"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["gender_precision_male"] == pytest.approx(1.0)  # 1 predicted male, right
    assert m["gender_recall_male"] == pytest.approx(0.5)
    assert m["gender_f1_male"] == pytest.approx(2 / 3)
    assert m["gender_precision_female"] == pytest.approx(2 / 3)
    assert m["gender_recall_female"] == pytest.approx(1.0)
    assert m["gender_f1_female"] == pytest.approx(0.8)
    assert m["gender_roc_auc"] == pytest.approx(1.0)  # every female scores above every male
    expected_ll = -np.mean(np.log([0.9, 0.4, 0.8, 0.9]))
    assert m["gender_log_loss"] == pytest.approx(expected_ll, rel=1e-6)
    # top-label confidences .9 (right) .6 (wrong) .8 (right) .9 (right):
    # bins [.6,.667): |0-.6|*1/4 ; [.8,.867): |1-.8|*1/4 ; [.867,.933): |1-.9|*2/4
    assert m["gender_ece"] == pytest.approx(0.15 + 0.05 + 0.05)


def test_gender_metrics_ignore_unknown_and_handle_one_class():
    m = gender_metrics([0, -1, np.nan, 0], [0.2, 0.9, 0.9, 0.7])
    assert m["n_gender"] == 2
    assert m["gender_accuracy"] == pytest.approx(0.5)
    assert math.isnan(m["gender_roc_auc"])  # one class: undefined, not 0
    assert math.isnan(m["gender_recall_female"])
    empty = gender_metrics([], [])
    assert empty["n_gender"] == 0 and math.isnan(empty["gender_accuracy"])


def test_ece_and_reliability_bins_by_hand():
    y = [1, 1, 0, 0, 1]
    p_female = [0.95, 0.95, 0.95, 0.3, 0.3]  # confidences .95 .95 .95 .7 .7
    # bin [.933, 1]: 3 samples conf .95 acc 2/3 ; bin [.667, .733): 2 samples conf .7 acc 1/2
    expected = 3 / 5 * abs(2 / 3 - 0.95) + 2 / 5 * abs(0.5 - 0.7)
    assert expected_calibration_error(y, p_female) == pytest.approx(expected, abs=1e-6)
    bins = reliability_bins(y, p_female)
    assert len(bins) == 15 and sum(b["n"] for b in bins) == 5
    full = [b for b in bins if b["n"]]
    assert [b["n"] for b in full] == [2, 3]
    assert full[0]["accuracy"] == pytest.approx(0.5) and full[0]["confidence"] == pytest.approx(0.7)
    assert full[1]["accuracy"] == pytest.approx(2 / 3)
    assert all(math.isnan(b["accuracy"]) for b in bins if not b["n"])
    weighted = sum(b["n"] / 5 * abs(b["gap"]) for b in full)
    assert weighted == pytest.approx(expected)


def test_age_group_exact_and_one_off():
    true = [0, 1, 2, 7, 3, -1]
    pred = [0, 2, 4, 6, 3, 0]  # exact: 0, 3 ; off by one: 1->2, 7->6 ; 2->4 is off by two
    m = age_group_metrics(true, pred)
    assert m["n_age_group"] == 5
    assert m["age_group_exact"] == pytest.approx(2 / 5)
    assert m["age_group_one_off"] == pytest.approx(4 / 5)
    probs = np.eye(8)[[0, 2, 4, 6, 3]]
    assert age_group_metrics(true[:5], probs) == m


def test_age_mae_and_cs5():
    m = age_metrics([10, 20, 30, np.nan], [16, 24, 30, 50])
    assert m["n_age"] == 3
    assert m["age_mae"] == pytest.approx((6 + 4 + 0) / 3)
    assert m["age_cs5"] == pytest.approx(2 / 3)  # |4| and |0| within 5 years, |6| not
    assert age_metrics([5.0], [10.0])["age_cs5"] == 1.0  # exactly 5 years counts


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "path": ["a", "b", "c", "d"],
            "gender": [0, 1, 1, 0],
            "age": [25.0, 40.0, 3.0, 70.0],
            "age_group": [4, 5, 0, 7],
            "race": [0, 1, 0, pd.NA],
            "p_female": [0.2, 0.7, 0.4, 0.1],
            "pred_age": [30.0, 41.0, 10.0, 58.0],
        }
    )


def test_prediction_metrics_years_model_get_groups_from_predicted_age():
    df = _frame()
    # predicted groups from ages 30, 41, 10, 58 -> 4, 5, 2, 7
    assert predicted_groups(df).tolist() == [4, 5, 2, 7]
    m = prediction_metrics(df)
    assert m["n"] == 4
    assert m["gender_accuracy"] == pytest.approx(3 / 4)
    assert m["age_group_exact"] == pytest.approx(3 / 4)
    assert m["age_group_one_off"] == pytest.approx(3 / 4)  # 0 -> 2 is two groups off
    assert m["age_mae"] == pytest.approx((5 + 1 + 7 + 12) / 4)
    assert m["age_cs5"] == pytest.approx(2 / 4)


def test_groups_model_has_no_mae_and_errors_are_skipped():
    df = _frame().drop(columns="pred_age")
    probs = np.full((4, 8), 0.01)
    probs[[0, 1, 2, 3], [4, 4, 1, 7]] = 0.93
    for j in range(8):
        df[f"p_age_{['0-2', '4-6', '8-13', '15-20', '25-32', '38-43', '48-53', '60+'][j]}"] = probs[
            :, j
        ]
    df["error"] = ["", "", "", "corrupt"]
    m = prediction_metrics(df)
    assert m["n"] == 3 and "age_mae" not in m
    assert m["age_group_exact"] == pytest.approx(1 / 3)
    assert m["age_group_one_off"] == pytest.approx(1.0)
    cm = confusion(df[df["error"] == ""], "age_group")
    assert cm.shape == (8, 8) and cm.sum() == 3 and cm[5, 4] == 1
    # a set without age labels (CelebA): no age matrix, not an error
    assert confusion(df.assign(age_group=pd.NA), "age_group") is None


def test_fairness_table_cells_with_counts_and_empty_cells():
    t = fairness_table(_frame())
    assert list(t.columns[:3]) == ["by", "group", "n"]
    assert len(t) == 1 + 2 + 8 + 5  # all, 2 genders, 8 age groups, 5 races
    by = {(r.by, r.group): r for r in t.itertuples()}
    assert by[("all", "all")].n == 4
    assert by[("gender", "male")].n == 2 and by[("gender", "female")].n == 2
    # females: b (p .7 right), c (p .4 wrong)
    assert by[("gender", "female")].gender_accuracy == pytest.approx(0.5)
    assert by[("race", "white")].n == 2 and by[("race", "black")].n == 1
    empty = by[("age_group", "4-6")]
    assert empty.n == 0 and math.isnan(empty.gender_accuracy) and math.isnan(empty.age_mae)
    assert by[("race", "asian")].n == 0
    assert t.loc[t["by"] == "gender", "n"].sum() == 4


def test_fairness_table_without_race_and_on_empty_frame():
    df = _frame().drop(columns="race")
    assert "race" not in set(fairness_table(df)["by"])
    t = fairness_table(df.iloc[0:0])
    assert (t["n"] == 0).all() and t["gender_accuracy"].isna().all()


def test_one_metric_vocabulary() -> None:
    """Training's logged names, the CV headline and report labels come from one table."""
    from agegender.config import TaskConfig, logged_metrics
    from agegender.metric_names import HEADLINE, LOGGED, METRIC, from_logged

    assert logged_metrics(TaskConfig(gender=True, age="dex")) == [
        f"{stage}/{n}"
        for stage in ("val", "train")
        for n in ("loss", "gender_acc", "age_acc", "age_acc_1off", "age_mae")
    ]
    assert logged_metrics(TaskConfig(gender=True, age="none")) == [
        "val/loss",
        "val/gender_acc",
        "train/loss",
        "train/gender_acc",
    ]
    assert from_logged({"val/gender_acc": 0.9, "val/age_acc": 0.5, "train/age_mae": 7.0}) == {
        "gender_accuracy": 0.9,
        "age_group_exact": 0.5,
    }
    assert set(LOGGED) == {"gender_acc", "age_acc", "age_acc_1off", "age_mae"}
    assert all(k in METRIC for k in HEADLINE)
    assert METRIC["gender_accuracy"].fmt(0.9134) == "91.3"
    assert METRIC["age_mae"].fmt(5.912) == "5.91" and METRIC["age_mae"].fmt(None) == "–"
    # every vocabulary key is what evaluation computes
    rng = np.random.default_rng(0)
    n = 200
    frame = pd.DataFrame(
        {
            "gender": rng.integers(0, 2, n),
            "p_female": rng.random(n),
            "age": rng.integers(1, 90, n).astype(float),
            "pred_age": rng.integers(1, 90, n).astype(float),
        }
    )
    frame["p_male"] = 1 - frame["p_female"]
    frame["age_group"] = ages_to_groups(frame["age"].to_numpy())
    for i, g in enumerate(AGE_GROUP_NAMES):
        frame[f"p_age_{g}"] = (ages_to_groups(frame["pred_age"].to_numpy()) == i).astype(float)
    computed = prediction_metrics(frame)
    missing = [k for k in METRIC if k not in computed]
    assert missing == [], missing
