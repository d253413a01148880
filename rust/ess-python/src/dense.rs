//! Binding of the dense ESS kernel.

use pyo3::prelude::*;

use ess_core::ess::{dense_ess, DenseOptions, EssCurves, Method};

use crate::arrays::{contiguous_checked, curves_to_py, float_array, positions_arg, FloatArray};
use crate::errors::{shape_error, IntoPy};

/// Dense ESS curves of `T` (`(..., L, L)`); returns `(tolerance or None, entropy or None)`,
/// each a float64 array of shape `(..., n_positions)`.
#[pyfunction]
#[pyo3(signature = (t, method, atol=None, rtol=None, positions=None))]
pub fn dense_ess_curves<'py>(
    py: Python<'py>,
    t: &Bound<'py, PyAny>,
    method: &str,
    atol: Option<f64>,
    rtol: Option<f64>,
    positions: Option<Vec<i64>>,
) -> PyResult<(Option<Bound<'py, PyAny>>, Option<Bound<'py, PyAny>>)> {
    let method = Method::parse("method", method).py_err()?;
    let arr = float_array(t, "T")?;
    let shape = arr.shape();
    if shape.len() < 2 {
        return Err(shape_error("T", format!("needs at least 2 dimensions (..., L, L), got shape {shape:?}")));
    }
    let (l, l2) = (shape[shape.len() - 2], shape[shape.len() - 1]);
    if l != l2 {
        return Err(shape_error("T", format!("last two dimensions must be square (L, L), got shape {shape:?}")));
    }
    let batch_shape = &shape[..shape.len() - 2];
    let batch: usize = batch_shape.iter().product();
    let positions = positions_arg(positions)?;
    // Before any copy of a non-contiguous input: refuse what cannot fit.
    if batch > 0 {
        ess_core::ess::dense::check_memory(l, batch).py_err()?;
    }
    let opts = DenseOptions { method, atol, rtol, positions };
    let curves: EssCurves = match &arr {
        FloatArray::F64(a) => {
            let data = contiguous_checked(a, "T")?;
            crate::interrupt::detach(py, || dense_ess(&data, batch, l, &opts))?
        }
        FloatArray::F32(a) => {
            let data = contiguous_checked(a, "T")?;
            crate::interrupt::detach(py, || dense_ess(&data, batch, l, &opts))?
        }
    };
    curves_to_py(py, curves, batch_shape)
}

/// Seconds one `n x n` float64 product takes with the kernel's linear-algebra library on all
/// threads (benchmarks divide `2 n^3` by it for the attainable flop rate). Not public API.
#[pyfunction]
pub fn _dense_matmul_probe_seconds(py: Python<'_>, n: usize) -> PyResult<f64> {
    if n > 8192 {
        return Err::<f64, _>(ess_core::Error::out_of_range("n", format!("{n} > 8192"))).py_err();
    }
    crate::interrupt::detach(py, || Ok(ess_core::ess::dense::matmul_probe_seconds(n)))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(dense_ess_curves, m)?)?;
    m.add_function(wrap_pyfunction!(_dense_matmul_probe_seconds, m)?)?;
    Ok(())
}
