//! Tolerance-ESS by inertia: the number of singular values of `H_t` above `tau` is the number
//! of positive eigenvalues of `G_t - tau^2 I` (`G_t = H_t H_t^T`), which Sylvester's law of
//! inertia reads off any symmetric `L D L^T` factorisation, with no eigenvalues computed.
//!
//! # Which route decides, and the error bound behind it
//!
//! The carried Gram matrix holds `G_t` up to rounding `err = 2 eps (t + k) lambda_1` (sums of
//! `t` products; the same model as the eigenvalue route). The factorisation of `G - x I` is an
//! `L D L^T` without pivoting, whose computed factors are exact for `G - x I + E` with
//! `|E| <= gamma |L| |D| |L^T|` (elementwise, `gamma = 4 (k + 1) eps`, a safe multiple of the
//! textbook constant). That bound is evaluated after each factorisation (`O(k^2)`, the
//! infinity norm of `|L| |D| |L^T|` bounds its 2-norm) and must not exceed the allowance
//! `allow = 32 (k + 1) eps lambda_1`; a factorisation with larger growth (a pivot near zero)
//! decides nothing. By Weyl's inequality the positive count `c(x)` of an accepted
//! factorisation then lies between `N(x + allow + err)` and `N(x - allow - err)`, `N(s)` the
//! number of eigenvalues of the exact `G_t` above `s`.
//!
//! The threshold depends on `sigma_max` (`rtol`), known only within bounds: the Rayleigh
//! quotient `rho` of a power-iteration vector is a lower bound of `lambda_1`, and, when
//! `rho` exceeds `b = sqrt(|G|_F^2 - rho^2)` (an upper bound of `lambda_2`, by Weyl on
//! `G - rho x x^T`), the Kato-Temple inequality gives the upper bound
//! `lambda_1 <= rho + eta^2 / (rho - b)` (`eta` the residual norm); otherwise `|G|_F` is used.
//! With `tau_lo`, `tau_hi` the thresholds at those two bounds, `s_hi = tau_hi^2 + err + allow`
//! and `s_lo = tau_lo^2 - err - allow`, the count is certified when `c(s_hi) = c(s_lo)`:
//! `c(s_hi) <= N(tau^2) <= c(s_lo)` for the exact threshold `tau`. When every pivot at `s_hi`
//! is positive (a block of full numerical rank, the common case) that one factorisation
//! suffices.
//!
//! Full-count certificates carry over: `G_{t+1} = G_t[1:, 1:] + c c^T` exactly, so by Cauchy
//! interlacing `lambda_min` of the exact Gram matrices never decreases along a sweep. A
//! positive definite factorisation at a shift `x` proves `lambda_min(G_u) > x - err - allow`
//! for this and every later split `u`, which then has full count as long as its `tau_hi^2`
//! stays below that floor (no factorisation at all). The certificate is tried first at half a
//! guess of `lambda_min` (a few inverse iterations with the previous factors), so that one
//! factorisation covers many splits.
//!
//! The counting route is used only where `tau^2 > 2 (err + allow)`, i.e. the threshold lies
//! above the noise floor of the squared route (true for `rtol` well above
//! `sqrt(32 (t + k) eps)`, e.g. `rtol = 1e-3`; false for the default threshold
//! `max(t, k) eps sigma_max`, where only the full-count certificate is tried). Below that, or
//! when `c(s_hi) != c(s_lo)` (a singular value within the bounds of the threshold), the
//! caller's accurate routes decide (eigenvalues with their own rounding bound, then the
//! singular values of a triangular factor of `H_t`).

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::{Mat, Par};

use super::Gram;
use crate::error::Result;
use crate::ess::Tolerance;

/// Outcome of [`inertia_route`].
pub(super) enum InertiaOutcome {
    /// The certified count.
    Count(usize),
    /// The threshold is too close to the noise floor of the squared route: not tried.
    NearFloor,
    /// Tried, but the count is not certified (a singular value near the threshold).
    Undecided,
}

