//! Our ISO 9660 writer, as byte writes on the existing image: `patch` mode when every edit
//! fits space the image already has, `direct` mode when the image may grow.
//!
//! - A replaced file is written over its extent when it fits the extent's last 2048-byte
//!   block, else into free blocks (see below); every directory record that points at the
//!   extent (primary and Joliet) gets the new size (and location).
//! - An added file goes into free blocks, with a new directory record in its parent directory
//!   of both trees (Rock Ridge `PX`/`NM` in the primary): in the parent's blocks when they
//!   have room, else the parent is rewritten into free blocks with the new records, and its
//!   record in its own parent, its `.`, its children's `..` and its path table entries follow.
//! - Missing parent directories are created (`mkdir -p`) in both trees, and inserted into
//!   the L and M path tables in ECMA-119 order (level, parent number, name) with the parent
//!   numbers after them renumbered; tables that outgrow their blocks move to free blocks.
//! - A removed file loses its directory records (its data stays, unreferenced).
//! - Free blocks are the zero padding between the last referenced block and the end of the
//!   volume (xorriso and genisoimage pad 150 blocks), below the isomd5sum skip area and the
//!   backup GPT; each one is checked to be zero before use.
//!
//! Anything else (removing a directory, multi-extent or ≥ 4 GiB files, a boot image that
//! grows, Rock Ridge relocated directories) does not fit, and the caller falls back to
//! xorriso. Rock Ridge link counts follow the image's convention: where directories count
//! their subdirectories (`PX` nlink ≥ 2 at the root), new directories get 2 + theirs and a
//! parent that gains one is raised in its `.`, its record and its children's `..`; where
//! they all say 1 ("unknown", as libisofs writes them), new ones say 1 too.
//!
//! **Growing** (`direct` mode, [`plan`] with `grow`): when new data needs more blocks than the
//! padding has, the output gets zero blocks inserted at the end of the padding's usable part
//! (a whole number of MiB, so partition alignment holds), and everything after that point —
//! the isomd5sum skip area, appended partitions (the ESP), the backup GPT — moves up by that
//! many bytes. What points there follows: the volume space size of every descriptor, MBR
//! entries (start, or size of the one that spans the volume, CHS when they were 64/32),
//! both GPT headers and entry arrays with their CRCs, and El Torito load RBAs. The output is
//! then a copy of the input in two ranges (reflinks or `copy_file_range`) plus these writes.

use std::collections::{BTreeMap, BTreeSet};

use crate::boot::Hybrid;
use crate::changes::{Changes, parent_and_name};
use crate::iso9660::{
    Extent, Node, NodeKind, SECTOR, Tree, TreeKind, Volume, VolumeDescriptor, both32, le16, le32,
    le64, su_start, walk_susp_area,
};
use crate::isomd5::{APPDATA_OFFSET, APPDATA_SIZE, SKIP_SECTORS};
use crate::{Error, Result};

/// Zero bytes the output gets at `at` (block aligned): input bytes `[at, ..)` land at
/// `at + len` in the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insert {
    /// Input (and output) byte offset of the insertion.
    pub at: u64,
    /// Bytes inserted (a multiple of [`GROW_ALIGN`] blocks).
    pub len: u64,
}

/// Growth is a whole number of MiB (512 blocks), which keeps MiB-aligned partitions aligned.
pub const GROW_ALIGN: u64 = 512;

/// Byte writes that turn the input into the output.
#[derive(Debug, Clone, Default)]
pub struct PatchPlan {
    /// `(offset, bytes)` in output coordinates, sorted by offset, not overlapping.
    pub writes: Vec<(u64, Vec<u8>)>,
    /// One line per edit saying where it went.
    pub notes: Vec<String>,
    /// Zero bytes inserted (only when growing).
    pub insert: Option<Insert>,
    /// Volume space size of the output, in blocks.
    pub volume_blocks: u32,
}

impl PatchPlan {
    /// Length of the output for an input of `input_len` bytes.
    pub fn output_len(&self, input_len: u64) -> u64 {
        input_len + self.insert.map_or(0, |i| i.len)
    }

    /// Fill `buf` with the output's bytes at `offset`, reading the input `f` (positioned reads
    /// only; [`Self::output_len`] bounds `offset + buf.len()`).
    pub fn read_output(
        &self,
        f: &std::fs::File,
        offset: u64,
        buf: &mut [u8],
    ) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let end = offset + buf.len() as u64;
        match self.insert {
            None => f.read_exact_at(buf, offset)?,
            Some(ins) => {
                let gap_end = ins.at + ins.len;
                // Part before the insertion.
                let a = end.min(ins.at);
                if offset < a {
                    f.read_exact_at(&mut buf[..(a - offset) as usize], offset)?;
                }
                // The inserted zeros.
                let (z0, z1) = (offset.max(ins.at), end.min(gap_end));
                if z0 < z1 {
                    buf[(z0 - offset) as usize..(z1 - offset) as usize].fill(0);
                }
                // Part after it, from the input shifted back.
                let b = offset.max(gap_end);
                if b < end {
                    f.read_exact_at(&mut buf[(b - offset) as usize..], b - ins.len)?;
                }
            }
        }
        self.overlay(offset, buf);
        Ok(())
    }

    /// Total bytes written.
    pub fn bytes(&self) -> u64 {
        self.writes.iter().map(|(_, b)| b.len() as u64).sum()
    }

    /// Overlay the writes that intersect `[offset, offset + buf.len())` onto `buf`.
    pub fn overlay(&self, offset: u64, buf: &mut [u8]) {
        let end = offset + buf.len() as u64;
        for (o, data) in &self.writes {
            let wend = o + data.len() as u64;
            if wend <= offset || *o >= end {
                continue;
            }
            let from = offset.max(*o);
            let to = end.min(wend);
            buf[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&data[(from - o) as usize..(to - o) as usize]);
        }
    }
}

/// Bytes compared per read when a file is rewritten in place.
const COMPARE_CHUNK: usize = 64 << 10;

/// Why an edit does not fit (patch mode cannot do it; a rebuild can).
pub type NoFit = String;

struct Planner<'a> {
    vol: &'a Volume,
    /// Input blocks read and edited, by input LBA.
    blocks: BTreeMap<u64, Vec<u8>>,
    /// Writes at input offsets (moved with the tail when growing).
    data: Vec<(u64, Vec<u8>)>,
    /// Writes of newly placed data, at output offsets.
    placed: Vec<(u64, Vec<u8>)>,
    next_free: u64,
    limit: u64,
    /// May place data past `limit` (the output grows there).
    grow: bool,
    notes: Vec<String>,
}

