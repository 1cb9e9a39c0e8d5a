//! Termination signals for tools that hold guards: SIGINT, SIGTERM and SIGHUP set a flag
//! instead of killing the process, so the tool can unwind its guards ([`crate::MountStack`])
//! and exit.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A flag raised by SIGINT, SIGTERM or SIGHUP once [`TerminationFlag::register`] ran.
#[derive(Debug, Clone)]
pub struct TerminationFlag(Arc<AtomicBool>);

impl TerminationFlag {
    /// Route SIGINT, SIGTERM and SIGHUP to a flag (the default action, dying at once, would
    /// leave guards un-dropped).
    pub fn register() -> std::io::Result<TerminationFlag> {
        let flag = Arc::new(AtomicBool::new(false));
        for sig in [
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGHUP,
        ] {
            signal_hook::flag::register(sig, Arc::clone(&flag))?;
        }
        Ok(TerminationFlag(flag))
    }

    /// Whether a termination signal arrived.
    pub fn is_raised(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Block until a termination signal arrives, checking every `poll`.
    pub fn wait(&self, poll: Duration) {
        while !self.is_raised() {
            std::thread::sleep(poll);
        }
    }
}
