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

/// Lanes `0..8` and `8..16` of an `[i64; 16]`.
type Zi = [__m512i; 2];

#[inline(always)]
unsafe fn ldi(a: &[i64; K]) -> Zi {
    [_mm512_loadu_epi64(a.as_ptr()), _mm512_loadu_epi64(a.as_ptr().add(8))]
}

#[inline(always)]
unsafe fn sti(v: Zi, a: &mut [i64; K]) {
    _mm512_storeu_epi64(a.as_mut_ptr(), v[0]);
    _mm512_storeu_epi64(a.as_mut_ptr().add(8), v[1]);
}

/// The lanes whose flag is set, as a 16-bit mask (bit `q` = lane `q`).
#[inline(always)]
fn flags_mask(f: &[bool; K]) -> u16 {
    let mut m = 0u16;
    for (q, &x) in f.iter().enumerate() {
        m |= (x as u16) << q;
    }
    m
}

#[inline(always)]
fn set_flags(f: &mut [bool; K], m: u16) {
    for (q, x) in f.iter_mut().enumerate() {
        *x = (m >> q) & 1 != 0;
    }
}

/// The biased exponent field of every lane of `x` (`0` for zero and subnormals, `0x7ff` for
/// non-finite values).
#[inline(always)]
unsafe fn raw_exponent(x: __m512d) -> __m512i {
    _mm512_and_si512(_mm512_srli_epi64::<52>(_mm512_castpd_si512(x)), _mm512_set1_epi64(0x7ff))
}

/// The lanes of `raw` (see [`raw_exponent`]) that belong to normal numbers.
#[inline(always)]
unsafe fn normal(raw: __m512i) -> __mmask8 {
    _mm512_cmpneq_epi64_mask(raw, _mm512_setzero_si512()) & _mm512_cmpneq_epi64_mask(raw, _mm512_set1_epi64(0x7ff))
}

/// `2^k` lane-wise for `k` in the normal range (`-1022..=1023`).
#[inline(always)]
unsafe fn pow2v(k: __m512i) -> __m512d {
    _mm512_castsi512_pd(_mm512_slli_epi64::<52>(_mm512_add_epi64(k, _mm512_set1_epi64(1023))))
}

/// The lanes with `-1000 <= k <= 1000` (the range of [`super::scale_pow2`]).
#[inline(always)]
unsafe fn in_scale_range(k: __m512i) -> __mmask8 {
    _mm512_cmple_epi64_mask(k, _mm512_set1_epi64(1000)) & _mm512_cmpge_epi64_mask(k, _mm512_set1_epi64(-1000))
}

/// `S[i, :] *= f[i]` for every row of the lower triangle (as the portable `scale_rows`).
#[inline(always)]
unsafe fn scale_rows(n: usize, s: &mut [V], f: &[V]) {
    for j in 0..n {
        let col = &mut s[j * n..(j + 1) * n];
        for (x, fi) in col[j..].iter_mut().zip(&f[j..n]) {
            st(mul(ld(x), ld(fi)), x);
        }
    }
}

/// [`super::lanes::LaneFactor::mul_diag`] on AVX-512: rows whose lanes are all normal numbers
/// split into exponent and mantissa as vectors; any other row takes the portable
/// [`super::lanes::mul_diag_row`].
///
/// # Safety
/// The processor must have AVX-512 F, DQ and VL.
#[target_feature(enable = "avx2,fma,avx512f,avx512dq,avx512vl")]
pub(super) unsafe fn mul_diag(n: usize, s: &mut [V], e: &mut [[i64; K]], rz: &mut [[bool; K]], a: &[V]) {
    assert!(n <= SMALL_SVD_MAX && s.len() >= n * n && e.len() >= n && rz.len() >= n && (a.len() == 1 || a.len() >= n));
    let mut f = [[1.0f64; K]; SMALL_SVD_MAX];
    let clear = _mm512_set1_epi64(!(0x7ffu64 << 52) as i64);
    let one_exp = _mm512_set1_epi64((1023u64 << 52) as i64);
    let bias = _mm512_set1_epi64(1023);
    for i in 0..n {
        let ai = if a.len() == 1 { &a[0] } else { &a[i] };
        let x = ld(ai);
        let mut ok = true;
        let (mut m, mut k) = (zero(), [_mm512_setzero_si512(); 2]);
        for h in 0..2 {
            let raw = raw_exponent(x[h]);
            ok &= normal(raw) == 0xff;
            let bits = _mm512_castpd_si512(x[h]);
            m[h] = _mm512_castsi512_pd(_mm512_or_si512(_mm512_and_si512(bits, clear), one_exp));
            k[h] = _mm512_sub_epi64(raw, bias);
        }
        if ok {
            st(m, &mut f[i]);
            let ei = ldi(&e[i]);
            sti([_mm512_add_epi64(ei[0], k[0]), _mm512_add_epi64(ei[1], k[1])], &mut e[i]);
        } else {
            f[i] = super::lanes::mul_diag_row(ai, &mut e[i], &mut rz[i]);
        }
    }
    scale_rows(n, s, &f[..n]);
}

