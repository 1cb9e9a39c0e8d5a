//! The input: a [`Layout`] of [`PartSpec`]s, as written by a user or a config file.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The kind of partition table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Label {
    /// GUID partition table (UEFI spec, chapter 5), with a protective MBR.
    Gpt,
    /// DOS/MBR partition table, with an extended partition for logical ones when needed.
    #[serde(alias = "dos", alias = "msdos")]
    Mbr,
}

impl std::str::FromStr for Label {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "gpt" => Ok(Label::Gpt),
            "mbr" | "dos" | "msdos" => Ok(Label::Mbr),
            _ => Err(format!("unknown label {s:?} (gpt or mbr)")),
        }
    }
}

impl std::fmt::Display for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Label::Gpt => "gpt",
            Label::Mbr => "mbr",
        })
    }
}

/// A partition flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flag {
    /// MBR: the active (0x80) flag. GPT: attribute bit 2, "legacy BIOS bootable" (what
    /// `gptmbr.bin`/syslinux look for); the same as [`Flag::LegacyBoot`].
    Boot,
    /// GPT attribute bit 2 (legacy BIOS bootable). On MBR, the active flag, like [`Flag::Boot`].
    LegacyBoot,
    /// GPT attribute bit 0 (required for the platform to function).
    Required,
    /// MBR: make this a primary partition even when an extended partition is needed.
    /// GPT: accepted and ignored (every GPT partition is primary).
    Primary,
    /// MBR: make this a logical partition inside the extended partition. Not valid on GPT.
    Logical,
}

impl std::str::FromStr for Flag {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "boot" | "active" | "bootable" => Ok(Flag::Boot),
            "legacy_boot" => Ok(Flag::LegacyBoot),
            "required" => Ok(Flag::Required),
            "primary" => Ok(Flag::Primary),
            "logical" => Ok(Flag::Logical),
            _ => Err("unknown flag (boot, legacy_boot, required, primary, logical)".into()),
        }
    }
}

impl std::fmt::Display for Flag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Flag::Boot => "boot",
            Flag::LegacyBoot => "legacy_boot",
            Flag::Required => "required",
            Flag::Primary => "primary",
            Flag::Logical => "logical",
        })
    }
}

/// The default alignment: 1 MiB, what fdisk, sgdisk and parted use.
pub const DEFAULT_ALIGN: &str = "1MiB";

/// A wanted partition table. Strings are kept as the user wrote them; [`crate::plan`] parses
/// and checks them, naming the partition and field of each problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    /// GPT or MBR.
    pub label: Label,
    /// Partition start alignment as a size (`1MiB`, `4K`, `2048s` is not accepted: use bytes).
    /// Default `1MiB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub align: Option<String>,
    /// GPT disk GUID, or the MBR disk signature (`0x1234abcd`). Default: random when written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_uuid: Option<String>,
    /// Logical sector size in bytes: 512 (default) or 4096.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sector_size: Option<u32>,
    /// GPT only: set the active flag on the protective MBR entry (parted's `pmbr_boot`), which
    /// some BIOSes want before they boot a GPT disk. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pmbr_boot: bool,
    /// The partitions, in disk order.
    pub partitions: Vec<PartSpec>,
}

/// One wanted partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartSpec {
    /// Name: stored in the GPT entry (at most 36 UTF-16 units); on MBR only used in reports
    /// and error messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Size: bytes with an optional unit (`512MiB`, `2GB`, `1.5TiB`), `NN%` of the space left
    /// after the fixed-size partitions, or `rest`; the grammar is [`diskforge_size`]'s (bare
    /// `G` is decimal). See [`crate::SizeSpec`].
    pub size: String,
    /// Byte offset where the partition must start (same syntax as sizes; a multiple of the
    /// sector size). Default: the next aligned sector after the previous partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// Type: an sgdisk code (`8300`, `EF00`), an alias (`linux`, `esp`), an MBR byte (`0x83`)
    /// or a GPT type GUID. Default `8300` (Linux filesystem, `0x83` on MBR).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_code: Option<String>,
    /// GPT partition GUID. Default: random when written. Not valid on MBR (the kernel derives
    /// PARTUUID from the disk signature there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Flags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<Flag>,
}

impl PartSpec {
    /// A partition with this name and size and default type.
    pub fn new(name: impl Into<String>, size: impl Into<String>) -> Self {
        PartSpec {
            name: Some(name.into()),
            size: size.into(),
            ..Default::default()
        }
    }

    /// Set the type string.
    pub fn with_type(mut self, t: impl Into<String>) -> Self {
        self.type_code = Some(t.into());
        self
    }

    /// Set the partition UUID string.
    pub fn with_uuid(mut self, u: impl Into<String>) -> Self {
        self.uuid = Some(u.into());
        self
    }

    /// Add a flag.
    pub fn with_flag(mut self, f: Flag) -> Self {
        self.flags.push(f);
        self
    }
}

impl Layout {
    /// An empty layout of kind `label` with default alignment.
    pub fn new(label: Label) -> Self {
        Layout {
            label,
            align: None,
            disk_uuid: None,
            sector_size: None,
            pmbr_boot: false,
            partitions: Vec::new(),
        }
    }

    /// Fill every missing disk UUID / MBR signature and GPT partition UUID with a value
    /// derived from `seed` (SHA-256 of the seed and the item), so a build that passes the
    /// same seed writes identical tables. UUIDs that are already set are kept.
    pub fn seed_uuids(&mut self, seed: &str) {
        let derive = |what: &str| -> [u8; 16] {
            let d = Sha256::digest(format!("diskforge-part\0{seed}\0{what}").as_bytes());
            let mut b = [0u8; 16];
            b.copy_from_slice(&d[..16]);
            b
        };
        if self.disk_uuid.is_none() {
            let b = derive("disk");
            self.disk_uuid = Some(match self.label {
                Label::Gpt => uuid::Builder::from_random_bytes(b).into_uuid().to_string(),
                Label::Mbr => format!(
                    "0x{:08x}",
                    u32::from_le_bytes([b[0], b[1], b[2], b[3]]).max(1)
                ),
            });
        }
        if self.label == Label::Gpt {
            for (i, p) in self.partitions.iter_mut().enumerate() {
                if p.uuid.is_none() {
                    let b = derive(&format!("part{}", i + 1));
                    p.uuid = Some(uuid::Builder::from_random_bytes(b).into_uuid().to_string());
                }
            }
        }
    }
}

/// A random GPT GUID (v4).
pub(crate) fn random_uuid() -> Uuid {
    Uuid::new_v4()
}
