//! Eigenvalues (no vectors) of a real symmetric matrix, interruptible.
//!
//! # Algorithm
//!
//! 1. The matrix is rescaled by an exact power of two so that its largest entry is near 1:
//!    no square or norm below over- or underflows, whatever the input's magnitude
//!    (subnormal entries are scaled up exactly; a huge matrix loses only entries below
//!    `2^-1022` of its norm).
//! 2. Blocked Householder reduction to tridiagonal form, as LAPACK's `dsytrd` (lower
//!    triangle): a panel of [`NB`] columns is reduced with level-2 operations while the
//!    trailing matrix is left untouched, the products `W` that represent the panel's
//!    transformation are collected, and the trailing matrix then gets the rank-`2 NB`
//!    update `A -= V W^T + W V^T` as two triangular matrix products (faer's `matmul`). The
//!    symmetric matrix-vector product of each column, half of all flops, is a fused pass over
//!    the lower triangle (each entry read once), compiled for AVX2 + FMA when available.
//!    A pending interrupt is checked once per panel: at most `~4 NB n^2` flops between checks.
//! 3. Eigenvalues of the tridiagonal matrix by the implicit QL algorithm with Wilkinson
//!    shifts (values only, `O(n^2)`), deflating an off-diagonal entry once it is below `eps`
//!    times its two diagonal neighbours.
//!
//! Orthogonal reductions are backward stable: the computed eigenvalues are exact for a
//! matrix within a small multiple of `n eps |A|` of the input, as LAPACK's and faer's.

use faer::linalg::matmul::triangular::{matmul as tri_matmul, BlockStructure};
use faer::{Accum, MatMut, MatRef, Par};

use super::{mul_pow2, pow2_exponent};
use crate::error::{Error, Result};

/// Panel width of the blocked reduction.
const NB: usize = 32;

/// Below this order the reduction is done column by column (a single panel).
const NX: usize = 64;

/// Eigenvalues of the symmetric `n x n` matrix whose lower triangle is stored column-major in
/// `a` (`a[i + j * n]`, `i >= j`; the strict upper triangle is neither read nor kept). `a` is
/// overwritten. Returned in no particular order.
///
/// Fails with [`Error::Interrupted`] when an interrupt is pending (checked per panel) and with
/// [`Error::Numerical`] if the tridiagonal QL iteration does not converge (not seen in practice;
/// the cap is `30 n` iterations).
pub(crate) fn symmetric_eigenvalues(a: &mut [f64], n: usize) -> Result<Vec<f64>> {
    if a.len() < n * n {
        return Err(Error::Numerical(format!("symmetric eigensolver: buffer of {} for order {n}", a.len())));
    }
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut amax = 0.0f64;
    for j in 0..n {
        for &v in &a[j * n + j..(j + 1) * n] {
            amax = amax.max(v.abs());
        }
    }
    if amax == 0.0 {
        return Ok(vec![0.0; n]);
    }
    if !amax.is_finite() {
        return Err(Error::Numerical("symmetric eigensolver: non-finite entry".into()));
    }
    let e2 = pow2_exponent(amax);
    if e2 != 0 {
        for j in 0..n {
            for v in &mut a[j * n + j..(j + 1) * n] {
                *v = mul_pow2(*v, e2);
            }
        }
    }
    let mut d = vec![0.0; n];
    let mut e = vec![0.0; n];
    tridiagonalise(a, n, &mut d, &mut e)?;
    tridiagonal_ql(&mut d, &mut e)?;
    if e2 != 0 {
        for v in &mut d {
            *v = mul_pow2(*v, -e2);
        }
    }
    Ok(d)
}

