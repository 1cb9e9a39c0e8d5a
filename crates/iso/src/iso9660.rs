//! Our own ISO 9660 reader: volume descriptors, the primary tree (with Rock Ridge names and
//! modes), the Joliet tree, and the byte offset of every directory record (which patch mode
//! rewrites). Follows ECMA-119 (ISO 9660), IEEE P1282 (Rock Ridge / RRIP 1.12) over SUSP 1.12
//! (IEEE P1281), and the Joliet specification (UCS-2 names in a supplementary descriptor).
//!
//! It reads with positioned reads only (`pread`), never mounts, and bounds every walk: a
//! directory is visited once, recursion stops at [`MAX_DEPTH`], and SUSP continuation chains
//! stop after [`MAX_CE`] hops.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Bytes per logical block (the only block size real ISOs use).
pub const SECTOR: u64 = 2048;
/// Maximum directory depth we walk (ISO 9660 allows 8; Rock Ridge trees go deeper).
pub const MAX_DEPTH: usize = 64;
/// Maximum SUSP continuation areas (CE) followed for one record.
pub const MAX_CE: usize = 16;
/// Maximum volume descriptors read before giving up on a terminator.
const MAX_DESCRIPTORS: u64 = 64;

/// The ISO file opened for positioned reads.
#[derive(Debug)]
pub struct Source {
    path: PathBuf,
    file: File,
    len: u64,
}

impl Source {
    /// Open `path` read-only.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io("opening", path, e))?;
        let len = file
            .metadata()
            .map_err(|e| Error::io("reading metadata of", path, e))?
            .len();
        Ok(Source {
            path: path.to_owned(),
            file,
            len,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Read exactly `buf.len()` bytes at `offset`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if offset.saturating_add(buf.len() as u64) > self.len {
            return Err(Error::Malformed {
                path: self.path.clone(),
                offset,
                what: format!(
                    "read of {} bytes past the end of the file ({})",
                    buf.len(),
                    self.len
                ),
            });
        }
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| Error::io("reading", &self.path, e))
    }

    /// Read `len` bytes at `offset` into a new vector.
    pub fn read_vec(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let mut v = vec![0u8; len];
        self.read_at(offset, &mut v)?;
        Ok(v)
    }

    fn malformed(&self, offset: u64, what: impl Into<String>) -> Error {
        Error::Malformed {
            path: self.path.clone(),
            offset,
            what: what.into(),
        }
    }
}

pub(crate) fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub(crate) fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(crate) fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Write `v` as an ISO 9660 both-endian 32-bit field (LE then BE) into `out[..8]`.
pub(crate) fn both32(v: u32) -> [u8; 8] {
    let mut o = [0u8; 8];
    o[..4].copy_from_slice(&v.to_le_bytes());
    o[4..].copy_from_slice(&v.to_be_bytes());
    o
}

fn a_str(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .trim_end_matches([' ', '\0'])
        .to_owned()
}

fn ucs2_str(b: &[u8]) -> String {
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16_lossy(&units)
        .trim_end_matches([' ', '\0'])
        .to_owned()
}

/// Which kind of volume descriptor a tree comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TreeKind {
    /// The primary volume descriptor's tree (ISO 9660 names, maybe Rock Ridge).
    Primary,
    /// The Joliet supplementary descriptor's tree (UCS-2 names).
    Joliet,
}

/// The fields of a primary or supplementary volume descriptor that we report or rewrite.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VolumeDescriptor {
    /// Logical block number of this descriptor.
    pub lba: u32,
    /// System identifier (bytes 8..40).
    pub system_id: String,
    /// Volume identifier, the "label" (bytes 40..72).
    pub volume_id: String,
    /// Volume space size in logical blocks (bytes 80..88).
    pub volume_blocks: u32,
    /// Logical block size (bytes 128..132); always 2048 in practice.
    pub block_size: u16,
    /// Path table size in bytes.
    pub path_table_size: u32,
    /// L path table location.
    pub path_table_l: u32,
    /// M path table location.
    pub path_table_m: u32,
    /// Volume set identifier (bytes 190..318).
    pub volume_set_id: String,
    /// Publisher identifier (bytes 318..446).
    pub publisher_id: String,
    /// Data preparer identifier (bytes 446..574).
    pub preparer_id: String,
    /// Application identifier (bytes 574..702).
    pub application_id: String,
    /// Root directory extent.
    #[serde(skip)]
    pub root: Extent,
}

/// A contiguous run of blocks holding a file's or directory's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Extent {
    /// First logical block.
    pub lba: u32,
    /// Length in bytes.
    pub len: u32,
}

