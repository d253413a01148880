//! Binding of `ess_core::markov` (functions prefixed `markov_`; public API `ess.markov`).
//! Conversions and error mapping only. A chain arrives either as a 2-D float64 array
//! (dense) or as a tuple `(n, indptr, indices, data)` of CSR arrays (int32 or int64 indices,
//! float64 data), borrowed zero-copy when contiguous.

use std::borrow::Cow;

use numpy::PyArrayDescrMethods;
use numpy::{
    IntoPyArray, PyArray1, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use ess_core::markov::{self, ChainRef, CsrRef, Method};

use crate::arrays::{contiguous_checked, id_array, IdArray};
use crate::errors::{dtype_error, shape_error, IntoPy};

fn f64_array<'py>(obj: &Bound<'py, PyAny>, arg: &str) -> PyResult<PyReadonlyArrayDyn<'py, f64>> {
    let arr = obj.cast::<PyUntypedArray>().map_err(|_| dtype_error(arg, "expected a numpy.ndarray"))?;
    if !arr.dtype().is_equiv_to(&numpy::dtype::<f64>(obj.py())) {
        return Err(dtype_error(arg, format!("dtype {} is not supported; pass float64", arr.dtype())));
    }
    Ok(obj.cast::<PyArrayDyn<f64>>()?.readonly())
}

/// Borrowed views of one chain argument, kept alive for the duration of a call.
enum Held<'py> {
    Dense(usize, PyReadonlyArrayDyn<'py, f64>),
    Csr(usize, IdArray<'py>, IdArray<'py>, PyReadonlyArrayDyn<'py, f64>),
}

fn hold<'py>(p: &Bound<'py, PyAny>) -> PyResult<Held<'py>> {
    if let Ok(t) = p.cast::<PyTuple>() {
        if t.len() != 4 {
            return Err(shape_error("P", "a CSR chain is the tuple (n, indptr, indices, data)"));
        }
        let n: usize = t.get_item(0)?.extract()?;
        let indptr = id_array(&t.get_item(1)?, "P.indptr")?;
        let indices = id_array(&t.get_item(2)?, "P.indices")?;
        let data = f64_array(&t.get_item(3)?, "P.data")?;
        return Ok(Held::Csr(n, indptr, indices, data));
    }
    let a = f64_array(p, "P")?;
    let sh = a.shape().to_vec();
    if sh.len() != 2 || sh[0] != sh[1] {
        return Err(shape_error("P", format!("must be a square 2-D matrix (n, n), got shape {sh:?}")));
    }
    Ok(Held::Dense(sh[0], a))
}

type IdxPair<'a, T> = (Cow<'a, [T]>, Cow<'a, [T]>);

/// Contiguous slices of a held chain (copied once only when the arrays are not contiguous).
struct Slices<'a> {
    n: usize,
    dense: Option<Cow<'a, [f64]>>,
    ip32: Option<IdxPair<'a, i32>>,
    ip64: Option<IdxPair<'a, i64>>,
    data: Option<Cow<'a, [f64]>>,
}

fn slices<'a>(h: &'a Held<'_>) -> PyResult<Slices<'a>> {
    match h {
        Held::Dense(n, a) => {
            Ok(Slices { n: *n, dense: Some(contiguous_checked(a, "P")?), ip32: None, ip64: None, data: None })
        }
        Held::Csr(n, ip, ix, d) => {
            let data = Some(contiguous_checked(d, "P.data")?);
            match (ip, ix) {
                (IdArray::I32(a), IdArray::I32(b)) => Ok(Slices {
                    n: *n,
                    dense: None,
                    ip32: Some((contiguous_checked(a, "P.indptr")?, contiguous_checked(b, "P.indices")?)),
                    ip64: None,
                    data,
                }),
                (IdArray::I64(a), IdArray::I64(b)) => Ok(Slices {
                    n: *n,
                    dense: None,
                    ip32: None,
                    ip64: Some((contiguous_checked(a, "P.indptr")?, contiguous_checked(b, "P.indices")?)),
                    data,
                }),
                _ => Err(dtype_error("P.indices", "indptr and indices must have the same dtype")),
            }
        }
    }
}

impl<'a> Slices<'a> {
    fn chain(&self) -> ChainRef<'_> {
        if let Some(d) = &self.dense {
            return ChainRef::Dense { n: self.n, p: d };
        }
        let data = self.data.as_deref().unwrap_or(&[]);
        if let Some((a, b)) = &self.ip32 {
            return ChainRef::Csr32(CsrRef { n: self.n, indptr: a, indices: b, data });
        }
        let (a, b) = self.ip64.as_ref().expect("csr indices");
        ChainRef::Csr64(CsrRef { n: self.n, indptr: a, indices: b, data })
    }
}

fn to_1d<'py>(py: Python<'py>, v: Vec<f64>) -> Bound<'py, PyArray1<f64>> {
    v.into_pyarray(py)
}

fn to_2d<'py>(py: Python<'py>, v: Vec<f64>, r: usize, c: usize) -> PyResult<Bound<'py, PyAny>> {
    Ok(v.into_pyarray(py).reshape([r, c])?.into_any())
}

