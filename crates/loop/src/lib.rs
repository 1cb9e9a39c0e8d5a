//! Loop devices: attach a file (or a byte range of it) to a free `/dev/loopN`, detach it, list
//! what is attached, find devices by backing file, and resolve partitions.
//!
//! Attaching goes through `/dev/loop-control` (`LOOP_CTL_GET_FREE`) and `LOOP_CONFIGURE`
//! (Linux 5.8+), falling back to `LOOP_SET_FD` + `LOOP_SET_STATUS64` on older kernels. When
//! another process grabs the same free device between the two calls the kernel answers
//! `EBUSY`; we ask for another device, a bounded number of times ([`ATTACH_ATTEMPTS`]).
//! Listing reads `/sys/block/loopN/loop/*` — the same source `losetup -J -l` uses, and the
//! JSON field names match `losetup`'s.
//!
//! [`LoopDevice`] is the guard: it owns one device that *we* attached; call
//! [`LoopDevice::detach`] (or [`LoopDevice::teardown`]) to get errors, and Drop tries once
//! and logs through `tracing`. [`LoopDevice::release`] hands the device over to the caller
//! (a CLI whose loop device must outlive the process).
//!
//! Partitions ([`LoopDevice::partition`]): the kernel's `loopNpK` node when partition
//! scanning made one, otherwise the start and size read from the GPT or MBR on the device,
//! which [`LoopDevice::open_partition`] turns into a second loop device with an offset and a
//! size limit. The table reader is deliberately minimal (GPT, MBR primaries, the EBR chain of
//! logical partitions); writing tables is `diskforge-part`'s job.
//!
//! It does not mount anything (`diskforge-mount`), does not run `losetup`, and never detaches
//! devices it did not attach except through the explicit [`detach`] function.
//!
//! Follows [loop(4)](https://man7.org/linux/man-pages/man4/loop.4.html) and
//! [losetup(8)](https://man7.org/linux/man-pages/man8/losetup.8.html).

mod attach;
pub mod ioctl;
mod list;
mod part;

use std::path::PathBuf;

pub use attach::{ATTACH_ATTEMPTS, AttachMethod, AttachOptions, LoopDevice, detach};
pub use list::{LoopInfo, find_by_backing_file, info, list};
pub use part::{PartitionDevice, PartitionEntry, PartitionLocation, read_partition_table};

/// Errors from loop device operations. Each names the file or device involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backing file could not be opened or examined.
    #[error("opening backing file {path}")]
    OpenBacking {
        /// The backing file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A read-write attach of a file that cannot be written (read-only filesystem or mode).
    #[error("{path} cannot be opened for writing ({source}); attach it read-only")]
    BackingNotWritable {
        /// The backing file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The backing path is neither a regular file nor a block device (a directory, say).
    #[error("{path}: not a regular file or block device")]
    NotAFile {
        /// The backing path.
        path: PathBuf,
    },
    /// The requested offset lies at or past the end of the backing file.
    #[error("{path}: offset {offset} is beyond the end of the file ({size} bytes)")]
    OffsetBeyondEnd {
        /// The backing file.
        path: PathBuf,
        /// The requested offset.
        offset: u64,
        /// The file's size.
        size: u64,
    },
    /// A device node could not be opened.
    #[error("opening {path}")]
    OpenDevice {
        /// The device node.
        path: PathBuf,
        /// The errno.
        #[source]
        source: rustix::io::Errno,
    },
    /// A loop ioctl failed.
    #[error("{op} on {device}{}", advice(*source))]
    Ioctl {
        /// The ioctl, e.g. `LOOP_CONFIGURE`.
        op: &'static str,
        /// The device.
        device: PathBuf,
        /// The errno.
        #[source]
        source: rustix::io::Errno,
    },
    /// Every free device we were given was taken by someone else first.
    #[error("no free loop device after {attempts} attempts (last tried {device})")]
    NoFreeDevice {
        /// Attempts made.
        attempts: u32,
        /// The last device tried.
        device: PathBuf,
    },
    /// The device was marked for detaching, but someone (a mount, an open file) still holds
    /// it; the kernel detaches it on the last close.
    #[error("{device} is still in use; the kernel will detach it when the last user closes it")]
    StillInUse {
        /// The device.
        device: PathBuf,
    },
    /// The path is not a loop device (`/dev/loopN`).
    #[error("{path}: not a loop device")]
    NotALoopDevice {
        /// The path given.
        path: PathBuf,
    },
    /// The device exists but has no backing file.
    #[error("{device}: not attached")]
    NotAttached {
        /// The device.
        device: PathBuf,
    },
    /// Reading sysfs or the device failed.
    #[error("reading {path}")]
    Read {
        /// The file read.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The partition table could not be read or has no such partition.
    #[error("{device}: {reason}")]
    PartitionTable {
        /// The device whose table was read.
        device: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A step failed on purpose (fault-injection builds only, see `diskforge-fault`).
    #[error(transparent)]
    Injected(#[from] diskforge_fault::Injected),
}

/// A hint for the well-known errnos, appended to ioctl errors.
fn advice(e: rustix::io::Errno) -> &'static str {
    match e {
        rustix::io::Errno::BUSY => " (device in use: mounted or attached by another process)",
        rustix::io::Errno::NXIO => " (device not attached)",
        rustix::io::Errno::PERM | rustix::io::Errno::ACCESS => " (needs root / CAP_SYS_ADMIN)",
        _ => "",
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
