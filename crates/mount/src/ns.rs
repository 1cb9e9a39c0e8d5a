//! Running work in a private mount namespace.

use crate::Result;
use crate::mount::syscall_err;

/// Run `f` on a new thread that has its own mount namespace (`unshare(CLONE_NEWNS)`) with
/// every mount made private (`MS_REC | MS_PRIVATE` on `/`). Mounts `f` makes are invisible to
/// the rest of the system and disappear when the thread ends, even if `f` forgets them.
///
/// Loop devices are not namespaced: detach them inside `f` (guards do). The namespace is
/// released as the thread exits, which can be a moment after this function returns, so a
/// loop device used by a mount that `f` left behind may stay busy briefly.
///
/// A panic in `f` is resumed on the calling thread.
pub fn in_private_namespace<T, F>(f: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    std::thread::scope(|s| {
        let h = s.spawn(|| -> Result<T> {
            crate::sys::unshare_mount_namespace().map_err(syscall_err(
                "unshare(CLONE_NEWNS) for",
                std::path::Path::new("/"),
            ))?;
            crate::make_private("/", true)?;
            Ok(f())
        });
        match h.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}
