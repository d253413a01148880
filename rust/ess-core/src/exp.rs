//! `exp` of many values at once, the same bits on every processor.
//!
//! The structured kernel forms the transitions of a selective state-space layer as
//! `exp(delta_t a_k)`: for a Mamba-130m layer at L = 2048 that is 50 million exponentials (and as
//! many again in the run-time check of the extractor), a few percent of the layer's time when
//! taken one by one from the C library. [`exp_into`] evaluates them eight at a time with AVX-512
//! where the processor has it, and otherwise lane by lane with [`exp`], which performs the same
//! operations in the same order (multiplies and adds rounded separately, no fused multiply-add),
//! so that the values, and the curves computed from them, do not depend on the processor.
//!
//! Method: `x = k ln 2 + r` with `k` the nearest integer to `x / ln 2` and `ln 2` split in two
//! parts (the product with the high part exact, Cody and Waite), `|r| <= 0.3466`; `exp(r)` by its
//! Taylor polynomial of degree 13 (truncation below `4e-18` relative), in Horner form; the result
//! scaled by `2^k` as two exact powers of two, so that subnormal results are rounded once at the
//! end. The error against the correctly rounded value is at most a few units in the last place
//! (tested against the C library's `exp` over the whole range). `NaN` gives `NaN`, `x >= 710`
//! gives `+inf`, `x <= -746` gives `0`.

const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
const INV_LN2: f64 = f64::from_bits(0x3ff7_1547_652b_82fe);
/// `1 / j!` for `j = 13, 12, ..., 2` (Horner from the top).
const INV_FACT: [f64; 12] = [
    1.0 / 6_227_020_800.0,
    1.0 / 479_001_600.0,
    1.0 / 39_916_800.0,
    1.0 / 3_628_800.0,
    1.0 / 362_880.0,
    1.0 / 40_320.0,
    1.0 / 5_040.0,
    1.0 / 720.0,
    1.0 / 120.0,
    1.0 / 24.0,
    1.0 / 6.0,
    0.5,
];
const HI: f64 = 710.0;
const LO: f64 = -746.0;

/// The power of two `2^e` for `-1022 <= e <= 1023`.
#[inline(always)]
fn pow2(e: i64) -> f64 {
    f64::from_bits(((e + 1023) as u64) << 52)
}

/// `exp(x)` (see the module notes): the same bits as [`exp_into`] gives on any processor.
#[inline]
pub fn exp(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    if x >= HI {
        return f64::INFINITY;
    }
    if x <= LO {
        return 0.0;
    }
    let k = (x * INV_LN2).round_ties_even();
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let mut p = INV_FACT[0];
    for c in &INV_FACT[1..] {
        p = p * r + c;
    }
    p = p * r + 1.0;
    p = p * r + 1.0;
    // 2^k = 2^(k - k2) 2^k2, each factor a normal power of two
    let k = k as i64;
    let k2 = if k < -1021 {
        -1000
    } else if k > 1023 {
        1
    } else {
        0
    };
    (p * pow2(k - k2)) * pow2(k2)
}

