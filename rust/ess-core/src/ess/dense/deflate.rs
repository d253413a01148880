//! The deflated Gram route: singular values of a triangular factor whose spectrum has a few
//! dominant values, to the accuracy of an SVD, for the price of one symmetric eigensolve and
//! one product for the Gram matrix of the rest.
//!
//! # Why
//!
//! The Gram route squares the block: its eigenvalues carry an absolute error of order
//! `eps * sigma_1^2`, so singular values below about `sqrt(eps) * sigma_1` are lost. Blocks
//! with one or a few dominant singular values above a bulk that spans several decades (near
//! uniform attention, the heads of randomly initialised models) then go to the SVD route,
//! whose reduction costs `8/3 k^3` flops against `4/3 k^3` for the Gram route's.
//!
//! # How
//!
//! For the `k x k` upper-triangular factor `R` (same singular values as the block):
//!
//! 1. `X` (`k x m`): the top-`m` right singular subspace of `R`, by subspace iteration
//!    `X <- R^T (R X)` (warm-started from the previous split's subspace, its first rows
//!    dropped as the factor's leading rows are), then Rayleigh-Ritz within it.
//! 2. One direction `v` at a time: Givens rotations of adjacent columns bring `v` to the first
//!    coordinate (`R <- R Q`, `Q e_0 = v`), each followed by the rotation of two rows that
//!    restores the triangle (`R <- W^T R Q`): `O(k^2)` work, and the result is again upper
//!    triangular, `[[y, r^T], [0, R']]`. Were `v` exact, `r` would vanish; it is measured.
//! 3. After `m` directions, `S = R_m^T R_m` for the remaining triangle (about `k^3 / 3` flops,
//!    as products of 128 rows of the triangle at a time with an interrupt check per product)
//!    and its eigenvalues (the `symeig` solver). `S` holds the bulk alone, so its rounding is
//!    of order `eps * sigma_{m+1}^2`, not `eps * sigma_1^2`.
//! 4. Bounds, level by level: `Y^T Y = [[y^2, y r^T], [y r, R'^T R' + r r^T]]`. When `y^2` is
//!    separated from the rest by `gap > 0`, every eigenvalue lies within `y^2 |r|^2 / gap` of
//!    `y^2` or of an eigenvalue of `R'^T R' + r r^T` (the quadratic residual bound of Mathias
//!    and of Li and Li), and those lie in the eigenvalues of `R'^T R'` plus `[0, |r|^2]`
//!    (Weyl). Since `r` is measured, the bound is a posteriori: a poor direction shows up as a
//!    large `r`, and the route declines.
//!
//! Each singular value comes back with an interval (eigensolver and product rounding, the
//! couplings, the rotations), and the caller accepts the values only where those intervals
//! cannot change the tolerance count or move the entropy-ESS beyond the Gram route's own
//! bound; otherwise the split goes to the SVD route as before.

use faer::linalg::matmul::triangular::{matmul as tri_matmul, BlockStructure};
use faer::{Accum, Mat, MatMut, MatRef, Par};

use super::symeig;
use crate::error::{Error, Result};

/// Rows of the remaining triangle per product (and per interrupt check) in its Gram matrix.
const GRAM_ROWS: usize = 128;

/// Most dominant directions deflated.
pub(super) const MAX_M: usize = 8;

/// Smallest ratio `lambda_m / lambda_{m+1}` of Gram eigenvalues at which deflating the top
/// `m` directions is tried (the subspace iteration converges by this factor per step).
const MIN_RATIO: f64 = 1e4;

/// State of the route along one sweep.
#[derive(Default)]
pub(super) struct Deflation {
    /// Directions to deflate; 0: the route is off until the next choice.
    m: usize,
    /// `lambda_m / lambda_{m+1}` at the choice (sets the number of iterations).
    ratio: f64,
    /// Warm start: `warm_k x m`, column-major, the subspace of the factor of order `warm_k`.
    warm: Vec<f64>,
    warm_k: usize,
    /// Whether the route has settled a split since it was last chosen.
    proven: bool,
    /// Reused buffers: the rotated triangle, the Gram matrix of the rest.
    work: Vec<f64>,
    gram: Vec<f64>,
}

