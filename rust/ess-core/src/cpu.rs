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
