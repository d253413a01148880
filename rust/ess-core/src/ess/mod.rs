//! Effective state size (ESS) of causal sequence operators.
//!
//! For a causal (lower-triangular) `L x L` operator `T` and a split point `t`
//! (`1 <= t <= L-1`), the block `H_t = T[t:, :t]` maps the past inputs to the future
//! outputs; its rank is the smallest state any recurrence realising `T` must carry
//! across the split. `ess[0] = 0` by convention.
//!
//! * tolerance-ESS: number of singular values of `H_t` strictly above a threshold
//!   (see [`Tolerance`]);
//! * entropy-ESS: `exp(-sum p_i ln p_i)` with `p_i = sigma_i / sum_j sigma_j`
//!   (Roy & Vetterli effective rank on the singular values); `0` for a zero block.

pub mod dense;
pub mod selective;
pub mod structured;

pub use dense::{dense_ess, DenseOptions, EssCurves};

use crate::error::{Error, Result};

/// Which ESS measure(s) to compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Tolerance,
    Entropy,
    /// Both from one decomposition per block.
    Both,
}

impl Method {
    pub fn parse(arg: &str, s: &str) -> Result<Self> {
        match s {
            "tolerance" => Ok(Method::Tolerance),
            "entropy" => Ok(Method::Entropy),
            "both" => Ok(Method::Both),
            other => Err(Error::invalid(
                arg,
                format!("unknown method {other:?}; expected \"tolerance\", \"entropy\" or \"both\""),
            )),
        }
    }
    pub fn wants_tolerance(self) -> bool {
        matches!(self, Method::Tolerance | Method::Both)
    }
    pub fn wants_entropy(self) -> bool {
        matches!(self, Method::Entropy | Method::Both)
    }
}

/// Threshold convention of the tolerance-ESS, in the style of `numpy.linalg.matrix_rank`.
///
/// For a block `H` of shape `m x n` with largest singular value `smax`:
/// * neither given: `tau = max(m, n) * eps * smax` (numerical rank; `eps` is the machine
///   epsilon of the input dtype);
/// * `atol` only: `tau = atol`;
/// * `rtol` only: `tau = rtol * smax`;
/// * both: `tau = max(atol, rtol * smax)`.
///
/// A singular value counts when `sigma > tau` (strictly).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    pub atol: Option<f64>,
    pub rtol: Option<f64>,
    /// Machine epsilon used by the default rule.
    pub eps: f64,
}

impl Tolerance {
    pub fn new(atol: Option<f64>, rtol: Option<f64>, eps: f64) -> Result<Self> {
        for (name, v) in [("atol", atol), ("rtol", rtol)] {
            if let Some(x) = v {
                if !x.is_finite() || x < 0.0 {
                    return Err(Error::invalid(name, format!("must be a finite non-negative number, got {x}")));
                }
            }
        }
        Ok(Tolerance { atol, rtol, eps })
    }

    /// The threshold for a block of shape `m x n` whose largest singular value is `smax`.
    pub fn threshold(&self, smax: f64, m: usize, n: usize) -> f64 {
        match (self.atol, self.rtol) {
            (None, None) => m.max(n) as f64 * self.eps * smax,
            (Some(a), None) => a,
            (None, Some(r)) => r * smax,
            (Some(a), Some(r)) => a.max(r * smax),
        }
    }

    /// The same convention after the operator was multiplied by `2^e` (exact).
    pub fn scaled_pow2(&self, e: i32) -> Tolerance {
        Tolerance { atol: self.atol.map(|a| dense::mul_pow2(a, e)), ..*self }
    }
}

/// Number of singular values strictly above `tau`.
pub fn tolerance_count(sigma: &[f64], tau: f64) -> usize {
    sigma.iter().filter(|&&s| s > tau).count()
}

/// Entropy effective rank `exp(-sum p ln p)`, `p = sigma / sum(sigma)`; 0 for all-zero input.
/// Scale invariant: computed on `sigma / max(sigma)`.
pub fn entropy_ess(sigma: &[f64]) -> f64 {
    let smax = sigma.iter().fold(0.0f64, |m, &s| m.max(s));
    if smax <= 0.0 {
        return 0.0;
    }
    let mut sum = 0.0;
    let mut sum_xlogx = 0.0;
    for &s in sigma {
        if s > 0.0 {
            let x = s / smax;
            sum += x;
            sum_xlogx += x * x.ln();
        }
    }
    // H = -sum (x/S) ln(x/S) = ln S - (sum x ln x) / S
    (sum.ln() - sum_xlogx / sum).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_of_equal_values_is_count() {
        assert!((entropy_ess(&[2.0, 2.0, 2.0]) - 3.0).abs() < 1e-12);
        assert_eq!(entropy_ess(&[0.0, 0.0]), 0.0);
        assert!((entropy_ess(&[5.0, 0.0]) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn thresholds_follow_matrix_rank() {
        let t = Tolerance::new(None, None, f64::EPSILON).unwrap();
        assert_eq!(t.threshold(2.0, 3, 5), 5.0 * f64::EPSILON * 2.0);
        let t = Tolerance::new(Some(0.5), Some(0.1), f64::EPSILON).unwrap();
        assert_eq!(t.threshold(10.0, 3, 5), 1.0);
        assert!(Tolerance::new(Some(-1.0), None, 1e-16).is_err());
        assert!(Tolerance::new(None, Some(f64::NAN), 1e-16).is_err());
    }
}