/// `sqrt(x^2 + y^2)` lane-wise as the portable `lane_hypot`: the plain formula, and
/// [`super::fast_hypot`] for the lanes whose square sum leaves `(1e-290, 1e290)` (elsewhere the
/// two agree).
#[inline(always)]
unsafe fn hypot(x: Z, y: Z) -> Z {
    let sq = add(mul(x, x), mul(y, y));
    let mut r = [_mm512_sqrt_pd(sq[0]), _mm512_sqrt_pd(sq[1])];
    let (lo, hi) = (_mm512_set1_pd(1e-290), _mm512_set1_pd(1e290));
    let mut risky = 0u16;
    for h in 0..2 {
        let ok = _mm512_cmp_pd_mask::<_CMP_GT_OQ>(sq[h], lo) & _mm512_cmp_pd_mask::<_CMP_LT_OQ>(sq[h], hi);
        risky |= ((!ok) as u16) << (8 * h);
    }
    if risky != 0 {
        let (mut xa, mut ya, mut ra) = ([0.0; K], [0.0; K], [0.0; K]);
        st(x, &mut xa);
        st(y, &mut ya);
        st(r, &mut ra);
        for q in 0..K {
            if risky & (1 << q) != 0 {
                ra[q] = super::fast_hypot(xa[q], ya[q]);
            }
        }
        r = ld(&ra);
    }
    r
}

