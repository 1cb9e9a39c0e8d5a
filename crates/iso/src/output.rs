//! Writing outputs: the [`Scratch`] directory, the [`Staged`] temporary output renamed into
//! place (fsynced first unless asked not to), and the copies our writer makes (reflink or
//! `copy_file_range`, with the [`PatchPlan`]'s writes, optionally hashed on the way).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::isomd5::{IsoMd5, Md5Sums};
use crate::patch::PatchPlan;
use crate::request::Event;
use crate::{Error, Result};

/// Copy buffer for streamed copies.
pub(crate) const IO_BUF: usize = 4 << 20;
/// Bytes per `copy_file_range` call (a cancel is noticed between two).
const COPY_CHUNK: u64 = 64 << 20;

/// A scratch directory, created on first use: patch mode usually needs none, and on a
/// busy ext4 creating and removing one costs more than the edit itself.
pub struct Scratch {
    parent: PathBuf,
    dir: std::cell::OnceCell<tempfile::TempDir>,
}

impl Scratch {
    /// A scratch directory under `parent` (else the system temporary directory).
    pub fn new(parent: PathBuf) -> Self {
        Scratch {
            parent,
            dir: std::cell::OnceCell::new(),
        }
    }

    /// The directory, created now if needed.
    pub fn path(&self) -> Result<&Path> {
        if let Some(d) = self.dir.get() {
            return Ok(d.path());
        }
        let d = tempfile::Builder::new()
            .prefix(".iso-remaster-work-")
            .tempdir_in(&self.parent)
            .or_else(|_| tempfile::tempdir())
            .map_err(|e| Error::io("creating a scratch directory in", &self.parent, e))?;
        Ok(self.dir.get_or_init(|| d).path())
    }
}

/// A temporary output next to the final path, renamed into place by [`Staged::publish`].
pub(crate) struct Staged {
    tmp: tempfile::NamedTempFile,
    dest: PathBuf,
}

impl Staged {
    pub(crate) fn new(dest: &Path) -> Result<Self> {
        if dest.exists() {
            return Err(Error::bad(
                "-o",
                dest.display().to_string(),
                "already exists (not overwriting)",
            ));
        }
        let dir = match dest.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        // 0666 minus the umask, as `cp` or `genisoimage -o` would create it (not tempfile's
        // 0600, which an HTTP or PXE server could not read).
        let tmp = tempfile::Builder::new()
            .prefix(".iso-remaster-")
            .suffix(".tmp")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .tempfile_in(&dir)
            .map_err(|e| Error::io("creating a temporary file in", &dir, e))?;
        Ok(Staged {
            tmp,
            dest: dest.to_owned(),
        })
    }
    pub(crate) fn path(&self) -> &Path {
        self.tmp.path()
    }
    /// Rename the output into place without overwriting. With `sync`, the file is flushed
    /// (`fsync`) before the rename and its directory after it, so a crash leaves either no
    /// output or the whole one.
    pub(crate) fn publish(self, sync: bool) -> Result<()> {
        // Last moment to stop with nothing published (the temporary file goes with self).
        crate::cancel::check()?;
        let dest = self.dest.clone();
        if sync {
            self.tmp
                .as_file()
                .sync_all()
                .map_err(|e| Error::io("flushing (fsync)", self.tmp.path(), e))?;
        }
        self.tmp
            .persist_noclobber(&dest)
            .map_err(|e| Error::io("renaming the output to", &dest, e.error))?;
        if sync {
            sync_dir_of(&dest)?;
        }
        Ok(())
    }
}

/// `fsync` the directory holding `path`, so a rename into it is on disk.
fn sync_dir_of(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("flushing (fsync) the directory", dir, e))
}

/// `fsync` a file edited in place (no rename, so its directory does not change).
pub(crate) fn sync_file(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io("flushing (fsync)", path, e))
}

/// Copy `src` to `dst` with a reflink when the filesystem can, else `copy_file_range`.
fn fast_copy(src: &Path, dst: &Path) -> Result<()> {
    let input = File::open(src).map_err(|e| Error::io("opening", src, e))?;
    let output = std::fs::OpenOptions::new()
        .write(true)
        .open(dst)
        .map_err(|e| Error::io("opening", dst, e))?;
    if rustix::fs::ioctl_ficlone(&output, &input).is_ok() {
        return Ok(());
    }
    let len = input
        .metadata()
        .map_err(|e| Error::io("reading the size of", src, e))?
        .len();
    output
        .set_len(len)
        .map_err(|e| Error::io("sizing", dst, e))?;
    copy_range(&input, src, 0, &output, dst, 0, len)
}

