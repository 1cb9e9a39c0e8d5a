//! The content-addressed layer store.
//!
//! Layout of a store directory:
//! - `layers/HEX/`: an unpacked layer in overlay format, `HEX` being its diff_id (sha256 of
//!   the uncompressed tar);
//! - `blobs/HEX`: for a (possibly compressed) blob with digest `sha256:HEX`, the diff_id it
//!   unpacked to, so a blob is unpacked only once;
//! - `implicit/HEX`: the directories layer `HEX` needed but did not list (NUL-separated
//!   relative paths, `""` = its root), which a stack gives the metadata from below;
//! - `stacks/KEY/`: fix-up layers, one per stack that needs one (see [`Store::stack`]);
//! - `empty/`: an empty directory, the bottom of one-layer stacks (overlayfs wants two
//!   lower layers without an upper one);
//! - `tmp/`: layers being unpacked or staged (renamed into `layers/` when complete), each locked with
//!   `flock` by the process writing it; unlocked leftovers of interrupted runs are removed
//!   when the store is next opened (and by [`Store::gc`]);
//! - `lock`: taken shared while a `tmp/` entry is created and locked, exclusive while
//!   leftovers are removed, so a running unpack is never touched.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io::BufReader;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, Mode, OFlags};

use crate::digest::{HashReader, decompress, file_digest, sha256_hex};
use crate::oci::write_atomic;
use crate::{Error, Limits, Result, UnpackStats, unpack_tar};

/// Largest amount of data accepted after a tar stream's end-of-archive blocks (1 MiB): the
/// padding of the last record (10 KiB for GNU tar's default blocking factor, at most 1 MiB
/// for any factor it accepts).
pub(crate) const MAX_TRAILING: u64 = 1 << 20;

/// Where a layer came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LayerOrigin {
    /// A plain directory, used in place.
    Dir,
    /// A tarball file.
    Tarball {
        /// The blob's digest.
        digest: String,
    },
    /// A layer blob of an OCI image layout.
    Oci {
        /// The layout directory.
        layout: PathBuf,
        /// The blob's digest.
        digest: String,
    },
    /// Made by [`Store::stack`]: directory metadata the stack's layers leave implicit, or
    /// the empty bottom of a one-layer stack.
    Fixup,
}

/// What [`Store::gc`] (and opening a store) removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    /// Leftover temporary entries of interrupted unpacks that were removed.
    pub removed: Vec<PathBuf>,
    /// Temporary entries skipped because a running process holds them.
    pub in_use: Vec<PathBuf>,
}

/// A layer ready to be stacked: an overlay-format directory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Layer {
    /// The directory to use as a lowerdir.
    pub path: PathBuf,
    /// The layer's diff_id, for unpacked layers.
    pub diff_id: Option<String>,
    /// Where it came from.
    pub origin: LayerOrigin,
    /// Whether the store already had it (nothing was unpacked).
    pub reused: bool,
    /// What unpacking did, when it happened now.
    pub unpacked: Option<UnpackStats>,
}

/// A directory being filled in the store's `tmp/` ([`Store::staging`]), locked by this
/// process until it is adopted as a layer ([`Store::adopt`]) or dropped (removed).
#[derive(Debug)]
pub struct Staging {
    dir: tempfile::TempDir,
    _lock: OwnedFd,
}

impl Staging {
    /// The directory to fill.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Progress of an unpack, reported to the callback given to [`Store::with_progress`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UnpackProgress {
    /// The archive being unpacked.
    pub source: PathBuf,
    /// Bytes of the (possibly compressed) archive read so far.
    pub read: u64,
    /// The archive's size.
    pub total: u64,
    /// Whether this archive is finished.
    pub done: bool,
}

/// Callback for [`UnpackProgress`].
pub type ProgressFn = std::sync::Arc<dyn Fn(&UnpackProgress) + Send + Sync>;

/// How many layers of one image are unpacked at once, at most (fewer on fewer CPUs).
const UNPACK_THREADS: usize = 4;