impl Planner<'_> {
    fn block(&mut self, lba: u64) -> Result<&mut Vec<u8>> {
        if !self.blocks.contains_key(&lba) {
            let b = self.vol.src.read_vec(lba * SECTOR, SECTOR as usize)?;
            self.blocks.insert(lba, b);
        }
        // Inserted just above when missing.
        self.blocks.get_mut(&lba).ok_or_else(|| Error::Malformed {
            path: self.vol.src.path().to_owned(),
            offset: lba * SECTOR,
            what: "block cache".into(),
        })
    }

    fn alloc(&mut self, len: u64) -> Result<std::result::Result<u64, NoFit>> {
        let blocks = len.div_ceil(SECTOR).max(1);
        if self.next_free + blocks > self.limit && !self.grow {
            return Ok(Err(format!(
                "{len} bytes need {blocks} free blocks, {} are left in the padding",
                self.limit.saturating_sub(self.next_free)
            )));
        }
        let lba = self.next_free;
        // Past the limit the blocks are inserted ones: zero by construction.
        let existing_blocks = self.limit.saturating_sub(lba).min(blocks);
        let existing = match existing_blocks {
            0 => Vec::new(),
            n => self.vol.src.read_vec(lba * SECTOR, (n * SECTOR) as usize)?,
        };
        if existing.iter().any(|b| *b != 0) {
            return Ok(Err(format!(
                "blocks {lba}.. after the last file are not zero padding"
            )));
        }
        self.next_free += blocks;
        Ok(Ok(lba))
    }

    /// Write newly placed data at output block `lba`.
    fn write_data(&mut self, lba: u64, data: &[u8]) {
        let mut d = data.to_vec();
        d.resize(
            (data.len() as u64).div_ceil(SECTOR).max(1) as usize * SECTOR as usize,
            0,
        );
        self.placed.push((lba * SECTOR, d));
    }

    /// Bytes `[offset, offset + len)` of the input as edited so far (through the block cache).
    fn read_range(&mut self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(len);
        let end = offset + len as u64;
        let mut at = offset;
        while at < end {
            let lba = at / SECTOR;
            let from = (at % SECTOR) as usize;
            let to = (end - lba * SECTOR).min(SECTOR) as usize;
            out.extend_from_slice(&self.block(lba)?[from..to]);
            at = lba * SECTOR + to as u64;
        }
        Ok(out)
    }

    /// Overwrite input bytes at `offset` (through the block cache).
    fn write_range(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let mut done = 0usize;
        while done < data.len() {
            let at = offset + done as u64;
            let lba = at / SECTOR;
            let from = (at % SECTOR) as usize;
            let n = (SECTOR as usize - from).min(data.len() - done);
            self.block(lba)?[from..from + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
        Ok(())
    }

    /// Set size (and location) in the record at absolute `offset`.
    fn set_record(&mut self, offset: u64, lba: u32, size: u32) -> Result<()> {
        let at = (offset % SECTOR) as usize;
        let b = self.block(offset / SECTOR)?;
        set_extent(&mut b[at..], lba, size);
        Ok(())
    }

    /// Remove the record with extent `lba` and identifier `ident` from the directory `dir`.
    fn remove_record(&mut self, dir: Extent, ident: &[u8]) -> Result<bool> {
        for blk in 0..u64::from(dir.blocks()) {
            let b = self.block(u64::from(dir.lba) + blk)?;
            let mut at = 0usize;
            while at < SECTOR as usize && b[at] != 0 {
                let len = usize::from(b[at]);
                if at + len > b.len() || len < 34 {
                    break;
                }
                let nl = usize::from(b[at + 32]);
                if b.get(at + 33..at + 33 + nl) == Some(ident) {
                    b.copy_within(at + len.., at);
                    let n = b.len();
                    b[n - len..].fill(0);
                    return Ok(true);
                }
                at += len;
            }
        }
        Ok(false)
    }

    /// Insert `rec` into directory `dir` in identifier order, where a block has room.
    fn insert_record(&mut self, dir: Extent, rec: &[u8]) -> Result<std::result::Result<(), NoFit>> {
        let ident = &rec[33..33 + usize::from(rec[32])];
        let nblocks = u64::from(dir.blocks());
        for blk in 0..nblocks {
            let b = self.block(u64::from(dir.lba) + blk)?;
            let mut at = 0usize;
            let mut insert_at = None;
            let mut last_in_block = None;
            while at < SECTOR as usize && b[at] != 0 {
                let len = usize::from(b[at]);
                if len < 34 || at + len > b.len() {
                    break;
                }
                let nl = usize::from(b[at + 32]);
                let other = &b[at + 33..at + 33 + nl];
                let dot = nl == 1 && other[0] <= 1;
                if !dot && other == ident {
                    return Ok(Err("a record with that ISO 9660 name already exists".into()));
                }
                if insert_at.is_none() && !dot && other > ident {
                    insert_at = Some(at);
                }
                at += len;
                last_in_block = Some(at);
            }
            let used = last_in_block.unwrap_or(0);
            let is_last_block = blk + 1 == nblocks;
            // Belongs here when a larger identifier is in this block, or this is the last.
            if insert_at.is_none() && !is_last_block {
                continue;
            }
            if used + rec.len() > SECTOR as usize {
                return Ok(Err(format!(
                    "directory block {} has {} bytes free, the record needs {}",
                    u64::from(dir.lba) + blk,
                    SECTOR as usize - used,
                    rec.len()
                )));
            }
            let pos = insert_at.unwrap_or(used);
            b.copy_within(pos..used, pos + rec.len());
            b[pos..pos + rec.len()].copy_from_slice(rec);
            return Ok(Ok(()));
        }
        Ok(Err("directory has no blocks".into()))
    }
}

/// ISO 9660 identifier for a new file (d-characters, `NAME.EXT;1`) or directory (`NAME`).
fn iso_ident(name: &str, dir: bool) -> Vec<u8> {
    let up: String = name
        .chars()
        .map(|c| match c.to_ascii_uppercase() {
            c @ ('A'..='Z' | '0'..='9' | '_' | '.') => c,
            _ => '_',
        })
        .collect();
    if dir {
        return up
            .replace('.', "_")
            .chars()
            .take(31)
            .collect::<String>()
            .into_bytes();
    }
    let (base, ext) = match up.rsplit_once('.') {
        Some((b, e)) => (b.replace('.', "_"), e.to_owned()),
        None => (up.clone(), String::new()),
    };
    let base: String = base
        .chars()
        .take(30usize.saturating_sub(ext.len() + 1).max(1))
        .collect();
    format!("{base}.{ext};1").into_bytes()
}

fn joliet_ident(name: &str, version: bool) -> Vec<u8> {
    let mut v = Vec::new();
    let full = if version {
        format!("{name};1")
    } else {
        name.to_owned()
    };
    for u in full.encode_utf16().take(103) {
        v.extend_from_slice(&u.to_be_bytes());
    }
    v
}

fn build_record(lba: u32, size: u32, date: &[u8], ident: &[u8], su: &[u8]) -> Vec<u8> {
    let pad = usize::from(ident.len().is_multiple_of(2));
    let mut len = 33 + ident.len() + pad + su.len();
    len += len % 2;
    let mut r = vec![0u8; len];
    r[0] = len as u8;
    set_extent(&mut r, lba, size);
    r[18..25].copy_from_slice(&date[..7]);
    r[28..32].copy_from_slice(&[1, 0, 0, 1]);
    r[32] = ident.len() as u8;
    r[33..33 + ident.len()].copy_from_slice(ident);
    let s = 33 + ident.len() + pad;
    r[s..s + su.len()].copy_from_slice(su);
    r
}

/// Rock Ridge entries of a new record: `PX` with `mode` (links 2 for a directory), and `NM`
/// when it has a `name` (not for `.` and `..`). Empty without Rock Ridge.
fn rr_entries(vol: &Volume, name: Option<&str>, mode: u32) -> Vec<u8> {
    let Some(rr) = vol.rock_ridge else {
        return Vec::new();
    };
    let mut su = vec![0u8; usize::from(rr.skip)];
    let px_len = if rr.px_len == 36 { 36 } else { 44 };
    let mut px = vec![b'P', b'X', px_len, 1];
    let links = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
    for v in [mode, links, 0, 0, 0] {
        px.extend_from_slice(&both32(v));
    }
    px.truncate(usize::from(px_len));
    su.extend_from_slice(&px);
    if let Some(name) = name {
        let n = name.as_bytes();
        su.extend_from_slice(&[b'N', b'M', (5 + n.len()) as u8, 1, 0]);
        su.extend_from_slice(n);
    }
    su
}

/// System use bytes of the `.`/`..` records of a new directory in a `kind` tree.
fn dot_su(vol: &Volume, kind: TreeKind) -> Vec<u8> {
    match kind {
        TreeKind::Primary => rr_entries(vol, None, 0o040755),
        TreeKind::Joliet => Vec::new(),
    }
}

/// Records packed into blocks (never crossing one), zero-padded to whole blocks.
fn pack(records: impl IntoIterator<Item = Vec<u8>>) -> Vec<u8> {
    let mut data: Vec<u8> = Vec::new();
    for r in records {
        let used = data.len() % SECTOR as usize;
        if used + r.len() > SECTOR as usize {
            data.resize(data.len() + SECTOR as usize - used, 0);
        }
        data.extend_from_slice(&r);
    }
    let len = (data.len() as u64).div_ceil(SECTOR).max(1) * SECTOR;
    data.resize(len as usize, 0);
    data
}

/// Bytes [`pack`] needs for records of these lengths.
fn packed_len(lens: impl IntoIterator<Item = usize>) -> u64 {
    let mut at = 0u64;
    for l in lens {
        let used = at % SECTOR;
        if used + l as u64 > SECTOR {
            at += SECTOR - used;
        }
        at += l as u64;
    }
    at.div_ceil(SECTOR).max(1) * SECTOR
}

/// What [`plan`] works from: the input read once, and the resolved changes.
pub(crate) struct PlanInput<'a> {
    /// The input volume.
    pub vol: &'a Volume,
    /// Its primary tree.
    pub primary: &'a Tree,
    /// Its Joliet tree, when it has one.
    pub joliet: Option<&'a Tree>,
    /// Its isohybrid MBR/GPT.
    pub hybrid: &'a Hybrid,
    /// Load RBAs of the El Torito boot images (they may not move or grow).
    pub boot_images: &'a [u32],
    /// What to change.
    pub changes: &'a Changes,
    /// Whether the input carries an implanted MD5 (cleared: it would be stale).
    pub had_md5: bool,
    /// Whether the output may grow (see the module docs).
    pub grow: bool,
}

/// A step's answer: done, or why the edits do not fit.
type Fit<T> = std::result::Result<T, NoFit>;

/// `?` for [`Fit`]: a step that says "does not fit" ends the plan with that answer.
macro_rules! fit {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(why) => return Ok(Err(why)),
        }
    };
}

/// Plan the byte writes for `changes`, or say why they do not fit. With `grow`, data that
/// does not fit the padding goes into blocks inserted into the output (see the module docs).
pub(crate) fn plan(input: &PlanInput<'_>) -> Result<Fit<PatchPlan>> {
    let mut w = PlanRun::new(input)?;
    fit!(w.replace_files()?);
    fit!(w.remove_files()?);
    fit!(w.collect_new_dirs());
    w.read_conventions()?;
    fit!(w.new_file_records()?);
    w.new_dir_records();
    w.link_counts()?;
    fit!(w.place_new_dirs()?);
    fit!(w.fill_existing_dirs()?);
    fit!(w.build_new_dirs()?);
    fit!(w.path_tables()?);
    w.set_volid()?;
    w.clear_md5()?;
    w.raw_writes()?;
    let insert = fit!(w.grow()?);
    w.finish(insert)
}