/// Power iterations on `G` from the carried vector: returns `(rho, eta)`, the Rayleigh
/// quotient and the residual norm of the final unit vector, which is kept for the next split.
fn top_eigenpair(gram: &mut Gram, fro: f64) -> (f64, f64) {
    let k = gram.k;
    let mut x = std::mem::take(&mut gram.top);
    if x.len() != k {
        x = vec![1.0; k];
    }
    let nrm = x.iter().map(|v| v * v).sum::<f64>().sqrt();
    if nrm.is_nan() || nrm <= 0.0 || !nrm.is_finite() {
        x.iter_mut().for_each(|v| *v = 1.0);
    }
    let nrm = x.iter().map(|v| v * v).sum::<f64>().sqrt();
    x.iter_mut().for_each(|v| *v /= nrm);
    let mut y = vec![0.0; k];
    let (mut rho, mut eta) = (0.0, f64::INFINITY);
    for _ in 0..40 {
        gram.symv(&x, &mut y);
        rho = x.iter().zip(&y).map(|(a, b)| a * b).sum::<f64>();
        eta = x.iter().zip(&y).map(|(a, b)| (b - rho * a).powi(2)).sum::<f64>().sqrt();
        let ny = y.iter().map(|v| v * v).sum::<f64>().sqrt();
        if ny.is_nan() || ny <= 0.0 {
            break;
        }
        // Converged when the Kato-Temple correction is negligible.
        let b = (fro * fro - rho * rho).max(0.0).sqrt();
        if rho > b && eta * eta / (rho - b) <= 1e-10 * rho {
            break;
        }
        for (a, &v) in x.iter_mut().zip(&y) {
            *a = v / ny;
        }
    }
    gram.top = x;
    (rho, eta)
}

/// Estimate of the smallest eigenvalue of `L D L^T` (positive `D`, on the diagonal of `f`,
/// unit lower `L` below it) by a few inverse iterations. It is an over-estimate (a Rayleigh
/// quotient of the inverse) and serves only as a guess of where the next certificate can be
/// tried.
fn smallest_eigenvalue_estimate(f: &Mat<f64>) -> f64 {
    let k = f.nrows();
    let mut x = Mat::<f64>::from_fn(k, 1, |i, _| 1.0 + 0.5 * ((i as f64) * 0.754_877_666).sin());
    let mut est = f64::INFINITY;
    for _ in 0..3 {
        let nx = x.col(0).norm_l2();
        if nx.is_nan() || nx <= 0.0 || !nx.is_finite() {
            break;
        }
        x.col_mut(0).iter_mut().for_each(|v| *v /= nx);
        let x0 = x.clone();
        faer::linalg::triangular_solve::solve_unit_lower_triangular_in_place(f.as_ref(), x.as_mut(), Par::Seq);
        for i in 0..k {
            x[(i, 0)] /= f[(i, i)];
        }
        faer::linalg::triangular_solve::solve_unit_upper_triangular_in_place(f.transpose(), x.as_mut(), Par::Seq);
        let mu: f64 = x0.col(0).iter().zip(x.col(0).iter()).map(|(a, b)| a * b).sum();
        if mu > 0.0 {
            est = 1.0 / mu;
        }
    }
    est
}

