import math

import pytest

from wtb_ray.storage import codec


def test_encoding_is_canonical_and_hash_stable():
    a = codec.encode({"b": [1, 2.5, None], "a": {"y": True, "x": "é"}})
    b = codec.encode({"a": {"x": "é", "y": True}, "b": [1, 2.5, None]})
    assert a == b == '{"a":{"x":"é","y":true},"b":[1,2.5,null]}'.encode()
    assert codec.digest(a) == codec.digest(b) and len(codec.digest(a)) == 32


@pytest.mark.parametrize("value, reason", [
    (object(), "object is not a storable type"),
    ({1, 2}, "set is not a storable type"),
    (b"raw", "bytes is not a storable type"),
    ({1: "a", "b": 2}, "a dict mixes key types"),
])
def test_unstorable_values_say_why(value, reason):
    with pytest.raises(codec.EncodeError, match=reason):
        codec.encode(value)


def test_nan_round_trips():
    assert math.isnan(codec.decode(codec.encode(float("nan"))))


def test_pack_compresses_only_when_it_pays():
    small = codec.encode("x" * 10)
    assert codec.pack(small) == ("j", small)
    big = codec.encode("word " * 400)
    kind, payload = codec.pack(big)
    assert kind == "z" and len(payload) < len(big) / 5
    assert codec.unpack(kind, payload) == big
