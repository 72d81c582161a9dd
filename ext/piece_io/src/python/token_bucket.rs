//! Bindings of the token bucket (`crate::token_bucket`).

use pyo3::prelude::*;

use super::args::non_negative;

/// Token bucket for host-level rate limits (bytes/s, 0 = unlimited), shared by threads.
#[pyclass(frozen, module = "_dragonfly_piece_io", name = "TokenBucket")]
pub(super) struct TokenBucket {
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
