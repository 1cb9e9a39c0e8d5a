//! Writing OCI layer tarballs: from an overlay upper dir (commit) or a merged stack (squash).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::digest::HashWriter;
use crate::fsutil::{get_xattr, is_whiteout, read_xattrs, rel_join, sorted_entries};
use crate::{Error, OPAQUE_MARKER, OPAQUE_XATTR, Result, WHITEOUT_PREFIX};

/// Compression of a layer tarball.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip (the OCI default, `tar+gzip`).
    #[default]
    Gzip,
    /// zstd (`tar+zstd`).
    Zstd,
}

impl Compression {
    /// The compression a file name asks for: `.tar.gz`/`.tgz` → gzip, `.tar.zst`/`.tzst` →
    /// zstd, anything else → none.
    pub fn from_path(path: &Path) -> Compression {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        if name.ends_with(".gz") || name.ends_with(".tgz") {
            Compression::Gzip
        } else if name.ends_with(".zst") || name.ends_with(".tzst") || name.ends_with(".zstd") {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// How to write a layer tarball.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TarOptions {
    /// Compression of the output (default gzip; [`Compression::from_path`] picks by name).
    pub compression: Compression,
    /// Clamp every mtime to this time (seconds since the epoch); usually `SOURCE_DATE_EPOCH`.
    /// Default: none (mtimes kept). Entries are always sorted and user/group names empty,
    /// so with a clamp the output is byte-for-byte reproducible.
    pub clamp_mtime: Option<u64>,
    /// Replace an existing output file (default false: refuse).
    pub overwrite: bool,
}

/// What a written layer is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TarStats {
    /// sha256 of the written (possibly compressed) bytes: the blob digest.
    pub digest: String,
    /// sha256 of the uncompressed tar: the diff_id.
    pub diff_id: String,
    /// Size of the written bytes.
    pub size: u64,
    /// Number of tar entries (whiteouts and opaque markers included).
    pub entries: u64,
    /// The compression used.
    pub compression: Compression,
}

enum Encoder<W: Write> {
    None(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Encoder::None(w) => w.write(buf),
            Encoder::Gzip(w) => w.write(buf),
            Encoder::Zstd(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Encoder::None(w) => w.flush(),
            Encoder::Gzip(w) => w.flush(),
            Encoder::Zstd(w) => w.flush(),
        }
    }
}

impl<W: Write> Encoder<W> {
    fn new(w: W, c: Compression) -> std::io::Result<Self> {
        Ok(match c {
            Compression::None => Encoder::None(w),
            Compression::Gzip => {
                Encoder::Gzip(flate2::GzBuilder::new().write(w, flate2::Compression::default()))
            }
            Compression::Zstd => Encoder::Zstd(zstd::stream::write::Encoder::new(w, 3)?),
        })
    }

    fn finish(self) -> std::io::Result<W> {
        match self {
            Encoder::None(w) => Ok(w),
            Encoder::Gzip(w) => w.finish(),
            Encoder::Zstd(w) => w.finish(),
        }
    }
}

/// Streams entries into a tar, hashing both the tar (diff_id) and the output (digest).
struct LayerWriter<W: Write> {
    builder: tar::Builder<HashWriter<Encoder<HashWriter<W>>>>,
    opts: TarOptions,
    links: HashMap<(u64, u64), OsString>,
    entries: u64,
    out_name: PathBuf,
}

impl<W: Write> LayerWriter<W> {
    fn new(out: W, out_name: &Path, opts: TarOptions) -> Result<Self> {
        let enc = Encoder::new(HashWriter::new(out), opts.compression)
            .map_err(|e| Error::io("writing", out_name, e))?;
        let mut builder = tar::Builder::new(HashWriter::new(enc));
        builder.mode(tar::HeaderMode::Complete);
        Ok(LayerWriter {
            builder,
            opts,
            links: HashMap::new(),
            entries: 0,
            out_name: out_name.to_owned(),
        })
    }

    fn err(&self, e: std::io::Error) -> Error {
        Error::io("writing", &self.out_name, e)
    }

    fn header(&self, meta: &std::fs::Metadata, ty: tar::EntryType) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(ty);
        h.set_mode(meta.mode() & 0o7777);
        h.set_uid(u64::from(meta.uid()));
        h.set_gid(u64::from(meta.gid()));
        let mtime = meta.mtime().max(0) as u64;
        h.set_mtime(self.opts.clamp_mtime.map_or(mtime, |c| mtime.min(c)));
        h.set_size(0);
        h
    }