impl Extent {
    /// Byte offset of the extent.
    pub fn offset(&self) -> u64 {
        u64::from(self.lba) * SECTOR
    }
    /// Bytes the extent may occupy without touching the next block: its size rounded up.
    pub fn allocated(&self) -> u64 {
        u64::from(self.len).div_ceil(SECTOR) * SECTOR
    }
    /// Number of blocks it covers.
    pub fn blocks(&self) -> u32 {
        u32::try_from(self.allocated() / SECTOR).unwrap_or(u32::MAX)
    }
}

/// One file, directory or symlink in a tree.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Node {
    /// Absolute path, `/`-separated, with Rock Ridge names when present (Joliet names in the
    /// Joliet tree).
    pub path: String,
    /// What it is.
    pub kind: NodeKind,
    /// Its data (several for multi-extent files; one for directories).
    pub extents: Vec<Extent>,
    /// Total size in bytes.
    pub size: u64,
    /// Rock Ridge mode (`PX`), when present.
    pub mode: Option<u32>,
    /// Absolute byte offsets of the directory records that describe this node (one per
    /// extent), excluding the `.`/`..` records of a directory.
    #[serde(skip)]
    pub records: Vec<u64>,
}

/// Kind of a tree node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A Rock Ridge symbolic link.
    Symlink,
}

/// A parsed directory record (ECMA-119 9.1).
#[derive(Debug, Clone)]
pub struct Record {
    /// Absolute byte offset of the record.
    pub offset: u64,
    /// Record length.
    pub len: u8,
    /// The data.
    pub extent: Extent,
    /// File flags (bit 1 directory, bit 7 multi-extent).
    pub flags: u8,
    /// Raw identifier bytes.
    pub ident: Vec<u8>,
    /// Rock Ridge name (`NM`), when present.
    pub rr_name: Option<String>,
    /// Rock Ridge mode (`PX`), when present.
    pub rr_mode: Option<u32>,
    /// Whether the record carries `RE` (relocated directory: hidden in the RR view).
    pub relocated: bool,
}

impl Record {
    /// Whether this is a `.` or `..` record.
    pub fn is_dot(&self) -> bool {
        self.ident.len() == 1 && (self.ident[0] == 0 || self.ident[0] == 1)
    }
    /// Whether the directory flag is set.
    pub fn is_dir(&self) -> bool {
        self.flags & 0x02 != 0
    }
}

/// Rock Ridge presence and the SUSP skip length from the root's `SP` entry.
#[derive(Debug, Clone, Copy)]
pub struct RockRidge {
    /// Bytes to skip at the start of every system use area (`SP` LEN_SKP).
    pub skip: u8,
    /// Length of the root's `PX` entry (44 in RRIP 1.12, 36 in 1.10).
    pub px_len: u8,
}

/// The volume descriptors of an image, and its trees once walked.
#[derive(Debug)]
pub struct Volume {
    /// The source file.
    pub src: Source,
    /// The primary volume descriptor.
    pub primary: VolumeDescriptor,
    /// The Joliet supplementary descriptor, if any.
    pub joliet: Option<VolumeDescriptor>,
    /// The El Torito boot catalog location from the boot record, if any.
    pub boot_catalog_lba: Option<u32>,
    /// Rock Ridge, if the primary root announces SUSP with an `SP` entry.
    pub rock_ridge: Option<RockRidge>,
}

fn parse_descriptor(src: &Source, lba: u32, b: &[u8], joliet: bool) -> Result<VolumeDescriptor> {
    let s = |r: std::ops::Range<usize>| {
        if joliet {
            ucs2_str(&b[r])
        } else {
            a_str(&b[r])
        }
    };
    let root = &b[156..190];
    if root[0] < 34 {
        return Err(src.malformed(
            u64::from(lba) * SECTOR + 156,
            "root directory record too short",
        ));
    }
    Ok(VolumeDescriptor {
        lba,
        system_id: s(8..40),
        volume_id: s(40..72),
        volume_blocks: le32(b, 80),
        block_size: le16(b, 128),
        path_table_size: le32(b, 132),
        path_table_l: le32(b, 140),
        path_table_m: u32::from_be_bytes([b[148], b[149], b[150], b[151]]),
        volume_set_id: s(190..318),
        publisher_id: s(318..446),
        preparer_id: s(446..574),
        application_id: s(574..702),
        root: Extent {
            lba: le32(root, 2),
            len: le32(root, 10),
        },
    })
}

