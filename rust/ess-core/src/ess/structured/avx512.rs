//! Lockstep kernels written with AVX-512 intrinsics: the Householder bidiagonalisation of
//! [`super::BatchSvd`], the split products and factor updates of [`super::lanes`], and the QR
//! chase for any multiple of eight lanes (the group path chases the bidiagonals of two splits,
//! 32 lanes, together). The chase comes in two forms: [`chase`], where each lane starts its next
//! sweep as soon as it ends one (scalar bookkeeping per lane; the reference, and the form for
//! orders above 64), and [`chase_lockstep`], the one the group path uses, where all lanes run one
//! sweep per round and then do their bookkeeping together in vectors (about half the chase's time
//! was that bookkeeping, done lane by lane).
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
        let r = hypot::<2>(&x, &y, &[0; 2]);
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

/// `sqrt(x^2 + y^2)` of every lane as the portable `lane_hypot`: the plain formula, and
/// [`super::fast_hypot`] for the lanes whose square sum leaves `(1e-290, 1e290)` (elsewhere the
/// two agree), except the lanes set in `done` (the chase's finished lanes, whose values are
/// discarded).
#[inline(always)]
unsafe fn hypot<const HZ: usize>(x: &[__m512d; HZ], y: &[__m512d; HZ], done: &[__mmask8; HZ]) -> [__m512d; HZ] {
    let (lo, hi) = (_mm512_set1_pd(1e-290), _mm512_set1_pd(1e290));
    let mut z = [_mm512_setzero_pd(); HZ];
    let mut risky = 0u64;
    for h in 0..HZ {
        let sq = _mm512_add_pd(_mm512_mul_pd(x[h], x[h]), _mm512_mul_pd(y[h], y[h]));
        z[h] = _mm512_sqrt_pd(sq);
        let ok = _mm512_cmp_pd_mask::<_CMP_GT_OQ>(sq, lo) & _mm512_cmp_pd_mask::<_CMP_LT_OQ>(sq, hi);
        risky |= ((!(ok | done[h])) as u64) << (8 * h);
    }
    if risky != 0 {
        for h in 0..HZ {
            let m = (risky >> (8 * h)) as u8;
            if m == 0 {
                continue;
            }
            let (mut xa, mut ya, mut za) = ([0.0; 8], [0.0; 8], [0.0; 8]);
            _mm512_storeu_pd(xa.as_mut_ptr(), x[h]);
            _mm512_storeu_pd(ya.as_mut_ptr(), y[h]);
            _mm512_storeu_pd(za.as_mut_ptr(), z[h]);
            for e in 0..8 {
                if m & (1 << e) != 0 {
                    za[e] = super::fast_hypot(xa[e], ya[e]);
                }
            }
            z[h] = _mm512_loadu_pd(za.as_ptr());
        }
    }
    z
}

/// The `f64` lane array `a` as `HZ` registers.
#[inline(always)]
unsafe fn ld_lanes<const K: usize, const HZ: usize>(a: &[f64; K]) -> [__m512d; HZ] {
    let mut v = [_mm512_setzero_pd(); HZ];
    for (h, x) in v.iter_mut().enumerate() {
        *x = _mm512_loadu_pd(a.as_ptr().add(8 * h));
    }
    v
}

/// `HZ` registers into the `f64` lane array `a`.
#[inline(always)]
unsafe fn st_lanes<const K: usize, const HZ: usize>(v: &[__m512d; HZ], a: &mut [f64; K]) {
    for (h, x) in v.iter().enumerate() {
        _mm512_storeu_pd(a.as_mut_ptr().add(8 * h), *x);
    }
}

/// The lanes of a chase that are done, as a bit mask (bit `q` = lane `q`), and the mask of all
/// `K` lanes.
#[inline(always)]
fn done_mask<const K: usize>(ch: &super::Chase<K>) -> (u64, u64) {
    let all = if K == 64 { u64::MAX } else { (1u64 << K) - 1 };
    let mut donem = 0u64;
    for q in 0..K {
        donem |= (ch.done[q] as u64) << q;
    }
    (donem, all)
}