    /// Add the file `abs` (not following a final symlink) as archive path `rel` ("" = root).
    fn add(
        &mut self,
        rel: &OsStr,
        abs: &Path,
        meta: &std::fs::Metadata,
        xattrs: &[(String, Vec<u8>)],
    ) -> Result<()> {
        let ft = meta.file_type();
        if ft.is_socket() {
            tracing::warn!(path = %abs.display(), "skipping socket (not representable in a layer)");
            return Ok(());
        }
        let name: PathBuf = if rel.is_empty() {
            PathBuf::from("./")
        } else {
            PathBuf::from(rel)
        };
        if !xattrs.is_empty() {
            let pax: Vec<(String, &[u8])> = xattrs
                .iter()
                .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.as_slice()))
                .collect();
            self.builder
                .append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), *v)))
                .map_err(|e| self.err(e))?;
        }
        self.entries += 1;
        if !ft.is_dir() && meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = self.links.get(&key) {
                let mut h = self.header(meta, tar::EntryType::Link);
                let first = PathBuf::from(first);
                return self
                    .builder
                    .append_link(&mut h, &name, &first)
                    .map_err(|e| self.err(e));
            }
            self.links.insert(key, rel.to_owned());
        }
        if ft.is_dir() {
            let mut h = self.header(meta, tar::EntryType::Directory);
            let mut dname = name.into_os_string();
            if !dname.as_bytes().ends_with(b"/") {
                dname.push("/");
            }
            self.builder
                .append_data(&mut h, &dname, std::io::empty())
                .map_err(|e| self.err(e))
        } else if ft.is_file() {
            let mut h = self.header(meta, tar::EntryType::Regular);
            h.set_size(meta.len());
            let f = std::fs::File::open(abs).map_err(|e| Error::io("reading", abs, e))?;
            self.builder
                .append_data(&mut h, &name, f)
                .map_err(|e| self.err(e))
        } else if ft.is_symlink() {
            let target =
                std::fs::read_link(abs).map_err(|e| Error::io("reading symlink", abs, e))?;
            let mut h = self.header(meta, tar::EntryType::Symlink);
            self.builder
                .append_link(&mut h, &name, &target)
                .map_err(|e| self.err(e))
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
            let ty = if ft.is_char_device() {
                tar::EntryType::Char
            } else if ft.is_block_device() {
                tar::EntryType::Block
            } else {
                tar::EntryType::Fifo
            };
            let mut h = self.header(meta, ty);
            let rdev = meta.rdev();
            h.set_device_major(rustix::fs::major(rdev))
                .map_err(|e| self.err(e))?;
            h.set_device_minor(rustix::fs::minor(rdev))
                .map_err(|e| self.err(e))?;
            self.builder
                .append_data(&mut h, &name, std::io::empty())
                .map_err(|e| self.err(e))
        } else {
            Err(Error::Unsupported {
                path: abs.to_owned(),
                reason: "unknown file type".into(),
            })
        }
    }

    /// Add an empty marker file (`.wh.NAME` or `.wh..wh..opq`) with `meta`'s times.
    fn add_marker(&mut self, rel: &OsStr, meta: &std::fs::Metadata) -> Result<()> {
        let mut h = self.header(meta, tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        self.entries += 1;
        self.builder
            .append_data(&mut h, Path::new(rel), std::io::empty())
            .map_err(|e| self.err(e))
    }

    fn finish(self) -> Result<(W, TarStats)> {
        let out_name = self.out_name.clone();
        let err = |e| Error::io("writing", &out_name, e);
        let tar_hash = self.builder.into_inner().map_err(err)?;
        let diff_id = tar_hash.digest();
        let out_hash = tar_hash.inner.finish().map_err(err)?;
        let stats = TarStats {
            digest: out_hash.digest(),
            diff_id,
            size: out_hash.count,
            entries: self.entries,
            compression: self.opts.compression,
        };
        Ok((out_hash.inner, stats))
    }
}

fn lstat(p: &Path) -> Result<std::fs::Metadata> {
    std::fs::symlink_metadata(p).map_err(|e| Error::io("inspecting", p, e))
}

