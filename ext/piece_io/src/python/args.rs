//! Argument checks and buffer access shared by the bindings, worded as the twin words them.

use std::time::Duration;

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyBufferError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

pub(super) fn non_negative(name: &str, value: i64) -> PyResult<u64> {
    u64::try_from(value)
        .map_err(|_| PyValueError::new_err(format!("{name} must be non-negative, got {value}")))
}

pub(super) fn timeout(value: Option<f64>) -> PyResult<Option<Duration>> {
    match value {
        None => Ok(None),
        // A timeout too long for a Duration is no timeout in practice.
        Some(secs) if secs.is_finite() && secs >= 0.0 => Ok(Duration::try_from_secs_f64(secs).ok()),
        Some(_) => Err(PyValueError::new_err(
            "timeout must be None or a finite number >= 0",
        )),
    }
}

pub(super) fn contiguous(buf: &PyBuffer<u8>) -> PyResult<()> {
    if buf.is_c_contiguous() {
        Ok(())
    } else {
        Err(PyBufferError::new_err("buffer must be C-contiguous"))
    }
}

pub(super) fn writable(buf: &PyBuffer<u8>) -> PyResult<()> {
    if buf.readonly() {
        return Err(PyTypeError::new_err("buffer must be writable"));
    }
    contiguous(buf)
}

/// The bytes of a C-contiguous buffer.
///
/// SAFETY (for callers): the slice must not outlive `buf`, and nothing may resize or free the exporter's memory
/// meanwhile. Holding the `PyBuffer` keeps the export open, and exporters refuse to resize while exported
/// (bytearray raises BufferError), so the memory stays valid until `buf` drops.
/// The caller owns the buffer for the duration of the call (CONVENTIONS: one owner at a time); a thread that
/// writes into it meanwhile breaks that contract and gets unspecified piece bytes.
pub(super) unsafe fn bytes_of(buf: &PyBuffer<u8>) -> &[u8] {
    if buf.len_bytes() == 0 {
        return &[];
    }
    // SAFETY: per this function's contract the export is live and C-contiguous, so `buf_ptr` addresses
    // `len_bytes` initialised bytes.
    unsafe { std::slice::from_raw_parts(buf.buf_ptr() as *const u8, buf.len_bytes()) }
}

/// The bytes of a writable C-contiguous buffer; the same contract as [`bytes_of`], and one owner at a time
/// (the caller gave us the buffer for the duration of the call).
#[allow(clippy::mut_from_ref)]
pub(super) unsafe fn bytes_of_mut(buf: &PyBuffer<u8>) -> &mut [u8] {
    if buf.len_bytes() == 0 {
        return &mut [];
    }
    // SAFETY: per this function's contract the export is live, writable and C-contiguous.
    unsafe { std::slice::from_raw_parts_mut(buf.buf_ptr() as *mut u8, buf.len_bytes()) }
}

/// Run `f` on the bytes of any bytes-like object, without copying.
pub(super) fn with_bytes<R>(value: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> R) -> PyResult<R> {
    if let Ok(bytes) = value.cast::<PyBytes>() {
        return Ok(f(bytes.as_bytes()));
    }
    let buf = PyBuffer::<u8>::get(value)?;
    contiguous(&buf)?;
    // SAFETY: `buf` outlives the slice (dropped at the end of this function); we hold the GIL throughout, so no
    // Python code can touch the exporter meanwhile.
    Ok(f(unsafe { bytes_of(&buf) }))
}