/// The Joliet node for the primary node at `path` (same extent, else same data block).
fn joliet_node<'t>(joliet: Option<&'t Tree>, path: &str, lba: u32, size: u64) -> Option<&'t Node> {
    joliet.and_then(|j| {
        j.get(path)
            .filter(|n| n.extents.first().is_some_and(|e| e.lba == lba))
            .or_else(|| (size > 0).then(|| j.file_at(lba)).flatten())
    })
}

/// The state [`plan`]'s steps share: the input, the block cache and writes ([`Planner`]),
/// where the free blocks are, and what the additions build up.
struct PlanRun<'a> {
    vol: &'a Volume,
    primary: &'a Tree,
    joliet: Option<&'a Tree>,
    hybrid: &'a Hybrid,
    boot_images: &'a [u32],
    changes: &'a Changes,
    had_md5: bool,
    /// Volume size in blocks.
    vb: u64,
    /// The block after the last one any tree structure uses (inside the volume).
    used_end: u64,
    /// The highest start of any tree extent with data, wherever it is.
    last_start: u64,
    /// The first block free blocks may not reach (skip area, backup GPT, partitions).
    limit: u64,
    p: Planner<'a>,
    /// Directories to create (`mkdir -p` of every missing parent), in both trees.
    new_dirs: BTreeSet<String>,
    /// The root's recording date, given to new records.
    date: Vec<u8>,
    /// The trees to edit (primary, and Joliet when there is one).
    trees: Vec<TreeKind>,
    /// Whether the image's Joliet file names carry `;1`.
    joliet_versions: bool,
    /// New records per directory (existing or new) of each tree.
    groups: BTreeMap<(TreeKind, String), NewRecords>,
    /// New subdirectories per parent (Rock Ridge link counts).
    new_subdirs: BTreeMap<String, u32>,
    /// The Rock Ridge SUSP skip, when directories are created in a Rock Ridge tree.
    rr_skip: Option<u8>,
    /// Whether directory link counts are counted (else all 1, as libisofs writes them).
    counted: bool,
    /// Where each new directory went, per tree: (block, length).
    placed_dirs: BTreeMap<(TreeKind, String), (u32, u32)>,
    /// Blocks of the new directories.
    new_children: BTreeSet<u64>,
    /// Existing directories rewritten into new blocks: (tree, old block) → (block, bytes).
    moved: BTreeMap<(TreeKind, u32), (u64, Vec<u8>)>,
}

impl<'a> PlanRun<'a> {
    /// Measure what the trees use and where free blocks may go.
    fn new(input: &PlanInput<'a>) -> Result<Self> {
        let vol = input.vol;
        let vb = u64::from(vol.primary.volume_blocks);
        let mut used_end = 18u64;
        let mut last_start = 0u64;
        let mut bump = |e: &Extent| {
            if u64::from(e.lba) < vb {
                used_end = used_end.max(u64::from(e.lba) + u64::from(e.blocks()));
            }
        };
        for t in std::iter::once(input.primary).chain(input.joliet) {
            for e in t.nodes.values().flat_map(|n| n.extents.iter()) {
                bump(e);
                if e.len > 0 {
                    last_start = last_start.max(u64::from(e.lba));
                }
            }
            t.dirs.values().for_each(&mut bump);
        }
        for d in std::iter::once(&vol.primary).chain(vol.joliet.as_ref()) {
            for lba in [d.path_table_l, d.path_table_m] {
                bump(&Extent {
                    lba,
                    len: d.path_table_size,
                });
            }
        }
        if let Some(c) = vol.boot_catalog_lba {
            bump(&Extent {
                lba: c,
                len: SECTOR as u32,
            });
        }
        for &b in input.boot_images {
            bump(&Extent {
                lba: b,
                len: SECTOR as u32,
            });
        }
        let mut limit = vb.saturating_sub(SKIP_SECTORS + 1);
        if let Some(backup) = input.hybrid.gpt_backup_lba {
            limit = limit.min(backup.saturating_sub(33) / 4);
        }
        for (start, _) in input.hybrid.partition_ranges() {
            if start / 4 >= used_end {
                limit = limit.min(start / 4);
            }
        }
        Ok(PlanRun {
            vol,
            primary: input.primary,
            joliet: input.joliet,
            hybrid: input.hybrid,
            boot_images: input.boot_images,
            changes: input.changes,
            had_md5: input.had_md5,
            vb,
            used_end,
            last_start,
            limit,
            p: Planner {
                vol,
                blocks: BTreeMap::new(),
                data: Vec::new(),
                placed: Vec::new(),
                next_free: used_end,
                limit,
                grow: input.grow,
                notes: Vec::new(),
            },
            new_dirs: BTreeSet::new(),
            date: Vec::new(),
            trees: std::iter::once(TreeKind::Primary)
                .chain(input.joliet.map(|_| TreeKind::Joliet))
                .collect(),
            joliet_versions: false,
            groups: BTreeMap::new(),
            new_subdirs: BTreeMap::new(),
            rr_skip: None,
            counted: false,
            placed_dirs: BTreeMap::new(),
            new_children: BTreeSet::new(),
            moved: BTreeMap::new(),
        })
    }

    /// The tree and descriptor of `kind`, when the image has it.
    fn tree_of(&self, kind: TreeKind) -> Option<(&'a Tree, &'a VolumeDescriptor)> {
        match (kind, self.joliet, self.vol.joliet.as_ref()) {
            (TreeKind::Primary, _, _) => Some((self.primary, &self.vol.primary)),
            (TreeKind::Joliet, Some(j), Some(d)) => Some((j, d)),
            _ => None,
        }
    }

    /// Replacements (in place or relocated): offsets of records stay valid in this step.
    fn replace_files(&mut self) -> Result<Fit<()>> {
        let (vol, p) = (self.vol, &mut self.p);
        for put in self.changes.puts.iter().filter(|p| p.existed) {
            let Some(node) = self.primary.get(&put.dest) else {
                return Ok(Err(format!("{} is not in the primary tree", put.dest)));
            };
            if node.kind != NodeKind::File || node.extents.len() != 1 {
                return Ok(Err(format!("{} is not a single-extent file", put.dest)));
            }
            let data = put.content.bytes()?;
            let Ok(size) = u32::try_from(data.len()) else {
                return Ok(Err(format!("{} is over 4 GiB", put.dest)));
            };
            let ext = node.extents[0];
            let lba = if data.len() as u64 <= ext.allocated() && ext.allocated() > 0 {
                p.notes.push(format!(
                    "{}: rewritten in place ({} of {} bytes)",
                    put.dest,
                    size,
                    ext.allocated()
                ));
                u64::from(ext.lba)
            } else {
                if self.boot_images.contains(&ext.lba) {
                    return Ok(Err(format!(
                        "{} is a boot image and grew past its blocks",
                        put.dest
                    )));
                }
                match p.alloc(data.len() as u64)? {
                    Ok(l) => {
                        p.notes.push(format!(
                            "{}: moved to free block {l} ({size} bytes)",
                            put.dest
                        ));
                        l
                    }
                    Err(why) => return Ok(Err(format!("{}: {why}", put.dest))),
                }
            };
            let lba32 = lba as u32;
            if lba == u64::from(ext.lba) {
                // In place: write only the blocks that change (a FAT edit touches a few).
                // Compared a chunk at a time through one small buffer.
                let mut old = vec![0u8; COMPARE_CHUNK];
                let mut new = [0u8; SECTOR as usize];
                let mut done = 0u64;
                while done < ext.allocated() {
                    let n = (ext.allocated() - done).min(COMPARE_CHUNK as u64) as usize;
                    vol.src.read_at(ext.offset() + done, &mut old[..n])?;
                    for (i, o) in old[..n].chunks(SECTOR as usize).enumerate() {
                        let at = done as usize + i * SECTOR as usize;
                        let have = data.len().saturating_sub(at).min(SECTOR as usize);
                        new[..have].copy_from_slice(&data[at..at + have]);
                        new[have..].fill(0);
                        if o != new.as_slice() {
                            p.data.push((ext.offset() + at as u64, new.to_vec()));
                        }
                    }
                    done += n as u64;
                }
            } else {
                p.write_data(lba, &data);
            }
            let mut recs = node.records.clone();
            if let Some(j) = joliet_node(self.joliet, &put.dest, ext.lba, node.size) {
                recs.extend(j.records.iter().copied());
            }
            for r in recs {
                p.set_record(r, lba32, size)?;
            }
        }
        Ok(Ok(()))
    }

    /// Removals: the file's records go from both trees (its data stays).
    fn remove_files(&mut self) -> Result<Fit<()>> {
        for dest in &self.changes.removes {
            let Some(node) = self.primary.get(dest) else {
                return Ok(Err(format!("{dest} is not in the primary tree")));
            };
            if node.kind == NodeKind::Dir {
                return Ok(Err(format!(
                    "{dest} is a directory (the path tables would change)"
                )));
            }
            let ext = node.extents[0];
            let jn = joliet_node(self.joliet, dest, ext.lba, node.size).cloned();
            for (tree, n) in [(Some(self.primary), Some(node.clone())), (self.joliet, jn)] {
                let (Some(tree), Some(n)) = (tree, n) else {
                    continue;
                };
                let (parent, _) = parent_and_name(&n.path);
                let Some(dir) = tree.dirs.get(&parent).copied() else {
                    continue;
                };
                for r in &n.records {
                    let ident = self.vol.src.read_vec(r + 32, 1)?;
                    let ident = self.vol.src.read_vec(r + 33, usize::from(ident[0]))?;
                    if !self.p.remove_record(dir, &ident)? {
                        return Ok(Err(format!("{dest}: its record moved while planning")));
                    }
                }
            }
            self.p
                .notes
                .push(format!("{dest}: directory records removed"));
        }
        Ok(Ok(()))
    }

