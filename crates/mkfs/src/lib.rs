//! Create filesystems — ext2/3/4, xfs, vfat, btrfs, swap, squashfs, erofs — on an image file,
//! a block device, or a byte range of an image, and populate them from a directory **without
//! mounting**: `mke2fs -d`, `mkfs.xfs -p PROTOFILE` (the protofile is generated here),
//! `mkfs.vfat` + `mcopy -s`, `mkfs.btrfs --rootdir`, `mksquashfs`, `mkfs.erofs`.
//!
//! Work is planned first ([`plan`] returns a serde [`Plan`] of steps, snapshot-tested), then
//! executed ([`execute`], or [`mkfs`] for both). [`detect`] reads back type, label and UUID
//! with `blkid -p -o export` and falls back to reading superblock magic itself.
//!
//! **Reproducible output** ([`MkfsOptions::source_date_epoch`], see
//! [`source_date_epoch_from_env`]): byte-identical images from the same tree for ext2/3/4
//! (`E2FSPROGS_FAKE_TIME`, a fixed `hash_seed`, and a `debugfs` pass that sets the atime,
//! ctime and crtime `mke2fs -d` copied from the source to the epoch and clamps mtimes to it),
//! vfat (`--invariant`, a fixed volume id, `SOURCE_DATE_EPOCH` for `mcopy`), squashfs
//! (`-mkfs-time`/`-all-time`), erofs (`-T`, fixed UUID) and swap. Not for xfs and btrfs: their
//! tools (xfsprogs 6.1, btrfs-progs 6.2) write random ids and the current time; the plan says
//! so in [`Plan::reproducible`]. Without an explicit UUID a reproducible build derives one
//! from the type, label and epoch.
//!
//! **Byte ranges** ([`Target::Region`], a partition without a loop device): the filesystem is
//! built in a temporary file next to the image, then copied into place at the offset (the
//! rest of the range is zeroed). One method for every type, unlike `mke2fs -E offset=` which
//! only ext has.
//!
//! It deliberately does not mount, partition, or create iso9660 (see `diskforge-iso`). Man
//! pages followed: mke2fs(8), mkfs.xfs(8) (PROTOTYPE FILES), mkfs.fat(8), mcopy(1),
//! mkfs.btrfs(8), mkswap(8), mksquashfs(1), mkfs.erofs(1), blkid(8).

mod detect;
mod proto;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use diskforge_cmd::Cmd;
use serde::{Deserialize, Serialize};

pub use detect::{Detected, DetectedBy, detect, detect_at, detect_magic, parse_blkid_export};
pub use proto::xfs_protofile;

