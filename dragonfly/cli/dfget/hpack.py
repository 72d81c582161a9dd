"""HPACK (RFC 7541) for dfget's HTTP/2 client: a full decoder of the daemon's header blocks, a plain encoder.

The decoder handles everything a server may send: indexed fields, literals with and without indexing, the dynamic
table with its size updates, and Huffman-coded strings. The encoder only emits literals without indexing and never
Huffman-codes, which every decoder accepts and which keeps the encoder stateless. Malformed input raises
``HpackError``; every length is checked against the bytes actually present.
"""

from __future__ import annotations

from collections.abc import Iterable

# RFC 7541 Appendix A: the static table, index 1 first.
_STATIC: tuple[tuple[str, str], ...] = (
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
)

# RFC 7541 Appendix B: the bit length of each symbol's Huffman code (symbols 0-255, then EOS = 256), one character
# per symbol ('0'-'9' = 5-14 bits, 'a'-'p' = 15-30 bits). The code is canonical (codes of one length are
# consecutive in symbol order, shorter codes first), so the lengths alone determine every code.
_HUFFMAN_LENGTHS = (
    "8innnnnnnjpnnpnnnnnnnnpnnnnnnnnn1557813655363111000111111123a1758122222222222222222222223238e891a010101110221110"
    "12100122222a698nfhffhhhihiiiiijijjhijiiiighihiijhgfhhiigihhjghiigghgihiifhhhihhillfehihklllmmljkeglmmlmjggllnmm"
    "mfjfghggihhkkjjlilmllmmmmmnmmmmmlp"
)
_EOS = 256

# The table size dfget announces (SETTINGS_HEADER_TABLE_SIZE): HTTP/2's default.
DEFAULT_TABLE_SIZE = 4096
# A header block larger than this after decoding is refused (the server's metadata is a few hundred bytes).
MAX_HEADER_LIST_SIZE = 256 * 1024


class HpackError(Exception):
    """The header block is not valid HPACK (a COMPRESSION_ERROR in HTTP/2 terms)."""


_huffman_table: dict[tuple[int, int], int] | None = None


def _huffman() -> dict[tuple[int, int], int]:
    """Return {(length, code): symbol}, built on first use from the canonical code lengths."""
    global _huffman_table
    if _huffman_table is None:
        lengths = [ord(c) - ord("0") + 5 if c <= "9" else ord(c) - ord("a") + 15 for c in _HUFFMAN_LENGTHS]
        table: dict[tuple[int, int], int] = {}
        code = -1
        previous = 0
        for symbol in sorted(range(len(lengths)), key=lambda s: (lengths[s], s)):
            code = (code + 1) << (lengths[symbol] - previous)
            previous = lengths[symbol]
            table[(previous, code)] = symbol
        _huffman_table = table
    return _huffman_table


def huffman_decode(data: bytes) -> bytes:
    table = _huffman()
    out = bytearray()
    code = length = 0
    for byte in data:
        for shift in range(7, -1, -1):
            code = (code << 1) | ((byte >> shift) & 1)
            length += 1
            symbol = table.get((length, code))
            if symbol is not None:
                if symbol == _EOS:
                    raise HpackError("Huffman string contains EOS")
                out.append(symbol)
                code = length = 0
            elif length > 30:
                raise HpackError("invalid Huffman code")
    # RFC 7541 §5.2: at most 7 bits of padding, all ones (the EOS code's prefix).
    if length > 7 or code != (1 << length) - 1:
        raise HpackError("invalid Huffman padding")
    return bytes(out)


def _integer(data: bytes, pos: int, prefix: int) -> tuple[int, int]:
    """Decode an integer with a ``prefix``-bit prefix at ``data[pos]``; return (value, next position)."""
    limit = (1 << prefix) - 1
    value = data[pos] & limit
    pos += 1
    if value < limit:
        return value, pos
    shift = 0
    while True:
        if pos >= len(data):
            raise HpackError("truncated integer")
        byte = data[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos
        if shift > 28:
            raise HpackError("integer too large")


def _string(data: bytes, pos: int) -> tuple[str, int]:
    if pos >= len(data):
        raise HpackError("truncated string")
    huffman = data[pos] & 0x80
    length, pos = _integer(data, pos, 7)
    if pos + length > len(data):
        raise HpackError("truncated string")
    raw = data[pos : pos + length]
    # Header values are bytes on the wire; latin-1 maps each byte to one character and never fails.
    return (huffman_decode(raw) if huffman else raw).decode("latin-1"), pos + length


class Decoder:
    """The receiving side of one connection's header compression (its dynamic table lives across blocks)."""

    def __init__(self, max_table_size: int = DEFAULT_TABLE_SIZE) -> None:
        self._max_allowed = max_table_size
        self._max = max_table_size
        self._size = 0
        # Newest first: dynamic index 62 is self._dynamic[0].
        self._dynamic: list[tuple[str, str]] = []

    def _field(self, index: int) -> tuple[str, str]:
        if index <= 0:
            raise HpackError("header index 0")
        if index <= len(_STATIC):
            return _STATIC[index - 1]
        if index - len(_STATIC) > len(self._dynamic):
            raise HpackError(f"header index {index} beyond the tables")
        return self._dynamic[index - len(_STATIC) - 1]

    def _evict(self) -> None:
        while self._size > self._max:
            name, value = self._dynamic.pop()
            self._size -= len(name) + len(value) + 32

    def _add(self, name: str, value: str) -> None:
        self._dynamic.insert(0, (name, value))
        self._size += len(name) + len(value) + 32
        self._evict()

    def decode(self, data: bytes) -> list[tuple[str, str]]:
        headers: list[tuple[str, str]] = []
        total = 0
        pos = 0
        while pos < len(data):
            byte = data[pos]
            if byte & 0x80:
                index, pos = _integer(data, pos, 7)
                name, value = self._field(index)
            elif byte & 0x40:
                index, pos = _integer(data, pos, 6)
                if index:
                    name = self._field(index)[0]
                else:
                    name, pos = _string(data, pos)
                value, pos = _string(data, pos)
                self._add(name, value)
            elif byte & 0x20:
                if headers:
                    raise HpackError("table size update after a header field")
                size, pos = _integer(data, pos, 5)
                if size > self._max_allowed:
                    raise HpackError(f"table size {size} above the {self._max_allowed} allowed")
                self._max = size
                self._evict()
                continue
            else:
                # Literal without indexing (0000) or never indexed (0001): same layout, table untouched.
                index, pos = _integer(data, pos, 4)
                if index:
                    name = self._field(index)[0]
                else:
                    name, pos = _string(data, pos)
                value, pos = _string(data, pos)
            total += len(name) + len(value) + 32
            if total > MAX_HEADER_LIST_SIZE:
                raise HpackError(f"header list larger than {MAX_HEADER_LIST_SIZE} bytes")
            headers.append((name, value))
        return headers


def _encode_integer(value: int, prefix: int, first: int) -> bytes:
    limit = (1 << prefix) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _encode_string(text: str) -> bytes:
    raw = text.encode("latin-1")
    return _encode_integer(len(raw), 7, 0) + raw


def encode(headers: Iterable[tuple[str, str]]) -> bytes:
    """Encode ``headers`` as literals without indexing, naming static-table names by index."""
    names = {name: index for index, (name, _) in reversed(list(enumerate(_STATIC, 1)))}
    out = bytearray()
    for name, value in headers:
        index = names.get(name)
        if index is None:
            out += b"\x00" + _encode_string(name)
        else:
            out += _encode_integer(index, 4, 0)
        out += _encode_string(value)
    return bytes(out)
