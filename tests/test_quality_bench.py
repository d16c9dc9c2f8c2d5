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
