//! Cooperative cancellation of long kernels.
//!
//! A caller that wants to stop running kernels (the Python binding, on Ctrl-C) calls
//! [`request`]; every kernel that can run for more than about a second calls [`check`] at a
//! fine grain (per split, per channel, per elimination step, per trajectory) and returns
//! [`Error::Interrupted`] once a request is pending, so parallel work winds down through the
//! ordinary error path and no thread is left running. The request is process-wide, like the
//! signal that causes it; the caller clears it with [`clear`] once its call has returned.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Ask every running kernel to stop at its next check.
pub fn request() {
    REQUESTED.store(true, Ordering::Relaxed);
}

/// Withdraw a request (after the interrupted call has returned).
pub fn clear() {
    REQUESTED.store(false, Ordering::Relaxed);
}

/// Whether a stop was requested.
#[inline]
pub fn requested() -> bool {
    REQUESTED.load(Ordering::Relaxed)
}

/// `Err(Error::Interrupted)` when a stop was requested: one relaxed atomic load.
#[inline]
pub fn check() -> Result<()> {
    if requested() {
        Err(Error::Interrupted)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_check_clear() {
        // Tests run in parallel threads of one process: only this test touches the flag.
        assert!(check().is_ok());
        request();
        assert!(matches!(check(), Err(Error::Interrupted)));
        clear();
        assert!(check().is_ok());
    }
}
