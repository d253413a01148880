//! Large scratch buffers. A fresh multi-megabyte buffer costs about as much in page
//! faults (one per 4 KiB page, each zeroing the page) as the O(nnz) work done in it, so
//! on Linux buffers of at least [`HUGE_MIN_BYTES`] ask the kernel for transparent huge
//! pages (`madvise(MADV_HUGEPAGE)`, honoured when THP is in `madvise` or `always` mode):
//! one fault per 2 MiB. This is advice only; nothing changes when it is refused.

use crate::error::{Error, Result};

pub const HUGE_MIN_BYTES: usize = 4 << 20;

/// Whether huge-page advice is on: yes unless the environment variable
/// `ESS_NO_HUGE_PAGES` is set (read once per process).
pub fn huge_pages_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("ESS_NO_HUGE_PAGES").is_none())
}

#[cfg(target_os = "linux")]
fn advise_huge(ptr: *mut u8, bytes: usize) {
    const HUGE: usize = 1 << 21;
    if !huge_pages_enabled() {
        return;
    }
    let start = (ptr as usize).next_multiple_of(HUGE);
    let end = (ptr as usize + bytes) & !(HUGE - 1);
    if end > start {
        // SAFETY: advice on whole pages inside an allocation we own; it does not change
        // the contents or validity of the memory. Failure is ignored.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
}

/// Ask for huge pages for the (untouched) spare capacity of `v`; see the module docs.
pub fn advise_vec<T>(v: &mut Vec<T>) {
    let bytes = v.capacity().saturating_mul(std::mem::size_of::<T>());
    if bytes >= HUGE_MIN_BYTES {
        advise_huge(v.as_mut_ptr() as *mut u8, bytes);
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge(_ptr: *mut u8, _bytes: usize) {}

/// An empty vector with room for `n` elements, backed by huge pages where possible.
/// `TooLarge` (naming `P`, the transition matrix whose work needs it) when the
/// allocation fails.
pub fn with_capacity<T>(n: usize) -> Result<Vec<T>> {
    let mut v: Vec<T> = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| Error::too_large("P", format!("not enough memory for {n} entries")))?;
    advise_vec(&mut v);
    Ok(v)
}

/// `n` copies of `x`, backed by huge pages where possible.
pub fn filled<T: Clone>(n: usize, x: T) -> Result<Vec<T>> {
    let mut v = with_capacity(n)?;
    v.resize(n, x);
    Ok(v)
}