impl Volume {
    /// Open `path` and read its volume descriptors (sectors 16.. up to the terminator).
    pub fn open(path: &Path) -> Result<Self> {
        let src = Source::open(path)?;
        if src.len() < 17 * SECTOR {
            return Err(Error::NotIso {
                path: path.to_owned(),
                reason: format!("{} bytes is too small for an ISO 9660 volume", src.len()),
            });
        }
        let mut primary = None;
        let mut joliet = None;
        let mut boot_catalog_lba = None;
        let mut buf = vec![0u8; SECTOR as usize];
        for i in 0..MAX_DESCRIPTORS {
            let lba = 16 + i;
            if (lba + 1) * SECTOR > src.len() {
                break;
            }
            src.read_at(lba * SECTOR, &mut buf)?;
            if &buf[1..6] != b"CD001" {
                if i == 0 {
                    return Err(Error::NotIso {
                        path: path.to_owned(),
                        reason: "no CD001 volume descriptor at sector 16".into(),
                    });
                }
                break;
            }
            let lba32 = u32::try_from(lba).unwrap_or(u32::MAX);
            match buf[0] {
                0 if buf[7..30].starts_with(b"EL TORITO SPECIFICATION") => {
                    boot_catalog_lba = Some(le32(&buf, 71));
                }
                1 if primary.is_none() => {
                    primary = Some(parse_descriptor(&src, lba32, &buf, false)?)
                }
                2 if joliet.is_none()
                    && buf[88] == 0x25
                    && buf[89] == 0x2f
                    && matches!(buf[90], 0x40 | 0x43 | 0x45) =>
                {
                    joliet = Some(parse_descriptor(&src, lba32, &buf, true)?);
                }
                255 => break,
                _ => {}
            }
        }
        let Some(primary) = primary else {
            return Err(Error::NotIso {
                path: path.to_owned(),
                reason: "no primary volume descriptor".into(),
            });
        };
        if primary.block_size != SECTOR as u16 {
            return Err(Error::NotIso {
                path: path.to_owned(),
                reason: format!(
                    "logical block size {} (only 2048 is supported)",
                    primary.block_size
                ),
            });
        }
        let mut v = Volume {
            src,
            primary,
            joliet,
            boot_catalog_lba,
            rock_ridge: None,
        };
        v.rock_ridge = v.detect_rock_ridge()?;
        Ok(v)
    }

    fn detect_rock_ridge(&self) -> Result<Option<RockRidge>> {
        let root = self.primary.root;
        let mut sec = vec![0u8; SECTOR as usize];
        self.src.read_at(root.offset(), &mut sec)?;
        let len = usize::from(sec[0]);
        if len < 34 || len > sec.len() {
            return Ok(None);
        }
        let su = &sec[su_start(&sec, 0).min(len)..len];
        if su.len() >= 7 && &su[0..2] == b"SP" && su[4] == 0xbe && su[5] == 0xef {
            let skip = su[6];
            let mut px_len = 44;
            walk_susp_area(su, |sig, _, e| {
                if sig == *b"PX" {
                    px_len = e.len() as u8;
                }
            });
            return Ok(Some(RockRidge { skip, px_len }));
        }
        Ok(None)
    }

    /// Parse one directory record at `buf[at..]`, located at absolute byte `offset`.
    pub fn parse_record(&self, buf: &[u8], at: usize, offset: u64, rr: bool) -> Result<Record> {
        let len = buf.get(at).map_or(0, |b| usize::from(*b));
        if len < 34 || at.saturating_add(len) > buf.len() {
            return Err(self
                .src
                .malformed(offset, format!("directory record of length {len}")));
        }
        let r = &buf[at..at + len];
        let name_len = usize::from(r[32]);
        if 33 + name_len > len {
            return Err(self
                .src
                .malformed(offset, format!("name length {name_len} overflows record")));
        }
        let mut rec = Record {
            offset,
            len: r[0],
            extent: Extent {
                lba: le32(r, 2),
                len: le32(r, 10),
            },
            flags: r[25],
            ident: r[33..33 + name_len].to_vec(),
            rr_name: None,
            rr_mode: None,
            relocated: false,
        };
        if let (true, Some(rrinfo)) = (rr, self.rock_ridge) {
            let su = su_start(r, rrinfo.skip);
            if su < len {
                self.read_susp(&r[su..], &mut rec)?;
            }
        }
        Ok(rec)
    }

