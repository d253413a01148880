//! Randomised low-rank factorisation of a symmetric Hankel matrix, with an a posteriori
//! error bound (the fast path of `ess.conv_ess`).
//!
//! For a sequence `g` of length `n`, `M[i, j] = g[i + j]` (`0 <= i, j < n`, zero when
//! `i + j >= n`) is symmetric. [`lowrank_hankel`] returns `X`, `Y` (`n x r`) with
//! `M ~ X Y^T` and a bound `err >= ||M - X Y^T||_2` that holds with probability at least
//! `1 - 1e-10`:
//!
//! * range finder (Halko, Martinsson & Tropp 2011, Alg. 4.4): `Q = orth(M Omega)` for a
//!   Gaussian `Omega` with `r + 10` columns, then two re-orthogonalised power iterations
//!   `Q = orth(M Q)` (`M` is symmetric, so `M^T Q = M Q`);
//! * error estimate (ibid., Lemma 4.1): with 10 Gaussian probes `w`,
//!   `err = 10 sqrt(2 / pi) max_w ||(M - Q Q^T M) w||`;
//! * the rank doubles (from `min(n, 16, max_rank)`) until `err <= accuracy * sigma1`, `Q` spans
//!   `R^n`, or the rank reaches `max_rank`; `sigma1 = ||Q^T M||_2 <= ||M||_2`;
//! * compression: with `M Q = U S V^T` (thin SVD), `M ~ Q Q^T M = (Q V S) U^T`; singular
//!   values at most `accuracy * sigma1 - err` are dropped (the largest one dropped is added
//!   to `err`), so `X = Q V S`, `Y = U` restricted to the kept directions, at most
//!   `max_rank` of them.
//!
//! Products `M B` cost `O(n log n)` per column: `(M b)_i = sum_j g[i + j] b_j` is entry
//! `i + n - 1` of the linear convolution of `g` with `b` reversed, computed by real FFTs of
//! a power-of-two length `>= 2n` (`realfft`), in parallel over the columns.
//!
//! Random numbers: xoshiro256++ seeded from `seed`, standard normals by Box–Muller, so the
//! result is reproducible and independent of the number of threads.

use std::sync::Arc;

use faer::{Mat, MatRef};
use rayon::prelude::*;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};
use rustfft::num_complex::Complex;

use crate::error::{Error, Result};
use crate::markov::ccmc::Xoshiro256pp;

/// Gaussian probes of the a posteriori error estimate.
const PROBES: usize = 10;
/// Oversampling of the range finder.
const OVERSAMPLE: usize = 10;
/// Re-orthogonalised power iterations.
const POWER_ITERS: usize = 2;

/// Output of [`lowrank_hankel`]: `M ~ X Y^T`.
pub struct LowRank {
    pub n: usize,
    pub rank: usize,
    /// `X`, `n x rank` row-major.
    pub x: Vec<f64>,
    /// `Y`, `n x rank` row-major (orthonormal columns).
    pub y: Vec<f64>,
    /// Bound on `||M - X Y^T||_2` (probability `>= 1 - 1e-10`).
    pub err: f64,
    /// Lower bound of `||M||_2`.
    pub sigma1: f64,
}

/// Products `M B` with the Hankel matrix of `g` by real FFTs.
pub struct HankelOp {
    n: usize,
    nfft: usize,
    /// `rfft(g, nfft) / nfft` (the inverse transform's scaling folded in).
    spec: Vec<Complex<f64>>,
    fwd: Arc<dyn RealToComplex<f64>>,
    inv: Arc<dyn ComplexToReal<f64>>,
}

impl HankelOp {
    /// `g` non-empty.
    pub fn new(g: &[f64]) -> Result<HankelOp> {
        let n = g.len();
        let nfft = (2 * n).max(2).checked_next_power_of_two().ok_or_else(|| Error::too_large("g", "too long"))?;
        let mut planner = RealFftPlanner::<f64>::new();
        let fwd = planner.plan_fft_forward(nfft);
        let inv = planner.plan_fft_inverse(nfft);
        let mut buf = vec![0.0; nfft];
        buf[..n].copy_from_slice(g);
        let mut spec = fwd.make_output_vec();
        fwd.process(&mut buf, &mut spec).map_err(|e| Error::Numerical(format!("FFT: {e}")))?;
        let scale = 1.0 / nfft as f64;
        for z in spec.iter_mut() {
            *z *= scale;
        }
        Ok(HankelOp { n, nfft, spec, fwd, inv })
    }

