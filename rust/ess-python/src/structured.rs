//! Binding of the structured (state-space) ESS kernel.

use numpy::{IntoPyArray, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::prelude::*;

use ess_core::ess::selective::{selective_apply, SelectiveParams};
use ess_core::ess::structured::{mamba_ess, ssm_ess, MambaFactors, SsmFactors, StructuredOptions, Transition};
use ess_core::ess::{EssCurves, Method};

use crate::arrays::{contiguous, curves_to_py, f64_array, float_array, positions_arg, FloatArray};
use crate::errors::{dtype_error, shape_error, IntoPy};

/// Structured ESS curves of state-space operators.
///
/// `b`, `c`: `(..., L, N)`; `a`: `None` (`kind="identity"`), `(..., L)` (`"scalar"`),
/// `(..., L, N)` (`"diagonal"`) or `(..., L, N, N)` (`"dense"`), same leading dimensions
/// and the same dtype as `b` and `c`. Returns `(tolerance or None, entropy or None)`, each
/// float64 `(..., n_positions)`.
#[pyfunction]
#[pyo3(signature = (a, kind, b, c, method, atol=None, rtol=None, positions=None))]
#[allow(clippy::too_many_arguments)]
pub fn ssm_ess_curves<'py>(
    py: Python<'py>,
    a: Option<&Bound<'py, PyAny>>,
    kind: &str,
    b: &Bound<'py, PyAny>,
    c: &Bound<'py, PyAny>,
    method: &str,
    atol: Option<f64>,
    rtol: Option<f64>,
    positions: Option<Vec<i64>>,
) -> PyResult<(Option<Bound<'py, PyAny>>, Option<Bound<'py, PyAny>>)> {
    let method = Method::parse("method", method).py_err()?;
    let kind = match kind {
        "identity" => Transition::Identity,
        "scalar" => Transition::Scalar,
        "diagonal" => Transition::Diagonal,
        "dense" => Transition::Dense,
        other => {
            return Err(ess_core::Error::invalid(
                "kind",
                format!(
                    "unknown transition kind {other:?}; expected \"identity\", \"scalar\", \"diagonal\" or \"dense\""
                ),
            ))
            .py_err()
        }
    };
    let barr = float_array(b, "B")?;
    let carr = float_array(c, "C")?;
    let bshape = barr.shape();
    if bshape.len() < 2 {
        return Err(shape_error("B", format!("needs at least 2 dimensions (..., L, N), got shape {bshape:?}")));
    }
    if carr.shape() != bshape {
        return Err(shape_error("C", format!("shape {:?} differs from the shape of B {bshape:?}", carr.shape())));
    }
    let nd = bshape.len();
    let (l, n) = (bshape[nd - 2], bshape[nd - 1]);
    let batch_shape = bshape[..nd - 2].to_vec();
    let batch: usize = batch_shape.iter().product();
    let aarr = match (kind, a) {
        (Transition::Identity, None) => None,
        (Transition::Identity, Some(_)) => {
            return Err(ess_core::Error::invalid("A", "must be None for identity transitions")).py_err()
        }
        (_, None) => return Err(ess_core::Error::invalid("A", "is required for this transition kind")).py_err(),
        (_, Some(a)) => {
            let arr = float_array(a, "A")?;
            let mut want = batch_shape.clone();
            match kind {
                Transition::Scalar => want.push(l),
                Transition::Diagonal => want.extend([l, n]),
                _ => want.extend([l, n, n]),
            }
            if arr.shape() != want {
                return Err(shape_error(
                    "A",
                    format!(
                        "expected shape {want:?} for {kind:?} transitions with B of shape {bshape:?}, got {:?}",
                        arr.shape()
                    ),
                ));
            }
            Some(arr)
        }
    };
    let positions = positions_arg(positions)?;
    let opts = StructuredOptions { method, atol, rtol, positions };
    let curves: EssCurves = match (&aarr, &barr, &carr) {
        (None | Some(FloatArray::F64(_)), FloatArray::F64(bb), FloatArray::F64(cc)) => {
            let av = match &aarr {
                Some(FloatArray::F64(x)) => contiguous(x),
                _ => std::borrow::Cow::Borrowed(&[][..]),
            };
            let (bv, cv) = (contiguous(bb), contiguous(cc));
            let f = SsmFactors { batch, l, n, kind, a: &av, b: &bv, c: &cv };
            crate::interrupt::detach(py, || ssm_ess(&f, &opts))?
        }
        (None | Some(FloatArray::F32(_)), FloatArray::F32(bb), FloatArray::F32(cc)) => {
            let av = match &aarr {
                Some(FloatArray::F32(x)) => contiguous(x),
                _ => std::borrow::Cow::Borrowed(&[][..]),
            };
            let (bv, cv) = (contiguous(bb), contiguous(cc));
            let f = SsmFactors { batch, l, n, kind, a: &av, b: &bv, c: &cv };
            crate::interrupt::detach(py, || ssm_ess(&f, &opts))?
        }
        _ => return Err(dtype_error("A, B, C", "must all have the same dtype (float32 or float64)")),
    };
    curves_to_py(py, curves, &batch_shape)
}

/// `(tolerance or None, entropy or None)` as handed to Python.
type CurvePair<'py> = (Option<Bound<'py, PyAny>>, Option<Bound<'py, PyAny>>);