/// Copy `src` to `dst` as `plan` lays it out: the whole file (see [`fast_copy`]), or, when the
/// plan inserts blocks, the ranges before and after the insertion with a hole between.
pub(crate) fn copy_for_plan(src: &Path, dst: &Path, plan: &PatchPlan) -> Result<()> {
    let Some(ins) = plan.insert else {
        return fast_copy(src, dst);
    };
    let input = File::open(src).map_err(|e| Error::io("opening", src, e))?;
    let output = std::fs::OpenOptions::new()
        .write(true)
        .open(dst)
        .map_err(|e| Error::io("opening", dst, e))?;
    let len = input
        .metadata()
        .map_err(|e| Error::io("reading the size of", src, e))?
        .len();
    output
        .set_len(plan.output_len(len))
        .map_err(|e| Error::io("sizing", dst, e))?;
    // The plan only inserts inside the file (it refuses a file that ends before the point).
    let head = ins.at.min(len);
    copy_range(&input, src, 0, &output, dst, 0, head)?;
    copy_range(&input, src, head, &output, dst, head + ins.len, len - head)?;
    Ok(())
}

/// Copy `len` bytes at `from` of `input` to `to` of `output`: `copy_file_range` (a reflink on
/// filesystems that share extents), falling back to reads and writes across filesystems.
fn copy_range(
    input: &File,
    src: &Path,
    from: u64,
    output: &File,
    dst: &Path,
    to: u64,
    len: u64,
) -> Result<()> {
    let (mut off_in, mut off_out, end) = (from, to, from + len);
    while off_in < end {
        // Chunks small enough to notice a cancel within a fraction of a second.
        crate::cancel::check()?;
        let want = (end - off_in).min(COPY_CHUNK) as usize;
        match rustix::fs::copy_file_range(
            input,
            Some(&mut off_in),
            output,
            Some(&mut off_out),
            want,
        ) {
            Ok(0) => {
                return Err(Error::io(
                    "copying from",
                    src,
                    std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
                ));
            }
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => break,
        }
    }
    // Fallback for what copy_file_range refused (e.g. EXDEV, ENOSYS).
    let mut buf = Vec::new();
    while off_in < end {
        crate::cancel::check()?;
        buf.resize(IO_BUF, 0);
        let n = (end - off_in).min(IO_BUF as u64) as usize;
        input
            .read_exact_at(&mut buf[..n], off_in)
            .map_err(|e| Error::io("reading", src, e))?;
        output
            .write_all_at(&buf[..n], off_out)
            .map_err(|e| Error::io("writing", dst, e))?;
        off_in += n as u64;
        off_out += n as u64;
    }
    Ok(())
}

/// Copy `src` to `dst` (reflink or `copy_file_range`) and patch it, while this thread hashes
/// the same bytes — the input with the patches overlaid — from the page cache: the MD5 costs
/// no extra pass over the output and runs beside the copy.
pub(crate) fn copy_and_hash(
    src: &Path,
    dst: &Path,
    plan: &PatchPlan,
    mut hasher: IsoMd5,
    progress: &mut dyn FnMut(Event<'_>),
) -> Result<Md5Sums> {
    let flag = crate::cancel::current();
    std::thread::scope(|s| {
        let copier = s.spawn(|| -> Result<()> {
            let _cancel = crate::cancel::install(flag);
            copy_for_plan(src, dst, plan)?;
            apply_plan(dst, plan)
        });
        let hashed = (|| -> Result<()> {
            let f = File::open(src).map_err(|e| Error::io("opening", src, e))?;
            crate::isomd5::hash_reads(
                src,
                &|off, buf| plan.read_output(&f, off, buf),
                &mut hasher,
                &mut |done, total| progress(Event::Bytes(done, total)),
            )
        })();
        let copied = copier.join().unwrap_or_else(|_| {
            Err(Error::io(
                "copying to",
                dst,
                std::io::Error::other("copy thread panicked"),
            ))
        });
        copied?;
        hashed
    })?;
    Ok(hasher.finish())
}

pub(crate) fn apply_plan(path: &Path, plan: &PatchPlan) -> Result<()> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| Error::io("opening for writing", path, e))?;
    // No fsync here: the caller flushes once, before publishing (unless asked not to).
    for (off, data) in &plan.writes {
        f.write_all_at(data, *off)
            .map_err(|e| Error::io("writing", path, e))?;
    }
    Ok(())
}
