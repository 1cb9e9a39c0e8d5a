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

use crate::kernel::{self, Kernel, KernelState};
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
    /// Directories this build created for its images (removed again, when empty, with them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dirs: Vec<PathBuf>,
    /// The fstab this build wrote, and a copy of the file it replaced (in the state dir).
    pub fstab: Option<(PathBuf, Option<PathBuf>)>,
    /// Scratch directories under the state dir (removed by `cleanup`).
    pub scratch: Vec<PathBuf>,
    /// Set when a step failed: its index and the error.
    pub failed: Option<(usize, String)>,
    /// The kernel route's loop devices and volume groups (absent on the offline route).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<KernelState>,
    /// The directory the kernel route mounted the filesystems on (inside its private mount
    /// namespace only; an empty directory outside it), removed by `cleanup`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_root: Option<PathBuf>,
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
    /// Test hook: fail step N (0-based) before it runs; N = the number of steps fails the
    /// mount phase of the kernel route once everything is mounted.
    pub fail_at: Option<usize>,
    /// Set (by a SIGINT/SIGTERM handler) to stop before the next step and unwind.
    pub cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Take the kernel route even where the offline route would do (loop devices, mkfs on
    /// block devices); default false. LVM plans always take it.
    pub kernel: bool,
    /// Kernel route: after the last step, mount every filesystem (in mount order) under a
    /// directory in a private mount namespace and call this with that directory; everything
    /// is unmounted when it returns. Default none (nothing is mounted).
    pub mounted: Option<MountedHook>,
    /// Test hook: the process sends itself SIGKILL before step N (as [`Self::fail_at`]), to
    /// show what a crash leaves behind.
    pub kill_at: Option<usize>,
}

/// The function inside a [`MountedHook`]: gets the mount root, returns an error message.
pub type MountedFn = dyn Fn(&Path) -> std::result::Result<(), String> + Send + Sync;

/// A caller's work on the mounted filesystems: called with the mount root (the `/` of the
/// image) from inside the private mount namespace.
#[derive(Clone)]
pub struct MountedHook(pub std::sync::Arc<MountedFn>);

impl std::fmt::Debug for MountedHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MountedHook(..)")
    }
}