/// Errors from this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An external tool failed or is missing.
    #[error("{step} for {} on {}", fs, path.display())]
    Tool {
        /// What we were doing (`mke2fs`, `mcopy`…).
        step: String,
        /// The filesystem type.
        fs: FsType,
        /// The file or device worked on.
        path: PathBuf,
        /// What the runner reported (boxed: it carries stderr).
        #[source]
        source: Box<diskforge_cmd::Error>,
    },
    /// File I/O on the target, the source tree, or a temporary file failed.
    #[error("{action} {}", path.display())]
    Io {
        /// What we were doing (`sizing`, `reading`…).
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The filesystem type cannot do what was asked (a label on squashfs, populating swap…).
    #[error("{fs} does not support {what}")]
    Unsupported {
        /// The filesystem type.
        fs: FsType,
        /// The feature.
        what: &'static str,
    },
    /// An option value is invalid for this type (label too long, malformed UUID…).
    #[error("{fs}: invalid {field} {value:?}: {reason}")]
    Invalid {
        /// The filesystem type.
        fs: FsType,
        /// The option (`label`, `uuid`, `size`…).
        field: &'static str,
        /// The value given.
        value: String,
        /// Why.
        reason: String,
    },
    /// The target file does not exist and no size was given.
    #[error("{}: does not exist and no size was given for {fs}", path.display())]
    SizeRequired {
        /// The target.
        path: PathBuf,
        /// The filesystem type.
        fs: FsType,
    },
    /// squashfs and erofs are built from a directory; none was given.
    #[error("{fs} is built from a directory: give populate_from")]
    NeedsSource {
        /// The filesystem type.
        fs: FsType,
    },
    /// The built filesystem is larger than the byte range or file size asked for.
    #[error("{fs} image is {built} bytes, larger than the {limit} bytes of {}", path.display())]
    TooLarge {
        /// The filesystem type.
        fs: FsType,
        /// Its size.
        built: u64,
        /// The space available.
        limit: u64,
        /// The target.
        path: PathBuf,
    },
    /// A name in the source tree cannot be expressed (xfs protofile names with whitespace,
    /// debugfs paths with quotes…).
    #[error("{}: {reason}", path.display())]
    BadName {
        /// The offending path.
        path: PathBuf,
        /// Why.
        reason: &'static str,
    },
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Supported filesystem types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsType {
    /// ext2.
    Ext2,
    /// ext3.
    Ext3,
    /// ext4.
    Ext4,
    /// XFS (at least 300 MiB with xfsprogs 6.1).
    Xfs,
    /// FAT (FAT12/16/32 chosen by mkfs.vfat from the size).
    Vfat,
    /// Btrfs (at least about 110 MiB with default profiles).
    Btrfs,
    /// Linux swap (v2).
    Swap,
    /// SquashFS (read-only, compressed; no label or UUID).
    Squashfs,
    /// EROFS (read-only; no label with erofs-utils 1.5).
    Erofs,
}

impl FsType {
    /// The name blkid reports and `mount -t` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            FsType::Ext2 => "ext2",
            FsType::Ext3 => "ext3",
            FsType::Ext4 => "ext4",
            FsType::Xfs => "xfs",
            FsType::Vfat => "vfat",
            FsType::Btrfs => "btrfs",
            FsType::Swap => "swap",
            FsType::Squashfs => "squashfs",
            FsType::Erofs => "erofs",
        }
    }

    /// Every supported type.
    pub const ALL: [FsType; 9] = [
        FsType::Ext2,
        FsType::Ext3,
        FsType::Ext4,
        FsType::Xfs,
        FsType::Vfat,
        FsType::Btrfs,
        FsType::Swap,
        FsType::Squashfs,
        FsType::Erofs,
    ];

    fn is_ext(self) -> bool {
        matches!(self, FsType::Ext2 | FsType::Ext3 | FsType::Ext4)
    }

    /// Whether the tool writes the whole image itself (its size follows the content).
    pub fn sizes_itself(self) -> bool {
        matches!(self, FsType::Squashfs | FsType::Erofs)
    }

    /// Whether the same tree and [`MkfsOptions::source_date_epoch`] give byte-identical output.
    pub fn reproducible(self) -> bool {
        !matches!(self, FsType::Xfs | FsType::Btrfs)
    }

    /// Longest label the type accepts (bytes), or `None` when it has no label.
    pub fn max_label(self) -> Option<usize> {
        match self {
            FsType::Ext2 | FsType::Ext3 | FsType::Ext4 | FsType::Swap => Some(16),
            FsType::Xfs => Some(12),
            FsType::Vfat => Some(11),
            FsType::Btrfs => Some(255),
            FsType::Squashfs | FsType::Erofs => None,
        }
    }
}

impl std::fmt::Display for FsType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for FsType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        FsType::ALL
            .into_iter()
            .find(|t| t.as_str() == s || (s == "fat" && *t == FsType::Vfat))
            .ok_or_else(|| {
                let names: Vec<_> = FsType::ALL.iter().map(|t| t.as_str()).collect();
                format!(
                    "unknown filesystem type {s:?} (one of {})",
                    names.join(", ")
                )
            })
    }
}

/// What to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MkfsOptions {
    /// Filesystem type.
    pub fs: FsType,
    /// Label; default none. Checked against [`FsType::max_label`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// UUID (`xxxxxxxx-xxxx-…`; for vfat the volume id `XXXX-XXXX`); default random, or
    /// derived from type, label and epoch when [`Self::source_date_epoch`] is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Populate from this directory without mounting; default empty filesystem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub populate_from: Option<PathBuf>,
    /// Seconds since the epoch for reproducible output; default none (current time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_date_epoch: Option<u64>,
    /// Extra arguments for the mkfs tool, placed before the target; default none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_args: Vec<String>,
}

