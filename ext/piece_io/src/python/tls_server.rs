//! Bindings of Vortex over mutual TLS, the server side (`crate::tls::server`).

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use super::args::{bytes_of, contiguous, non_negative};
use crate::vortex;

/// The server side of mutual TLS for Vortex (`dragonfly.common.tls.server_ssl_context`'s rules), from the PEM
/// files of the cluster CA, this host's certificate chain and its key.
#[pyclass(frozen, module = "_dragonfly_piece_io", name = "TlsServerConfig")]
pub(super) struct TlsServerConfig {
    inner: std::sync::Arc<rustls::ServerConfig>,
}

#[pymethods]
impl TlsServerConfig {
    #[new]
    fn new(ca_cert: &str, cert: &str, key: &str) -> PyResult<Self> {
        let read = |path: &str| {
            std::fs::read(path)
                .map_err(|err| PyOSError::new_err(format!("cannot read {path}: {err}")))
        };
        Ok(TlsServerConfig {
            inner: crate::tls::server_config(&read(ca_cert)?, &read(cert)?, &read(key)?)?,
        })
    }
}

pub(super) fn want_name(want: Option<crate::tls::Want>) -> Option<&'static str> {
    want.map(|want| match want {
        crate::tls::Want::Read => "read",
        crate::tls::Want::Write => "write",
    })
}

/// One TLS server connection over an accepted non-blocking socket that the caller keeps open while this object
/// is used; every method does what the socket allows now and says what to wait for ("read"/"write") otherwise.
#[pyclass(module = "_dragonfly_piece_io", name = "TlsServerStream")]
pub(super) struct TlsServerStream {
    inner: crate::tls::TlsServerStream,
    /// The head of the send in progress, held (not copied) until it is sent.
    head: Option<PyBuffer<u8>>,
}

#[pymethods]
impl TlsServerStream {
    #[new]
    fn new(config: &TlsServerConfig, sock_fd: i32) -> PyResult<Self> {
        Ok(TlsServerStream {
            inner: crate::tls::TlsServerStream::new(config.inner.clone(), sock_fd)?,
            head: None,
        })
    }

    /// Advance the handshake (GIL released: it verifies and signs); None once complete.
    fn handshake(&mut self, py: Python<'_>) -> PyResult<Option<&'static str>> {
        let inner = &mut self.inner;
        Ok(want_name(py.detach(|| inner.handshake())?))
    }

    /// Up to `count` plaintext bytes (b"" once the client closed), or what to wait for.
    fn recv<'py>(&mut self, py: Python<'py>, count: usize) -> PyResult<Bound<'py, PyAny>> {
        if count > vortex::MAX_VALUE_LENGTH + vortex::HEADER_SIZE {
            return Err(PyValueError::new_err(format!(
                "count {count} is larger than a Vortex frame"
            )));
        }
        let inner = &mut self.inner;
        let mut data = vec![0u8; count];
        match py.detach(|| inner.recv(&mut data))? {
            Ok(n) => Ok(PyBytes::new(py, &data[..n]).into_any()),
            Err(want) => Ok(PyString::new(py, want_name(Some(want)).unwrap_or("read")).into_any()),
        }
    }

    /// Begin sending `head` then `length` bytes of `file_fd` from `offset` (file_fd -1 with length 0: head only).
    fn start_send(
        &mut self,
        head: PyBuffer<u8>,
        file_fd: i32,
        offset: i64,
        length: i64,
    ) -> PyResult<()> {
        let offset = non_negative("offset", offset)?;
        let length = non_negative("length", length)?;
        contiguous(&head)?;
        self.inner
            .start_send(head.len_bytes(), file_fd, offset, length)?;
        self.head = Some(head);
        Ok(())
    }

    /// Send what the socket takes now (pread, encrypt, sendmsg; GIL released); None when all is sent.
    fn send_some(&mut self, py: Python<'_>) -> PyResult<Option<&'static str>> {
        let head: &[u8] = match &self.head {
            // SAFETY: the buffer is held in `self.head`, which nothing can drop or replace while this method
            // borrows `self` mutably, so the export outlives the slice; see `bytes_of`.
            Some(buf) => unsafe { bytes_of(buf) },
            None => &[],
        };
        let inner = &mut self.inner;
        let want = py.detach(|| inner.send_some(head))?;
        if want.is_none() {
            self.head = None;
        }
        Ok(want_name(want))
    }
}
