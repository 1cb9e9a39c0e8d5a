//! GPT and MBR partition tables for image files and block devices.
//!
//! - [`plan`] turns a [`Layout`] (what the user asked for: sizes as `512MiB`, `50%` or `rest`,
//!   sgdisk type codes, names, UUIDs, flags) and a disk size into a [`Plan`]: every partition
//!   with its number, first/last sector and byte offsets. It is a pure function, so plans can be
//!   printed (`dfpart create --dry-run`) and snapshot-tested.
//! - [`apply`] writes a plan to a file or device — GPT through the `gpt` crate with a protective
//!   MBR that keeps existing boot code; MBR, the extended partition and the EBR chain for
//!   logical partitions with our own 16-byte entry encoder — then reads the table back and
//!   checks it.
//! - [`plan_add`], [`plan_delete`] and [`plan_set`] plan changes to a table read from a disk
//!   (new partitions in the free space, removals, new names/types/UUIDs/flags).
//! - [`read`] reads either kind of table back into a [`Table`]; [`partitions`] gives the byte
//!   offsets and sizes a loop device needs (`losetup --offset --sizelimit`), logical partitions
//!   included.
//!
//! It does not make filesystems, attach loop devices or ask the kernel to re-read a table
//! (`diskforge-loop` attaches with partition scanning); it never writes hybrid MBRs, and it
//! only supports 128-entry GPT arrays. Behaviour follows the UEFI specification (chapter 5,
//! "GUID Partition Table Disk Layout"), sgdisk(8) for type codes, and sfdisk(8)/util-linux for
//! the placement of logical partitions (one EBR, then the next aligned
//! sector).
//!
//! Sizes follow the one diskforge grammar of [`diskforge_size`] (re-exported as [`size`]):
//! `KiB`… are binary, `KB`… and bare `K`… decimal, `N%` and `rest` allowed for partitions.
//! Percentages share the space left after the fixed-size partitions (and alignment); `rest`
//! takes what remains after everything else. Sizes are rounded up to whole sectors; percentage
//! and `rest` sizes are rounded down to the alignment so that every partition start stays
//! aligned.

mod layout;
mod mbr;
mod modify;
mod plan;
mod read;
mod types;
mod write;

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use diskforge_size::{self as size, Percent, Size, SizeError, SizeSpec};
pub use layout::{DEFAULT_ALIGN, Flag, Label, Layout, PartSpec};
pub use modify::{PartChange, plan_delete, plan_set};
pub use plan::{Plan, Warning, plan, plan_add};
pub use read::{disk_size, partitions, read, read_with_sector_size};
pub use types::{KNOWN_TYPES, KnownType, PartType, resolve as resolve_type};
pub use write::{WriteOptions, apply, create, ensure_size};

/// Which partition of a layout an error is about: its 1-based position and its name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRef {
    /// 1-based position in the layout.
    pub index: usize,
    /// The partition's name, when it has one.
    pub name: Option<String>,
}

impl fmt::Display for PartRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            // A name with control characters (refused, but still named in that error) must
            // not break the message's line.
            Some(n) if n.chars().any(char::is_control) => {
                write!(f, "partition {} ({})", self.index, n.escape_debug())
            }
            Some(n) => write!(f, "partition {} ({n})", self.index),
            None => write!(f, "partition {}", self.index),
        }
    }
}

