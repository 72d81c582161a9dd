//! The `_dragonfly_piece_io` module: buffer extraction, argument checks, GIL release and error conversion.

use std::time::Duration;

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{
    PyBufferError, PyEOFError, PyOSError, PyOverflowError, PyTimeoutError, PyTypeError,
    PyValueError,
};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyBytes, PyString, PyTuple, PyType};

use crate::vortex;
use crate::Error;

static SHORT_READ: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static VORTEX_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static SSL_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// Instantiate a class of `dragonfly.common.errors`, so Python code catches the very classes the twin raises.
fn domain_error<'py>(
    py: Python<'py>,
    cell: &PyOnceLock<Py<PyType>>,
    name: &str,
    args: Bound<'py, PyTuple>,
) -> PyErr {
    match cell
        .import(py, "dragonfly.common.errors", name)
        .and_then(|class| class.call1(args))
    {
        Ok(instance) => PyErr::from_value(instance),
        Err(err) => err,
    }
}

fn strerror(code: i32) -> String {
    let mut buf = [0 as libc::c_char; 256];
    // SAFETY: `buf` is writable for its whole length, which we pass; the XSI strerror_r NUL-terminates on success.
    let rc = unsafe { libc::strerror_r(code, buf.as_mut_ptr(), buf.len()) };
    if rc != 0 {
        return format!("Unknown error {code}");
    }
    // SAFETY: on success strerror_r wrote a NUL-terminated string into `buf`.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

impl From<Error> for PyErr {
    fn from(err: Error) -> PyErr {
        match err {
            // OSError(errno, strerror) picks the subclass (ConnectionResetError, ...) as os.* functions do.
            Error::Io(io) => match io.raw_os_error() {
                Some(code) => PyOSError::new_err((code, strerror(code))),
                None => PyOSError::new_err(io.to_string()),
            },
            Error::Timeout => PyTimeoutError::new_err(Error::Timeout.to_string()),
            err @ Error::Eof { .. } => PyEOFError::new_err(err.to_string()),
            Error::ShortRead { expected, received } => {
                Python::attach(|py| match (expected, received).into_pyobject(py) {
                    Ok(args) => domain_error(py, &SHORT_READ, "ShortRead", args),
                    Err(err) => err,
                })
            }
            Error::Vortex(message) => Python::attach(|py| vortex_error(py, message)),
            Error::InvalidArgument(message) => PyValueError::new_err(message),
            // ssl.SSLError, as the Python twin (the ssl module) raises for the same failures.
            Error::Tls(message) => Python::attach(|py| {
                match SSL_ERROR
                    .import(py, "ssl", "SSLError")
                    .and_then(|class| class.call1((message,)))
                {
                    Ok(instance) => PyErr::from_value(instance),
                    Err(err) => err,
                }
            }),
        }
    }
}

fn vortex_error(py: Python<'_>, message: String) -> PyErr {
    match (message,).into_pyobject(py) {
        Ok(args) => domain_error(py, &VORTEX_ERROR, "VortexError", args),
        Err(err) => err,
    }
}

fn non_negative(name: &str, value: i64) -> PyResult<u64> {
    u64::try_from(value)
        .map_err(|_| PyValueError::new_err(format!("{name} must be non-negative, got {value}")))
}

fn timeout(value: Option<f64>) -> PyResult<Option<Duration>> {
    match value {
        None => Ok(None),
        // A timeout too long for a Duration is no timeout in practice.
        Some(secs) if secs.is_finite() && secs >= 0.0 => Ok(Duration::try_from_secs_f64(secs).ok()),
        Some(_) => Err(PyValueError::new_err(
            "timeout must be None or a finite number >= 0",
        )),
    }
}

fn contiguous(buf: &PyBuffer<u8>) -> PyResult<()> {
    if buf.is_c_contiguous() {
        Ok(())
    } else {
        Err(PyBufferError::new_err("buffer must be C-contiguous"))
    }
}

fn writable(buf: &PyBuffer<u8>) -> PyResult<()> {
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
unsafe fn bytes_of(buf: &PyBuffer<u8>) -> &[u8] {
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
unsafe fn bytes_of_mut(buf: &PyBuffer<u8>) -> &mut [u8] {
    if buf.len_bytes() == 0 {
        return &mut [];
    }
    // SAFETY: per this function's contract the export is live, writable and C-contiguous.
    unsafe { std::slice::from_raw_parts_mut(buf.buf_ptr() as *mut u8, buf.len_bytes()) }
}

/// Run `f` on the bytes of any bytes-like object, without copying.
fn with_bytes<R>(value: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> R) -> PyResult<R> {
    if let Ok(bytes) = value.cast::<PyBytes>() {
        return Ok(f(bytes.as_bytes()));
    }
    let buf = PyBuffer::<u8>::get(value)?;
    contiguous(&buf)?;
    // SAFETY: `buf` outlives the slice (dropped at the end of this function); we hold the GIL throughout, so no
    // Python code can touch the exporter meanwhile.
    Ok(f(unsafe { bytes_of(&buf) }))
}

#[pyfunction]
fn write_piece(py: Python<'_>, fd: i32, offset: i64, data: PyBuffer<u8>) -> PyResult<u32> {
    let offset = non_negative("offset", offset)?;
    contiguous(&data)?;
    // SAFETY: `data` lives until the end of this function, after `detach` returns; see `bytes_of`.
    let bytes = unsafe { bytes_of(&data) };
    Ok(py.detach(|| crate::write_piece(fd, offset, bytes))?)
}

#[pyfunction]
fn read_piece(py: Python<'_>, fd: i32, offset: i64, buffer: PyBuffer<u8>) -> PyResult<usize> {
    let offset = non_negative("offset", offset)?;
    writable(&buffer)?;
    // SAFETY: `buffer` lives until after `detach` returns and is writable; see `bytes_of_mut`.
    let bytes = unsafe { bytes_of_mut(&buffer) };
    Ok(py.detach(|| crate::read_piece(fd, offset, bytes))?)
}

#[pyfunction]
#[pyo3(signature = (sock_fd, file_fd, offset, count, timeout=None))]
fn sendfile(
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
fn recv_to_file(
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
fn recv_to_file_blake3<'py>(
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

/// The client side of mutual TLS for Vortex (`dragonfly.common.tls.client_ssl_context`'s rules), from the PEM
/// files of the cluster CA, this host's certificate chain and its key.
#[pyclass(frozen, module = "_dragonfly_piece_io", name = "TlsClientConfig")]
struct TlsClientConfig {
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
struct TlsClientStream {
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
}

/// The server side of mutual TLS for Vortex (`dragonfly.common.tls.server_ssl_context`'s rules), from the PEM
/// files of the cluster CA, this host's certificate chain and its key.
#[pyclass(frozen, module = "_dragonfly_piece_io", name = "TlsServerConfig")]
struct TlsServerConfig {
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
            inner: crate::tls_server::server_config(&read(ca_cert)?, &read(cert)?, &read(key)?)?,
        })
    }
}

fn want_name(want: Option<crate::tls_server::Want>) -> Option<&'static str> {
    want.map(|want| match want {
        crate::tls_server::Want::Read => "read",
        crate::tls_server::Want::Write => "write",
    })
}

/// One TLS server connection over an accepted non-blocking socket that the caller keeps open while this object
/// is used; every method does what the socket allows now and says what to wait for ("read"/"write") otherwise.
#[pyclass(module = "_dragonfly_piece_io", name = "TlsServerStream")]
struct TlsServerStream {
    inner: crate::tls_server::TlsServerStream,
    /// The head of the send in progress, held (not copied) until it is sent.
    head: Option<PyBuffer<u8>>,
}

#[pymethods]
impl TlsServerStream {
    #[new]
    fn new(config: &TlsServerConfig, sock_fd: i32) -> PyResult<Self> {
        Ok(TlsServerStream {
            inner: crate::tls_server::TlsServerStream::new(config.inner.clone(), sock_fd)?,
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

/// Token bucket for host-level rate limits (bytes/s, 0 = unlimited), shared by threads.
#[pyclass(frozen, module = "_dragonfly_piece_io", name = "TokenBucket")]
struct TokenBucket {
    inner: crate::TokenBucket,
}

#[pymethods]
impl TokenBucket {
    #[new]
    #[pyo3(signature = (rate, burst=None))]
    fn new(rate: f64, burst: Option<f64>) -> PyResult<Self> {
        Ok(TokenBucket {
            inner: crate::TokenBucket::new(rate, burst)?,
        })
    }

    /// Take `n` tokens, blocking (GIL released) until they are covered.
    fn acquire(&self, py: Python<'_>, n: i64) -> PyResult<()> {
        let n = non_negative("n", n)?;
        py.detach(|| self.inner.acquire(n));
        Ok(())
    }

    /// Take `n` tokens now and return the seconds the caller must wait before using them.
    fn reserve(&self, n: i64) -> PyResult<f64> {
        Ok(self.inner.reserve(non_negative("n", n)?))
    }

    /// Take `n` tokens only if they are available now.
    fn try_acquire(&self, n: i64) -> PyResult<bool> {
        Ok(self.inner.try_acquire(non_negative("n", n)?))
    }

    #[pyo3(signature = (rate, burst=None))]
    fn set_rate(&self, rate: f64, burst: Option<f64>) -> PyResult<()> {
        Ok(self.inner.set_rate(rate, burst)?)
    }

    #[getter]
    fn rate(&self) -> f64 {
        self.inner.rate()
    }

    #[getter]
    fn burst(&self) -> f64 {
        self.inner.burst()
    }
}

/// A Python int as given, kept until the range check that names its field (so both sides word it alike).
enum WireInt {
    Fits(i128),
    Huge(String),
}

impl<'a, 'py> FromPyObject<'a, 'py> for WireInt {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        match obj.extract::<i128>() {
            Ok(value) => Ok(WireInt::Fits(value)),
            Err(err) if err.is_instance_of::<PyOverflowError>(obj.py()) => {
                Ok(WireInt::Huge(obj.str()?.to_string()))
            }
            Err(err) => Err(err),
        }
    }
}

impl WireInt {
    const fn new(value: u8) -> Self {
        WireInt::Fits(value as i128)
    }

    /// Convert to the wire type, or a VortexError naming the field.
    fn get<T: TryFrom<i128>>(self, py: Python<'_>, name: &str, kind: &str) -> PyResult<T> {
        let text = match self {
            WireInt::Fits(value) => match T::try_from(value) {
                Ok(value) => return Ok(value),
                Err(_) => value.to_string(),
            },
            WireInt::Huge(text) => text,
        };
        Err(vortex_error(
            py,
            format!("{name} {text} out of range for {kind}"),
        ))
    }
}

/// Metadata of one piece, as a Vortex PieceContent frame carries it.
#[pyclass(frozen, module = "_dragonfly_piece_io", name = "PieceMetadata")]
struct PieceMetadata {
    inner: vortex::PieceMetadata,
}

#[pymethods]
impl PieceMetadata {
    #[new]
    #[pyo3(signature = (*, number, offset, length, digest, parent_id, traffic_type, cost_secs, created_at))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        number: WireInt,
        offset: WireInt,
        length: WireInt,
        digest: String,
        parent_id: String,
        traffic_type: WireInt,
        cost_secs: WireInt,
        created_at: WireInt,
    ) -> PyResult<Self> {
        let inner = vortex::PieceMetadata {
            number: number.get(py, "number", "u32")?,
            offset: offset.get(py, "offset", "u64")?,
            length: length.get(py, "length", "u64")?,
            digest,
            parent_id,
            traffic_type: traffic_type.get(py, "traffic_type", "u8")?,
            cost_secs: cost_secs.get(py, "cost_secs", "u64")?,
            created_at: created_at.get(py, "created_at", "i64")?,
        };
        Ok(PieceMetadata { inner })
    }

    #[getter]
    fn number(&self) -> u32 {
        self.inner.number
    }

    #[getter]
    fn offset(&self) -> u64 {
        self.inner.offset
    }

    #[getter]
    fn length(&self) -> u64 {
        self.inner.length
    }

    #[getter]
    fn digest(&self) -> &str {
        &self.inner.digest
    }

    #[getter]
    fn parent_id(&self) -> &str {
        &self.inner.parent_id
    }

    #[getter]
    fn traffic_type(&self) -> u8 {
        self.inner.traffic_type
    }

    #[getter]
    fn cost_secs(&self) -> u64 {
        self.inner.cost_secs
    }

    #[getter]
    fn created_at(&self) -> i64 {
        self.inner.created_at
    }

    fn __eq__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> Py<PyAny> {
        match other.cast::<PieceMetadata>() {
            Ok(other) => PyBool::new(py, self.inner == other.get().inner)
                .to_owned()
                .into_any()
                .unbind(),
            Err(_) => py.NotImplemented(),
        }
    }

    /// Hash like the twin's frozen dataclass: the hash of the tuple of fields.
    fn __hash__(&self, py: Python<'_>) -> PyResult<isize> {
        self.fields(py)?.hash()
    }

    /// The twin's dataclass repr, field for field.
    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let m = &self.inner;
        Ok(format!(
            "PieceMetadata(number={}, offset={}, length={}, digest={}, parent_id={}, traffic_type={}, cost_secs={}, created_at={})",
            m.number,
            m.offset,
            m.length,
            PyString::new(py, &m.digest).repr()?,
            PyString::new(py, &m.parent_id).repr()?,
            m.traffic_type,
            m.cost_secs,
            m.created_at,
        ))
    }
}

impl PieceMetadata {
    fn fields<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let m = &self.inner;
        (
            m.number,
            m.offset,
            m.length,
            m.digest.as_str(),
            m.parent_id.as_str(),
            m.traffic_type,
            m.cost_secs,
            m.created_at,
        )
            .into_pyobject(py)
    }
}

#[pyfunction]
#[pyo3(
    signature = (task_id, piece_number, frame_id=WireInt::new(0), tag=WireInt::new(vortex::TAG_DOWNLOAD_PIECE)),
    text_signature = "(task_id, piece_number, frame_id=0, tag=0)"
)]
fn encode_download_piece<'py>(
    py: Python<'py>,
    task_id: &str,
    piece_number: WireInt,
    frame_id: WireInt,
    tag: WireInt,
) -> PyResult<Bound<'py, PyBytes>> {
    let piece_number = piece_number.get(py, "piece_number", "u32")?;
    let frame_id = frame_id.get(py, "frame_id", "u8")?;
    let tag = tag.get(py, "tag", "u8")?;
    Ok(PyBytes::new(
        py,
        &vortex::encode_download_piece(task_id, piece_number, frame_id, tag)?,
    ))
}

