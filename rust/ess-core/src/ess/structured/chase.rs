//! The QR chase of [`super::chase_lanes`] written with AVX2 intrinsics.
//!
//! The portable [`super::chase_lanes`] keeps each lane's state in `[f64; LANES]` arrays and
//! moves it through memory on every step; compiled, its vector step cost about 700 cycles for
//! sixteen lanes here (2.2 us per `16 x 16` matrix), although its arithmetic is a few dozen
//! vector operations. Here the state stays in registers (four AVX2 registers per quantity)
//! between events, the entries of each lane's step are gathered and its results stored by index,
//! and only a lane that ends its sweep (or fails) sends the state back to [`super::Chase`] for
//! the scalar bookkeeping of [`super::Chase::start`].
//!
//! Every lane performs the operations of [`super::chase_lanes`] in the same order with the same
//! roundings (plain multiplies, adds, divisions and square roots, no fused multiply-add; the
//! rare square sums outside `(1e-290, 1e290)` take [`super::fast_hypot`] lane by lane), so the
//! values are the same bit for bit (tested against it).

use super::{fast_hypot, Chase, LANES};
use std::arch::x86_64::*;

const K: usize = LANES;
const H: usize = LANES / 4;

use crate::cpu::lanes::{load, load_i, store, store_i};

#[inline(always)]
unsafe fn ld(a: &[f64; K]) -> [__m256d; H] {
    load(a)
}

#[inline(always)]
unsafe fn st(v: &[__m256d; H], a: &mut [f64; K]) {
    store(v, a)
}

#[inline(always)]
unsafe fn ldi(a: &[i64; K]) -> [__m256i; H] {
    load_i(a)
}

#[inline(always)]
unsafe fn sti(v: &[__m256i; H], a: &mut [i64; K]) {
    store_i(v, a)
}

/// `sqrt(x^2 + y^2)` of every lane as [`super::lane_hypot`] computes it: the plain formula, and
/// [`fast_hypot`] for the active lanes whose square sum leaves `(1e-290, 1e290)` (for the
/// others the two agree).
#[inline(always)]
unsafe fn hypot(x: &[__m256d; H], y: &[__m256d; H], done: &[__m256d; H]) -> [__m256d; H] {
    let (lo, hi) = (_mm256_set1_pd(1e-290), _mm256_set1_pd(1e290));
    let mut z = [_mm256_setzero_pd(); H];
    let mut risky = 0;
    for h in 0..H {
        let sq = _mm256_add_pd(_mm256_mul_pd(x[h], x[h]), _mm256_mul_pd(y[h], y[h]));
        z[h] = _mm256_sqrt_pd(sq);
        let ok = _mm256_and_pd(_mm256_cmp_pd::<_CMP_GT_OQ>(sq, lo), _mm256_cmp_pd::<_CMP_LT_OQ>(sq, hi));
        risky |= (_mm256_movemask_pd(_mm256_or_pd(ok, done[h])) ^ 0xf) << (4 * h);
    }
    if risky != 0 {
        let (mut xa, mut ya, mut za) = ([0.0; K], [0.0; K], [0.0; K]);
        st(x, &mut xa);
        st(y, &mut ya);
        st(&z, &mut za);
        for q in 0..K {
            if risky & (1 << q) != 0 {
                za[q] = fast_hypot(xa[q], ya[q]);
            }
        }
        z = ld(&za);
    }
    z
}