/// [`super::lanes::LaneFactor::append`] (with its normalisation) on AVX-512: `S S^T <- S S^T + v
/// v^T`. The exponent bookkeeping of a row runs as vectors when its lanes are in the common
/// range (normal entries, scalings within `2^+-1000`), else as the portable
/// [`super::lanes::append_row`]; the rotations and the normalisation as vectors (the latter's
/// uncommon rows through [`super::lanes::normalise_row`]).
///
/// # Safety
/// The processor must have AVX-512 F, DQ and VL.
#[target_feature(enable = "avx2,fma,avx512f,avx512dq,avx512vl")]
pub(super) unsafe fn append(n: usize, s: &mut [V], e: &mut [[i64; K]], rz: &mut [[bool; K]], w: &mut [V], v: &[V]) {
    assert!(n <= SMALL_SVD_MAX && s.len() >= n * n && e.len() >= n && rz.len() >= n && w.len() >= n && v.len() >= n);
    let bias = _mm512_set1_epi64(1023);
    let zi = _mm512_setzero_si512();
    let mut first = n;
    for i in 0..n {
        let vi = ld(&v[i]);
        let rzm = flags_mask(&rz[i]);
        let eo = ldi(&e[i]);
        let (mut ok, mut nonzero, mut grow) = (true, 0u16, 0u16);
        let (mut en, mut fr, mut wi) = ([zi; 2], zero(), zero());
        for h in 0..2 {
            // portable: an entry takes part unless it equals zero (a NaN takes part)
            let nz = _mm512_cmp_pd_mask::<_CMP_NEQ_UQ>(vi[h], _mm512_setzero_pd());
            let raw = raw_exponent(vi[h]);
            ok &= nz & !normal(raw) == 0;
            let ev = _mm512_sub_epi64(raw, bias);
            let rzh = (rzm >> (8 * h)) as u8;
            let g = nz & !rzh & _mm512_cmpgt_epi64_mask(ev, eo[h]);
            // the exponent moves to ev where the row is zero or ev is larger
            en[h] = _mm512_mask_blend_epi64(nz & (rzh | g), eo[h], ev);
            let d = _mm512_sub_epi64(eo[h], ev);
            ok &= g & !in_scale_range(d) == 0;
            ok &= nz & !in_scale_range(en[h]) == 0;
            fr[h] = _mm512_mask_blend_pd(g, _mm512_set1_pd(1.0), pow2v(_mm512_mask_blend_epi64(g, zi, d)));
            let sc = pow2v(_mm512_sub_epi64(zi, _mm512_mask_blend_epi64(nz, zi, en[h])));
            wi[h] = _mm512_maskz_mul_pd(nz, vi[h], sc);
            nonzero |= (nz as u16) << (8 * h);
            grow |= (g as u16) << (8 * h);
        }
        if ok {
            sti(en, &mut e[i]);
            st(wi, &mut w[i]);
            if grow != 0 {
                for j in 0..=i {
                    let x = &mut s[j * n + i];
                    st(mul(ld(x), fr), x);
                }
            }
        } else {
            super::lanes::append_row(n, s, i, &v[i], &mut e[i], &rz[i], &mut w[i]);
        }
        if nonzero != 0 {
            first = first.min(i);
        }
    }
    for j in first..n {
        let y = ld(&w[j]);
        let act = [
            _mm512_cmp_pd_mask::<_CMP_NEQ_UQ>(y[0], _mm512_setzero_pd()),
            _mm512_cmp_pd_mask::<_CMP_NEQ_UQ>(y[1], _mm512_setzero_pd()),
        ];
        if act[0] | act[1] == 0 {
            continue;
        }
        let x = ld(&s[j * n + j]);
        let r = hypot(x, y);
        let c = [_mm512_div_pd(x[0], r[0]), _mm512_div_pd(x[1], r[1])];
        let sn = [_mm512_div_pd(y[0], r[0]), _mm512_div_pd(y[1], r[1])];
        st([_mm512_mask_blend_pd(act[0], x[0], r[0]), _mm512_mask_blend_pd(act[1], x[1], r[1])], &mut s[j * n + j]);
        st(
            [
                _mm512_mask_blend_pd(act[0], y[0], _mm512_setzero_pd()),
                _mm512_mask_blend_pd(act[1], y[1], _mm512_setzero_pd()),
            ],
            &mut w[j],
        );
        let col = &mut s[j * n..(j + 1) * n];
        for (ai, bi) in col[j + 1..].iter_mut().zip(&mut w[j + 1..n]) {
            let (a, b) = (ld(ai), ld(bi));
            let pa = add(mul(c, a), mul(sn, b));
            let pb = sub(mul(c, b), mul(sn, a));
            st([_mm512_mask_blend_pd(act[0], a[0], pa[0]), _mm512_mask_blend_pd(act[1], a[1], pa[1])], ai);
            st([_mm512_mask_blend_pd(act[0], b[0], pb[0]), _mm512_mask_blend_pd(act[1], b[1], pb[1])], bi);
        }
    }
    normalise(n, s, e, rz);
}

