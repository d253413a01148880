//! `ess-core`: the numerical kernels behind the `ess` Python package.
//!
//! Pure Rust, no Python. Every public function validates its input and returns
//! [`error::Error`] rather than panicking.
//!
//! * [`ess`]: effective state size (ESS) of causal sequence operators.

pub mod error;
pub mod ess;
pub mod markov;
pub mod mem;
pub mod graph;
pub mod interrupt;

pub use error::{Error, Result};