    /// Directories to create (`mkdir -p` of every missing parent of an added file).
    fn collect_new_dirs(&mut self) -> Fit<()> {
        for put in self.changes.puts.iter().filter(|p| !p.existed) {
            let (mut parent, _) = parent_and_name(&put.dest);
            while !self.primary.dirs.contains_key(&parent) {
                if self.primary.get(&parent).is_some() {
                    return Err(format!("{}: {parent} is not a directory", put.dest));
                }
                self.new_dirs.insert(parent.clone());
                parent = parent_and_name(&parent).0;
            }
            if let Some(j) = self.joliet
                && !j.dirs.contains_key(&parent)
            {
                return Err(format!("{}: no Joliet directory {parent}", put.dest));
            }
        }
        for path in &self.new_dirs {
            *self.new_subdirs.entry(parent_and_name(path).0).or_default() += 1;
        }
        Ok(())
    }

    /// What new records copy from the image: the root's date, whether Joliet names carry
    /// `;1` (xorriso omits it), and the Rock Ridge link count convention. Images whose
    /// directories all say 1 ("unknown", as libisofs writes them) keep that: new directories
    /// say 1 too and nothing is counted. The convention is only read when directories are
    /// created (not on the in-place hot path).
    fn read_conventions(&mut self) -> Result<()> {
        let vol = self.vol;
        self.joliet_versions = match vol.joliet.as_ref() {
            Some(j) => vol
                .read_dir(j.root, false)?
                .iter()
                .filter(|r| !r.is_dot() && !r.is_dir())
                .any(|r| r.ident.ends_with(&[0, b';', 0, b'1'])),
            None => false,
        };
        self.date = vol.src.read_vec(vol.primary.root.offset() + 18, 7)?;
        self.rr_skip = vol
            .rock_ridge
            .map(|r| r.skip)
            .filter(|_| !self.new_dirs.is_empty());
        self.counted = match self.rr_skip {
            Some(skip) => {
                let root_dot = vol
                    .src
                    .read_vec(vol.primary.root.offset(), SECTOR as usize)?;
                let len = usize::from(root_dot[0]).min(root_dot.len());
                px_links(&root_dot[..len], skip).is_some_and(|n| n >= 2)
            }
            None => false,
        };
        Ok(())
    }

    /// A new record for `name` in a `kind` tree.
    fn record_for(&self, kind: TreeKind, name: &str, lba: u32, size: u32, dir: bool) -> Vec<u8> {
        let (ident, su) = match kind {
            TreeKind::Primary => (
                iso_ident(name, dir),
                rr_entries(self.vol, Some(name), if dir { 0o040755 } else { 0o100644 }),
            ),
            TreeKind::Joliet => (joliet_ident(name, self.joliet_versions && !dir), Vec::new()),
        };
        let mut r = build_record(lba, size, &self.date, &ident, &su);
        if dir {
            r[25] = 0x02;
        }
        r
    }

    /// Added files: data into free blocks, a record for each tree's parent directory.
    fn new_file_records(&mut self) -> Result<Fit<()>> {
        for put in self.changes.puts.iter().filter(|p| !p.existed) {
            let (parent, name) = parent_and_name(&put.dest);
            let data = put.content.bytes()?;
            let Ok(size) = u32::try_from(data.len()) else {
                return Ok(Err(format!("{} is over 4 GiB", put.dest)));
            };
            let lba = match self.p.alloc(data.len() as u64)? {
                Ok(l) => l,
                Err(why) => return Ok(Err(format!("{}: {why}", put.dest))),
            };
            let Ok(lba32) = u32::try_from(lba) else {
                return Ok(Err(format!("{}: block {lba} is past 2^32", put.dest)));
            };
            self.p.write_data(lba, &data);
            for kind in self.trees.clone() {
                let bytes = self.record_for(kind, &name, lba32, size, false);
                self.groups
                    .entry((kind, parent.clone()))
                    .or_default()
                    .push(NewRecord {
                        bytes,
                        what: put.dest.clone(),
                        subdir: None,
                    });
            }
            self.p.notes.push(format!(
                "{}: added at free block {lba} ({size} bytes)",
                put.dest
            ));
        }
        Ok(Ok(()))
    }

    /// Records for the new directories in their parents (extents set once placed).
    fn new_dir_records(&mut self) {
        for path in self.new_dirs.clone() {
            let (parent, name) = parent_and_name(&path);
            for kind in self.trees.clone() {
                let bytes = self.record_for(kind, &name, 0, 0, true);
                self.groups
                    .entry((kind, parent.clone()))
                    .or_default()
                    .push(NewRecord {
                        bytes,
                        what: path.clone(),
                        subdir: Some(path.clone()),
                    });
            }
        }
    }

    /// Rock Ridge link counts: a directory has 2 + its subdirectories. New directories'
    /// records, and existing directories that gain subdirectories: their `.`, their record
    /// in the parent, and their children's `..` (before any of those blocks is moved).
    fn link_counts(&mut self) -> Result<()> {
        let Some(skip) = self.rr_skip else {
            return Ok(());
        };
        let primary_new = self
            .groups
            .iter_mut()
            .filter(|((k, _), _)| *k == TreeKind::Primary)
            .flat_map(|(_, v)| v.iter_mut());
        if !self.counted {
            for r in primary_new.filter(|r| r.subdir.is_some()) {
                set_px_links(&mut r.bytes, skip, 1);
            }
            return Ok(());
        }
        for r in primary_new {
            if let Some(n) = r.subdir.as_ref().and_then(|d| self.new_subdirs.get(d)) {
                bump_px_links(&mut r.bytes, skip, *n);
            }
        }
        let (primary, p) = (self.primary, &mut self.p);
        for (path, n) in self
            .new_subdirs
            .iter()
            .filter(|(d, _)| !self.new_dirs.contains(*d))
        {
            let Some(dir) = primary.dirs.get(path).copied() else {
                continue;
            };
            let own = p.read_range(dir.offset(), dir.allocated() as usize)?;
            let offs = record_offsets(&own, dir.len as usize);
            let mut at = vec![];
            at.extend(offs.first().map(|o| dir.offset() + *o as u64));
            if path == "/" {
                at.extend(offs.get(1).map(|o| dir.offset() + *o as u64));
            } else {
                let (parent, _) = parent_and_name(path);
                if let Some(pd) = primary.dirs.get(&parent) {
                    let pb = p.read_range(pd.offset(), pd.allocated() as usize)?;
                    if let Some(o) = find_dir_record(&pb, pd.len as usize, dir.lba) {
                        at.push(pd.offset() + o as u64);
                    }
                }
            }
            for o in offs.iter().skip(2).filter(|o| own[**o + 25] & 0x02 != 0) {
                let child = u64::from(le32(&own, o + 2)) * SECTOR;
                let cb = p.read_range(child, SECTOR as usize)?;
                if let Some(dd) = record_offsets(&cb, SECTOR as usize).get(1) {
                    at.push(child + *dd as u64);
                }
            }
            for off in at {
                let len = usize::from(p.read_range(off, 1)?[0]);
                let mut rec = p.read_range(off, len)?;
                if bump_px_links(&mut rec, skip, *n) {
                    p.write_range(off, &rec)?;
                }
            }
        }
        Ok(())
    }

    /// Place the new directories (their size is known from their records' lengths) and set
    /// the extents in the records that point at them.
    fn place_new_dirs(&mut self) -> Result<Fit<()>> {
        for path in &self.new_dirs {
            for &kind in &self.trees {
                let recs = self
                    .groups
                    .get(&(kind, path.clone()))
                    .map_or(&[][..], |v| &v[..]);
                let len = packed_len(
                    std::iter::repeat_n(34 + dot_su(self.vol, kind).len(), 2)
                        .chain(recs.iter().map(|r| r.bytes.len())),
                );
                let lba = match self.p.alloc(len)? {
                    Ok(l) => l,
                    Err(why) => return Ok(Err(format!("{path}: {why}"))),
                };
                let (Ok(lba32), Ok(len32)) = (u32::try_from(lba), u32::try_from(len)) else {
                    return Ok(Err(format!("{path}: block {lba} is past 2^32")));
                };
                self.placed_dirs
                    .insert((kind, path.clone()), (lba32, len32));
                self.new_children.insert(lba);
            }
        }
        for ((kind, _), recs) in self.groups.iter_mut() {
            for r in recs.iter_mut() {
                if let Some(&(lba, len)) = r
                    .subdir
                    .as_ref()
                    .and_then(|d| self.placed_dirs.get(&(*kind, d.clone())))
                {
                    set_extent(&mut r.bytes, lba, len);
                }
            }
        }
        Ok(Ok(()))
    }

