//! Bindings of the one-call piece fetch (`crate::fetch`), over a plaintext socket here and over the native TLS
//! stream as `TlsClientStream.fetch_piece`.

use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::args::{bytes_of_mut, non_negative, timeout, writable};
use super::codec::WireInt;
use crate::fetch::{self, Link, Wanted};
use crate::vortex;

/// What a fetch answers Python: `(digest, crc32, blake3 or None)`, or None when `reused` and the connection
/// turned out closed before any byte of the answer (the caller asks again on a fresh one).
pub(super) type Answer<'py> = Option<(String, u32, Option<Bound<'py, PyBytes>>)>;

/// Check the arguments in the twin's order, run the fetch with the GIL released, convert the outcome.
#[allow(clippy::too_many_arguments)]
pub(super) fn run<'py, L: Link + Send>(
    py: Python<'py>,
    link: &mut L,
    task_id: &str,
    number: WireInt,
    offset: i64,
    length: i64,
    file_fd: i32,
    buffer: PyBuffer<u8>,
    timeout: Option<f64>,
    tag: WireInt,
    blake3: bool,
    reused: bool,
) -> PyResult<Answer<'py>> {
    let number = number.get(py, "piece_number", "u32")?;
    let tag = tag.get(py, "tag", "u8")?;
    let offset = non_negative("offset", offset)?;
    let length = non_negative("length", length)?;
    let timeout = self::timeout(timeout)?;
    writable(&buffer)?;
    // SAFETY: `buffer` lives until after `detach` returns and is writable; see `bytes_of_mut`.
    let bytes = unsafe { bytes_of_mut(&buffer) };
    let wanted = Wanted {
        tag,
        task_id,
        number,
        offset,
        length,
    };
    match py.detach(|| fetch::fetch_piece(link, &wanted, file_fd, bytes, timeout, blake3)) {
        Ok(got) => Ok(Some((
            got.digest,
            got.crc,
            got.blake3.map(|digest| PyBytes::new(py, &digest)),
        ))),
        Err(failure) if failure.stale && reused => Ok(None),
        Err(failure) => Err(failure.error.into()),
    }
}

/// Fetch piece `number` of `task_id` over the connected socket `sock_fd` into `file_fd` (see `crate::fetch`).
#[pyfunction]
#[pyo3(
    signature = (
        sock_fd, task_id, number, offset, length, file_fd, buffer, timeout=None, *,
        tag=WireInt::new(vortex::TAG_DOWNLOAD_PIECE), blake3=false, reused=false
    ),
    text_signature = "(sock_fd, task_id, number, offset, length, file_fd, buffer, timeout=None, *, tag=0, blake3=False, reused=False)"
)]
#[allow(clippy::too_many_arguments)]
pub(super) fn fetch_piece<'py>(
    py: Python<'py>,
    sock_fd: i32,
    task_id: &str,
    number: WireInt,
    offset: i64,
    length: i64,
    file_fd: i32,
    buffer: PyBuffer<u8>,
    timeout: Option<f64>,
    tag: WireInt,
    blake3: bool,
    reused: bool,
) -> PyResult<Answer<'py>> {
    let mut link = fetch::PlainLink(sock_fd);
    run(
        py, &mut link, task_id, number, offset, length, file_fd, buffer, timeout, tag, blake3,
        reused,
    )
}
