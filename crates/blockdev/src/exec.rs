//! Running a [`Plan`] offline, with a JSON state directory written after every step, and the
//! `getval`, `cleanup` and `delete` commands that work from that state alone.
//!
//! Offline means: image files created sparse, partition tables written into them by
//! diskforge-part, filesystems made from the root tree into byte ranges by diskforge-mkfs
//! (`Target::Region`), `etc/fstab` written into the tree first. No loop device, no mount,
//! so nothing can be left attached or mounted; what is left on failure is files, which are
//! removed in reverse order unless the caller keeps them.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::plan::{Device, FsPlan, Plan, Route, Step};
use crate::{Error, Result};

/// The state file inside the state directory.
pub const STATE_FILE: &str = "state.json";

/// What `create` did, written to `STATE_DIR/state.json` after every step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The plan being built.
    pub plan: Plan,
    /// How many steps are done.
    pub done: usize,
    /// Image files this build created (removed by `delete`).
    pub images: Vec<PathBuf>,
    /// The fstab this build wrote, and a copy of the file it replaced (in the state dir).
    pub fstab: Option<(PathBuf, Option<PathBuf>)>,
    /// Scratch directories under the state dir (removed by `cleanup`).
    pub scratch: Vec<PathBuf>,
    /// Set when a step failed: its index and the error.
    pub failed: Option<(usize, String)>,
}

/// Progress events for a caller to render.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum Event {
    /// Step `index` of `total` starts.
    Start {
        /// Index.
        index: usize,
        /// Steps in all.
        total: usize,
        /// What it is about.
        node: String,
    },
    /// Step `index` finished.
    Done {
        /// Index.
        index: usize,
    },
}

/// Options for [`create`].
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// Keep the half-made image files when a step fails (default: remove them).
    pub keep_on_error: bool,
    /// Test hook: fail step N (0-based) before it runs.
    pub fail_at: Option<usize>,
    /// Set (by a SIGINT/SIGTERM handler) to stop before the next step and unwind.
    pub cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

fn io(action: impl Into<String>, path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    let action = action.into();
    move |source| Error::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// The first step that needs the kernel, as ([node type], node).
fn kernel_step(plan: &Plan) -> Option<(&'static str, String)> {
    if let Route::Offline = plan.route {
        return None;
    }
    plan.steps
        .iter()
        .find_map(|s| match s {
            Step::PhysicalVolume { pv, .. } => Some(("pv", pv.clone())),
            Step::VolumeGroup { vg, .. } => Some(("vg", vg.clone())),
            Step::LogicalVolume { lv, .. } => Some(("lv", lv.clone())),
            Step::Mkfs { filesystem } if matches!(filesystem.device, Device::Lv { .. }) => {
                Some(("mkfs", filesystem.name.clone()))
            }
            _ => None,
        })
        .or_else(|| Some(("lvm", String::new())))
}

fn write_state(dir: &Path, st: &State) -> Result<()> {
    let path = dir.join(STATE_FILE);
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let text = serde_json::to_string_pretty(st).map_err(|e| Error::State {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    fs::write(&tmp, text).map_err(io("writing", &tmp))?;
    fs::rename(&tmp, &path).map_err(io("renaming into place", &path))
}

/// Read `STATE_DIR/state.json`.
pub fn read_state(dir: &Path) -> Result<State> {
    let path = dir.join(STATE_FILE);
    let text = fs::read_to_string(&path).map_err(|e| Error::State {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| Error::State {
        path,
        reason: e.to_string(),
    })
}

/// Build `plan` offline, recording each step in `state_dir`. On failure everything this run
/// made is removed in reverse order (unless [`CreateOptions::keep_on_error`]), the state
/// records the failure, and the error is returned.
pub fn create(
    plan: &Plan,
    state_dir: &Path,
    opts: &CreateOptions,
    progress: &mut dyn FnMut(Event),
) -> Result<State> {
    if let Some((kind, node)) = kernel_step(plan) {
        return Err(Error::KernelRoute { kind, node });
    }
    fs::create_dir_all(state_dir).map_err(io("creating", state_dir))?;
    let mut st = State {
        plan: plan.clone(),
        done: 0,
        images: Vec::new(),
        fstab: None,
        scratch: Vec::new(),
        failed: None,
    };
    write_state(state_dir, &st)?;
    let total = plan.steps.len();
    for (i, step) in plan.steps.iter().enumerate() {
        progress(Event::Start {
            index: i,
            total,
            node: step.node().to_owned(),
        });
        let cancelled = opts
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(std::sync::atomic::Ordering::SeqCst));
        let res = if cancelled {
            Err(Error::Interrupted {
                step: i,
                node: step.node().to_owned(),
            })
        } else if opts.fail_at == Some(i) {
            Err(Error::Injected {
                step: i,
                node: step.node().to_owned(),
            })
        } else {
            run_step(step, state_dir, &mut st)
        };
        if let Err(e) = res {
            tracing::error!(step = i, error = %e, "block-device step failed; unwinding");
            st.failed = Some((i, format!("{e}")));
            if !opts.keep_on_error {
                unwind(&mut st);
            }
            if let Err(se) = write_state(state_dir, &st) {
                tracing::warn!(error = %se, "writing the state after a failure");
            }
            return Err(e);
        }
        st.done = i + 1;
        write_state(state_dir, &st)?;
        progress(Event::Done { index: i });
    }
    Ok(st)
}

/// Undo what `st` records, in reverse: scratch dirs, the fstab, image files.
fn unwind(st: &mut State) {
    for d in st.scratch.drain(..).rev() {
        if let Err(e) = fs::remove_dir_all(&d)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %d.display(), error = %e, "removing scratch directory");
        }
    }
    if let Some((path, backup)) = st.fstab.take() {
        let res = match &backup {
            Some(b) => fs::rename(b, &path),
            None => fs::remove_file(&path),
        };
        if let Err(e) = res
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "restoring fstab");
        }
    }
    for img in st.images.drain(..).rev() {
        if let Err(e) = fs::remove_file(&img)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %img.display(), error = %e, "removing image");
        }
    }
}

