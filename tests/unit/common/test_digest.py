"""Dragonfly digest strings: exact parsing, canonical formatting, file digests against hashlib and zlib."""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dragonfly.common.digest import (
    ALGORITHMS,
    Digest,
    compute_file_digest,
    format_piece_digest,
    is_valid_digest,
    parse_digest,
    verify_file_digest,
)
from dragonfly.common.errors import DigestMismatch, InvalidDigest

SHA256_ABC = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
SHA512_ABC = (
    "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
    "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
)


@pytest.mark.parametrize(
    ("text", "algorithm", "encoded"),
    [
        ("crc32:3299754941", "crc32", "3299754941"),
        ("crc32:0", "crc32", "0"),
        ("crc32:7", "crc32", "7"),
        ("crc32:4294967295", "crc32", "4294967295"),
        (f"sha256:{SHA256_ABC}", "sha256", SHA256_ABC),
        (f"sha512:{SHA512_ABC}", "sha512", SHA512_ABC),
        ("crc32c:3808858755", "crc32c", "3808858755"),
        (f"blake3:{'0' * 64}", "blake3", "0" * 64),
    ],
)
def test_parse_valid_digests(text: str, algorithm: str, encoded: str) -> None:
    digest = parse_digest(text)
    assert digest == Digest(algorithm, encoded)
    assert str(digest) == text
    assert is_valid_digest(text)


ALL = "crc32, sha256, sha512, crc32c, blake3"
CRC = "a decimal CRC-32 between 0 and 4294967295 without leading zeros"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", f"invalid digest '': expected '<algorithm>:<value>' with algorithm one of {ALL}"),
        (SHA256_ABC, f"invalid digest '{SHA256_ABC}': expected '<algorithm>:<value>' with algorithm one of {ALL}"),
        ("md5:abc", f"invalid digest 'md5:abc': unknown algorithm 'md5', expected one of {ALL}"),
        ("SHA256:abc", f"invalid digest 'SHA256:abc': unknown algorithm 'SHA256', expected one of {ALL}"),
        ("crc32:", f"invalid digest 'crc32:': expected {CRC} after 'crc32:'"),
        ("crc32:00001234", f"invalid digest 'crc32:00001234': expected {CRC} after 'crc32:'"),
        ("crc32:4294967296", f"invalid digest 'crc32:4294967296': expected {CRC} after 'crc32:'"),
        ("crc32:-1", f"invalid digest 'crc32:-1': expected {CRC} after 'crc32:'"),
        ("crc32: 12", f"invalid digest 'crc32: 12': expected {CRC} after 'crc32:'"),
        ("crc32:cbf43926", f"invalid digest 'crc32:cbf43926': expected {CRC} after 'crc32:'"),
        ("crc32:١٢٣", f"invalid digest 'crc32:١٢٣': expected {CRC} after 'crc32:'"),
        (
            f"sha256:{SHA256_ABC.upper()}",
            f"invalid digest 'sha256:{SHA256_ABC.upper()}': expected 64 lower-case hex digits after 'sha256:'",
        ),
        (
            f"sha256:{SHA256_ABC}0",
            f"invalid digest 'sha256:{SHA256_ABC}0': expected 64 lower-case hex digits after 'sha256:'",
        ),
        (
            f"sha512:{SHA256_ABC}",
            f"invalid digest 'sha512:{SHA256_ABC}': expected 128 lower-case hex digits after 'sha512:'",
        ),
        (
            f"sha256:{SHA256_ABC}\n",
            f"invalid digest 'sha256:{SHA256_ABC}\\n': expected 64 lower-case hex digits after 'sha256:'",
        ),
    ],
)
def test_parse_invalid_digests_quote_input_and_expectation(text: str, message: str) -> None:
    with pytest.raises(InvalidDigest) as excinfo:
        parse_digest(text)
    assert str(excinfo.value) == message
    assert isinstance(excinfo.value, ValueError)
    assert not is_valid_digest(text)


def _parses(text: str) -> bool:
    try:
        parse_digest(text)
    except InvalidDigest:
        return False
    return True