impl MkfsOptions {
    /// An empty `fs` filesystem with no label, a random UUID and the current time.
    pub fn new(fs: FsType) -> Self {
        MkfsOptions {
            fs,
            label: None,
            uuid: None,
            populate_from: None,
            source_date_epoch: None,
            extra_args: Vec::new(),
        }
    }
}

/// `SOURCE_DATE_EPOCH` from the environment, when set to a number.
pub fn source_date_epoch_from_env() -> Option<u64> {
    std::env::var("SOURCE_DATE_EPOCH").ok()?.trim().parse().ok()
}

/// Where the filesystem goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// An image file; with `size` it is created, or emptied, and made `size` bytes (sparse).
    File {
        /// The image file.
        path: PathBuf,
        /// Its size in bytes; default: keep the existing file's size. For squashfs and erofs
        /// (which size their own output) an upper limit instead.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size: Option<u64>,
    },
    /// A block device, used whole.
    Device {
        /// The device node.
        path: PathBuf,
    },
    /// `size` bytes at `offset` inside an existing image (a partition, without a loop device).
    Region {
        /// The image file (or device).
        image: PathBuf,
        /// Byte offset.
        offset: u64,
        /// Byte length.
        size: u64,
    },
}

impl Target {
    /// The file or device named.
    pub fn path(&self) -> &Path {
        match self {
            Target::File { path, .. } | Target::Device { path } => path,
            Target::Region { image, .. } => image,
        }
    }
}

/// One step of a [`Plan`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "step")]
pub enum Step {
    /// Create `path`, or empty an existing one, and give it `size` zero bytes (sparse), so no
    /// stale data from an earlier image remains (output depends only on the inputs).
    SizeFile {
        /// The file.
        path: PathBuf,
        /// Bytes.
        size: u64,
    },
    /// Remove `path` if it exists (tools that append, like mksquashfs, or that refuse to
    /// overwrite).
    RemoveFile {
        /// The file.
        path: PathBuf,
    },
    /// Write an xfs protofile describing `source` to `path`.
    WriteXfsProtofile {
        /// The source tree.
        source: PathBuf,
        /// The protofile.
        path: PathBuf,
    },
    /// Run a program.
    Run {
        /// Program.
        program: String,
        /// Arguments.
        args: Vec<String>,
        /// Extra environment.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        env: BTreeMap<String, String>,
    },
    /// `mcopy -s -p -m -Q -i IMAGE SOURCE/ENTRY… ::/` with every top-level entry of `source`
    /// in name order (mcopy cannot copy `DIR/.`), `MTOOLS_SKIP_CHECK=1`, and
    /// `SOURCE_DATE_EPOCH` when reproducible.
    McopyTree {
        /// The FAT image.
        image: PathBuf,
        /// The tree to copy in.
        source: PathBuf,
        /// The epoch, for reproducible output.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<u64>,
    },
    /// Pipe a `debugfs -w` script into `image` that sets atime/ctime/crtime of every inode
    /// copied from `source` to `epoch` and clamps mtimes to it (mke2fs copies them from the
    /// source tree, whose atimes change whenever it is read).
    ExtClampTimes {
        /// The image.
        image: PathBuf,
        /// The tree that was copied in.
        source: PathBuf,
        /// The epoch.
        epoch: u64,
    },
    /// Check that `path` is at most `limit` bytes (tools that size their own output).
    CheckFits {
        /// The built image.
        path: PathBuf,
        /// The limit.
        limit: u64,
    },
    /// Copy `from` into `image` at `offset`, zero the rest of the `size`-byte range, then
    /// remove `from`.
    CopyIntoRegion {
        /// The temporary build.
        from: PathBuf,
        /// The destination.
        image: PathBuf,
        /// Byte offset.
        offset: u64,
        /// Byte length of the range.
        size: u64,
    },
}