fn io(action: impl Into<String>, path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    let action = action.into();
    move |source| Error::Io {
        action,
        path: path.to_owned(),
        source,
    }
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

/// Build `plan`, recording each step in `state_dir`: offline when the plan allows it and
/// the caller does not ask for the kernel route ([`CreateOptions::kernel`],
/// [`CreateOptions::mounted`]), else through loop devices, LVM and (for the hook) mounts in a
/// private mount namespace, all released before this returns. On failure everything this run
/// made is removed in reverse order (images only unless [`CreateOptions::keep_on_error`]),
/// the state records the failure, and the error is returned.
pub fn create(
    plan: &Plan,
    state_dir: &Path,
    opts: &CreateOptions,
    progress: &mut dyn FnMut(Event),
) -> Result<State> {
    let kernel_route =
        opts.kernel || opts.mounted.is_some() || !matches!(plan.route, Route::Offline);
    if kernel_route {
        kernel::preflight(plan)?;
    }
    fs::create_dir_all(state_dir).map_err(io("creating", state_dir))?;
    let mut st = State {
        plan: plan.clone(),
        done: 0,
        images: Vec::new(),
        dirs: Vec::new(),
        fstab: None,
        scratch: Vec::new(),
        failed: None,
        kernel: kernel_route.then(KernelState::default),
        mount_root: None,
    };
    write_state(state_dir, &st)?;
    let mut k = Kernel::default();
    let total = plan.steps.len();
    let mut failure = None;
    for (i, step) in plan.steps.iter().enumerate() {
        progress(Event::Start {
            index: i,
            total,
            node: step.node().to_owned(),
        });
        if let Err(e) = before_step(opts, i, step) {
            failure = Some((i, e));
            break;
        }
        let res = if kernel_route {
            run_kernel_step(plan, step, state_dir, &mut st, &mut k)
        } else {
            run_step(step, state_dir, &mut st)
        };
        if let Err(e) = res {
            failure = Some((i, e));
            break;
        }
        st.done = i + 1;
        write_state(state_dir, &st)?;
        progress(Event::Done { index: i });
    }
    if failure.is_none()
        && kernel_route
        && (opts.mounted.is_some() || opts.fail_at == Some(total) || opts.kill_at == Some(total))
        && let Err(e) = mount_phase(plan, state_dir, &mut st, &mut k, opts)
    {
        failure = Some((total, e));
    }
    // A signal that came while the caller's hook ran: unwind now rather than keep the build.
    if failure.is_none()
        && opts
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(std::sync::atomic::Ordering::SeqCst))
    {
        failure = Some((
            total,
            Error::Interrupted {
                step: total,
                node: "mount".into(),
            },
        ));
    }
    if kernel_route {
        let errs = release_kernel(&mut st, &mut k);
        if let Err(se) = write_state(state_dir, &st) {
            tracing::warn!(error = %se, "writing the state after releasing the kernel objects");
        }
        if failure.is_none() && !errs.is_empty() {
            failure = Some((total, Error::Release { errors: errs }));
        }
    }
    if let Some((i, e)) = failure {
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
    Ok(st)
}

/// The hooks checked before step `i`: cancellation, fault injection, self-kill.
fn before_step(opts: &CreateOptions, i: usize, step: &Step) -> Result<()> {
    let node = step.node();
    if opts.kill_at == Some(i) {
        tracing::warn!(
            step = i,
            "kill_at: sending SIGKILL to this process (test hook)"
        );
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
    if opts
        .cancel
        .as_ref()
        .is_some_and(|c| c.load(std::sync::atomic::Ordering::SeqCst))
    {
        return Err(Error::Interrupted {
            step: i,
            node: node.to_owned(),
        });
    }
    if opts.fail_at == Some(i) {
        return Err(Error::Injected {
            step: i,
            node: node.to_owned(),
        });
    }
    diskforge_fault::point(step.fault_point())?;
    Ok(())
}

/// Deactivate the VGs (by the record), detach our loop guards, then anything recorded that
/// is still ours; returns every failure.
fn release_kernel(st: &mut State, k: &mut Kernel) -> Vec<String> {
    let Some(ks) = st.kernel.as_mut() else {
        return Vec::new();
    };
    let mut errs = kernel::deactivate(ks);
    errs.extend(k.detach());
    errs.extend(kernel::release(ks));
    errs
}

/// One step on the kernel route: image files and tables as offline (the same bytes), LVM
/// through lvm2, mkfs onto the loop device (or LV) of its node.
fn run_kernel_step(
    plan: &Plan,
    step: &Step,
    state_dir: &Path,
    st: &mut State,
    k: &mut Kernel,
) -> Result<()> {
    let mut ks = st.kernel.take().unwrap_or_default();
    let res = kernel_step(plan, step, state_dir, st, k, &mut ks);
    st.kernel = Some(ks);
    res
}

fn kernel_step(
    plan: &Plan,
    step: &Step,
    state_dir: &Path,
    st: &mut State,
    k: &mut Kernel,
    ks: &mut KernelState,
) -> Result<()> {
    let snapshot = st.clone();
    let mut save = |ks: &KernelState| {
        let mut s = snapshot.clone();
        s.kernel = Some(ks.clone());
        write_state(state_dir, &s)
    };
    let lvm_err = |node: &str, source: lvm2_cmd::Error| Error::Lvm {
        node: node.to_owned(),
        source: Box::new(source),
    };
    match step {
        Step::PhysicalVolume {
            pv,
            device,
            options,
        } => {
            let dev = k.device(plan, device, ks, &mut save)?;
            let lvm = kernel::lvm_for(&[dev.as_path()]);
            let mut a = vec!["-y".to_owned(), dev.display().to_string()];
            a.extend(options.iter().cloned());
            lvm_run(&lvm, "pvcreate", pv, &a).map_err(|e| lvm_err(pv, e))
        }
        Step::VolumeGroup { vg, pvs, options } => {
            let mut devs = Vec::new();
            for pv in pvs {
                let base = plan
                    .steps
                    .iter()
                    .find_map(|s| match s {
                        Step::PhysicalVolume { pv: p, device, .. } if p == pv => Some(device),
                        _ => None,
                    })
                    .ok_or_else(|| Error::Unsupported {
                        what: format!("vg {vg:?}: no PV step for {pv:?}"),
                    })?;
                devs.push(k.device(plan, base, ks, &mut save)?);
            }
            ks.vgs.push(kernel::VgRecord {
                name: vg.clone(),
                pvs: devs.clone(),
                active: false,
            });
            save(ks)?;
            let paths: Vec<&Path> = devs.iter().map(PathBuf::as_path).collect();
            let lvm = kernel::lvm_for(&paths);
            let mut a = vec![vg.clone()];
            a.extend(devs.iter().map(|d| d.display().to_string()));
            a.extend(options.iter().cloned());
            lvm_run(&lvm, "vgcreate", vg, &a).map_err(|e| lvm_err(vg, e))
        }
        Step::LogicalVolume {
            lv,
            vg,
            extents,
            options,
        } => {
            let rec =
                ks.vgs
                    .iter_mut()
                    .find(|r| &r.name == vg)
                    .ok_or_else(|| Error::Unsupported {
                        what: format!("lv {lv:?}: volume group {vg:?} was not created"),
                    })?;
            // Recorded before lvcreate activates anything.
            rec.active = true;
            let devs = rec.pvs.clone();
            save(ks)?;
            let lvp = plan
                .volume_groups
                .iter()
                .find(|v| &v.name == vg)
                .and_then(|v| v.lvs.iter().find(|l| &l.name == lv));
            let mut a = vec!["-y".to_owned(), "-n".to_owned(), lv.clone()];
            match lvp.and_then(|l| l.lv_type.as_deref()) {
                Some("thin") => {
                    let pool = lvp.and_then(|l| l.thin_pool.clone()).unwrap_or_default();
                    a.extend([
                        "--type".to_owned(),
                        "thin".to_owned(),
                        "-V".to_owned(),
                        format!("{}b", extents * crate::plan::EXTENT),
                        "--thinpool".to_owned(),
                        pool,
                    ]);
                }
                Some("thin-pool") => {
                    a.extend([
                        "--type".to_owned(),
                        "thin-pool".to_owned(),
                        "-l".to_owned(),
                        extents.to_string(),
                    ]);
                }
                _ => a.extend(["-l".to_owned(), extents.to_string()]),
            }
            a.extend(options.iter().cloned());
            a.push(vg.clone());
            let paths: Vec<&Path> = devs.iter().map(PathBuf::as_path).collect();
            let lvm = kernel::lvm_for(&paths);
            lvm_run(&lvm, "lvcreate", lv, &a).map_err(|e| lvm_err(lv, e))?;
            let is_pool = lvp.and_then(|l| l.lv_type.as_deref()) == Some("thin-pool");
            if !is_pool && !kernel::lv_path(vg, lv).exists() {
                lvm.vgmknodes(vg).map_err(|e| lvm_err(lv, e))?;
            }
            Ok(())
        }
        Step::Mkfs { filesystem } => {
            let dev = match &filesystem.device {
                Device::Lv { vg, lv, .. } => kernel::lv_path(vg, lv),
                Device::Region { .. } => k.device(plan, &filesystem.base, ks, &mut save)?,
            };
            mkfs_on(
                filesystem,
                state_dir,
                st,
                diskforge_mkfs::Target::Device { path: dev },
            )
        }
        other => run_step(other, state_dir, st),
    }
}

fn lvm_run(
    lvm: &lvm2_cmd::Lvm,
    op: &'static str,
    object: &str,
    args: &[String],
) -> std::result::Result<(), lvm2_cmd::Error> {
    lvm.cmd(op)
        .args(args)
        .run()
        .map(|_| ())
        .map_err(|e| lvm2_cmd::Error::Run {
            op,
            object: object.to_owned(),
            source: Box::new(e),
        })
}

/// Mount every filesystem in mount order under `STATE_DIR/mnt`, in a private mount
/// namespace, run the caller's hook, unmount in reverse. Nothing is visible outside the
/// namespace, and it all goes when the thread does, even on `kill -9`.
fn mount_phase(
    plan: &Plan,
    state_dir: &Path,
    st: &mut State,
    k: &mut Kernel,
    opts: &CreateOptions,
) -> Result<()> {
    let root = state_dir.join("mnt");
    match fs::create_dir(&root) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io("creating", &root)(e)),
    }
    st.mount_root = Some(root.clone());
    write_state(state_dir, st)?;
    let mut ks = st.kernel.take().unwrap_or_default();
    let mut devs = Vec::new();
    let snapshot = st.clone();
    let mut save = |ks: &KernelState| {
        let mut s = snapshot.clone();
        s.kernel = Some(ks.clone());
        write_state(state_dir, &s)
    };
    let mut res = Ok(());
    for f in &plan.filesystems {
        let Some(mp) = &f.mount_point else { continue };
        if f.fs_type == diskforge_mkfs::FsType::Swap {
            continue;
        }
        let dev = match &f.device {
            Device::Lv { vg, lv, .. } => Ok(kernel::lv_path(vg, lv)),
            Device::Region { .. } => k.device(plan, &f.base, &mut ks, &mut save),
        };
        match dev {
            Ok(d) => devs.push((mp.clone(), d, f.fs_type.as_str().to_owned())),
            Err(e) => {
                res = Err(e);
                break;
            }
        }
    }
    st.kernel = Some(ks);
    res?;
    let total = plan.steps.len();
    let fail = opts.fail_at == Some(total);
    let kill = opts.kill_at == Some(total);
    let hook = opts.mounted.clone();
    let inner = root.clone();
    let out = diskforge_mount::in_private_namespace(move || -> Result<()> {
        let mut mounts: Vec<diskforge_mount::Mount> = Vec::new();
        let mut res = Ok(());
        for (mp, dev, fstype) in &devs {
            let target = if mp == "/" {
                inner.clone()
            } else {
                inner.join(mp.trim_start_matches('/'))
            };
            if let Err(e) = fs::create_dir_all(&target) {
                res = Err(io("creating the mount point", &target)(e));
                break;
            }
            match diskforge_mount::Mount::new(
                dev,
                &target,
                fstype,
                diskforge_mount::MountFlags::empty(),
                None,
            ) {
                Ok(m) => mounts.push(m),
                Err(source) => {
                    res = Err(Error::Mount {
                        what: format!("{} on {mp}", dev.display()),
                        source: Box::new(source),
                    });
                    break;
                }
            }
        }
        if res.is_ok() {
            if kill {
                let _ = rustix::process::kill_process(
                    rustix::process::getpid(),
                    rustix::process::Signal::KILL,
                );
            }
            res = if fail {
                Err(Error::Injected {
                    step: total,
                    node: "mount".into(),
                })
            } else if let Some(h) = &hook {
                (h.0)(&inner).map_err(|reason| Error::Hook { reason })
            } else {
                Ok(())
            };
        }
        let mut errs = Vec::new();
        while let Some(m) = mounts.pop() {
            let t = m.target().to_owned();
            if let Err(e) = m.teardown() {
                errs.push(format!("unmounting {}: {e}", t.display()));
            }
        }
        match res {
            Ok(()) if !errs.is_empty() => Err(Error::Release { errors: errs }),
            r => r,
        }
    })
    .map_err(|source| Error::Mount {
        what: "entering a private mount namespace".into(),
        source: Box::new(source),
    })
    .and_then(|r| r);
    if let Err(e) = fs::remove_dir(&root) {
        tracing::warn!(path = %root.display(), error = %e, "removing the mount root");
    } else {
        st.mount_root = None;
    }
    out
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
    // Only when empty: anything else put there is not ours.
    for d in st.dirs.drain(..).rev() {
        let _ = fs::remove_dir(&d);
    }
}

