//! Bootable images, offline: what diskimage-builder's `busybox` and `vm` elements do, as a
//! library that needs no loop device, no mount and no root.
//!
//! - [`busybox_root`]: a tiny root tree — the host's static busybox with its applet links, a
//!   shell `/sbin/init` that prints a marker on the serial console (and optionally powers
//!   off), a minimal `/etc`, the host's Debian kernel as `/boot/vmlinuz-RELEASE` and an
//!   initramfs `/boot/initrd.img-RELEASE` (built with diskforge-vm's [`diskforge_vm::Initramfs`])
//!   that loads the modules a QEMU guest needs for its root disk, finds `root=` and
//!   `switch_root`s into it. Reproducible with [`BusyboxOptions::source_date_epoch`].
//! - [`write_grub_cfg`]: `/boot/grub/grub.cfg` in the root tree (serial terminal, one entry);
//!   [`find_kernel`] names the newest kernel and its initramfs in any root tree.
//! - [`install_efi`]: `EFI/BOOT/BOOTX64.EFI` for the directory that becomes the ESP:
//!   `grub-mkimage -O x86_64-efi` with its modules built in and an embedded config that finds
//!   the root filesystem by UUID or label and reads its `/boot/grub/grub.cfg`.
//! - [`install_bios`]: what `grub-install --target=i386-pc` (with `--no-rs-codes`) and
//!   `grub-bios-setup` do, as bytes into the image file once it exists: `grub-mkimage -O
//!   i386-pc` builds `core.img`, which goes into the GPT BIOS boot partition (type `EF02`) or
//!   the MBR gap; `boot.img` goes into bytes 0..440 of sector 0 (disk signature and
//!   partition table kept) with the fields `grub-bios-setup` patches. See [`bios`].
//!
//! # Example
//!
//! The `vm` element's order of steps (see `examples/busybox_vm.rs` for a runnable one):
//!
//! ```rust,no_run
//! use diskforge_blockdev::{CreateOptions, PlanOptions, create, plan_text};
//! use diskforge_boot::{BusyboxOptions, GrubConfig, busybox_root, install_bios, install_efi, write_grub_cfg};
//! use std::path::Path;
//!
//! let tree = Path::new("build/root");
//! // 1. the root tree: busybox, /sbin/init printing a marker, the host kernel + an initramfs
//! let root = busybox_root(tree, &BusyboxOptions { poweroff: true, ..Default::default() })?;
//! // 2. the disk plan, populated from the tree
//! let yaml = std::fs::read_to_string("gpt-bios-esp-root.yaml")?;
//! let plan = plan_text(&yaml, &PlanOptions {
//!     image_size: Some(128 << 20),
//!     root: Some(tree.into()),
//!     uuid_seed: Some("my-build".into()),
//!     ..Default::default()
//! })?;
//! let root_fs = plan.filesystems.iter().find(|f| f.mount_point.as_deref() == Some("/")).unwrap();
//! // 3. GRUB: grub.cfg in the tree, BOOTX64.EFI into what becomes the ESP
//! let grub = GrubConfig::new(&root.kernel, Some(root.initrd.clone()), root_fs.uuid.clone());
//! write_grub_cfg(tree, &grub)?;
//! install_efi(&tree.join("boot/efi"), &grub)?;
//! // 4. the disk, offline; then GRUB for BIOS written into the image file
//! create(&plan, Path::new("build/state"), &CreateOptions::default(), &mut |_| {})?;
//! let disk = &plan.disks[0];
//! install_bios(&disk.path, disk, root_fs, &grub)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! `/boot/grub` must be on the filesystem given as the root (no separate `/boot`).
//!
//! It does not run `grub-install` or `grub-mkconfig` (both want mounted devices), add
//! Reed-Solomon recovery codes to `core.img`, sign anything for Secure Boot, or install
//! GRUB's module directory into the root tree: every module GRUB needs is built into its
//! image. GRUB's own formats are its source's (GRUB 2.06: `include/grub/i386/pc/boot.h`,
//! `util/setup.c`, `grub-core/boot/i386/pc/diskboot.S`).

pub mod bios;
mod busybox;
mod grub;

use std::path::PathBuf;