fn run_step(step: &Step, state_dir: &Path, st: &mut State) -> Result<()> {
    match step {
        Step::CreateImage { path, size, .. } => {
            if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                fs::create_dir_all(d).map_err(io("creating", d))?;
            }
            let f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .map_err(|e| {
                    if e.kind() == std::io::ErrorKind::AlreadyExists {
                        Error::Exists { path: path.clone() }
                    } else {
                        io("creating", path)(e)
                    }
                })?;
            st.images.push(path.clone());
            f.set_len(*size)
                .map_err(io(format!("sizing to {size} bytes"), path))?;
        }
        Step::PartitionTable {
            table,
            path,
            layout,
            ..
        } => {
            diskforge_part::create(path, layout, &diskforge_part::WriteOptions::default())
                .map_err(|source| Error::Part {
                    node: table.clone(),
                    source: Box::new(source),
                })?;
        }
        Step::WriteFstab { path, contents } => {
            let dir = path.parent().unwrap_or(Path::new("/"));
            fs::create_dir_all(dir).map_err(io("creating", dir))?;
            let backup = if path.exists() {
                let b = state_dir.join("fstab.orig");
                fs::copy(path, &b).map_err(io("saving a copy of", path))?;
                Some(b)
            } else {
                None
            };
            st.fstab = Some((path.clone(), backup));
            let tmp = dir.join(".fstab.diskforge.tmp");
            fs::write(&tmp, contents).map_err(io("writing", &tmp))?;
            fs::rename(&tmp, path).map_err(io("renaming into place", path))?;
        }
        Step::Mkfs { filesystem } => mkfs(filesystem, state_dir, st)?,
        Step::PhysicalVolume { pv, .. } => {
            return Err(Error::KernelRoute {
                kind: "pv",
                node: pv.clone(),
            });
        }
        Step::VolumeGroup { vg, .. } => {
            return Err(Error::KernelRoute {
                kind: "vg",
                node: vg.clone(),
            });
        }
        Step::LogicalVolume { lv, .. } => {
            return Err(Error::KernelRoute {
                kind: "lv",
                node: lv.clone(),
            });
        }
    }
    Ok(())
}

/// The one call into diskforge-mkfs (kept in one place: the regions API is being reworked).
fn mkfs(fs: &FsPlan, state_dir: &Path, st: &mut State) -> Result<()> {
    let Device::Region {
        image,
        offset,
        size,
    } = &fs.device
    else {
        return Err(Error::KernelRoute {
            kind: "mkfs",
            node: fs.name.clone(),
        });
    };
    let mut opts = diskforge_mkfs::MkfsOptions::new(fs.fs_type);
    if fs.fs_type.max_label().is_some() {
        opts.label = Some(fs.label.clone());
    }
    opts.uuid = fs.uuid.clone();
    opts.extra_args = fs.opts.clone();
    opts.source_date_epoch = fs.epoch;
    let mut scratch = None;
    if let Some(src) = &fs.source {
        if fs.exclude.is_empty() {
            opts.populate_from = Some(src.clone());
        } else {
            let stage = state_dir.join(format!("stage-{}", fs.name));
            st.scratch.push(stage.clone());
            stage_tree(src, &stage, &fs.exclude)?;
            opts.populate_from = Some(stage.clone());
            scratch = Some(stage);
        }
    }
    let target = diskforge_mkfs::Target::Region {
        image: image.clone(),
        offset: *offset,
        size: *size,
    };
    let res = diskforge_mkfs::mkfs(&opts, &target).map_err(|source| Error::Mkfs {
        node: fs.name.clone(),
        source: Box::new(source),
    });
    if let Some(stage) = scratch {
        fs::remove_dir_all(&stage).map_err(io("removing", &stage))?;
        st.scratch.retain(|s| s != &stage);
    }
    res.map(|_| ())
}