fn run_step(step: &Step, state_dir: &Path, st: &mut State) -> Result<()> {
    match step {
        Step::CreateImage { path, size, .. } => {
            if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                // Remember each level we make, outermost first.
                let mut missing: Vec<PathBuf> = d
                    .ancestors()
                    .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
                    .map(Path::to_path_buf)
                    .collect();
                missing.reverse();
                fs::create_dir_all(d).map_err(io("creating", d))?;
                st.dirs.extend(missing);
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
                // The copy keeps the original's times, so putting it back is invisible.
                let times = fs::metadata(path)
                    .and_then(|m| {
                        Ok(fs::FileTimes::new()
                            .set_accessed(m.accessed()?)
                            .set_modified(m.modified()?))
                    })
                    .map_err(io("reading the times of", path))?;
                fs::File::options()
                    .write(true)
                    .open(&b)
                    .and_then(|f| f.set_times(times))
                    .map_err(io("setting the times of", &b))?;
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

/// mkfs offline: into the byte range of the image file.
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
    let target = diskforge_mkfs::Target::Region {
        image: image.clone(),
        offset: *offset,
        size: *size,
    };
    mkfs_on(fs, state_dir, st, target)
}

/// The one call into diskforge-mkfs, for both routes.
fn mkfs_on(
    fs: &FsPlan,
    state_dir: &Path,
    st: &mut State,
    target: diskforge_mkfs::Target,
) -> Result<()> {
    let mut opts = diskforge_mkfs::MkfsOptions::new(fs.fs_type);
    if fs.fs_type.max_label().is_some() {
        opts.label = Some(fs.label.clone());
    }
    opts.uuid = fs.uuid.clone();
    opts.extra_args = fs.opts.clone();
    opts.source_date_epoch = fs.epoch;
    let mut scratch = None;
    if let Some(src) = &fs.source {
        let nested = fs.mount_point.as_deref().is_some_and(|m| m != "/");
        if nested && !src.exists() {
            // The tree has nothing under this mount point: an empty filesystem, as dib
            // would mount there.
        } else if fs.exclude.is_empty() {
            opts.populate_from = Some(src.clone());
        } else {
            let stage = state_dir.join(format!("stage-{}", fs.name));
            st.scratch.push(stage.clone());
            stage_tree(src, &stage, &fs.exclude)?;
            opts.populate_from = Some(stage.clone());
            scratch = Some(stage);
        }
    }
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
    copy_view(src, stage, exclude)?;
    // Mount points the tree lacks still exist in the filesystem (dib makes them too).
    for e in exclude {
        let d = stage.join(e);
        if !d.exists() {
            fs::create_dir_all(&d).map_err(io("creating the mount point", &d))?;
        }
    }
    Ok(())
}

fn copy_view(src: &Path, stage: &Path, exclude: &[String]) -> Result<()> {
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

/// dib's `umount`, from the state alone: deactivate the volume groups the build recorded
/// as possibly active and detach its loop devices that still map its files (after a crash;
/// a finished `create` has released them already). Mounts never outlive `create` (they live
/// in its private mount namespace). Idempotent; touches nothing the state does not record.
pub fn umount(state_dir: &Path) -> Result<()> {
    if !is_state_dir(state_dir)? {
        return Ok(());
    }
    let mut st = read_state(state_dir)?;
    let Some(ks) = st.kernel.as_mut() else {
        return Ok(());
    };
    let errs = kernel::release(ks);
    write_state(state_dir, &st)?;
    if errs.is_empty() {
        Ok(())
    } else {
        Err(Error::Release { errors: errs })
    }
}

/// Remove what a finished (or failed) build leaves besides its images: kernel objects it
/// recorded ([`umount`]), scratch directories and the state directory. Idempotent: a missing
/// state directory is not an error.
pub fn cleanup(state_dir: &Path) -> Result<()> {
    if !is_state_dir(state_dir)? {
        return Ok(());
    }
    let st = read_state(state_dir)?;
    check_owned(state_dir, &st)?;
    umount(state_dir)?;
    let mut st = read_state(state_dir)?;
    if st.done < st.plan.steps.len() && st.failed.is_none() {
        // A build that neither finished nor recorded a failure was killed: its images are
        // half-made, so they go as with `delete`.
        unwind(&mut st);
    }
    for d in st.scratch.drain(..) {
        if let Err(e) = fs::remove_dir_all(&d)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(io("removing", &d)(e));
        }
    }
    remove_mount_root(&st)?;
    fs::remove_dir_all(state_dir).map_err(io("removing", state_dir))
}

/// Whether `dir` is a state directory: false when it does not exist (already cleaned up:
/// idempotent); an error when it exists without a state file (not ours: refused, untouched).
fn is_state_dir(dir: &Path) -> Result<bool> {
    if dir.join(STATE_FILE).exists() {
        return Ok(true);
    }
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        _ => Err(Error::State {
            path: dir.to_owned(),
            reason: format!("not a block-device state directory (no {STATE_FILE}): left untouched"),
        }),
    }
}

/// Refuse a state whose recorded paths are not the ones a build makes: scratch directories
/// and the mount root always lie inside the state directory, images are the plan's disks.
/// (Loop devices and volume groups are checked against the kernel when released.)
fn check_owned(state_dir: &Path, st: &State) -> Result<()> {
    let refuse = |what: &str, p: &Path| Error::State {
        path: state_dir.join(STATE_FILE),
        reason: format!(
            "{what} {} was not made by this build: refused, nothing removed",
            p.display()
        ),
    };
    let home = fs::canonicalize(state_dir).ok();
    let inside = |p: &Path| {
        p.file_name().is_some_and(|n| n != "." && n != "..")
            && p.parent()
                .and_then(|d| fs::canonicalize(d).ok())
                .is_some_and(|d| Some(d) == home)
    };
    for d in &st.scratch {
        if !inside(d) {
            return Err(refuse("scratch directory", d));
        }
    }
    if let Some(r) = &st.mount_root
        && !inside(r)
    {
        return Err(refuse("mount root", r));
    }
    for img in &st.images {
        if !st.plan.disks.iter().any(|d| &d.path == img) {
            return Err(refuse("image", img));
        }
    }
    Ok(())
}

/// The mount root is only ever a mount point inside a private namespace; outside it is an
/// empty directory, removed with rmdir (never recursively).
fn remove_mount_root(st: &State) -> Result<()> {
    if let Some(r) = &st.mount_root
        && let Err(e) = fs::remove_dir(r)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        return Err(io("removing the mount root", r)(e));
    }
    Ok(())
}

