//! Lockstep kernels written with AVX-512 intrinsics: the Householder bidiagonalisation of
//! [`super::BatchSvd`] and the split products of [`super::lanes`].
//!
//! The portable forms are written as loops over lane arrays `[f64; 16]` for the compiler to
//! vectorise. Compiled for AVX2 they use four 256-bit registers per lane vector; compiled for
//! AVX-512, the compiler turned some of their loops into gathers, and the Mamba-130m layer ran
//! 1.6x slower. Here a lane vector is two 512-bit registers, and sums that the portable forms
//! accumulate one at a time (the dot products of the bidiagonalisation's columns, the entries of
//! the split product) run four at a time: four independent chains of additions instead of one.
//!
//! Every lane performs the portable forms' operations in the same order with the same roundings
//! (separate multiplies and adds, no fused multiply-add; correctly rounded divisions and square
//! roots), so the results are the same bit for bit (tested against them).

use super::{LANES, SMALL_SVD_MAX};
use std::arch::x86_64::*;

const K: usize = LANES;
type V = [f64; K];
/// One lane vector: lanes 0..8 and 8..16.
type Z = [__m512d; 2];

#[inline(always)]
unsafe fn ld(a: &V) -> Z {
    [_mm512_loadu_pd(a.as_ptr()), _mm512_loadu_pd(a.as_ptr().add(8))]
}

#[inline(always)]
unsafe fn st(v: Z, a: &mut V) {
    _mm512_storeu_pd(a.as_mut_ptr(), v[0]);
    _mm512_storeu_pd(a.as_mut_ptr().add(8), v[1]);
}

#[inline(always)]
unsafe fn zero() -> Z {
    [_mm512_setzero_pd(); 2]
}

#[inline(always)]
unsafe fn add(x: Z, y: Z) -> Z {
    [_mm512_add_pd(x[0], y[0]), _mm512_add_pd(x[1], y[1])]
}

#[inline(always)]
unsafe fn sub(x: Z, y: Z) -> Z {
    [_mm512_sub_pd(x[0], y[0]), _mm512_sub_pd(x[1], y[1])]
}

#[inline(always)]
unsafe fn mul(x: Z, y: Z) -> Z {
    [_mm512_mul_pd(x[0], y[0]), _mm512_mul_pd(x[1], y[1])]
}

/// `acc + x * y`, rounded twice (as the portable `acc += x * y`).
#[inline(always)]
unsafe fn mul_add(acc: Z, x: Z, y: Z) -> Z {
    add(acc, mul(x, y))
}

#[inline(always)]
unsafe fn abs(x: Z) -> Z {
    [_mm512_abs_pd(x[0]), _mm512_abs_pd(x[1])]
}

/// `1 / x` where `x != 0`, else `0`.
#[inline(always)]
unsafe fn recip_or_zero(x: Z) -> Z {
    let one = _mm512_set1_pd(1.0);
    let mut r = zero();
    for h in 0..2 {
        let nz = _mm512_cmp_pd_mask::<_CMP_NEQ_UQ>(x[h], _mm512_setzero_pd());
        r[h] = _mm512_maskz_div_pd(nz, one, x[h]);
    }
    r
}

/// The Householder pivot of the portable form, lane-wise: `gg = -(sqrt(ss) with the sign of
/// f)`, `h = f gg - ss`; returns `(gg, 1 / h or 0, f - gg)`.
#[inline(always)]
unsafe fn pivot(f: Z, ss: Z) -> (Z, Z, Z) {
    let sign = _mm512_set1_pd(-0.0);
    let mut gg = zero();
    for h in 0..2 {
        let r = _mm512_sqrt_pd(ss[h]);
        // copysign(r, f), then negated
        let cs = _mm512_or_pd(_mm512_andnot_pd(sign, r), _mm512_and_pd(sign, f[h]));
        gg[h] = _mm512_xor_pd(cs, sign);
    }
    let hh = sub(mul(f, gg), ss);
    (gg, recip_or_zero(hh), sub(f, gg))
}