#[pyfunction]
#[pyo3(signature = (p, target, method="auto"))]
fn markov_hitting_times<'py>(
    py: Python<'py>,
    p: &Bound<'py, PyAny>,
    target: Vec<i64>,
    method: &str,
) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let method = Method::parse("method", method).py_err()?;
    let h = hold(p)?;
    let s = slices(&h)?;
    let out = crate::interrupt::detach(py, || markov::hitting_times(&s.chain(), &target, method))?;
    Ok(to_1d(py, out))
}

#[pyfunction]
#[pyo3(signature = (p, labels, nsets, method="auto"))]
fn markov_absorption<'py>(
    py: Python<'py>,
    p: &Bound<'py, PyAny>,
    labels: Vec<i64>,
    nsets: usize,
    method: &str,
) -> PyResult<Bound<'py, PyAny>> {
    let method = Method::parse("method", method).py_err()?;
    let h = hold(p)?;
    let s = slices(&h)?;
    let n = s.n;
    let out = crate::interrupt::detach(py, || markov::absorption_probabilities(&s.chain(), &labels, nsets, method))?;
    to_2d(py, out, n, nsets)
}

#[pyfunction]
#[pyo3(signature = (p, a, b, backward=false, method="auto"))]
fn markov_committor<'py>(
    py: Python<'py>,
    p: &Bound<'py, PyAny>,
    a: Vec<i64>,
    b: Vec<i64>,
    backward: bool,
    method: &str,
) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let method = Method::parse("method", method).py_err()?;
    let h = hold(p)?;
    let s = slices(&h)?;
    let out = crate::interrupt::detach(py, || {
        if backward {
            markov::committor_backward(&s.chain(), &a, &b, method)
        } else {
            markov::committor_forward(&s.chain(), &a, &b, method)
        }
    })?;
    Ok(to_1d(py, out))
}

#[pyfunction]
fn markov_stationary<'py>(py: Python<'py>, p: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let h = hold(p)?;
    let s = slices(&h)?;
    let out = crate::interrupt::detach(py, || markov::stationary_distribution(&s.chain()))?;
    Ok(to_1d(py, out))
}

#[pyfunction]
fn markov_mfpt<'py>(py: Python<'py>, p: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let h = hold(p)?;
    let s = slices(&h)?;
    let n = s.n;
    let out = crate::interrupt::detach(py, || markov::mean_first_passage_times(&s.chain()))?;
    to_2d(py, out, n, n)
}

#[pyfunction]
fn markov_kemeny(py: Python<'_>, p: &Bound<'_, PyAny>) -> PyResult<f64> {
    let h = hold(p)?;
    let s = slices(&h)?;
    crate::interrupt::detach(py, || markov::kemeny_constant(&s.chain()))
}

#[pyfunction]
#[pyo3(signature = (p, threshold=0.0))]
fn markov_classes<'py>(
    py: Python<'py>,
    p: &Bound<'py, PyAny>,
    threshold: f64,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>, usize)> {
    let h = hold(p)?;
    let s = slices(&h)?;
    let (lab, closed, k) = crate::interrupt::detach(py, || markov::classes(&s.chain(), threshold))?;
    let lab: Vec<i64> = lab.into_iter().map(|x| x as i64).collect();
    Ok((lab.into_pyarray(py).into_any(), closed.into_pyarray(py).into_any(), k))
}

#[pyfunction]
#[pyo3(signature = (p, prompt, n_traj, n_steps, seed, position_weights=None))]
#[allow(clippy::type_complexity)]
fn markov_ccmc_simulate<'py>(
    py: Python<'py>,
    p: &Bound<'py, PyAny>,
    prompt: Vec<i64>,
    n_traj: usize,
    n_steps: usize,
    seed: u64,
    position_weights: Option<Vec<f64>>,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let a = f64_array(p, "P")?;
    let sh = a.shape().to_vec();
    if sh.len() != 2 || sh[0] != sh[1] {
        return Err(shape_error("P", format!("must be a square 2-D matrix (V, V), got shape {sh:?}")));
    }
    let data = contiguous_checked(&a, "P")?;
    let v = sh[0];
    let sim = crate::interrupt::detach(py, || {
        markov::ccmc::simulate(&data, v, &prompt, position_weights.as_deref(), n_traj, n_steps, seed)
    })?;
    let tok = sim.tokens.into_pyarray(py).reshape([n_traj, n_steps])?.into_any();
    Ok((tok, to_2d(py, sim.support, n_traj, n_steps)?, to_2d(py, sim.winner_share, n_traj, n_steps)?))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(markov_hitting_times, m)?)?;
    m.add_function(wrap_pyfunction!(markov_absorption, m)?)?;
    m.add_function(wrap_pyfunction!(markov_committor, m)?)?;
    m.add_function(wrap_pyfunction!(markov_stationary, m)?)?;
    m.add_function(wrap_pyfunction!(markov_mfpt, m)?)?;
    m.add_function(wrap_pyfunction!(markov_kemeny, m)?)?;
    m.add_function(wrap_pyfunction!(markov_classes, m)?)?;
    m.add_function(wrap_pyfunction!(markov_ccmc_simulate, m)?)?;
    Ok(())
}