/// Householder reduction `Q^T A Q = T`: `d` gets the diagonal of `T`, `e[..n-1]` its
/// subdiagonal (`e[n-1] = 0`).
fn tridiagonalise(a: &mut [f64], n: usize, d: &mut [f64], e: &mut [f64]) -> Result<()> {
    e[n - 1] = 0.0;
    let mut w = vec![0.0; n * NB.max(NX)];
    let mut tmp = vec![0.0; NB.max(NX)];
    let mut i0 = 0;
    while n - i0 > 1 {
        crate::interrupt::check()?;
        let m = n - i0;
        // The last (at most NX) columns in one panel, whose trailing update is then only the
        // last diagonal entry.
        let b = if m <= NX { m - 1 } else { NB };
        panel(a, n, i0, b, &mut w[..m * b], &mut tmp, d, e);
        if m > b {
            // A[i0+b.., i0+b..] -= V W^T + W V^T (lower triangle).
            let r = i0 + b;
            let m2 = n - r;
            let (left, right) = a.split_at_mut(r * n);
            let v = MatRef::from_column_major_slice_with_stride(&left[i0 * n + r..], m2, b, n);
            let wm = MatRef::from_column_major_slice_with_stride(&w[b..], m2, b, m);
            let mut dst = MatMut::from_column_major_slice_with_stride_mut(&mut right[r..], m2, m2, n);
            let lower = BlockStructure::TriangularLower;
            let rect = BlockStructure::Rectangular;
            tri_matmul(dst.as_mut(), lower, Accum::Add, v, rect, wm.transpose(), rect, -1.0, Par::Seq);
            tri_matmul(dst.as_mut(), lower, Accum::Add, wm, rect, v.transpose(), rect, -1.0, Par::Seq);
        }
        i0 += b;
    }
    d[n - 1] = a[(n - 1) * n + n - 1];
    Ok(())
}

/// Reduce the `b` columns `i0..i0+b` (LAPACK's `dlatrd`, lower): `W` (`m x b`, column-major,
/// rows `i0..n`) receives the panel's update vectors, the Householder vectors stay in `A`
/// below the subdiagonal with a unit on the subdiagonal.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn panel(a: &mut [f64], n: usize, i0: usize, b: usize, w: &mut [f64], tmp: &mut [f64], d: &mut [f64], e: &mut [f64]) {
    let m = n - i0;
    for p in 0..b {
        let j = i0 + p;
        let (prev, rest) = a.split_at_mut(j * n);
        let (colj, trail) = rest.split_at_mut(n);
        // Update column j (rows j..n) with the panel's earlier transformations:
        // A[j:, j] -= A[j:, i0..j] W[j, :p]^T + W[j:, :p] A[j, i0..j]^T.
        for q in 0..p {
            let vq = &prev[(i0 + q) * n..(i0 + q + 1) * n];
            let wq = &w[q * m..(q + 1) * m];
            let (wjq, vjq) = (wq[p], vq[j]);
            let dst = &mut colj[j..];
            axpy(dst, &vq[j..], -wjq);
            axpy(dst, &wq[p..], -vjq);
        }
        d[j] = colj[j];
        // Householder reflector annihilating A[j+2.., j].
        let (beta, tau) = householder(&mut colj[j + 1..]);
        e[j] = beta;
        colj[j + 1] = 1.0;
        let v = &colj[j + 1..];
        let len = n - j - 1;
        let (wlo, whi) = w.split_at_mut(p * m);
        let wcol = &mut whi[p + 1..p + 1 + len];
        if tau == 0.0 {
            wcol.iter_mut().for_each(|x| *x = 0.0);
            continue;
        }
        // W[j+1:, p] = A[j+1:, j+1:] v (the trailing matrix as the panel left it).
        symv_lower(trail, n, j + 1, len, v, wcol);
        if p > 0 {
            // wcol -= A[j+1:, i0..j] (W[j+1:, :p]^T v) + W[j+1:, :p] (A[j+1:, i0..j]^T v).
            for q in 0..p {
                tmp[q] = dot(&wlo[q * m + p + 1..q * m + p + 1 + len], v);
            }
            for q in 0..p {
                let vq = &prev[(i0 + q) * n + j + 1..(i0 + q + 1) * n];
                axpy(wcol, vq, -tmp[q]);
            }
            for q in 0..p {
                let vq = &prev[(i0 + q) * n + j + 1..(i0 + q + 1) * n];
                tmp[q] = dot(vq, v);
            }
            for q in 0..p {
                let wq = &wlo[q * m + p + 1..q * m + p + 1 + len];
                axpy(wcol, wq, -tmp[q]);
            }
        }
        wcol.iter_mut().for_each(|x| *x *= tau);
        let alpha = -0.5 * tau * dot(wcol, v);
        axpy(wcol, v, alpha);
    }
}

