//! A tool's private working directory that a `kill -9` cannot strand.
//!
//! [`RunDir::create`] makes `PARENT/PREFIXxxxxxx` (mode 0700) and takes an exclusive `flock`
//! on the directory itself, held until the directory is gone. [`RunDir::remove`] (and `Drop`,
//! the safety net) removes the contents first and the directory last, so whenever the process
//! dies — before, during or after its own teardown — what is left is a directory whose lock
//! is free, which [`reclaim`] removes. (A lock *file* inside the directory cannot promise
//! that: a teardown that deletes it first and is then killed leaves a lock-less directory
//! nobody can tell from one being created, which is how `disk-image-create` and
//! `iso-remaster` used to strand them.)
//!
//! The one window left is between `mkdtemp` and `flock` (the directory exists, unlocked and
//! empty): a concurrent [`reclaim`] may take it for a dead run's and remove it, so `create`
//! checks after locking that the path still names the directory it locked, and makes another
//! if not.

use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, Mode, OFlags};

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem call failed.
    #[error("{op} {}", path.display())]
    Io {
        /// What we were doing.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The caller's undo for a dead run's directory failed (the directory is kept).
    #[error("undoing what the dead run in {} left", path.display())]
    Before {
        /// The dead run's directory.
        path: PathBuf,
        /// The caller's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Io { op, path, source }
}

/// How many times [`RunDir::create`] makes a new directory when a concurrent [`reclaim`]
/// removed the one it had just made.
const CREATE_ATTEMPTS: usize = 8;

/// A locked working directory; see the crate docs.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    /// The directory's fd, `flock`ed; `None` once removed or kept.
    lock: Option<OwnedFd>,
}

impl RunDir {
    /// Make `parent/PREFIXxxxxxx` and lock it.
    pub fn create(parent: &Path, prefix: &str) -> Result<RunDir> {
        for _ in 0..CREATE_ATTEMPTS {
            let path = tempfile::Builder::new()
                .prefix(prefix)
                .tempdir_in(parent)
                .map_err(io("creating a directory in", parent))?
                .keep();
            let locked = open_dir(&path).and_then(|fd| {
                // Blocking: a concurrent reclaim may hold it for an instant.
                rustix::fs::flock(&fd, FlockOperation::LockExclusive)?;
                Ok(fd)
            });
            let fd = match locked {
                Ok(fd) => fd,
                Err(e) => {
                    let _ = fs::remove_dir(&path);
                    return Err(io("locking", &path)(e));
                }
            };
            if same_dir(&path, &fd) {
                return Ok(RunDir {
                    path,
                    lock: Some(fd),
                });
            }
            tracing::debug!(dir = %path.display(), "reclaimed while being created; again");
        }
        Err(io("creating a directory in", parent)(
            std::io::Error::other("a concurrent cleanup kept removing it"),
        ))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Remove it: the contents first, the directory (and with it the lock) last.
    pub fn remove(mut self) -> Result<()> {
        self.remove_now()
    }

    /// Leave it in place (unlocked: a later [`reclaim`] treats it as a dead run's).
    pub fn keep(mut self) -> PathBuf {
        self.lock = None;
        self.path.clone()
    }

    fn remove_now(&mut self) -> Result<()> {
        if self.lock.is_none() {
            return Ok(());
        }
        remove_locked(&self.path)?;
        self.lock = None;
        Ok(())
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if let Err(e) = self.remove_now() {
            tracing::warn!(dir = %self.path.display(), error = %e, "removing the run directory");
        }
    }
}

/// Remove the contents of `dir`, then `dir`. Entries already gone are fine (a concurrent
/// remover); the caller holds the directory's lock, so nobody else should be in it.
fn remove_locked(dir: &Path) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("listing", dir)(e)),
    };
    for e in entries {
        let e = e.map_err(io("listing", dir))?;
        let p = e.path();
        let r = match e.file_type() {
            Ok(t) if t.is_dir() => fs::remove_dir_all(&p),
            _ => fs::remove_file(&p),
        };
        match r {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("removing", &p)(e)),
        }
    }
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("removing", dir)(e)),
    }
}

fn open_dir(path: &Path) -> std::io::Result<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(Into::into)
}

/// Whether `path` still names the (undeleted) directory `fd` is open on.
fn same_dir(path: &Path, fd: &OwnedFd) -> bool {
    let (Ok(a), Ok(b)) = (rustix::fs::fstat(fd), rustix::fs::lstat(path)) else {
        return false;
    };
    a.st_nlink > 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino
}

