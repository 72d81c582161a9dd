"""Bencoding and v1-only .torrent files for the BitTorrent baseline (BEP 3)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

Value = int | bytes | str | list["Value"] | dict[bytes | str, "Value"]


def encode(value: Value) -> bytes:
    """Return the bencoding of an int, bytes/str, list or dict (keys sorted as raw bytes, as BEP 3 requires)."""
    if isinstance(value, bool):
        raise TypeError("bencode has no booleans")
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return b"%d:%s" % (len(value), value)
    if isinstance(value, list):
        return b"l" + b"".join(encode(v) for v in value) + b"e"
    if isinstance(value, dict):
        items = sorted(((k.encode() if isinstance(k, str) else k), v) for k, v in value.items())
        return b"d" + b"".join(encode(k) + encode(v) for k, v in items) + b"e"
    raise TypeError(f"cannot bencode {type(value).__name__}")


def decode(data: bytes) -> Value:
    """Return the value bencoded in `data`; trailing bytes or malformed input raise ValueError."""
    value, end = _decode_at(data, 0)
    if end != len(data):
        raise ValueError(f"trailing data at offset {end}")
    return value


def _decode_at(data: bytes, i: int) -> tuple[Value, int]:
    if i >= len(data):
        raise ValueError("truncated bencoding")
    lead = data[i : i + 1]
    if lead == b"i":
        end = data.index(b"e", i)
        return int(data[i + 1 : end]), end + 1
    if lead == b"l":
        items: list[Value] = []
        i += 1
        while data[i : i + 1] != b"e":
            item, i = _decode_at(data, i)
            items.append(item)
        return items, i + 1
    if lead == b"d":
        mapping: dict[bytes | str, Value] = {}
        i += 1
        while data[i : i + 1] != b"e":
            key, i = _decode_at(data, i)
            if not isinstance(key, bytes):
                raise ValueError("dictionary key is not a string")
            mapping[key], i = _decode_at(data, i)
        return mapping, i + 1
    if lead.isdigit():
        colon = data.index(b":", i)
        length = int(data[i:colon])
        start = colon + 1
        if start + length > len(data):
            raise ValueError("truncated string")
        return data[start : start + length], start + length
    raise ValueError(f"bad bencoding at offset {i}")


def make_torrent(path: str | os.PathLike[str], announce: str, piece_length: int = 1 << 20) -> tuple[bytes, str]:
    """Return (.torrent bytes, hex info-hash) for one file: v1 only, so aria2c and the tracker agree on the hash."""
    path = Path(path)
    pieces = bytearray()
    with path.open("rb") as f:
        while chunk := f.read(piece_length):
            pieces += hashlib.sha1(chunk).digest()
    info: dict[bytes | str, Value] = {
        "name": path.name,
        "length": path.stat().st_size,
        "piece length": piece_length,
        "pieces": bytes(pieces),
    }
    torrent = encode({"announce": announce, "info": info})
    return torrent, hashlib.sha1(encode(info)).hexdigest()
