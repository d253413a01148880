//! Large scratch buffers. A fresh multi-megabyte buffer costs about as much in page
//! faults (one per 4 KiB page, each zeroing the page) as the O(nnz) work done in it, so
//! on Linux buffers of at least [`HUGE_MIN_BYTES`] ask the kernel for transparent huge
//! pages (`madvise(MADV_HUGEPAGE)`, honoured when THP is in `madvise` or `always` mode):
//! one fault per 2 MiB. This is advice only; nothing changes when it is refused.

use crate::error::{Error, Result};

/// Memory the system reports as available (Linux `/proc/meminfo` `MemAvailable`), if known.
pub fn available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

fn gib(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

/// The one memory gate: refuse, before anything is allocated, a request of `bytes` (`None`:
/// the size overflowed) that cannot fit in the memory available now. `arg` names the
/// argument whose size asks for it, `what` says what the memory is for.
///
/// On Linux an allocation larger than the free memory usually "succeeds" and the process is
/// killed when the pages are touched, so a failed `try_reserve` alone cannot catch it.
pub fn gate(arg: &str, bytes: Option<u64>, what: &str) -> Result<()> {
    let Some(b) = bytes else {
        return Err(Error::too_large(arg, format!("{what}: the size overflows the address space")));
    };
    let Some(a) = available() else { return Ok(()) };
    if b <= a {
        return Ok(());
    }
    // free memory the C library keeps in its heaps is not in `MemAvailable` (ess.analyze keeps it
    // there on purpose while it runs): give it back and look again before refusing
    let a = if release_heap() { available().unwrap_or(a) } else { a };
    if b <= a {
        return Ok(());
    }
    Err(Error::too_large(arg, format!("{what} needs {:.2} GiB but {:.2} GiB of memory is available", gib(b), gib(a))))
}

/// Return the free memory of the C library's heaps to the system (glibc's `malloc_trim(0)`); whether
/// that was attempted.
fn release_heap() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `malloc_trim` only walks and trims the allocator's own free lists, under its locks.
        unsafe { libc::malloc_trim(0) };
        true
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Bytes of `n` values of type `T` (`None` on overflow).
pub fn bytes_of<T>(n: usize) -> Option<u64> {
    (n as u64).checked_mul(std::mem::size_of::<T>() as u64)
}

/// `n` copies of `x` after passing the gate (see [`gate`]), `TooLarge` naming `arg` otherwise.
pub fn try_filled<T: Clone>(arg: &str, n: usize, x: T, what: &str) -> Result<Vec<T>> {
    gate(arg, bytes_of::<T>(n), what)?;
    let mut v: Vec<T> = Vec::new();
    v.try_reserve_exact(n).map_err(|_| Error::too_large(arg, format!("{what}: not enough memory for {n} entries")))?;
    advise_vec(&mut v);
    v.resize(n, x);
    Ok(v)
}

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

/// `v.resize(n, x)`, where a growth that needs a new allocation asks for huge pages for it
/// before its first touch (a scratch buffer of tens of MB that a kernel streams through: one
/// fault and one TLB entry per 2 MiB instead of per 4 KiB).
pub fn resize_advised<T: Clone>(v: &mut Vec<T>, n: usize, x: T) {
    if n > v.capacity() {
        v.reserve_exact(n - v.len());
        advise_vec(v);
    }
    v.resize(n, x);
}

/// An empty vector with room for `n` elements, backed by huge pages where possible.
/// `TooLarge` (naming `P`, the transition matrix whose work needs it) when the
/// allocation fails.
pub fn with_capacity<T>(n: usize) -> Result<Vec<T>> {
    let mut v: Vec<T> = Vec::new();
    v.try_reserve_exact(n).map_err(|_| Error::too_large("P", format!("not enough memory for {n} entries")))?;
    advise_vec(&mut v);
    Ok(v)
}

/// `n` copies of `x`, backed by huge pages where possible.
pub fn filled<T: Clone>(n: usize, x: T) -> Result<Vec<T>> {
    let mut v = with_capacity(n)?;
    v.resize(n, x);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_passes_what_fits_and_refuses_the_rest_after_giving_the_heap_back() {
        assert!(gate("x", Some(1 << 20), "a small buffer").is_ok());
        // free memory in the heap first: the refusal path gives it back before it looks again
        let v: Vec<u8> = vec![1; 64 << 20];
        drop(v);
        let e = gate("x", Some(u64::MAX / 2), "an impossible buffer");
        if available().is_some() {
            let e = e.expect_err("larger than any machine's memory");
            assert!(format!("{e}").contains("an impossible buffer"), "{e}");
        }
        assert!(gate("x", None, "an overflowing size").is_err());
        assert_eq!(release_heap(), cfg!(all(target_os = "linux", target_env = "gnu")));
    }
}
