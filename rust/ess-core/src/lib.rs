//! `ess-core`: the numerical kernels behind the `ess` Python package.
//!
//! Pure Rust, no Python. Every public function validates its input and returns
//! [`error::Error`] rather than panicking.
//!
//! * [`ess`]: effective state size (ESS) of causal sequence operators: the dense kernel
//!   (`ess::dense`, from the `L x L` operator) and the structured kernel (`ess::structured`,
//!   from state-space factors, without forming the operator).
//! * [`graph`]: CSR construction from edge arrays, strongly connected components (Pearce,
//!   forward-backward), condensation and reachability, token-priority graphs and the graph-SVM.
//! * [`markov`]: hitting times, committors, stationary distributions, first-passage times by
//!   GTH elimination (dense, banded, cyclic-band and sparse engines) or sparse LU; the
//!   context-conditioned Markov chain of one attention layer.
//! * [`error`]: the one error enum; [`mem`]: the memory gate (estimate before allocating);
//!   [`interrupt`]: the cooperative cancellation flag polled by long loops.

mod cpu;
pub mod error;
pub mod ess;
pub mod exp;
pub mod graph;
pub mod hankel;
pub mod interrupt;
pub mod markov;
pub mod mem;

pub use error::{Error, Result};