/// `y = B x` for the symmetric `len x len` block `B` whose lower triangle is stored column-major
/// with stride `n` in `t`: `B(i, j) = t[j * n + r0 + i]` (`i >= j`), `r0` the block's first row
/// in the buffer, whose column 0 is the block's first column. One pass over the triangle.
#[inline(always)]
fn symv_lower(t: &[f64], n: usize, r0: usize, len: usize, x: &[f64], y: &mut [f64]) {
    y[..len].iter_mut().for_each(|v| *v = 0.0);
    for jj in 0..len {
        let col = &t[jj * n + r0 + jj..jj * n + r0 + len];
        let xj = x[jj];
        let Some((diag, below)) = col.split_first() else { continue };
        let s = dot_axpy(below, &x[jj + 1..len], &mut y[jj + 1..len], xj);
        y[jj] += s + diag * xj;
    }
}

/// Whether the AVX2 + FMA kernels below can run.
#[inline(always)]
fn simd() -> bool {
    crate::cpu::has_avx2_fma()
}

/// `dot(g, x)`, and `y += xj g` in the same pass over `g` (the fused step of the symmetric
/// matrix-vector product). `x` and `y` have at least `g.len()` entries.
#[inline]
fn dot_axpy(g: &[f64], x: &[f64], y: &mut [f64], xj: f64) -> f64 {
    let n = g.len();
    let (x, y) = (&x[..n], &mut y[..n]);
    #[cfg(target_arch = "x86_64")]
    if simd() {
        // SAFETY: AVX2 and FMA were detected at run time; the slices have equal lengths.
        return unsafe { avx::dot_axpy(g, x, y, xj) };
    }
    let mut s = 0.0;
    for ((g, xv), yv) in g.iter().zip(x).zip(y.iter_mut()) {
        s += g * xv;
        *yv += g * xj;
    }
    s
}

#[inline]
pub(super) fn dot(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len());
    let (x, y) = (&x[..n], &y[..n]);
    #[cfg(target_arch = "x86_64")]
    if simd() {
        // SAFETY: AVX2 and FMA were detected at run time; the slices have equal lengths.
        return unsafe { avx::dot(x, y) };
    }
    x.iter().zip(y).map(|(a, b)| a * b).sum()
}

/// `y += alpha x`.
#[inline]
pub(super) fn axpy(y: &mut [f64], x: &[f64], alpha: f64) {
    let n = x.len().min(y.len());
    let (y, x) = (&mut y[..n], &x[..n]);
    #[cfg(target_arch = "x86_64")]
    if simd() {
        // SAFETY: AVX2 and FMA were detected at run time; the slices have equal lengths.
        return unsafe { avx::axpy(y, x, alpha) };
    }
    for (a, b) in y.iter_mut().zip(x) {
        *a += alpha * b;
    }
}