/// Singular values (non-increasing) with the interval each is known to lie in.
pub(super) struct Deflated {
    pub(super) sigma: Vec<f64>,
    pub(super) lo: Vec<f64>,
    pub(super) hi: Vec<f64>,
}

/// Test hooks: how many splits the route has answered (all threads); a switch that keeps it off
/// (for tests of the routes behind it); a lock for the tests that read or set either.
#[cfg(test)]
pub(super) static DEFLATED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
#[cfg(test)]
pub(super) static OFF: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
#[cfg(test)]
pub(super) static HOOKS: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Deflation {
    /// Whether the route is on.
    pub(super) fn active(&self) -> bool {
        #[cfg(test)]
        if OFF.load(std::sync::atomic::Ordering::Relaxed) {
            return false;
        }
        self.m > 0
    }

    /// Choose how many directions to deflate from the Gram eigenvalues `lam` (non-increasing)
    /// of a split the Gram route could not settle: the `m <= MAX_M` with the largest ratio
    /// `lambda_m / lambda_{m+1}`, if that is at least `MIN_RATIO`; else the route is off.
    pub(super) fn choose(&mut self, lam: &[f64]) {
        let (mut best, mut best_ratio) = (0usize, MIN_RATIO);
        for m in 1..=MAX_M.min(lam.len().saturating_sub(1)) {
            let (a, b) = (lam[m - 1], lam[m]);
            if a.is_nan() || a <= 0.0 {
                break;
            }
            let ratio = if b > 0.0 { a / b } else { f64::INFINITY };
            if ratio >= best_ratio {
                best = m;
                best_ratio = ratio;
                if ratio == f64::INFINITY {
                    // The rest is zero to working precision.
                    break;
                }
            }
        }
        if best != self.m {
            self.warm.clear();
            self.warm_k = 0;
        }
        self.m = best;
        self.ratio = best_ratio;
        self.proven = false;
    }

    /// Whether the route has settled a split since it was chosen (the caller then batches
    /// its eigensolves, see [`Deflation::prepare`]).
    pub(super) fn proven(&self) -> bool {
        self.proven
    }

    /// Record that the route settled a split.
    pub(super) fn settled(&mut self) {
        self.proven = true;
    }

    /// Turn the route off (after a split it could not settle).
    pub(super) fn stop(&mut self) {
        self.m = 0;
        self.proven = false;
        self.warm.clear();
        self.warm_k = 0;
    }

    /// Subspace iterations needed to bring the subspace from angle `theta0` to about
    /// `1e-15` at the chosen ratio.
    fn iterations(&self, theta0: f64) -> usize {
        let per = self.ratio.log10().max(1.0);
        (((1e-15f64 / theta0).log10().abs() / per).ceil() as usize).clamp(1, 8)
    }

    /// The singular values of the upper-triangular `k x k` factor `r` (column-major, zeros
    /// below the diagonal) by the deflated route, or `None` where it does not apply (no
    /// separated dominant subspace, a rank-deficient subspace, an eigensolve that failed).
    pub(super) fn values(&mut self, r: &[f64], k: usize) -> Result<Option<Deflated>> {
        let Some((p, form)) = self.prepare(r, k)? else {
            return Ok(None);
        };
        let lam_s = match symeig::eigenvalues_of_form(form) {
            Ok(v) => v,
            Err(Error::Interrupted) => return Err(Error::Interrupted),
            Err(_) => {
                self.stop();
                return Ok(None);
            }
        };
        let out = p.finish(lam_s);
        if out.is_none() {
            self.stop();
        }
        Ok(out)
    }

    /// Steps 1 to 3 of the module's method and the reduction of `S`: the tridiagonal form of
    /// `S`, whose eigenvalues [`Prepared::finish`] takes (so that those of several splits can
    /// share the vector lanes, see [`symeig::eigenvalues_of_forms`]).
    pub(super) fn prepare(&mut self, r: &[f64], k: usize) -> Result<Option<(Prepared, symeig::TridiagonalForm)>> {
        let m = self.m;
        if m == 0 || k < m + 2 || r.len() < k * k {
            return Ok(None);
        }
        crate::interrupt::check()?;
        let rm = MatRef::from_column_major_slice(&r[..k * k], k, k);
        let upper = BlockStructure::TriangularUpper;
        let lower = BlockStructure::TriangularLower;
        let rect = BlockStructure::Rectangular;

        // 1. Subspace iteration, warm-started where the previous split's subspace exists.
        let mut x = Mat::<f64>::zeros(k, m);
        let warm = self.warm_k >= k && self.warm.len() == self.warm_k * m;
        if warm {
            let drop = self.warm_k - k;
            for j in 0..m {
                for i in 0..k {
                    x[(i, j)] = self.warm[j * self.warm_k + drop + i];
                }
            }
        } else {
            // A fixed start with no special direction: R^T applied to a pseudo-random block.
            let mut seed = 0x9e37_79b9_7f4a_7c15u64;
            let mut g = Mat::<f64>::zeros(k, m);
            for j in 0..m {
                for i in 0..k {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    g[(i, j)] = ((seed >> 11) as f64 / (1u64 << 53) as f64) - 0.5;
                }
            }
            tri_matmul(x.as_mut(), rect, Accum::Replace, rm.transpose(), lower, g.as_ref(), rect, 1.0, Par::Seq);
        }
        if !orthonormalise(&mut x) {
            self.stop();
            return Ok(None);
        }
        let iters = self.iterations(if warm { 1e-6 } else { 1.0 });
        let mut z = Mat::<f64>::zeros(k, m);
        for _ in 0..iters {
            tri_matmul(z.as_mut(), rect, Accum::Replace, rm, upper, x.as_ref(), rect, 1.0, Par::Seq);
            tri_matmul(x.as_mut(), rect, Accum::Replace, rm.transpose(), lower, z.as_ref(), rect, 1.0, Par::Seq);
            if !orthonormalise(&mut x) {
                self.stop();
                return Ok(None);
            }
        }
        if m > 1 {
            // Rayleigh-Ritz: the basis of the subspace along the singular directions within it,
            // largest first (each is deflated on its own).
            tri_matmul(z.as_mut(), rect, Accum::Replace, rm, upper, x.as_ref(), rect, 1.0, Par::Seq);
            let h = z.transpose() * &z;
            let Ok(eig) = h.self_adjoint_eigen(faer::Side::Lower) else {
                self.stop();
                return Ok(None);
            };
            let u = eig.U();
            let rev = Mat::<f64>::from_fn(m, m, |i, j| u[(i, m - 1 - j)]);
            x = &x * &rev;
        }
        self.warm.clear();
        self.warm.extend((0..m).flat_map(|j| x.col(j).iter().copied().collect::<Vec<_>>()));
        self.warm_k = k;

        // 2. One direction at a time: rotations that bring it to the first coordinate, each
        // column rotation followed by the row rotation that restores the triangle.
        let mut y = std::mem::take(&mut self.work);
        y.clear();
        y.extend_from_slice(&r[..k * k]);
        let mut v: Vec<Vec<f64>> = (0..m).map(|j| x.col(j).iter().copied().collect()).collect();
        let mut levels = Vec::with_capacity(m);
        for j in 0..m {
            let n = k - j;
            let (head, rest) = v.split_at_mut(j + 1);
            let dir = &mut head[j];
            for i in (0..n - 1).rev() {
                let (c, s, rr) = super::givens(dir[i], dir[i + 1]);
                dir[i] = rr;
                dir[i + 1] = 0.0;
                for w in rest.iter_mut() {
                    let (p, q) = (w[i], w[i + 1]);
                    w[i] = c * p + s * q;
                    w[i + 1] = c * q - s * p;
                }
                if s == 0.0 && c == 1.0 {
                    continue;
                }
                // Columns (ci, ci + 1) of the working triangle, rows j..=ci + 1.
                let ci = j + i;
                let (left, right) = y.split_at_mut((ci + 1) * k);
                let col = &mut left[ci * k + j..ci * k + ci + 2];
                let nxt = &mut right[j..ci + 2];
                for (p, q) in col.iter_mut().zip(nxt.iter_mut()) {
                    let (u, w) = (*p, *q);
                    *p = c * u + s * w;
                    *q = c * w - s * u;
                }
                // Rows (ci, ci + 1): zero the fill at (ci + 1, ci).
                let (c2, s2, r2) = super::givens(y[ci * k + ci], y[ci * k + ci + 1]);
                y[ci * k + ci] = r2;
                y[ci * k + ci + 1] = 0.0;
                if s2 != 0.0 {
                    for col in ci + 1..k {
                        let (u, w) = (y[col * k + ci], y[col * k + ci + 1]);
                        y[col * k + ci] = c2 * u + s2 * w;
                        y[col * k + ci + 1] = c2 * w - s2 * u;
                    }
                }
            }
            // The deflated value and its row beyond the diagonal (the coupling to the rest).
            let d = y[j * k + j];
            let row2: f64 = (j + 1..k).map(|col| y[col * k + j] * y[col * k + j]).sum();
            levels.push((d * d, row2));
            for w in rest.iter_mut() {
                w.remove(0);
            }
        }

        // 3. The Gram matrix of the remaining triangle (lower half, column-major), as a sum of
        // products of GRAM_ROWS rows of the triangle each (rows p0..p1 are zero left of column
        // p0), with an interrupt check per product.
        let n2 = k - m;
        let ym = MatRef::from_column_major_slice(&y, k, k).submatrix(m, m, n2, n2);
        let mut s = std::mem::take(&mut self.gram);
        s.clear();
        s.resize(n2 * n2, 0.0);
        let mut p0 = 0;
        while p0 < n2 {
            crate::interrupt::check()?;
            let w = GRAM_ROWS.min(n2 - p0);
            let rows = ym.submatrix(p0, p0, w, n2 - p0);
            let dst = MatMut::from_column_major_slice_mut(&mut s, n2, n2).submatrix_mut(p0, p0, n2 - p0, n2 - p0);
            tri_matmul(dst, lower, Accum::Add, rows.transpose(), rect, rows, rect, 1.0, Par::Seq);
            p0 += w;
        }
        let fro2: f64 = y.iter().map(|v| v * v).sum();
        self.work = y;
        if !fro2.is_finite() || levels.iter().any(|&(a, c)| !(a.is_finite() && c.is_finite())) {
            self.gram = s;
            self.stop();
            return Ok(None);
        }
        let res = symeig::tridiagonal_form(&mut s, n2);
        self.gram = s;
        let form = match res {
            Ok(f) => f,
            Err(Error::Interrupted) => return Err(Error::Interrupted),
            Err(_) => {
                self.stop();
                return Ok(None);
            }
        };
        Ok(Some((Prepared { k, levels, fro: fro2.sqrt() }, form)))
    }
}