/// The portable bidiagonalisation's `anorm.max(v)`: `v` if it is larger or `anorm` is NaN,
/// else `anorm` (a NaN `v` leaves `anorm`).
#[inline(always)]
unsafe fn max_keep(anorm: Z, v: Z) -> Z {
    let mut r = zero();
    for h in 0..2 {
        // vmaxpd returns its second operand when either is NaN.
        let take_v = _mm512_cmp_pd_mask::<_CMP_UNORD_Q>(anorm[h], anorm[h]);
        let m = _mm512_max_pd(v[h], anorm[h]);
        r[h] = _mm512_mask_blend_pd(take_v, m, v[h]);
    }
    r
}

/// [`super::BatchSvd::bidiagonalise_portable`] on AVX-512 (same arguments and results): the `n x n`
/// matrices of the lanes in `a` (`a[j * n + i]` = `A[i][j]`, destroyed) to bidiagonal form,
/// diagonal into `w`, superdiagonal into `rv1[1..]` (lane-minor); returns per lane the largest
/// `|w[i]| + |rv1[i]|`.
///
/// # Safety
/// The processor must have AVX-512 F, DQ and VL ([`crate::cpu::has_avx512`], checked by the caller).
#[target_feature(enable = "avx2,fma,avx512f,avx512dq,avx512vl")]
pub(super) unsafe fn bidiagonalise(n: usize, a: &mut [V], w: &mut [f64], rv1: &mut [f64]) -> V {
    assert!(n <= SMALL_SVD_MAX && a.len() >= n * n && w.len() >= n * K && rv1.len() >= n * K);
    // Lane vector `i` of a lane-minor array (`w`, `rv1`).
    let wv = |x: &mut [f64], i: usize| -> *mut V { x.as_mut_ptr().add(i * K) as *mut V };
    let (mut g, mut scale, mut anorm) = (zero(), zero(), zero());
    let mut dots = [zero(); SMALL_SVD_MAX];
    let ap = a.as_mut_ptr();
    // Lane vector at flat index `e` of `a`.
    let at = |e: usize| -> *mut V { ap.add(e) };
    for i in 0..n {
        let l = i + 1;
        let sg = mul(scale, g);
        st(sg, &mut *wv(rv1, i));
        // Left Householder on column i (rows i..n: flat indices i n + i ..).
        let c0 = i * n;
        let mut sc = zero();
        for k in i..n {
            sc = add(sc, abs(ld(&*at(c0 + k))));
        }
        let inv = recip_or_zero(sc);
        let mut ss = zero();
        for k in i..n {
            let x = mul(ld(&*at(c0 + k)), inv);
            st(x, &mut *at(c0 + k));
            ss = mul_add(ss, x, x);
        }
        let (gl, hinv, piv) = pivot(ld(&*at(c0 + i)), ss);
        st(piv, &mut *at(c0 + i));
        // Columns j > i: s_j = (column i . column j) / h, column j += s_j column i; up to four
        // columns at a time (each column's sum in the portable order).
        let mut j = l;
        while j < n {
            let cnt = (n - j).min(4);
            let mut s4 = [zero(); 4];
            for k in i..n {
                let x = ld(&*at(c0 + k));
                for (u, s) in s4.iter_mut().enumerate().take(cnt) {
                    *s = mul_add(*s, x, ld(&*at((j + u) * n + k)));
                }
            }
            for s in s4.iter_mut().take(cnt) {
                *s = mul(*s, hinv);
            }
            for k in i..n {
                let x = ld(&*at(c0 + k));
                for (u, s) in s4.iter().enumerate().take(cnt) {
                    let p = at((j + u) * n + k);
                    st(add(ld(&*p), mul(*s, x)), &mut *p);
                }
            }
            j += cnt;
        }
        for k in i..n {
            st(mul(ld(&*at(c0 + k)), sc), &mut *at(c0 + k));
        }
        st(mul(sc, gl), &mut *wv(w, i));
        g = zero();
        scale = zero();
        // Right Householder on row i, columns l..n (flat indices k n + i).
        if i + 1 != n {
            let mut sc = zero();
            for k in l..n {
                sc = add(sc, abs(ld(&*at(k * n + i))));
            }
            let inv = recip_or_zero(sc);
            let mut ss = zero();
            for k in l..n {
                let x = mul(ld(&*at(k * n + i)), inv);
                st(x, &mut *at(k * n + i));
                ss = mul_add(ss, x, x);
            }
            let (gr, hinv, piv) = pivot(ld(&*at(l * n + i)), ss);
            st(piv, &mut *at(l * n + i));
            g = gr;
            for k in l..n {
                st(mul(ld(&*at(k * n + i)), hinv), &mut *wv(rv1, k));
            }
            // rows j > i: A[j][l..] += (A[j][l..] . A[i][l..]) rv1[l..]
            for d in dots[l..n].iter_mut() {
                *d = zero();
            }
            for k in l..n {
                let aik = ld(&*at(k * n + i));
                for (jj, d) in (l..n).zip(dots[l..n].iter_mut()) {
                    *d = mul_add(*d, ld(&*at(k * n + jj)), aik);
                }
            }
            for k in l..n {
                let r = ld(&*wv(rv1, k));
                for (jj, d) in (l..n).zip(dots[l..n].iter()) {
                    let p = at(k * n + jj);
                    st(add(ld(&*p), mul(*d, r)), &mut *p);
                }
            }
            for k in l..n {
                st(mul(ld(&*at(k * n + i)), sc), &mut *at(k * n + i));
            }
            scale = sc;
        }
        let v = add(abs(ld(&*wv(w, i))), abs(ld(&*wv(rv1, i))));
        anorm = max_keep(anorm, v);
    }
    let mut out = [0.0; K];
    st(anorm, &mut out);
    out
}