/// xattrs to carry into a layer: everything except overlayfs' private `trusted.overlay.*`.
/// `redirect` and `metacopy` change what the upper dir means, so they are refused.
fn layer_xattrs(abs: &Path, refuse_overlay_features: bool) -> Result<Vec<(String, Vec<u8>)>> {
    let mut x = read_xattrs(abs)?;
    if refuse_overlay_features
        && let Some((k, _)) = x
            .iter()
            .find(|(k, _)| k == "trusted.overlay.redirect" || k == "trusted.overlay.metacopy")
    {
        return Err(Error::Unsupported {
            path: abs.to_owned(),
            reason: format!(
                "has {k}: upper dirs written with redirect_dir/metacopy cannot become OCI layers"
            ),
        });
    }
    x.retain(|(k, _)| !k.starts_with("trusted.overlay."));
    Ok(x)
}

fn commit_walk<W: Write>(w: &mut LayerWriter<W>, upper: &Path, rel: &OsStr) -> Result<()> {
    for name in sorted_entries(&upper.join(rel))? {
        let r = rel_join(rel, &name);
        let abs = upper.join(&r);
        let meta = lstat(&abs)?;
        if is_whiteout(&meta) {
            let mut wh = OsString::from(WHITEOUT_PREFIX);
            wh.push(&name);
            w.add_marker(&rel_join(rel, &wh), &meta)?;
            continue;
        }
        let xattrs = layer_xattrs(&abs, true)?;
        w.add(&r, &abs, &meta, &xattrs)?;
        if meta.is_dir() {
            if get_xattr(&abs, OPAQUE_XATTR)?.as_deref() == Some(b"y") {
                w.add_marker(&rel_join(&r, OsStr::new(OPAQUE_MARKER)), &meta)?;
            }
            commit_walk(w, upper, &r)?;
        }
    }
    Ok(())
}

/// Write the overlay upper dir `upper` as an OCI layer tarball into `out` (any writer):
/// whiteouts (char 0/0) become `.wh.NAME`, opaque dirs get a `.wh..wh..opq` entry, other
/// `trusted.overlay.*` xattrs are dropped. Entries are sorted; names of owners are empty.
pub fn write_layer_to<W: Write>(upper: &Path, out: W, opts: TarOptions) -> Result<(W, TarStats)> {
    let mut w = LayerWriter::new(out, Path::new("<layer>"), opts)?;
    let root_meta = lstat(upper)?;
    let xattrs = layer_xattrs(upper, true)?;
    w.add(OsStr::new(""), upper, &root_meta, &xattrs)?;
    commit_walk(&mut w, upper, OsStr::new(""))?;
    w.finish()
}

/// Write the file `dest` atomically. The data goes into an unnamed file in `dest`'s directory
/// (`O_TMPFILE`), which gets its name (`linkat`) only once complete and synced: an error, a
/// signal or a `kill -9` at any moment leaves no temporary file behind. Filesystems without
/// `O_TMPFILE` get a named temporary file in the directory instead (removed on error).
fn write_file_atomic(
    dest: &Path,
    overwrite: bool,
    body: impl FnOnce(std::fs::File) -> Result<(std::fs::File, TarStats)>,
) -> Result<TarStats> {
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !overwrite && dest.exists() {
        return Err(Error::io(
            "refusing to overwrite",
            dest,
            std::io::ErrorKind::AlreadyExists.into(),
        ));
    }
    diskforge_fault::point("layers.commit")?;
    let remap = |e: Error| match e {
        Error::Io {
            action,
            path,
            source,
        } if path == Path::new("<layer>") => Error::Io {
            action,
            path: dest.to_owned(),
            source,
        },
        other => other,
    };
    use rustix::fs::{AtFlags, CWD, Mode, OFlags};
    let unnamed = rustix::fs::open(
        dir,
        OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    );
    let fd = match unnamed {
        Ok(fd) => fd,
        Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::ISDIR | rustix::io::Errno::INVAL) => {
            return write_file_named(dest, dir, overwrite, |f| body(f).map_err(remap));
        }
        Err(e) => return Err(Error::io("creating a temporary file in", dir, e.into())),
    };
    let (file, stats) = body(std::fs::File::from(fd)).map_err(remap)?;
    file.sync_all().map_err(|e| Error::io("syncing", dest, e))?;
    // The mode the umask may have narrowed at open.
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .map_err(|e| Error::io("chmod", dest, e))?;
    diskforge_fault::point("layers.commit.rename")?;
    let fd_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&file));
    let link = |to: &Path| {
        rustix::fs::linkat(CWD, fd_path.as_str(), CWD, to, AtFlags::SYMLINK_FOLLOW)
            .map_err(std::io::Error::from)
    };
    if overwrite {
        // Named for an instant under a fresh name, then renamed over `dest`.
        let tmp = tempfile::Builder::new()
            .prefix(".dflayers-")
            .make_in(dir, |p| link(p))
            .map_err(|e| Error::io("naming the temporary file in", dir, e))?;
        tmp.persist(dest)
            .map_err(|e| Error::io("renaming into place", dest, e.error))?;
    } else {
        link(dest).map_err(|e| Error::io("linking into place", dest, e))?;
    }
    Ok(stats)
}

