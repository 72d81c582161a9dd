//! The `_dragonfly_hashing` extension module: argument conversion, GIL release and error mapping only.

use std::io;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};

use pyo3::exceptions::{PyEOFError, PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyInt, PyTuple};
use pyo3::{ffi, PyErr};

use crate::{file_digest_fd, file_digest_path, Algorithm, Error};

/// Below this many bytes, releasing and re-taking the GIL costs more than the hashing (blake3-py's threshold).
const RELEASE_GIL_THRESHOLD: usize = 2048;

impl From<Error> for PyErr {
    fn from(err: Error) -> PyErr {
        match err {
            Error::UnknownAlgorithm(_) | Error::Negative { .. } => {
                PyValueError::new_err(err.to_string())
            }
            Error::UnexpectedEof { .. } => PyEOFError::new_err(err.to_string()),
            Error::Open { path, source } => os_error(source, Some(path)),
            Error::Io(source) => os_error(source, None),
        }
    }
}

/// Build the exception `os.open`/`os.pread` would raise: the OSError subclass for the errno, with `errno` set.
fn os_error(err: io::Error, filename: Option<PathBuf>) -> PyErr {
    let Some(errno) = err.raw_os_error() else {
        return PyOSError::new_err(err.to_string());
    };
    Python::attach(|py| {
        let strerror = match py
            .import("os")
            .and_then(|os| os.call_method1("strerror", (errno,)))
        {
            Ok(strerror) => strerror,
            Err(lookup_failed) => return lookup_failed,
        };
        // Calling OSError itself (not PyErr::new) lets CPython pick FileNotFoundError, ... from the errno.
        let os_error = py.get_type::<PyOSError>();
        let instance = match filename {
            // As a str, like the path os.open was given: PathBuf would become a pathlib.Path.
            Some(path) => os_error.call1((errno, strerror, path.into_os_string())),
            None => os_error.call1((errno, strerror)),
        };
        match instance {
            Ok(instance) => PyErr::from_value(instance),
            Err(construction_failed) => construction_failed,
        }
    })
}

/// A borrowed view of any C-contiguous buffer-protocol object, released on drop.
///
/// `PyBUF_SIMPLE` (what `zlib.crc32` asks for) rather than `PyBuffer<u8>`: it accepts every contiguous buffer
/// whatever its item format (`array('I')`, `memoryview.cast('Q')`), and the exporter itself raises `BufferError`
/// for non-contiguous memory, so no copy is ever made.
struct ByteView {
    // Boxed so the Py_buffer keeps its address while exported; exporters may point into it.
    view: Box<ffi::Py_buffer>,
}

impl ByteView {
    fn new(obj: &Bound<'_, PyAny>) -> PyResult<Self> {
        let mut view = Box::new(ffi::Py_buffer::new());
        // SAFETY: `obj` is a live object (we hold a reference and are attached) and `view` points to a writable
        // Py_buffer that lives as long as this ByteView.
        if unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), &mut *view, ffi::PyBUF_SIMPLE) } == -1 {
            return Err(PyErr::fetch(obj.py()));
        }
        Ok(ByteView { view })
    }

    fn as_slice(&self) -> &[u8] {
        if self.view.len <= 0 || self.view.buf.is_null() {
            return &[];
        }
        // SAFETY: a successful PyBUF_SIMPLE request yields `len` contiguous readable bytes at `buf`, kept alive
        // (and unresizable: resizing an exported bytearray raises) until PyBuffer_Release in drop. Other Python
        // threads may still write into a mutable buffer while the GIL is released; every byte pattern is a valid
        // `u8`, so that is a data race on the caller's bytes, never undefined behaviour in our code's logic.
        unsafe { std::slice::from_raw_parts(self.view.buf.cast::<u8>(), self.view.len as usize) }
    }
}

impl Drop for ByteView {
    fn drop(&mut self) {
        // SAFETY: the view was filled by a successful PyObject_GetBuffer and is released exactly once, attached.
        Python::attach(|_| unsafe { ffi::PyBuffer_Release(&mut *self.view) });
    }
}

/// Run `work` on `data`, releasing the GIL when the input is large enough to be worth it.
fn with_data<T: Send>(py: Python<'_>, data: &[u8], work: impl FnOnce(&[u8]) -> T + Send) -> T {
    if data.len() < RELEASE_GIL_THRESHOLD {
        work(data)
    } else {
        py.detach(|| work(data))
    }
}

fn lock(state: &Mutex<crate::Hasher>) -> MutexGuard<'_, crate::Hasher> {
    // The state is only mutated by infallible hash updates, so a poisoned lock still holds a consistent state.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Return CRC-32/IEEE of `data` continuing from `value`, like `zlib.crc32`.