/// What [`Deflation::prepare`] leaves for [`Prepared::finish`].
pub(super) struct Prepared {
    k: usize,
    /// Per deflated direction: its value squared (`y_jj^2`) and the squared norm of the rest
    /// of its row (`|r_j|^2`, what couples it to the remaining triangle).
    levels: Vec<(f64, f64)>,
    /// Frobenius norm of the rotated triangle.
    fro: f64,
}

impl Prepared {
    /// Step 4 of the module's method: the values and their intervals from the eigenvalues of
    /// `S` (any order); `None` where a deflated value is not separated from the rest.
    pub(super) fn finish(&self, mut lam_s: Vec<f64>) -> Option<Deflated> {
        let Prepared { k, ref levels, fro } = *self;
        let m = levels.len();
        let n2 = lam_s.len();
        if m == 0 || n2 == 0 || lam_s.iter().any(|v| !v.is_finite()) {
            return None;
        }
        lam_s.sort_by(|p, q| q.total_cmp(p));
        let eps = f64::EPSILON;
        // Rounding of the eigensolver and of the k-term products (as the Gram route's bound).
        let err_s = 2.0 * eps * (k + n2) as f64 * lam_s[0].max(0.0);
        // Level j: Y_j^T Y_j = [[a, c^T], [c, B]] with a = y_jj^2, c = y_jj r_j,
        // B = R_{j+1}^T R_{j+1} + r_j r_j^T. Its eigenvalues lie within |c|^2 / gap of a and of
        // those of B, which lie in those of R_{j+1}^T R_{j+1} plus [0, |r_j|^2]. From the last
        // level up: `top` bounds the largest eigenvalue below level j; `shift` sums the moves.
        let mut top = lam_s[0] + err_s;
        let mut shift = 0.0;
        for &(a, r2) in levels.iter().rev() {
            let err_a = 2.0 * eps * k as f64 * a;
            let below = top + r2;
            let gap = (a - err_a) - below;
            if gap.is_nan() || gap <= 0.0 {
                return None;
            }
            let d = a * r2 / gap;
            shift += d + r2;
            top = (a + err_a + d).max(below + d);
        }
        // The rotations: each singular value of the rotated triangle is within this of R's.
        let rot = 8.0 * (m + 1) as f64 * eps * fro;
        let mut out = Deflated { sigma: Vec::with_capacity(k), lo: Vec::with_capacity(k), hi: Vec::with_capacity(k) };
        let mut push = |v: f64, e: f64| {
            out.sigma.push(v.max(0.0).sqrt());
            out.lo.push(((v - e).max(0.0).sqrt() - rot).max(0.0));
            out.hi.push((v + e).sqrt() + rot);
        };
        for &(a, _) in levels {
            push(a, 2.0 * eps * k as f64 * a + shift);
        }
        for &v in &lam_s {
            push(v, err_s + shift);
        }
        // (The deflated values come first; each exceeds the rest by its gap, but not
        // necessarily the ones deflated before it.)
        let mut order: Vec<usize> = (0..k).collect();
        order.sort_by(|&p, &q| out.sigma[q].total_cmp(&out.sigma[p]));
        let pick = |v: &[f64]| order.iter().map(|&i| v[i]).collect::<Vec<f64>>();
        let out = Deflated { sigma: pick(&out.sigma), lo: pick(&out.lo), hi: pick(&out.hi) };
        #[cfg(test)]
        DEFLATED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(out)
    }
}

