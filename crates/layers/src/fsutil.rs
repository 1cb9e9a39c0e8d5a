//! Small file-system helpers shared by the reader and writer sides.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

use crate::{Error, Result};

/// Open directory `name` under `dir` without following a symlink at `name`.
pub(crate) fn open_dir_at(dir: impl AsFd, name: &OsStr) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Open a directory by path (following symlinks: used only for paths the caller gave us).
pub(crate) fn open_dir(path: &Path) -> Result<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::sys("opening directory", path, e))
}

/// `/proc/self/fd/N/NAME`: a path that names `name` inside the directory `dir` without
/// resolving any component of the directory's own path again (for the `l*xattr` calls,
/// which have no `*at` form).
pub(crate) fn fd_path(dir: &impl AsFd, name: &OsStr) -> PathBuf {
    let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_fd().as_raw_fd()));
    if !name.is_empty() {
        p.push(name);
    }
    p
}

/// The extended attributes of `path` (not following a final symlink), sorted by name.
pub(crate) fn read_xattrs(path: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut names = vec![0u8; 4096];
    let n = loop {
        match rustix::fs::llistxattr(path, &mut names[..]) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) if names.len() < (1 << 20) => {
                names.resize(names.len() * 4, 0);
            }
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(Error::sys("listing xattrs of", path, e)),
        }
    };
    let mut out = Vec::new();
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        if let Some(v) = get_xattr(path, &name)? {
            out.push((name, v));
        }
    }
    out.sort();
    Ok(out)
}

/// One extended attribute of `path` (not following a final symlink), `None` when absent.
pub(crate) fn get_xattr(path: &Path, name: &str) -> Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; 256];
    loop {
        match rustix::fs::lgetxattr(path, name, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(rustix::io::Errno::RANGE) if buf.len() < (1 << 20) => {
                buf.resize(buf.len() * 16, 0);
            }
            Err(rustix::io::Errno::NODATA) | Err(rustix::io::Errno::NOTSUP) => return Ok(None),
            Err(e) => return Err(Error::sys("reading xattr of", path, e)),
        }
    }
}

/// Directory entries of `dir`, sorted by name bytes (reproducible order).
pub(crate) fn sorted_entries(dir: &Path) -> Result<Vec<OsString>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io("reading directory", dir, e))?;
    let mut names = Vec::new();
    for e in rd {
        let e = e.map_err(|e| Error::io("reading directory", dir, e))?;
        names.push(e.file_name());
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

/// Join relative path components with `/` (for entry names in archives and reports).
pub(crate) fn rel_join(parent: &OsStr, name: &OsStr) -> OsString {
    if parent.is_empty() {
        name.to_owned()
    } else {
        let mut v = parent.as_bytes().to_vec();
        v.push(b'/');
        v.extend_from_slice(name.as_bytes());
        OsString::from_vec(v)
    }
}

/// Whether `meta` describes an overlayfs whiteout (character device 0/0).
pub(crate) fn is_whiteout(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// The `SOURCE_DATE_EPOCH` from the environment, when set and valid.
pub fn source_date_epoch() -> Option<u64> {
    std::env::var("SOURCE_DATE_EPOCH").ok()?.trim().parse().ok()
}

/// Remove `name` under `dir` and, if it is a directory, everything below it, never following
/// a symlink (every step is relative to an open directory, with `O_NOFOLLOW`).
pub(crate) fn remove_tree_at(dir: &impl AsFd, name: &OsStr) -> rustix::io::Result<()> {
    use rustix::fs::{AtFlags, FileType};
    let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return rustix::fs::unlinkat(dir, name, AtFlags::empty());
    }
    let sub = open_dir_at(dir, name)?;
    // A read-only directory (a layer may have them) must accept the removal of its entries.
    let _ = rustix::fs::fchmod(&sub, Mode::from_raw_mode(0o700));
    let mut names = Vec::new();
    for e in rustix::fs::Dir::read_from(&sub)? {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(OsString::from_vec(n.to_vec()));
        }
    }
    for n in names {
        remove_tree_at(&sub, &n)?;
    }
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
}