/// `out[i] = exp(xs[i])` ([`exp`]), eight at a time with AVX-512 where the processor has it (the
/// same values bit for bit). `out` must be at least as long as `xs`.
#[inline]
pub fn exp_into(xs: &[f64], out: &mut [f64]) {
    assert!(out.len() >= xs.len(), "exp_into: output shorter than input");
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::has_avx512() {
        // SAFETY: AVX-512 F/DQ detected at run time.
        unsafe { avx512::exp_into(xs, out) };
        return;
    }
    for (o, &x) in out.iter_mut().zip(xs) {
        *o = exp(x);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn pow2(e: __m512i) -> __m512d {
        _mm512_castsi512_pd(_mm512_slli_epi64::<52>(_mm512_add_epi64(e, _mm512_set1_epi64(1023))))
    }

    /// Eight lanes of [`super::exp`].
    #[target_feature(enable = "avx2,fma,avx512f,avx512dq,avx512vl")]
    unsafe fn exp8(x: __m512d) -> __m512d {
        let k = _mm512_roundscale_pd::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_pd(
            x,
            _mm512_set1_pd(INV_LN2),
        ));
        let r = _mm512_sub_pd(
            _mm512_sub_pd(x, _mm512_mul_pd(k, _mm512_set1_pd(LN2_HI))),
            _mm512_mul_pd(k, _mm512_set1_pd(LN2_LO)),
        );
        let mut p = _mm512_set1_pd(INV_FACT[0]);
        for &c in &INV_FACT[1..] {
            p = _mm512_add_pd(_mm512_mul_pd(p, r), _mm512_set1_pd(c));
        }
        let one = _mm512_set1_pd(1.0);
        p = _mm512_add_pd(_mm512_mul_pd(p, r), one);
        p = _mm512_add_pd(_mm512_mul_pd(p, r), one);
        // (lanes outside (LO, HI) or NaN get their value below; clamp k so the shifts stay sane)
        let ki = _mm512_cvtpd_epi64(_mm512_min_pd(_mm512_max_pd(k, _mm512_set1_pd(-1100.0)), _mm512_set1_pd(1100.0)));
        let low = _mm512_cmplt_epi64_mask(ki, _mm512_set1_epi64(-1021));
        let high = _mm512_cmpgt_epi64_mask(ki, _mm512_set1_epi64(1023));
        let k2 = _mm512_mask_mov_epi64(
            _mm512_mask_mov_epi64(_mm512_setzero_si512(), low, _mm512_set1_epi64(-1000)),
            high,
            _mm512_set1_epi64(1),
        );
        let y = _mm512_mul_pd(_mm512_mul_pd(p, pow2(_mm512_sub_epi64(ki, k2))), pow2(k2));
        let big = _mm512_cmp_pd_mask::<_CMP_GE_OQ>(x, _mm512_set1_pd(HI));
        let small = _mm512_cmp_pd_mask::<_CMP_LE_OQ>(x, _mm512_set1_pd(LO));
        let nan = _mm512_cmp_pd_mask::<_CMP_UNORD_Q>(x, x);
        let y = _mm512_mask_mov_pd(y, big, _mm512_set1_pd(f64::INFINITY));
        let y = _mm512_mask_mov_pd(y, small, _mm512_setzero_pd());
        _mm512_mask_mov_pd(y, nan, x)
    }

    /// [`super::exp_into`] on AVX-512.
    #[target_feature(enable = "avx2,fma,avx512f,avx512dq,avx512vl")]
    pub(super) unsafe fn exp_into(xs: &[f64], out: &mut [f64]) {
        let n = xs.len();
        let mut i = 0;
        while i + 8 <= n {
            _mm512_storeu_pd(out.as_mut_ptr().add(i), exp8(_mm512_loadu_pd(xs.as_ptr().add(i))));
            i += 8;
        }
        if i < n {
            let m = ((1u32 << (n - i)) - 1) as __mmask8;
            let v = exp8(_mm512_mask_loadu_pd(_mm512_setzero_pd(), m, xs.as_ptr().add(i)));
            _mm512_mask_storeu_pd(out.as_mut_ptr().add(i), m, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 11) as f64) / ((1u64 << 53) as f64)
    }

    /// Distance in units in the last place (the two finite and of one sign).
    fn ulps(a: f64, b: f64) -> u64 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs()
    }

    fn samples() -> Vec<f64> {
        let mut seed = 7u64;
        let mut xs: Vec<f64> = (0..200_000).map(|_| -760.0 + 1480.0 * lcg(&mut seed)).collect();
        xs.extend((0..50_000).map(|_| (lcg(&mut seed) - 0.5) * 2.0));
        xs.extend((0..50_000).map(|_| (lcg(&mut seed) - 0.5) * 1e-6));
        xs.extend((0..20_000).map(|_| -746.0 + 40.0 * lcg(&mut seed)));
        xs.extend((0..20_000).map(|_| 700.0 + 11.0 * lcg(&mut seed)));
        xs.extend([
            0.0,
            -0.0,
            1.0,
            -1.0,
            f64::MIN_POSITIVE,
            -f64::MIN_POSITIVE,
            5e-324,
            709.782712893384,
            709.7827128933841,
            709.79,
            709.99,
            710.0,
            -708.3964185322641,
            -708.4,
            -744.44,
            -745.1332191019411,
            -745.2,
            -745.9,
            -746.0,
            1e300,
            -1e300,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            f64::MAX,
            f64::MIN,
        ]);
        xs
    }

    /// Within 2 units in the last place of the C library's `exp` for normal results, within one
    /// unit of the smallest subnormal below them; the same overflow, underflow and NaN.
    #[test]
    fn close_to_the_c_library() {
        let mut worst = 0;
        for x in samples() {
            let (a, b) = (exp(x), x.exp());
            if b.is_nan() {
                assert!(a.is_nan(), "exp({x}) = {a}, expected NaN");
            } else if b.is_infinite() || a.is_infinite() {
                // (the last values before the overflow may round either way)
                assert!(a == b || (x > 709.78 && x < 709.79), "exp({x}) = {a}, expected {b}");
            } else if b < f64::MIN_POSITIVE {
                assert!((a - b).abs() <= 5e-324 * 1.5, "exp({x}) = {a:e}, expected {b:e}");
            } else {
                let u = ulps(a, b);
                worst = worst.max(u);
                assert!(u <= 2, "exp({x}) = {a:e}, expected {b:e}: {u} ulps");
            }
        }
        eprintln!("largest difference from the C library's exp: {worst} ulp(s)");
    }

    /// [`exp_into`] (AVX-512 where available, all lengths of the tail) gives [`exp`] bit for bit.
    #[test]
    fn exp_into_same_as_scalar() {
        let xs = samples();
        for len in [0usize, 1, 7, 8, 9, 15, 16, 17, xs.len()] {
            let mut out = vec![0.0; len];
            exp_into(&xs[..len], &mut out);
            for (i, (&x, &y)) in xs[..len].iter().zip(&out).enumerate() {
                let want = exp(x);
                assert!(
                    y.to_bits() == want.to_bits() || (y.is_nan() && want.is_nan()),
                    "len {len}, value {i}: exp({x}) = {y:e} vs {want:e}"
                );
            }
        }
    }
}
