//! Typed errors of the core crate. Every public entry point validates its input and
//! returns one of these instead of panicking; the Python binding maps each variant to
//! one Python exception class (see `python/ess/errors.py`).

use thiserror::Error;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong on user input (or, rarely, inside a numerical routine).
///
/// `arg` always names the offending argument as the user sees it (e.g. `"T"`, `"positions"`).
#[derive(Debug, Clone, PartialEq, Error)]
pub enum Error {
    /// Wrong number of dimensions or mismatched extents.
    #[error("{arg}: {msg}")]
    Shape { arg: String, msg: String },
    /// NaN or +-inf where finite numbers are required.
    #[error("{arg} contains a non-finite value (NaN or inf) at flat index {index}")]
    NonFinite { arg: String, index: usize },
    /// A value outside its domain (negative tolerance, unknown method name, ...).
    #[error("{arg}: {msg}")]
    InvalidArgument { arg: String, msg: String },
    /// An index or id outside its valid range, or an unsorted index list.
    #[error("{arg}: {msg}")]
    OutOfRange { arg: String, msg: String },
    /// A matrix that should be row-stochastic is not.
    #[error("{arg}: {msg}")]
    NotStochastic { arg: String, msg: String },
    /// The request would need more memory than allowed (or than addressable).
    #[error("{arg}: {msg}")]
    TooLarge { arg: String, msg: String },
    /// A numerical routine failed to converge or met a breakdown it cannot recover from.
    #[error("numerical failure: {0}")]
    Numerical(String),
    /// The caller asked running kernels to stop (see [`crate::interrupt`]).
    #[error("interrupted")]
    Interrupted,
}

impl Error {
    pub fn shape(arg: &str, msg: impl Into<String>) -> Self {
        Error::Shape { arg: arg.to_string(), msg: msg.into() }
    }
    pub fn invalid(arg: &str, msg: impl Into<String>) -> Self {
        Error::InvalidArgument { arg: arg.to_string(), msg: msg.into() }
    }
    pub fn out_of_range(arg: &str, msg: impl Into<String>) -> Self {
        Error::OutOfRange { arg: arg.to_string(), msg: msg.into() }
    }
    pub fn not_stochastic(arg: &str, msg: impl Into<String>) -> Self {
        Error::NotStochastic { arg: arg.to_string(), msg: msg.into() }
    }
    pub fn too_large(arg: &str, msg: impl Into<String>) -> Self {
        Error::TooLarge { arg: arg.to_string(), msg: msg.into() }
    }
}

/// Return `Err(NonFinite)` naming `arg` at the first non-finite entry of `data`.
pub fn check_finite<F: Copy + Into<f64>>(arg: &str, data: &[F]) -> Result<()> {
    match data.iter().position(|&x| !x.into().is_finite()) {
        None => Ok(()),
        Some(index) => Err(Error::NonFinite { arg: arg.to_string(), index }),
    }
}

/// Multiply sizes, failing with `TooLarge` instead of overflowing.
pub fn checked_size(arg: &str, dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::too_large(arg, format!("size {dims:?} overflows the address space")))
}
