//! Build VM disk images from diskimage-builder (dib) elements, as `disk-image-create` does —
//! offline wherever the layout allows.
//!
//! A build is: resolve the elements (diskforge-elements: dependencies, provides, install types,
//! every problem reported before anything runs) → run their phases on a root tree (`root.d`,
//! `extra-data.d`, in-chroot `pre-install.d`/`install.d`/`post-install.d`, `post-root.d`) →
//! plan the disk from the block-device YAML (diskforge-blockdev; `DIB_BLOCK_DEVICE_CONFIG` or
//! the `block-device-*` element) → bootloader files into the tree (diskforge-boot, for `vm`) →
//! `pre-finalise.d`/`finalise.d`/`cleanup.d` → the disk assembled **offline** (partition table,
//! each filesystem made from its subtree straight into its partition, no loop device, no
//! mount) → the BIOS boot code written as bytes → `block-device.d` → the outputs
//! (`-t raw,qcow2,vhd,vhdx,vmdk,tar,tgz,squashfs,docker,oci`) → optionally a boot check in QEMU
//! (SeaBIOS, and OVMF for layouts with an ESP) that waits for a marker on the serial console.
//!
//! Differences from dib, all deliberate:
//! - The finalise phases and `cleanup.d` (which dib runs in `finalise_base`, still on the
//!   mounted image) run on the root tree before the filesystems are made (dib runs them on the
//!   mounted image): the result is the same for scripts that edit files, and it needs no loop
//!   device or mount. `TMP_MOUNT_PATH` therefore names the tree too. `block-device.d`
//!   runs after the disk is made, with `IMAGE_BLOCK_DEVICE` naming the raw image file.
//! - No tmpfs is mounted for the build (`--no-tmpfs`, `--min-tmpfs` are accepted and have
//!   nothing to turn off); the build directory lives under `TMPDIR` or `--work-dir`.
//! - qcow2 is compressed with zstd clusters, not zlib (several times faster, similar size).
//! - A non-executable phase script is an error (`allow_nonexec` keeps dib's silent skip).
//!
//! ```no_run
//! use diskforge_image::{BuildRequest, OutputFormat, build};
//! let mut req = BuildRequest::new(["busybox", "vm", "block-device-efi"], "out/image");
//! req.formats = vec![OutputFormat::Qcow2];
//! let report = build(&req, &mut |ev| eprintln!("{ev:?}"))?;
//! println!("{}", report.outputs[0].path.display());
//! # Ok::<(), diskforge_image::Error>(())
//! ```

mod build;
pub mod debian;
pub mod local;
mod output;
pub mod packages;
pub mod ramdisk;

use std::path::{Path, PathBuf};

pub use build::{
    BUILD_DIR_PREFIX, BootCheck, BootResult, BuildEvent, BuildReport, BuildRequest, DEFAULT_MARKER,
    DryRun, StepTiming, build, cleanup_stale, dry_run,
};
pub use output::{
    ALL_FORMATS, DiskSource, OutputFormat, OutputOptions, OutputReport, convert_options,
    parse_formats, tar_args, write_output,
};

/// Errors from a build.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request value is wrong (a flag, an environment variable).
    #[error("{field} {value:?}: {reason}")]
    Usage {
        /// The flag or variable.
        field: String,
        /// The value given.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// Element resolution or a script failed.
    #[error(transparent)]
    Elements(#[from] Box<diskforge_elements::Error>),
    /// The block-device config is invalid or the disk could not be made.
    #[error("block device ({source_name})")]
    BlockDevice {
        /// Where the config came from.
        source_name: String,
        /// The cause.
        #[source]
        source: Box<diskforge_blockdev::Error>,
    },
    /// Installing the bootloader or building the busybox root failed.
    #[error(transparent)]
    Boot(#[from] Box<diskforge_boot::Error>),
    /// qemu-img failed to write an output.
    #[error("writing the {format} output")]
    Output {
        /// The format.
        format: OutputFormat,
        /// The cause.
        #[source]
        source: Box<qemu_img_cmd::Error>,
    },
    /// Writing the OCI output failed.
    #[error("writing the oci output")]
    Oci {
        /// The cause.
        #[source]
        source: Box<diskforge_layers::Error>,
    },
    /// An external tool failed.
    #[error("{what}")]
    Tool {
        /// What we were doing.
        what: String,
        /// The cause (argv and stderr).
        #[source]
        source: Box<diskforge_cmd::Error>,
    },
    /// The boot check did not see the marker.
    #[error("boot check ({firmware}): {reason}")]
    BootCheck {
        /// SeaBIOS or OVMF.
        firmware: String,
        /// What happened, with the console's last lines.
        reason: String,
    },
    /// File I/O failed.
    #[error("{action} {}", path.display())]
    Io {
        /// What we were doing.
        action: String,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// SIGINT/SIGTERM (or the caller) stopped the build; what it made is removed.
    #[error("interrupted during {step}; the build directory and partial outputs are removed")]
    Interrupted {
        /// The step that was running.
        step: String,
    },
    /// A step failed on purpose (fault-injection builds only, see `diskforge-fault`).
    #[error(transparent)]
    Injected(#[from] diskforge_fault::Injected),
}

impl Error {
    /// The input is wrong (elements that do not resolve, an invalid block-device config), as
    /// opposed to a failure while building: tools exit 3 for these.
    pub fn is_invalid_input(&self) -> bool {
        match self {
            Error::Elements(e) => matches!(**e, diskforge_elements::Error::Problems(_)),
            Error::BlockDevice { source, .. } => {
                matches!(**source, diskforge_blockdev::Error::Invalid(_))
            }
            _ => false,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `map_err` for an external program that failed while doing `what`.
pub(crate) fn tool_err(what: &str) -> impl FnOnce(diskforge_cmd::Error) -> Error {
    let what = what.to_owned();
    move |source| Error::Tool {
        what,
        source: Box::new(source),
    }
}

pub(crate) fn io_err(action: &str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let action = action.to_owned();
    let path = path.to_owned();
    move |source| Error::Io {
        action,
        path,
        source,
    }
}
