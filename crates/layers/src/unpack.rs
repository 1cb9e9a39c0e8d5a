//! Safe tar unpacking into an overlay-format layer directory.
//!
//! Every entry is created relative to an open directory file descriptor, walking the parent
//! path one component at a time with `O_NOFOLLOW`, so a symlink the archive created is never
//! followed. OCI whiteouts are converted to overlayfs ones on the way.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timestamps, XattrFlags};
use rustix::io::Errno;
use tar::EntryType;

use crate::fsutil::{fd_path, open_dir, open_dir_at, remove_tree_at};
use crate::{Error, OPAQUE_MARKER, OPAQUE_XATTR, Result, WHITEOUT_PREFIX};

/// Bounds on what one archive may unpack. Defaults: 16 GiB per entry, 64 GiB in total,
/// 4 million entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Largest size one entry may declare, in bytes (default 16 GiB).
    pub max_entry_size: u64,
    /// Largest total of all entry sizes, in bytes (default 64 GiB).
    pub max_total_size: u64,
    /// Largest number of entries (default 4 000 000).
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entry_size: 16 << 30,
            max_total_size: 64 << 30,
            max_entries: 4_000_000,
        }
    }
}

/// What [`unpack_tar`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct UnpackStats {
    /// Entries read (including whiteouts).
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// `.wh.NAME` entries turned into whiteouts.
    pub whiteouts: u64,
    /// `.wh..wh..opq` markers turned into opaque directories.
    pub opaque_dirs: u64,
    /// Directories the archive needed but did not list (relative paths, `""` = the layer
    /// root), sorted. They get [`IMPLICIT_DIR_MODE`], owner 0:0 and mtime 0 in the layer;
    /// a stack gives them the metadata of the same directory below (see
    /// [`crate::Store::stack`]).
    #[serde(skip)]
    pub implicit_dirs: Vec<PathBuf>,
}

/// Mode of a directory that a layer needs but does not list (`a/` for an entry `a/b`), when
/// no layer below has it either (the same default as `mkdir -p` under umask 022).
pub const IMPLICIT_DIR_MODE: u32 = 0o755;

/// Lets the tar reader see zero padding after the last member when the stream stops inside
/// that member's padding (Go's archive/tar, as `umoci insert` uses it, may end a stream
/// without the padding and the two zero end blocks). Only the padding is ever synthesised:
/// a stream that stops inside a header or a member's data still fails.
struct PadTail<R> {
    inner: R,
    pos: u64,
    /// `(data_end, pad_end)` of the last member read completely.
    window: std::rc::Rc<Cell<(u64, u64)>>,
}

impl<R: Read> Read for PadTail<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 || buf.is_empty() {
            self.pos += n as u64;
            return Ok(n);
        }
        let (data_end, pad_end) = self.window.get();
        if self.pos >= data_end && self.pos < pad_end {
            let k = usize::try_from(pad_end - self.pos)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            buf[..k].fill(0);
            self.pos += k as u64;
            return Ok(k);
        }
        Ok(0)
    }
}

/// Metadata applied to a directory after all entries are written (a read-only directory
/// must still accept its children, and children change the directory's mtime).
struct DirMeta {
    comps: Vec<OsString>,
    uid: u64,
    gid: u64,
    mode: u32,
    mtime: u64,
}

struct Unpacker<'a> {
    root: OwnedFd,
    root_path: &'a Path,
    archive: &'a str,
    limits: &'a Limits,
    chown: bool,
    stats: UnpackStats,
    total: u64,
    dirs: Vec<DirMeta>,
    /// The last parent directory opened, by components (entries come grouped by directory).
    cached: Option<(Vec<OsString>, OwnedFd)>,
    /// Directories created because an entry needed them, not listed themselves (yet).
    implicit: BTreeSet<Vec<OsString>>,
    /// Whether the archive has an entry for its root (`./`).
    root_listed: bool,
}

/// How [`Unpacker::open_parent`] treats the path it walks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Walk {
    /// For a new entry: create missing directories, refuse anything else on the way.
    Create,
    /// For a whiteout or opaque marker: a non-directory on the way (replaced earlier in the
    /// same layer) means the target no longer exists, so there is nothing to hide.
    Whiteout,
}

/// Unpack the (already decompressed) tar stream `reader` into the existing directory `dest`,
/// converting OCI whiteouts to overlayfs whiteouts. `archive` names the source in errors.
///
/// Refuses (with [`Error::UnsafeEntry`] or [`Error::TooLarge`]) absolute paths, `..`,
/// entries that pass through a symlink, symlinks whose relative target leaves the layer,
/// hardlinks to anything outside it, and sizes beyond `limits`. Absolute symlink targets are
/// kept: they resolve against the layer's root when it is used as a root filesystem.
/// Owners are restored only when running as root.
pub fn unpack_tar(
    reader: impl Read,
    dest: &Path,
    archive: &str,
    limits: &Limits,
) -> Result<UnpackStats> {
    let mut u = Unpacker {
        root: open_dir(dest)?,
        root_path: dest,
        archive,
        limits,
        chown: rustix::process::geteuid().is_root(),
        stats: UnpackStats::default(),
        total: 0,
        dirs: Vec::new(),
        cached: None,
        implicit: BTreeSet::new(),
        root_listed: false,
    };
    let window = std::rc::Rc::new(Cell::new((0, 0)));
    let mut ar = tar::Archive::new(PadTail {
        inner: reader,
        pos: 0,
        window: window.clone(),
    });
    let entries = ar
        .entries()
        .map_err(|e| Error::io("reading tar", dest, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| u.bad_archive(e))?;
        let data_end = entry.raw_file_position() + entry.header().entry_size().unwrap_or(0);
        u.entry(entry)?;
        window.set((data_end, data_end.div_ceil(512) * 512));
    }
    u.finish_dirs()?;
    Ok(u.stats)
}

