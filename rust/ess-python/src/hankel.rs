//! Binding of `ess_core::hankel` (the fast path of `ess.conv_ess`). Conversions and error
//! mapping only.

use numpy::{IntoPyArray, PyArrayMethods, PyReadonlyArray1};
use pyo3::prelude::*;

fn to_2d(py: Python<'_>, v: Vec<f64>, n: usize, r: usize) -> PyResult<Bound<'_, PyAny>> {
    Ok(v.into_pyarray(py).reshape([n, r])?.into_any())
}

/// `(X, Y, err, sigma1)` of `ess_core::hankel::lowrank_hankel`.
#[pyfunction]
#[pyo3(signature = (g, accuracy, max_rank, seed, stream))]
fn hankel_lowrank<'py>(
    py: Python<'py>,
    g: PyReadonlyArray1<'py, f64>,
    accuracy: f64,
    max_rank: usize,
    seed: u64,
    stream: u64,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>, f64, f64)> {
    let g: Vec<f64> = g.as_array().iter().copied().collect();
    let out = crate::interrupt::detach(py, || ess_core::hankel::lowrank_hankel(&g, accuracy, max_rank, seed, stream))?;
    let (n, r) = (out.n, out.rank);
    Ok((to_2d(py, out.x, n, r)?, to_2d(py, out.y, n, r)?, out.err, out.sigma1))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(hankel_lowrank, m)?)
}