/// Remove the `PREFIX*` directories in `parent` whose run is gone: their lock is free (and no
/// held `lock` file inside, the older scheme) and nothing is mounted at or below them. For
/// each, `before(path)` runs first (the caller's own undo); when it fails, that directory is
/// kept and the error returned. Live runs, mounted directories and other names are left
/// alone. Returns the directories removed. A missing `parent` has nothing to reclaim.
pub fn reclaim(
    parent: &Path,
    prefix: &str,
    mut before: impl FnMut(&Path) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>,
) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let entries = match fs::read_dir(parent) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(io("listing", parent)(e)),
    };
    let mounts = diskforge_mount::mounts().unwrap_or_default();
    for e in entries {
        let e = e.map_err(io("listing", parent))?;
        let ours = e
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(prefix));
        if !ours || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = e.path();
        let Ok(fd) = open_dir(&path) else {
            continue; // gone meanwhile
        };
        if rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive).is_err() {
            continue; // a live run (or another reclaim)
        }
        if held_lock_file(&path) || !same_dir(&path, &fd) {
            continue;
        }
        let abs = fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        if mounts.iter().any(|m| m.target.starts_with(&abs)) {
            tracing::warn!(dir = %path.display(), "a dead run's directory still has mounts: left");
            continue;
        }
        before(&path).map_err(|source| Error::Before {
            path: path.clone(),
            source,
        })?;
        remove_locked(&path)?;
        removed.push(path);
    }
    Ok(removed)
}

/// Whether `dir/lock` exists and a process holds its `flock` (a run of the older scheme).
fn held_lock_file(dir: &Path) -> bool {
    fs::File::open(dir.join("lock"))
        .is_ok_and(|f| rustix::fs::flock(&f, FlockOperation::NonBlockingLockExclusive).is_err())
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "t-run.";

    #[test]
    fn a_live_run_is_kept_and_its_remove_takes_everything() {
        let parent = tempfile::tempdir().unwrap();
        let run = RunDir::create(parent.path(), P).unwrap();
        fs::create_dir_all(run.path().join("a/b")).unwrap();
        fs::write(run.path().join("a/b/f"), b"x").unwrap();
        assert!(reclaim(parent.path(), P, |_| Ok(())).unwrap().is_empty());
        assert!(run.path().join("a/b/f").exists());
        let p = run.path().to_owned();
        run.remove().unwrap();
        assert!(!p.exists());
    }

    #[test]
    fn a_dead_run_is_reclaimed_after_its_undo_even_half_removed() {
        let parent = tempfile::tempdir().unwrap();
        // What a kill halfway through a teardown leaves: an unlocked directory, no lock file.
        let dead = parent.path().join(format!("{P}dead"));
        fs::create_dir_all(dead.join("built/bin")).unwrap();
        fs::write(dead.join("built/bin/ash"), b"x").unwrap();
        let other = parent.path().join("not-ours");
        fs::create_dir(&other).unwrap();
        let mut undone = Vec::new();
        let gone = reclaim(parent.path(), P, |p| {
            undone.push(p.to_owned());
            Ok(())
        })
        .unwrap();
        assert_eq!(gone, std::slice::from_ref(&dead));
        assert_eq!(undone, std::slice::from_ref(&dead));
        assert!(!dead.exists() && other.exists());
        // Idempotent.
        assert!(reclaim(parent.path(), P, |_| Ok(())).unwrap().is_empty());
    }

    #[test]
    fn a_failed_undo_keeps_the_directory_and_says_so() {
        let parent = tempfile::tempdir().unwrap();
        let dead = parent.path().join(format!("{P}dead"));
        fs::create_dir(&dead).unwrap();
        let e = reclaim(parent.path(), P, |_| Err("state is unreadable".into())).unwrap_err();
        assert!(dead.exists());
        assert!(e.to_string().contains("dead"), "{e}");
    }

    #[test]
    fn a_held_lock_file_inside_counts_as_live() {
        let parent = tempfile::tempdir().unwrap();
        let old = parent.path().join(format!("{P}old"));
        fs::create_dir(&old).unwrap();
        let f = fs::File::create(old.join("lock")).unwrap();
        rustix::fs::flock(&f, FlockOperation::NonBlockingLockExclusive).unwrap();
        assert!(reclaim(parent.path(), P, |_| Ok(())).unwrap().is_empty());
        drop(f);
        assert_eq!(reclaim(parent.path(), P, |_| Ok(())).unwrap(), [old]);
    }

    #[test]
    fn kept_directories_stay_until_reclaimed() {
        let parent = tempfile::tempdir().unwrap();
        let run = RunDir::create(parent.path(), P).unwrap();
        let p = run.keep();
        assert!(p.is_dir());
        assert_eq!(reclaim(parent.path(), P, |_| Ok(())).unwrap(), [p]);
    }

    #[test]
    fn same_dir_notices_a_directory_removed_under_its_lock() {
        let parent = tempfile::tempdir().unwrap();
        let run = RunDir::create(parent.path(), P).unwrap();
        // Simulate a reclaim that removed the fresh directory before the lock was taken.
        let fd = open_dir(run.path()).unwrap();
        fs::remove_dir(run.path()).unwrap();
        assert!(!same_dir(run.path(), &fd));
        drop(run);
    }
}