#[pyfunction]
#[pyo3(signature = (data, value = 0))]
fn crc32(py: Python<'_>, data: &Bound<'_, PyAny>, value: u32) -> PyResult<u32> {
    let view = ByteView::new(data)?;
    Ok(with_data(py, view.as_slice(), |bytes| {
        crate::crc32(bytes, value)
    }))
}

/// Return CRC-32C (Castagnoli) of `data` continuing from `value`.
#[pyfunction]
#[pyo3(signature = (data, value = 0))]
fn crc32c(py: Python<'_>, data: &Bound<'_, PyAny>, value: u32) -> PyResult<u32> {
    let view = ByteView::new(data)?;
    Ok(with_data(py, view.as_slice(), |bytes| {
        crate::crc32c(bytes, value)
    }))
}

/// Return the digest of `length` bytes (None: to the end) of a file, given as an int fd or a path, from `offset`.
#[pyfunction]
#[pyo3(signature = (algorithm, file, offset = 0, length = None))]
fn file_digest<'py>(
    py: Python<'py>,
    algorithm: &str,
    file: &Bound<'py, PyAny>,
    offset: i64,
    length: Option<i64>,
) -> PyResult<Bound<'py, PyBytes>> {
    let algorithm: Algorithm = algorithm.parse()?;
    let digest = if file.is_instance_of::<PyInt>() {
        let fd: RawFd = file.extract()?;
        py.detach(|| file_digest_fd(algorithm, fd, offset, length))?
    } else {
        let path: PathBuf = file.extract().map_err(|_| {
            let type_name = file
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default();
            PyTypeError::new_err(format!(
                "file must be an int fd or a str or os.PathLike path, not {type_name}"
            ))
        })?;
        py.detach(|| file_digest_path(algorithm, &path, offset, length))?
    };
    Ok(PyBytes::new(py, &digest))
}

/// A streaming hash; safe to share between threads (updates are serialised).
#[pyclass(frozen, module = "_dragonfly_hashing", name = "Hasher")]
struct Hasher {
    algorithm: Algorithm,
    state: Mutex<crate::Hasher>,
}

impl Hasher {
    /// Run `work` on the state, waiting for the lock without the GIL if another thread holds it.
    fn with_state<T: Send>(
        &self,
        py: Python<'_>,
        work: impl FnOnce(&mut crate::Hasher) -> T + Send,
    ) -> T {
        match self.state.try_lock() {
            Ok(mut state) => work(&mut state),
            Err(_) => py.detach(|| work(&mut lock(&self.state))),
        }
    }
}

#[pymethods]
impl Hasher {
    #[new]
    #[pyo3(signature = (algorithm, data = None))]
    fn new(py: Python<'_>, algorithm: &str, data: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let algorithm: Algorithm = algorithm.parse()?;
        let hasher = Hasher {
            algorithm,
            state: Mutex::new(crate::Hasher::new(algorithm)),
        };
        if let Some(data) = data {
            hasher.update(py, data)?;
        }
        Ok(hasher)
    }

    /// Hash more bytes.
    fn update(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let view = ByteView::new(data)?;
        let bytes = view.as_slice();
        if bytes.len() < RELEASE_GIL_THRESHOLD {
            self.with_state(py, |state| state.update(bytes));
        } else {
            py.detach(|| lock(&self.state).update(bytes));
        }
        Ok(())
    }

    /// Return the digest of the bytes so far; the hasher stays usable.
    fn digest<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let digest = self.with_state(py, |state| state.digest());
        PyBytes::new(py, &digest)
    }

    /// Return the digest as lower-case hex.
    fn hexdigest(&self, py: Python<'_>) -> String {
        let digest = self.with_state(py, |state| state.digest());
        digest.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    /// Return an independent hasher with the same state.
    fn copy(&self, py: Python<'_>) -> Hasher {
        Hasher {
            algorithm: self.algorithm,
            state: Mutex::new(self.with_state(py, |state| state.clone())),
        }
    }

    #[getter]
    fn name(&self) -> &'static str {
        self.algorithm.name()
    }

    #[getter]
    fn digest_size(&self) -> usize {
        self.algorithm.digest_size()
    }
}

#[pymodule]
fn _dragonfly_hashing(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add(
        "BUILD_PROFILE",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    )?;
    m.add(
        "ALGORITHMS",
        PyTuple::new(py, Algorithm::ALL.map(Algorithm::name))?,
    )?;
    m.add_function(wrap_pyfunction!(self::crc32, m)?)?;
    m.add_function(wrap_pyfunction!(self::crc32c, m)?)?;
    m.add_function(wrap_pyfunction!(file_digest, m)?)?;
    m.add_class::<Hasher>()?;
    Ok(())
}