/// Like [`cleanup`], and remove the image files the build created (dib's `delete`, for
/// failed builds) and restore the fstab it replaced.
pub fn delete(state_dir: &Path) -> Result<()> {
    if !is_state_dir(state_dir)? {
        return Ok(());
    }
    check_owned(state_dir, &read_state(state_dir)?)?;
    umount(state_dir)?;
    let mut st = read_state(state_dir)?;
    unwind(&mut st);
    remove_mount_root(&st)?;
    fs::remove_dir_all(state_dir).map_err(io("removing", state_dir))
}

/// dib's `init`: record `plan` in `STATE_DIR/state.json` with nothing done, so later
/// commands (`create`, `getval`, `writefstab`) can run from the state alone. Refuses a state
/// directory whose build has started (run `cleanup` or `delete` first).
pub fn init(plan: &Plan, state_dir: &Path) -> Result<State> {
    if state_dir.join(STATE_FILE).exists() {
        let old = read_state(state_dir)?;
        if old.done > 0 || !old.images.is_empty() || old.kernel.is_some() {
            return Err(Error::State {
                path: state_dir.join(STATE_FILE),
                reason: "a build was started in this state directory; `cleanup` or `delete` \
                         it first"
                    .into(),
            });
        }
    }
    fs::create_dir_all(state_dir).map_err(io("creating", state_dir))?;
    let st = State {
        plan: plan.clone(),
        done: 0,
        images: Vec::new(),
        dirs: Vec::new(),
        fstab: None,
        scratch: Vec::new(),
        failed: None,
        kernel: None,
        mount_root: None,
    };
    write_state(state_dir, &st)?;
    Ok(st)
}