    fn read_susp(&self, area: &[u8], rec: &mut Record) -> Result<()> {
        let mut name = String::new();
        let mut has_name = false;
        // The record's own area is walked in place; only `CE` continuations are read.
        let mut cont: Option<Vec<u8>> = None;
        let mut hops = 0;
        loop {
            let mut ce = None;
            let a = cont.as_deref().unwrap_or(area);
            walk_susp_area(a, |sig, _, e| match &sig {
                b"NM" if e.len() >= 5 => {
                    let flags = e[4];
                    if flags & 0x06 == 0 {
                        name.push_str(&String::from_utf8_lossy(&e[5..]));
                        has_name = true;
                    }
                }
                b"PX" if e.len() >= 12 => rec.rr_mode = Some(le32(e, 4)),
                b"RE" => rec.relocated = true,
                b"CE" if e.len() >= 28 => ce = Some((le32(e, 4), le32(e, 12), le32(e, 20))),
                _ => {}
            });
            let Some((block, off, len)) = ce else { break };
            hops += 1;
            if hops > MAX_CE || len as usize > SECTOR as usize * 4 {
                return Err(self
                    .src
                    .malformed(rec.offset, "SUSP continuation chain too long"));
            }
            let at = u64::from(block) * SECTOR + u64::from(off);
            cont = Some(self.src.read_vec(at, len as usize)?);
        }
        if has_name {
            rec.rr_name = Some(name);
        }
        Ok(())
    }

    /// Read every record of the directory at `dir` (including `.` and `..`).
    pub fn read_dir(&self, dir: Extent, rr: bool) -> Result<Vec<Record>> {
        self.read_dir_checked(dir, rr, "", &mut Vec::new())
    }

    /// [`Volume::read_dir`] that also reports, in `problems`, a record length of 0 followed
    /// by more data in the same block (ECMA-119 9.1.1 says "continue at the next block", so
    /// whatever follows is invisible to every reader: records dropped without a word).
    /// `path` names the directory in the report.
    fn read_dir_checked(
        &self,
        dir: Extent,
        rr: bool,
        path: &str,
        problems: &mut Vec<Problem>,
    ) -> Result<Vec<Record>> {
        if u64::from(dir.len) > 64 << 20 {
            return Err(self
                .src
                .malformed(dir.offset(), format!("directory of {} bytes", dir.len)));
        }
        let buf = self.src.read_vec(dir.offset(), dir.allocated() as usize)?;
        let mut out = Vec::new();
        let mut at = 0usize;
        let end = dir.len as usize;
        while at < end {
            if buf[at] == 0 {
                // Records never cross a block: a zero length byte means "next block".
                let next = (at / SECTOR as usize + 1) * SECTOR as usize;
                if let Some(skipped) = buf[at..next.min(end)].iter().rposition(|&b| b != 0) {
                    problems.push(Problem {
                        kind: ProblemKind::ZeroLengthRecord,
                        offset: dir.offset() + at as u64,
                        detail: format!(
                            "directory {}: record length 0 followed by {} more bytes of \
                             records in the same block; readers skip to the next block and \
                             lose the entries there",
                            if path.is_empty() { "/" } else { path },
                            skipped
                        ),
                    });
                }
                at = next;
                continue;
            }
            let rec = self.parse_record(&buf, at, dir.offset() + at as u64, rr)?;
            at += usize::from(rec.len);
            out.push(rec);
        }
        Ok(out)
    }

    /// The root extent of a tree, if that tree exists.
    pub fn root(&self, kind: TreeKind) -> Option<Extent> {
        match kind {
            TreeKind::Primary => Some(self.primary.root),
            TreeKind::Joliet => self.joliet.as_ref().map(|j| j.root),
        }
    }

