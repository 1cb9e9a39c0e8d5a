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
const COPY_CHUNK: u64 = 16 << 20;

/// Prefix of a run directory (`.iso-remaster-run-XXXXXX` next to the output, holding its
/// temporary file and scratch files); [`cleanup`] removes the ones of killed runs.
pub const RUN_DIR_PREFIX: &str = ".iso-remaster-run-";

/// The run directory: created on first use (patch mode usually needs none, and on a busy
/// ext4 creating and removing one costs more than the edit itself) as
/// `.iso-remaster-run-XXXXXX` next to the output, a [`diskforge_rundir::RunDir`] (locked with
/// `flock` on the directory itself for the whole run, removed contents-first). The temporary
/// output, extracted trees, mount points and edited FAT images all live inside, so an error,
/// a signal (the guards remove it) or a `kill -9` at any moment, even during that removal
/// (the next run, or `iso-remaster cleanup`, sees the lock free and removes it), leaves
/// nothing else behind.
pub struct Scratch {
    parent: PathBuf,
    dir: std::cell::OnceCell<diskforge_rundir::RunDir>,
}

impl Scratch {
    /// A run directory under `parent` (else the system temporary directory).
    pub fn new(parent: PathBuf) -> Self {
        Scratch {
            parent,
            dir: std::cell::OnceCell::new(),
        }
    }

    /// The directory, created (and locked) now if needed.
    pub fn path(&self) -> Result<&Path> {
        if let Some(d) = self.dir.get() {
            return Ok(d.path());
        }
        diskforge_fault::point("iso.run-dir")?;
        let d = diskforge_rundir::RunDir::create(&self.parent, RUN_DIR_PREFIX)
            .or_else(|_| diskforge_rundir::RunDir::create(&std::env::temp_dir(), RUN_DIR_PREFIX))
            .map_err(rundir_err)?;
        Ok(self.dir.get_or_init(|| d).path())
    }
}

/// A diskforge-rundir error as ours.
fn rundir_err(e: diskforge_rundir::Error) -> Error {
    match e {
        diskforge_rundir::Error::Io { op, path, source } => Error::io(op, &path, source),
        e @ diskforge_rundir::Error::Before { .. } => Error::io(
            "cleaning up",
            Path::new(RUN_DIR_PREFIX),
            std::io::Error::other(e),
        ),
    }
}

/// Remove the run directories in `dir` whose run is gone (their lock is free: the process
/// was killed) and that no mount uses; returns what was removed. Live runs are left alone.
pub fn cleanup(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Err(Error::io(
            "listing",
            dir,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
    }
    diskforge_rundir::reclaim(dir, RUN_DIR_PREFIX, |_| Ok(())).map_err(rundir_err)
}

/// A temporary output in the run directory, renamed into place by [`Staged::publish`].
pub(crate) struct Staged {
    tmp: tempfile::NamedTempFile,
    dest: PathBuf,
}

impl Staged {
    pub(crate) fn new(dest: &Path, scratch: &Scratch) -> Result<Self> {
        if dest.exists() {
            return Err(Error::bad(
                "-o",
                dest.display().to_string(),
                "already exists (not overwriting)",
            ));
        }
        let dir = scratch.path()?;
        diskforge_fault::point("iso.output.create")?;
        // 0666 minus the umask, as `cp` or `genisoimage -o` would create it (not tempfile's
        // 0600, which an HTTP or PXE server could not read).
        let tmp = tempfile::Builder::new()
            .prefix("output-")
            .suffix(".iso.tmp")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .tempfile_in(dir)
            .map_err(|e| Error::io("creating a temporary file in", dir, e))?;
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
        diskforge_fault::point("iso.output.rename")?;
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
    diskforge_fault::point("iso.output.copy")?;
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
    diskforge_fault::point("iso.patch")?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A dead run's directory (lock free, half removed) goes; a live run's (its lock held)
    /// stays until the run ends, which removes it.
    #[test]
    fn cleanup_removes_dead_runs_and_spares_live_ones() {
        let d = tempfile::tempdir().unwrap();
        let dead = d.path().join(format!("{RUN_DIR_PREFIX}dead"));
        std::fs::create_dir_all(dead.join("tree/EFI/BOOT")).unwrap();
        std::fs::write(dead.join("tree/EFI/BOOT/BOOTX64.EFI"), "x").unwrap();
        let live = Scratch::new(d.path().to_owned());
        let live_dir = live.path().unwrap().to_owned();
        std::fs::write(live_dir.join("appended-0.img"), "x").unwrap();
        let gone = cleanup(d.path()).unwrap();
        assert_eq!(gone, vec![dead.clone()]);
        assert!(live_dir.exists() && !dead.exists());
        assert!(cleanup(d.path()).unwrap().is_empty());
        drop(live);
        assert!(!live_dir.exists());
        assert!(cleanup(&d.path().join("missing")).is_err());
    }
}
