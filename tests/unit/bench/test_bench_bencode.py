import hashlib
from pathlib import Path

import pytest

from bench.swarm import bencode


def test_encode_known_values() -> None:
    assert bencode.encode(42) == b"i42e"
    assert bencode.encode(-3) == b"i-3e"
    assert bencode.encode("spam") == b"4:spam"
    assert bencode.encode([b"a", 1]) == b"l1:ai1ee"
    # Keys are sorted as raw bytes, whatever order the dict has.
    assert bencode.encode({"zz": 1, "a": b"x"}) == b"d1:a1:x2:zzi1ee"


def test_round_trip() -> None:
    value = {b"announce": b"http://10.77.0.3:6969/announce", b"info": {b"length": 5, b"list": [b"", 0, [b"x"]]}}
    assert bencode.decode(bencode.encode(value)) == value


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"i1ee", "trailing data"), (b"5:abc", "truncated string"), (b"x", "bad bencoding"), (b"", "truncated")],
)
def test_decode_rejects(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bencode.decode(data)


def test_encode_rejects_booleans() -> None:
    with pytest.raises(TypeError, match="bencode has no booleans"):
        bencode.encode(True)


def test_make_torrent_is_v1_with_sha1_pieces(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    data = bytes(range(256)) * 100  # 25,600 bytes: 3 pieces of 10,000 bytes, the last one short
    blob.write_bytes(data)
    torrent, info_hash = bencode.make_torrent(blob, "http://10.77.0.3:6969/announce", piece_length=10_000)
    meta = bencode.decode(torrent)
    assert isinstance(meta, dict)
    info = meta[b"info"]
    assert meta[b"announce"] == b"http://10.77.0.3:6969/announce"
    assert info[b"name"] == b"blob"
    assert info[b"length"] == len(data)
    assert info[b"piece length"] == 10_000
    assert info[b"pieces"] == b"".join(hashlib.sha1(data[i : i + 10_000]).digest() for i in range(0, len(data), 10_000))
    # No v2 keys: aria2c and the tracker must compute the same (v1) info-hash.
    assert b"meta version" not in info
    assert b"file tree" not in info
    assert info_hash == hashlib.sha1(bencode.encode(info)).hexdigest()