/// dib's `writefstab`: write the plan's fstab lines (as dib writes them) to `ROOT/etc/fstab`,
/// where `ROOT` is `root`, else the tree the plan populates from. A file it replaces is kept
/// in the state directory and put back by `delete`. Returns the path written.
pub fn writefstab(state_dir: &Path, root: Option<&Path>) -> Result<PathBuf> {
    let mut st = read_state(state_dir)?;
    let path = match root {
        Some(r) => r.join("etc/fstab"),
        None => st
            .plan
            .steps
            .iter()
            .find_map(|s| match s {
                Step::WriteFstab { path, .. } => Some(path.clone()),
                _ => None,
            })
            .ok_or_else(|| Error::State {
                path: state_dir.join(STATE_FILE),
                reason: "no root tree in the plan: give the tree to write etc/fstab into".into(),
            })?,
    };
    let contents: String = st.plan.fstab.iter().map(|l| format!("{l}\n")).collect();
    if st.fstab.as_ref().is_some_and(|(p, _)| p == &path) {
        // Written before by this build: the saved original stays the one to restore.
        fs::write(&path, &contents).map_err(io("writing", &path))?;
    } else {
        run_step(
            &Step::WriteFstab {
                path: path.clone(),
                contents,
            },
            state_dir,
            &mut st,
        )?;
    }
    write_state(state_dir, &st)?;
    Ok(path)
}