/// A planned mkfs: data first, then [`execute`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The options, with a derived UUID filled in for reproducible builds.
    pub options: MkfsOptions,
    /// Where it goes.
    pub target: Target,
    /// Whether the output will be byte-identical for the same tree and epoch.
    pub reproducible: bool,
    /// Steps in order.
    pub steps: Vec<Step>,
    /// Temporary files the steps create (removed by [`execute`], also on failure).
    pub temporaries: Vec<PathBuf>,
}

/// What [`mkfs`] made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The plan that ran.
    pub plan: Plan,
    /// What [`detect`] reads back from the result (None for swap read without blkid…).
    pub detected: Option<Detected>,
}

/// A UUID derived from the type, label and epoch: stable across runs, different per type and
/// label. RFC 9562 version 8 (custom) layout over SHA-256.
pub fn derived_uuid(fs: FsType, label: Option<&str>, epoch: u64) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"diskforge-mkfs\0");
    h.update(fs.as_str());
    h.update(b"\0");
    h.update(label.unwrap_or(""));
    h.update(b"\0");
    h.update(epoch.to_le_bytes());
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    format_uuid(&b)
}

fn format_uuid(b: &[u8; 16]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

fn invalid(fs: FsType, field: &'static str, value: &str, reason: impl Into<String>) -> Error {
    Error::Invalid {
        fs,
        field,
        value: value.to_owned(),
        reason: reason.into(),
    }
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

/// The 8-hex-digit FAT volume id from `XXXX-XXXX`, `XXXXXXXX`, or the first 8 hex digits of
/// a full UUID.
fn vfat_volume_id(fs: FsType, uuid: &str) -> Result<String> {
    let hex: String = uuid.chars().filter(|c| *c != '-').collect();
    let ok = hex.chars().all(|c| c.is_ascii_hexdigit()) && (hex.len() == 8 || hex.len() == 32);
    if !ok {
        return Err(invalid(
            fs,
            "uuid",
            uuid,
            "expected a FAT volume id XXXX-XXXX or a UUID",
        ));
    }
    Ok(hex[..8].to_ascii_uppercase())
}

fn validate(o: &MkfsOptions) -> Result<()> {
    if let Some(l) = &o.label {
        match o.fs.max_label() {
            None => {
                return Err(Error::Unsupported {
                    fs: o.fs,
                    what: "labels",
                });
            }
            Some(max) if l.len() > max => {
                return Err(invalid(
                    o.fs,
                    "label",
                    l,
                    format!("longer than {max} bytes"),
                ));
            }
            Some(_) => {}
        }
    }
    if let Some(u) = &o.uuid {
        match o.fs {
            FsType::Squashfs => {
                return Err(Error::Unsupported {
                    fs: o.fs,
                    what: "a UUID",
                });
            }
            FsType::Vfat => {
                vfat_volume_id(o.fs, u)?;
            }
            _ if !is_uuid(u) => {
                return Err(invalid(
                    o.fs,
                    "uuid",
                    u,
                    "expected xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx",
                ));
            }
            _ => {}
        }
    }
    if o.populate_from.is_some() && o.fs == FsType::Swap {
        return Err(Error::Unsupported {
            fs: o.fs,
            what: "populating from a directory",
        });
    }
    if o.populate_from.is_none() && o.fs.sizes_itself() {
        return Err(Error::NeedsSource { fs: o.fs });
    }
    Ok(())
}

/// Where temporary files for a block-device target go (root-only, unlike /tmp).
const DEVICE_TEMP_DIR: &str = "/run";

/// `.NAME.TAG` beside `image`; for anything under `/dev` (a device, or a region of one) in
/// [`DEVICE_TEMP_DIR`] instead.
fn temp_beside(image: &Path, tag: &str) -> PathBuf {
    let name = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = if image.starts_with("/dev") {
        Path::new(DEVICE_TEMP_DIR)
    } else {
        image.parent().unwrap_or(Path::new("."))
    };
    dir.join(format!(".{name}.{tag}"))
}

/// Push `flag value` when the value is set.
fn flag(args: &mut Vec<String>, flag: &str, value: Option<&str>) {
    if let Some(v) = value {
        args.extend([flag.to_owned(), v.to_owned()]);
    }
}

fn arg(p: &Path) -> String {
    p.display().to_string()
}

/// Plan a mkfs of `opts` onto `target` (validates options; touches nothing).
pub fn plan(opts: &MkfsOptions, target: &Target) -> Result<Plan> {
    validate(opts)?;
    let fs = opts.fs;
    let mut o = opts.clone();
    if let Some(e) = o.source_date_epoch
        && o.uuid.is_none()
        && fs != FsType::Squashfs
    {
        let u = derived_uuid(fs, o.label.as_deref(), e);
        o.uuid = Some(if fs == FsType::Vfat {
            format!("{}-{}", &u[..4], &u[4..8]).to_ascii_uppercase()
        } else {
            u
        });
    }
    let mut steps = Vec::new();
    let mut temporaries = Vec::new();

    // Where the tools write, and the size limit.
    let (build, limit) = match target {
        Target::File { path, size } => {
            if fs.sizes_itself() {
                steps.push(Step::RemoveFile { path: path.clone() });
            } else if let Some(s) = size {
                steps.push(Step::SizeFile {
                    path: path.clone(),
                    size: *s,
                });
            } else if !path.exists() {
                return Err(Error::SizeRequired {
                    path: path.clone(),
                    fs,
                });
            }
            (path.clone(), *size)
        }
        Target::Device { path } => (path.clone(), None),
        Target::Region {
            image,
            offset,
            size,
        } => {
            let tmp = temp_beside(image, &format!("mkfs-{offset}.tmp"));
            temporaries.push(tmp.clone());
            if fs.sizes_itself() {
                steps.push(Step::RemoveFile { path: tmp.clone() });
            } else {
                steps.push(Step::SizeFile {
                    path: tmp.clone(),
                    size: *size,
                });
            }
            (tmp, Some(*size))
        }
    };

    let mut env = BTreeMap::new();
    let mut args: Vec<String> = Vec::new();
    let program: &str;
    let label = o.label.clone();
    let uuid = o.uuid.clone();
    let epoch = o.source_date_epoch;
    match fs {
        FsType::Ext2 | FsType::Ext3 | FsType::Ext4 => {
            program = "mke2fs";
            args.extend(["-F".into(), "-q".into(), "-t".into(), fs.as_str().into()]);
            flag(&mut args, "-L", label.as_deref());
            flag(&mut args, "-U", uuid.as_deref());
            if let Some(e) = epoch {
                env.insert("E2FSPROGS_FAKE_TIME".into(), e.to_string());
                // The directory-index hash seed is random otherwise.
                let seed = uuid
                    .clone()
                    .unwrap_or_else(|| derived_uuid(fs, label.as_deref(), e));
                args.extend(["-E".into(), format!("hash_seed={seed}")]);
            }
            if let Some(d) = &o.populate_from {
                args.extend(["-d".into(), arg(d)]);
            }
            args.extend(o.extra_args.iter().cloned());
            args.push(arg(&build));
        }
        FsType::Xfs => {
            program = "mkfs.xfs";
            args.extend(["-f".into(), "-q".into()]);
            flag(&mut args, "-L", label.as_deref());
            if let Some(u) = &uuid {
                args.extend(["-m".into(), format!("uuid={u}")]);
            }
            if let Some(d) = &o.populate_from {
                // Beside the image; for a device in root-only /run (see temp_beside).
                let pf = temp_beside(&build, "proto");
                temporaries.push(pf.clone());
                steps.push(Step::WriteXfsProtofile {
                    source: d.clone(),
                    path: pf.clone(),
                });
                args.extend(["-p".into(), arg(&pf)]);
            }
            args.extend(o.extra_args.iter().cloned());
            args.push(arg(&build));
        }
        FsType::Vfat => {
            program = "mkfs.vfat";
            flag(&mut args, "-n", label.as_deref());
            if let Some(u) = &uuid {
                args.extend(["-i".into(), vfat_volume_id(fs, u)?]);
            }
            if epoch.is_some() {
                args.push("--invariant".into());
            }
            args.extend(o.extra_args.iter().cloned());
            args.push(arg(&build));
        }
        FsType::Btrfs => {
            program = "mkfs.btrfs";
            args.extend(["-f".into(), "-q".into()]);
            flag(&mut args, "-L", label.as_deref());
            flag(&mut args, "-U", uuid.as_deref());
            if let Some(d) = &o.populate_from {
                args.extend(["--rootdir".into(), arg(d)]);
            }
            args.extend(o.extra_args.iter().cloned());
            args.push(arg(&build));
        }
        FsType::Swap => {
            program = "mkswap";
            args.push("-q".into());
            flag(&mut args, "-L", label.as_deref());
            flag(&mut args, "-U", uuid.as_deref());
            args.extend(o.extra_args.iter().cloned());
            args.push(arg(&build));
        }
        FsType::Squashfs => {
            program = "mksquashfs";
            let src = o
                .populate_from
                .as_deref()
                .ok_or(Error::NeedsSource { fs })?;
            args.extend([
                arg(src),
                arg(&build),
                "-noappend".into(),
                "-quiet".into(),
                "-no-progress".into(),
            ]);
            if let Some(e) = epoch {
                args.extend([
                    "-mkfs-time".into(),
                    e.to_string(),
                    "-all-time".into(),
                    e.to_string(),
                ]);
            }
            args.extend(o.extra_args.iter().cloned());
        }
        FsType::Erofs => {
            program = "mkfs.erofs";
            let src = o
                .populate_from
                .as_deref()
                .ok_or(Error::NeedsSource { fs })?;
            args.push("--quiet".into());
            if let Some(e) = epoch {
                args.push(format!("-T{e}"));
            }
            if let Some(u) = &uuid {
                args.push(format!("-U{u}"));
            }
            args.extend(o.extra_args.iter().cloned());
            args.push(arg(&build));
            args.push(arg(src));
        }
    }
    steps.push(Step::Run {
        program: program.into(),
        args,
        env,
    });

    if fs == FsType::Vfat
        && let Some(src) = &o.populate_from
    {
        steps.push(Step::McopyTree {
            image: build.clone(),
            source: src.clone(),
            epoch,
        });
    }
    if fs.is_ext()
        && let (Some(e), Some(src)) = (epoch, &o.populate_from)
    {
        steps.push(Step::ExtClampTimes {
            image: build.clone(),
            source: src.clone(),
            epoch: e,
        });
    }
    if fs.sizes_itself()
        && let Some(limit) = limit
    {
        steps.push(Step::CheckFits {
            path: build.clone(),
            limit,
        });
    }
    if let Target::Region {
        image,
        offset,
        size,
    } = target
    {
        steps.push(Step::CopyIntoRegion {
            from: build.clone(),
            image: image.clone(),
            offset: *offset,
            size: *size,
        });
    }
    let reproducible = epoch.is_some() && fs.reproducible();
    Ok(Plan {
        options: o,
        target: target.clone(),
        reproducible,
        steps,
        temporaries,
    })
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Run a [`Plan`]. Temporary files are removed afterwards, also on failure.
pub fn execute(plan: &Plan) -> Result<()> {
    let res = plan
        .steps
        .iter()
        .try_for_each(|s| run_step(plan.options.fs, plan.target.path(), s));
    for t in &plan.temporaries {
        if let Err(e) = std::fs::remove_file(t)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %t.display(), error = %e, "removing temporary file");
        }
    }
    res
}

/// Plan, execute, and read back what was made (via [`detect`]).
pub fn mkfs(opts: &MkfsOptions, target: &Target) -> Result<Report> {
    let plan = plan(opts, target)?;
    execute(&plan)?;
    let detected = match target {
        Target::Region { image, offset, .. } => detect_at(image, *offset)?,
        t => detect(t.path())?,
    };
    Ok(Report { plan, detected })
}

fn run_step(fs: FsType, target: &Path, step: &Step) -> Result<()> {
    tracing::debug!(?step, "mkfs step");
    match step {
        Step::SizeFile { path, size } => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(path)
                .map_err(io("creating", path))?;
            f.set_len(*size).map_err(io("sizing", path))?;
        }
        Step::RemoveFile { path } => match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io("removing", path)(e));
            }
            _ => {}
        },
        Step::WriteXfsProtofile { source, path } => {
            let text = xfs_protofile(source)?;
            std::fs::write(path, text).map_err(io("writing", path))?;
        }
        Step::Run { program, args, env } => {
            let mut c = Cmd::new(program).args(args);
            for (k, v) in env {
                c = c.env(k, v);
            }
            c.run().map_err(|e| Error::Tool {
                step: program.clone(),
                fs,
                path: target.to_owned(),
                source: Box::new(e),
            })?;
        }
        Step::McopyTree {
            image,
            source,
            epoch,
        } => {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(source)
                .map_err(io("listing", source))?
                .map(|e| e.map(|e| e.path()))
                .collect::<Result<_, _>>()
                .map_err(io("listing", source))?;
            if entries.is_empty() {
                return Ok(());
            }
            entries.sort();
            let mut c = Cmd::new("mcopy")
                .args(["-s", "-p", "-m", "-Q", "-i"])
                .arg(image)
                .args(entries)
                .arg("::/")
                .env("MTOOLS_SKIP_CHECK", "1");
            if let Some(e) = epoch {
                c = c.env("SOURCE_DATE_EPOCH", e.to_string());
            }
            c.run().map_err(|e| Error::Tool {
                step: "mcopy".into(),
                fs,
                path: image.clone(),
                source: Box::new(e),
            })?;
        }
        Step::ExtClampTimes {
            image,
            source,
            epoch,
        } => {
            let script = ext_time_script(source, *epoch)?;
            Cmd::new("debugfs")
                .args(["-w", "-f", "-"])
                .arg(image)
                .stdin_bytes(script)
                .run()
                .map_err(|e| Error::Tool {
                    step: "debugfs".into(),
                    fs,
                    path: image.clone(),
                    source: Box::new(e),
                })?;
        }
        Step::CheckFits { path, limit } => {
            let built = std::fs::metadata(path).map_err(io("reading", path))?.len();
            if built > *limit {
                return Err(Error::TooLarge {
                    fs,
                    built,
                    limit: *limit,
                    path: path.clone(),
                });
            }
        }
        Step::CopyIntoRegion {
            from,
            image,
            offset,
            size,
        } => copy_into(fs, from, image, *offset, *size)?,
    }
    Ok(())
}