/// Structured ESS curves of the channels of a selective SSM (Mamba) layer from its native
/// parameters, all float64 and read in place (no `(D, L, N)` factor arrays are formed):
/// `a` `(D, N)`, `delta` `(L, D)`, `b` and `c` `(L, N)` or `(L, D, N)`. `single`: round the
/// factors to float32 and use the float32 `eps`. Returns `(tolerance or None, entropy or None)`,
/// each float64 `(D, n_positions)`.
#[pyfunction]
#[pyo3(signature = (a, delta, b, c, single, method, atol=None, rtol=None, positions=None))]
#[allow(clippy::too_many_arguments)]
pub fn mamba_ess_curves<'py>(
    py: Python<'py>,
    a: &Bound<'py, PyAny>,
    delta: &Bound<'py, PyAny>,
    b: &Bound<'py, PyAny>,
    c: &Bound<'py, PyAny>,
    single: bool,
    method: &str,
    atol: Option<f64>,
    rtol: Option<f64>,
    positions: Option<Vec<i64>>,
) -> PyResult<CurvePair<'py>> {
    let method = Method::parse("method", method).py_err()?;
    let (aa, dd, bb, cc) = (f64_array(a, "A")?, f64_array(delta, "delta")?, f64_array(b, "B")?, f64_array(c, "C")?);
    let ash = aa.shape().to_vec();
    if ash.len() != 2 {
        return Err(shape_error("A", format!("expected shape (D, N), got {ash:?}")));
    }
    let (d, n) = (ash[0], ash[1]);
    let dsh = dd.shape().to_vec();
    if dsh.len() != 2 || dsh[1] != d {
        return Err(shape_error("delta", format!("expected shape (L, {d}), got {dsh:?}")));
    }
    let l = dsh[0];
    for (name, x) in [("B", &bb), ("C", &cc)] {
        let sh = x.shape();
        if sh != [l, n] && sh != [l, d, n] {
            return Err(shape_error(name, format!("expected shape ({l}, {n}) or ({l}, {d}, {n}), got {sh:?}")));
        }
    }
    let positions = positions_arg(positions)?;
    let opts = StructuredOptions { method, atol, rtol, positions };
    let (av, dv, bv, cv) = (contiguous(&aa), contiguous(&dd), contiguous(&bb), contiguous(&cc));
    let m = MambaFactors { channels: d, l, n, a: &av, delta: &dv, b: &bv, c: &cv, single };
    let curves: EssCurves = crate::interrupt::detach(py, || mamba_ess(&m, &opts))?;
    curves_to_py(py, curves, &[d])
}

/// Output of a selective SSM layer from its native parameters (`ess.operators.base.SelectiveFactors.apply`):
/// `a` `(ops, N)` or `(ops,)` (`scalar`), `delta` `(L, ops)`, `b`, `c` `(L, N)` or `(L, ops, N)`,
/// `d` `(ops,)` or `None`, `u` `(ops, L, m)`, all float64. Returns `y` float64 `(ops, L, m)`.
#[pyfunction]
#[pyo3(signature = (a, delta, b, c, d, u, scalar))]
#[allow(clippy::too_many_arguments)]
pub fn selective_apply_f64<'py>(
    py: Python<'py>,
    a: &Bound<'py, PyAny>,
    delta: &Bound<'py, PyAny>,
    b: &Bound<'py, PyAny>,
    c: &Bound<'py, PyAny>,
    d: Option<&Bound<'py, PyAny>>,
    u: &Bound<'py, PyAny>,
    scalar: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let (aa, dl, bb, cc, uu) =
        (f64_array(a, "a")?, f64_array(delta, "delta")?, f64_array(b, "b")?, f64_array(c, "c")?, f64_array(u, "u")?);
    let dd = match d {
        Some(x) => Some(f64_array(x, "d")?),
        None => None,
    };
    let dsh = dl.shape().to_vec();
    if dsh.len() != 2 {
        return Err(shape_error("delta", format!("expected shape (L, ops), got {dsh:?}")));
    }
    let (l, ops) = (dsh[0], dsh[1]);
    let bsh = bb.shape().to_vec();
    let Some(&n) = bsh.last() else {
        return Err(shape_error("b", "expected shape (L, N) or (L, ops, N), got a scalar"));
    };
    let ush = uu.shape().to_vec();
    if ush.len() != 3 || ush[0] != ops || ush[1] != l {
        return Err(shape_error("u", format!("expected shape ({ops}, {l}, m), got {ush:?}")));
    }
    let m = ush[2];
    let (av, dv, bv, cv, uv) = (contiguous(&aa), contiguous(&dl), contiguous(&bb), contiguous(&cc), contiguous(&uu));
    let dvec = dd.as_ref().map(contiguous);
    let p = SelectiveParams { ops, l, n, a: &av, delta: &dv, b: &bv, c: &cv, d: dvec.as_deref(), scalar };
    let y = crate::interrupt::detach(py, || selective_apply(&p, &uv, m))?;
    Ok(y.into_pyarray(py).reshape([ops, l, m])?.into_any())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(selective_apply_f64, m)?)?;
    m.add_function(wrap_pyfunction!(ssm_ess_curves, m)?)?;
    m.add_function(wrap_pyfunction!(mamba_ess_curves, m)?)?;
    Ok(())
}
