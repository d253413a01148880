//! Map core errors to the Python exception classes of `ess.errors` (one class per variant).

use ess_core::Error;
use pyo3::prelude::*;
use pyo3::types::PyType;

fn raise(py: Python<'_>, class: &str, msg: String) -> PyErr {
    let cls = py
        .import("ess.errors")
        .and_then(|m| m.getattr(class))
        .and_then(|c| c.cast_into::<PyType>().map_err(PyErr::from));
    match cls {
        Ok(cls) => PyErr::from_type(cls, msg),
        Err(e) => e,
    }
}

/// Convert a core error to the matching Python exception.
pub fn to_py(e: Error) -> PyErr {
    Python::attach(|py| {
        let msg = e.to_string();
        let class = match e {
            Error::Shape { .. } => "ShapeError",
            Error::NonFinite { .. } => "NonFiniteError",
            Error::InvalidArgument { .. } => "InvalidArgumentError",
            Error::OutOfRange { .. } => "OutOfRangeError",
            Error::NotStochastic { .. } => "NotStochasticError",
            Error::TooLarge { .. } => "TooLargeError",
            Error::Numerical(_) => "NumericalError",
            Error::Interrupted => return pyo3::exceptions::PyKeyboardInterrupt::new_err("interrupted"),
        };
        raise(py, class, msg)
    })
}

/// A `DTypeError` (subclass of `TypeError`) naming the argument.
pub fn dtype_error(arg: &str, msg: impl std::fmt::Display) -> PyErr {
    Python::attach(|py| raise(py, "DTypeError", format!("{arg}: {msg}")))
}

/// A `ShapeError` naming the argument.
pub fn shape_error(arg: &str, msg: impl std::fmt::Display) -> PyErr {
    to_py(Error::shape(arg, msg.to_string()))
}

/// Extension trait: `result.py()?` maps a core error.
pub trait IntoPy<T> {
    fn py_err(self) -> PyResult<T>;
}
impl<T> IntoPy<T> for Result<T, Error> {
    fn py_err(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}
