import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agegender.data.records import (
    AGE_GROUP_NAMES,
    AGE_GROUPS,
    age_to_group,
    ages_to_groups,
    parse_age,
    parse_gender,
)


@pytest.mark.parametrize(
    "age,group",
    [
        (0, 0),
        (2, 0),
        (3, 1),
        (6, 1),
        (7, 2),
        (13, 2),
        (14, 3),
        (20, 3),
        (22, 3),
        (23, 4),
        (32, 4),
        (34, 4),
        (35, 5),
        (43, 5),
        (45, 5),
        (46, 6),
        (53, 6),
        (56, 6),
        (57, 7),
        (116, 7),
    ],
)
def test_age_to_group_documented_rule(age, group):
    assert age_to_group(age) == group


@given(st.floats(min_value=0, max_value=120, allow_nan=False))
def test_age_inside_a_group_maps_to_it_and_vectorised_agrees(age):
    g = age_to_group(age)
    lo, hi = AGE_GROUPS[g]
    # inside its interval, or in a gap, nearer (or tied, going older) to it than any other
    dist = [max(lo_ - age, 0, age - hi_) for lo_, hi_ in AGE_GROUPS]
    assert dist[g] == min(dist)
    if lo <= age <= hi:
        assert dist[g] == 0
    assert ages_to_groups(np.array([age]))[0] == g


def test_parse_age_forms():
    assert parse_age("(25, 32)") == (None, 4)
    assert parse_age("35") == (35.0, 5)
    assert parse_age("None") == (None, None)
    assert parse_age("") == (None, None)
    assert parse_age("60+") == (None, 7)
    assert parse_age("8-12") == (None, 2)
    assert ages_to_groups(np.array([math.nan]))[0] == -1
    with pytest.raises(ValueError, match="unrecognised age"):
        parse_age("old")
    with pytest.raises(ValueError):
        parse_age("(40, 30)")
    assert len(AGE_GROUP_NAMES) == 8


@pytest.mark.parametrize(
    "text,code",
    [
        ("m", 0),
        ("F", 1),
        ("male", 0),
        ("Female", 1),
        ("0", 0),
        ("1", 1),
        ("u", None),
        ("", None),
        (None, None),
        (1.0, 1),
    ],
)
def test_parse_gender(text, code):
    assert parse_gender(text) == code


def test_parse_gender_junk():
    with pytest.raises(ValueError, match="unrecognised gender 'x'"):
        parse_gender("x")