/// One chase step's two rotations of every lane (the arithmetic of the portable chase's step,
/// in the same order): from the gathered `g = rv1[i]`, `y = w[i]` and the rotation state
/// `c, s, f, x`, the new entries `z1` (for `rv1[i - 1]`) and `z2` (for `w[i - 1]`), the new
/// `c, s` and the next `f, x`. Lanes in `off` are left out of `hypot`'s careful path (their values
/// are discarded).
#[allow(clippy::type_complexity)]
#[inline(always)]
unsafe fn rotations<const HZ: usize>(
    g: &[__m512d; HZ],
    y: &[__m512d; HZ],
    c: &[__m512d; HZ],
    s: &[__m512d; HZ],
    f: &[__m512d; HZ],
    x: &[__m512d; HZ],
    off: &[__mmask8; HZ],
) -> [[__m512d; HZ]; 6] {
    let (one, zero) = (_mm512_set1_pd(1.0), _mm512_setzero_pd());
    let (mut gg, mut hh, mut yy) = ([zero; HZ], [zero; HZ], *y);
    for h in 0..HZ {
        hh[h] = _mm512_mul_pd(s[h], g[h]);
        gg[h] = _mm512_mul_pd(g[h], c[h]);
    }
    let z1 = hypot(f, &hh, off);
    let (mut cn, mut sn, mut f2) = ([zero; HZ], [zero; HZ], [zero; HZ]);
    for h in 0..HZ {
        let iz = _mm512_div_pd(one, z1[h]);
        cn[h] = _mm512_mul_pd(f[h], iz);
        sn[h] = _mm512_mul_pd(hh[h], iz);
        f2[h] = _mm512_add_pd(_mm512_mul_pd(x[h], cn[h]), _mm512_mul_pd(gg[h], sn[h]));
        gg[h] = _mm512_sub_pd(_mm512_mul_pd(gg[h], cn[h]), _mm512_mul_pd(x[h], sn[h]));
        hh[h] = _mm512_mul_pd(yy[h], sn[h]);
        yy[h] = _mm512_mul_pd(yy[h], cn[h]);
    }
    let z2 = hypot(&f2, &hh, off);
    let (mut fnew, mut xnew) = ([zero; HZ], [zero; HZ]);
    for h in 0..HZ {
        let nz = _mm512_cmp_pd_mask::<_CMP_NEQ_UQ>(z2[h], zero);
        let iz = _mm512_div_pd(one, z2[h]);
        cn[h] = _mm512_mask_blend_pd(nz, cn[h], _mm512_mul_pd(f2[h], iz));
        sn[h] = _mm512_mask_blend_pd(nz, sn[h], _mm512_mul_pd(hh[h], iz));
        fnew[h] = _mm512_add_pd(_mm512_mul_pd(cn[h], gg[h]), _mm512_mul_pd(sn[h], yy[h]));
        xnew[h] = _mm512_sub_pd(_mm512_mul_pd(cn[h], yy[h]), _mm512_mul_pd(sn[h], gg[h]));
    }
    [z1, z2, cn, sn, fnew, xnew]
}

/// The chase of [`super::chase_lanes`] for `K = 8 HZ` lanes on AVX-512 (the bidiagonals
/// lane-minor with stride `K`, two spare rows after the `n` of them as in
/// [`super::chase::chase`]): the same operations per lane as the portable chase, so the same
/// values bit for bit whatever the number of lanes. With 32 lanes (four registers per quantity)
/// twice as many independent chains are in flight as in the sixteen-lane AVX2 chase, whose
/// steps wait on the latency of their square roots and divisions.
///
/// # Safety
/// The processor must have AVX-512 F, DQ and VL.
#[target_feature(enable = "avx2,fma,avx512f,avx512dq,avx512vl")]
pub(super) unsafe fn chase<const K: usize, const HZ: usize>(
    n: usize,
    w: &mut [f64],
    rv1: &mut [f64],
    anorm: &[f64; K],
) -> [bool; K] {
    assert!(K == 8 * HZ && K <= 64 && n >= 1 && w.len() >= (n + 2) * K && rv1.len() >= (n + 2) * K);
    let mut ch = super::Chase::<K>::begin(n, w, rv1, anorm);
    let (one, zero) = (_mm512_set1_pd(1.0), _mm512_setzero_pd());
    let kv = _mm512_set1_epi64(K as i64);
    let (wp, rp) = (w.as_mut_ptr(), rv1.as_mut_ptr());
    let (mut ia, mut la) = ([0i64; K], [0i64; K]);
    for q in 0..K {
        (ia[q], la[q]) = ch.step_rows(n, q);
    }
    let ldvi = |a: &[i64; K]| -> [__m512i; HZ] {
        let mut v = [_mm512_setzero_si512(); HZ];
        for (h, x) in v.iter_mut().enumerate() {
            *x = _mm512_loadu_epi64(a.as_ptr().add(8 * h));
        }
        v
    };
    // The lanes that are done, bit q = lane q (kept up to date by the stops below).
    let (mut donem, all) = done_mask(&ch);
    while donem != all {
        let mut done = [0u8; HZ];
        for (h, d) in done.iter_mut().enumerate() {
            *d = (donem >> (8 * h)) as u8;
        }
        let (mut idx, last) = (ldvi(&ia), ldvi(&la));
        let (mut c, mut s, mut f, mut x) = (
            ld_lanes::<K, HZ>(&ch.cc),
            ld_lanes::<K, HZ>(&ch.sn),
            ld_lanes::<K, HZ>(&ch.ff),
            ld_lanes::<K, HZ>(&ch.xx),
        );
        let mut z1: [__m512d; HZ];
        let mut ended = [0u8; HZ];
        let pending: u64;
        loop {
            let (mut g, mut y) = ([zero; HZ], [zero; HZ]);
            for h in 0..HZ {
                // (a done lane computes on benign constants)
                g[h] = _mm512_mask_blend_pd(done[h], _mm512_i64gather_pd::<8>(idx[h], rp), zero);
                y[h] = _mm512_mask_blend_pd(done[h], _mm512_i64gather_pd::<8>(idx[h], wp), one);
            }
            let [r1, z2, cn, sn, fnew, xnew] = rotations(&g, &y, &c, &s, &f, &x, &done);
            z1 = r1;
            let mut event = 0u64;
            for h in 0..HZ {
                // Stores of the step (row j = i - 1; a done lane's go to the spare row n).
                let j = _mm512_sub_epi64(idx[h], kv);
                _mm512_i64scatter_pd::<8>(rp, j, z1[h]);
                _mm512_i64scatter_pd::<8>(wp, j, z2[h]);
                c[h] = _mm512_mask_blend_pd(done[h], cn[h], one);
                s[h] = _mm512_mask_blend_pd(done[h], sn[h], zero);
                f[h] = _mm512_mask_blend_pd(done[h], fnew[h], one);
                x[h] = _mm512_mask_blend_pd(done[h], xnew[h], one);
                let en = _mm512_cmpeq_epi64_mask(idx[h], last[h]);
                let fail = !done[h] & _mm512_cmp_pd_mask::<_CMP_EQ_OQ>(z1[h], zero);
                ended[h] = en;
                event |= ((en | fail) as u64) << (8 * h);
                idx[h] = _mm512_mask_add_epi64(idx[h], !(en | done[h]), idx[h], kv);
            }
            if event != 0 {
                pending = event;
                break;
            }
        }
        // Back to the scalar state; the bookkeeping of the lanes that failed or ended their
        // sweep.
        st_lanes(&c, &mut ch.cc);
        st_lanes(&s, &mut ch.sn);
        st_lanes(&f, &mut ch.ff);
        st_lanes(&x, &mut ch.xx);
        let mut za = [0.0f64; K];
        st_lanes(&z1, &mut za);
        for (h, v) in idx.iter().enumerate() {
            _mm512_storeu_epi64(ia.as_mut_ptr().add(8 * h), *v);
        }
        let mut lanes = pending;
        while lanes != 0 {
            let q = lanes.trailing_zeros() as usize;
            lanes &= lanes - 1;
            // (ended: the step at row kk was the sweep's last)
            ch.stop(q, za[q] == 0.0, ended[q / 8] & (1 << (q % 8)) != 0, w, rv1, anorm[q]);
            (ia[q], la[q]) = ch.step_rows(n, q);
            donem |= (ch.done[q] as u64) << q;
        }
    }
    ch.finish(n, w)
}