    /// Existing directories that get records, shallow first: their blocks when the records
    /// fit, else rewritten into new blocks. A moved directory fixes its children's `..`
    /// records in their blocks before those children are themselves read for moving.
    fn fill_existing_dirs(&mut self) -> Result<Fit<()>> {
        let depth = |d: &str| d.matches('/').count() - usize::from(d == "/");
        let mut existing: Vec<(usize, TreeKind, String)> = self
            .groups
            .keys()
            .filter(|(_, d)| !self.new_dirs.contains(d))
            .map(|(k, d)| (depth(d), *k, d.clone()))
            .collect();
        existing.sort();
        for (_, kind, dir_path) in existing {
            let recs = self
                .groups
                .get(&(kind, dir_path.clone()))
                .map_or(&[][..], |v| &v[..]);
            let Some((tree, desc)) = self.tree_of(kind) else {
                continue;
            };
            let Some(dir) = tree.dirs.get(&dir_path).copied() else {
                return Ok(Err(format!("directory {dir_path} vanished while planning")));
            };
            let p = &mut self.p;
            // In place, all or nothing.
            let saved: Vec<(u64, Vec<u8>)> = (0..u64::from(dir.blocks()))
                .map(|b| {
                    let lba = u64::from(dir.lba) + b;
                    p.block(lba).map(|v| (lba, v.clone()))
                })
                .collect::<Result<_>>()?;
            let mut fits = true;
            for r in recs {
                if p.insert_record(dir, &r.bytes)?.is_err() {
                    fits = false;
                    break;
                }
            }
            if fits {
                continue;
            }
            for (lba, b) in saved {
                p.blocks.insert(lba, b);
            }
            let ctx = DirMove {
                kind,
                tree,
                desc,
                path: &dir_path,
                dir,
                new_children: &self.new_children,
            };
            match relocate_dir(p, &ctx, recs, &mut self.moved)? {
                Ok(note) => p.notes.push(note),
                Err(why) => return Ok(Err(format!("{}: {why}", recs[0].what))),
            }
        }
        Ok(Ok(()))
    }

    /// The Rock Ridge link count `..` of the new directory `path` carries: its parent's
    /// (a new parent's, or the existing one's `.`, wherever that ended up).
    fn parent_links(&mut self, parent: &str, skip: u8) -> Result<Option<u32>> {
        if self.new_dirs.contains(parent) {
            return Ok(Some(2 + self.new_subdirs.get(parent).copied().unwrap_or(0)));
        }
        let Some(e) = self.primary.dirs.get(parent) else {
            return Ok(None);
        };
        let b = match self.moved.get(&(TreeKind::Primary, e.lba)) {
            Some((_, d)) => d[..SECTOR as usize].to_vec(),
            None => self.p.read_range(e.offset(), SECTOR as usize)?,
        };
        Ok(px_links(&b[..usize::from(b[0])], skip))
    }

    /// Build the new directories: `.`, `..` (the parent wherever it ended up), records.
    fn build_new_dirs(&mut self) -> Result<Fit<()>> {
        for ((kind, path), &(lba, len)) in &self.placed_dirs.clone() {
            let (parent, _) = parent_and_name(path);
            let tree = match kind {
                TreeKind::Primary => self.primary,
                TreeKind::Joliet => self.joliet.unwrap_or(self.primary),
            };
            let (plba, plen) = match (
                self.placed_dirs.get(&(*kind, parent.clone())),
                tree.dirs.get(&parent),
            ) {
                (Some(&(l, n)), _) => (l, n),
                (None, Some(e)) => match self.moved.get(&(*kind, e.lba)) {
                    Some((l, d)) => (*l as u32, d.len() as u32),
                    None => (e.lba, e.len),
                },
                (None, None) => return Ok(Err(format!("{path}: no parent {parent}"))),
            };
            let su = dot_su(self.vol, *kind);
            let mut dot = build_record(lba, len, &self.date, &[0], &su);
            dot[25] = 0x02;
            let mut dotdot = build_record(plba, plen, &self.date, &[1], &su);
            dotdot[25] = 0x02;
            if let (TreeKind::Primary, Some(skip)) = (kind, self.rr_skip) {
                if self.counted {
                    let own = self.new_subdirs.get(path).copied().unwrap_or(0);
                    bump_px_links(&mut dot, skip, own);
                    if let Some(n) = self.parent_links(&parent, skip)? {
                        bump_px_links(&mut dotdot, skip, n.saturating_sub(2));
                    }
                } else {
                    set_px_links(&mut dot, skip, 1);
                    set_px_links(&mut dotdot, skip, 1);
                }
            }
            let mut recs: Vec<Vec<u8>> = self
                .groups
                .get(&(*kind, path.clone()))
                .map(|v| v.iter().map(|r| r.bytes.clone()).collect())
                .unwrap_or_default();
            let ident = |r: &[u8]| r[33..33 + usize::from(r[32])].to_vec();
            recs.sort_by_key(|r| ident(r));
            if recs.windows(2).any(|w| ident(&w[0]) == ident(&w[1])) {
                return Ok(Err(format!(
                    "{path}: two new names map to the same ISO 9660 name"
                )));
            }
            let data = pack(
                std::iter::once(dot)
                    .chain(std::iter::once(dotdot))
                    .chain(recs),
            );
            if data.len() as u32 != len {
                return Ok(Err(format!(
                    "{path}: directory size changed while planning"
                )));
            }
            self.p.placed.push((u64::from(lba) * SECTOR, data));
            self.p.notes.push(format!(
                "directory {path}{}: created at block {lba}",
                if *kind == TreeKind::Joliet {
                    " (Joliet)"
                } else {
                    ""
                }
            ));
        }
        Ok(Ok(()))
    }

    /// Path tables follow moved and new directories; then the moved directories' blocks
    /// join the writes.
    fn path_tables(&mut self) -> Result<Fit<()>> {
        for kind in self.trees.clone() {
            let Some((tree, desc)) = self.tree_of(kind) else {
                continue;
            };
            let relocated: BTreeMap<u32, u32> = self
                .moved
                .iter()
                .filter(|((k, _), _)| *k == kind)
                .map(|((_, old), (new, _))| (*old, *new as u32))
                .collect();
            let mut created: Vec<(u32, u32, Vec<u8>)> = Vec::new();
            for path in &self.new_dirs {
                let (parent, _) = parent_and_name(path);
                let parent_lba = match self.placed_dirs.get(&(kind, parent.clone())) {
                    Some(&(l, _)) => l,
                    None => match tree.dirs.get(&parent) {
                        Some(e) => relocated.get(&e.lba).copied().unwrap_or(e.lba),
                        None => return Ok(Err(format!("{path}: no parent {parent}"))),
                    },
                };
                let Some(&(lba, _)) = self.placed_dirs.get(&(kind, path.clone())) else {
                    continue;
                };
                let rec = &self.groups[&(kind, parent.clone())]
                    .iter()
                    .find(|r| r.subdir.as_deref() == Some(path.as_str()))
                    .map(|r| r.bytes.clone())
                    .unwrap_or_default();
                if rec.len() < 34 {
                    return Ok(Err(format!("{path}: no record in {parent}")));
                }
                created.push((parent_lba, lba, rec[33..33 + usize::from(rec[32])].to_vec()));
            }
            if relocated.is_empty() && created.is_empty() {
                continue;
            }
            if let Err(why) = write_path_tables(&mut self.p, desc, &relocated, &created)? {
                return Ok(Err(why));
            }
        }
        let moved = std::mem::take(&mut self.moved);
        self.p
            .placed
            .extend(moved.into_values().map(|(lba, data)| (lba * SECTOR, data)));
        Ok(Ok(()))
    }

    /// A new volume id in the primary (and Joliet) descriptor.
    fn set_volid(&mut self) -> Result<()> {
        let Some(v) = &self.changes.volid else {
            return Ok(());
        };
        let mut a = [b' '; 32];
        a[..v.len()].copy_from_slice(v.as_bytes());
        let pvd = u64::from(self.vol.primary.lba);
        self.p.block(pvd)?[40..72].copy_from_slice(&a);
        if let Some(j) = &self.vol.joliet {
            let mut u = Vec::new();
            for c in v.encode_utf16().take(16) {
                u.extend_from_slice(&c.to_be_bytes());
            }
            u.resize(32, 0);
            for pair in u.chunks_exact_mut(2).skip(v.encode_utf16().count().min(16)) {
                pair.copy_from_slice(&[0, b' ']);
            }
            self.p.block(u64::from(j.lba))?[40..72].copy_from_slice(&u);
        }
        self.p.notes.push(format!("volume id set to {v:?}"));
        Ok(())
    }

    /// An implanted MD5 would be stale: its application area goes back to spaces.
    fn clear_md5(&mut self) -> Result<()> {
        if self.had_md5 {
            let at = APPDATA_OFFSET as usize;
            self.p.block(u64::from(self.vol.primary.lba))?[at..at + APPDATA_SIZE].fill(b' ');
            self.p.notes.push("stale implanted MD5 cleared".into());
        }
        Ok(())
    }

