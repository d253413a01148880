//! Kernels that Ctrl-C can stop.
//!
//! [`detach`] runs a core kernel with the GIL released on a scoped worker thread while the
//! calling thread waits for its result in slices of [`POLL`], checking for Python signals
//! between slices. When a signal handler raises (KeyboardInterrupt on Ctrl-C), the kernels
//! are asked to stop ([`ess_core::interrupt::request`]); they return at their next check, the
//! worker is joined (no thread is left running) and the handler's exception is raised.

use std::sync::mpsc;
use std::time::Duration;

use pyo3::prelude::*;

use crate::errors::to_py;

/// How often the waiting thread looks for pending signals.
const POLL: Duration = Duration::from_millis(20);

/// Run `f` (a core kernel) with the GIL released; interruptible by Python signals.
pub fn detach<T, F>(py: Python<'_>, f: F) -> PyResult<T>
where
    T: Send,
    F: FnOnce() -> ess_core::Result<T> + Send,
{
    let mut pending: Option<PyErr> = None;
    let result: Option<ess_core::Result<T>> = std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel();
        let worker = s.spawn(move || {
            let _ = tx.send(f());
        });
        let mut rx = rx;
        let out = loop {
            let (back, got) = py.detach(move || {
                let got = rx.recv_timeout(POLL);
                (rx, got)
            });
            rx = back;
            match got {
                Ok(r) => break Some(r),
                Err(mpsc::RecvTimeoutError::Disconnected) => break None,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if pending.is_none() {
                        if let Err(e) = py.check_signals() {
                            pending = Some(e);
                            ess_core::interrupt::request();
                        }
                    }
                }
            }
        };
        // The worker has sent its result (or died): joining returns at once.
        let _ = py.detach(move || worker.join().is_ok());
        out
    });
    if pending.is_some() {
        ess_core::interrupt::clear();
    }
    match (pending, result) {
        (Some(e), _) => Err(e),
        (None, Some(r)) => r.map_err(to_py),
        (None, None) => Err(to_py(ess_core::Error::Numerical("the kernel thread stopped without a result".into()))),
    }
}
