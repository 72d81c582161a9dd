//! Checksums and cryptographic digests for Dragonfly pieces and files.
//!
//! The core is plain Rust so `cargo test` runs without Python; the `python` feature adds the
//! `_dragonfly_hashing` extension module on top of it (see `python.rs`).

mod file;
mod hasher;
#[cfg(feature = "python")]
mod python;

use std::io;
use std::path::PathBuf;

pub use file::{file_digest_fd, file_digest_path};
pub use hasher::{crc32, crc32c, Algorithm, Hasher};

/// Everything that can go wrong in this crate; the Python glue maps each variant to one exception type.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "unknown hash algorithm '{0}', expected one of: crc32, crc32c, sha256, sha512, blake3"
    )]
    UnknownAlgorithm(String),
    #[error("{name} must be >= 0, got {value}")]
    Negative { name: &'static str, value: i64 },
    #[error("file ends at byte {end}, before the end of the requested range at byte {wanted}")]
    UnexpectedEof { end: u64, wanted: u64 },
    #[error("cannot open {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Io(#[from] io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;