/// How often (in archive bytes) progress is reported.
const PROGRESS_STEP: u64 = 4 << 20;

/// A content-addressed store of unpacked layers.
#[derive(Clone)]
pub struct Store {
    root: PathBuf,
    limits: Limits,
    progress: Option<ProgressFn>,
    opened: GcReport,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("root", &self.root)
            .field("limits", &self.limits)
            .finish()
    }
}

/// Counts bytes read from an archive file and reports them.
struct ProgressReader<R> {
    inner: R,
    report: Option<ProgressFn>,
    state: UnpackProgress,
    last: u64,
}

impl<R: std::io::Read> std::io::Read for ProgressReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.state.read += n as u64;
        if let Some(r) = &self.report
            && self.state.read - self.last >= PROGRESS_STEP
        {
            self.last = self.state.read;
            r(&self.state);
        }
        Ok(n)
    }
}

impl Store {
    /// The default store: `$DFLAYERS_STORE`, else `/var/lib/diskforge/layers`.
    pub fn default_root() -> PathBuf {
        std::env::var_os("DFLAYERS_STORE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/lib/diskforge/layers"))
    }

    /// Open (creating if needed) the store at `root`, with default [`Limits`]. Leftovers of
    /// interrupted unpacks in `tmp/` are removed (see [`Store::gc`]).
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let root = root.into();
        for sub in ["layers", "blobs", "tmp", "implicit", "stacks", "empty"] {
            let p = root.join(sub);
            std::fs::create_dir_all(&p)
                .map_err(|e| Error::io("creating store directory", &p, e))?;
        }
        let mut store = Store {
            root,
            limits: Limits::default(),
            progress: None,
            opened: GcReport::default(),
        };
        store.opened = match store.gc() {
            Ok(r) => r,
            // A store we may only read (another user's, a read-only mount) is used as is.
            Err(Error::Sys {
                source:
                    rustix::io::Errno::ACCESS | rustix::io::Errno::ROFS | rustix::io::Errno::PERM,
                ..
            }) => GcReport::default(),
            Err(e) => return Err(e),
        };
        Ok(store)
    }

    /// Take the store lock (`flock` on `STORE/lock`), shared or exclusive, blocking.
    fn lock(&self, exclusive: bool) -> Result<OwnedFd> {
        let p = self.root.join("lock");
        let fd = rustix::fs::open(
            &p,
            OFlags::CREATE | OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(0o644),
        )
        .map_err(|e| Error::sys("opening store lock", &p, e))?;
        let op = if exclusive {
            FlockOperation::LockExclusive
        } else {
            FlockOperation::LockShared
        };
        rustix::fs::flock(&fd, op).map_err(|e| Error::sys("locking", &p, e))?;
        Ok(fd)
    }

    /// A new directory in `tmp/` (`PREFIX*`), locked by us until the returned fd is closed.
    fn locked_tempdir(&self, prefix: &str) -> Result<(tempfile::TempDir, OwnedFd)> {
        let _store = self.lock(false)?;
        diskforge_fault::point("layers.store.tmp")?;
        let tmp_base = self.root.join("tmp");
        let tmp = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(&tmp_base)
            .map_err(|e| Error::io("creating temporary directory in", &tmp_base, e))?;
        let fd = crate::fsutil::open_dir(tmp.path())?;
        rustix::fs::flock(&fd, FlockOperation::LockExclusive)
            .map_err(|e| Error::sys("locking", tmp.path(), e))?;
        Ok((tmp, fd))
    }

    /// Remove what interrupted unpacks (SIGINT, SIGTERM, SIGKILL, power loss) left in
    /// `tmp/`: every entry no running process holds locked. Entries of running unpacks are
    /// reported as in use and kept. Also done by [`Store::open`].
    pub fn gc(&self) -> Result<GcReport> {
        let _store = self.lock(true)?;
        let tmp = self.root.join("tmp");
        let tmp_fd = crate::fsutil::open_dir(&tmp)?;
        let mut report = GcReport::default();
        for name in crate::fsutil::sorted_entries(&tmp)? {
            let p = tmp.join(&name);
            match crate::fsutil::open_dir_at(&tmp_fd, &name) {
                Ok(fd) => match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
                    Ok(()) => {}
                    Err(rustix::io::Errno::WOULDBLOCK) => {
                        report.in_use.push(p);
                        continue;
                    }
                    Err(e) => return Err(Error::sys("locking", &p, e)),
                },
                // Not a directory: a leftover file (nothing of ours stays open as a file here).
                Err(rustix::io::Errno::NOTDIR) | Err(rustix::io::Errno::LOOP) => {}
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(Error::sys("opening", &p, e)),
            }
            diskforge_fault::point("layers.gc.remove")?;
            // Its owner may be removing it at the same time (it unlocked first): gone is fine.
            match crate::fsutil::remove_tree_at(&tmp_fd, &name) {
                Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                Err(e) => return Err(Error::sys("removing stale temporary entry", &p, e)),
            }
            report.removed.push(p);
        }
        Ok(report)
    }

    /// Use these limits for every archive unpacked from now on.
    pub fn with_limits(mut self, limits: Limits) -> Store {
        self.limits = limits;
        self
    }

    /// Report unpack progress to `f` (every few MiB of archive read, and when done).
    pub fn with_progress(mut self, f: ProgressFn) -> Store {
        self.progress = Some(f);
        self
    }

    /// What [`Store::open`] cleaned up (see [`Store::gc`]).
    pub fn cleaned_at_open(&self) -> &GcReport {
        &self.opened
    }

    /// The store directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory an unpacked layer with `diff_id` lives in (whether or not it exists).
    pub fn layer_dir(&self, diff_id: &str) -> Option<PathBuf> {
        sha256_hex(diff_id).map(|h| self.root.join("layers").join(h))
    }

    /// Resolve a `--layer` argument into layers, base first:
    /// - an OCI layout directory, optionally `LAYOUT:REF` to pick an image → its layers;
    /// - another directory → used in place (it must already be in overlay format);
    /// - a file → a layer tarball (`.tar`, `.tar.gz`, `.tar.zst`).
    pub fn resolve(&self, spec: &str) -> Result<Vec<Layer>> {
        let p = Path::new(spec);
        if p.is_dir() {
            if crate::oci::is_layout(p) {
                return self.import_oci(p, None);
            }
            return Ok(vec![Layer {
                path: p.to_owned(),
                diff_id: None,
                origin: LayerOrigin::Dir,
                reused: true,
                unpacked: None,
            }]);
        }
        if p.is_file() {
            return Ok(vec![self.import_tarball(p)?]);
        }
        if let Some((layout, reference)) = spec.rsplit_once(':') {
            let lp = Path::new(layout);
            if crate::oci::is_layout(lp) {
                return self.import_oci(lp, Some(reference));
            }
        }
        Err(Error::BadSource {
            spec: spec.to_owned(),
            reason: "no such directory, file or OCI layout".into(),
        })
    }

    /// A new, empty directory (mode 0755) in the store's `tmp/`, locked by this process, to
    /// fill and then make a layer with [`Store::adopt`] (no tarball, no unpacking: for a tree
    /// made in place, such as a bootstrapped base). Dropped without `adopt`, it is removed;
    /// left by a killed process, the next [`Store::open`] removes it.
    pub fn staging(&self) -> Result<Staging> {
        let (dir, lock) = self.locked_tempdir("staging-")?;
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .map_err(|e| Error::io("chmod", dir.path(), e))?;
        Ok(Staging { dir, _lock: lock })
    }

    /// Make the filled `staging` directory a layer: its diff_id is the digest of the layer
    /// tarball [`crate::write_layer`] would write from it (computed, nothing written), and the
    /// directory itself is renamed into `layers/`. `alongside` runs on the staging directory
    /// (read only: e.g. a copy of the tree) in a thread of its own while the digest is
    /// computed; its result comes back with the layer. Overlay-format rules apply as for
    /// `write_layer`: a character device 0/0 is a whiteout.
    pub fn adopt<T: Send>(
        &self,
        staging: Staging,
        alongside: impl FnOnce(&Path) -> T + Send,
    ) -> Result<(Layer, T)> {
        let src = staging.dir.path();
        let opts = crate::TarOptions {
            compression: crate::Compression::None,
            clamp_mtime: None,
            overwrite: true,
        };
        let (stats, other) = std::thread::scope(|s| {
            let other = s.spawn(|| alongside(src));
            let stats = crate::write_layer_to(src, std::io::sink(), opts).map(|(_, st)| st);
            (stats, other.join())
        });
        let other = match other {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        let diff_id = stats?.diff_id;
        let dir = self.layer_dir(&diff_id).ok_or_else(|| Error::Oci {
            path: src.to_owned(),
            reason: format!("bad diff_id {diff_id}"),
        })?;
        // Every directory is listed: none implicit.
        write_atomic(&self.implicit_file(&diff_id)?, b"")?;
        diskforge_fault::point("layers.store.publish")?;
        let reused = match std::fs::rename(src, &dir) {
            Ok(()) => false,
            // The same content is there already (a parallel build was first): ours goes.
            Err(_) if dir.is_dir() => true,
            Err(e) => return Err(Error::io("moving the staged layer to", &dir, e)),
        };
        if let Some(hex) = sha256_hex(&diff_id) {
            write_atomic(&self.root.join("blobs").join(hex), diff_id.as_bytes())?;
        }
        drop(staging);
        Ok((
            Layer {
                path: dir,
                diff_id: Some(diff_id),
                origin: LayerOrigin::Dir,
                reused,
                unpacked: None,
            },
            other,
        ))
    }

    /// Unpack a layer tarball (compression recognised from its first bytes), or reuse it.
    pub fn import_tarball(&self, path: &Path) -> Result<Layer> {
        let digest = file_digest(path)?;
        let (dir, diff_id, reused, unpacked) = self.import_blob(path, &digest, None)?;
        Ok(Layer {
            path: dir,
            diff_id: Some(diff_id),
            origin: LayerOrigin::Tarball { digest },
            reused,
            unpacked,
        })
    }

    /// Unpack every layer of image `reference` (or the only image) of an OCI layout, verifying
    /// all digests and each layer's diff_id.
    pub fn import_oci(&self, layout: &Path, reference: Option<&str>) -> Result<Vec<Layer>> {
        type Imported = (PathBuf, String, bool, Option<UnpackStats>);
        let image = crate::oci::read_image(layout, reference)?;
        // Layers unpack into directories of their own: several at once (distinct blobs only;
        // a repeated blob is the same layer).
        let mut unique: Vec<usize> = Vec::new();
        for (i, b) in image.layers.iter().enumerate() {
            if !unique.iter().any(|&u| image.layers[u].digest == b.digest) {
                unique.push(i);
            }
        }
        let results: Vec<std::sync::Mutex<Option<Result<Imported>>>> =
            unique.iter().map(|_| std::sync::Mutex::new(None)).collect();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let failed = std::sync::atomic::AtomicBool::new(false);
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(UNPACK_THREADS)
            .min(unique.len());
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    loop {
                        let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if k >= unique.len() || failed.load(std::sync::atomic::Ordering::Relaxed) {
                            break;
                        }
                        let blob = &image.layers[unique[k]];
                        let r = self.import_blob(&blob.path, &blob.digest, Some(&blob.diff_id));
                        if r.is_err() {
                            failed.store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                        if let Ok(mut slot) = results[k].lock() {
                            *slot = Some(r);
                        }
                    }
                });
            }
        });
        let mut done: Vec<Imported> = Vec::new();
        for (k, m) in results.into_iter().enumerate() {
            match m.into_inner().ok().flatten() {
                Some(Ok(v)) => done.push(v),
                Some(Err(e)) => return Err(e),
                // Not attempted because another layer failed (its error comes first) —
                // or, impossibly, a poisoned lock.
                None => {
                    return Err(Error::Oci {
                        path: image.layers[unique[k]].path.clone(),
                        reason: "not unpacked".into(),
                    });
                }
            }
        }
        let mut out = Vec::new();
        for blob in image.layers.iter() {
            let k = unique
                .iter()
                .position(|&u| image.layers[u].digest == blob.digest)
                .unwrap_or(0);
            let repeat = out.iter().any(|l: &Layer| {
                matches!(&l.origin, LayerOrigin::Oci { digest, .. } if *digest == blob.digest)
            });
            let Some((dir, diff_id, reused, unpacked)) = done.get(k) else {
                continue;
            };
            out.push(Layer {
                path: dir.clone(),
                diff_id: Some(diff_id.clone()),
                origin: LayerOrigin::Oci {
                    layout: layout.to_owned(),
                    digest: blob.digest.clone(),
                },
                // A repeated blob is found in the store the second time.
                reused: *reused || repeat,
                unpacked: if repeat { None } else { unpacked.clone() },
            });
        }
        Ok(out)
    }

    fn implicit_file(&self, diff_id: &str) -> Result<PathBuf> {
        let hex = sha256_hex(diff_id).ok_or_else(|| Error::Oci {
            path: self.root.clone(),
            reason: format!("bad diff_id {diff_id}"),
        })?;
        Ok(self.root.join("implicit").join(hex))
    }

    /// The directories `layer` needed but did not list (relative paths, `""` = root); empty
    /// for plain directories and for layers unpacked before this was recorded.
    fn implicit_dirs(&self, layer: &Layer) -> Result<BTreeSet<OsString>> {
        let Some(id) = &layer.diff_id else {
            return Ok(BTreeSet::new());
        };
        if self.layer_dir(id).as_deref() != Some(layer.path.as_path()) {
            return Ok(BTreeSet::new());
        }
        let f = self.implicit_file(id)?;
        match std::fs::read(&f) {
            // Each path is terminated by a NUL (the root is an empty path).
            Ok(raw) => Ok(raw
                .split_inclusive(|b| *b == 0)
                .map(|p| OsString::from_vec(p[..p.len() - 1].to_vec()))
                .collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeSet::new()),
            Err(e) => Err(Error::io("reading", &f, e)),
        }
    }

    /// The lower dirs (base first) that show `layers` exactly as applying them in order
    /// would (what `umoci unpack` makes), ready for [`crate::mount_stack`], [`crate::squash`]
    /// or a kernel overlay mount:
    /// - the same directory twice (a repeated layer) is kept once, at its topmost place
    ///   (overlayfs refuses a repeated lower dir with ELOOP);
    /// - layers below one whose root is opaque (`.wh..wh..opq` at the top) are dropped
    ///   (overlayfs ignores an opaque flag on a layer's root);
    /// - directories a layer needed but did not list (`a/b` for an entry `a/b/c`, or the
    ///   root) would show that layer's placeholder metadata: a fix-up layer on top
    ///   (`STORE/stacks/KEY/`) holds those directories and their parents with the owner,
    ///   mode, mtime and xattrs of the same directory below, or when no layer below has it,
    ///   mode [`crate::IMPLICIT_DIR_MODE`], owner 0:0 and mtime `SOURCE_DATE_EPOCH` (0 when
    ///   unset);
    /// - a stack of one layer gets the empty `STORE/empty/` below it, so it mounts as an
    ///   overlay (whiteouts hidden) rather than showing them.
    pub fn stack(&self, layers: &[Layer]) -> Result<Vec<Layer>> {
        let mut seen = BTreeSet::new();
        let mut kept: Vec<Layer> = Vec::new();
        for l in layers.iter().rev() {
            if seen.insert(l.path.clone()) {
                kept.push(l.clone());
            }
        }
        kept.reverse();
        // Metadata may come from below an opaque root (the directory stays, its children go).
        let paths: Vec<PathBuf> = kept.iter().map(|l| l.path.clone()).collect();
        let implicit = kept
            .iter()
            .map(|l| self.implicit_dirs(l))
            .collect::<Result<Vec<_>>>()?;
        let fixups = crate::merge::implicit_fixups(&paths, &implicit)?;
        if let Some(cut) = kept
            .iter()
            .rposition(|l| crate::fsutil::root_is_opaque(&l.path))
        {
            kept.drain(..cut);
        }
        if !fixups.is_empty() {
            let dir = self.fixup_layer(&paths, &fixups)?;
            kept.push(Layer {
                path: dir,
                diff_id: None,
                origin: LayerOrigin::Fixup,
                reused: true,
                unpacked: None,
            });
        }
        if kept.len() == 1 {
            kept.insert(
                0,
                Layer {
                    path: self.root.join("empty"),
                    diff_id: None,
                    origin: LayerOrigin::Fixup,
                    reused: true,
                    unpacked: None,
                },
            );
        }
        Ok(kept)
    }

    /// Write (once) the fix-up layer for the stack `paths`.
    fn fixup_layer(
        &self,
        paths: &[PathBuf],
        fixups: &std::collections::BTreeMap<OsString, crate::fsutil::DirSource>,
    ) -> Result<PathBuf> {
        use sha2::Digest as _;
        let sde = crate::source_date_epoch().unwrap_or(0);
        let mut h = sha2::Sha256::new();
        h.update(format!("fixup v1 sde={sde}\n"));
        for p in paths {
            h.update(p.as_os_str().as_bytes());
            h.update(b"\0");
        }
        let dir = self
            .root
            .join("stacks")
            .join(crate::digest::hex(&h.finalize()));
        if dir.is_dir() {
            return Ok(dir);
        }
        let (tmp, _lock) = self.locked_tempdir("stack-")?;
        diskforge_fault::point("layers.stack.fixup")?;
        crate::fsutil::write_dir_tree(tmp.path(), fixups, sde)?;
        diskforge_fault::point("layers.stack.publish")?;
        match std::fs::rename(tmp.path(), &dir) {
            Ok(()) => {}
            Err(_) if dir.is_dir() => {}
            Err(e) => return Err(Error::io("moving fix-up layer to", &dir, e)),
        }
        Ok(dir)
    }

    /// Unpack blob `path` (known to hash to `digest`) unless the store has it; returns the
    /// layer dir, its diff_id, whether it was reused, and the unpack stats.
    fn import_blob(
        &self,
        path: &Path,
        digest: &str,
        expect_diff_id: Option<&str>,
    ) -> Result<(PathBuf, String, bool, Option<UnpackStats>)> {
        let hex = sha256_hex(digest).ok_or_else(|| Error::Oci {
            path: path.to_owned(),
            reason: format!("bad digest {digest}"),
        })?;
        let index = self.root.join("blobs").join(hex);
        if let Ok(known) = std::fs::read_to_string(&index) {
            let known = known.trim().to_owned();
            if let Some(dir) = self.layer_dir(&known)
                && dir.is_dir()
            {
                if let Some(want) = expect_diff_id
                    && want != known
                {
                    return Err(Error::DigestMismatch {
                        path: path.to_owned(),
                        expected: want.to_owned(),
                        actual: known,
                    });
                }
                return Ok((dir, known, true, None));
            }
        }
        let (tmp, _lock) = self.locked_tempdir("unpack-")?;
        std::fs::set_permissions(
            tmp.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .map_err(|e| Error::io("chmod", tmp.path(), e))?;
        let file = std::fs::File::open(path).map_err(|e| Error::io("opening", path, e))?;
        let total = file
            .metadata()
            .map_err(|e| Error::io("inspecting", path, e))?
            .len();
        let state = UnpackProgress {
            source: path.to_owned(),
            read: 0,
            total,
            done: false,
        };
        let counted = ProgressReader {
            inner: file,
            report: self.progress.clone(),
            state,
            last: 0,
        };
        let reader = decompress(BufReader::with_capacity(1 << 20, counted))
            .map_err(|e| Error::io("reading", path, e))?;
        let mut hashed = HashReader::new(reader);
        let name = path.display().to_string();
        diskforge_fault::point("layers.unpack")?;
        let stats = unpack_tar(&mut hashed, tmp.path(), &name, &self.limits)?;
        // The diff_id covers the whole tar stream, including the end-of-archive padding
        // (a record's worth; GNU tar pads to 10 KiB). More than MAX_TRAILING bytes after the
        // end is no tar writer's padding but a decompression bomb: refused, not hashed.
        let trailing = std::io::copy(
            &mut std::io::Read::take(&mut hashed, MAX_TRAILING + 1),
            &mut std::io::sink(),
        )
        .map_err(|e| Error::io("reading", path, e))?;
        if trailing > MAX_TRAILING {
            return Err(Error::UnsafeEntry {
                archive: name,
                entry: "(end of archive)".into(),
                reason: format!(
                    "more than {MAX_TRAILING} bytes after the end of the archive (padding is \
                     never that long: a decompression bomb, or more than one tar stream)"
                ),
            });
        }
        let diff_id = hashed.digest();
        if let Some(want) = expect_diff_id
            && want != diff_id
        {
            return Err(Error::DigestMismatch {
                path: path.to_owned(),
                expected: want.to_owned(),
                actual: diff_id,
            });
        }
        let dir = self.layer_dir(&diff_id).ok_or_else(|| Error::Oci {
            path: path.to_owned(),
            reason: "bad diff_id".into(),
        })?;
        let mut list = Vec::new();
        for d in &stats.implicit_dirs {
            list.extend_from_slice(d.as_os_str().as_bytes());
            list.push(0);
        }
        write_atomic(&self.implicit_file(&diff_id)?, &list)?;
        diskforge_fault::point("layers.store.publish")?;
        match std::fs::rename(tmp.path(), &dir) {
            Ok(()) => {}
            // Someone (another blob with the same content, or a parallel import) was first.
            Err(_) if dir.is_dir() => {}
            Err(e) => return Err(Error::io("moving unpacked layer to", &dir, e)),
        }
        write_atomic(&index, diff_id.as_bytes())?;
        if let Some(report) = &self.progress {
            report(&UnpackProgress {
                source: path.to_owned(),
                read: total,
                total,
                done: true,
            });
        }
        Ok((dir, diff_id, false, Some(stats)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn unpacks_once_and_reports_progress() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(5);
        h.set_mode(0o640);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, "d/hello", &b"hello"[..]).unwrap();
        let tar = dir.path().join("l.tar");
        std::fs::write(&tar, b.into_inner().unwrap()).unwrap();

        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let store = Store::open(dir.path().join("store"))
            .unwrap()
            .with_progress(Arc::new(move |p| sink.lock().unwrap().push(p.clone())));
        let l = store.import_tarball(&tar).unwrap();
        assert!(!l.reused);
        assert_eq!(
            std::fs::read_to_string(l.path.join("d/hello")).unwrap(),
            "hello"
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(l.path.join("d/hello"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o7777, 0o640);
        assert_eq!(
            l.diff_id.as_deref(),
            Some(crate::digest::file_digest(&tar).unwrap().as_str())
        );
        let ev = events.lock().unwrap().clone();
        assert_eq!(
            ev.last().map(|e| (e.done, e.read == e.total)),
            Some((true, true))
        );
        assert!(store.import_tarball(&tar).unwrap().reused);
        assert_eq!(
            events.lock().unwrap().len(),
            ev.len(),
            "a reused layer is not unpacked again"
        );
    }

    /// A staged tree becomes a layer in place: the diff_id is that of the tarball
    /// `write_layer` makes from the same tree, `alongside` saw the staged files, nothing is
    /// left in `tmp/`, and importing that tarball later reuses the layer.
    #[test]
    fn staged_trees_are_adopted_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let staging = store.staging().unwrap();
        std::fs::create_dir(staging.path().join("etc")).unwrap();
        std::fs::write(staging.path().join("etc/hostname"), "base\n").unwrap();
        std::os::unix::fs::symlink("etc/hostname", staging.path().join("link")).unwrap();
        let tar = dir.path().join("same.tar");
        let opts = crate::TarOptions {
            compression: crate::Compression::None,
            clamp_mtime: None,
            overwrite: false,
        };
        let want = crate::write_layer(staging.path(), &tar, opts)
            .unwrap()
            .diff_id;
        let (layer, seen) = store
            .adopt(staging, |p| std::fs::read_to_string(p.join("etc/hostname")))
            .unwrap();
        assert_eq!(seen.unwrap(), "base\n");
        assert_eq!(layer.diff_id.as_deref(), Some(want.as_str()));
        assert_eq!(Some(layer.path.clone()), store.layer_dir(&want));
        assert_eq!(
            std::fs::read_link(layer.path.join("link")).unwrap(),
            Path::new("etc/hostname")
        );
        let mode = std::fs::metadata(&layer.path).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o7777,
            0o755
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("store/tmp"))
                .unwrap()
                .count(),
            0
        );
        assert!(store.import_tarball(&tar).unwrap().reused);
        // Dropped without adopting: removed.
        let gone = store.staging().unwrap();
        let p = gone.path().to_owned();
        drop(gone);
        assert!(!p.exists());
    }

    /// Issue 17 corpus (`bomb-trailing-64g.tar.zst`): data after the end of the archive is
    /// hashed only up to [`MAX_TRAILING`] (a record's padding fits); more is refused instead
    /// of reading up to the total-size limit (64 GiB of zeros took minutes).
    #[test]
    fn data_after_the_archive_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(1);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, "f", &b"x"[..]).unwrap();
        let tar = b.into_inner().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        // GNU tar's 10 KiB record padding is part of the stream (and of the diff_id).
        let padded = dir.path().join("padded.tar");
        let mut bytes = tar.clone();
        bytes.resize(10240, 0);
        std::fs::write(&padded, &bytes).unwrap();
        let l = store.import_tarball(&padded).unwrap();
        assert_eq!(
            l.diff_id.as_deref(),
            Some(crate::digest::file_digest(&padded).unwrap().as_str())
        );
        let bomb = dir.path().join("bomb.tar");
        let mut bytes = tar;
        bytes.resize(bytes.len() + MAX_TRAILING as usize + 1, 0);
        std::fs::write(&bomb, &bytes).unwrap();
        let e = store.import_tarball(&bomb).unwrap_err();
        assert!(e.is_refusal(), "{e}");
        assert!(
            e.to_string().contains("after the end of the archive"),
            "{e}"
        );
        assert!(e.to_string().contains("bomb.tar"), "{e}");
    }

    /// Defect 10 of issue 12: leftovers of a killed unpack are removed when the store is
    /// next opened (and by `gc`), but an unpack in progress (locked) is left alone.
    #[test]
    fn stale_temporary_entries_are_removed_but_not_locked_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let tmp = dir.path().join("store/tmp");
        // What SIGKILL leaves: a half-unpacked layer, read-only directories included.
        let stale = tmp.join("unpack-killed");
        std::fs::create_dir_all(stale.join("usr/lib")).unwrap();
        std::fs::write(stale.join("usr/lib/half"), "x").unwrap();
        std::fs::set_permissions(
            stale.join("usr"),
            std::os::unix::fs::PermissionsExt::from_mode(0o555),
        )
        .unwrap();
        std::fs::write(tmp.join("stray-file"), "x").unwrap();
        // A running unpack holds its directory locked.
        let (running, _lock) = store.locked_tempdir("unpack-").unwrap();
        let again = Store::open(dir.path().join("store")).unwrap();
        let mut removed = again.cleaned_at_open().removed.clone();
        removed.sort();
        assert_eq!(removed, vec![tmp.join("stray-file"), stale.clone()]);
        assert_eq!(
            again.cleaned_at_open().in_use,
            vec![running.path().to_owned()]
        );
        assert!(!stale.exists() && running.path().is_dir());
        assert_eq!(again.gc().unwrap().removed, Vec::<PathBuf>::new());
    }
}