/// Copy `from` to `image` at `offset` and zero the rest of the `size`-byte range.
fn copy_into(fs: FsType, from: &Path, image: &Path, offset: u64, size: u64) -> Result<()> {
    let mut src = File::open(from).map_err(io("opening", from))?;
    let len = src.metadata().map_err(io("reading", from))?.len();
    let mut dst = std::fs::OpenOptions::new()
        .write(true)
        .open(image)
        .map_err(io("opening", image))?;
    let is_file = dst.metadata().map_err(io("reading", image))?.is_file();
    if is_file && dst.metadata().map_err(io("reading", image))?.len() < offset + size {
        return Err(Error::Invalid {
            fs,
            field: "region",
            value: format!("{offset}+{size}"),
            reason: format!("{} is shorter", image.display()),
        });
    }
    if len > size {
        return Err(Error::TooLarge {
            fs,
            built: len,
            limit: size,
            path: image.to_owned(),
        });
    }
    dst.seek(SeekFrom::Start(offset))
        .map_err(io("seeking", image))?;
    // std::io::copy uses copy_file_range between files.
    let copied =
        std::io::copy(&mut (&mut src).take(len), &mut dst).map_err(io("copying into", image))?;
    let rest = size.saturating_sub(copied);
    if rest > 0 {
        let punched = is_file
            && rustix::fs::fallocate(
                &dst,
                rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
                offset + copied,
                rest,
            )
            .is_ok();
        if !punched {
            let zeros = vec![0u8; 1 << 20];
            let mut left = rest;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                dst.write_all(&zeros[..n]).map_err(io("zeroing", image))?;
                left -= n as u64;
            }
        }
    }
    dst.sync_data().map_err(io("syncing", image))?;
    Ok(())
}