/// Longest entry path or hardlink target accepted (Linux's `PATH_MAX`).
pub(crate) const MAX_PATH: usize = 4096;

/// Split an archive path into components, refusing absolute paths, `..` and paths longer
/// than [`MAX_PATH`].
pub(crate) fn entry_components(raw: &[u8]) -> std::result::Result<Vec<OsString>, String> {
    if raw.len() > MAX_PATH {
        // No path over PATH_MAX can be opened; walking one (a 10 MB PAX path is five
        // million nested directories) would only burn time and inodes.
        return Err(format!(
            "path of {} bytes is longer than PATH_MAX ({MAX_PATH})",
            raw.len()
        ));
    }
    if raw.first() == Some(&b'/') {
        return Err("absolute path".into());
    }
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("path contains '..'".into()),
            c => out.push(OsString::from_vec(c.to_vec())),
        }
    }
    Ok(out)
}

/// Whether a symlink at `parent/NAME` with a relative `target` resolves (lexically) above the
/// layer root. Absolute targets resolve against the layer root and never escape.
pub(crate) fn symlink_escapes(parent: &[OsString], target: &[u8]) -> bool {
    if target.first() == Some(&b'/') {
        return false;
    }
    let mut depth = parent.len() as i64;
    for c in target.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            _ => depth += 1,
        }
    }
    false
}

fn display(comps: &[OsString]) -> PathBuf {
    comps.iter().collect()
}

/// The `GNU.sparse.*` PAX records of a member.
#[derive(Default)]
struct PaxSparse {
    keys: Vec<(String, Vec<u8>)>,
}

impl PaxSparse {
    fn get(&self, k: &str) -> Option<&[u8]> {
        self.keys
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_slice())
    }

    /// The real name and size of a PAX format 1.0 sparse member (what GNU tar writes with
    /// `--sparse --format=pax`); other sparse formats (0.0, 0.1) are refused.
    fn pax_1_0(&self) -> std::result::Result<(Vec<u8>, u64), String> {
        let version = (self.get("major"), self.get("minor"));
        if version != (Some(b"1".as_slice()), Some(b"0".as_slice())) {
            return Err(format!(
                "PAX sparse format {}.{} is not supported (only 1.0, GNU tar's default)",
                String::from_utf8_lossy(version.0.unwrap_or(b"0")),
                String::from_utf8_lossy(version.1.unwrap_or(b"?"))
            ));
        }
        let name = self
            .get("name")
            .ok_or("PAX sparse member without GNU.sparse.name")?;
        let size = self
            .get("realsize")
            .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
            .ok_or("PAX sparse member without a valid GNU.sparse.realsize")?;
        Ok((name.to_vec(), size))
    }
}

/// Read one decimal number terminated by a newline from a PAX 1.0 sparse map.
fn map_number(r: &mut impl Read, consumed: &mut u64) -> std::io::Result<u64> {
    let mut v: u64 = 0;
    let mut digits = 0;
    loop {
        let mut b = [0u8; 1];
        r.read_exact(&mut b)?;
        *consumed += 1;
        match b[0] {
            b'\n' if digits > 0 => return Ok(v),
            c @ b'0'..=b'9' if digits < 20 => {
                v = v
                    .checked_mul(10)
                    .and_then(|v| v.checked_add(u64::from(c - b'0')))
                    .ok_or_else(|| bad_map("number too large"))?;
                digits += 1;
            }
            _ => return Err(bad_map("not a decimal number")),
        }
    }
}

fn bad_map(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("malformed PAX sparse map: {what}"),
    )
}