    /// Walk a whole tree. Multi-extent files become one node with several extents.
    ///
    /// What is wrong but walkable is collected in [`Tree::problems`] instead of failing:
    /// a directory whose extent was already visited (a loop, or a directory hard link),
    /// extents past the end of the file, a zero record length hiding records, a directory
    /// that cannot be read, Rock Ridge names no filesystem can hold (`/`, `.`, `..`), and a
    /// volume space larger than the file. [`crate::Inspection::check`] turns the serious
    /// ones into an error before anything is written.
    pub fn tree(&self, kind: TreeKind) -> Result<Tree> {
        let mut nodes = BTreeMap::new();
        let mut problems = Vec::new();
        let Some(root) = self.root(kind) else {
            return Ok(Tree {
                kind,
                nodes,
                dirs: BTreeMap::new(),
                problems,
            });
        };
        let file_len = self.src.len();
        let volume_end = u64::from(self.primary.volume_blocks) * SECTOR;
        if kind == TreeKind::Primary && volume_end > file_len {
            problems.push(Problem {
                kind: ProblemKind::VolumePastEnd,
                offset: u64::from(self.primary.lba) * SECTOR + 80,
                detail: format!(
                    "volume space is {} blocks ({volume_end} bytes) but the file has only \
                     {file_len} bytes: truncated image, or a wrong volume space size",
                    self.primary.volume_blocks
                ),
            });
        }
        let past_end = |e: &Extent| e.offset().saturating_add(u64::from(e.len)) > file_len;
        if past_end(&root) {
            problems.push(Problem {
                kind: ProblemKind::ExtentPastEnd,
                offset: root.offset(),
                detail: format!(
                    "root directory extent (block {}, {} bytes) ends past the end of the file \
                     ({file_len} bytes)",
                    root.lba, root.len
                ),
            });
            return Ok(Tree {
                kind,
                nodes,
                dirs: BTreeMap::new(),
                problems,
            });
        }
        let rr = kind == TreeKind::Primary && self.rock_ridge.is_some();
        let mut dirs = BTreeMap::new();
        // Directory extents visited, with the path that first reached each one.
        let mut seen: BTreeMap<u32, String> = BTreeMap::new();
        let mut stack = vec![(String::new(), root, 0usize, 0u64)];
        dirs.insert("/".to_owned(), root);
        while let Some((prefix, dir, depth, rec_off)) = stack.pop() {
            let shown = if prefix.is_empty() { "/" } else { &prefix };
            if let Some(first) = seen.get(&dir.lba) {
                problems.push(Problem {
                    kind: ProblemKind::DirectoryLoop,
                    offset: rec_off,
                    detail: format!(
                        "directory {shown} points at block {} which {first} already uses \
                         (a directory loop or hard link)",
                        dir.lba
                    ),
                });
                continue;
            }
            seen.insert(dir.lba, shown.to_owned());
            if depth > MAX_DEPTH {
                return Err(self
                    .src
                    .malformed(dir.offset(), "directory tree deeper than 64"));
            }
            let records = match self.read_dir_checked(dir, rr, &prefix, &mut problems) {
                Ok(r) => r,
                Err(e) => {
                    problems.push(Problem {
                        kind: ProblemKind::Unreadable,
                        offset: dir.offset(),
                        detail: format!("directory {shown}: {e}"),
                    });
                    continue;
                }
            };
            let mut pending: Option<Node> = None;
            for mut rec in records {
                if rec.is_dot() || rec.relocated {
                    continue;
                }
                let (name, what) = match rec.rr_name.take() {
                    Some(n) => (n, "Rock Ridge name"),
                    None if kind == TreeKind::Joliet => (display_name(&rec, kind), "Joliet name"),
                    None => (display_name(&rec, kind), "name"),
                };
                // Whatever tree the name comes from, an extractor would join it to a path:
                // `/`, `.`, `..` or NUL in it climbs out of (or hides in) the target.
                if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
                    problems.push(Problem {
                        kind: ProblemKind::BadName,
                        offset: rec.offset,
                        detail: format!(
                            "directory {shown}: {what} {name:?} cannot be a file name (the \
                             kernel returns EIO for it; an extractor would leave the target)"
                        ),
                    });
                }
                let mut path = String::with_capacity(prefix.len() + 1 + name.len());
                path.push_str(&prefix);
                path.push('/');
                path.push_str(&name);
                if past_end(&rec.extent) {
                    problems.push(Problem {
                        kind: ProblemKind::ExtentPastEnd,
                        offset: rec.offset,
                        detail: format!(
                            "{path}: extent at block {} of {} bytes ends at byte {}, past the \
                             end of the file ({file_len} bytes)",
                            rec.extent.lba,
                            rec.extent.len,
                            rec.extent.offset() + u64::from(rec.extent.len)
                        ),
                    });
                }
                if let Some(p) = pending.as_mut().filter(|p| p.path == path) {
                    p.extents.push(rec.extent);
                    p.size += u64::from(rec.extent.len);
                    p.records.push(rec.offset);
                    if rec.flags & 0x80 == 0
                        && let Some(p) = pending.take()
                    {
                        nodes.insert(p.path.clone(), p);
                    }
                    continue;
                }
                if let Some(p) = pending.take() {
                    nodes.insert(p.path.clone(), p);
                }
                let kind_ = if rec.is_dir() {
                    NodeKind::Dir
                } else if rec.rr_mode.is_some_and(|m| m & 0o170000 == 0o120000) {
                    NodeKind::Symlink
                } else {
                    NodeKind::File
                };
                let node = Node {
                    path: path.clone(),
                    kind: kind_,
                    extents: vec![rec.extent],
                    size: u64::from(rec.extent.len),
                    mode: rec.rr_mode,
                    records: vec![rec.offset],
                };
                if kind_ == NodeKind::Dir {
                    dirs.insert(path.clone(), rec.extent);
                    if !past_end(&rec.extent) {
                        stack.push((path.clone(), rec.extent, depth + 1, rec.offset));
                    }
                    nodes.insert(path, node);
                } else if rec.flags & 0x80 != 0 {
                    pending = Some(node);
                } else {
                    nodes.insert(path, node);
                }
            }
            if let Some(p) = pending.take() {
                nodes.insert(p.path.clone(), p);
            }
        }
        problems.sort_by_key(|p| p.offset);
        Ok(Tree {
            kind,
            nodes,
            dirs,
            problems,
        })
    }
}