@given(
    st.sampled_from([*ALGORITHMS, "md5", "CRC32", ""]),
    st.sampled_from([":", "", "::"]),
    st.one_of(
        st.integers(min_value=-10, max_value=2**33).map(str),
        st.text(alphabet="0123456789abcdefABCDEF \n", max_size=130),
        st.binary(min_size=32, max_size=64).map(bytes.hex),
    ),
)
def test_is_valid_digest_agrees_with_parse_digest(algorithm: str, colon: str, encoded: str) -> None:
    text = f"{algorithm}{colon}{encoded}"
    assert is_valid_digest(text) == _parses(text)


def test_invalid_digest_message_is_bounded() -> None:
    with pytest.raises(InvalidDigest) as excinfo:
        parse_digest("x" * 10_000)
    assert str(excinfo.value).startswith(f"invalid digest '{'x' * 160}'...: expected")


def test_digest_is_validated_and_frozen() -> None:
    with pytest.raises(InvalidDigest, match="expected 64 lower-case hex digits after 'blake3:'"):
        Digest("blake3", "xyz")
    digest = Digest("crc32", "1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        digest.encoded = "2"  # type: ignore[misc]
    assert {digest, Digest("crc32", "1")} == {digest}


def test_format_piece_digest() -> None:
    assert format_piece_digest(3299754941) == "crc32:3299754941"
    assert format_piece_digest(zlib.crc32(b"123456789")) == "crc32:3421780262"
    assert format_piece_digest(5) == "crc32:5"
    for bad in (-1, 2**32):
        with pytest.raises(ValueError, match=f"a CRC-32 is between 0 and 4294967295, got {bad}"):
            format_piece_digest(bad)


@given(st.integers(0, 2**32 - 1))
def test_piece_digest_round_trips(crc: int) -> None:
    text = format_piece_digest(crc)
    assert parse_digest(text) == Digest("crc32", str(crc))
    assert str(parse_digest(text)) == text


@given(st.sampled_from(["sha256", "sha512", "blake3"]), st.binary(min_size=32, max_size=64))
def test_hex_digests_round_trip(algorithm: str, raw: bytes) -> None:
    size = 64 if algorithm == "sha512" else 32
    text = f"{algorithm}:{(raw * 2)[:size].hex()}"
    assert str(parse_digest(text)) == text


@pytest.fixture
def content_file(tmp_path: pathlib.Path) -> tuple[pathlib.Path, bytes]:
    content = bytes(range(256)) * 5000 + b"tail"
    path = tmp_path / "content"
    path.write_bytes(content)
    return path, content


def test_compute_file_digest_matches_stdlib(content_file: tuple[pathlib.Path, bytes]) -> None:
    path, content = content_file
    assert compute_file_digest("sha256", path) == Digest("sha256", hashlib.sha256(content).hexdigest())
    assert compute_file_digest("sha512", str(path)) == Digest("sha512", hashlib.sha512(content).hexdigest())
    assert compute_file_digest("crc32", path) == Digest("crc32", str(zlib.crc32(content)))
    assert {compute_file_digest(algorithm, path).algorithm for algorithm in ALGORITHMS} == set(ALGORITHMS)


def test_compute_file_digest_of_empty_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    assert str(compute_file_digest("crc32", path)) == "crc32:0"
    assert compute_file_digest("sha256", path).encoded == hashlib.sha256(b"").hexdigest()


def test_compute_file_digest_rejects_unknown_algorithm(content_file: tuple[pathlib.Path, bytes]) -> None:
    with pytest.raises(InvalidDigest, match=r"^unknown digest algorithm 'md5', expected one of crc32, sha256"):
        compute_file_digest("md5", content_file[0])


def test_verify_file_digest(content_file: tuple[pathlib.Path, bytes]) -> None:
    path, content = content_file
    verify_file_digest(path, parse_digest(f"sha256:{hashlib.sha256(content).hexdigest()}"))
    verify_file_digest(path, Digest("crc32", str(zlib.crc32(content))))
    wrong = Digest("sha256", hashlib.sha256(content + b"!").hexdigest())
    with pytest.raises(DigestMismatch) as excinfo:
        verify_file_digest(path, wrong)
    actual = f"sha256:{hashlib.sha256(content).hexdigest()}"
    assert excinfo.value.expected == str(wrong)
    assert excinfo.value.actual == actual
    assert str(excinfo.value) == f"file '{path}' digest mismatch: expected {wrong}, got {actual}"


def test_verify_missing_file_is_file_not_found(tmp_path: pathlib.Path) -> None:
    with pytest.raises(FileNotFoundError):
        verify_file_digest(tmp_path / "missing", Digest("crc32", "0"))
