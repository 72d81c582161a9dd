//! Bindings of positional piece I/O and the socket/file transfers (`piece.rs`, `sendfile.rs`, `recv.rs`).

use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::args::{bytes_of, bytes_of_mut, contiguous, non_negative, timeout, writable};

#[pyfunction]
pub(super) fn write_piece(
    py: Python<'_>,
    fd: i32,
    offset: i64,
    data: PyBuffer<u8>,
) -> PyResult<u32> {
    let offset = non_negative("offset", offset)?;
    contiguous(&data)?;
    // SAFETY: `data` lives until the end of this function, after `detach` returns; see `bytes_of`.
    let bytes = unsafe { bytes_of(&data) };
    Ok(py.detach(|| crate::write_piece(fd, offset, bytes))?)
}

#[pyfunction]
pub(super) fn read_piece(
    py: Python<'_>,
    fd: i32,
    offset: i64,
    buffer: PyBuffer<u8>,
) -> PyResult<usize> {
    let offset = non_negative("offset", offset)?;
    writable(&buffer)?;
    // SAFETY: `buffer` lives until after `detach` returns and is writable; see `bytes_of_mut`.
    let bytes = unsafe { bytes_of_mut(&buffer) };
    Ok(py.detach(|| crate::read_piece(fd, offset, bytes))?)
}

#[pyfunction]
#[pyo3(signature = (sock_fd, file_fd, offset, count, timeout=None))]
pub(super) fn sendfile(
    py: Python<'_>,
    sock_fd: i32,
    file_fd: i32,
    offset: i64,
    count: i64,
    timeout: Option<f64>,
) -> PyResult<u64> {
    let offset = non_negative("offset", offset)?;
    let count = non_negative("count", count)?;
    let timeout = self::timeout(timeout)?;
    Ok(py.detach(|| crate::sendfile(sock_fd, file_fd, offset, count, timeout))?)
}

#[pyfunction]
#[pyo3(signature = (sock_fd, file_fd, offset, count, buffer, timeout=None))]
pub(super) fn recv_to_file(
    py: Python<'_>,
    sock_fd: i32,
    file_fd: i32,
    offset: i64,
    count: i64,
    buffer: PyBuffer<u8>,
    timeout: Option<f64>,
) -> PyResult<u32> {
    let offset = non_negative("offset", offset)?;
    let count = non_negative("count", count)?;
    let timeout = self::timeout(timeout)?;
    writable(&buffer)?;
    // SAFETY: `buffer` lives until after `detach` returns and is writable; see `bytes_of_mut`.
    let bytes = unsafe { bytes_of_mut(&buffer) };
    Ok(py.detach(|| crate::recv_to_file(sock_fd, file_fd, offset, count, bytes, timeout))?)
}

#[pyfunction]
#[pyo3(signature = (sock_fd, file_fd, offset, count, buffer, timeout=None))]
pub(super) fn recv_to_file_blake3<'py>(
    py: Python<'py>,
    sock_fd: i32,
    file_fd: i32,
    offset: i64,
    count: i64,
    buffer: PyBuffer<u8>,
    timeout: Option<f64>,
) -> PyResult<(u32, Bound<'py, PyBytes>)> {
    let offset = non_negative("offset", offset)?;
    let count = non_negative("count", count)?;
    let timeout = self::timeout(timeout)?;
    writable(&buffer)?;
    // SAFETY: `buffer` lives until after `detach` returns and is writable; see `bytes_of_mut`.
    let bytes = unsafe { bytes_of_mut(&buffer) };
    let (crc, digest) =
        py.detach(|| crate::recv_to_file_blake3(sock_fd, file_fd, offset, count, bytes, timeout))?;
    Ok((crc, PyBytes::new(py, &digest)))
}