/// Inertia of `G - s I` by an `L D L^T` factorisation without pivoting, with its a-posteriori
/// backward error bound: the computed factors are exact for `G - s I + E` with
/// `|E| <= gamma |L| |D| |L^T|` elementwise (`gamma = 4 (k + 1) eps` here, a safe multiple of
/// the textbook `gamma_{k+1}`), and `|| |L| |D| |L^T| ||_2 <= || |L| |D| |L^T| ||_inf`
/// is evaluated in `O(k^2)`. Returns `(positive count, bound, factors)`, or `None` on a zero
/// pivot.
fn ldlt_inertia(gram: &Gram, s: f64) -> Result<Option<(usize, f64, Mat<f64>)>> {
    let k = gram.k;
    let mut a = gram.to_mat(s);
    if !blocked_ldlt(a.as_mut())? {
        return Ok(None);
    }
    // u = |L|^T 1, v = |D| u, w = |L| v (L unit lower triangular, strictly below the diagonal of a).
    let mut u = vec![1.0f64; k];
    for (j, uj) in u.iter_mut().enumerate() {
        *uj += a.col(j).iter().skip(j + 1).map(|x| x.abs()).sum::<f64>();
    }
    let v: Vec<f64> = (0..k).map(|j| a[(j, j)].abs() * u[j]).collect();
    let mut w = v.clone();
    for (j, &vj) in v.iter().enumerate() {
        for (i, x) in a.col(j).iter().enumerate().skip(j + 1) {
            w[i] += x.abs() * vj;
        }
    }
    let norm = w.iter().fold(0.0f64, |m, &x| m.max(x));
    let bound = 4.0 * (k + 1) as f64 * f64::EPSILON * norm;
    if !bound.is_finite() {
        return Ok(None);
    }
    let pos = (0..k).filter(|&j| a[(j, j)] > 0.0).count();
    Ok(Some((pos, bound, a)))
}

/// Panel width of [`blocked_ldlt`] (one interrupt check per panel).
const LDLT_PANEL: usize = 128;

/// `L D L^T` without pivoting of the symmetric matrix whose lower triangle is in `a`, in place
/// (`D` on the diagonal, unit `L` below it), right-looking by panels of [`LDLT_PANEL`] columns:
/// the library's factorisation of the diagonal block, a triangular solve for the panel below
/// it, and a rank-`LDLT_PANEL` update of the trailing lower triangle; an interrupt check per
/// panel. The same operations as an unblocked factorisation in another order, so the usual
/// backward error bound holds. `Ok(false)` on a zero pivot.
fn blocked_ldlt(mut a: faer::MatMut<'_, f64>) -> Result<bool> {
    use faer::linalg::cholesky::ldlt::factor::{cholesky_in_place, cholesky_in_place_scratch};
    use faer::linalg::matmul::triangular::{matmul as tri_matmul, BlockStructure};
    let k = a.nrows();
    let nb = LDLT_PANEL.min(k.max(1));
    let mut mem = MemBuffer::new(cholesky_in_place_scratch::<f64>(nb, Par::Seq, Default::default()));
    let mut y = Mat::<f64>::zeros(k, nb);
    let mut j0 = 0;
    while j0 < k {
        crate::interrupt::check()?;
        let w = nb.min(k - j0);
        let rest = k - j0 - w;
        let sub = a.as_mut().submatrix_mut(j0, j0, k - j0, k - j0);
        let (top, bottom) = sub.split_at_row_mut(w);
        let (mut a11, _) = top.split_at_col_mut(w);
        let (mut a21, a22) = bottom.split_at_col_mut(w);
        let stack = MemStack::new(&mut mem);
        if cholesky_in_place(a11.as_mut(), Default::default(), Par::Seq, stack, Default::default()).is_err() {
            return Ok(false);
        }
        if rest > 0 {
            // Y = A21 L11^{-T} (solve L11 Y^T = A21^T), then L21 = Y D11^{-1}.
            faer::linalg::triangular_solve::solve_unit_lower_triangular_in_place(
                a11.as_ref(),
                a21.as_mut().transpose_mut(),
                Par::Seq,
            );
            let mut yb = y.as_mut().submatrix_mut(0, 0, rest, w);
            yb.copy_from(a21.as_ref());
            for c in 0..w {
                let dc = a11[(c, c)];
                if dc == 0.0 || !dc.is_finite() {
                    return Ok(false);
                }
                a21.as_mut().col_mut(c).iter_mut().for_each(|v| *v /= dc);
            }
            // A22 -= Y L21^T (lower triangle).
            let (lower, rect) = (BlockStructure::TriangularLower, BlockStructure::Rectangular);
            tri_matmul(a22, lower, faer::Accum::Add, yb.as_ref(), rect, a21.as_ref().transpose(), rect, -1.0, Par::Seq);
        }
        j0 += w;
    }
    Ok(true)
}