/// AVX2 + FMA kernels (4 lanes, two accumulators). Callers pass slices of equal length.
#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256d) -> f64 {
        let lo = _mm256_castpd256_pd128(v);
        let hi = _mm256_extractf128_pd(v, 1);
        let s = _mm_add_pd(lo, hi);
        let h = _mm_unpackhi_pd(s, s);
        _mm_cvtsd_f64(_mm_add_sd(s, h))
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_axpy(g: &[f64], x: &[f64], y: &mut [f64], xj: f64) -> f64 {
        let n = g.len();
        assert!(x.len() == n && y.len() == n);
        let (pg, px, py) = (g.as_ptr(), x.as_ptr(), y.as_mut_ptr());
        let vj = _mm256_set1_pd(xj);
        let (mut a0, mut a1) = (_mm256_setzero_pd(), _mm256_setzero_pd());
        let mut i = 0;
        while i + 8 <= n {
            let g0 = _mm256_loadu_pd(pg.add(i));
            let g1 = _mm256_loadu_pd(pg.add(i + 4));
            a0 = _mm256_fmadd_pd(g0, _mm256_loadu_pd(px.add(i)), a0);
            a1 = _mm256_fmadd_pd(g1, _mm256_loadu_pd(px.add(i + 4)), a1);
            _mm256_storeu_pd(py.add(i), _mm256_fmadd_pd(g0, vj, _mm256_loadu_pd(py.add(i))));
            _mm256_storeu_pd(py.add(i + 4), _mm256_fmadd_pd(g1, vj, _mm256_loadu_pd(py.add(i + 4))));
            i += 8;
        }
        let mut s = hsum(_mm256_add_pd(a0, a1));
        while i < n {
            s += g[i] * x[i];
            y[i] += g[i] * xj;
            i += 1;
        }
        s
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot(x: &[f64], y: &[f64]) -> f64 {
        let n = x.len();
        assert!(y.len() == n);
        let (px, py) = (x.as_ptr(), y.as_ptr());
        let (mut a0, mut a1) = (_mm256_setzero_pd(), _mm256_setzero_pd());
        let mut i = 0;
        while i + 8 <= n {
            a0 = _mm256_fmadd_pd(_mm256_loadu_pd(px.add(i)), _mm256_loadu_pd(py.add(i)), a0);
            a1 = _mm256_fmadd_pd(_mm256_loadu_pd(px.add(i + 4)), _mm256_loadu_pd(py.add(i + 4)), a1);
            i += 8;
        }
        let mut s = hsum(_mm256_add_pd(a0, a1));
        while i < n {
            s += x[i] * y[i];
            i += 1;
        }
        s
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn axpy(y: &mut [f64], x: &[f64], alpha: f64) {
        let n = y.len();
        assert!(x.len() == n);
        let (px, py) = (x.as_ptr(), y.as_mut_ptr());
        let va = _mm256_set1_pd(alpha);
        let mut i = 0;
        while i + 4 <= n {
            _mm256_storeu_pd(py.add(i), _mm256_fmadd_pd(va, _mm256_loadu_pd(px.add(i)), _mm256_loadu_pd(py.add(i))));
            i += 4;
        }
        while i < n {
            y[i] += alpha * x[i];
            i += 1;
        }
    }
}

/// Euclidean norm without spurious over- or underflow.
#[inline(always)]
fn norm2(x: &[f64]) -> f64 {
    let s = dot(x, x);
    if s.is_finite() && s > 1e-280 {
        return s.sqrt();
    }
    let xmax = x.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    if xmax == 0.0 || !xmax.is_finite() {
        return xmax;
    }
    let r = 1.0 / xmax;
    let s: f64 = x.iter().map(|v| (v * r) * (v * r)).sum();
    xmax * s.sqrt()
}

/// Householder reflector (LAPACK's `dlarfg`) for `x = [alpha; rest]`: returns `(beta, tau)`
/// with `(I - tau v v^T) x = beta e_1`, `v = [1; rest']`, and stores `rest'` in place of `rest`.
/// `tau = 0` (identity) when `rest` is zero.
#[inline(always)]
pub(super) fn householder(x: &mut [f64]) -> (f64, f64) {
    let Some((alpha, rest)) = x.split_first_mut() else {
        return (0.0, 0.0);
    };
    let alpha = *alpha;
    let xnorm = norm2(rest);
    if xnorm == 0.0 {
        return (alpha, 0.0);
    }
    let beta = -alpha.hypot(xnorm).copysign(alpha);
    let tau = (beta - alpha) / beta;
    let scale = 1.0 / (alpha - beta);
    if scale.is_finite() {
        rest.iter_mut().for_each(|v| *v *= scale);
    } else {
        let den = alpha - beta;
        rest.iter_mut().for_each(|v| *v /= den);
    }
    (beta, tau)
}

/// `sqrt(a^2 + b^2)`, with the cheap formula where no square can over- or underflow.
#[inline(always)]
fn pythag(a: f64, b: f64) -> f64 {
    let (x, y) = (a.abs(), b.abs());
    let big = x.max(y);
    if big < 1e150 && big > 1e-150 && x.min(y) > 1e-150 {
        (x * x + y * y).sqrt()
    } else {
        x.hypot(y)
    }
}

/// Eigenvalues of the symmetric tridiagonal matrix with diagonal `d` and subdiagonal
/// `e[..n-1]` by the implicit QL algorithm with Wilkinson shifts; `d` is overwritten with
/// them (unordered), `e` is destroyed.
pub(crate) fn tridiagonal_ql(d: &mut [f64], e: &mut [f64]) -> Result<()> {
    let n = d.len();
    if n <= 1 {
        return Ok(());
    }
    e[n - 1] = 0.0;
    let eps = f64::EPSILON;
    let tiny = f64::MIN_POSITIVE;
    let mut iters = 0usize;
    let cap = 30 * n;
    for l in 0..n {
        loop {
            let mut m = l;
            while m + 1 < n {
                let dd = d[m].abs() + d[m + 1].abs();
                if e[m].abs() <= eps * dd || e[m].abs() < tiny {
                    break;
                }
                m += 1;
            }
            if m == l {
                break;
            }
            iters += 1;
            if iters > cap {
                return Err(Error::Numerical("symmetric tridiagonal QL iteration did not converge".into()));
            }
            // Wilkinson shift from the leading 2 x 2 block.
            let mut g = (d[l + 1] - d[l]) / (2.0 * e[l]);
            let mut r = pythag(g, 1.0);
            g = d[m] - d[l] + e[l] / (g + r.copysign(g));
            let (mut s, mut c, mut p) = (1.0f64, 1.0f64, 0.0f64);
            let mut i = m;
            let mut early = false;
            while i > l {
                i -= 1;
                let f = s * e[i];
                let bb = c * e[i];
                r = pythag(f, g);
                e[i + 1] = r;
                if r == 0.0 {
                    d[i + 1] -= p;
                    e[m] = 0.0;
                    early = true;
                    break;
                }
                s = f / r;
                c = g / r;
                g = d[i + 1] - p;
                r = (d[i] - g) * s + 2.0 * c * bb;
                p = s * r;
                d[i + 1] = g + p;
                g = c * r - bb;
            }
            if early {
                continue;
            }
            d[l] -= p;
            e[l] = g;
            e[m] = 0.0;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use faer::Mat;

    fn lcg(seed: &mut u64) -> f64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 11) as f64) / ((1u64 << 53) as f64) - 0.5
    }

    fn sorted(mut v: Vec<f64>) -> Vec<f64> {
        v.sort_by(|x, y| y.total_cmp(x));
        v
    }

    fn ours(m: &Mat<f64>) -> Vec<f64> {
        let n = m.nrows();
        let mut a = vec![0.0; n * n];
        for j in 0..n {
            for i in j..n {
                a[j * n + i] = m[(i, j)];
            }
        }
        sorted(symmetric_eigenvalues(&mut a, n).unwrap())
    }

    fn faers(m: &Mat<f64>) -> Vec<f64> {
        sorted(m.self_adjoint_eigenvalues(faer::Side::Lower).unwrap())
    }

    /// `Q diag(lam) Q^T` with a random orthogonal `Q`, entries accumulated in the slow
    /// obviously-correct way.
    fn with_spectrum(lam: &[f64], seed: &mut u64) -> Mat<f64> {
        let n = lam.len();
        let q = Mat::<f64>::from_fn(n, n, |_, _| lcg(seed)).qr().compute_thin_Q();
        let mut m = Mat::<f64>::zeros(n, n);
        for i in 0..n {
            for j in 0..=i {
                let v: f64 = (0..n).map(|k| q[(i, k)] * lam[k] * q[(j, k)]).sum();
                m[(i, j)] = v;
                m[(j, i)] = v;
            }
        }
        m
    }

    fn check(m: &Mat<f64>, exact: Option<&[f64]>, what: &str) {
        let n = m.nrows();
        let got = ours(m);
        let reference = faers(m);
        let norm = reference.iter().fold(0.0f64, |a, b| a.max(b.abs()));
        let tol = 8.0 * n.max(1) as f64 * f64::EPSILON * norm;
        for (x, y) in got.iter().zip(&reference) {
            assert!((x - y).abs() <= tol, "{what} n = {n}: {x} vs faer {y} (tol {tol})");
        }
        if let Some(ex) = exact {
            let ex = sorted(ex.to_vec());
            for (x, y) in got.iter().zip(&ex) {
                assert!((x - y).abs() <= tol, "{what} n = {n}: {x} vs exact {y} (tol {tol})");
            }
        }
    }

    #[test]
    fn matches_faer_and_known_spectra() {
        let mut seed = 5u64;
        for n in [1usize, 2, 3, 5, 31, 32, 33, 64, 65, 97, 130, 200] {
            // Random symmetric.
            let r = Mat::<f64>::from_fn(n, n, |_, _| lcg(&mut seed));
            let sym = Mat::<f64>::from_fn(n, n, |i, j| r[(i, j)] + r[(j, i)]);
            check(&sym, None, "random");
            // Graded spectrum over 12 decades, clustered, rank deficient.
            let graded: Vec<f64> = (0..n).map(|k| 10f64.powf(-12.0 * k as f64 / n as f64)).collect();
            check(&with_spectrum(&graded, &mut seed), Some(&graded), "graded");
            let cluster: Vec<f64> = (0..n).map(|k| if k % 3 == 0 { 1.0 } else { 1.0 + 1e-13 * k as f64 }).collect();
            check(&with_spectrum(&cluster, &mut seed), Some(&cluster), "clustered");
            let rank: Vec<f64> = (0..n).map(|k| if k < n / 4 { (k + 1) as f64 } else { 0.0 }).collect();
            check(&with_spectrum(&rank, &mut seed), Some(&rank), "rank deficient");
            // A Gram matrix (positive semidefinite, as the dense kernel uses).
            let h = Mat::<f64>::from_fn(n, n / 2 + 1, |_, _| lcg(&mut seed));
            check(&(&h * h.transpose()), None, "gram");
        }
    }

    #[test]
    fn tiny_and_huge_magnitudes() {
        let mut seed = 9u64;
        let n = 70;
        let lam: Vec<f64> = (0..n).map(|k| 1.0 + k as f64).collect();
        let base = with_spectrum(&lam, &mut seed);
        for e in [-1060, -1040, -1000, -600, 600, 1000, 1010] {
            let s = mul_pow2(1.0, e);
            let m = Mat::<f64>::from_fn(n, n, |i, j| mul_pow2(base[(i, j)], e));
            let got = ours(&m);
            for (x, y) in got.iter().zip(&sorted(lam.clone())) {
                // Entries rounded to the subnormal grid lose relative precision: compare with
                // the eigenvalues of the stored matrix, within its rounding.
                let rounding = if e < -1000 { 2f64.powi(-1074) / s * n as f64 * 4.0 } else { 0.0 };
                let tol = 1e-12 * n as f64 + rounding;
                assert!(x.is_finite() && ((x / s) - y).abs() <= tol * y.max(1.0), "2^{e}: {x} vs {}", y * s);
            }
        }
        // All zero and a 1 x 1.
        assert_eq!(symmetric_eigenvalues(&mut [0.0; 9], 3).unwrap(), vec![0.0; 3]);
        assert_eq!(symmetric_eigenvalues(&mut [-2.5], 1).unwrap(), vec![-2.5]);
        assert_eq!(symmetric_eigenvalues(&mut [], 0).unwrap(), Vec::<f64>::new());
    }

    #[test]
    fn diagonal_and_tridiagonal_inputs() {
        // Already tridiagonal (Wilkinson's W21+) and diagonal with zero off-diagonals.
        let n = 21;
        let mut m = Mat::<f64>::zeros(n, n);
        for i in 0..n {
            m[(i, i)] = (10.0 - i as f64).abs();
            if i + 1 < n {
                m[(i + 1, i)] = 1.0;
                m[(i, i + 1)] = 1.0;
            }
        }
        check(&m, None, "W21+");
        let d = Mat::<f64>::from_fn(n, n, |i, j| if i == j { (i as f64 - 7.0) * 1e-5 } else { 0.0 });
        let exact: Vec<f64> = (0..n).map(|i| (i as f64 - 7.0) * 1e-5).collect();
        check(&d, Some(&exact), "diagonal");
    }
}