/// Errors from planning, writing and reading partition tables.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A size or start string does not parse, or is not usable (not sector-aligned).
    #[error("{part}: {field}={value:?}: {reason}")]
    InvalidSize {
        /// The partition.
        part: PartRef,
        /// `size` or `start`.
        field: &'static str,
        /// What was written.
        value: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The type is not a known code, MBR byte or GUID, or does not exist on this label.
    #[error("{part}: type={value:?}: {reason}")]
    UnknownType {
        /// The partition.
        part: PartRef,
        /// What was written.
        value: String,
        /// Why it was rejected.
        reason: String,
    },
    /// Another partition field is invalid (`name`, `uuid`, `flags`).
    #[error("{part}: {field}={value:?}: {reason}")]
    InvalidField {
        /// The partition.
        part: PartRef,
        /// The field.
        field: &'static str,
        /// What was written.
        value: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A table-wide field is invalid (`align`, `disk_uuid`, `sector_size`, the disk size).
    #[error("{field}={value:?}: {reason}")]
    InvalidLayout {
        /// The field.
        field: &'static str,
        /// What was written.
        value: String,
        /// Why it was rejected.
        reason: String,
    },
    /// Percentages add up to more than 100; `part` is where the sum passes 100.
    #[error("{part}: size={value:?}: percentages add up to {total}% (more than 100%)")]
    PercentOver100 {
        /// The partition at which the sum passes 100%.
        part: PartRef,
        /// Its size string.
        value: String,
        /// The sum of all percentages, without the `%` (`110`, `112.5`).
        total: String,
    },
    /// The partition does not fit: it would end past the usable area.
    #[error(
        "{part}: size={value:?}: does not fit: {size_bytes} bytes from byte {start_bytes} end \
         past the usable area, which ends at byte {limit_bytes}"
    )]
    Oversize {
        /// The partition.
        part: PartRef,
        /// Its size string.
        value: String,
        /// Where it would start.
        start_bytes: u64,
        /// Its size.
        size_bytes: u64,
        /// The end (exclusive) of the usable area.
        limit_bytes: u64,
    },
    /// A percentage or `rest` partition would get no space at all.
    #[error("{part}: size={value:?}: no space left for it")]
    NoSpace {
        /// The partition.
        part: PartRef,
        /// Its size string.
        value: String,
    },
    /// The partition overlaps another one or the table's own sectors.
    #[error("{part}: start={value:?}: overlaps {other} (sectors {other_start}..={other_end})")]
    Overlap {
        /// The partition.
        part: PartRef,
        /// Its start string.
        value: String,
        /// What it overlaps (`partition 1 (ESP)`, `the GPT header and entries`).
        other: String,
        /// First sector of what it overlaps.
        other_start: u64,
        /// Last sector of what it overlaps.
        other_end: u64,
    },
    /// An MBR holds 4 primary partitions, or 3 plus the extended one.
    #[error("{part}: flags={value:?}: too many primary partitions: an MBR holds {max}{}",
        if *max == 3 { " besides the extended partition" } else { "; more need logical ones (drop `primary`)" })]
    TooManyPrimaries {
        /// The first partition that does not fit in the MBR.
        part: PartRef,
        /// Its flags, as written.
        value: String,
        /// How many primaries fit (4, or 3 with an extended partition).
        max: usize,
    },
    /// Reading, writing or sizing the file or device failed.
    #[error("{path}: {action}")]
    Io {
        /// The image or device.
        path: PathBuf,
        /// What we were doing.
        action: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The `gpt` crate failed.
    #[error("{path}: {action}")]
    Gpt {
        /// The image or device.
        path: PathBuf,
        /// What we were doing.
        action: &'static str,
        /// The underlying error.
        #[source]
        source: gpt::GptError,
    },
    /// The table has no partition with this number.
    #[error("no partition {number}")]
    NoSuchPartition {
        /// The number asked for.
        number: u32,
    },
    /// Neither a GPT header nor an MBR signature was found.
    #[error("{path}: no partition table (no GPT header at LBA 1, no MBR boot signature)")]
    NoTable {
        /// The image or device.
        path: PathBuf,
    },
    /// The table on disk is damaged or unsupported.
    #[error("{path}: {reason}")]
    Corrupt {
        /// The image or device.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The disk is not the one the plan was made for (size or sector size differ), or the
    /// table read back after writing differs from the plan.
    #[error("{path}: {reason}")]
    Mismatch {
        /// The image or device.
        path: PathBuf,
        /// What differs.
        reason: String,
    },
    /// A step failed on purpose (fault-injection builds only, see `diskforge-fault`).
    #[error(transparent)]
    Injected(#[from] diskforge_fault::Injected),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Primary or logical (MBR); every GPT partition is primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartKind {
    /// A primary partition (MBR slots 1–4, or any GPT partition).
    Primary,
    /// A logical partition inside the MBR extended partition (numbers 5 and up).
    Logical,
}

/// A partition table as planned or as read from a disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Table {
    /// GPT or MBR.
    pub label: Label,
    /// Logical sector size in bytes.
    pub sector_size: u32,
    /// Size of the disk in bytes.
    pub disk_size_bytes: u64,
    /// GPT disk GUID (lower case) or MBR disk signature (`0x1234abcd`). In a plan, `None`
    /// means "random when written".
    pub disk_uuid: Option<String>,
    /// First sector partitions may use.
    pub first_usable_lba: u64,
    /// Last sector partitions may use (inclusive).
    pub last_usable_lba: u64,
    /// Partition alignment in bytes (known for plans, not recorded on disk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub align_bytes: Option<u64>,
    /// GPT: whether the protective MBR entry has the active flag.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pmbr_boot: bool,
    /// MBR: the extended partition holding the logical ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extended: Option<Extended>,
    /// The partitions in disk order.
    pub partitions: Vec<PartitionInfo>,
}

/// The MBR extended partition (container of the logical partitions and their EBRs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extended {
    /// Its primary slot number (1–4).
    pub number: u32,
    /// First sector (where the first EBR is).
    pub start_lba: u64,
    /// Length in sectors.
    pub size_lba: u64,
    /// Type byte (`0x0f` when we write it).
    #[serde(rename = "type")]
    pub type_byte: String,
}

/// One partition: where it is, what it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionInfo {
    /// Partition number as the kernel numbers it (`/dev/loop0pN`): GPT entries 1, 2, …; MBR
    /// primaries 1–4 by slot, logical partitions 5, 6, … in chain order.
    pub number: u32,
    /// GPT name; on MBR only known in plans.
    pub name: Option<String>,
    /// Primary or logical.
    pub kind: PartKind,
    /// First sector.
    pub start_lba: u64,
    /// Last sector (inclusive).
    pub end_lba: u64,
    /// Length in sectors.
    pub size_lba: u64,
    /// Byte offset of the first sector (`losetup --offset`).
    pub start_bytes: u64,
    /// Length in bytes (`losetup --sizelimit`).
    pub size_bytes: u64,
    /// The partition type.
    #[serde(rename = "type")]
    pub part_type: PartType,
    /// GPT partition GUID (lower case), or the MBR PARTUUID `SSSSSSSS-NN` the kernel derives
    /// from the disk signature. In a plan, `None` means "random when written".
    pub uuid: Option<String>,
    /// Flags (`boot` on MBR; `required`, `legacy_boot` on GPT).
    pub flags: Vec<Flag>,
    /// GPT attribute bits as stored (0 on MBR).
    pub attributes: u64,
    /// MBR logical partitions: the sector of the EBR that describes this partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ebr_lba: Option<u64>,
}

impl Table {
    /// The partition with this name, if any.
    pub fn by_name(&self, name: &str) -> Option<&PartitionInfo> {
        self.partitions
            .iter()
            .find(|p| p.name.as_deref() == Some(name))
    }

    /// The partition with this number, if any.
    pub fn by_number(&self, number: u32) -> Option<&PartitionInfo> {
        self.partitions.iter().find(|p| p.number == number)
    }
}