/// The lanes `0..K` as `i64`, eight to a register.
#[inline(always)]
unsafe fn lane_ids<const HZ: usize>() -> [__m512i; HZ] {
    let mut v = [_mm512_setzero_si512(); HZ];
    for (h, x) in v.iter_mut().enumerate() {
        let b = 8 * h as i64;
        *x = _mm512_setr_epi64(b, b + 1, b + 2, b + 3, b + 4, b + 5, b + 6, b + 7);
    }
    v
}

/// The lanes set in `m`, lowest first.
#[inline(always)]
fn bits(mut m: u64) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        (m != 0).then(|| {
            let q = m.trailing_zeros() as usize;
            m &= m - 1;
            q
        })
    })
}

/// The `usize` lane array `a` (64-bit) as `i64` vectors.
#[inline(always)]
unsafe fn ld_usize<const K: usize, const HZ: usize>(a: &[usize; K]) -> [__m512i; HZ] {
    let mut v = [_mm512_setzero_si512(); HZ];
    for (h, x) in v.iter_mut().enumerate() {
        *x = _mm512_loadu_epi64(a.as_ptr().add(8 * h) as *const i64);
    }
    v
}

/// `|x| + an == an`, lane by lane: the entry is negligible against the norm (the test of
/// [`super::Chase::start`]).
#[inline(always)]
unsafe fn negligible(x: __m512d, an: __m512d) -> __mmask8 {
    _mm512_cmp_pd_mask::<_CMP_EQ_OQ>(_mm512_add_pd(_mm512_abs_pd(x), an), an)
}

/// Per lane, the rows `i` (bit `i`, `1 <= i <= kk`) where `rv1[i]` (`r1`) or `w[i - 1]` (`r2`) is
/// negligible: what the deflation scan of [`super::Chase::start`] looks for, kept up to date by
/// the lockstep chase as it writes the entries.
struct Negligible<const K: usize> {
    r1: [u64; K],
    r2: [u64; K],
}

impl<const K: usize> Negligible<K> {
    /// Lane `q`'s bits from its entries, rows `1..=kk`.
    fn scan(&mut self, q: usize, kk: usize, w: &[f64], rv1: &[f64], an: f64) {
        let (mut a, mut b) = (0u64, 0u64);
        for i in 1..=kk {
            if rv1[i * K + q].abs() + an == an {
                a |= 1 << i;
            }
            if w[(i - 1) * K + q].abs() + an == an {
                b |= 1 << i;
            }
        }
        (self.r1[q], self.r2[q]) = (a, b);
    }
}

