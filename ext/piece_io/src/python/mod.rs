//! The `_dragonfly_piece_io` module: buffer extraction, argument checks, GIL release and error conversion, one
//! file per area of the core (`piece`, `tls_client`, `tls_server`, `token_bucket`, and `codec` for `vortex`);
//! this file registers them.

use pyo3::prelude::*;

use crate::vortex;

mod args;
mod codec;
mod errors;
mod fetch;
mod piece;
mod tls_client;
mod tls_server;
mod token_bucket;

/// Piece I/O for dragonfly: positional piece read/write with CRC-32, sendfile, socket-to-file receive, a whole
/// piece fetched from a parent in one call, the Vortex codec and a token bucket; every blocking call releases the
/// GIL.
#[pymodule]
fn _dragonfly_piece_io(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add(
        "BUILD_PROFILE",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    )?;
    m.add("HEADER_SIZE", vortex::HEADER_SIZE)?;
    m.add("MAX_VALUE_LENGTH", vortex::MAX_VALUE_LENGTH)?;
    let tags = [
        ("TAG_DOWNLOAD_PIECE", vortex::TAG_DOWNLOAD_PIECE),
        ("TAG_PIECE_CONTENT", vortex::TAG_PIECE_CONTENT),
        (
            "TAG_DOWNLOAD_PERSISTENT_PIECE",
            vortex::TAG_DOWNLOAD_PERSISTENT_PIECE,
        ),
        (
            "TAG_PERSISTENT_PIECE_CONTENT",
            vortex::TAG_PERSISTENT_PIECE_CONTENT,
        ),
        (
            "TAG_DOWNLOAD_PERSISTENT_CACHE_PIECE",
            vortex::TAG_DOWNLOAD_PERSISTENT_CACHE_PIECE,
        ),
        (
            "TAG_PERSISTENT_CACHE_PIECE_CONTENT",
            vortex::TAG_PERSISTENT_CACHE_PIECE_CONTENT,
        ),
        ("TAG_DOWNLOAD_CACHE_PIECE", vortex::TAG_DOWNLOAD_CACHE_PIECE),
        ("TAG_CACHE_PIECE_CONTENT", vortex::TAG_CACHE_PIECE_CONTENT),
        ("TAG_CLOSE", vortex::TAG_CLOSE),
        ("TAG_ERROR", vortex::TAG_ERROR),
    ];
    for (name, tag) in tags {
        m.add(name, tag)?;
    }
    m.add_class::<token_bucket::TokenBucket>()?;
    m.add_class::<codec::PieceMetadata>()?;
    m.add_class::<tls_client::TlsClientConfig>()?;
    m.add_class::<tls_client::TlsClientStream>()?;
    m.add_class::<tls_server::TlsServerConfig>()?;
    m.add_class::<tls_server::TlsServerStream>()?;
    m.add_function(wrap_pyfunction!(piece::write_piece, m)?)?;
    m.add_function(wrap_pyfunction!(piece::read_piece, m)?)?;
    m.add_function(wrap_pyfunction!(piece::sendfile, m)?)?;
    m.add_function(wrap_pyfunction!(piece::recv_to_file, m)?)?;
    m.add_function(wrap_pyfunction!(piece::recv_to_file_blake3, m)?)?;
    m.add_function(wrap_pyfunction!(fetch::fetch_piece, m)?)?;
    m.add_function(wrap_pyfunction!(codec::encode_download_piece, m)?)?;
    m.add_function(wrap_pyfunction!(codec::decode_header, m)?)?;
    m.add_function(wrap_pyfunction!(codec::decode_download_piece, m)?)?;
    m.add_function(wrap_pyfunction!(codec::encode_piece_content, m)?)?;
    m.add_function(wrap_pyfunction!(codec::decode_piece_content, m)?)?;
    m.add_function(wrap_pyfunction!(codec::encode_error, m)?)?;
    m.add_function(wrap_pyfunction!(codec::decode_error, m)?)?;
    m.add_function(wrap_pyfunction!(codec::encode_close, m)?)?;
    // maturin ships the stub by wrapping the extension in a package whose __init__ star-imports it; listing the
    // names (dunders included) is what carries __version__ through.
    let mut names: Vec<&str> = vec![
        "__version__",
        "BUILD_PROFILE",
        "HEADER_SIZE",
        "MAX_VALUE_LENGTH",
    ];
    names.extend(tags.iter().map(|(name, _)| *name));
    names.extend([
        "TokenBucket",
        "PieceMetadata",
        "TlsClientConfig",
        "TlsClientStream",
        "TlsServerConfig",
        "TlsServerStream",
        "write_piece",
        "read_piece",
        "sendfile",
        "recv_to_file",
        "recv_to_file_blake3",
        "fetch_piece",
        "encode_download_piece",
        "decode_header",
        "decode_download_piece",
        "encode_piece_content",
        "decode_piece_content",
        "encode_error",
        "decode_error",
        "encode_close",
    ]);
    m.add("__all__", names)?;
    Ok(())
}
