"""Intervals that resample people: agegender.evaluate.bootstrap."""

from __future__ import annotations

import numpy as np
import pytest

from agegender.evaluate.bootstrap import grouped_accuracy_ci


def test_people_not_photos_set_the_width():
    rng = np.random.default_rng(1)
    # 20 people, 30 alike photos each: each person all right or all wrong
    people = np.repeat(np.arange(20), 30)
    correct = np.repeat(rng.random(20) < 0.7, 30)
    by_people = grouped_accuracy_ci(correct, people)
    by_photo = grouped_accuracy_ci(correct, np.arange(len(correct)))
    assert by_people["value"] == by_photo["value"] == pytest.approx(correct.mean())
    assert (by_people["photos"], by_people["people"]) == (600, 20)
    assert by_people["low"] < by_people["value"] < by_people["high"]
    # 20 independent units, not 600: the interval is several times wider
    width = by_people["high"] - by_people["low"]
    assert width > 3 * (by_photo["high"] - by_photo["low"])
    assert grouped_accuracy_ci(correct, people, seed=0) == by_people  # seeded


def test_one_person_has_no_interval_and_sizes_must_match():
    out = grouped_accuracy_ci([True, False, True], ["a", "a", "a"])
    assert out["value"] == pytest.approx(2 / 3) and out["low"] is None and out["people"] == 1
    assert grouped_accuracy_ci([], [])["value"] is None
    with pytest.raises(ValueError, match="3 photos but 2 group ids"):
        grouped_accuracy_ci([True, False, True], ["a", "b"])