/// Modified Gram-Schmidt, twice, on the columns of `x`; false if a column is (numerically) in
/// the span of the previous ones.
fn orthonormalise(x: &mut Mat<f64>) -> bool {
    let m = x.ncols();
    for j in 0..m {
        let before = x.col(j).norm_l2();
        if before.is_nan() || before <= 0.0 || !before.is_finite() {
            return false;
        }
        for _ in 0..2 {
            for p in 0..j {
                let d: f64 = x.col(p).iter().zip(x.col(j).iter()).map(|(u, v)| u * v).sum();
                for i in 0..x.nrows() {
                    let xp = x[(i, p)];
                    x[(i, j)] -= d * xp;
                }
            }
        }
        let nrm = x.col(j).norm_l2();
        if nrm.is_nan() || nrm <= 1e-8 * before {
            return false;
        }
        let inv = 1.0 / nrm;
        for i in 0..x.nrows() {
            x[(i, j)] *= inv;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 11) as f64) / ((1u64 << 53) as f64) - 0.5
    }

    fn orthogonal(n: usize, seed: &mut u64) -> Mat<f64> {
        let g = Mat::<f64>::from_fn(n, n, |_, _| lcg(seed));
        g.qr().compute_Q()
    }

    /// The upper-triangular factor (column-major, zeros below) of `U diag(sigma) V^T`, and its
    /// singular values by the library SVD.
    fn factor(sigma: &[f64], seed: &mut u64) -> (Vec<f64>, Vec<f64>) {
        let n = sigma.len();
        let u = orthogonal(n, seed);
        let v = orthogonal(n, seed);
        let m = Mat::<f64>::from_fn(n, n, |i, j| (0..n).map(|p| u[(i, p)] * sigma[p] * v[(j, p)]).sum());
        let r = m.qr().R().to_owned();
        let mut buf = vec![0.0; n * n];
        for j in 0..n {
            for i in 0..=j {
                buf[j * n + i] = r[(i, j)];
            }
        }
        let mut s = r.singular_values().unwrap();
        s.sort_by(|a, b| b.total_cmp(a));
        (buf, s)
    }

    #[test]
    fn dominant_values_over_a_bulk_of_many_decades() {
        // One to three dominant values above a bulk that spans six decades: the Gram route
        // cannot resolve the bulk; the deflated one does, to about eps * sigma_1.
        let mut seed = 5u64;
        for (m, n) in [(1usize, 60usize), (2, 90), (3, 140)] {
            let mut sigma: Vec<f64> = (0..m).map(|i| 1.0 / (1 + i) as f64).collect();
            let bulk = n - m;
            sigma.extend((0..bulk).map(|i| 1e-4 * 10f64.powf(-6.0 * i as f64 / (bulk - 1) as f64)));
            let (r, exact) = factor(&sigma, &mut seed);
            let mut d = Deflation::default();
            let lam: Vec<f64> = sigma.iter().map(|s| s * s).collect();
            d.choose(&lam);
            assert_eq!(d.m, m);
            let got = d.values(&r, n).unwrap().expect("the route applies");
            for i in 0..n {
                assert!(
                    got.lo[i] <= exact[i] + 1e-15 && exact[i] <= got.hi[i] + 1e-15,
                    "m {m}: sigma_{i} = {} outside [{}, {}]",
                    exact[i],
                    got.lo[i],
                    got.hi[i]
                );
                assert!((got.sigma[i] - exact[i]).abs() <= 64.0 * f64::EPSILON * exact[0], "m {m}, i {i}");
            }
            // The intervals are tight enough for the entropy bound.
            let bound: f64 = got.lo.iter().zip(&got.hi).map(|(a, b)| b - a).sum();
            assert!(bound < 1e-9, "m {m}: total width {bound}");
            // Warm start at a factor one order smaller: the trailing block of the same matrix
            // has other values, but the route still answers and brackets them.
            let n1 = n - 1;
            let r1: Vec<f64> = (1..n).flat_map(|j| (1..n).map(move |i| (i, j))).map(|(i, j)| r[j * n + i]).collect();
            let mut s1 = MatRef::from_column_major_slice(&r1, n1, n1).singular_values().unwrap();
            s1.sort_by(|a, b| b.total_cmp(a));
            if let Some(got) = d.values(&r1, n1).unwrap() {
                for i in 0..n1 {
                    assert!(got.lo[i] <= s1[i] + 1e-15 && s1[i] <= got.hi[i] + 1e-15, "warm, m {m}, i {i}");
                }
            }
        }
    }

    #[test]
    fn declines_without_a_separated_subspace() {
        let mut seed = 9u64;
        // No gap: geometric decay by 0.9 per value.
        let sigma: Vec<f64> = (0..40).map(|i| 0.9f64.powi(i)).collect();
        let lam: Vec<f64> = sigma.iter().map(|s| s * s).collect();
        let mut d = Deflation::default();
        d.choose(&lam);
        assert!(!d.active());
        assert!(d.values(&factor(&sigma, &mut seed).0, 40).unwrap().is_none());
        // A claimed gap that is not there (a wrong choice): the intervals show it, or the
        // route declines; it never returns values outside their intervals.
        d.m = 2;
        d.ratio = 1e8;
        let (r, exact) = factor(&sigma, &mut seed);
        if let Some(got) = d.values(&r, 40).unwrap() {
            for i in 0..40 {
                assert!(got.lo[i] <= exact[i] + 1e-15 && exact[i] <= got.hi[i] + 1e-15, "i {i}");
            }
        }
        // Too small to deflate, and a zero factor.
        d.m = 1;
        assert!(d.values(&[1.0, 0.0, 0.0, 1.0], 2).unwrap().is_none());
        d.m = 1;
        assert!(d.values(&vec![0.0; 100], 10).unwrap().is_none());
        assert!(!d.active());
    }
}
