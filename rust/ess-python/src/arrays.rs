//! Boundary checks for numpy inputs: dtype and layout, once, with the argument's name.
//! Contiguous arrays are borrowed zero-copy; non-contiguous ones (negative strides,
//! slices, transposes) are copied once into C order.

use std::borrow::Cow;

use numpy::{Element, IntoPyArray, PyReadonlyArrayDyn};
use numpy::{PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;

use crate::errors::dtype_error;

/// A float array of either precision.
pub enum FloatArray<'py> {
    F32(PyReadonlyArrayDyn<'py, f32>),
    F64(PyReadonlyArrayDyn<'py, f64>),
}

impl<'py> FloatArray<'py> {
    pub fn shape(&self) -> Vec<usize> {
        match self {
            FloatArray::F32(a) => a.shape().to_vec(),
            FloatArray::F64(a) => a.shape().to_vec(),
        }
    }
}

/// Accept a float64 numpy array only (a float32 one is a `DTypeError` naming `arg`).
pub fn f64_array<'py>(obj: &Bound<'py, PyAny>, arg: &str) -> PyResult<PyReadonlyArrayDyn<'py, f64>> {
    match float_array(obj, arg)? {
        FloatArray::F64(v) => Ok(v),
        FloatArray::F32(_) => Err(dtype_error(arg, "must be float64 here")),
    }
}

/// Accept a numpy array of float32 or float64; anything else is a `DTypeError`.
pub fn float_array<'py>(obj: &Bound<'py, PyAny>, arg: &str) -> PyResult<FloatArray<'py>> {
    let arr = obj
        .cast::<PyUntypedArray>()
        .map_err(|_| dtype_error(arg, format!("expected a numpy.ndarray, got {}", type_name(obj))))?;
    let dt = arr.dtype();
    let py = obj.py();
    if dt.is_equiv_to(&numpy::dtype::<f64>(py)) {
        Ok(FloatArray::F64(obj.cast::<PyArrayDyn<f64>>()?.readonly()))
    } else if dt.is_equiv_to(&numpy::dtype::<f32>(py)) {
        Ok(FloatArray::F32(obj.cast::<PyArrayDyn<f32>>()?.readonly()))
    } else {
        Err(dtype_error(
            arg,
            format!("dtype {} is not supported; pass float32 or float64 (e.g. x.astype(numpy.float64))", dt),
        ))
    }
}

/// A 1-D integer array of ids or indices, int32 or int64, borrowed (graph edges, CSR indices).
pub enum IdArray<'py> {
    I32(PyReadonlyArrayDyn<'py, i32>),
    I64(PyReadonlyArrayDyn<'py, i64>),
}

/// Accept a one-dimensional numpy array of int32 or int64: anything else is a `DTypeError`
/// (another dtype, not an array) or a `ShapeError` (another number of dimensions) naming `arg`.
pub fn id_array<'py>(obj: &Bound<'py, PyAny>, arg: &str) -> PyResult<IdArray<'py>> {
    let arr = obj
        .cast::<PyUntypedArray>()
        .map_err(|_| dtype_error(arg, format!("expected a numpy.ndarray of int32 or int64, got {}", type_name(obj))))?;
    if arr.ndim() != 1 {
        return Err(crate::errors::shape_error(arg, format!("must be one-dimensional, got shape {:?}", arr.shape())));
    }
    let dt = arr.dtype();
    let py = obj.py();
    if dt.is_equiv_to(&numpy::dtype::<i64>(py)) {
        Ok(IdArray::I64(obj.cast::<PyArrayDyn<i64>>()?.readonly()))
    } else if dt.is_equiv_to(&numpy::dtype::<i32>(py)) {
        Ok(IdArray::I32(obj.cast::<PyArrayDyn<i32>>()?.readonly()))
    } else {
        Err(dtype_error(arg, format!("dtype {dt} is not supported; pass int32 or int64")))
    }
}

/// Contiguous data of an array, borrowed when C-contiguous, else copied after the memory
/// gate (`TooLargeError` naming `arg` when the copy cannot fit, e.g. a broadcast view).
pub fn contiguous_checked<'a, T: Element + Copy>(
    a: &'a PyReadonlyArrayDyn<'_, T>,
    arg: &str,
) -> PyResult<Cow<'a, [T]>> {
    if !(a.is_c_contiguous() && a.as_slice().is_ok()) {
        let n: usize = a.shape().iter().product();
        ess_core::mem::gate(arg, ess_core::mem::bytes_of::<T>(n), "a C-ordered copy of this non-contiguous array")
            .map_err(crate::errors::to_py)?;
    }
    Ok(contiguous(a))
}

/// Widen integer ids to `i64` after the memory gate.
pub fn widened_checked(n: usize, arg: &str) -> PyResult<()> {
    ess_core::mem::gate(arg, ess_core::mem::bytes_of::<i64>(n), "an int64 copy of these ids")
        .map_err(crate::errors::to_py)
}

/// Contiguous data of an array, borrowed when C-contiguous, else copied.
pub fn contiguous<'a, T: Element + Copy>(a: &'a PyReadonlyArrayDyn<'_, T>) -> Cow<'a, [T]> {
    // `as_slice` also succeeds for Fortran-ordered arrays: require C order explicitly.
    if a.is_c_contiguous() {
        if let Ok(s) = a.as_slice() {
            return Cow::Borrowed(s);
        }
    }
    Cow::Owned(a.as_array().iter().copied().collect())
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "object".into())
}

/// ESS curves to Python: `(tolerance or None, entropy or None)`, each float64 of shape
/// `batch_shape + (n_positions,)`, moved into numpy without a copy.
#[allow(clippy::type_complexity)]
pub fn curves_to_py<'py>(
    py: Python<'py>,
    curves: ess_core::ess::EssCurves,
    batch_shape: &[usize],
) -> PyResult<(Option<Bound<'py, PyAny>>, Option<Bound<'py, PyAny>>)> {
    let mut shape = batch_shape.to_vec();
    shape.push(curves.n_positions);
    let wrap = |v: Option<Vec<f64>>| -> PyResult<Option<Bound<'py, PyAny>>> {
        match v {
            None => Ok(None),
            Some(v) => Ok(Some(v.into_pyarray(py).reshape(shape.clone())?.into_any())),
        }
    };
    Ok((wrap(curves.tolerance)?, wrap(curves.entropy)?))
}

/// The `positions` argument of the ESS functions: non-negative split points (the core checks
/// them against `L`), `OutOfRangeError` naming `positions` for a negative one.
pub fn positions_arg(positions: Option<Vec<i64>>) -> PyResult<Option<Vec<usize>>> {
    use crate::errors::IntoPy;
    positions
        .map(|p| {
            p.into_iter()
                .map(|x| {
                    usize::try_from(x)
                        .map_err(|_| ess_core::Error::out_of_range("positions", format!("negative position {x}")))
                })
                .collect::<Result<Vec<usize>, _>>()
                .py_err()
        })
        .transpose()
}