/// [`super::chase_lanes`] on AVX2 (same arguments and results). `w` and `rv1` hold two spare
/// rows after the `n` of the bidiagonals (row `n` takes the stores of lanes that are done, row
/// `n + 1` is where they gather from).
///
/// # Safety
/// The processor must have AVX2 (checked by the caller).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn chase(n: usize, w: &mut [f64], rv1: &mut [f64], anorm: &[f64; K]) -> [bool; K] {
    assert!(n >= 1 && w.len() >= (n + 2) * K && rv1.len() >= (n + 2) * K);
    let mut ch = Chase::begin(n, w, rv1, anorm);
    let (one, zero) = (_mm256_set1_pd(1.0), _mm256_setzero_pd());
    let kv = _mm256_set1_epi64x(K as i64);
    let (wp, rp) = (w.as_mut_ptr(), rv1.as_mut_ptr());
    // Per lane, the row of its next step as a flat index (`(lo + pos + 1) K + q`; the spare row
    // n + 1 for a lane that is done) and that of its sweep's last step.
    let (mut ia, mut la) = ([0i64; K], [0i64; K]);
    for q in 0..K {
        (ia[q], la[q]) = ch.step_rows(n, q);
    }
    while ch.done.iter().any(|d| !d) {
        let mut dn = [0i64; K];
        for q in 0..K {
            dn[q] = if ch.done[q] { -1 } else { 0 };
        }
        let (mut idx, last, donei) = (ldi(&ia), ldi(&la), ldi(&dn));
        let mut done = [zero; H];
        for h in 0..H {
            done[h] = _mm256_castsi256_pd(donei[h]);
        }
        let (mut c, mut s, mut f, mut x) = (ld(&ch.cc), ld(&ch.sn), ld(&ch.ff), ld(&ch.xx));
        let mut z1: [__m256d; H];
        let mut ended = [_mm256_setzero_si256(); H];
        let pending: u32;
        loop {
            let mut gg = [zero; H];
            let mut y = [zero; H];
            let mut hh = [zero; H];
            for h in 0..H {
                // (a done lane computes on benign constants)
                let g0 = _mm256_i64gather_pd::<8>(rp, idx[h]);
                let y0 = _mm256_i64gather_pd::<8>(wp, idx[h]);
                gg[h] = _mm256_blendv_pd(g0, zero, done[h]);
                y[h] = _mm256_blendv_pd(y0, one, done[h]);
                hh[h] = _mm256_mul_pd(s[h], gg[h]);
                gg[h] = _mm256_mul_pd(gg[h], c[h]);
            }
            z1 = hypot(&f, &hh, &done);
            let mut f2 = [zero; H];
            for h in 0..H {
                let iz = _mm256_div_pd(one, z1[h]);
                c[h] = _mm256_mul_pd(f[h], iz);
                s[h] = _mm256_mul_pd(hh[h], iz);
                f2[h] = _mm256_add_pd(_mm256_mul_pd(x[h], c[h]), _mm256_mul_pd(gg[h], s[h]));
                gg[h] = _mm256_sub_pd(_mm256_mul_pd(gg[h], c[h]), _mm256_mul_pd(x[h], s[h]));
                hh[h] = _mm256_mul_pd(y[h], s[h]);
                y[h] = _mm256_mul_pd(y[h], c[h]);
            }
            let z2 = hypot(&f2, &hh, &done);
            let mut event = 0;
            for h in 0..H {
                let nz = _mm256_cmp_pd::<_CMP_NEQ_UQ>(z2[h], zero);
                let iz = _mm256_div_pd(one, z2[h]);
                c[h] = _mm256_blendv_pd(c[h], _mm256_mul_pd(f2[h], iz), nz);
                s[h] = _mm256_blendv_pd(s[h], _mm256_mul_pd(hh[h], iz), nz);
                let fnew = _mm256_add_pd(_mm256_mul_pd(c[h], gg[h]), _mm256_mul_pd(s[h], y[h]));
                let xnew = _mm256_sub_pd(_mm256_mul_pd(c[h], y[h]), _mm256_mul_pd(s[h], gg[h]));
                // Stores of the step (row j = i - 1; a done lane's go to the spare row n).
                let j = _mm256_sub_epi64(idx[h], kv);
                let (mut ja, mut za, mut wa) = ([0i64; 4], [0.0f64; 4], [0.0f64; 4]);
                _mm256_storeu_si256(ja.as_mut_ptr() as *mut __m256i, j);
                _mm256_storeu_pd(za.as_mut_ptr(), z1[h]);
                _mm256_storeu_pd(wa.as_mut_ptr(), z2[h]);
                for e in 0..4 {
                    *rp.add(ja[e] as usize) = za[e];
                    *wp.add(ja[e] as usize) = wa[e];
                }
                c[h] = _mm256_blendv_pd(c[h], one, done[h]);
                s[h] = _mm256_blendv_pd(s[h], zero, done[h]);
                f[h] = _mm256_blendv_pd(fnew, one, done[h]);
                x[h] = _mm256_blendv_pd(xnew, one, done[h]);
                let en = _mm256_cmpeq_epi64(idx[h], last[h]);
                let fail = _mm256_andnot_pd(done[h], _mm256_cmp_pd::<_CMP_EQ_OQ>(z1[h], zero));
                ended[h] = en;
                event |= _mm256_movemask_pd(_mm256_or_pd(_mm256_castsi256_pd(en), fail)) << (4 * h);
                idx[h] = _mm256_add_epi64(idx[h], _mm256_andnot_si256(_mm256_or_si256(en, donei[h]), kv));
            }
            if event != 0 {
                pending = event as u32;
                break;
            }
        }
        // Back to the scalar state; the bookkeeping of the lanes that failed or ended their
        // sweep.
        st(&c, &mut ch.cc);
        st(&s, &mut ch.sn);
        st(&f, &mut ch.ff);
        st(&x, &mut ch.xx);
        let (mut ea, mut za) = ([0i64; K], [0.0f64; K]);
        sti(&idx, &mut ia);
        sti(&ended, &mut ea);
        st(&z1, &mut za);
        let mut lanes = pending;
        while lanes != 0 {
            let q = lanes.trailing_zeros() as usize;
            lanes &= lanes - 1;
            // (ended: the step at row kk was the sweep's last)
            ch.stop(q, za[q] == 0.0, ea[q] != 0, w, rv1, anorm[q]);
            (ia[q], la[q]) = ch.step_rows(n, q);
        }
    }
    ch.finish(n, w)
}

