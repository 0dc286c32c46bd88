"""Naming a few of many things in a message."""

from wtb_ray.domain.listing import some


def test_some_names_the_first_few_and_counts_the_rest():
    assert some([], 5) == ""
    assert some(["a", "b"], 5) == "a, b"
    assert some(list("abcdefg"), 5) == "a, b, c, d, e and 2 more"
    assert some(["a", "b"], 2, total=9) == "a, b and 7 more"  # the rest not even listed