/// [`chase`] with the lanes' sweeps in lockstep. Every lane that is not done runs one sweep; the
/// vector loop runs as many steps as the longest of them (a lane whose sweep is shorter, or that
/// is done, computes on benign values and stores nothing); then the lanes do their bookkeeping
/// together ([`lockstep_bookkeeping`]: the deflation scans on bit masks kept up to date by the
/// steps, the shifts in vectors). The same operations per lane as [`chase`] and the portable
/// chase, so the same values bit for bit; what changes is that the per-sweep bookkeeping, about
/// half of the free-running chase's time, is done for all lanes at once.
///
/// # Safety
/// The processor must have AVX-512 F, DQ, VL and CD ([`crate::cpu::has_avx512`] checks all four).
#[target_feature(enable = "avx2,fma,avx512f,avx512dq,avx512vl,avx512cd")]
pub(super) unsafe fn chase_lockstep<const K: usize, const HZ: usize>(
    n: usize,
    w: &mut [f64],
    rv1: &mut [f64],
    anorm: &[f64; K],
) -> [bool; K] {
    assert!(K == 8 * HZ && K <= 64 && n >= 1 && w.len() >= (n + 2) * K && rv1.len() >= (n + 2) * K);
    if n > 64 {
        // (the row masks of the deflation scans have 64 bits)
        return chase::<K, HZ>(n, w, rv1, anorm);
    }
    let mut ch = super::Chase::<K>::begin_idle(n, w, anorm);
    let (one, zero) = (_mm512_set1_pd(1.0), _mm512_setzero_pd());
    let kv = _mm512_set1_epi64(K as i64);
    let ids = lane_ids::<HZ>();
    let (wp, rp) = (w.as_mut_ptr(), rv1.as_mut_ptr());
    let mut an = [zero; HZ];
    for (h, v) in an.iter_mut().enumerate() {
        *v = _mm512_loadu_pd(anorm.as_ptr().add(8 * h));
    }
    let (mut donem, all) = done_mask(&ch);
    // The negligible entries of the lanes' bidiagonals, row by row, then their first sweeps.
    let mut neg = Negligible::<K> { r1: [0; K], r2: [0; K] };
    let live = !donem & all;
    for i in 1..n {
        let (mut m1, mut m2) = (0u64, 0u64);
        for h in 0..HZ {
            let c1 = negligible(_mm512_loadu_pd(rp.add(i * K + 8 * h)), an[h]);
            let c2 = negligible(_mm512_loadu_pd(wp.add((i - 1) * K + 8 * h)), an[h]);
            m1 |= (c1 as u64) << (8 * h);
            m2 |= (c2 as u64) << (8 * h);
        }
        for q in bits(m1 & live) {
            neg.r1[q] |= 1 << i;
        }
        for q in bits(m2 & live) {
            neg.r2[q] |= 1 << i;
        }
    }
    lockstep_starts::<K, HZ>(&mut ch, &mut neg, w, rv1, anorm, live, &mut donem);
    while donem != all {
        // One sweep of every lane that is not done: lane q writes rows lo .. kk - 1, then kk.
        let (mut cnt, mut lo) = ([0i64; K], [0i64; K]);
        let mut steps = 0;
        for q in bits(!donem & all) {
            cnt[q] = ch.cnt[q] as i64;
            lo[q] = ch.lo[q] as i64;
            steps = steps.max(ch.cnt[q]);
        }
        let mut cntv = [_mm512_setzero_si512(); HZ];
        let mut idx = [_mm512_setzero_si512(); HZ];
        for h in 0..HZ {
            cntv[h] = _mm512_loadu_epi64(cnt.as_ptr().add(8 * h));
            let l1 = _mm512_add_epi64(_mm512_loadu_epi64(lo.as_ptr().add(8 * h)), _mm512_set1_epi64(1));
            idx[h] = _mm512_add_epi64(_mm512_mullo_epi64(l1, kv), ids[h]);
        }
        let (mut c, mut s, mut f, mut x) = (
            ld_lanes::<K, HZ>(&ch.cc),
            ld_lanes::<K, HZ>(&ch.sn),
            ld_lanes::<K, HZ>(&ch.ff),
            ld_lanes::<K, HZ>(&ch.xx),
        );
        let mut failm = 0u64;

        for j in 0..steps {
            let jv = _mm512_set1_epi64(j as i64);
            let mut off = [0u8; HZ];
            let (mut g, mut y) = ([zero; HZ], [zero; HZ]);
            let (mut cb, mut sb, mut fb, mut xb) = ([zero; HZ], [zero; HZ], [zero; HZ], [zero; HZ]);
            for h in 0..HZ {
                // (a lane off this step computes on benign values and stores nothing)
                off[h] = !_mm512_cmpgt_epi64_mask(cntv[h], jv) | (failm >> (8 * h)) as u8;
                let on = !off[h];
                g[h] = _mm512_mask_i64gather_pd::<8>(zero, on, idx[h], rp);
                y[h] = _mm512_mask_i64gather_pd::<8>(one, on, idx[h], wp);
                cb[h] = _mm512_mask_blend_pd(off[h], c[h], one);
                sb[h] = _mm512_mask_blend_pd(off[h], s[h], zero);
                fb[h] = _mm512_mask_blend_pd(off[h], f[h], one);
                xb[h] = _mm512_mask_blend_pd(off[h], x[h], one);
            }
            let [z1, z2, cn, sn, fnew, xnew] = rotations(&g, &y, &cb, &sb, &fb, &xb, &off);
            let (mut m1, mut m2) = (0u64, 0u64);
            for h in 0..HZ {
                let on = !off[h];
                // Stores of the step (row lo + j): rv1 = z1, w = z2.
                let jr = _mm512_sub_epi64(idx[h], kv);
                _mm512_mask_i64scatter_pd::<8>(rp, on, jr, z1[h]);
                _mm512_mask_i64scatter_pd::<8>(wp, on, jr, z2[h]);
                m1 |= ((on & negligible(z1[h], an[h])) as u64) << (8 * h);
                m2 |= ((on & negligible(z2[h], an[h])) as u64) << (8 * h);
                // (a zero rotation norm cannot happen for a nonzero superdiagonal: the lane fails)
                let fail = on & _mm512_cmp_pd_mask::<_CMP_EQ_OQ>(z1[h], zero);
                failm |= (fail as u64) << (8 * h);
                let go = on & !fail;
                c[h] = _mm512_mask_blend_pd(go, c[h], cn[h]);
                s[h] = _mm512_mask_blend_pd(go, s[h], sn[h]);
                f[h] = _mm512_mask_blend_pd(go, f[h], fnew[h]);
                x[h] = _mm512_mask_blend_pd(go, x[h], xnew[h]);
                idx[h] = _mm512_mask_add_epi64(idx[h], go, idx[h], kv);
            }
            // (rare: an entry of the block became negligible, the deflation scan's business)
            for q in bits(m1) {
                neg.r1[q] |= 1 << (lo[q] as usize + j);
            }
            for q in bits(m2) {
                neg.r2[q] |= 1 << (lo[q] as usize + j + 1);
            }
        }
        lockstep_bookkeeping::<K, HZ>(&mut ch, &mut neg, w, rv1, anorm, failm & !donem & all, &f, &x, &mut donem);
    }
    ch.finish(n, w)
}