pub use bios::{BiosReport, Blocklist, EmbedArea, install_bios};
pub use busybox::{BusyboxOptions, DEFAULT_MODULES, RootReport, busybox_root};
pub use grub::{
    BIOS_MODULES, EFI_MODULES, EfiReport, GRUB_CFG, GrubConfig, KernelFiles, embedded_config,
    find_kernel, grub_cfg, install_efi, kernel_cmdline, write_grub_cfg,
};

/// Errors from this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
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
        /// The step (`building core.img with grub-mkimage` …).
        step: &'static str,
        /// The runner's error (program, args, stderr tail; boxed: it is large).
        #[source]
        source: Box<diskforge_cmd::Error>,
    },
    /// The kernel or the initramfs could not be used or written.
    #[error("{step}")]
    Vm {
        /// The step (`finding the host kernel` …).
        step: &'static str,
        /// The cause (boxed: it is large).
        #[source]
        source: Box<diskforge_vm::Error>,
    },
    /// An input (an option, a config field, the image) cannot be used.
    #[error("{what}: {reason}")]
    Invalid {
        /// The input, with its value.
        what: String,
        /// Why not.
        reason: String,
    },
    /// A GPT disk has no BIOS boot partition (type `EF02`) to hold GRUB's core image.
    #[error(
        "{}: the GPT has no BIOS boot partition (type EF02) for GRUB's core image; add one \
         (1 MiB is enough) to the block-device config, or boot this disk with UEFI only",
        disk.display()
    )]
    NoBiosBootPartition {
        /// The disk image.
        disk: PathBuf,
    },
    /// The space for GRUB's core image is too small.
    #[error(
        "{}: {area} has {available} sectors, GRUB's core image needs {needed}; {advice}",
        disk.display()
    )]
    NoRoomForCore {
        /// The disk image.
        disk: PathBuf,
        /// `the MBR gap (sectors 1..63, before partition 1)` or `BIOS boot partition 1`.
        area: String,
        /// Sectors available.
        available: u64,
        /// Sectors `core.img` takes.
        needed: u64,
        /// What to change.
        advice: &'static str,
    },
    /// The disk has no partition table, so GRUB has nowhere to embed its core image.
    #[error(
        "{}: no partition table, so nowhere to embed GRUB's core image (BIOS boot needs an \
         MBR gap or a GPT BIOS boot partition)",
        disk.display()
    )]
    NoPartitionTable {
        /// The disk image.
        disk: PathBuf,
    },
    /// A step failed on purpose (fault-injection builds only, see `diskforge-fault`).
    #[error(transparent)]
    Injected(#[from] diskforge_fault::Injected),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(
    action: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Io {
        action,
        path,
        source,
    }
}

/// Set the mtime and atime of each of `paths` (symlinks themselves), in order, to `epoch`
/// (`SOURCE_DATE_EPOCH`).
pub(crate) fn stamp(paths: impl IntoIterator<Item = PathBuf>, epoch: u64) -> Result<()> {
    let secs = i64::try_from(epoch).map_err(|_| Error::Invalid {
        what: format!("SOURCE_DATE_EPOCH {epoch}"),
        reason: "out of range".into(),
    })?;
    let t = rustix::fs::Timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    let times = rustix::fs::Timestamps {
        last_access: t,
        last_modification: t,
    };
    for p in paths {
        rustix::fs::utimensat(
            rustix::fs::CWD,
            &p,
            &times,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| Error::Io {
            action: "setting the mtime of",
            path: p.clone(),
            source: e.into(),
        })?;
    }
    Ok(())
}

/// Make `dir` and its missing parents; the directories whose entries change — those made
/// and the existing one the first was made in (or `dir` itself when it existed) — deepest
/// first, for [`stamp`].
pub(crate) fn make_dirs(dir: &std::path::Path) -> Result<Vec<PathBuf>> {
    let mut changed = Vec::new();
    let mut cur = dir;
    while !cur.exists() {
        changed.push(cur.to_owned());
        match cur.parent() {
            Some(p) if !p.as_os_str().is_empty() => cur = p,
            _ => break,
        }
    }
    std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    changed.push(cur.to_owned());
    Ok(changed)
}