#[cfg(test)]
mod tests {
    use super::super::chase_lanes;
    use super::*;

    fn lcg(seed: &mut u64) -> f64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 11) as f64) / ((1u64 << 53) as f64) - 0.5
    }

    /// The AVX2 chase against the portable one on the same bidiagonals: the same lanes
    /// converge, to the same values bit for bit. Lanes: random, zero, huge, tiny (both through
    /// the careful hypot), graded over 200 decades, with zero superdiagonal entries, non-finite.
    #[test]
    fn same_values_as_the_portable_chase() {
        if !crate::cpu::has_avx2_fma() {
            return;
        }
        let mut seed = 17u64;
        for n in [1usize, 2, 3, 5, 16, 33, 64, 100] {
            for round in 0..4 {
                let mut w = vec![0.0; (n + 2) * K];
                let mut rv1 = vec![0.0; (n + 2) * K];
                for q in 0..K {
                    let kind = (q + round) % 8;
                    for i in 0..n {
                        let (mut d, mut e) = (lcg(&mut seed), if i > 0 { lcg(&mut seed) } else { 0.0 });
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
                            _ => {}
                        }
                        w[i * K + q] = d;
                        rv1[i * K + q] = e;
                    }
                }
                let mut anorm = [0.0f64; K];
                for q in 0..K {
                    for i in 0..n {
                        anorm[q] = anorm[q].max(w[i * K + q].abs() + rv1[i * K + q].abs());
                    }
                    if (0..n).any(|i| w[i * K + q].is_nan()) {
                        anorm[q] = f64::NAN;
                    }
                }
                let (mut w1, mut r1) = (w.clone(), rv1.clone());
                let ok1 = chase_lanes(n, &mut w1, &mut r1, &anorm);
                let (mut w2, mut r2) = (w.clone(), rv1.clone());
                // SAFETY: AVX2 checked above.
                let ok2 = unsafe { chase(n, &mut w2, &mut r2, &anorm) };
                assert_eq!(ok1, ok2, "n = {n}, round {round}");
                for q in (0..K).filter(|&q| ok1[q]) {
                    for i in 0..n {
                        let (a, b) = (w1[i * K + q], w2[i * K + q]);
                        assert_eq!(a.to_bits(), b.to_bits(), "n = {n}, round {round}, lane {q}, value {i}: {a} vs {b}");
                    }
                }
                assert!(ok1.iter().filter(|&&x| x).count() >= K / 2, "n = {n}: most lanes converge");
            }
        }
    }
}