    /// `M B` for `B` with `n` rows.
    pub fn apply(&self, b: MatRef<'_, f64>) -> Result<Mat<f64>> {
        let n = self.n;
        let mut out = Mat::<f64>::zeros(n, b.ncols());
        let outs: Vec<Result<Vec<f64>>> = (0..b.ncols())
            .into_par_iter()
            .map_init(
                || (vec![0.0; self.nfft], self.fwd.make_output_vec()),
                |(buf, freq), j| {
                    crate::interrupt::check()?;
                    self.column(b, j, buf, freq)
                },
            )
            .collect();
        for (j, col) in outs.into_iter().enumerate() {
            let col = col?;
            for (i, v) in col.into_iter().enumerate() {
                out[(i, j)] = v;
            }
        }
        Ok(out)
    }

    /// `M b` for column `j` of `b`, with the work buffers `buf` (`nfft`) and `freq`.
    fn column(&self, b: MatRef<'_, f64>, j: usize, buf: &mut [f64], freq: &mut [Complex<f64>]) -> Result<Vec<f64>> {
        let n = self.n;
        // y[i] = sum_k g[i + k] b[k] = (g * reverse(b))[i + n - 1]
        buf.fill(0.0);
        for k in 0..n {
            buf[n - 1 - k] = b[(k, j)];
        }
        let fft_err = |e: realfft::FftError| Error::Numerical(format!("FFT: {e}"));
        self.fwd.process(buf, freq).map_err(fft_err)?;
        for (z, &s) in freq.iter_mut().zip(&self.spec) {
            *z *= s;
        }
        // the imaginary parts of the end bins are rounding noise of a real signal
        freq[0].im = 0.0;
        if let Some(last) = freq.last_mut() {
            last.im = 0.0;
        }
        self.inv.process(freq, buf).map_err(fft_err)?;
        Ok(buf[n - 1..2 * n - 1].to_vec())
    }
}

/// `n x k` standard normal matrix (Box–Muller on xoshiro256++).
fn gaussian(rng: &mut Xoshiro256pp, n: usize, k: usize) -> Mat<f64> {
    let mut spare: Option<f64> = None;
    Mat::from_fn(n, k, |_, _| {
        if let Some(z) = spare.take() {
            return z;
        }
        let u1 = 1.0 - rng.next_f64(); // (0, 1]
        let u2 = rng.next_f64();
        let rad = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
        spare = Some(rad * s);
        rad * c
    })
}

/// Orthonormal basis of the range of `a` (thin Householder QR).
fn orth(a: &Mat<f64>) -> Mat<f64> {
    a.qr().compute_thin_Q()
}

/// Randomised factorisation `M ~ X Y^T` of the Hankel matrix `M[i, j] = g[i + j]` of `g`,
/// with rank at most `max_rank` (see the module documentation); `(seed, stream)` seeds the
/// random numbers.
///
/// Errors: `InvalidArgument` for an empty `g`, a non-positive or non-finite `accuracy` or a
/// zero `max_rank`; `NonFinite` for a non-finite entry of `g`; `Numerical` when an SVD fails
/// to converge. The result has
/// `err > accuracy * sigma1` only when the rank reached `max_rank`: the caller decides.
pub fn lowrank_hankel(g: &[f64], accuracy: f64, max_rank: usize, seed: u64, stream: u64) -> Result<LowRank> {
    let n = g.len();
    if n == 0 {
        return Err(Error::invalid("g", "the sequence is empty"));
    }
    crate::error::check_finite("g", g)?;
    if !accuracy.is_finite() || accuracy <= 0.0 {
        return Err(Error::invalid("accuracy", format!("must be a finite positive number, got {accuracy}")));
    }
    if max_rank == 0 {
        return Err(Error::invalid("max_rank", "must be >= 1"));
    }
    let op = HankelOp::new(g)?;
    let mut rng = Xoshiro256pp::seed(seed, stream);
    let probes = gaussian(&mut rng, n, PROBES);
    let mp = op.apply(probes.as_ref())?;
    // the sketch oversamples (r + OVERSAMPLE columns); the factors returned keep at most max_rank
    let mut r = n.min(16).min(max_rank);
    loop {
        let omega = gaussian(&mut rng, n, r + OVERSAMPLE);
        let mut q = orth(&op.apply(omega.as_ref())?);
        for _ in 0..POWER_ITERS {
            q = orth(&op.apply(q.as_ref())?);
        }
        let mq = op.apply(q.as_ref())?; // (Q^T M)^T
        let err = residual_bound(&q, &mq, &probes, &mp);
        let svd = mq.thin_svd().map_err(|e| Error::Numerical(format!("SVD of the Hankel sketch: {e:?}")))?;
        let s = svd.S().column_vector();
        let sv: Vec<f64> = (0..s.nrows()).map(|i| s[i]).collect();
        let sigma1 = sv.first().copied().unwrap_or(0.0);
        if err <= accuracy * sigma1 || q.ncols() >= n || r >= max_rank {
            let keep = kept_directions(&sv, (accuracy * sigma1 - err).max(0.0), max_rank);
            return Ok(compress(&q, svd.U(), &sv, svd.V(), err, sigma1, keep));
        }
        r = (2 * r).min(n).min(max_rank);
    }
}

