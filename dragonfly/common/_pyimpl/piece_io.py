"""Pure-Python twin of ``_dragonfly_piece_io``: same functions, results, exceptions and messages.

This module only gathers the parts, one per native module: ``piece_transfer`` (``piece.rs``, ``sendfile.rs``,
``recv.rs``), ``piece_fetch`` (``fetch.rs``), ``tls_client`` (``tls/client.rs``), ``tls_server``
(``tls/server.rs``), ``token_bucket`` and ``vortex``; ``checks`` words the argument errors as
``ext/piece_io/src/python/`` does.

The contract is in ``dragonfly.common.native``. Argument checks run in the order the native glue runs them, so
that both raise the same exception for the same bad call.
"""

from __future__ import annotations

from dragonfly.common._pyimpl.piece_fetch import (
    fetch_piece,
)
from dragonfly.common._pyimpl.piece_transfer import (
    read_piece,
    recv_to_file,
    recv_to_file_blake3,
    sendfile,
    write_piece,
)
from dragonfly.common._pyimpl.tls_client import (
    TlsClientConfig,
    TlsClientStream,
)
from dragonfly.common._pyimpl.tls_server import (
    TlsServerConfig,
    TlsServerStream,
)
from dragonfly.common._pyimpl.token_bucket import (
    TokenBucket,
)
from dragonfly.common._pyimpl.vortex import (
    HEADER_SIZE,
    MAX_VALUE_LENGTH,
    TAG_CACHE_PIECE_CONTENT,
    TAG_CLOSE,
    TAG_DOWNLOAD_CACHE_PIECE,
    TAG_DOWNLOAD_PERSISTENT_CACHE_PIECE,
    TAG_DOWNLOAD_PERSISTENT_PIECE,
    TAG_DOWNLOAD_PIECE,
    TAG_ERROR,
    TAG_PERSISTENT_CACHE_PIECE_CONTENT,
    TAG_PERSISTENT_PIECE_CONTENT,
    TAG_PIECE_CONTENT,
    PieceMetadata,
    decode_download_piece,
    decode_error,
    decode_header,
    decode_piece_content,
    encode_close,
    encode_download_piece,
    encode_error,
    encode_piece_content,
)

__all__ = [
    "HEADER_SIZE",
    "MAX_VALUE_LENGTH",
    "TAG_CACHE_PIECE_CONTENT",
    "TAG_CLOSE",
    "TAG_DOWNLOAD_CACHE_PIECE",
    "TAG_DOWNLOAD_PERSISTENT_CACHE_PIECE",
    "TAG_DOWNLOAD_PERSISTENT_PIECE",
    "TAG_DOWNLOAD_PIECE",
    "TAG_ERROR",
    "TAG_PERSISTENT_CACHE_PIECE_CONTENT",
    "TAG_PERSISTENT_PIECE_CONTENT",
    "TAG_PIECE_CONTENT",
    "PieceMetadata",
    "TlsClientConfig",
    "TlsClientStream",
    "TlsServerConfig",
    "TlsServerStream",
    "TokenBucket",
    "decode_download_piece",
    "decode_error",
    "decode_header",
    "decode_piece_content",
    "encode_close",
    "encode_download_piece",
    "encode_error",
    "encode_piece_content",
    "fetch_piece",
    "read_piece",
    "recv_to_file",
    "recv_to_file_blake3",
    "sendfile",
    "write_piece",
]