/// [`super::lanes::LaneFactor::normalise`] on AVX-512.
#[inline(always)]
unsafe fn normalise(n: usize, s: &mut [V], e: &mut [[i64; K]], rz: &mut [[bool; K]]) {
    let mut m = [[0.0f64; K]; SMALL_SVD_MAX];
    let mut mz = [zero(); SMALL_SVD_MAX];
    for j in 0..n {
        let col = &s[j * n..(j + 1) * n];
        for (x, mi) in col[j..].iter().zip(&mut mz[j..n]) {
            // vmaxpd returns its second operand when either is NaN: a NaN entry leaves the
            // maximum, as f64::max does.
            let a = abs(ld(x));
            *mi = [_mm512_max_pd(a[0], mi[0]), _mm512_max_pd(a[1], mi[1])];
        }
    }
    let bias = _mm512_set1_epi64(1023);
    let zi = _mm512_setzero_si512();
    for i in 0..n {
        let mi = mz[i];
        let eo = ldi(&e[i]);
        let (mut ok, mut zmask) = (true, 0u16);
        let (mut en, mut f) = ([zi; 2], zero());
        for h in 0..2 {
            let z = _mm512_cmp_pd_mask::<_CMP_EQ_OQ>(mi[h], _mm512_setzero_pd());
            let raw = raw_exponent(mi[h]);
            let k = _mm512_sub_epi64(raw, bias);
            ok &= !z & !(normal(raw) & in_scale_range(k)) == 0;
            en[h] = _mm512_maskz_add_epi64(!z, eo[h], k);
            f[h] = _mm512_mask_blend_pd(z, pow2v(_mm512_sub_epi64(zi, k)), _mm512_set1_pd(1.0));
            zmask |= (z as u16) << (8 * h);
        }
        if ok {
            sti(en, &mut e[i]);
            set_flags(&mut rz[i], zmask);
            st(f, &mut m[i]);
        } else {
            st(mi, &mut m[i]);
            super::lanes::normalise_row(n, s, i, &mut m[i], &mut e[i], &mut rz[i]);
        }
    }
    scale_rows(n, s, &m[..n]);
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

    /// The AVX-512 factor updates against the portable ones, bit for bit, over sequences of
    /// transitions and appended columns: ordinary values, zeros, subnormals, huge and tiny
    /// entries that drive the row exponents past `+-1000` (the portable fallbacks), NaN and
    /// infinite entries, diagonal and scalar transitions, orders 1 to 64.
    #[test]
    fn factor_updates_same_as_portable() {
        use super::super::lanes::LaneFactor;
        if !crate::cpu::has_avx512() {
            return;
        }
        let mut seed = 29u64;
        for n in [1usize, 2, 3, 5, 8, 16, 17, 33, 64] {
            for kind in 0..6 {
                let mut f1 = LaneFactor::zeros_with(n, false);
                let mut f2 = LaneFactor::zeros_with(n, true);
                for step in 0..40 {
                    let scalar = kind == 3 || step % 7 == 3;
                    let mut a: Vec<V> = vec![[0.0; K]; if scalar { 1 } else { n }];
                    for (i, ai) in a.iter_mut().enumerate() {
                        for (q, x) in ai.iter_mut().enumerate() {
                            let r = lcg(&mut seed) + 0.5;
                            *x = match (kind + q + i + step) % 11 {
                                0 if kind == 4 => 0.0,
                                1 if kind == 5 => 1e-310,
                                2 if kind == 2 => 1e300 * r,
                                3 if kind == 2 => 1e-300 * r,
                                4 if kind == 5 && step % 9 == 4 => f64::NAN,
                                5 => 1.0,
                                _ => r,
                            };
                        }
                    }
                    let mut v: Vec<V> = vec![[0.0; K]; n];
                    for (i, vi) in v.iter_mut().enumerate() {
                        for (q, x) in vi.iter_mut().enumerate() {
                            let r = lcg(&mut seed);
                            *x = match (kind * 3 + q * 5 + i + step) % 13 {
                                0 => 0.0,
                                1 if kind == 1 => -0.0,
                                2 if kind >= 4 => 1e-310 * r,
                                3 if kind == 2 || kind == 4 => 1e300 * r,
                                4 if kind == 2 || kind == 4 => 1e-300 * r,
                                5 if kind == 5 && step % 11 == 6 => f64::INFINITY,
                                _ => r,
                            };
                        }
                    }
                    for f in [&mut f1, &mut f2] {
                        f.mul_diag(&a);
                        f.append(&v);
                    }
                    let what = format!("n = {n}, kind {kind}, step {step}");
                    same(f1.s.as_flattened(), f2.s.as_flattened(), &format!("{what}: factor"));
                    assert_eq!(f1.e, f2.e, "{what}: exponents");
                    assert_eq!(f1.rz, f2.rz, "{what}: zero rows");
                }
            }
        }
    }
}
