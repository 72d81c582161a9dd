//! Bindings of Vortex over mutual TLS, the client side (`crate::tls::client`).

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::args::{bytes_of_mut, non_negative, timeout, writable};
use super::codec::WireInt;
use super::fetch::{self, Answer};
use crate::vortex;

/// The client side of mutual TLS for Vortex (`dragonfly.common.tls.client_ssl_context`'s rules), from the PEM
/// files of the cluster CA, this host's certificate chain and its key.
#[pyclass(frozen, module = "_dragonfly_piece_io", name = "TlsClientConfig")]
pub(super) struct TlsClientConfig {
    inner: std::sync::Arc<rustls::ClientConfig>,
}

#[pymethods]
impl TlsClientConfig {
    #[new]
    fn new(ca_cert: &str, cert: &str, key: &str) -> PyResult<Self> {
        let read = |path: &str| {
            std::fs::read(path)
                .map_err(|err| PyOSError::new_err(format!("cannot read {path}: {err}")))
        };
        Ok(TlsClientConfig {
            inner: crate::tls::client_config(&read(ca_cert)?, &read(cert)?, &read(key)?)?,
        })
    }
}

/// One TLS client connection over a connected socket that the caller keeps open while this object is used.
#[pyclass(module = "_dragonfly_piece_io", name = "TlsClientStream")]
pub(super) struct TlsClientStream {
    inner: crate::tls::TlsStream,
}

#[pymethods]
impl TlsClientStream {
    /// Handshake with the server at `server_ip` (its certificate must name that IP); GIL released.
    #[new]
    #[pyo3(signature = (config, sock_fd, server_ip, timeout=None))]
    fn new(
        py: Python<'_>,
        config: &TlsClientConfig,
        sock_fd: i32,
        server_ip: &str,
        timeout: Option<f64>,
    ) -> PyResult<Self> {
        let timeout = self::timeout(timeout)?;
        let config = config.inner.clone();
        let inner =
            py.detach(|| crate::tls::TlsStream::connect(config, sock_fd, server_ip, timeout))?;
        Ok(TlsClientStream { inner })
    }

    #[pyo3(signature = (data, timeout=None))]
    fn send_all(&mut self, py: Python<'_>, data: &[u8], timeout: Option<f64>) -> PyResult<()> {
        let timeout = self::timeout(timeout)?;
        let inner = &mut self.inner;
        Ok(py.detach(|| inner.send_all(data, timeout))?)
    }

    #[pyo3(signature = (count, timeout=None))]
    fn recv_exact<'py>(
        &mut self,
        py: Python<'py>,
        count: usize,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        if count > vortex::MAX_VALUE_LENGTH + vortex::HEADER_SIZE {
            return Err(PyValueError::new_err(format!(
                "count {count} is larger than a Vortex frame"
            )));
        }
        let timeout = self::timeout(timeout)?;
        let inner = &mut self.inner;
        let data = py.detach(|| {
            let mut data = vec![0u8; count];
            inner.recv_exact(&mut data, timeout).map(|()| data)
        })?;
        Ok(PyBytes::new(py, &data))
    }

    /// Receive `count` bytes into `file_fd` at `offset` through `buffer`; return (CRC-32, BLAKE3 digest or None).
    #[pyo3(signature = (file_fd, offset, count, buffer, timeout=None, blake3=false))]
    #[allow(clippy::too_many_arguments)]
    fn recv_to_file<'py>(
        &mut self,
        py: Python<'py>,
        file_fd: i32,
        offset: i64,
        count: i64,
        buffer: PyBuffer<u8>,
        timeout: Option<f64>,
        blake3: bool,
    ) -> PyResult<(u32, Option<Bound<'py, PyBytes>>)> {
        let offset = non_negative("offset", offset)?;
        let count = non_negative("count", count)?;
        let timeout = self::timeout(timeout)?;
        writable(&buffer)?;
        // SAFETY: `buffer` lives until after `detach` returns and is writable; see `bytes_of_mut`.
        let bytes = unsafe { bytes_of_mut(&buffer) };
        let inner = &mut self.inner;
        let (crc, digest) =
            py.detach(|| inner.recv_to_file(file_fd, offset, count, bytes, timeout, blake3))?;
        Ok((crc, digest.map(|digest| PyBytes::new(py, &digest))))
    }

    /// Fetch one piece over this connection in one call (`crate::fetch`): the request, the answer checked, the
    /// bytes into `file_fd`; None when `reused` and the connection was closed before any answer byte.
    #[pyo3(
        signature = (
            task_id, number, offset, length, file_fd, buffer, timeout=None, *,
            tag=WireInt::new(vortex::TAG_DOWNLOAD_PIECE), blake3=false, reused=false
        ),
        text_signature = "($self, task_id, number, offset, length, file_fd, buffer, timeout=None, *, tag=0, blake3=False, reused=False)"
    )]
    #[allow(clippy::too_many_arguments)]
    fn fetch_piece<'py>(
        &mut self,
        py: Python<'py>,
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
        fetch::run(
            py,
            &mut self.inner,
            task_id,
            number,
            offset,
            length,
            file_fd,
            buffer,
            timeout,
            tag,
            blake3,
            reused,
        )
    }
}