/// [`getval`] for a build's state: like the plan's answers, plus the block devices while the
/// kernel route holds them — `image-block-device` (dib: the loop device of `image0`; the
/// image file itself on the offline route or once released) and `image-block-devices`.
pub fn getval_state(st: &State, symbol: &str) -> Result<String> {
    let live = st.kernel.as_ref().filter(|k| !k.released);
    match (symbol, live) {
        ("image-block-device", Some(k)) => {
            let name = st
                .plan
                .disks
                .iter()
                .find(|d| d.name == "image0")
                .or(st.plan.disks.first())
                .map(|d| d.name.clone())
                .unwrap_or_default();
            k.devices
                .get(&name)
                .map(|d| d.display().to_string())
                .ok_or_else(|| Error::GetVal {
                    symbol: symbol.to_owned(),
                    reason: format!("no loop device for {name:?} yet"),
                })
        }
        ("image-block-devices", Some(k)) => Ok(k
            .devices
            .iter()
            .map(|(n, d)| format!(" [{n}]={} ", d.display()))
            .collect()),
        _ => getval(&st.plan, symbol),
    }
}

/// dib's `getval SYMBOL`, answered from the plan: `image-path`, `image-block-device` (the
/// image file: offline, the file is the device), `image-block-partition`
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
        "image-block-device" => plan
            .disks
            .iter()
            .find(|d| d.name == "image0")
            .or(plan.disks.first())
            .map(|d| d.path.display().to_string())
            .ok_or_else(|| err("no local_loop image in the config"))?,
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
                "unknown symbol (image-path, image-block-device, image-block-partition, image-block-devices, root-label, root-fstype, boot-label, mount-points)",
            ));
        }
    })
}