/// Write a PAX 1.0 sparse member's data (map, padding, then the data chunks) into `file` as
/// a sparse file of `size` bytes; returns the size written (for the caller's check).
fn write_pax_sparse(
    r: &mut impl Read,
    file: &mut std::fs::File,
    size: u64,
) -> std::io::Result<u64> {
    let mut consumed = 0;
    let count = map_number(r, &mut consumed)?;
    if count > 1 << 20 {
        return Err(bad_map("too many chunks"));
    }
    let mut chunks = Vec::new();
    let mut end = 0u64;
    for _ in 0..count {
        let off = map_number(r, &mut consumed)?;
        let len = map_number(r, &mut consumed)?;
        let stop = off
            .checked_add(len)
            .ok_or_else(|| bad_map("chunk overflows"))?;
        if off < end || stop > size {
            return Err(bad_map("chunks overlap or pass the real size"));
        }
        end = stop;
        chunks.push((off, len));
    }
    let pad = consumed.div_ceil(512) * 512 - consumed;
    std::io::copy(&mut r.take(pad), &mut std::io::sink())?;
    for (off, len) in chunks {
        file.seek(std::io::SeekFrom::Start(off))?;
        let n = std::io::copy(&mut r.take(len), file)?;
        if n != len {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    file.set_len(size)?;
    Ok(size)
}

/// Holes an old-GNU sparse member may have (its holes are read through as zeros).
const MAX_GNU_SPARSE_HOLES: u64 = 1 << 30;

/// Copy `r` into `file`, seeking over all-zero blocks so they stay holes (the tar reader
/// expands a GNU sparse member's holes into zeros); returns the bytes consumed.
fn copy_with_holes(r: &mut impl Read, file: &mut std::fs::File, size: u64) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf)?;
        if k == 0 {
            break;
        }
        if buf[..k].iter().all(|b| *b == 0) {
            file.seek(std::io::SeekFrom::Current(k as i64))?;
        } else {
            file.write_all(&buf[..k])?;
        }
        n += k as u64;
    }
    file.set_len(n.min(size))?;
    Ok(n)
}