/// What [`super::Chase::stop`] does after a sweep, for all the lanes of a lockstep sweep at once:
/// the lanes in `failed_in_sweep` fail; the others (not done) write their sweep's last entries
/// (`f`, `x`: the rotation state after it) and start their next sweep as
/// [`super::Chase::start`] does: the deflation scan and the convergence tests on the bits of
/// `neg`, lane by lane, and the shifts in vectors over the lanes. A lane whose scan stops at a
/// negligible diagonal entry (the cancellation branch, rare) goes through the scalar start. The
/// same operations per lane, so the same values bit for bit.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn lockstep_bookkeeping<const K: usize, const HZ: usize>(
    ch: &mut super::Chase<K>,
    neg: &mut Negligible<K>,
    w: &mut [f64],
    rv1: &mut [f64],
    anorm: &[f64; K],
    failed_in_sweep: u64,
    f: &[__m512d; HZ],
    x: &[__m512d; HZ],
    donem: &mut u64,
) {
    let all = if K == 64 { u64::MAX } else { (1u64 << K) - 1 };
    let zero = _mm512_setzero_pd();
    let kv = _mm512_set1_epi64(K as i64);
    let ids = lane_ids::<HZ>();
    let (wp, rp) = (w.as_mut_ptr(), rv1.as_mut_ptr());
    let live = !*donem & all;
    let mut failed = failed_in_sweep;
    let ends = live & !failed_in_sweep;
    // The sweep's last entries: rv1[lo] = 0, rv1[kk] = f, w[kk] = x; non-finite ones fail the lane.
    let (kkv, lov) = (ld_usize::<K, HZ>(&ch.kk), ld_usize::<K, HZ>(&ch.lo));
    let mut negf = 0u64;
    for h in 0..HZ {
        let m = (ends >> (8 * h)) as u8;
        if m == 0 {
            continue;
        }
        let ik = _mm512_add_epi64(_mm512_mullo_epi64(kkv[h], kv), ids[h]);
        let il = _mm512_add_epi64(_mm512_mullo_epi64(lov[h], kv), ids[h]);
        _mm512_mask_i64scatter_pd::<8>(rp, m, il, zero);
        _mm512_mask_i64scatter_pd::<8>(rp, m, ik, f[h]);
        _mm512_mask_i64scatter_pd::<8>(wp, m, ik, x[h]);
        // (QNaN, +-inf, SNaN)
        let bad = _mm512_fpclass_pd_mask::<0x99>(f[h]) | _mm512_fpclass_pd_mask::<0x99>(x[h]);
        failed |= ((m & bad) as u64) << (8 * h);
        let an = _mm512_loadu_pd(anorm.as_ptr().add(8 * h));
        negf |= ((m & negligible(f[h], an)) as u64) << (8 * h);
    }
    for q in bits(failed) {
        ch.ok[q] = false;
        ch.done[q] = true;
    }
    *donem |= failed;
    for q in bits(negf & !failed) {
        neg.r1[q] |= 1 << ch.kk[q];
    }
    lockstep_starts::<K, HZ>(ch, neg, w, rv1, anorm, live & !failed, donem);
}

