//! `ess._core`: the thin PyO3 layer over `ess-core`. Conversions and error mapping only;
//! no algorithm lives here. Every heavy call releases the GIL.

use pyo3::prelude::*;

mod arrays;
mod dense;
mod errors;
mod graph;
mod hankel;
mod interrupt;
mod markov;
mod structured;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    dense::register(m)?;
    structured::register(m)?;
    markov::register(m)?;
    graph::register(m)?;
    hankel::register(m)?;
    Ok(())
}