#[pyfunction]
fn decode_header(buf: &Bound<'_, PyAny>) -> PyResult<(u8, u8, u32)> {
    Ok(with_bytes(buf, vortex::decode_header)??)
}

#[pyfunction]
fn decode_download_piece(value: &Bound<'_, PyAny>) -> PyResult<(String, u32)> {
    Ok(with_bytes(value, vortex::decode_download_piece)??)
}

#[pyfunction]
#[pyo3(
    signature = (meta, frame_id=WireInt::new(0), tag=WireInt::new(vortex::TAG_PIECE_CONTENT)),
    text_signature = "(meta, frame_id=0, tag=1)"
)]
fn encode_piece_content<'py>(
    py: Python<'py>,
    meta: PyRef<'py, PieceMetadata>,
    frame_id: WireInt,
    tag: WireInt,
) -> PyResult<Bound<'py, PyBytes>> {
    let frame_id = frame_id.get(py, "frame_id", "u8")?;
    let tag = tag.get(py, "tag", "u8")?;
    Ok(PyBytes::new(
        py,
        &vortex::encode_piece_content(&meta.inner, frame_id, tag)?,
    ))
}

#[pyfunction]
fn decode_piece_content(value: &Bound<'_, PyAny>) -> PyResult<PieceMetadata> {
    let inner = with_bytes(value, vortex::decode_piece_content)??;
    Ok(PieceMetadata { inner })
}

