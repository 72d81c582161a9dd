//! Bindings of the Vortex frame codec (`crate::vortex`), with range errors worded as the twin words them.

use pyo3::exceptions::PyOverflowError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyString, PyTuple};

use super::args::with_bytes;
use super::errors::vortex_error;
use crate::vortex;

/// A Python int as given, kept until the range check that names its field (so both sides word it alike).
pub(super) enum WireInt {
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
    pub(super) const fn new(value: u8) -> Self {
        WireInt::Fits(value as i128)
    }

    /// Convert to the wire type, or a VortexError naming the field.
    pub(super) fn get<T: TryFrom<i128>>(
        self,
        py: Python<'_>,
        name: &str,
        kind: &str,
    ) -> PyResult<T> {
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
pub(super) struct PieceMetadata {
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
pub(super) fn encode_download_piece<'py>(
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
pub(super) fn decode_header(buf: &Bound<'_, PyAny>) -> PyResult<(u8, u8, u32)> {
    Ok(with_bytes(buf, vortex::decode_header)??)
}

#[pyfunction]
pub(super) fn decode_download_piece(value: &Bound<'_, PyAny>) -> PyResult<(String, u32)> {
    Ok(with_bytes(value, vortex::decode_download_piece)??)
}

#[pyfunction]
#[pyo3(
    signature = (meta, frame_id=WireInt::new(0), tag=WireInt::new(vortex::TAG_PIECE_CONTENT)),
    text_signature = "(meta, frame_id=0, tag=1)"
)]
pub(super) fn encode_piece_content<'py>(
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
pub(super) fn decode_piece_content(value: &Bound<'_, PyAny>) -> PyResult<PieceMetadata> {
    let inner = with_bytes(value, vortex::decode_piece_content)??;
    Ok(PieceMetadata { inner })
}

#[pyfunction]
#[pyo3(signature = (code, message, frame_id=WireInt::new(0)), text_signature = "(code, message, frame_id=0)")]
pub(super) fn encode_error<'py>(
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
pub(super) fn decode_error(value: &Bound<'_, PyAny>) -> PyResult<(u8, String)> {
    Ok(with_bytes(value, vortex::decode_error)??)
}

#[pyfunction]
#[pyo3(signature = (frame_id=WireInt::new(0)), text_signature = "(frame_id=0)")]
pub(super) fn encode_close<'py>(
    py: Python<'py>,
    frame_id: WireInt,
) -> PyResult<Bound<'py, PyBytes>> {
    let frame_id = frame_id.get(py, "frame_id", "u8")?;
    Ok(PyBytes::new(py, &vortex::encode_close(frame_id)))
}