/// Make `stage` a view of `src` without the `exclude` subtrees (left as empty directories
/// with their metadata): directories are recreated, everything else is hard-linked (copied
/// when `src` is on another filesystem), so ownership, modes and times carry over.
fn stage_tree(src: &Path, stage: &Path, exclude: &[String]) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let skip: Vec<PathBuf> = exclude.iter().map(|e| src.join(e)).collect();
    let mut stack = vec![(src.to_path_buf(), stage.to_path_buf())];
    while let Some((from, to)) = stack.pop() {
        let meta = fs::symlink_metadata(&from).map_err(io("reading", &from))?;
        fs::create_dir(&to).map_err(io("creating", &to))?;
        fs::set_permissions(&to, fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(io("setting the mode of", &to))?;
        std::os::unix::fs::lchown(&to, Some(meta.uid()), Some(meta.gid())).or_else(|e| {
            // Not root: the owner stays ours, as it would with any unprivileged copy.
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                Ok(())
            } else {
                Err(io("chown", &to)(e))
            }
        })?;
        if skip.contains(&from) {
            continue;
        }
        for e in fs::read_dir(&from).map_err(io("reading", &from))? {
            let e = e.map_err(io("reading", &from))?;
            let (p, q) = (e.path(), to.join(e.file_name()));
            let ft = e.file_type().map_err(io("reading", &p))?;
            if ft.is_dir() {
                stack.push((p, q));
            } else if let Err(err) = fs::hard_link(&p, &q) {
                if err.raw_os_error() != Some(18) {
                    // 18 = EXDEV: another filesystem; anything else is an error.
                    return Err(io("linking", &p)(err));
                }
                if ft.is_symlink() {
                    let t = fs::read_link(&p).map_err(io("reading", &p))?;
                    std::os::unix::fs::symlink(t, &q).map_err(io("creating", &q))?;
                } else {
                    fs::copy(&p, &q).map_err(io("copying", &p))?;
                }
            }
        }
    }
    Ok(())
}

/// Remove what a finished (or failed) build leaves besides its images: scratch directories
/// and the state directory. Idempotent: a missing state directory is not an error.
pub fn cleanup(state_dir: &Path) -> Result<()> {
    if !state_dir.join(STATE_FILE).exists() {
        return Ok(());
    }
    let mut st = read_state(state_dir)?;
    for d in st.scratch.drain(..) {
        if let Err(e) = fs::remove_dir_all(&d)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(io("removing", &d)(e));
        }
    }
    fs::remove_dir_all(state_dir).map_err(io("removing", state_dir))
}

/// Like [`cleanup`], and remove the image files the build created (dib's `delete`, for
/// failed builds) and restore the fstab it replaced.
pub fn delete(state_dir: &Path) -> Result<()> {
    if !state_dir.join(STATE_FILE).exists() {
        return Ok(());
    }
    let mut st = read_state(state_dir)?;
    unwind(&mut st);
    fs::remove_dir_all(state_dir).map_err(io("removing", state_dir))
}

/// dib's `getval SYMBOL`, answered from the plan: `image-path`, `image-block-partition`
/// (offline: `IMAGE@OFFSET+SIZE`), `root-label`, `root-fstype`, `boot-label`, `mount-points`
/// (`|`-joined), `image-block-devices`.
pub fn getval(plan: &Plan, symbol: &str) -> Result<String> {
    let err = |reason: &str| Error::GetVal {
        symbol: symbol.to_owned(),
        reason: reason.to_owned(),
    };
    let fs_at = |mp: &str| {
        plan.filesystems
            .iter()
            .find(|f| f.mount_point.as_deref() == Some(mp))
    };
    let region = |d: &Device| match d {
        Device::Region {
            image,
            offset,
            size,
        } => format!("{}@{offset}+{size}", image.display()),
        Device::Lv { vg, lv, .. } => format!("/dev/mapper/{vg}-{lv}"),
    };
    Ok(match symbol {
        "image-path" => plan
            .disks
            .iter()
            .find(|d| d.name == "image0")
            .or(plan.disks.first())
            .map(|d| d.path.display().to_string())
            .ok_or_else(|| err("no local_loop image in the config"))?,
        "root-label" => fs_at("/")
            .map(|f| f.label.clone())
            .ok_or_else(|| err("nothing is mounted at /"))?,
        "root-fstype" => fs_at("/")
            .map(|f| f.fs_type.to_string())
            .ok_or_else(|| err("nothing is mounted at /"))?,
        "boot-label" => fs_at("/boot").map(|f| f.label.clone()).unwrap_or_default(),
        "mount-points" => plan.mount_order.join("|"),
        "image-block-partition" => plan
            .filesystems
            .iter()
            .find(|f| f.base == "root")
            .map(|f| region(&f.device))
            .or_else(|| {
                plan.disks
                    .iter()
                    .find(|d| d.name == "image0")
                    .map(|d| format!("{}@0+{}", d.path.display(), d.size))
            })
            .ok_or_else(|| err("no block device named root or image0"))?,
        "image-block-devices" => plan
            .filesystems
            .iter()
            .map(|f| format!(" [{}]={} ", f.base, region(&f.device)))
            .collect(),
        _ => {
            return Err(err(
                "unknown symbol (image-path, image-block-partition, image-block-devices, root-label, root-fstype, boot-label, mount-points)",
            ));
        }
    })
}