#[pyfunction]
#[pyo3(signature = (code, message, frame_id=WireInt::new(0)), text_signature = "(code, message, frame_id=0)")]
fn encode_error<'py>(
    py: Python<'py>,
    code: WireInt,
    message: &str,
    frame_id: WireInt,
) -> PyResult<Bound<'py, PyBytes>> {
    let code = code.get(py, "code", "u8")?;
    let frame_id = frame_id.get(py, "frame_id", "u8")?;
    Ok(PyBytes::new(
        py,
        &vortex::encode_error(code, message, frame_id)?,
    ))
}

#[pyfunction]
fn decode_error(value: &Bound<'_, PyAny>) -> PyResult<(u8, String)> {
    Ok(with_bytes(value, vortex::decode_error)??)
}

#[pyfunction]
#[pyo3(signature = (frame_id=WireInt::new(0)), text_signature = "(frame_id=0)")]
fn encode_close<'py>(py: Python<'py>, frame_id: WireInt) -> PyResult<Bound<'py, PyBytes>> {
    let frame_id = frame_id.get(py, "frame_id", "u8")?;
    Ok(PyBytes::new(py, &vortex::encode_close(frame_id)))
}

/// Piece I/O for dragonfly: positional piece read/write with CRC-32, sendfile, socket-to-file receive, the Vortex
/// codec and a token bucket; every blocking call releases the GIL.
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
    m.add_class::<TokenBucket>()?;
    m.add_class::<PieceMetadata>()?;
    m.add_class::<TlsClientConfig>()?;
    m.add_class::<TlsClientStream>()?;
    m.add_class::<TlsServerConfig>()?;
    m.add_class::<TlsServerStream>()?;
    m.add_function(wrap_pyfunction!(write_piece, m)?)?;
    m.add_function(wrap_pyfunction!(read_piece, m)?)?;
    m.add_function(wrap_pyfunction!(sendfile, m)?)?;
    m.add_function(wrap_pyfunction!(recv_to_file, m)?)?;
    m.add_function(wrap_pyfunction!(recv_to_file_blake3, m)?)?;
    m.add_function(wrap_pyfunction!(encode_download_piece, m)?)?;
    m.add_function(wrap_pyfunction!(decode_header, m)?)?;
    m.add_function(wrap_pyfunction!(decode_download_piece, m)?)?;
    m.add_function(wrap_pyfunction!(encode_piece_content, m)?)?;
    m.add_function(wrap_pyfunction!(decode_piece_content, m)?)?;
    m.add_function(wrap_pyfunction!(encode_error, m)?)?;
    m.add_function(wrap_pyfunction!(decode_error, m)?)?;
    m.add_function(wrap_pyfunction!(encode_close, m)?)?;
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