/// `10 sqrt(2 / pi) max_w ||M w - Q (M Q)^T w||` over the probe columns `w` (`mp = M W`).
fn residual_bound(q: &Mat<f64>, mq: &Mat<f64>, probes: &Mat<f64>, mp: &Mat<f64>) -> f64 {
    let proj = q * (mq.transpose() * probes);
    let resid = mp - &proj;
    let mut worst = 0.0f64;
    for j in 0..resid.ncols() {
        worst = worst.max(resid.col(j).norm_l2());
    }
    10.0 * (2.0 / std::f64::consts::PI).sqrt() * worst
}

/// How many leading singular directions to keep: those above `budget` (the error still allowed),
/// at least one and at most `max_rank`. Singular values are sorted decreasingly; the largest one
/// dropped is added to the bound by [`compress`].
fn kept_directions(sv: &[f64], budget: f64, max_rank: usize) -> usize {
    sv.iter().take_while(|&&s| s > budget).count().max(1).min(sv.len()).min(max_rank)
}

/// `X = Q V S`, `Y = U` on the first `keep` singular directions.
fn compress(
    q: &Mat<f64>,
    u: MatRef<'_, f64>,
    sv: &[f64],
    v: MatRef<'_, f64>,
    mut err: f64,
    sigma1: f64,
    keep: usize,
) -> LowRank {
    if let Some(&dropped) = sv.get(keep) {
        err += dropped;
    }
    let n = q.nrows();
    let qv = q * v.subcols(0, keep);
    let x = (0..n).flat_map(|i| (0..keep).map(move |j| (i, j))).map(|(i, j)| qv[(i, j)] * sv[j]).collect();
    let y = (0..n).flat_map(|i| (0..keep).map(move |j| u[(i, j)])).collect();
    LowRank { n, rank: keep, x, y, err, sigma1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fft_products_match_direct_sums() {
        for n in [1usize, 2, 7, 64, 100] {
            let g: Vec<f64> = (0..n).map(|i| ((i * 37 % 11) as f64 - 5.0) / 3.0).collect();
            let b = Mat::from_fn(n, 3, |i, j| ((i + 2 * j) % 5) as f64 - 2.0);
            let y = HankelOp::new(&g).unwrap().apply(b.as_ref()).unwrap();
            for j in 0..3 {
                for i in 0..n {
                    let s: f64 = (0..n - i).map(|k| g[i + k] * b[(k, j)]).sum();
                    assert!((y[(i, j)] - s).abs() <= 1e-12 * n as f64 * (1.0 + s.abs()), "n {n} ({i}, {j})");
                }
            }
        }
    }

    #[test]
    fn rank_never_exceeds_max_rank() {
        // a slowly decaying sequence: far above rank 8 at this accuracy
        let g: Vec<f64> = (0..300).map(|i| (-(i as f64) / 40.0).exp() * ((i as f64) * 0.3).cos()).collect();
        for max_rank in [1usize, 3, 8, 17, 30] {
            let lr = lowrank_hankel(&g, 1e-12, max_rank, 7, 0).unwrap();
            assert!(lr.rank <= max_rank, "rank {} > max_rank {max_rank}", lr.rank);
            assert!(lr.err > 1e-12 * lr.sigma1, "a truncated factorisation must report its larger error");
        }
    }

    #[test]
    fn short_sequence_has_its_exact_rank() {
        // g supported on its first 5 entries: M has rank 5
        let mut g = vec![0.0; 60];
        g[..5].copy_from_slice(&[1.0, -0.5, 0.25, 2.0, 0.1]);
        let lr = lowrank_hankel(&g, 1e-12, 64, 1, 0).unwrap();
        assert_eq!(lr.rank, 5);
        assert!(lr.err <= 1e-12 * lr.sigma1);
        assert!(matches!(lowrank_hankel(&[], 1e-12, 4, 0, 0), Err(Error::InvalidArgument { .. })));
        assert!(matches!(lowrank_hankel(&g, -1.0, 4, 0, 0), Err(Error::InvalidArgument { .. })));
    }
}
