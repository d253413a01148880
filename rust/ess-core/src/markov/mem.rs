//! Large scratch buffers. A fresh multi-megabyte buffer costs about as much in page
//! faults (one per 4 KiB page, each zeroing the page) as the O(nnz) work done in it, so
//! on Linux buffers of at least [`HUGE_MIN_BYTES`] ask the kernel for transparent huge
//! pages (`madvise(MADV_HUGEPAGE)`, honoured when THP is in `madvise` or `always` mode):
//! one fault per 2 MiB. This is advice only; nothing changes when it is refused.

use crate::error::{Error, Result};

pub const HUGE_MIN_BYTES: usize = 4 << 20;

#[cfg(target_os = "linux")]
fn advise_huge(ptr: *mut u8, bytes: usize) {
    extern "C" {
        fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: i32) -> i32;
    }
    const MADV_HUGEPAGE: i32 = 14;
    const HUGE: usize = 1 << 21;
    let start = (ptr as usize).next_multiple_of(HUGE);
    let end = (ptr as usize + bytes) & !(HUGE - 1);
    if end > start {
        // SAFETY: advice on whole pages inside an allocation we own; it does not change
        // the contents or validity of the memory. Failure is ignored.
        unsafe {
            madvise(start as *mut std::ffi::c_void, end - start, MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge(_ptr: *mut u8, _bytes: usize) {}

/// An empty vector with room for `n` elements, backed by huge pages where possible.
pub fn with_capacity<T>(n: usize) -> Result<Vec<T>> {
    let mut v: Vec<T> = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| Error::too_large("P", format!("not enough memory for {n} entries")))?;
    let bytes = n.saturating_mul(std::mem::size_of::<T>());
    if bytes >= HUGE_MIN_BYTES {
        advise_huge(v.as_mut_ptr() as *mut u8, bytes);
    }
    Ok(v)
}

/// `n` copies of `x`, backed by huge pages where possible.
pub fn filled<T: Clone>(n: usize, x: T) -> Result<Vec<T>> {
    let mut v = with_capacity(n)?;
    v.resize(n, x);
    Ok(v)
}