/// Create the directories `dirs` (relative paths, `""` = `root` itself) under the new,
/// private directory `root`, each with the owner, mode, mtime and xattrs (except
/// `trusted.overlay.*`) of its source, or the default (0755, 0:0, mtime `default_mtime`).
pub(crate) fn write_dir_tree(
    root: &Path,
    dirs: &std::collections::BTreeMap<OsString, DirSource>,
    default_mtime: u64,
) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    for rel in dirs.keys() {
        let p = root.join(rel);
        if !rel.is_empty() {
            std::fs::create_dir_all(&p).map_err(|e| Error::io("creating directory", &p, e))?;
        }
    }
    // Deepest first, so setting a child's metadata does not change its parent's mtime after.
    for (rel, src) in dirs.iter().rev() {
        let p = root.join(rel);
        let (uid, gid, mode, sec, nsec, xattrs) = match src {
            DirSource::Path(s) => {
                let m = std::fs::symlink_metadata(s).map_err(|e| Error::io("inspecting", s, e))?;
                let mut x = read_xattrs(s)?;
                x.retain(|(k, _)| !k.starts_with("trusted.overlay."));
                (
                    m.uid(),
                    m.gid(),
                    m.mode() & 0o7777,
                    m.mtime(),
                    m.mtime_nsec(),
                    x,
                )
            }
            DirSource::Default => (
                0,
                0,
                crate::IMPLICIT_DIR_MODE,
                i64::try_from(default_mtime).unwrap_or(i64::MAX),
                0,
                Vec::new(),
            ),
        };
        for (k, v) in &xattrs {
            rustix::fs::lsetxattr(&p, k.as_str(), v, rustix::fs::XattrFlags::empty())
                .map_err(|e| Error::sys("setting xattr on", &p, e))?;
        }
        rustix::fs::chown(
            &p,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
        )
        .map_err(|e| Error::sys("chown", &p, e))?;
        rustix::fs::chmod(&p, Mode::from_raw_mode(mode)).map_err(|e| Error::sys("chmod", &p, e))?;
        let t = rustix::fs::Timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            &p,
            &rustix::fs::Timestamps {
                last_access: t,
                last_modification: t,
            },
            rustix::fs::AtFlags::empty(),
        )
        .map_err(|e| Error::sys("setting mtime of", &p, e))?;
    }
    Ok(())
}

/// Where a directory of a fix-up layer takes its metadata from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DirSource {
    /// The same directory in this layer directory (owner, mode, mtime, xattrs).
    Path(PathBuf),
    /// No layer below has it: the documented default.
    Default,
}

/// Whether the layer directory `p`'s root is marked opaque (unreadable counts as not).
pub(crate) fn root_is_opaque(p: &Path) -> bool {
    get_xattr(p, crate::OPAQUE_XATTR).ok().flatten().as_deref() == Some(b"y")
}

/// The layers overlayfs should see for `layers` (base first): a directory repeated in the
/// stack is kept once, at its topmost place (the same lower twice fails with ELOOP, and the
/// lower copy adds nothing the upper one does not show), and layers below one whose root is
/// opaque are dropped (overlayfs ignores the opaque flag on a layer's root; OCI does not).
pub(crate) fn effective_layers(layers: &[PathBuf]) -> Vec<PathBuf> {
    let mut seen = std::collections::BTreeSet::new();
    let mut kept: Vec<PathBuf> = layers
        .iter()
        .rev()
        .filter(|l| seen.insert(l.as_path()))
        .cloned()
        .collect();
    kept.reverse();
    if let Some(cut) = kept.iter().rposition(|l| root_is_opaque(l)) {
        kept.drain(..cut);
    }
    kept
}