    /// Raw rewrites outside the tree (hidden EFI images): only the blocks that change.
    fn raw_writes(&mut self) -> Result<()> {
        for raw in &self.changes.raw {
            let old = self.vol.src.read_vec(raw.offset, raw.data.len())?;
            let mut n = 0;
            for (i, (o, d)) in old
                .chunks(SECTOR as usize)
                .zip(raw.data.chunks(SECTOR as usize))
                .enumerate()
            {
                if o != d {
                    self.p
                        .data
                        .push((raw.offset + i as u64 * SECTOR, d.to_vec()));
                    n += 1;
                }
            }
            self.p
                .notes
                .push(format!("{}: {n} blocks rewritten", raw.what));
        }
        Ok(())
    }

    /// When new data went past the limit: insert zero blocks there (a whole number of MiB)
    /// and make what points past it follow.
    fn grow(&mut self) -> Result<Fit<Option<Insert>>> {
        let limit = self.limit;
        if self.p.next_free <= limit {
            return Ok(Ok(None));
        }
        // Blocks go in at `limit`: nothing referenced may lie across or after it, and what
        // moves up must be described by tables that follow it.
        if self.last_start >= limit || self.used_end > limit {
            return Ok(Err(format!(
                "data reaches block {}, past block {limit} where the image would grow",
                self.last_start.max(self.used_end)
            )));
        }
        if self.vol.src.len() < limit * SECTOR {
            return Ok(Err(format!(
                "the file ends at byte {}, before its volume does",
                self.vol.src.len()
            )));
        }
        if let Some(why) = unmovable_tail(self.vol, self.hybrid, limit, self.vb)? {
            return Ok(Err(why));
        }
        let blocks = (self.p.next_free - limit).div_ceil(GROW_ALIGN) * GROW_ALIGN;
        let ins = Insert {
            at: limit * SECTOR,
            len: blocks * SECTOR,
        };
        if let Err(why) = follow_insert(&mut self.p, ins)? {
            return Ok(Err(why));
        }
        self.p.notes.push(format!(
            "image grown by {} MiB at block {limit} (what follows moved up: skip area, \
             appended partitions, backup GPT)",
            ins.len >> 20
        ));
        Ok(Ok(Some(ins)))
    }

    /// All writes in output coordinates, sorted and checked not to overlap.
    fn finish(self, insert: Option<Insert>) -> Result<Fit<PatchPlan>> {
        let shift = |o: u64| match insert {
            Some(i) if o >= i.at => o + i.len,
            _ => o,
        };
        let p = self.p;
        if let Some(i) = insert
            && let Some((o, _)) = p
                .data
                .iter()
                .find(|(o, d)| *o < i.at && o + d.len() as u64 > i.at)
        {
            return Ok(Err(format!(
                "an edit at byte {o} spans the point where the image would grow"
            )));
        }
        let mut writes: Vec<(u64, Vec<u8>)> =
            p.data.into_iter().map(|(o, d)| (shift(o), d)).collect();
        writes.extend(p.placed);
        writes.extend(
            p.blocks
                .into_iter()
                .map(|(lba, b)| (shift(lba * SECTOR), b)),
        );
        writes.sort_by_key(|(o, _)| *o);
        for w in writes.windows(2) {
            if w[0].0 + w[0].1.len() as u64 > w[1].0 {
                return Ok(Err(format!("two edits overlap at byte {}", w[1].0)));
            }
        }
        let grown = insert.map_or(0, |i| i.len / SECTOR);
        let Ok(volume_blocks) = u32::try_from(self.vb + grown) else {
            return Ok(Err("the volume would pass 2^32 blocks".into()));
        };
        Ok(Ok(PatchPlan {
            writes,
            notes: p.notes,
            insert,
            volume_blocks,
        }))
    }
}

/// Directory records to add.
type NewRecords = Vec<NewRecord>;

/// A directory record to add.
struct NewRecord {
    /// The record.
    bytes: Vec<u8>,
    /// The ISO path it is for (named in errors).
    what: String,
    /// For a new directory: its path (its location is filled in once placed).
    subdir: Option<String>,
}

/// The directory [`relocate_dir`] moves, and where it hangs.
struct DirMove<'t> {
    kind: TreeKind,
    tree: &'t Tree,
    desc: &'t crate::iso9660::VolumeDescriptor,
    path: &'t str,
    dir: Extent,
    /// Blocks of directories created by this plan (their `..` is written when built).
    new_children: &'t std::collections::BTreeSet<u64>,
}

/// Offsets of the records in the first `len` bytes of a directory's `blocks` (a zero length
/// byte skips to the next block; a malformed record ends the walk).
fn record_offsets(blocks: &[u8], len: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < len.min(blocks.len()) {
        let l = usize::from(blocks[at]);
        if l == 0 {
            at = (at / SECTOR as usize + 1) * SECTOR as usize;
            continue;
        }
        if l < 34 || at + l > blocks.len() {
            break;
        }
        out.push(at);
        at += l;
    }
    out
}

/// Records of a directory's blocks (raw bytes, in order).
fn dir_records(blocks: &[u8], len: usize) -> Vec<Vec<u8>> {
    record_offsets(blocks, len)
        .into_iter()
        .map(|at| blocks[at..at + usize::from(blocks[at])].to_vec())
        .collect()
}

/// Offset in `blocks` of the directory record (not `.`/`..`) whose extent starts at `lba`.
fn find_dir_record(blocks: &[u8], len: usize, lba: u32) -> Option<usize> {
    record_offsets(blocks, len)
        .into_iter()
        .skip(2)
        .find(|&at| blocks[at + 25] & 0x02 != 0 && le32(blocks, at + 2) == lba)
}

/// Rewrite directory `m.dir` into new blocks with `new` records added (each in identifier
/// order), and make everything that points at it follow: its `.` (and, for the root, `..`
/// and the descriptor's root record), its record in the parent, and the `..` of each child
/// directory (the path tables follow in [`write_path_tables`]). `moved` holds directories
/// rewritten earlier (old LBA → new LBA and bytes), shallower first.
fn relocate_dir(
    p: &mut Planner<'_>,
    m: &DirMove<'_>,
    new: &[NewRecord],
    moved: &mut BTreeMap<(TreeKind, u32), (u64, Vec<u8>)>,
) -> Result<std::result::Result<String, NoFit>> {
    let old = m.dir;
    let cur = p.read_range(old.offset(), old.allocated() as usize)?;
    let mut recs = dir_records(&cur, old.len as usize);
    if recs.len() < 2 {
        return Ok(Err(format!("directory {} has no . and .. records", m.path)));
    }
    // Rock Ridge deep-directory relocation (CL/PL/RE) is left to xorriso.
    if m.kind == TreeKind::Primary
        && let Some(rr) = p.vol.rock_ridge
    {
        for r in &recs {
            let su = su_start(r, rr.skip);
            let mut deep = false;
            if su < r.len() {
                walk_susp_area(&r[su..], |sig, _, _| {
                    deep |= matches!(&sig, b"CL" | b"PL" | b"RE");
                });
            }
            if deep {
                return Ok(Err(format!(
                    "directory {} has Rock Ridge relocated entries",
                    m.path
                )));
            }
        }
    }
    for rec in new {
        let rec = &rec.bytes;
        let ident = &rec[33..33 + usize::from(rec[32])];
        let pos = recs
            .iter()
            .enumerate()
            .skip(2)
            .find(|(_, r)| &r[33..33 + usize::from(r[32])] > ident)
            .map_or(recs.len(), |(i, _)| i);
        if recs[2..]
            .iter()
            .any(|r| &r[33..33 + usize::from(r[32])] == ident)
        {
            return Ok(Err("a record with that name already exists".into()));
        }
        recs.insert(pos, rec.clone());
    }
    let mut data = pack(recs.iter().cloned());
    let len = data.len() as u64;
    let Ok(len32) = u32::try_from(len) else {
        return Ok(Err(format!("directory {} would pass 4 GiB", m.path)));
    };
    let lba = match p.alloc(len)? {
        Ok(l) => l,
        Err(why) => return Ok(Err(why)),
    };
    let Ok(lba32) = u32::try_from(lba) else {
        return Ok(Err(format!("block {lba} is past 2^32")));
    };
    let is_root = m.path == "/";
    // `.` (and the root's `..`) point at the new place.
    set_extent(&mut data, lba32, len32);
    if is_root {
        let at = usize::from(data[0]);
        set_extent(&mut data[at..], lba32, len32);
    }
    // The record that names it: the descriptor's root record, or one in the parent.
    if is_root {
        p.set_record(u64::from(m.desc.lba) * SECTOR + 156, lba32, len32)?;
    } else {
        let (parent, _) = parent_and_name(m.path);
        let Some(pdir) = m.tree.dirs.get(&parent).copied() else {
            return Ok(Err(format!("no parent directory {parent}")));
        };
        match moved.get_mut(&(m.kind, pdir.lba)) {
            Some((_, pdata)) => {
                let n = pdata.len();
                let Some(at) = find_dir_record(pdata, n, old.lba) else {
                    return Ok(Err(format!("{} not found in its moved parent", m.path)));
                };
                set_extent(&mut pdata[at..], lba32, len32);
            }
            None => {
                let pblocks = p.read_range(pdir.offset(), pdir.allocated() as usize)?;
                let Some(at) = find_dir_record(&pblocks, pdir.len as usize, old.lba) else {
                    return Ok(Err(format!("{} not found in {parent}", m.path)));
                };
                p.set_record(pdir.offset() + at as u64, lba32, len32)?;
            }
        }
    }
    // Children's `..` (their second record); new subdirectories get theirs when built.
    for r in recs.iter().skip(2).filter(|r| r[25] & 0x02 != 0) {
        let child = u64::from(le32(r, 2));
        if m.new_children.contains(&child) {
            continue;
        }
        let first = p.block(child)?;
        let at = usize::from(first[0]);
        if at < 34 || at + 34 > SECTOR as usize {
            return Ok(Err(format!(
                "a subdirectory of {} has a bad . record",
                m.path
            )));
        }
        set_extent(&mut first[at..], lba32, len32);
    }
    moved.insert((m.kind, old.lba), (lba, data));
    Ok(Ok(format!(
        "directory {}{}: rewritten at block {lba} ({} → {} blocks)",
        m.path,
        if m.kind == TreeKind::Joliet {
            " (Joliet)"
        } else {
            ""
        },
        old.blocks(),
        len / SECTOR
    )))
}

