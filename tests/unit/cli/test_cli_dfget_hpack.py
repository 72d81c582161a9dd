"""dfget's HPACK decoder and encoder (dragonfly.cli.dfget.hpack).

The encoded blocks below come from an independent encoder (python-hpack 4.2.0, Huffman on, a 256-byte dynamic
table): a table size update, Huffman strings, incremental indexing, fields indexed from the dynamic table and
entries evicted from it, which is what grpcio's and hyper's servers send.
"""

from __future__ import annotations

import pytest

from dragonfly.cli.dfget import hpack

BLOCKS = [
    (
        "3fe101885f8b1d75d0620d263d4c4d6564408e9acac8b0c842d6958b510f21aa9b903485a9264fafa90b2d03497ea6f66aff",
        [
            (":status", "200"),
            ("content-type", "application/grpc"),
            ("grpc-accept-encoding", "identity,deflate,gzip"),
        ],
    ),
    (
        "88bfbe",
        [
            (":status", "200"),
            ("content-type", "application/grpc"),
            ("grpc-accept-encoding", "identity,deflate,gzip"),
        ],
    ),
    (
        "40889acac8b21234da8f816f40899acac8b5254207317f9d3d8698d55c53160dea4e94d771860f61a6354c2b7995616949466a0b27"
        "40909acac8b21234da85a42a466a10b466ab942faca9fdfcd3ef9f2928c9d0f364eb261e37b2bf",
        [
            ("grpc-status", "5"),
            ("grpc-message", "origin: GET http://origin/%C3%A4 failed"),
            ("grpc-status-details-bin", "eyJtZXNzYWdlIjogIkdFVCJ9"),
        ],
    ),
]


def test_blocks_of_another_encoder_decode_in_sequence() -> None:
    decoder = hpack.Decoder()
    for block, headers in BLOCKS:
        assert decoder.decode(bytes.fromhex(block)) == headers


def test_the_encoders_output_decodes_back() -> None:
    headers = [(":method", "POST"), (":path", "/a/b"), ("x-long", "v" * 300), ("grpc-timeout", "7200000m")]
    assert hpack.Decoder().decode(hpack.encode(headers)) == headers


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("80", "header index 0"),
        ("be", "beyond the tables"),
        ("3fe21f", "above the 4096 allowed"),
        ("883fe101", "table size update after a header field"),
        ("0085", "truncated string"),
        ("7f", "truncated integer"),
        ("7fffffffffff01", "integer too large"),
        # A field named "x" whose Huffman value is 'a' (00011) then three 0 bits: padding that is not all ones.
        ("0001788118", "invalid Huffman padding"),
        # Eight 1 bits: more padding than the 7 bits allowed.
        ("00017881ff", "invalid Huffman padding"),
        # EOS (30 ones) inside a string.
        ("00017884ffffffff", "EOS"),
    ],
)
def test_malformed_blocks_raise(block: str, message: str) -> None:
    with pytest.raises(hpack.HpackError, match=message):
        hpack.Decoder().decode(bytes.fromhex(block))


def test_a_header_list_too_large_is_refused() -> None:
    block = hpack.encode([("x", "v" * 1000)] * 300)
    with pytest.raises(hpack.HpackError, match="header list larger"):
        hpack.Decoder().decode(block)
