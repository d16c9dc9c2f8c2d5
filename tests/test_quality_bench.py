"""benchmarks/quality.py: rows of a partial run merge into the existing quality.json."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import load_script


def _quality():
    return load_script("benchmarks/quality.py")


def test_partial_run_keeps_other_models_rows_in_default_order(tmp_path: Path) -> None:
    q = _quality()
    old = [
        {"name": "resnet18", "run_dir": "/r/resnet18", "gender_accuracy_mean": 0.80},
        {"name": "small_cnn", "run_dir": "/r/small_cnn", "gender_accuracy_mean": 0.88},
        {"name": "default", "run_dir": "/r/default", "gender_accuracy_mean": 0.89},
    ]
    path = tmp_path / "quality.json"
    path.write_text(json.dumps(old))
    new = [{"name": "resnet18", "run_dir": "/r/resnet18", "gender_accuracy_mean": 0.865}]
    rows, kept = q.merge_rows(path, new)
    assert [r["name"] for r in rows] == ["default", "small_cnn", "resnet18"]
    assert rows[-1]["gender_accuracy_mean"] == 0.865  # the new row replaces the old one
    assert sorted(kept) == ["default", "small_cnn"]
    assert q.merge_rows(tmp_path / "none.json", new) == (new, [])
    path.write_text("{not json")
    assert q.merge_rows(path, new) == (new, [])


def test_fairface_adults_and_children_from_the_gender_x_bin_cells() -> None:
    """FairFace's adults (20+) / under-20 figures are the cells' count-weighted means, and
    quality.md shows them in its FairFace detail table."""
    from agegender.evaluate.metrics import age_split_scores

    cells = {
        "male 0-2": {"n": 10, "gender_accuracy_all": 0.5},
        "female 0-2": {"n": 10, "gender_accuracy_all": 0.7},
        "male 20-29": {"n": 30, "gender_accuracy_all": 0.9},
        "female 20-29": {"n": 10, "gender_accuracy_all": 0.6},
        "female 70+": {"n": 10, "gender_accuracy_all": 0.8},
    }
    split = age_split_scores(cells)
    adults, young = split["adults"], split["under_20"]
    assert adults["n"] == 50 and young["n"] == 20
    assert abs(adults["gender_accuracy_all"] - (27 + 6 + 8) / 50) < 1e-12
    assert abs(adults["recall_female_all"] - 0.7) < 1e-12  # (6 + 8) / 20
    assert abs(adults["recall_male_all"] - 0.9) < 1e-12
    assert abs(young["gender_accuracy_all"] - 0.6) < 1e-12
    assert age_split_scores({}) == {}

    q = _quality()
    row = {
        "model": "dlib_resnet29",
        "name": "recipe",
        "run_dir": "/r/recipe",
        "input_size": 150,
        "size": 150,
        "gender_accuracy_mean": 0.9,
        "gender_accuracy_std": 0.01,
        "age_mae_mean": 5.0,
        "age_mae_std": 0.1,
        "age_group_exact_mean": 0.6,
        "age_group_exact_std": 0.01,
        "age_group_one_off_mean": 0.9,
        "age_group_one_off_std": 0.01,
        "age_cs5_mean": 0.5,
        "params": 5.7e6,
        "train_seconds_per_fold": 60.0,
        "images_per_second": 100.0,
        "test_images_per_second": 100.0,
        "folds": 5,
        "fairface_gender_accuracy_all": 0.8,
        "fairface_adults_gender_accuracy_all": adults["gender_accuracy_all"],
        "fairface_adults_recall_female_all": adults["recall_female_all"],
        "fairface_adults_recall_male_all": adults["recall_male_all"],
        "fairface_under_20_gender_accuracy_all": young["gender_accuracy_all"],
    }
    meta = {"command": "x", "machine": "m", "torch": "t", "date": "d"}
    page = q.markdown([row], meta)
    assert "| dlib_resnet29 (recipe) | 80.0 | – / – | 82.0 | 70.0 / 90.0 | 60.0 |" in page


def test_fairface_update_rescores_one_row_and_keeps_its_cv_figures(
    tmp_path: Path, monkeypatch
) -> None:
    import pytest

    q = _quality()
    rows = [
        {"name": "a", "run_dir": "runs/a", "gender_accuracy_mean": 0.9},
        {"name": "a", "run_dir": "runs/a_variant", "gender_accuracy_mean": 0.8},
    ]
    (tmp_path / "quality.json").write_text(json.dumps(rows))
    seen = []

    def fake(run_dir: Path) -> dict:
        seen.append(run_dir)
        return {"fairface_gender_accuracy_all": 0.5} if run_dir.name != "gone" else {}

    monkeypatch.setattr(q, "fairface_scores", fake)
    out = q.update_fairface(tmp_path, [tmp_path / "runs" / "a_variant"])
    assert seen == [tmp_path / "runs" / "a_variant"]
    assert out[1] == {**rows[1], "fairface_gender_accuracy_all": 0.5}  # matched by run name
    assert out[0] == rows[0]
    with pytest.raises(ValueError, match="0 rows of quality.json"):
        q.update_fairface(tmp_path, [tmp_path / "b"])
    (tmp_path / "quality.json").write_text(json.dumps([{"name": "g", "run_dir": "x/gone"}]))
    with pytest.raises(FileNotFoundError, match="gone/fold_0"):
        q.update_fairface(tmp_path, [tmp_path / "gone"])