/// Rewrite the path tables of `desc` (L, M and the optional copies): directories at the keys
/// of `relocated` moved to its values, and `created` directories `(parent LBA, LBA,
/// identifier)` inserted in ECMA-119 order (level, parent number, identifier) with the
/// parent numbers after them renumbered. In place when the tables still fit their blocks,
/// else in new blocks with the descriptor pointing there.
fn write_path_tables(
    p: &mut Planner<'_>,
    desc: &crate::iso9660::VolumeDescriptor,
    relocated: &BTreeMap<u32, u32>,
    created: &[(u32, u32, Vec<u8>)],
) -> Result<std::result::Result<(), NoFit>> {
    struct Entry {
        ident: Vec<u8>,
        ext: u8,
        lba: u32,
        parent: u16,
    }
    let size = desc.path_table_size as usize;
    let raw = p.read_range(u64::from(desc.path_table_l) * SECTOR, size)?;
    let mut es: Vec<Entry> = Vec::new();
    let mut at = 0usize;
    while at + 8 <= size {
        let nl = usize::from(raw[at]);
        if nl == 0 {
            break;
        }
        if at + 8 + nl > size {
            return Ok(Err(format!(
                "the path table at block {} is malformed",
                desc.path_table_l
            )));
        }
        es.push(Entry {
            ident: raw[at + 8..at + 8 + nl].to_vec(),
            ext: raw[at + 1],
            lba: le32(&raw, at + 2),
            parent: le16(&raw, at + 6),
        });
        at += 8 + nl + nl % 2;
    }
    for (old, new) in relocated {
        let n = es.iter().filter(|e| e.lba == *old).count();
        if n != 1 {
            return Ok(Err(format!(
                "the directory at block {old} is in the path table {n} times"
            )));
        }
        if let Some(e) = es.iter_mut().find(|e| e.lba == *old) {
            e.lba = *new;
        }
    }
    let level_of = |es: &[Entry], mut i: usize| -> usize {
        let mut l = 1;
        while l < 256 && usize::from(es[i].parent) != i + 1 && es[i].parent != 0 {
            i = usize::from(es[i].parent) - 1;
            l += 1;
            if i >= es.len() {
                break;
            }
        }
        l
    };
    for (parent_lba, lba, ident) in created {
        let Some(pi) = es.iter().position(|e| e.lba == *parent_lba) else {
            return Ok(Err(format!(
                "the parent at block {parent_lba} is not in the path table"
            )));
        };
        let Ok(pnum) = u16::try_from(pi + 1) else {
            return Ok(Err("the path table would pass 65535 directories".into()));
        };
        let lv = level_of(&es, pi) + 1;
        let key = (lv, pnum, ident.as_slice());
        let k = (0..es.len())
            .find(|&k| (level_of(&es, k), es[k].parent, es[k].ident.as_slice()) > key)
            .unwrap_or(es.len());
        for e in es.iter_mut() {
            if usize::from(e.parent) > k {
                e.parent += 1;
            }
        }
        es.insert(
            k,
            Entry {
                ident: ident.clone(),
                ext: 0,
                lba: *lba,
                parent: pnum,
            },
        );
    }
    let ser = |big: bool| -> Vec<u8> {
        let mut v = Vec::new();
        for e in &es {
            v.push(e.ident.len() as u8);
            v.push(e.ext);
            if big {
                v.extend_from_slice(&e.lba.to_be_bytes());
                v.extend_from_slice(&e.parent.to_be_bytes());
            } else {
                v.extend_from_slice(&e.lba.to_le_bytes());
                v.extend_from_slice(&e.parent.to_le_bytes());
            }
            v.extend_from_slice(&e.ident);
            if e.ident.len() % 2 == 1 {
                v.push(0);
            }
        }
        v
    };
    let (l, m) = (ser(false), ser(true));
    let Ok(new_size) = u32::try_from(l.len()) else {
        return Ok(Err("the path table would pass 4 GiB".into()));
    };
    let room = (size as u64).div_ceil(SECTOR) * SECTOR;
    let dpos = u64::from(desc.lba) * SECTOR;
    let d = p.read_range(dpos, SECTOR as usize)?;
    let fields = [
        (140usize, false, le32(&d, 140)),
        (144, false, le32(&d, 144)),
        (
            148,
            true,
            u32::from_be_bytes([d[148], d[149], d[150], d[151]]),
        ),
        (
            152,
            true,
            u32::from_be_bytes([d[152], d[153], d[154], d[155]]),
        ),
    ];
    for (field, big, loc) in fields {
        if loc == 0 {
            continue;
        }
        let table = if big { &m } else { &l };
        if table.len() as u64 <= room {
            p.write_range(u64::from(loc) * SECTOR, table)?;
            continue;
        }
        let lba = match p.alloc(table.len() as u64)? {
            Ok(l) => l,
            Err(why) => return Ok(Err(format!("path table: {why}"))),
        };
        let Ok(lba32) = u32::try_from(lba) else {
            return Ok(Err(format!("path table: block {lba} is past 2^32")));
        };
        p.write_data(lba, table);
        let v = if big {
            lba32.to_be_bytes()
        } else {
            lba32.to_le_bytes()
        };
        p.write_range(dpos + field as u64, &v)?;
    }
    p.write_range(dpos + 132, &both32(new_size))?;
    Ok(Ok(()))
}

/// Why the part of the volume after `limit` cannot move up, if it cannot: an Apple partition
/// map (we do not rewrite it), or data that no partition table describes (nothing we know of
/// would follow it).
fn unmovable_tail(vol: &Volume, hybrid: &Hybrid, limit: u64, vb: u64) -> Result<Option<NoFit>> {
    let head = vol.src.read_vec(0, 1024)?;
    if &head[512..514] == b"PM" || &head[..2] == b"ER" {
        return Ok(Some(
            "the image has an Apple partition map, which growing would leave stale".into(),
        ));
    }
    // Byte ranges that move with their tables: partitions past the point, the backup GPT.
    let mut parts: Vec<(u64, u64)> = hybrid
        .partition_ranges()
        .into_iter()
        .filter(|(start, _)| *start >= limit * 4)
        .map(|(start, len)| (start * 512, start * 512 + len))
        .collect();
    if let Some(backup) = hybrid.gpt_backup_lba
        && backup * 512 + 512 <= vol.src.len()
    {
        parts.push((backup * 512, (backup + 1) * 512));
        let h = vol.src.read_vec(backup * 512, 512)?;
        if &h[..8] == b"EFI PART" {
            let at = le64(&h, 72) * 512;
            parts.push((at, at + u64::from(le32(&h, 80)) * u64::from(le32(&h, 84))));
        }
    }
    // Sector by sector: a GPT array may start mid-block.
    let end = (vb * SECTOR).min(vol.src.len());
    let data = vol
        .src
        .read_vec(limit * SECTOR, end.saturating_sub(limit * SECTOR) as usize)?;
    for (i, sector) in data.chunks(512).enumerate() {
        let off = limit * SECTOR + i as u64 * 512;
        if parts.iter().any(|(a, b)| off >= *a && off < *b) {
            continue;
        }
        if sector.iter().any(|b| *b != 0) {
            return Ok(Some(format!(
                "byte {off} after the free space holds data no table describes"
            )));
        }
    }
    Ok(None)
}

/// The `PX` entry of a record (in the record itself, after `skip` bytes of the system use
/// area): its byte offset in `rec`.
fn px_at(rec: &[u8], skip: u8) -> Option<usize> {
    let su = su_start(rec, skip);
    let mut found = None;
    if su < rec.len() {
        walk_susp_area(&rec[su..], |sig, at, e| {
            if found.is_none() && sig == *b"PX" && e.len() >= 20 {
                found = Some(su + at);
            }
        });
    }
    found
}

/// Rock Ridge link count of a record, when its `PX` is in the record.
fn px_links(rec: &[u8], skip: u8) -> Option<u32> {
    px_at(rec, skip).map(|at| le32(rec, at + 12))
}

