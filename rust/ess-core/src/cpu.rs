//! Processor features checked at run time (the package is built for the baseline instruction
//! set; inner kernels compiled for AVX2 + FMA are chosen when the processor has them).

/// Whether the processor has AVX2 and FMA (checked once per process).
#[inline(always)]
pub(crate) fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the processor has AVX-512 F/DQ/VL/CD besides AVX2 and FMA (checked once per process),
/// and the environment variable `ESS_NO_AVX512` is unset (set, the AVX-512 kernels are not used;
/// the AVX2 ones give the same values bit for bit, so the switch is for timing and debugging).
#[inline(always)]
pub(crate) fn has_avx512() -> bool {
    #[cfg(test)]
    if AVX512_OFF_FOR_TESTS.load(std::sync::atomic::Ordering::Relaxed) {
        return false;
    }
    avx512_available()
}

/// Tests: the AVX-512 kernels switched off for the whole process (as `ESS_NO_AVX512`), so that the
/// dispatching code's AVX2 forms are tested on machines that have AVX-512 too.
#[cfg(test)]
pub(crate) static AVX512_OFF_FOR_TESTS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// [`has_avx512`] without the tests' switch: what the processor and the environment allow (the
/// tests that compare the AVX-512 kernels with the portable ones call those kernels directly).
#[inline(always)]
pub(crate) fn avx512_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            has_avx2_fma()
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512dq")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512cd")
                && std::env::var_os("ESS_NO_AVX512").is_none()
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Moves between lane arrays (`[f64; K]`, `[i64; K]`, `[usize; K]`, lane `q` at index `q`) and
/// `H = K / 4` AVX2 registers, for the lane kernels written with intrinsics. Inlined into their
/// AVX2 callers (which is where the intrinsics are compiled), never called on their own.
#[cfg(target_arch = "x86_64")]
pub(crate) mod lanes {
    use std::arch::x86_64::*;

    #[inline(always)]
    pub(crate) unsafe fn load<const K: usize, const H: usize>(a: &[f64; K]) -> [__m256d; H] {
        debug_assert_eq!(K, 4 * H);
        let mut v = [_mm256_setzero_pd(); H];
        for (h, x) in v.iter_mut().enumerate() {
            *x = _mm256_loadu_pd(a.as_ptr().add(4 * h));
        }
        v
    }

    #[inline(always)]
    pub(crate) unsafe fn store<const K: usize, const H: usize>(v: &[__m256d; H], a: &mut [f64; K]) {
        debug_assert_eq!(K, 4 * H);
        for (h, x) in v.iter().enumerate() {
            _mm256_storeu_pd(a.as_mut_ptr().add(4 * h), *x);
        }
    }

    /// `T` is a 64-bit integer (`i64`, `u64`, `usize` on x86_64).
    #[inline(always)]
    pub(crate) unsafe fn load_i<T: Copy, const K: usize, const H: usize>(a: &[T; K]) -> [__m256i; H] {
        debug_assert!(K == 4 * H && std::mem::size_of::<T>() == 8);
        let p = a.as_ptr() as *const __m256i;
        let mut v = [_mm256_setzero_si256(); H];
        for (h, x) in v.iter_mut().enumerate() {
            *x = _mm256_loadu_si256(p.add(h));
        }
        v
    }

    /// `T` is a 64-bit integer (`i64`, `u64`, `usize` on x86_64).
    #[inline(always)]
    pub(crate) unsafe fn store_i<T: Copy, const K: usize, const H: usize>(v: &[__m256i; H], a: &mut [T; K]) {
        debug_assert!(K == 4 * H && std::mem::size_of::<T>() == 8);
        let p = a.as_mut_ptr() as *mut __m256i;
        for (h, x) in v.iter().enumerate() {
            _mm256_storeu_si256(p.add(h), *x);
        }
    }
}