/// What kind of [`Problem`] the reader found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProblemKind {
    /// The volume space size is larger than the file (a truncated image, or a wrong size).
    /// A warning: every extent may still be inside the file.
    VolumePastEnd,
    /// A file's or directory's extent ends past the end of the file.
    ExtentPastEnd,
    /// A directory record of length 0 with more records after it in the same block.
    ZeroLengthRecord,
    /// A directory whose extent another directory already uses (a loop or hard link).
    DirectoryLoop,
    /// A structure that cannot be read (a directory whose record overflows, a boot
    /// catalog past the end, …).
    Unreadable,
    /// A name (Rock Ridge, Joliet or plain ISO 9660) that cannot be a file name (`/` or NUL
    /// inside, `.`, `..`, empty).
    BadName,
}

impl ProblemKind {
    /// Whether a remaster must refuse the image (everything but [`ProblemKind::VolumePastEnd`]).
    pub fn is_fatal(self) -> bool {
        self != ProblemKind::VolumePastEnd
    }
}

/// Something wrong with an image that the reader walked past.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// What kind.
    pub kind: ProblemKind,
    /// Byte offset of the structure (the directory record, the descriptor field).
    pub offset: u64,
    /// What is wrong, naming the path and the values.
    pub detail: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (byte {})", self.detail, self.offset)
    }
}

/// Where the system use area of the directory record at the start of `rec` begins: after
/// the name, its padding byte, and `skip` bytes (the `SP` entry's LEN_SKP).
pub(crate) fn su_start(rec: &[u8], skip: u8) -> usize {
    // A record shorter than its fixed part has no system use area: past its end.
    let Some(&name_len) = rec.get(32) else {
        return rec.len();
    };
    let name_len = usize::from(name_len);
    33 + name_len + usize::from(name_len.is_multiple_of(2)) + usize::from(skip)
}

/// Call `f(signature, offset in area, entry)` for each SUSP entry in one system use area
/// (stops at `ST`, at a zero length, or where an entry would overflow the area).
pub(crate) fn walk_susp_area(area: &[u8], mut f: impl FnMut([u8; 2], usize, &[u8])) {
    let mut at = 0;
    while at + 4 <= area.len() {
        let len = usize::from(area[at + 2]);
        if len < 4 || at + len > area.len() {
            break;
        }
        let sig = [area[at], area[at + 1]];
        if &sig == b"ST" {
            break;
        }
        f(sig, at, &area[at..at + len]);
        at += len;
    }
}

/// The name a record shows in its tree: Rock Ridge `NM`, else the Joliet or ISO identifier
/// without its `;1` version and a trailing dot.
pub fn display_name(rec: &Record, kind: TreeKind) -> String {
    if let Some(n) = &rec.rr_name {
        return n.clone();
    }
    let raw = match kind {
        TreeKind::Joliet => ucs2_str(&rec.ident),
        TreeKind::Primary => String::from_utf8_lossy(&rec.ident).into_owned(),
    };
    let base = match raw.rsplit_once(';') {
        Some((b, v)) if v.chars().all(|c| c.is_ascii_digit()) => b.to_owned(),
        _ => raw,
    };
    if !rec.is_dir() && base.ends_with('.') && base.len() > 1 {
        base[..base.len() - 1].to_owned()
    } else {
        base
    }
}

/// A walked tree: every node by path, and every directory's extent.
#[derive(Debug, Clone)]
pub struct Tree {
    /// Which descriptor the tree hangs from.
    pub kind: TreeKind,
    /// Every node by absolute path.
    pub nodes: BTreeMap<String, Node>,
    /// Every directory's extent by path (`/` for the root).
    pub dirs: BTreeMap<String, Extent>,
    /// What the walk found wrong (see [`Volume::tree`]), by offset.
    pub problems: Vec<Problem>,
}