/// Add `n` to a record's Rock Ridge link count; false when it has no `PX` in the record.
fn bump_px_links(rec: &mut [u8], skip: u8, n: u32) -> bool {
    match px_links(rec, skip) {
        Some(v) => set_px_links(rec, skip, v.saturating_add(n)),
        None => false,
    }
}

/// Set a record's Rock Ridge link count; false when it has no `PX` in the record.
fn set_px_links(rec: &mut [u8], skip: u8, v: u32) -> bool {
    let Some(at) = px_at(rec, skip) else {
        return false;
    };
    rec[at + 12..at + 20].copy_from_slice(&both32(v));
    true
}

/// Set the extent (location and data length, both-endian) of the directory record at the
/// start of `rec`.
fn set_extent(rec: &mut [u8], lba: u32, size: u32) {
    rec[2..10].copy_from_slice(&both32(lba));
    rec[10..18].copy_from_slice(&both32(size));
}

fn set32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn set64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// CHS of a 512-byte sector with isohybrid's 64 heads and 32 sectors per track, saturated
/// at cylinder 1023 (as xorriso and isohybrid write it).
fn chs(lba: u64) -> [u8; 3] {
    let (heads, sectors) = (64u64, 32u64);
    let c = lba / (heads * sectors);
    let (c, h, s) = if c > 1023 {
        (1023, heads - 1, sectors)
    } else {
        (c, (lba / sectors) % heads, lba % sectors + 1)
    };
    [
        h as u8,
        (s as u8) | (((c >> 2) & 0xc0) as u8),
        (c & 0xff) as u8,
    ]
}

/// Make everything that points past `ins.at` follow the insertion (see the module docs).
fn follow_insert(p: &mut Planner<'_>, ins: Insert) -> Result<std::result::Result<(), NoFit>> {
    let d_blocks = ins.len / SECTOR;
    let (at_s, d_s) = (ins.at / 512, ins.len / 512);
    let shift_s = |x: u64| if x >= at_s { x + d_s } else { x };

    // Volume space size of every primary/supplementary descriptor.
    for lba in 16..16 + 64u64 {
        let b = p.block(lba)?;
        if &b[1..6] != b"CD001" || b[0] == 255 {
            break;
        }
        if b[0] == 1 || b[0] == 2 {
            let Ok(n) = u32::try_from(u64::from(le32(b, 80)) + d_blocks) else {
                return Ok(Err("the volume would pass 2^32 blocks".into()));
            };
            b[80..88].copy_from_slice(&both32(n));
        }
    }

    // MBR: partitions after the point move, the one across it grows.
    let mbr = p.read_range(0, 512)?;
    if mbr[510] == 0x55 && mbr[511] == 0xaa {
        let mut m = mbr.clone();
        for i in 0..4usize {
            let e = 446 + 16 * i;
            let (start, size) = (u64::from(le32(&m, e + 8)), u64::from(le32(&m, e + 12)));
            if size == 0 || size == u64::from(u32::MAX) {
                continue;
            }
            let (ns, nz) = if start >= at_s {
                (start + d_s, size)
            } else if start + size > at_s {
                (start, size + d_s)
            } else {
                continue;
            };
            let (Ok(ns32), Ok(nz32)) = (u32::try_from(ns), u32::try_from(nz)) else {
                return Ok(Err(format!("MBR partition {} would pass 2 TiB", i + 1)));
            };
            if m[e + 1..e + 4] == chs(start) && m[e + 5..e + 8] == chs(start + size - 1) {
                m[e + 1..e + 4].copy_from_slice(&chs(ns));
                m[e + 5..e + 8].copy_from_slice(&chs(ns + nz - 1));
            }
            set32(&mut m, e + 8, ns32);
            set32(&mut m, e + 12, nz32);
        }
        p.write_range(0, &m)?;
    }

    // GPT: both headers and entry arrays, CRCs recomputed.
    let hdr = p.read_range(512, 512)?;
    if &hdr[..8] == b"EFI PART" {
        let hsize = le32(&hdr, 12) as usize;
        let (alt, last_usable) = (le64(&hdr, 32), le64(&hdr, 48));
        let (entries_lba, count, esize) = (le64(&hdr, 72), le32(&hdr, 80), le32(&hdr, 84));
        if !(92..=512).contains(&hsize)
            || !(128..=4096).contains(&esize)
            || u64::from(count) * u64::from(esize) > 1 << 20
        {
            return Ok(Err("the GPT header has sizes we do not rewrite".into()));
        }
        let mut entries = p.read_range(entries_lba * 512, (count * esize) as usize)?;
        for e in entries.chunks_exact_mut(esize as usize) {
            if e[..16].iter().all(|b| *b == 0) {
                continue;
            }
            let (first, last) = (le64(e, 32), le64(e, 40));
            if first >= at_s {
                set64(e, 32, first + d_s);
                set64(e, 40, last + d_s);
            } else if last >= at_s {
                set64(e, 40, last + d_s);
            }
        }
        let backup = p.read_range(alt * 512, 512)?;
        if &backup[..8] != b"EFI PART" {
            return Ok(Err(format!("no backup GPT header at sector {alt}")));
        }
        let backup_entries = le64(&backup, 72);
        let ecrc = crc32fast::hash(&entries);
        let seal = |h: &mut Vec<u8>| {
            set32(h, 16, 0);
            let c = crc32fast::hash(&h[..hsize]);
            set32(h, 16, c);
        };
        let mut h = hdr.clone();
        set64(&mut h, 32, shift_s(alt));
        set64(&mut h, 48, shift_s(last_usable));
        set32(&mut h, 88, ecrc);
        seal(&mut h);
        let mut b = h.clone();
        set64(&mut b, 24, shift_s(alt));
        set64(&mut b, 32, le64(&hdr, 24));
        set64(&mut b, 72, shift_s(backup_entries));
        seal(&mut b);
        p.write_range(512, &h)?;
        p.write_range(entries_lba * 512, &entries)?;
        // Input offsets past the point: they move with the tail.
        p.write_range(alt * 512, &b)?;
        p.write_range(backup_entries * 512, &entries)?;
    }

    // El Torito: load RBAs of images past the point (an appended ESP) move.
    if let Some(cat) = p.vol.boot_catalog_lba {
        let b = p.block(u64::from(cat))?;
        let mut overflow = false;
        let mut fix = |e: &mut [u8]| {
            let rba = u64::from(le32(e, 8));
            if rba * SECTOR >= ins.at {
                match u32::try_from(rba + d_blocks) {
                    Ok(n) => set32(e, 8, n),
                    Err(_) => overflow = true,
                }
            }
        };
        fix(&mut b[32..64]);
        let mut at = 64;
        while at + 32 <= b.len() && (b[at] == 0x90 || b[at] == 0x91) {
            let last = b[at] == 0x91;
            let n = usize::from(le16(b, at + 2));
            at += 32;
            for _ in 0..n {
                if at + 32 > b.len() {
                    break;
                }
                fix(&mut b[at..at + 32]);
                at += 32;
                while at + 32 <= b.len() && b[at] == 0x44 {
                    at += 32;
                }
            }
            if last {
                break;
            }
        }
        if overflow {
            return Ok(Err("a boot image would pass 2^32 blocks".into()));
        }
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chs_matches_isohybrid_geometry() {
        assert_eq!(chs(0), [0, 1, 0]);
        // Last sector of cylinder 0: head 63, sector 32.
        assert_eq!(chs(2047), [63, 32, 0]);
        // Cylinder 300 = 0x12c: high bits 0x100 >> 2 = 0x40 go with the sector.
        assert_eq!(chs(300 * 2048), [0, 1 | 0x40, 0x2c]);
        // Past cylinder 1023 it saturates.
        assert_eq!(chs(5_000_000), [63, 32 | 0xc0, 0xff]);
    }

    #[test]
    fn read_output_maps_the_insertion_and_overlays_writes() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("in");
        let input: Vec<u8> = (0..8 * SECTOR).map(|i| (i / SECTOR + 1) as u8).collect();
        std::fs::write(&path, &input)?;
        let f = std::fs::File::open(&path)?;
        let plan = PatchPlan {
            writes: vec![(3 * SECTOR, vec![0xaa; 4])],
            notes: Vec::new(),
            insert: Some(Insert {
                at: 5 * SECTOR,
                len: 2 * SECTOR,
            }),
            volume_blocks: 10,
        };
        assert_eq!(plan.output_len(input.len() as u64), 10 * SECTOR);
        let mut out = vec![0u8; 10 * SECTOR as usize];
        // Odd-sized pieces across every boundary.
        let mut at = 0usize;
        while at < out.len() {
            let n = 1000.min(out.len() - at);
            plan.read_output(&f, at as u64, &mut out[at..at + n])?;
            at += n;
        }
        let block = |b: u64| out[(b * SECTOR) as usize + 100];
        assert_eq!(
            (0..10).map(block).collect::<Vec<u8>>(),
            vec![1, 2, 3, 4, 5, 0, 0, 6, 7, 8]
        );
        assert_eq!(
            &out[3 * SECTOR as usize..3 * SECTOR as usize + 5],
            &[0xaa, 0xaa, 0xaa, 0xaa, 4]
        );
        Ok(())
    }
}