/// Build the debugfs script for [`Step::ExtClampTimes`].
fn ext_time_script(source: &Path, epoch: u64) -> Result<String> {
    let mut out = String::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let abs = source.join(&rel);
        let meta = std::fs::symlink_metadata(&abs).map_err(io("reading", &abs))?;
        let name = format!("/{}", rel.display());
        if name.contains(['"', '\n', '\\']) {
            return Err(Error::BadName {
                path: abs,
                reason: "quotes, backslashes or newlines cannot go into a debugfs script",
            });
        }
        for field in ["atime", "ctime", "crtime"] {
            out.push_str(&format!("sif \"{name}\" {field} @{epoch}\n"));
            out.push_str(&format!("sif \"{name}\" {field}_extra 0\n"));
        }
        if meta.mtime() < 0 || meta.mtime() as u64 > epoch {
            out.push_str(&format!(
                "sif \"{name}\" mtime @{epoch}\nsif \"{name}\" mtime_extra 0\n"
            ));
        }
        if meta.is_dir() {
            let mut names: Vec<_> = std::fs::read_dir(&abs)
                .map_err(io("listing", &abs))?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<Result<_, _>>()
                .map_err(io("listing", &abs))?;
            names.sort();
            stack.extend(names.into_iter().rev().map(|n| rel.join(n)));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids() {
        let a = derived_uuid(FsType::Ext4, Some("root"), 1);
        assert!(is_uuid(&a), "{a}");
        assert_eq!(a, derived_uuid(FsType::Ext4, Some("root"), 1));
        assert_ne!(a, derived_uuid(FsType::Xfs, Some("root"), 1));
        assert_eq!(&a[14..15], "8");
        assert!(!is_uuid("1234"));
        assert_eq!(
            vfat_volume_id(FsType::Vfat, "abcd-1234").ok().as_deref(),
            Some("ABCD1234")
        );
        assert!(vfat_volume_id(FsType::Vfat, "xyz").is_err());
    }

    #[test]
    fn validation() {
        let mut o = MkfsOptions::new(FsType::Vfat);
        o.label = Some("TWELVE_CHARS".into());
        assert!(matches!(
            plan(
                &o,
                &Target::Device {
                    path: "/dev/x".into()
                }
            ),
            Err(Error::Invalid { field: "label", .. })
        ));
        let mut o = MkfsOptions::new(FsType::Squashfs);
        o.label = Some("x".into());
        assert!(matches!(
            plan(
                &o,
                &Target::Device {
                    path: "/dev/x".into()
                }
            ),
            Err(Error::Unsupported { .. })
        ));
        let o = MkfsOptions::new(FsType::Erofs);
        assert!(matches!(
            plan(
                &o,
                &Target::Device {
                    path: "/dev/x".into()
                }
            ),
            Err(Error::NeedsSource { .. })
        ));
        let mut o = MkfsOptions::new(FsType::Swap);
        o.populate_from = Some("/".into());
        assert!(
            plan(
                &o,
                &Target::Device {
                    path: "/dev/x".into()
                }
            )
            .is_err()
        );
        let o = MkfsOptions::new(FsType::Ext4);
        let missing = Target::File {
            path: "/nonexistent/x.img".into(),
            size: None,
        };
        assert!(matches!(
            plan(&o, &missing),
            Err(Error::SizeRequired { .. })
        ));
    }

    #[test]
    fn fs_names() {
        for t in FsType::ALL {
            assert_eq!(t.as_str().parse::<FsType>(), Ok(t));
        }
        assert_eq!("fat".parse::<FsType>(), Ok(FsType::Vfat));
        assert!("ntfs".parse::<FsType>().is_err());
    }
}
