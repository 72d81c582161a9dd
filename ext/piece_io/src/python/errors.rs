//! Error conversion: each `crate::Error` variant becomes one Python exception class (the twin's classes).

use pyo3::exceptions::{PyEOFError, PyOSError, PyTimeoutError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyTuple, PyType};

use crate::Error;

static SHORT_READ: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static VORTEX_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static VORTEX_REMOTE_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();
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
            Error::Remote { code, message } => {
                Python::attach(|py| match (code, message).into_pyobject(py) {
                    Ok(args) => domain_error(py, &VORTEX_REMOTE_ERROR, "VortexRemoteError", args),
                    Err(err) => err,
                })
            }
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

pub(super) fn vortex_error(py: Python<'_>, message: String) -> PyErr {
    match (message,).into_pyobject(py) {
        Ok(args) => domain_error(py, &VORTEX_ERROR, "VortexError", args),
        Err(err) => err,
    }
}