#[cfg(test)]
mod speed {
    use super::*;
    use faer::Mat;

    /// Timing against faer (not a test of correctness beyond agreement):
    /// `cargo test --profile fastrelease -p ess-core --lib symeig_speed -- --ignored --nocapture`
    /// (`SYMEIG_SIZES="500 1024"` to choose the orders).
    #[test]
    #[ignore]
    fn symeig_speed() {
        let sizes: Vec<usize> = std::env::var("SYMEIG_SIZES")
            .unwrap_or_else(|_| "256 500 1024".into())
            .split_whitespace()
            .filter_map(|s| s.parse().ok())
            .collect();
        let mut seed = 1u64;
        for n in sizes {
            let h = Mat::<f64>::from_fn(n, n, |_, _| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((seed >> 11) as f64) / ((1u64 << 53) as f64) - 0.5
            });
            let g = &h * h.transpose();
            let reps = (2_000_000_000 / (n * n * n)).clamp(1, 20);
            let (mut tf, mut to) = (f64::INFINITY, f64::INFINITY);
            let (mut lf, mut lo) = (Vec::new(), Vec::new());
            for _ in 0..reps {
                let t0 = std::time::Instant::now();
                let mut s = faer::diag::Diag::<f64>::zeros(n);
                let scratch = faer::linalg::evd::self_adjoint_evd_scratch::<f64>(
                    n,
                    faer::linalg::evd::ComputeEigenvectors::No,
                    Par::Seq,
                    Default::default(),
                );
                let mut mem = faer::dyn_stack::MemBuffer::new(scratch);
                faer::linalg::evd::self_adjoint_evd(
                    g.as_ref(),
                    s.as_mut(),
                    None,
                    Par::Seq,
                    faer::dyn_stack::MemStack::new(&mut mem),
                    Default::default(),
                )
                .unwrap();
                tf = tf.min(t0.elapsed().as_secs_f64());
                lf = s.column_vector().iter().copied().collect();
                let t0 = std::time::Instant::now();
                let mut a = vec![0.0; n * n];
                for j in 0..n {
                    for i in j..n {
                        a[j * n + i] = g[(i, j)];
                    }
                }
                lo = symmetric_eigenvalues(&mut a, n).unwrap();
                to = to.min(t0.elapsed().as_secs_f64());
                for j in 0..n {
                    for i in j..n {
                        a[j * n + i] = g[(i, j)];
                    }
                }
                let (mut d, mut e) = (vec![0.0; n], vec![0.0; n]);
                let t0 = std::time::Instant::now();
                tridiagonalise(&mut a, n, &mut d, &mut e).unwrap();
                let t1 = t0.elapsed().as_secs_f64();
                tridiagonal_ql(&mut d, &mut e).unwrap();
                println!("  tridiagonalise {:.2} ms, QL {:.2} ms", t1 * 1e3, (t0.elapsed().as_secs_f64() - t1) * 1e3);
            }
            lf.sort_by(|x, y| y.total_cmp(x));
            lo.sort_by(|x, y| y.total_cmp(x));
            let diff = lf.iter().zip(&lo).fold(0.0f64, |m, (x, y)| m.max((x - y).abs())) / lf[0];
            println!(
                "n = {n:5}: faer {:8.2} ms, ours {:8.2} ms, faer/ours {:.2}x, max |diff| / lambda_max = {diff:.1e}",
                tf * 1e3,
                to * 1e3,
                tf / to
            );
        }
    }
}