/// State of the inertia route along one sweep.
pub(super) struct InertiaState {
    /// Certified: the smallest eigenvalue of the exact `G_t` exceeds `floor` for the current
    /// and every later split of the sweep (interlacing: `G_{t+1} = G_t[1:, 1:] + c c^T`, so
    /// `lambda_min` never decreases along the sweep).
    floor: f64,
    /// Guess of `lambda_min(G_t)` (from inverse iterations), where the next certificate is tried.
    guess: Option<f64>,
    /// Fraction of the guess at which the certificate is tried (halved after each miss).
    frac: f64,
    /// Whether the previous split had full count (then a Cholesky certificate is tried first).
    full_last: bool,
}

impl InertiaState {
    pub(super) fn new() -> Self {
        InertiaState { floor: f64::NEG_INFINITY, guess: None, frac: 0.5, full_last: true }
    }
}

/// Count the singular values of `H_t` above the threshold by inertia (see the module
/// documentation for the error bound).
pub(super) fn inertia_route(
    gram: &mut Gram,
    t: usize,
    k: usize,
    tol: &Tolerance,
    st: &mut InertiaState,
) -> Result<InertiaOutcome> {
    let fro = gram.frobenius();
    if fro.is_nan() || fro <= 1e-200 || !fro.is_finite() {
        return Ok(InertiaOutcome::NearFloor);
    }
    // Rounding of the carried Gram matrix (sums of t products), and the allowance for a
    // factorisation's own backward error (checked a posteriori on each factorisation).
    let gram_err = |lam1: f64| 2.0 * f64::EPSILON * (t + k) as f64 * lam1;
    let allowance = |lam1: f64| 32.0 * (k + 1) as f64 * f64::EPSILON * lam1;
    let tau_top = tol.threshold(fro.sqrt(), k, t);
    // Even at the largest possible lambda_1 the threshold sits in the noise: only the
    // full-count certificate can answer.
    let near_floor = tau_top * tau_top <= 2.0 * (gram_err(fro) + allowance(fro));
    // Full count from the certificate of an earlier split, already at the crude bound
    // lambda_1 <= |G|_F (no power iterations).
    if tau_top * tau_top < st.floor {
        return Ok(InertiaOutcome::Count(k));
    }
    let (lam_lo, lam_hi) = if near_floor {
        (0.0, fro)
    } else {
        let (rho, eta) = top_eigenpair(gram, fro);
        // Rounding of rho, eta and |G|_F (sums of k^2 products).
        let round = 4.0 * f64::EPSILON * k as f64 * fro;
        let b = (fro * fro - rho * rho).max(0.0).sqrt() + round;
        let hi = if rho - round > b { (rho + eta * eta / (rho - round - b) + round).min(fro) } else { fro };
        ((rho - round).max(0.0), hi)
    };
    let (err, allow) = (gram_err(lam_hi), allowance(lam_hi));
    let tau_hi = tol.threshold(lam_hi.sqrt(), k, t);
    // c(x), the positive count of a factorisation of G - x I with backward error <= allow,
    // lies between N(x + allow + err) and N(x - allow - err) (N(s): eigenvalues of the exact
    // G above s), so c(s_hi) <= N(tau^2) <= c(s_lo).
    let s_hi = tau_hi * tau_hi + err + allow;
    if !s_hi.is_finite() {
        return Ok(InertiaOutcome::NearFloor);
    }
    // Full count, from the certificate of an earlier split of the sweep ...
    if tau_hi * tau_hi < st.floor {
        return Ok(InertiaOutcome::Count(k));
    }
    crate::interrupt::check()?;
    // ... or from a fresh positive definite factorisation, tried first higher, at a fraction
    // of the guessed lambda_min, so that it covers the following splits too.
    if st.full_last {
        let high = st.guess.map(|g| st.frac * g).filter(|&x| x > s_hi);
        for s in high.into_iter().chain(std::iter::once(s_hi)) {
            if let Some((pos, bound, f)) = ldlt_inertia(gram, s)? {
                if pos == k && bound <= allow {
                    st.floor = s - err - allow;
                    st.guess = Some(s + smallest_eigenvalue_estimate(&f));
                    return Ok(InertiaOutcome::Count(k));
                }
            }
            if s > s_hi {
                st.frac *= 0.5;
            }
        }
        st.full_last = false;
        st.guess = None;
    }
    if near_floor {
        return Ok(InertiaOutcome::NearFloor);
    }
    let tau_lo = tol.threshold(lam_lo.sqrt(), k, t);
    let s_lo = tau_lo * tau_lo - err - allow;
    if s_lo.is_nan() || s_lo <= 0.0 {
        return Ok(InertiaOutcome::NearFloor);
    }
    let Some((c_hi, e_hi, _)) = ldlt_inertia(gram, s_hi)? else {
        return Ok(InertiaOutcome::Undecided);
    };
    if e_hi > allow {
        return Ok(InertiaOutcome::Undecided);
    }
    if c_hi == k {
        st.full_last = true;
        return Ok(InertiaOutcome::Count(k));
    }
    let Some((c_lo, e_lo, _)) = ldlt_inertia(gram, s_lo)? else {
        return Ok(InertiaOutcome::Undecided);
    };
    if e_lo <= allow && c_lo == c_hi {
        Ok(InertiaOutcome::Count(c_hi))
    } else {
        Ok(InertiaOutcome::Undecided)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 11) as f64) / ((1u64 << 53) as f64) - 0.5
    }

    /// The blocked factorisation equals the library's unblocked one (to rounding) across several
    /// panels, and its inertia is that of the eigenvalues.
    #[test]
    fn blocked_ldlt_matches_library_and_eigenvalue_inertia() {
        let mut seed = 5u64;
        for &(k, shift) in &[(1usize, 0.0), (127, 0.3), (128, 0.0), (129, 1.0), (300, 0.5), (401, 2.0)] {
            let b = Mat::<f64>::from_fn(k, k, |_, _| lcg(&mut seed));
            let g = Mat::<f64>::from_fn(k, k, |i, j| (b[(i, j)] + b[(j, i)]) + if i == j { shift } else { 0.0 });
            let mut ours = g.clone();
            assert!(blocked_ldlt(ours.as_mut()).unwrap());
            let mut lib = g.clone();
            let mut mem = MemBuffer::new(faer::linalg::cholesky::ldlt::factor::cholesky_in_place_scratch::<f64>(
                k,
                Par::Seq,
                Default::default(),
            ));
            faer::linalg::cholesky::ldlt::factor::cholesky_in_place(
                lib.as_mut(),
                Default::default(),
                Par::Seq,
                MemStack::new(&mut mem),
                Default::default(),
            )
            .unwrap();
            // Reconstruction of G from the blocked factors.
            let l = Mat::<f64>::from_fn(k, k, |i, j| {
                if i == j {
                    1.0
                } else if i > j {
                    ours[(i, j)]
                } else {
                    0.0
                }
            });
            let ld = Mat::<f64>::from_fn(k, k, |i, j| l[(i, j)] * ours[(j, j)]);
            let rec = &ld * l.transpose();
            let gmax = g.norm_max();
            for i in 0..k {
                for j in 0..=i {
                    assert!((rec[(i, j)] - g[(i, j)]).abs() <= 1e-9 * gmax, "k = {k}: LDL^T off at ({i}, {j})");
                }
            }
            let pos = (0..k).filter(|&j| ours[(j, j)] > 0.0).count();
            let pos_lib = (0..k).filter(|&j| lib[(j, j)] > 0.0).count();
            let evals: Vec<f64> = g.self_adjoint_eigenvalues(faer::Side::Lower).unwrap();
            assert_eq!(pos, pos_lib, "k = {k}");
            assert_eq!(pos, evals.iter().filter(|&&x| x > 0.0).count(), "k = {k}");
        }
    }
}