impl Unpacker<'_> {
    fn bad_archive(&self, e: std::io::Error) -> Error {
        Error::io("reading tar entry from", PathBuf::from(self.archive), e)
    }

    fn refuse(&self, entry: &[u8], reason: impl Into<String>) -> Error {
        Error::UnsafeEntry {
            archive: self.archive.to_owned(),
            entry: String::from_utf8_lossy(entry).into_owned(),
            reason: reason.into(),
        }
    }

    fn sys(&self, action: &'static str, comps: &[OsString], e: Errno) -> Error {
        Error::sys(action, self.root_path.join(display(comps)), e)
    }

    /// Open (creating missing directories) the directory `comps` under the root, refusing to
    /// pass through anything that is not a real directory.
    fn open_parent(&mut self, raw: &[u8], comps: &[OsString]) -> Result<OwnedFd> {
        match self.walk(raw, comps, Walk::Create)? {
            Some(fd) => Ok(fd),
            // Walk::Create never returns None.
            None => Err(self.refuse(raw, "parent is not a directory")),
        }
    }

    /// Walk to the directory `comps` (see [`Walk`]); `None` when a whiteout's parent is gone.
    fn walk(&mut self, raw: &[u8], comps: &[OsString], how: Walk) -> Result<Option<OwnedFd>> {
        if let Some((c, fd)) = &self.cached
            && c.as_slice() == comps
        {
            return fd
                .try_clone()
                .map(Some)
                .map_err(|e| Error::io("duplicating fd of", display(comps), e));
        }
        let mut cur = self
            .root
            .try_clone()
            .map_err(|e| Error::io("duplicating fd of", self.root_path, e))?;
        for (i, c) in comps.iter().enumerate() {
            let next = match open_dir_at(&cur, c) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => {
                    rustix::fs::mkdirat(&cur, c.as_os_str(), Mode::from_raw_mode(0o755))
                        .map_err(|e| self.sys("creating directory", &comps[..=i], e))?;
                    self.implicit.insert(comps[..=i].to_vec());
                    open_dir_at(&cur, c)
                        .map_err(|e| self.sys("opening directory", &comps[..=i], e))?
                }
                Err(Errno::LOOP) | Err(Errno::NOTDIR) if how == Walk::Whiteout => {
                    return Ok(None);
                }
                Err(Errno::LOOP) | Err(Errno::NOTDIR) => {
                    let what =
                        match rustix::fs::statat(&cur, c.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
                            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                                "a symlink"
                            }
                            _ => "not a directory",
                        };
                    return Err(self.refuse(
                        raw,
                        format!(
                            "its parent {} is {what}; refusing to write through it",
                            display(&comps[..=i]).display()
                        ),
                    ));
                }
                Err(e) => return Err(self.sys("opening directory", &comps[..=i], e)),
            };
            cur = next;
        }
        let keep = cur
            .try_clone()
            .map_err(|e| Error::io("duplicating fd of", display(comps), e))?;
        self.cached = Some((comps.to_vec(), keep));
        Ok(Some(cur))
    }

    /// Make room for a new entry at `name`: an existing non-directory is replaced, an existing
    /// directory is kept when the new entry is a directory too, and otherwise removed with
    /// everything below it (OCI applies entries in order: the later one replaces the whole
    /// subtree). Returns whether a directory already exists there.
    fn clear_slot(
        &mut self,
        parent: &OwnedFd,
        name: &OsStr,
        comps: &[OsString],
        new_is_dir: bool,
    ) -> Result<bool> {
        match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => {
                let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
                if is_dir && new_is_dir {
                    return Ok(true);
                }
                if is_dir {
                    // The cached parent fd may be this directory (or below it).
                    self.cached = None;
                    remove_tree_at(parent, name).map_err(|e| self.sys("replacing", comps, e))?;
                    // What was below is gone: forget its pending metadata.
                    self.dirs.retain(|d| !d.comps.starts_with(comps));
                    self.implicit.retain(|d| !d.starts_with(comps));
                } else {
                    rustix::fs::unlinkat(parent, name, AtFlags::empty())
                        .map_err(|e| self.sys("replacing", comps, e))?;
                }
                Ok(false)
            }
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(self.sys("inspecting", comps, e)),
        }
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<()> {
        let mut raw = entry.path_bytes().into_owned();
        let ty = entry.header().entry_type();
        if matches!(
            ty,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            return Ok(());
        }
        self.stats.entries += 1;
        if self.stats.entries > self.limits.max_entries {
            return Err(Error::TooLarge {
                archive: self.archive.to_owned(),
                entry: String::from_utf8_lossy(&raw).into_owned(),
                what: "entry count",
                size: self.stats.entries,
                limit: self.limits.max_entries,
            });
        }
        let mut xattrs = Vec::new();
        let mut sparse = PaxSparse::default();
        if let Some(pax) = entry.pax_extensions().map_err(|e| self.bad_archive(e))? {
            for ext in pax {
                let ext = ext.map_err(|e| self.bad_archive(e))?;
                let Ok(key) = ext.key() else { continue };
                if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                    if name.starts_with("trusted.overlay.") {
                        return Err(
                            self.refuse(&raw, format!("carries overlayfs-private xattr {name}"))
                        );
                    }
                    xattrs.push((name.to_owned(), ext.value_bytes().to_vec()));
                } else if let Some(k) = key.strip_prefix("GNU.sparse.") {
                    sparse.keys.push((k.to_owned(), ext.value_bytes().to_vec()));
                }
            }
        }
        // The size of the file (for a sparse member: its apparent size, holes included).
        let size = if sparse.keys.is_empty() {
            entry.size()
        } else {
            let (name, real) = sparse.pax_1_0().map_err(|r| self.refuse(&raw, r))?;
            raw = name;
            real
        };
        if size > self.limits.max_entry_size {
            return Err(self.too_large(&raw, "entry size", size, self.limits.max_entry_size));
        }
        self.total = self.total.saturating_add(size);
        if self.total > self.limits.max_total_size {
            return Err(self.too_large(&raw, "total size", self.total, self.limits.max_total_size));
        }
        let comps = entry_components(&raw).map_err(|r| self.refuse(&raw, r))?;
        let h = entry.header();
        let mode = h.mode().map_err(|e| self.bad_archive(e))? & 0o7777;
        let uid = h.uid().map_err(|e| self.bad_archive(e))?;
        let gid = h.gid().map_err(|e| self.bad_archive(e))?;
        let mtime = h.mtime().map_err(|e| self.bad_archive(e))?;

        let Some((name, parent_comps)) = comps.split_last() else {
            // The layer root itself ("./"): its metadata applies to the root directory.
            if ty == EntryType::Directory {
                self.set_xattrs_fd(&self.root.as_fd(), &comps, &xattrs)?;
                self.root_listed = true;
                self.dirs.push(DirMeta {
                    comps,
                    uid,
                    gid,
                    mode,
                    mtime,
                });
            }
            return Ok(());
        };
        let name = name.clone();
        let nb = name.as_bytes();

        if nb == OPAQUE_MARKER.as_bytes() {
            let Some(parent) = self.walk(&raw, parent_comps, Walk::Whiteout)? else {
                tracing::debug!(entry = %String::from_utf8_lossy(&raw), "opaque marker under a replaced directory: nothing to hide");
                return Ok(());
            };
            rustix::fs::fsetxattr(&parent, OPAQUE_XATTR, b"y", XattrFlags::empty())
                .map_err(|e| self.sys("marking opaque", parent_comps, e))?;
            self.stats.opaque_dirs += 1;
            return Ok(());
        }
        if let Some(hidden) = nb.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            if hidden.starts_with(WHITEOUT_PREFIX.as_bytes()) {
                // Other `.wh..wh.` names are AUFS bookkeeping with no overlay meaning.
                tracing::debug!(entry = %String::from_utf8_lossy(&raw), "skipping AUFS metadata entry");
                return Ok(());
            }
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(self.refuse(&raw, "whiteout names no file"));
            }
            let Some(parent) = self.walk(&raw, parent_comps, Walk::Whiteout)? else {
                // An earlier entry of this layer replaced a parent by a non-directory: the
                // target no longer exists, so the whiteout is a no-op (nothing is followed).
                tracing::debug!(entry = %String::from_utf8_lossy(&raw), "whiteout under a replaced directory: nothing to hide");
                return Ok(());
            };
            let hidden = OsStr::from_bytes(hidden);
            let mut wcomps = parent_comps.to_vec();
            wcomps.push(hidden.to_owned());
            self.clear_slot(&parent, hidden, &wcomps, false)?;
            rustix::fs::mknodat(
                &parent,
                hidden,
                FileType::CharacterDevice,
                Mode::empty(),
                rustix::fs::makedev(0, 0),
            )
            .map_err(|e| self.sys("creating whiteout", &wcomps, e))?;
            self.stats.whiteouts += 1;
            return Ok(());
        }
        let parent = self.open_parent(&raw, parent_comps)?;

        let ts = Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: mtime as i64,
                tv_nsec: 0,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: mtime as i64,
                tv_nsec: 0,
            },
        };
        let owner = (
            rustix::fs::Uid::from_raw(uid as u32),
            rustix::fs::Gid::from_raw(gid as u32),
        );
        match ty {
            EntryType::Directory => {
                if !self.clear_slot(&parent, &name, &comps, true)? {
                    rustix::fs::mkdirat(&parent, name.as_os_str(), Mode::from_raw_mode(0o700))
                        .map_err(|e| self.sys("creating directory", &comps, e))?;
                }
                let dir = open_dir_at(&parent, &name)
                    .map_err(|e| self.sys("opening directory", &comps, e))?;
                self.set_xattrs_fd(&dir.as_fd(), &comps, &xattrs)?;
                self.implicit.remove(&comps);
                self.dirs.push(DirMeta {
                    comps,
                    uid,
                    gid,
                    mode,
                    mtime,
                });
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.clear_slot(&parent, &name, &comps, false)?;
                let fd = rustix::fs::openat(
                    &parent,
                    name.as_os_str(),
                    OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::WRONLY
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| self.sys("creating file", &comps, e))?;
                let mut file = std::fs::File::from(fd);
                let werr = |e| Error::io("writing", self.root_path.join(display(&comps)), e);
                let n = if !sparse.keys.is_empty() {
                    write_pax_sparse(&mut entry, &mut file, size).map_err(werr)?
                } else if ty.is_gnu_sparse() {
                    // The tar reader expands an old-GNU member's holes into zeros that must be
                    // read through: bound that work (PAX sparse members are written sparse).
                    let stored = entry.header().entry_size().unwrap_or(0);
                    if size.saturating_sub(stored) > MAX_GNU_SPARSE_HOLES {
                        drop(file);
                        let _ = rustix::fs::unlinkat(
                            &parent,
                            name.as_os_str(),
                            rustix::fs::AtFlags::empty(),
                        );
                        return Err(self.refuse(
                            &raw,
                            format!(
                                "old-GNU sparse member with {} bytes of holes (more than {} \
                                 are refused; PAX sparse members are supported)",
                                size - stored,
                                MAX_GNU_SPARSE_HOLES
                            ),
                        ));
                    }
                    copy_with_holes(&mut (&mut entry).take(size), &mut file, size).map_err(werr)?
                } else {
                    std::io::copy(&mut (&mut entry).take(size), &mut file).map_err(werr)?
                };
                if n != size {
                    return Err(self.bad_archive(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!(
                            "{}: {n} of {size} bytes before the archive ended",
                            String::from_utf8_lossy(&raw)
                        ),
                    )));
                }
                self.stats.bytes += n;
                if self.chown {
                    rustix::fs::fchown(&file, Some(owner.0), Some(owner.1))
                        .map_err(|e| self.sys("chown", &comps, e))?;
                }
                rustix::fs::fchmod(&file, Mode::from_raw_mode(mode))
                    .map_err(|e| self.sys("chmod", &comps, e))?;
                self.set_xattrs_fd(&file.as_fd(), &comps, &xattrs)?;
                rustix::fs::futimens(&file, &ts)
                    .map_err(|e| self.sys("setting mtime of", &comps, e))?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                if target.is_empty() {
                    return Err(self.refuse(&raw, "symlink without a target"));
                }
                if symlink_escapes(parent_comps, &target) {
                    return Err(self.refuse(
                        &raw,
                        format!(
                            "symlink target {:?} leads outside the layer",
                            String::from_utf8_lossy(&target)
                        ),
                    ));
                }
                self.clear_slot(&parent, &name, &comps, false)?;
                rustix::fs::symlinkat(OsStr::from_bytes(&target), &parent, name.as_os_str())
                    .map_err(|e| self.sys("creating symlink", &comps, e))?;
                self.finish_node(&parent, &name, &comps, owner, None, &ts, &xattrs)?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let tcomps = entry_components(&target).map_err(|r| {
                    self.refuse(
                        &raw,
                        format!(
                            "hardlink target {:?}: {r}",
                            String::from_utf8_lossy(&target)
                        ),
                    )
                })?;
                let Some((tname, tparent)) = tcomps.split_last() else {
                    return Err(self.refuse(&raw, "hardlink to the layer root"));
                };
                let tdir = self.open_parent(&raw, tparent)?;
                match rustix::fs::statat(&tdir, tname.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                        return Err(self.refuse(&raw, "hardlink to a directory"));
                    }
                    Ok(_) => {}
                    Err(Errno::NOENT) => {
                        return Err(self.refuse(
                            &raw,
                            format!(
                                "hardlink target {:?} is not in the layer",
                                String::from_utf8_lossy(&target)
                            ),
                        ));
                    }
                    Err(e) => return Err(self.sys("inspecting hardlink target", &tcomps, e)),
                }
                if tcomps == comps {
                    return Ok(());
                }
                // The parent may have been re-opened for the target: open ours again.
                let parent = self.open_parent(&raw, parent_comps)?;
                self.clear_slot(&parent, &name, &comps, false)?;
                rustix::fs::linkat(
                    &tdir,
                    tname.as_os_str(),
                    &parent,
                    name.as_os_str(),
                    AtFlags::empty(),
                )
                .map_err(|e| self.sys("creating hardlink", &comps, e))?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let h = entry.header();
                // A FIFO has no device number: its fields may be NUL-filled (GNU tar and
                // umoci ignore them), so only devices read them.
                let (major, minor) = if ty == EntryType::Fifo {
                    (0, 0)
                } else {
                    (
                        h.device_major()
                            .map_err(|e| self.bad_archive(e))?
                            .unwrap_or(0),
                        h.device_minor()
                            .map_err(|e| self.bad_archive(e))?
                            .unwrap_or(0),
                    )
                };
                let ft = match ty {
                    EntryType::Char => FileType::CharacterDevice,
                    EntryType::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                self.clear_slot(&parent, &name, &comps, false)?;
                rustix::fs::mknodat(
                    &parent,
                    name.as_os_str(),
                    ft,
                    Mode::from_raw_mode(mode),
                    rustix::fs::makedev(major, minor),
                )
                .map_err(|e| self.sys("creating device node", &comps, e))?;
                self.finish_node(&parent, &name, &comps, owner, Some(mode), &ts, &xattrs)?;
            }
            other => {
                return Err(self.refuse(&raw, format!("unsupported entry type {other:?}")));
            }
        }
        Ok(())
    }

    fn too_large(&self, raw: &[u8], what: &'static str, size: u64, limit: u64) -> Error {
        Error::TooLarge {
            archive: self.archive.to_owned(),
            entry: String::from_utf8_lossy(raw).into_owned(),
            what,
            size,
            limit,
        }
    }

    /// Owner, mode, xattrs and times of a non-regular, non-directory node created at
    /// `parent/name` (never following it).
    #[allow(clippy::too_many_arguments)] // one call site per node type; a struct would only rename them
    fn finish_node(
        &self,
        parent: &OwnedFd,
        name: &OsStr,
        comps: &[OsString],
        owner: (rustix::fs::Uid, rustix::fs::Gid),
        mode: Option<u32>,
        ts: &Timestamps,
        xattrs: &[(String, Vec<u8>)],
    ) -> Result<()> {
        if self.chown {
            rustix::fs::chownat(
                parent,
                name,
                Some(owner.0),
                Some(owner.1),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| self.sys("chown", comps, e))?;
        }
        if let Some(mode) = mode {
            // Not a symlink (mode is only given for device nodes and FIFOs we just created).
            rustix::fs::chmodat(parent, name, Mode::from_raw_mode(mode), AtFlags::empty())
                .map_err(|e| self.sys("chmod", comps, e))?;
        }
        let p = fd_path(parent, name);
        for (k, v) in xattrs {
            rustix::fs::lsetxattr(&p, k.as_str(), v, XattrFlags::empty())
                .map_err(|e| self.sys("setting xattr on", comps, e))?;
        }
        rustix::fs::utimensat(parent, name, ts, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.sys("setting mtime of", comps, e))?;
        Ok(())
    }

    fn set_xattrs_fd(
        &self,
        fd: &impl AsFd,
        comps: &[OsString],
        xattrs: &[(String, Vec<u8>)],
    ) -> Result<()> {
        for (k, v) in xattrs {
            rustix::fs::fsetxattr(fd, k.as_str(), v, XattrFlags::empty())
                .map_err(|e| self.sys("setting xattr on", comps, e))?;
        }
        Ok(())
    }

    /// Apply directory owners, modes and mtimes, deepest first (implicit directories get the
    /// fixed default: [`IMPLICIT_DIR_MODE`], 0:0, mtime 0).
    fn finish_dirs(&mut self) -> Result<()> {
        self.cached = None;
        let mut dirs = std::mem::take(&mut self.dirs);
        let mut implicit = std::mem::take(&mut self.implicit);
        if !self.root_listed {
            implicit.insert(Vec::new());
        }
        for comps in implicit {
            self.stats.implicit_dirs.push(display(&comps));
            dirs.insert(
                0,
                DirMeta {
                    comps,
                    uid: 0,
                    gid: 0,
                    mode: IMPLICIT_DIR_MODE,
                    mtime: 0,
                },
            );
        }
        dirs.sort_by_key(|d| std::cmp::Reverse(d.comps.len()));
        for d in dirs {
            let fd = if d.comps.is_empty() {
                self.root
                    .try_clone()
                    .map_err(|e| Error::io("duplicating fd of", self.root_path, e))?
            } else {
                let raw = display(&d.comps).into_os_string().into_vec();
                self.open_parent(&raw, &d.comps)?
            };
            if self.chown {
                rustix::fs::fchown(
                    &fd,
                    Some(rustix::fs::Uid::from_raw(d.uid as u32)),
                    Some(rustix::fs::Gid::from_raw(d.gid as u32)),
                )
                .map_err(|e| self.sys("chown", &d.comps, e))?;
            }
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(d.mode))
                .map_err(|e| self.sys("chmod", &d.comps, e))?;
            let t = rustix::fs::Timespec {
                tv_sec: d.mtime as i64,
                tv_nsec: 0,
            };
            rustix::fs::futimens(
                &fd,
                &Timestamps {
                    last_access: t,
                    last_modification: t,
                },
            )
            .map_err(|e| self.sys("setting mtime of", &d.comps, e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comps(s: &str) -> Vec<OsString> {
        entry_components(s.as_bytes()).unwrap()
    }

    fn header(ty: EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(ty);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h.set_size(size);
        h
    }

    fn unpack(bytes: &[u8]) -> (tempfile::TempDir, Result<UnpackStats>) {
        let d = tempfile::tempdir().unwrap();
        let r = unpack_tar(bytes, d.path(), "test.tar", &Limits::default());
        (d, r)
    }

    /// Defect 1 of issue 12: Go's archive/tar (`umoci insert`) may end a stream right after
    /// the last member's data: no padding, no end blocks.
    #[test]
    fn stream_without_end_blocks_or_last_padding_is_accepted() {
        let mut b = tar::Builder::new(Vec::new());
        b.append_data(
            &mut header(EntryType::Directory, 0o755, 0),
            "d/",
            std::io::empty(),
        )
        .unwrap();
        b.append_data(
            &mut header(EntryType::Regular, 0o644, 3),
            "d/f",
            &b"abc"[..],
        )
        .unwrap();
        let full = b.into_inner().unwrap();
        // Header of d/ (512) + header of d/f (512) + 3 bytes of data.
        let data_end = 512 * 2 + 3;
        for cut in [data_end, data_end + 100, 512 * 3, full.len()] {
            let (d, r) = unpack(&full[..cut]);
            let stats = r.unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
            assert_eq!(stats.entries, 2);
            assert_eq!(std::fs::read(d.path().join("d/f")).unwrap(), b"abc");
        }
        // A stream that stops inside a member's data or a header is still refused.
        for cut in [data_end - 1, 512 + 100] {
            let (_d, r) = unpack(&full[..cut]);
            assert!(r.is_err(), "cut at {cut} was accepted");
        }
    }

    /// Defect 4 of issue 12: a directory with children replaced by a non-directory.
    #[test]
    fn directory_with_children_replaced_by_a_file() {
        let mut b = tar::Builder::new(Vec::new());
        b.append_data(
            &mut header(EntryType::Directory, 0o755, 0),
            "a/",
            std::io::empty(),
        )
        .unwrap();
        b.append_data(
            &mut header(EntryType::Directory, 0o700, 0),
            "a/sub/",
            std::io::empty(),
        )
        .unwrap();
        b.append_data(
            &mut header(EntryType::Regular, 0o444, 1),
            "a/sub/x",
            &b"x"[..],
        )
        .unwrap();
        b.append_data(&mut header(EntryType::Regular, 0o600, 4), "a", &b"file"[..])
            .unwrap();
        let (d, r) = unpack(&b.into_inner().unwrap());
        r.unwrap();
        assert_eq!(std::fs::read(d.path().join("a")).unwrap(), b"file");
    }

    /// Defect 8 of issue 12: a FIFO's device fields may be NUL-filled.
    #[test]
    fn fifo_with_nul_device_fields() {
        let mut h = header(EntryType::Fifo, 0o640, 0);
        h.set_path("p").unwrap();
        let g = h.as_gnu_mut().unwrap();
        g.dev_major = [0; 8];
        g.dev_minor = [0; 8];
        h.set_cksum();
        let mut b = tar::Builder::new(Vec::new());
        b.append(&h, std::io::empty()).unwrap();
        let (d, r) = unpack(&b.into_inner().unwrap());
        r.unwrap();
        let m = std::fs::symlink_metadata(d.path().join("p")).unwrap();
        assert!(std::os::unix::fs::FileTypeExt::is_fifo(&m.file_type()));
        // A device node still needs its numbers.
        let mut h = header(EntryType::Char, 0o640, 0);
        h.set_path("c").unwrap();
        h.as_gnu_mut().unwrap().dev_major = [0; 8];
        h.set_cksum();
        let mut b = tar::Builder::new(Vec::new());
        b.append(&h, std::io::empty()).unwrap();
        let (_d, r) = unpack(&b.into_inner().unwrap());
        assert!(r.is_err());
    }

    /// Defect 5 of issue 12: directories a layer only implies are recorded (so a stack can
    /// give them the metadata from below) and get a fixed default, not "now".
    #[test]
    fn implied_directories_are_recorded_with_a_fixed_default() {
        let mut b = tar::Builder::new(Vec::new());
        b.append_data(
            &mut header(EntryType::Regular, 0o644, 1),
            "a/b/c",
            &b"c"[..],
        )
        .unwrap();
        b.append_data(
            &mut header(EntryType::Directory, 0o700, 0),
            "a/",
            std::io::empty(),
        )
        .unwrap();
        let (d, r) = unpack(&b.into_inner().unwrap());
        let stats = r.unwrap();
        assert_eq!(
            stats.implicit_dirs,
            vec![PathBuf::from(""), PathBuf::from("a/b")]
        );
        use std::os::unix::fs::MetadataExt;
        for (p, mode, mtime) in [
            ("", 0o755, 0),
            ("a/b", 0o755, 0),
            ("a", 0o700, 1_600_000_000),
        ] {
            let m = std::fs::metadata(d.path().join(p)).unwrap();
            assert_eq!((m.mode() & 0o7777, m.mtime()), (mode, mtime), "{p:?}");
        }
    }

    /// Defect 6 of issue 12: a PAX 1.0 sparse member whose map is malformed is refused (the
    /// well-formed ones are checked against GNU tar in the root tests).
    #[test]
    fn pax_sparse_versions_other_than_1_0_are_refused() {
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([
            ("GNU.sparse.major", &b"0"[..]),
            ("GNU.sparse.minor", &b"1"[..]),
            ("GNU.sparse.name", &b"f"[..]),
        ])
        .unwrap();
        b.append_data(
            &mut header(EntryType::Regular, 0o644, 0),
            "x",
            std::io::empty(),
        )
        .unwrap();
        let (_d, r) = unpack(&b.into_inner().unwrap());
        let e = r.unwrap_err().to_string();
        assert!(e.contains("PAX sparse format 0.1 is not supported"), "{e}");
    }

    #[test]
    fn components() {
        assert_eq!(
            comps("./a/b/"),
            vec![OsString::from("a"), OsString::from("b")]
        );
        assert_eq!(comps("./"), Vec::<OsString>::new());
        assert_eq!(
            entry_components(b"/etc/passwd").unwrap_err(),
            "absolute path"
        );
        assert_eq!(
            entry_components(b"a/../../x").unwrap_err(),
            "path contains '..'"
        );
        assert_eq!(entry_components(b"..").unwrap_err(), "path contains '..'");
    }

    /// Issue 17 corpus (`path-10mb-deep.tar`): a 10 MB PAX path (five million nested
    /// directories) is refused before a single directory is made.
    #[test]
    fn paths_over_path_max_are_refused() {
        let deep = "a/".repeat(5_000_000) + "f";
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([("path", deep.as_bytes())])
            .unwrap();
        b.append_data(
            &mut header(EntryType::Regular, 0o644, 1),
            "short",
            &b"x"[..],
        )
        .unwrap();
        let (d, r) = unpack(&b.into_inner().unwrap());
        let e = r.unwrap_err().to_string();
        assert!(e.contains("longer than PATH_MAX"), "{e}");
        assert!(!d.path().join("a").exists());
        assert!(entry_components("a/".repeat(2048).as_bytes()).is_ok());
        assert!(entry_components(&vec![b'a'; MAX_PATH + 1]).is_err());
    }

    proptest::proptest! {
        /// The sanitiser never lets a path out: whatever bytes an archive names, the
        /// components it returns are plain names (no `/`, `.`, `..`, empty, NUL-free
        /// bytes preserved), so joining them under a root stays under it.
        #[test]
        fn sanitised_paths_never_escape(raw in proptest::collection::vec(
            proptest::prop_oneof![
                proptest::strategy::Just(b'/'),
                proptest::strategy::Just(b'.'),
                proptest::strategy::Just(b'a'),
                proptest::num::u8::ANY,
            ],
            0..64,
        )) {
            if let Ok(comps) = entry_components(&raw) {
                let root = Path::new("/root-of-layer");
                let mut p = root.to_path_buf();
                for c in &comps {
                    let b = c.as_bytes();
                    proptest::prop_assert!(!b.is_empty() && b != b"." && b != b"..");
                    proptest::prop_assert!(!b.contains(&b'/'));
                    p.push(c);
                }
                proptest::prop_assert!(p.starts_with(root));
                proptest::prop_assert_eq!(
                    p.components().count(),
                    root.components().count() + comps.len()
                );
                proptest::prop_assert!(raw.first() != Some(&b'/'));
                proptest::prop_assert!(!raw.split(|b| *b == b'/').any(|c| c == b".."));
            }
        }

        /// A symlink the sanitiser lets through never resolves above the layer root,
        /// lexically: walking its target from its parent never climbs past the root.
        #[test]
        fn accepted_symlinks_stay_inside(
            parent in proptest::collection::vec("[a.]{1,3}", 0..4),
            target in proptest::collection::vec(
                proptest::prop_oneof!["\\.\\.", "\\.", "[a-c]{1,2}", ""], 0..8),
        ) {
            let parent_comps = match entry_components(parent.join("/").as_bytes()) {
                Ok(c) => c,
                Err(_) => return Ok(()),
            };
            let target = target.join("/");
            // Absolute targets resolve against the layer root (`..` at the root stays there).
            if target.starts_with('/') {
                return Ok(());
            }
            if !symlink_escapes(&parent_comps, target.as_bytes()) {
                let mut depth = parent_comps.len() as i64;
                for c in target.split('/') {
                    match c {
                        "" | "." => {}
                        ".." => depth -= 1,
                        _ => depth += 1,
                    }
                    proptest::prop_assert!(depth >= 0, "{target:?} from {parent:?}");
                }
            }
        }
    }

    #[test]
    fn symlink_escape_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("", "etc/passwd", false),
            ("", "/etc/passwd", false),
            ("", "../etc", true),
            ("a/b", "../../c", false),
            ("a/b", "../../../c", true),
            ("a", "./x/../../y", false),
            ("a", "../../y", true),
            ("a", "x/../y", false),
        ];
        for (parent, target, escapes) in cases {
            assert_eq!(
                symlink_escapes(&comps(parent), target.as_bytes()),
                *escapes,
                "{parent} -> {target}"
            );
        }
    }
}
