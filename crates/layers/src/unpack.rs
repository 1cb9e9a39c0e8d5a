//! Safe tar unpacking into an overlay-format layer directory.
//!
//! Every entry is created relative to an open directory file descriptor, walking the parent
//! path one component at a time with `O_NOFOLLOW`, so a symlink the archive created is never
//! followed. OCI whiteouts are converted to overlayfs ones on the way.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timestamps, XattrFlags};
use rustix::io::Errno;
use tar::EntryType;

use crate::fsutil::{fd_path, open_dir, open_dir_at};
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
    };
    let mut ar = tar::Archive::new(reader);
    let entries = ar
        .entries()
        .map_err(|e| Error::io("reading tar", dest, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| u.bad_archive(e))?;
        u.entry(entry)?;
    }
    u.finish_dirs()?;
    Ok(u.stats)
}

/// Split an archive path into components, refusing absolute paths and `..`.
pub(crate) fn entry_components(raw: &[u8]) -> std::result::Result<Vec<OsString>, String> {
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
        if let Some((c, fd)) = &self.cached
            && c.as_slice() == comps
        {
            return fd
                .try_clone()
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
                    open_dir_at(&cur, c)
                        .map_err(|e| self.sys("opening directory", &comps[..=i], e))?
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
        Ok(cur)
    }

    /// Make room for a new entry at `name`: an existing non-directory is replaced, an existing
    /// directory is kept when the new entry is a directory too. Returns whether a directory
    /// already exists there.
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
                let flags = if is_dir {
                    // The cached parent fd may be this directory (or below it).
                    self.cached = None;
                    AtFlags::REMOVEDIR
                } else {
                    AtFlags::empty()
                };
                rustix::fs::unlinkat(parent, name, flags)
                    .map_err(|e| self.sys("replacing", comps, e))?;
                Ok(false)
            }
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(self.sys("inspecting", comps, e)),
        }
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<()> {
        let raw = entry.path_bytes().into_owned();
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
        let size = entry
            .header()
            .entry_size()
            .map_err(|e| self.bad_archive(e))?;
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
        let mut xattrs = Vec::new();
        if let Some(pax) = entry.pax_extensions().map_err(|e| self.bad_archive(e))? {
            for ext in pax {
                let ext = ext.map_err(|e| self.bad_archive(e))?;
                if let Ok(key) = ext.key()
                    && let Some(name) = key.strip_prefix("SCHILY.xattr.")
                {
                    if name.starts_with("trusted.overlay.") {
                        return Err(
                            self.refuse(&raw, format!("carries overlayfs-private xattr {name}"))
                        );
                    }
                    xattrs.push((name.to_owned(), ext.value_bytes().to_vec()));
                }
            }
        }

        let Some((name, parent_comps)) = comps.split_last() else {
            // The layer root itself ("./"): its metadata applies to the root directory.
            if ty == EntryType::Directory {
                self.set_xattrs_fd(&self.root.as_fd(), &comps, &xattrs)?;
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
        let parent = self.open_parent(&raw, parent_comps)?;
        let nb = name.as_bytes();

        if nb == OPAQUE_MARKER.as_bytes() {
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
                self.dirs.push(DirMeta {
                    comps,
                    uid,
                    gid,
                    mode,
                    mtime,
                });
            }
            EntryType::Regular | EntryType::Continuous => {
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
                let n = std::io::copy(&mut (&mut entry).take(size), &mut file)
                    .map_err(|e| Error::io("writing", self.root_path.join(display(&comps)), e))?;
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
                let major = h
                    .device_major()
                    .map_err(|e| self.bad_archive(e))?
                    .unwrap_or(0);
                let minor = h
                    .device_minor()
                    .map_err(|e| self.bad_archive(e))?
                    .unwrap_or(0);
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

    /// Apply directory owners, modes and mtimes, deepest first.
    fn finish_dirs(&mut self) -> Result<()> {
        self.cached = None;
        let mut dirs = std::mem::take(&mut self.dirs);
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