/// [`write_file_atomic`] where `O_TMPFILE` is not supported: a named temporary file in `dir`.
fn write_file_named(
    dest: &Path,
    dir: &Path,
    overwrite: bool,
    body: impl FnOnce(std::fs::File) -> Result<(std::fs::File, TarStats)>,
) -> Result<TarStats> {
    let tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| Error::io("creating temporary file in", dir, e))?;
    let (tmp_path, file) = (
        tmp.path().to_owned(),
        tmp.reopen().map_err(|e| Error::io("opening", dest, e))?,
    );
    let (file, stats) = body(file)?;
    file.sync_all()
        .map_err(|e| Error::io("syncing", &tmp_path, e))?;
    std::fs::set_permissions(
        &tmp_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .map_err(|e| Error::io("chmod", &tmp_path, e))?;
    diskforge_fault::point("layers.commit.rename")?;
    let res = if overwrite {
        tmp.persist(dest)
    } else {
        tmp.persist_noclobber(dest)
    };
    res.map_err(|e| Error::io("renaming into place", dest, e.error))?;
    Ok(stats)
}

/// [`write_layer_to`] into the file `dest`, atomically.
pub fn write_layer(upper: &Path, dest: &Path, opts: TarOptions) -> Result<TarStats> {
    write_file_atomic(dest, opts.overwrite, |f| write_layer_to(upper, f, opts))
}

/// Squash a stack (base first) into one layer tarball `dest` with the same merged content:
/// no whiteouts, no opaque markers; computed from the directories without mounting.
pub fn squash(layers: &[PathBuf], dest: &Path, opts: TarOptions) -> Result<TarStats> {
    let entries = crate::merged_tree(layers)?;
    write_file_atomic(dest, opts.overwrite, |f| {
        let mut w = LayerWriter::new(f, Path::new("<layer>"), opts)?;
        for e in &entries {
            let meta = lstat(&e.source)?;
            let xattrs = layer_xattrs(&e.source, false)?;
            w.add(&e.path, &e.source, &meta, &xattrs)?;
        }
        w.finish()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// The output appears only complete, under its name, and nothing else ever does in its
    /// directory: not after success, a refusal to overwrite, a replacement or a failure.
    #[test]
    fn atomic_write_leaves_only_the_output() {
        let d = tempfile::tempdir().unwrap();
        let up = d.path().join("up");
        std::fs::create_dir(&up).unwrap();
        std::fs::write(up.join("a"), "x").unwrap();
        let out = d.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let dest = out.join("l.tar");
        let opts = TarOptions {
            compression: Compression::None,
            ..Default::default()
        };
        let first = write_layer(&up, &dest, opts).unwrap();
        assert_eq!(names(&out), ["l.tar"]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        assert!(write_layer(&up, &dest, opts).is_err());
        assert_eq!(names(&out), ["l.tar"]);
        std::fs::write(up.join("b"), "y").unwrap();
        let again = TarOptions {
            overwrite: true,
            ..opts
        };
        let second = write_layer(&up, &dest, again).unwrap();
        assert_ne!(first.digest, second.digest);
        assert_eq!(names(&out), ["l.tar"]);
        assert!(write_layer(&d.path().join("missing"), &out.join("m.tar"), opts).is_err());
        assert_eq!(names(&out), ["l.tar"]);
    }

    #[test]
    fn compression_by_name() {
        assert_eq!(
            Compression::from_path(Path::new("l.tar")),
            Compression::None
        );
        assert_eq!(
            Compression::from_path(Path::new("l.tar.gz")),
            Compression::Gzip
        );
        assert_eq!(
            Compression::from_path(Path::new("L.TGZ")),
            Compression::Gzip
        );
        assert_eq!(
            Compression::from_path(Path::new("l.tar.zst")),
            Compression::Zstd
        );
    }
}
