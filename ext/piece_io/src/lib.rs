//! Piece I/O for the data plane: positional piece writes and reads with CRC-32, `sendfile(2)` of a piece to a
//! socket, receiving a piece from a socket into a file, fetching a whole piece from a parent (request, answer
//! and bytes in one call), the Vortex frame codec and a token bucket.
//!
//! This core never mentions Python; `python/` (feature `python`) is the only glue, so `cargo test` runs
//! without an interpreter.

use std::io;

mod fetch;
mod piece;
mod recv;
mod sendfile;
mod sys;
pub mod tls;
pub mod token_bucket;
pub mod vortex;

#[cfg(feature = "python")]
mod python;

pub use fetch::{fetch_piece, FetchError, Fetched, Link, PlainLink, Wanted};
pub use piece::{read_piece, write_piece};
pub use recv::{recv_to_file, recv_to_file_blake3};
pub use sendfile::sendfile;
pub use token_bucket::TokenBucket;

/// Every failure of this crate; `python/errors.rs` converts each variant to one Python exception class.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call failed; becomes the `OSError` subclass for its errno.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// A socket made no progress for the whole timeout.
    #[error("no progress on the socket within the timeout")]
    Timeout,
    /// The file ended before the requested range did.
    #[error("file range ends after {sent} of {expected} bytes")]
    Eof { expected: u64, sent: u64 },
    /// The peer closed the connection before sending everything.
    #[error("connection closed after {received} of {expected} bytes")]
    ShortRead { expected: u64, received: u64 },
    /// A Vortex frame (or a value to encode into one) is malformed; the message names the field.
    #[error("{0}")]
    Vortex(String),
    /// The parent answered with a Vortex error frame: its code and message.
    #[error("remote error {code}: {message}")]
    Remote { code: u8, message: String },
    /// An argument is out of its domain (negative offset, empty buffer, ...).
    #[error("{0}")]
    InvalidArgument(String),
    /// TLS failed: bad PEM data, a certificate the other side or we refused, a protocol error.
    #[error("{0}")]
    Tls(String),
}

pub type Result<T> = std::result::Result<T, Error>;