/// [`super::Chase::start`] for the lanes in `lanes`, all at once: the deflation scan (the
/// highest negligible row at or below `kk`, else row 0) and the convergence test on the bits of
/// `neg`, repeated while lanes converge, in vectors over the lanes; then the shifts in vectors.
/// A lane whose scan stops at a negligible diagonal entry (the cancellation branch, rare) goes
/// through the scalar start. The same operations per lane, so the same values bit for bit.
#[inline(always)]
unsafe fn lockstep_starts<const K: usize, const HZ: usize>(
    ch: &mut super::Chase<K>,
    neg: &mut Negligible<K>,
    w: &mut [f64],
    rv1: &mut [f64],
    anorm: &[f64; K],
    lanes: u64,
    donem: &mut u64,
) {
    let (one, zero) = (_mm512_set1_pd(1.0), _mm512_setzero_pd());
    let sign = _mm512_set1_pd(-0.0);
    let kv = _mm512_set1_epi64(K as i64);
    let ids = lane_ids::<HZ>();
    let (wp, rp) = (w.as_mut_ptr(), rv1.as_mut_ptr());
    // Per lane: the deflation scan (the highest negligible row at or below kk, else row 0) and
    // the convergence test, until a sweep is set up or the lane is done; in vectors over the
    // lanes, on the bits of `neg`.
    let mut shm = 0u64;
    let mut lsh = [0i64; K];
    let (mut kk, mut its) = (ld_usize::<K, HZ>(&ch.kk), ld_usize::<K, HZ>(&ch.its));
    let (mut flagm, mut finished) = (0u64, 0u64);
    let (one_i, zero_i) = (_mm512_set1_epi64(1), _mm512_setzero_si512());
    let mut pend = lanes;
    while pend != 0 {
        let mut again = 0u64;
        for h in 0..HZ {
            let pm = (pend >> (8 * h)) as u8;
            if pm == 0 {
                continue;
            }
            let r1 = _mm512_loadu_epi64(neg.r1.as_ptr().add(8 * h) as *const i64);
            let r2 = _mm512_loadu_epi64(neg.r2.as_ptr().add(8 * h) as *const i64);
            // rows 0..=kk (a shift by 64 gives 0: all rows)
            let below = _mm512_sub_epi64(_mm512_sllv_epi64(one_i, _mm512_add_epi64(kk[h], one_i)), one_i);
            let rm = _mm512_and_si512(_mm512_or_si512(r1, r2), below);
            let l = _mm512_max_epi64(_mm512_sub_epi64(_mm512_set1_epi64(63), _mm512_lzcnt_epi64(rm)), zero_i);
            let in_r1 = _mm512_test_epi64_mask(_mm512_srlv_epi64(r1, l), one_i);
            // (a negligible diagonal entry: the scalar start below)
            let flag = pm & _mm512_cmpgt_epi64_mask(l, zero_i) & !in_r1;
            let conv = pm & !flag & _mm512_cmpeq_epi64_mask(l, kk[h]);
            let other = pm & !flag & !conv;
            flagm |= (flag as u64) << (8 * h);
            shm |= (other as u64) << (8 * h);
            _mm512_mask_storeu_epi64(lsh.as_mut_ptr().add(8 * h), other, l);
            if conv != 0 {
                // converged: w[k] = |w[k]| (a negative value negated), its = 0, k - 1 or done
                let ik = _mm512_add_epi64(_mm512_mullo_epi64(kk[h], kv), ids[h]);
                let z = _mm512_mask_i64gather_pd::<8>(zero, conv, ik, wp);
                let negz = conv & _mm512_cmp_pd_mask::<_CMP_LT_OQ>(z, zero);
                _mm512_mask_i64scatter_pd::<8>(wp, negz, ik, _mm512_xor_pd(z, sign));
                its[h] = _mm512_mask_mov_epi64(its[h], conv, zero_i);
                let last = conv & _mm512_cmpeq_epi64_mask(kk[h], zero_i);
                finished |= (last as u64) << (8 * h);
                let more = conv & !last;
                kk[h] = _mm512_mask_sub_epi64(kk[h], more, kk[h], one_i);
                again |= (more as u64) << (8 * h);
            }
        }
        pend = again;
    }
    for h in 0..HZ {
        let m = (shm >> (8 * h)) as u8;
        its[h] = _mm512_mask_add_epi64(its[h], m, its[h], one_i);
        _mm512_storeu_epi64(ch.kk.as_mut_ptr().add(8 * h) as *mut i64, kk[h]);
        _mm512_storeu_epi64(ch.its.as_mut_ptr().add(8 * h) as *mut i64, its[h]);
    }
    for q in bits(finished) {
        ch.done[q] = true;
    }
    *donem |= finished;
    for q in bits(flagm) {
        // (the scalar start from the top, which changes the block's entries; their bits
        // afterwards from the entries)
        ch.start(q, w, rv1, anorm[q]);
        if ch.done[q] {
            *donem |= 1 << q;
        } else {
            neg.scan(q, ch.kk[q], w, rv1, anorm[q]);
        }
    }
    if shm == 0 {
        return;
    }
    // The shifts of the lanes that start a sweep.
    let (kkv, itsv) = (kk, its);
    let (mut ff, mut xx) = ([0.0f64; K], [0.0f64; K]);
    let mut bad = 0u64;
    let two = _mm512_set1_pd(2.0);
    for h in 0..HZ {
        let m = (shm >> (8 * h)) as u8;
        if m == 0 {
            continue;
        }
        let lvh = _mm512_loadu_epi64(lsh.as_ptr().add(8 * h));
        let il = _mm512_add_epi64(_mm512_mullo_epi64(lvh, kv), ids[h]);
        let ik = _mm512_add_epi64(_mm512_mullo_epi64(kkv[h], kv), ids[h]);
        let ik1 = _mm512_sub_epi64(ik, kv);
        let xv = _mm512_mask_i64gather_pd::<8>(one, m, il, wp);
        let y = _mm512_mask_i64gather_pd::<8>(one, m, ik1, wp);
        let gq = _mm512_mask_i64gather_pd::<8>(zero, m, ik1, rp);
        let hq = _mm512_mask_i64gather_pd::<8>(one, m, ik, rp);
        let z = _mm512_mask_i64gather_pd::<8>(zero, m, ik, wp);
        let fails = _mm512_cmpgt_epi64_mask(itsv[h], _mm512_set1_epi64(75))
            | _mm512_cmp_pd_mask::<_CMP_EQ_OQ>(xv, zero)
            | _mm512_cmp_pd_mask::<_CMP_EQ_OQ>(hq, zero)
            | _mm512_cmp_pd_mask::<_CMP_EQ_OQ>(y, zero);
        bad |= ((m & fails) as u64) << (8 * h);
        // f = ((y - z)(y + z) + (g - h)(g + h)) / (2 h y)
        let num = _mm512_add_pd(
            _mm512_mul_pd(_mm512_sub_pd(y, z), _mm512_add_pd(y, z)),
            _mm512_mul_pd(_mm512_sub_pd(gq, hq), _mm512_add_pd(gq, hq)),
        );
        let fv = _mm512_div_pd(num, _mm512_mul_pd(_mm512_mul_pd(two, hq), y));
        // pythag_one(f): |f| sqrt(1 + (1/|f|)^2) above one, sqrt(1 + f^2) else
        let ax = _mm512_abs_pd(fv);
        let big = _mm512_cmp_pd_mask::<_CMP_GT_OQ>(ax, one);
        let r = _mm512_div_pd(one, ax);
        let t = _mm512_mask_blend_pd(big, _mm512_mul_pd(ax, ax), _mm512_mul_pd(r, r));
        let sq = _mm512_sqrt_pd(_mm512_add_pd(one, t));
        let g1 = _mm512_mask_blend_pd(big, sq, _mm512_mul_pd(ax, sq));
        let cs = _mm512_or_pd(_mm512_andnot_pd(sign, g1), _mm512_and_pd(sign, fv));
        // f = ((x - z)(x + z) + h (y / (f + copysign(g1, f)) - h)) / x
        let inner = _mm512_sub_pd(_mm512_div_pd(y, _mm512_add_pd(fv, cs)), hq);
        let f2 = _mm512_div_pd(
            _mm512_add_pd(_mm512_mul_pd(_mm512_sub_pd(xv, z), _mm512_add_pd(xv, z)), _mm512_mul_pd(hq, inner)),
            xv,
        );
        _mm512_storeu_pd(ff.as_mut_ptr().add(8 * h), f2);
        _mm512_storeu_pd(xx.as_mut_ptr().add(8 * h), xv);
    }
    for q in bits(shm) {
        if bad & (1 << q) != 0 {
            ch.ok[q] = false;
            ch.done[q] = true;
            *donem |= 1 << q;
        } else {
            let l = lsh[q] as usize;
            ch.lo[q] = l;
            ch.pos[q] = 0;
            ch.cnt[q] = ch.kk[q] - l;
            ch.cc[q] = 1.0;
            ch.sn[q] = 1.0;
            ch.ff[q] = ff[q];
            ch.xx[q] = xx[q];
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
        if !crate::cpu::avx512_available() {
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
        if !crate::cpu::avx512_available() {
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
        if !crate::cpu::avx512_available() {
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

    /// Bidiagonals of every kind for the chase tests: lane `q` of row `i` at `i * k + q`, with
    /// two spare rows; and the lanes' norms as the bidiagonalisation gives them.
    fn bidiagonals(seed: &mut u64, n: usize, k: usize, round: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (mut w, mut rv1) = (vec![0.0; (n + 2) * k], vec![0.0; (n + 2) * k]);
        for q in 0..k {
            let kind = (q + round) % 9;
            for i in 0..n {
                let (mut d, mut e) = (lcg(seed), if i > 0 { lcg(seed) } else { 0.0 });
                match kind {
                    1 => (d, e) = (0.0, 0.0),
                    2 => (d, e) = (d * 1e200, e * 1e200),
                    3 => (d, e) = (d * 1e-200, e * 1e-200),
                    4 => {
                        let g = 10f64.powf(100.0 - 200.0 * i as f64 / n as f64);
                        (d, e) = (d * g, e * g);
                    }
                    5 if i % 3 == 1 => e = 0.0,
                    6 if i == n / 2 => d = f64::NAN,
                    7 => {
                        let g = 10f64.powf(-(i as f64));
                        (d, e) = (d * g, e * g * 1e-3);
                    }
                    _ => {}
                }
                w[i * k + q] = d;
                rv1[i * k + q] = e;
            }
        }
        let mut anorm = vec![0.0f64; k];
        for q in 0..k {
            for i in 0..n {
                anorm[q] = anorm[q].max(w[i * k + q].abs() + rv1[i * k + q].abs());
            }
            if (0..n).any(|i| w[i * k + q].is_nan()) {
                anorm[q] = f64::NAN;
            }
        }
        (w, rv1, anorm)
    }

    /// The AVX-512 chases (free-running and in lockstep, 16 and 32 lanes) against the portable
    /// sixteen-lane chase on the same bidiagonals: the same lanes converge, to the same values bit
    /// for bit (orders 1 to 100, the lockstep chase handing those above 64 to the free-running
    /// one; random, zero, huge, tiny, graded, split and NaN lanes).
    #[test]
    fn chase_same_as_portable() {
        if !crate::cpu::avx512_available() {
            return;
        }
        let mut seed = 41u64;
        for n in [1usize, 2, 3, 5, 16, 33, 64, 100] {
            for round in 0..5 {
                let (w, rv1, an) = bidiagonals(&mut seed, n, 32, round);
                // half `half` of the 32 lanes as sixteen-lane buffers (two spare rows)
                let half_of = |half: usize| -> (Vec<f64>, Vec<f64>, [f64; K]) {
                    let (mut w1, mut r1) = (vec![0.0; (n + 2) * K], vec![0.0; (n + 2) * K]);
                    let mut a1 = [0.0; K];
                    for q in 0..K {
                        for i in 0..n {
                            w1[i * K + q] = w[i * 32 + half * K + q];
                            r1[i * K + q] = rv1[i * 32 + half * K + q];
                        }
                        a1[q] = an[half * K + q];
                    }
                    (w1, r1, a1)
                };
                // the portable chase on each half: the values wanted, 32 lanes wide
                let mut want_w = vec![0.0; n * 32];
                let mut want_ok = [false; 32];
                for half in 0..2 {
                    let (mut w1, mut r1, a1) = half_of(half);
                    let ok = super::super::chase_lanes(n, &mut w1, &mut r1, &a1);
                    for q in 0..K {
                        want_ok[half * K + q] = ok[q];
                        for i in 0..n {
                            want_w[i * 32 + half * K + q] = w1[i * K + q];
                        }
                    }
                }
                let same = |what: &str, lanes: usize, half: usize, ok: &[bool], got: &[f64]| {
                    assert_eq!(&want_ok[half * K..half * K + lanes], ok, "{what}, n = {n}, round {round}");
                    for q in (0..lanes).filter(|&q| ok[q]) {
                        for i in 0..n {
                            let (a, b) = (want_w[i * 32 + half * K + q], got[i * lanes + q]);
                            assert_eq!(a.to_bits(), b.to_bits(), "{what}, n = {n}, round {round}, lane {q}, value {i}");
                        }
                    }
                };
                for half in 0..2 {
                    let (mut w2, mut r2, a2) = half_of(half);
                    // SAFETY: AVX-512 checked above.
                    let ok = unsafe { chase::<16, 2>(n, &mut w2, &mut r2, &a2) };
                    same("16 lanes", K, half, &ok, &w2);
                    let (mut w2, mut r2, a2) = half_of(half);
                    // SAFETY: AVX-512 checked above.
                    let ok = unsafe { chase_lockstep::<16, 2>(n, &mut w2, &mut r2, &a2) };
                    same("lockstep, 16 lanes", K, half, &ok, &w2);
                }
                let a3: [f64; 32] = an.clone().try_into().unwrap();
                let (mut w3, mut r3) = (w.clone(), rv1.clone());
                // SAFETY: AVX-512 checked above.
                let ok3 = unsafe { chase::<32, 4>(n, &mut w3, &mut r3, &a3) };
                same("32 lanes", 32, 0, &ok3, &w3);
                assert!(ok3.iter().filter(|&&x| x).count() >= 16, "n = {n}: most lanes converge");
                let (mut w4, mut r4) = (w.clone(), rv1.clone());
                // SAFETY: AVX-512 checked above.
                let ok4 = unsafe { chase_lockstep::<32, 4>(n, &mut w4, &mut r4, &a3) };
                same("lockstep, 32 lanes", 32, 0, &ok4, &w4);
            }
        }
    }

    /// CPU time of the 32-lane chase alone, per matrix, free-running against lockstep sweeps, on
    /// the bidiagonals of products of two random triangular factors (`--ignored --nocapture`).
    #[cfg(target_os = "linux")]
    #[test]
    #[ignore]
    fn bench_pair_chase() {
        if !crate::cpu::avx512_available() {
            return;
        }
        fn cpu_s() -> f64 {
            let mut ts = libc_timespec { tv_sec: 0, tv_nsec: 0 };
            // SAFETY: a valid out-pointer; CLOCK_THREAD_CPUTIME_ID = 3 on Linux.
            unsafe { clock_gettime(3, &mut ts) };
            ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
        }
        #[repr(C)]
        struct libc_timespec {
            tv_sec: i64,
            tv_nsec: i64,
        }
        extern "C" {
            fn clock_gettime(clk: i32, ts: *mut libc_timespec) -> i32;
        }
        let n = 16;
        let mut seed = 5u64;
        let batches = 64;
        let mut sets = Vec::new();
        for _ in 0..batches {
            let (mut b1, mut b2) = (super::super::BatchSvd::new(n), super::super::BatchSvd::new(n));
            for b in [&mut b1, &mut b2] {
                let lo: Vec<V> = (0..n * n).map(|_| std::array::from_fn(|_| lcg(&mut seed))).collect();
                let up: Vec<V> = (0..n * n).map(|_| std::array::from_fn(|_| lcg(&mut seed))).collect();
                for j in 0..n {
                    for i in 0..n {
                        for q in 0..K {
                            b.a[j * n + i][q] = (i.max(j)..n).map(|r| up[r * n + i][q] * lo[j * n + r][q]).sum::<f64>();
                        }
                    }
                }
            }
            let (a1, a2) = (b1.bidiagonalise_portable(), b2.bidiagonalise_portable());
            let (mut w, mut r) = (vec![0.0; (n + 2) * 32], vec![0.0; (n + 2) * 32]);
            for i in 0..n {
                for q in 0..K {
                    w[i * 32 + q] = b1.w[i * K + q];
                    w[i * 32 + K + q] = b2.w[i * K + q];
                    r[i * 32 + q] = b1.rv1[i * K + q];
                    r[i * 32 + K + q] = b2.rv1[i * K + q];
                }
            }
            let mut an = [0.0; 32];
            an[..K].copy_from_slice(&a1);
            an[K..].copy_from_slice(&a2);
            sets.push((w, r, an));
        }
        let reps = 100;
        for round in 0..3 {
            for lockstep in [false, true] {
                let mut acc = 0.0;
                let c0 = cpu_s();
                for _ in 0..reps {
                    for (w0, r0, an) in &sets {
                        let (mut w, mut r) = (w0.clone(), r0.clone());
                        // SAFETY: AVX-512 checked above.
                        let ok = unsafe {
                            if lockstep {
                                chase_lockstep::<32, 4>(n, &mut w, &mut r, an)
                            } else {
                                chase::<32, 4>(n, &mut w, &mut r, an)
                            }
                        };
                        acc += w[0] + ok[0] as u8 as f64;
                    }
                }
                let per = (cpu_s() - c0) * 1e6 / (reps * batches * 32) as f64;
                eprintln!(
                    "round {round}, {}: {per:.3} us cpu per matrix ({acc})",
                    if lockstep { "lockstep" } else { "free-running" }
                );
            }
        }
    }
}
