//! [`MountStack`]: guards torn down in reverse order, every failure reported.

use diskforge_loop::{LoopDevice, PartitionDevice};

use crate::{Error, ImageMount, Mount, OverlayMount, Result};

/// Anything a [`MountStack`] can unwind: one kernel object we made.
pub trait Teardown: Send {
    /// A short description for error reports, e.g. `unmount /mnt/x`.
    fn describe(&self) -> String;
    /// Release the object, returning any error.
    fn teardown_boxed(self: Box<Self>) -> Result<()>;
    /// Give up ownership: leave the object in place (for CLIs whose mounts outlive them).
    fn release_boxed(self: Box<Self>);
}

/// `Teardown` for a guard with `teardown(self)` and `release(self) -> PathBuf`; `$describe`
/// renders the step for error reports.
macro_rules! guard_teardown {
    ($ty:ty, |$g:ident| $describe:expr) => {
        impl Teardown for $ty {
            fn describe(&self) -> String {
                let $g = self;
                $describe
            }
            fn teardown_boxed(self: Box<Self>) -> Result<()> {
                // `?` converts diskforge_loop::Error for the loop guards.
                #[allow(clippy::needless_question_mark)]
                Ok((*self).teardown()?)
            }
            fn release_boxed(self: Box<Self>) {
                drop((*self).release());
            }
        }
    };
}

guard_teardown!(Mount, |m| format!("unmount {}", m.target().display()));
guard_teardown!(OverlayMount, |m| format!(
    "unmount overlay {}",
    m.target().display()
));
guard_teardown!(ImageMount, |m| format!(
    "unmount {} and detach {}",
    m.target().display(),
    m.device().display()
));
guard_teardown!(LoopDevice, |d| format!("detach {}", d.path().display()));
guard_teardown!(PartitionDevice, |p| format!(
    "release partition {}",
    p.path().display()
));

/// One failed step of a teardown.
#[derive(Debug)]
pub struct TeardownFailure {
    /// What was being torn down (from [`Teardown::describe`]).
    pub what: String,
    /// Why it failed.
    pub error: Error,
}

/// Guards pushed in the order they were made, torn down in reverse. Every step is attempted
/// even after a failure, and [`MountStack::teardown`] reports all of them
/// ([`Error::Teardown`]). Drop unwinds too and logs each failure.
///
/// ```no_run
/// use diskforge_mount::{Mount, MountStack, Overlay};
/// let mut stack = MountStack::new();
/// stack.push(Mount::bind("/srv/iso-tree", "/mnt/base")?);
/// stack.push(Overlay::new().lower("/mnt/base").upper("/s/u", "/s/w").mount("/mnt/merged")?);
/// // … work in /mnt/merged …
/// stack.teardown()?; // unmounts /mnt/merged, then /mnt/base
/// # Ok::<(), diskforge_mount::Error>(())
/// ```
#[must_use = "dropping the stack tears everything down"]
#[derive(Default)]
pub struct MountStack {
    items: Vec<Box<dyn Teardown>>,
}

impl std::fmt::Debug for MountStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.items.iter().map(|i| i.describe()))
            .finish()
    }
}

impl MountStack {
    /// An empty stack.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a guard; it will be torn down before everything pushed earlier.
    pub fn push(&mut self, guard: impl Teardown + 'static) {
        self.items.push(Box::new(guard));
    }

    /// Number of guards held.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the stack holds nothing.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// What teardown would do, in order.
    pub fn describe(&self) -> Vec<String> {
        self.items.iter().rev().map(|i| i.describe()).collect()
    }

    /// Leave everything in place and forget it (nothing is torn down, now or on drop).
    pub fn release_all(mut self) {
        while let Some(item) = self.items.pop() {
            item.release_boxed();
        }
    }

    /// Tear everything down, last pushed first; report every failure.
    pub fn teardown(mut self) -> Result<()> {
        let failures = self.unwind();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(Error::Teardown { failures })
        }
    }

    fn unwind(&mut self) -> Vec<TeardownFailure> {
        let mut failures = Vec::new();
        while let Some(item) = self.items.pop() {
            let what = item.describe();
            if let Err(error) = item.teardown_boxed() {
                failures.push(TeardownFailure { what, error });
            }
        }
        failures
    }
}

impl Drop for MountStack {
    fn drop(&mut self) {
        for f in self.unwind() {
            tracing::warn!("teardown on drop: {}: {}", f.what, f.error);
        }
    }
}