impl Tree {
    /// The node at `path` (absolute; a missing leading `/` is added).
    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(&normalize(path))
    }

    /// The file whose first extent starts at `lba`, if any.
    pub fn file_at(&self, lba: u32) -> Option<&Node> {
        self.nodes
            .values()
            .find(|n| n.kind == NodeKind::File && n.extents.first().is_some_and(|e| e.lba == lba))
    }

    /// Number of regular files and their total size in bytes.
    pub fn file_stats(&self) -> (u64, u64) {
        self.nodes
            .values()
            .filter(|n| n.kind == NodeKind::File)
            .fold((0, 0), |(c, s), n| (c + 1, s + n.size))
    }
}

/// Normalize an ISO path: leading `/`, no trailing `/`, no empty components.
pub fn normalize(path: &str) -> String {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory record (ECMA-119 9.1) for `ident` at `lba`, `len` bytes.
    fn record(ident: &[u8], lba: u32, len: u32, dir: bool) -> Vec<u8> {
        let n = 33 + ident.len() + usize::from(ident.len().is_multiple_of(2));
        let mut r = vec![0u8; n];
        r[0] = n as u8;
        r[2..10].copy_from_slice(&both32(lba));
        r[10..18].copy_from_slice(&both32(len));
        r[25] = if dir { 2 } else { 0 };
        r[32] = ident.len() as u8;
        r[33..33 + ident.len()].copy_from_slice(ident);
        r
    }

    /// The smallest sound volume: PVD, terminator, a root with a file and a directory.
    fn minimal() -> Vec<u8> {
        let s = SECTOR as usize;
        let mut img = vec![0u8; 24 * s];
        let pvd = &mut img[16 * s..17 * s];
        pvd[0] = 1;
        pvd[1..6].copy_from_slice(b"CD001");
        pvd[6] = 1;
        pvd[8..72].fill(b' ');
        pvd[80..88].copy_from_slice(&both32(24));
        pvd[128..130].copy_from_slice(&2048u16.to_le_bytes());
        pvd[130..132].copy_from_slice(&2048u16.to_be_bytes());
        pvd[156..190].copy_from_slice(&record(&[0], 20, 2048, true));
        let term = &mut img[17 * s..18 * s];
        term[0] = 255;
        term[1..6].copy_from_slice(b"CD001");
        term[6] = 1;
        let mut at = 20 * s;
        for r in [
            record(&[0], 20, 2048, true),
            record(&[1], 20, 2048, true),
            record(b"D", 21, 2048, true),
            record(b"F.TXT;1", 22, 5, false),
        ] {
            img[at..at + r.len()].copy_from_slice(&r);
            at += r.len();
        }
        let mut at = 21 * s;
        for r in [record(&[0], 21, 2048, true), record(&[1], 20, 2048, true)] {
            img[at..at + r.len()].copy_from_slice(&r);
            at += r.len();
        }
        img[22 * s..22 * s + 5].copy_from_slice(b"hello");
        img
    }

    fn volume(img: &[u8]) -> (tempfile::NamedTempFile, Result<Volume>) {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), img).unwrap();
        let v = Volume::open(f.path());
        (f, v)
    }

    #[test]
    fn minimal_volume_reads() {
        let (_f, v) = volume(&minimal());
        let t = v.unwrap().tree(TreeKind::Primary).unwrap();
        assert!(t.problems.is_empty(), "{:?}", t.problems);
        assert_eq!(t.get("/F.TXT").unwrap().size, 5);
        assert_eq!(t.get("/D").unwrap().kind, NodeKind::Dir);
    }

    /// Issue 17: `parse_record` is public; an offset at or past the end of the buffer is an
    /// error, not an index panic.
    #[test]
    fn record_offset_past_the_buffer_is_an_error() {
        let (_f, v) = volume(&minimal());
        let v = v.unwrap();
        let buf = record(b"X", 1, 1, false);
        assert!(v.parse_record(&buf, 0, 0, true).is_ok());
        for at in [buf.len(), buf.len() + 1, usize::MAX] {
            assert!(v.parse_record(&buf, at, 0, true).is_err(), "{at}");
        }
        assert_eq!(su_start(&[0u8; 10], 0), 10);
    }

    /// Issue 17 corpus (`joliet-dotdot.iso`, `joliet-slash.iso`): names that leave the
    /// directory are a problem in every tree, not only Rock Ridge ones.
    #[test]
    fn dot_dot_and_slash_names_are_problems_in_any_tree() {
        for bad in [&b".."[..], b"../../X", b"."] {
            let mut img = minimal();
            // The file record's identifier "F.TXT;1" (7 bytes) becomes `bad` + padding.
            let at = 20 * SECTOR as usize + 34 + 34 + 34;
            let r = record(bad, 22, 5, false);
            img[at..at + 40].fill(0);
            img[at..at + r.len()].copy_from_slice(&r);
            let (_f, v) = volume(&img);
            let t = v.unwrap().tree(TreeKind::Primary).unwrap();
            assert!(
                t.problems.iter().any(|p| p.kind == ProblemKind::BadName),
                "{bad:?}: {:?}",
                t.problems
            );
        }
    }

    /// Issue 17 corpus (`bootimg-past-end.iso`): an El Torito entry whose boot image lies
    /// past the end of the file is a problem (`inspect --strict` used to pass it).
    #[test]
    fn boot_image_past_the_end_is_a_problem() {
        let s = SECTOR as usize;
        let mut img = minimal();
        // Boot record at 17, terminator moved to 18, catalog at 23.
        let term = img[17 * s..18 * s].to_vec();
        img[18 * s..19 * s].copy_from_slice(&term);
        let br = &mut img[17 * s..18 * s];
        br.fill(0);
        br[1..6].copy_from_slice(b"CD001");
        br[6] = 1;
        br[7..30].copy_from_slice(b"EL TORITO SPECIFICATION");
        br[71..75].copy_from_slice(&23u32.to_le_bytes());
        let cat = &mut img[23 * s..24 * s];
        cat[0] = 1;
        cat[30] = 0x55;
        cat[31] = 0xaa;
        let sum = cat[..32].chunks_exact(2).fold(0u16, |a, c| {
            a.wrapping_add(u16::from_le_bytes([c[0], c[1]]))
        });
        cat[28..30].copy_from_slice(&0u16.wrapping_sub(sum).to_le_bytes());
        cat[32] = 0x88;
        cat[38..40].copy_from_slice(&4u16.to_le_bytes());
        let f = tempfile::NamedTempFile::new().unwrap();
        for (rba, past) in [(22u32, false), (0x00ff_fff0, true)] {
            img[23 * s + 40..23 * s + 44].copy_from_slice(&rba.to_le_bytes());
            std::fs::write(f.path(), &img).unwrap();
            let insp = crate::inspect(f.path()).unwrap();
            assert_eq!(insp.el_torito.as_ref().unwrap().entries.len(), 1);
            let found = insp
                .problems
                .iter()
                .any(|p| p.kind == ProblemKind::ExtentPastEnd && p.detail.contains("El Torito"));
            assert_eq!(found, past, "rba {rba}: {:?}", insp.problems);
        }
    }

    proptest::proptest! {
        /// The record parser never panics on arbitrary bytes at any offset, and what it
        /// returns lies inside the buffer.
        #[test]
        fn record_parser_stays_in_its_buffer(
            buf in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            at in 0usize..320,
            rr in proptest::bool::ANY,
        ) {
            let (_f, v) = volume(&minimal());
            let v = v.unwrap();
            if let Ok(rec) = v.parse_record(&buf, at, 0, rr) {
                proptest::prop_assert!(at + usize::from(rec.len) <= buf.len());
                proptest::prop_assert!(33 + rec.ident.len() <= usize::from(rec.len));
            }
        }

        /// Whole-volume walks (descriptors, both trees, SUSP, the boot catalog) never panic
        /// on a sound volume with arbitrary bytes written over its descriptors and
        /// directories, and every node they report lies inside the file or is a problem.
        #[test]
        fn walking_a_damaged_volume_never_panics(
            patches in proptest::collection::vec(
                (proptest::prop_oneof![16usize..18, 20usize..22], 0usize..2048,
                 proptest::collection::vec(proptest::num::u8::ANY, 1..40)),
                1..12,
            ),
        ) {
            let mut img = minimal();
            for (sector, off, bytes) in patches {
                let at = sector * SECTOR as usize + off;
                let end = (at + bytes.len()).min(img.len());
                img[at..end].copy_from_slice(&bytes[..end - at]);
            }
            let (f, v) = volume(&img);
            if let Ok(v) = v {
                for kind in [TreeKind::Primary, TreeKind::Joliet] {
                    if let Ok(t) = v.tree(kind) {
                        for n in t.nodes.values() {
                            for r in &n.records {
                                proptest::prop_assert!(*r < img.len() as u64);
                            }
                        }
                    }
                }
                let _ = crate::inspect(f.path());
            }
        }
    }
}
