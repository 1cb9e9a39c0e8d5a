//! QEMU and initramfs for diskforge: everything needed to boot a kernel or a disk image in a
//! VM and learn what the guest saw.
//!
//! - [`cpio`]: a cpio `newc` writer (the initramfs format);
//! - [`modules`]: kernel modules with their dependencies from `modules.dep`;
//! - [`initramfs`]: busybox-static + modules + the caller's `/init` + extra files;
//! - [`kernel`]: the host's Debian kernel (`/boot/vmlinuz-*`, `/lib/modules`) and its
//!   uncompressed `vmlinux`, cached;
//! - [`accel`]: KVM only when a 2-second probe boots the real kernel, else TCG; the answer
//!   cached, and re-probed when a cached "kvm" then fails;
//! - [`qemu`]: QEMU argv, one small pure function per concern (machine/accel, SeaBIOS/OVMF,
//!   CD/disk/kernel+initrd, 9p shares, serial; `-no-reboot` + `panic=-1`);
//! - [`launch`]: run QEMU (through `diskforge-cmd`: killed with its parent and on every early
//!   return), watch the serial console for marker lines under a timeout, report the
//!   accelerator, the time to each marker and the log; QEMU's stderr goes into the error when
//!   it fails.
//!
//! Used by `cargo xtask vm-test`, the ISO fixture's boot checks and the image builder's boot
//! check ("boot this raw/qcow2 image under SeaBIOS or OVMF until marker X, within T").
//!
//! It does not build guest root filesystems, network guests, or drive a guest interactively
//! beyond handing the terminal over ([`launch::run_interactive`]). References: qemu(1)
//! (QEMU 7.2), `man 5 cpio` (newc), depmod(5), the kernel's
//! `Documentation/driver-api/early-userspace/buffer-format.rst`.

pub mod accel;
pub mod cpio;
pub mod initramfs;
pub mod kernel;
pub mod launch;
pub mod modules;
pub mod qemu;

use std::path::PathBuf;

pub use accel::{Accel, AccelPolicy};
pub use initramfs::{Compression, Initramfs};
pub use kernel::Kernel;
pub use launch::{BootReport, Expect, Vm, boot_to_marker, run, run_interactive};
pub use qemu::{Access, BootDevice, Drive, Firmware, Format, KernelBoot, Media, Share};

/// Errors from building an initramfs or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A host file is missing.
    #[error("{what}: {} missing (install {package})", path.display())]
    MissingInput {
        /// What it is (`kernel with modules`, `OVMF firmware` …).
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// The Debian package that ships it.
        package: &'static str,
    },
    /// A kernel module is not in `modules.dep`.
    #[error("kernel module {module} not in {}", modules_dep.display())]
    ModuleNotFound {
        /// The module name.
        module: String,
        /// The `modules.dep` searched.
        modules_dep: PathBuf,
    },
    /// An input cannot be used.
    #[error("{what}: {reason}")]
    Invalid {
        /// The input.
        what: String,
        /// Why not.
        reason: String,
    },
    /// A file operation failed.
    #[error("{action} {}", path.display())]
    Io {
        /// What we were doing (`reading`, `writing` …).
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An external program could not be run or failed.
    #[error("{step}")]
    Tool {
        /// The step (`starting qemu-system-x86_64` …).
        step: &'static str,
        /// The runner's error (program, args, stderr tail).
        #[source]
        source: diskforge_cmd::Error,
    },
    /// QEMU exited unsuccessfully by itself; its stderr and the serial tail are shown.
    #[error("{qemu}\n--- last serial lines ---\n{log_tail}")]
    Qemu {
        /// The runner's [`diskforge_cmd::Error::Failed`]: argv, status, stderr tail.
        qemu: Box<diskforge_cmd::Error>,
        /// The last serial lines.
        log_tail: String,
    },
    /// The guest did not print the marker.
    #[error(
        "no {marker} on the serial console {how} ({accel}); qemu stderr: {}\n--- last serial lines ---\n{log_tail}",
        if stderr.is_empty() { "(empty)" } else { stderr }
    )]
    MarkerNotSeen {
        /// The marker waited for.
        marker: String,
        /// `within 30s` or `before the VM stopped after 2.1 s`.
        how: String,
        /// The accelerator used.
        accel: Accel,
        /// QEMU's stderr tail.
        stderr: String,
        /// The last serial lines.
        log_tail: String,
    },
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
