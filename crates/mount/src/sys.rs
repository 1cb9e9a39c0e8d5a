//! The one call in this crate that rustix marks unsafe.

#![allow(unsafe_code)] // unshare(2) is unsafe in rustix only because of CLONE_FILES

use rustix::thread::UnshareFlags;

/// `unshare(CLONE_NEWNS)`: give the calling thread its own copy of the mount namespace.
///
/// # References
///  - [unshare(2)](https://man7.org/linux/man-pages/man2/unshare.2.html)
#[doc(alias = "CLONE_NEWNS")]
pub(crate) fn unshare_mount_namespace() -> rustix::io::Result<()> {
    // SAFETY: only CLONE_NEWNS (which implies CLONE_FS) is unshared; the file descriptor
    // table stays shared, which is the hazard `unshare_unsafe` warns about.
    unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNS) }
}