/// [`super::lanes`]' split product on AVX-512 (same results bit for bit): `wa[j * n + i]` =
/// `sum over r >= max(i, j), ascending, of so[r (r + 1) / 2 + i] * sr[r (r + 1) / 2 + j]`
/// (both factors packed by rows, lower triangles), every lane.
///
/// The entries with the same `m = max(i, j)` (column `m` above the diagonal, row `m` left of
/// it) share their range of `r` and go four at a time.
///
/// # Safety
/// The processor must have AVX-512 F, DQ and VL ([`crate::cpu::has_avx512`], checked by the caller).
#[target_feature(enable = "avx2,fma,avx512f,avx512dq,avx512vl")]
pub(super) unsafe fn split_product(n: usize, so: &[V], sr: &[V], wa: &mut [V]) {
    let nt = n * (n + 1) / 2;
    assert!(so.len() >= nt && sr.len() >= nt && wa.len() >= n * n);
    let (sop, srp) = (so.as_ptr(), sr.as_ptr());
    for m in 0..n {
        // (i, j) pairs with max(i, j) = m: (i, m) for i <= m, then (m, j) for j < m.
        let pair = |p: usize| -> (usize, usize) {
            if p <= m {
                (p, m)
            } else {
                (m, p - m - 1)
            }
        };
        let np = 2 * m + 1;
        let mut p = 0;
        while p < np {
            let cnt = (np - p).min(4);
            let mut ij = [(0usize, 0usize); 4];
            for (u, x) in ij.iter_mut().enumerate().take(cnt) {
                *x = pair(p + u);
            }
            let mut acc = [zero(); 4];
            let mut base = m * (m + 1) / 2;
            for r in m..n {
                for u in 0..cnt {
                    let (i, j) = ij[u];
                    acc[u] = add(acc[u], mul(ld(&*sop.add(base + i)), ld(&*srp.add(base + j))));
                }
                base += r + 1;
            }
            for u in 0..cnt {
                let (i, j) = ij[u];
                st(acc[u], &mut wa[j * n + i]);
            }
            p += cnt;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 11) as f64) / ((1u64 << 53) as f64) - 0.5
    }

    /// A lane vector of test values of kind `kind` (per lane: random, zero, huge, tiny,
    /// subnormal, graded, with a NaN or an infinity now and then).
    fn value(seed: &mut u64, kind: usize, e: usize) -> V {
        let mut v = [0.0; K];
        for (q, x) in v.iter_mut().enumerate() {
            let r = lcg(seed);
            *x = match (kind + q) % 9 {
                1 => 0.0,
                2 => r * 1e280,
                3 => r * 1e-280,
                4 => r * 1e-310,
                5 => r * 10f64.powi((e % 40) as i32 * 5 - 100),
                6 if e % 17 == 3 => f64::NAN,
                7 if e % 23 == 5 => f64::INFINITY,
                8 if e.is_multiple_of(3) => 0.0,
                _ => r,
            };
        }
        v
    }

    /// Bit for bit, except that any two NaNs agree (their sign and payload are not specified in
    /// Rust, and a lane with a NaN fails and is redone one by one anyway).
    fn same(a: &[f64], b: &[f64], what: &str) {
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()), "{what}, index {i}: {x} vs {y}");
        }
    }

    /// The AVX-512 bidiagonalisation against the portable one: the same diagonals,
    /// superdiagonals, norms and destroyed inputs, bit for bit, for orders 1 to 64 and lanes of
    /// every kind.
    #[test]
    fn bidiagonalisation_same_as_portable() {
        if !crate::cpu::has_avx512() {
            return;
        }
        let mut seed = 3u64;
        for n in (1..=20).chain([31, 32, 33, 47, 64]) {
            for kind in 0..3 {
                let mut b1 = super::super::BatchSvd::new(n);
                for (e, x) in b1.a.iter_mut().enumerate() {
                    *x = value(&mut seed, kind, e);
                }
                let mut b2 = super::super::BatchSvd::new(n);
                b2.a.clone_from(&b1.a);
                let an1 = b1.bidiagonalise_portable();
                // SAFETY: AVX-512 checked above.
                let an2 = unsafe { bidiagonalise(n, &mut b2.a, &mut b2.w, &mut b2.rv1) };
                let what = format!("n = {n}, kind {kind}");
                same(&an1, &an2, &format!("{what}: norms"));
                same(&b1.w[..n * K], &b2.w[..n * K], &format!("{what}: diagonal"));
                same(&b1.rv1[..n * K], &b2.rv1[..n * K], &format!("{what}: superdiagonal"));
                same(b1.a.as_flattened(), b2.a.as_flattened(), &format!("{what}: reflectors"));
            }
        }
    }

    /// The AVX-512 split product against the portable one, bit for bit (orders 1 to 64; zeros,
    /// signed zeros, huge, tiny, subnormal and non-finite entries).
    #[test]
    fn split_product_same_as_portable() {
        if !crate::cpu::has_avx512() {
            return;
        }
        let mut seed = 11u64;
        for n in (1..=20).chain([33, 64]) {
            for kind in 0..3 {
                let nt = n * (n + 1) / 2;
                let so: Vec<V> = (0..nt).map(|e| value(&mut seed, kind, e)).collect();
                let mut sr: Vec<V> = (0..nt).map(|e| value(&mut seed, kind + 4, e)).collect();
                sr[0][1] = -0.0;
                let (mut w1, mut w2) = (vec![[1.0; K]; n * n], vec![[2.0; K]; n * n]);
                super::super::lanes::split_product_portable(n, &so, &sr, &mut w1);
                // SAFETY: AVX-512 checked above.
                unsafe { split_product(n, &so, &sr, &mut w2) };
                same(w1.as_flattened(), w2.as_flattened(), &format!("n = {n}, kind {kind}"));
            }
        }
    }
}
