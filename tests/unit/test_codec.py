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


def test_chunks_are_named_by_blake3_and_older_blake2b_names_still_match():
    data = b"a workspace chunk" * 1000
    import blake3

    assert codec.chunk_digest(data) == blake3.blake3(data).hexdigest(16)
    assert len(codec.chunk_digest(data)) == 32
    assert codec.chunk_matches(codec.chunk_digest(data), data)
    assert codec.chunk_matches(codec.digest(data), data)  # a store written before BLAKE3
    assert not codec.chunk_matches(codec.chunk_digest(data), data + b"!")
    assert not codec.chunk_matches(codec.digest(data), data[:-1])


def test_tree_objects_are_the_canonical_json_of_codec_encode():
    """Trees are written with orjson for speed; their bytes (hence their hashes) must be
    those ``codec.encode`` gives, whatever the file names."""
    import random

    from wtb_ray.workspace import tree

    rng = random.Random(7)
    alphabet = [chr(i) for i in range(1, 0x300)] + ["\u2028", "\ufeff", "日本", "\U0001F600"]
    for _ in range(2000):
        entries = {"".join(rng.choices(alphabet, k=rng.randint(1, 6))):
                   rng.choice([["f", rng.randint(0, 0o7777), rng.randint(0, 2**40),
                                [f"{rng.getrandbits(128):032x}"] * rng.randint(0, 2)],
                               ["d", f"{rng.getrandbits(128):032x}"], ["l", "../x y"]])
                   for _ in range(rng.randint(0, 6))}
        h, data = tree.encode(entries)
        assert data == codec.encode(entries) and h == codec.digest(data)
        assert tree.decode(data) == entries
