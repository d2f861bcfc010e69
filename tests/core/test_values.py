"""Configuration values as a command line gives them (strings) are converted, or refused naming the argument."""

from __future__ import annotations

import pytest

from monai_metalr.values import as_bool, as_names, as_number, as_pair


@pytest.mark.parametrize("text", ["[0.01, 100]", "(0.01,100)", "0.01,100", "0.01 100", "['0.01', '100']"])
def test_pairs_from_strings(text):
    assert as_pair("bounds", text) == (0.01, 100.0)
    assert as_pair("bounds", ["0.01", 100]) == (0.01, 100.0)


@pytest.mark.parametrize("value", ["[1, 2, 3]", "1", "", 5, [1]])
def test_not_a_pair(value):
    with pytest.raises(ValueError, match="bounds must be a pair"):
        as_pair("bounds", value)


def test_booleans():
    for true in (True, 1, "True", "yes", " ON ", "1"):
        assert as_bool("flag", true) is True
    for false in (False, 0, "False", "no", "off", "0"):
        assert as_bool("flag", false) is False
    for bad in ("maybe", 2, None, 0.5):
        with pytest.raises(ValueError, match=f"flag must be true or false, got {bad!r}"):
            as_bool("flag", bad)


def test_names():
    assert as_names("groups", None) is None
    assert as_names("groups", "head") == ["head"]  # never split into characters
    assert as_names("groups", "stem, head") == ["stem", "head"]
    assert as_names("groups", "['stem', 'head']") == ["stem", "head"]
    assert as_names("groups", ("stem",)) == ["stem"]
    with pytest.raises(ValueError, match="groups must be a list of names"):
        as_names("groups", [1, 2])


def test_integers_stay_exact():
    big = 2**62 + 1  # a float would round it
    assert as_number("seed", big, int) == big and as_number("seed", str(big), int) == big
    assert as_number("n", "1e3", int) == 1000 and as_number("n", " 5 ", int, minimum=1) == 5
    with pytest.raises(ValueError, match="n must be >= 1, got '0'"):
        as_number("n", "0", int, minimum=1)
    with pytest.raises(ValueError, match="n must be an integer, got '2.5'"):
        as_number("n", "2.5", int)
