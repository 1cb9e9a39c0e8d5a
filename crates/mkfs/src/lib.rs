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
//! **Byte ranges** ([`mkfs_in_region`], [`Target::Region`]: a partition of an image file,
//! made and populated with no loop device and no mount, the file kept sparse): ext2/3/4 are
//! written straight into the range (`mke2fs -E offset=`, `debugfs IMAGE?offset=`) after the
//! range is hole-punched; the other types are built in a sparse temporary file beside the
//! image and only its data extents (`SEEK_DATA`/`SEEK_HOLE`) are copied in, the rest of the
//! range punched. Either way no byte outside the range changes and no stale byte inside it
//! remains ([`FsType::region_route`]).
//!
//! It deliberately does not mount, partition, or create iso9660 (see `diskforge-iso`). Man
//! pages followed: mke2fs(8), mkfs.xfs(8) (PROTOTYPE FILES), mkfs.fat(8), mcopy(1),
//! mkfs.btrfs(8), mkswap(8), mksquashfs(1), mkfs.erofs(1), blkid(8).

mod detect;
mod plan;
mod proto;
mod region;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use diskforge_cmd::Cmd;
use serde::{Deserialize, Serialize};

pub use detect::{Detected, DetectedBy, detect, detect_at, detect_magic, parse_blkid_export};
pub use plan::{RegionRoute, plan};
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
    /// A step failed on purpose (fault-injection builds only, see `diskforge-fault`).
    #[error(transparent)]
    Injected(#[from] diskforge_fault::Injected),
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

    /// Whether the type can be populated from a directory ([`MkfsOptions::populate_from`]):
    /// every type but swap (`mke2fs -d`, an xfs protofile, `mcopy`, `mkfs.btrfs --rootdir`,
    /// `mksquashfs`, `mkfs.erofs`).
    pub fn can_populate(self) -> bool {
        self != FsType::Swap
    }

    /// Whether the tool writes the whole image itself (its size follows the content).
    pub fn sizes_itself(self) -> bool {
        matches!(self, FsType::Squashfs | FsType::Erofs)
    }

    /// Whether the same tree and [`MkfsOptions::source_date_epoch`] give byte-identical output.
    pub fn reproducible(self) -> bool {
        !matches!(self, FsType::Xfs | FsType::Btrfs)
    }

    /// Longest label the type accepts (bytes: ext2/3/4 and swap 16, xfs 12, vfat 11,
    /// btrfs 255), or `None` when it has no label.
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
    /// Label; default none. Checked by [`check_label`] (no control characters, at most
    /// [`FsType::max_label`] bytes; vfat: ASCII, written in upper case).
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
        /// Where the filesystem starts in `image` (`debugfs IMAGE?offset=N`); default 0.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
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
    /// Clear the `size`-byte range at `offset` of `image` before a tool writes straight into
    /// it: holes punched in a file (it stays sparse), zeros written on a device. Refused when
    /// the range does not lie inside the file.
    ClearRegion {
        /// The image.
        image: PathBuf,
        /// Byte offset.
        offset: u64,
        /// Byte length of the range.
        size: u64,
    },
    /// Copy the data extents of the sparse build `from` into `image` at `offset` (holes are
    /// not copied), clear the rest of the `size`-byte range (holes punched in a file, zeros on
    /// a device), and sync.
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

/// Characters mkfs.fat refuses in a label (dosfstools 4.2).
const VFAT_LABEL_FORBIDDEN: &str = "*?.,;:/\\|+=<>[]\"";

/// Check a label against the type's rules: no control characters (they would split a
/// `blkid`/`lsblk` line and cannot be typed back), at most [`FsType::max_label`] bytes, and
/// for vfat ASCII without the characters FAT forbids (it is stored in upper case).
pub fn check_label(fs: FsType, label: &str) -> Result<()> {
    let Some(max) = fs.max_label() else {
        return Err(Error::Unsupported { fs, what: "labels" });
    };
    if let Some(c) = label.chars().find(|c| c.is_control()) {
        return Err(invalid(
            fs,
            "label",
            label,
            format!("contains the control character {c:?}"),
        ));
    }
    if fs == FsType::Vfat {
        if let Some(c) = label.chars().find(|c| !c.is_ascii()) {
            return Err(invalid(
                fs,
                "label",
                label,
                format!("{c:?} is not ASCII (FAT labels are stored in a DOS code page)"),
            ));
        }
        if let Some(c) = label.chars().find(|c| VFAT_LABEL_FORBIDDEN.contains(*c)) {
            return Err(invalid(
                fs,
                "label",
                label,
                format!("{c:?} is not allowed in a FAT label (none of {VFAT_LABEL_FORBIDDEN})"),
            ));
        }
    }
    if label.len() > max {
        return Err(invalid(
            fs,
            "label",
            label,
            format!(
                "{} bytes, longer than the {max} bytes {fs} allows",
                label.len()
            ),
        ));
    }
    Ok(())
}

fn validate(o: &MkfsOptions) -> Result<()> {
    if let Some(l) = &o.label {
        check_label(o.fs, l)?;
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
    if o.populate_from.is_some() && !o.fs.can_populate() {
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

/// Make a filesystem in the byte range `[offset, offset + len)` of `image` — a partition of
/// a disk image, with no loop device and no mount — populated from
/// [`MkfsOptions::populate_from`] where the type allows ([`FsType::can_populate`]), keeping a
/// sparse image sparse; bytes outside the range are never written. The same as [`mkfs`] on
/// [`Target::Region`].
pub fn mkfs_in_region(opts: &MkfsOptions, image: &Path, offset: u64, len: u64) -> Result<Report> {
    mkfs(
        opts,
        &Target::Region {
            image: image.to_owned(),
            offset,
            size: len,
        },
    )
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
    if let Some(name) = fault_point(step) {
        diskforge_fault::point(name)?;
    }
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
            offset,
            source,
            epoch,
        } => {
            let script = ext_time_script(source, *epoch)?;
            let mut target = image.clone().into_os_string();
            if let Some(o) = offset {
                // e2fsprogs' io options: NAME?offset=BYTES (ext2fs_open2).
                target.push(format!("?offset={o}"));
            }
            Cmd::new("debugfs")
                .args(["-w", "-f", "-"])
                // Without it debugfs stamps the superblock's last-write time with the clock,
                // and two builds a second apart differ.
                .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
                .arg(target)
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
        } => {
            region::RegionFile::open(fs, image, *offset, *size)?
                .copy_extents_from(fs, from, *offset, *size)?;
        }
        Step::ClearRegion {
            image,
            offset,
            size,
        } => region::RegionFile::open(fs, image, *offset, *size)?.clear(*offset, *size)?,
    }
    Ok(())
}

/// The fault point of a step that writes (see `diskforge-fault`); `None` for the ones that
/// only read or remove.
fn fault_point(step: &Step) -> Option<&'static str> {
    Some(match step {
        Step::SizeFile { .. } => "mkfs.size-file",
        Step::WriteXfsProtofile { .. } => "mkfs.protofile",
        Step::Run { .. } => "mkfs.run",
        Step::McopyTree { .. } => "mkfs.populate",
        Step::ExtClampTimes { .. } => "mkfs.clamp-times",
        Step::CopyIntoRegion { .. } => "mkfs.copy-into-region",
        Step::ClearRegion { .. } => "mkfs.clear-region",
        Step::RemoveFile { .. } | Step::CheckFits { .. } => return None,
    })
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
    fn labels() {
        let dev = Target::Device {
            path: "/dev/x".into(),
        };
        let refused = |fs: FsType, label: &str| {
            let mut o = MkfsOptions::new(fs);
            o.label = Some(label.into());
            match plan(&o, &dev) {
                Err(e @ Error::Invalid { field: "label", .. }) => e.to_string(),
                other => panic!("{fs} {label:?}: {other:?}"),
            }
        };
        // Control characters are refused, escaped in the message, for every type.
        for fs in [
            FsType::Ext4,
            FsType::Xfs,
            FsType::Vfat,
            FsType::Btrfs,
            FsType::Swap,
        ] {
            let msg = refused(fs, "a\nb");
            assert!(
                msg.contains(r#""a\nb""#) && msg.contains("control"),
                "{msg}"
            );
        }
        assert!(refused(FsType::Ext4, "t\tab").contains(r"'\t'"));
        // Each type's length limit, in bytes.
        for (fs, max) in [
            (FsType::Ext2, 16),
            (FsType::Ext4, 16),
            (FsType::Xfs, 12),
            (FsType::Vfat, 11),
            (FsType::Btrfs, 255),
            (FsType::Swap, 16),
        ] {
            let mut o = MkfsOptions::new(fs);
            o.label = Some("A".repeat(max));
            assert!(plan(&o, &dev).is_ok(), "{fs} {max}");
            let msg = refused(fs, &"A".repeat(max + 1));
            assert!(
                msg.contains(&format!("longer than the {max} bytes")),
                "{msg}"
            );
        }
        assert!(refused(FsType::Ext4, "ÄÄÄÄÄÄÄÄÄ").contains("18 bytes"));
        // vfat: ASCII without FAT's forbidden characters; written in upper case.
        assert!(refused(FsType::Vfat, "ÄBC").contains("not ASCII"));
        assert!(refused(FsType::Vfat, "A*B").contains("not allowed"));
        let mut o = MkfsOptions::new(FsType::Vfat);
        o.label = Some("esp".into());
        assert_eq!(
            plan(&o, &dev).unwrap().options.label.as_deref(),
            Some("ESP")
        );
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
