//! Stopping a run: the caller's flag ([`crate::Request::cancel`]) is installed for the
//! thread that runs [`crate::remaster()`] (and copied into the threads it starts); every loop
//! that can take long (copies, hashing, external programs) calls [`check`] at least every
//! 100 ms and unwinds with [`crate::Error::Interrupted`], so temporary files are removed by
//! their guards and mounts by their stack.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::{Error, Result};

thread_local! {
    static FLAG: RefCell<Option<Arc<AtomicUsize>>> = const { RefCell::new(None) };
}

/// The flag installed for this thread, to hand to a thread this one starts.
pub(crate) fn current() -> Option<Arc<AtomicUsize>> {
    FLAG.with(|f| f.borrow().clone())
}

/// Restores the previous flag when dropped.
pub(crate) struct Installed(Option<Arc<AtomicUsize>>);

impl Drop for Installed {
    fn drop(&mut self) {
        let prev = self.0.take();
        FLAG.with(|f| *f.borrow_mut() = prev);
    }
}

/// Install `flag` for this thread until the returned guard is dropped.
pub(crate) fn install(flag: Option<Arc<AtomicUsize>>) -> Installed {
    Installed(FLAG.with(|f| std::mem::replace(&mut *f.borrow_mut(), flag)))
}

/// The signal number that stopped the run, when one did.
pub(crate) fn raised() -> Option<i32> {
    FLAG.with(|f| {
        f.borrow()
            .as_ref()
            .map(|a| a.load(Ordering::Relaxed))
            .filter(|&v| v != 0)
            .map(|v| i32::try_from(v).unwrap_or(i32::MAX))
    })
}

/// Fail with [`Error::Interrupted`] once the flag is raised.
pub(crate) fn check() -> Result<()> {
    match raised() {
        Some(signal) => Err(Error::Interrupted { signal }),
        None => Ok(()),
    }
}
