//! The build: request → resolved elements → phases on the tree → disk → outputs → boot check.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use diskforge_blockdev as blockdev;
use diskforge_elements as elements;
use elements::Phase;
use serde::Serialize;

use crate::output::{DiskSource, OutputFormat, OutputOptions, OutputReport, write_output};
use crate::{Error, Result, io_err};

/// The serial-console line the shipped `busybox` element prints once the system is up, and
/// the default boot-check marker.
pub const DEFAULT_MARKER: &str = "diskforge-image-booted";

/// `--boot-check`: boot each disk output in QEMU and wait for a marker on the serial console.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootCheck {
    /// The line to wait for (default [`DEFAULT_MARKER`]).
    pub marker: String,
    /// How long each boot may take.
    pub timeout: Duration,
}

impl Default for BootCheck {
    fn default() -> Self {
        BootCheck {
            marker: DEFAULT_MARKER.into(),
            timeout: Duration::from_secs(120),
        }
    }
}

/// What to build: dib's `disk-image-create` arguments and environment, as data.
#[derive(Debug, Clone, Serialize)]
pub struct BuildRequest {
    /// Elements named on the command line, in order.
    pub elements: Vec<String>,
    /// `-o NAME`: outputs are `NAME.qcow2`, `NAME.tar`, … (default `image`).
    pub name: PathBuf,
    /// `-t`: the output types (default qcow2).
    pub formats: Vec<OutputFormat>,
    /// `-a`: the architecture (dib's names: amd64/x86_64, i386, arm64/aarch64 …).
    pub arch: String,
    /// `--image-size` in bytes; default computed from the tree.
    pub image_size: Option<u64>,
    /// `ELEMENTS_PATH`, earlier entries first (the shipped elements come last).
    pub elements_path: Vec<PathBuf>,
    /// `DIB_BLOCK_DEVICE_CONFIG`: a path, `file://PATH`, or inline YAML; default the
    /// `block-device-*` element's `block-device-default.yaml`.
    pub block_device_config: Option<String>,
    /// Output writing.
    pub output: OutputOptions,
    /// Environment for the scripts (dib's `DIB_*` and whatever else the caller passes).
    pub env: BTreeMap<String, String>,
    /// Each script's time limit.
    pub script_timeout: Duration,
    /// `-x`: trace scripts (`DIB_DEBUG_TRACE=1`, `set -x`).
    pub trace: bool,
    /// Skip non-executable phase files silently, as dib does (default: refuse).
    pub allow_nonexec: bool,
    /// Keep the build directory and half-made image after a failure.
    pub keep_on_error: bool,
    /// Where the build directory goes (default `TMPDIR` or /tmp).
    pub work_dir: Option<PathBuf>,
    /// `SOURCE_DATE_EPOCH`: fixed UUIDs, mtimes and timestamps for reproducible outputs.
    pub source_date_epoch: Option<u64>,
    /// `--image-cache` (`DIB_IMAGE_CACHE`; default `~/.cache/image-create`).
    pub image_cache: Option<PathBuf>,
    /// `FS_TYPE`: the root filesystem type when the layout gives none (default ext4).
    pub fs_type: Option<String>,
    /// `--root-label`.
    pub root_label: Option<String>,
    /// `--boot-check`.
    pub boot_check: Option<BootCheck>,
    /// Set by a SIGINT/SIGTERM handler: the build stops at the next step and unwinds.
    #[serde(skip)]
    pub cancel: Option<Arc<AtomicBool>>,
}

impl BuildRequest {
    /// A request with dib's defaults: `-o NAME`, `-t qcow2` (compressed), amd64.
    pub fn new<I, S>(elements: I, name: impl Into<PathBuf>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        BuildRequest {
            elements: elements.into_iter().map(Into::into).collect(),
            name: name.into(),
            formats: vec![OutputFormat::Qcow2],
            arch: "amd64".into(),
            image_size: None,
            elements_path: Vec::new(),
            block_device_config: None,
            output: OutputOptions {
                compress: true,
                ..Default::default()
            },
            env: BTreeMap::new(),
            script_timeout: Duration::from_secs(3600),
            trace: false,
            allow_nonexec: false,
            keep_on_error: false,
            work_dir: None,
            source_date_epoch: None,
            image_cache: None,
            fs_type: None,
            root_label: None,
            boot_check: None,
            cancel: None,
        }
    }

    fn needs_disk(&self) -> bool {
        self.formats.iter().any(|f| f.is_disk())
    }
}

/// Progress, for the tool to render.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum BuildEvent {
    /// A build step starts (`resolve`, `root.d`, `block-device plan`, `output qcow2`, …).
    StepStart {
        /// Its name.
        step: String,
    },
    /// It finished.
    StepDone {
        /// Its name.
        step: String,
        /// How long it took.
        millis: u64,
    },
    /// A phase script starts.
    Script {
        /// The element.
        element: String,
        /// The phase directory.
        phase: String,
        /// The script's file name.
        script: String,
    },
    /// A script finished.
    ScriptDone {
        /// The element.
        element: String,
        /// The phase directory.
        phase: String,
        /// The script's file name.
        script: String,
        /// How long it ran.
        millis: u64,
    },
    /// How a long step is getting on (packages downloaded, the stage it is in).
    Progress {
        /// The step.
        step: String,
        /// One line.
        message: String,
    },
    /// A line of script output (for `-x` and verbose renderers).
    Output {
        /// The line.
        line: String,
    },
}

/// One step's wall time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepTiming {
    /// The step.
    pub step: String,
    /// Milliseconds.
    pub millis: u64,
}

/// One boot of the boot check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BootResult {
    /// `seabios` or `ovmf`.
    pub firmware: String,
    /// The image booted.
    pub image: PathBuf,
    /// `tcg` or `kvm`.
    pub accel: String,
    /// Seconds until the marker.
    pub seconds: f64,
}

/// What a build made.
#[derive(Debug, Clone, Serialize)]
pub struct BuildReport {
    /// The elements, resolved (dependencies included), in order.
    pub elements: Vec<String>,
    /// Each step's time, in order.
    pub steps: Vec<StepTiming>,
    /// The outputs.
    pub outputs: Vec<OutputReport>,
    /// The block-device plan, when a disk was made.
    pub disk: Option<blockdev::Plan>,
    /// Boot-check results.
    pub boots: Vec<BootResult>,
    /// Milliseconds in all.
    pub total_millis: u64,
}

/// What `--dry-run` prints: everything a build would do, nothing written.
#[derive(Debug, Clone, Serialize)]
pub struct DryRun {
    /// The request.
    pub request: BuildRequest,
    /// The resolved elements, environment files and scripts.
    pub resolved: elements::Resolved,
    /// The environment the scripts would see (paths under a build directory to be made).
    pub environment: BTreeMap<String, String>,
    /// Scripts per phase, in run order.
    pub scripts: Vec<(String, Vec<String>)>,
    /// Where the block-device config comes from, when a disk is made.
    pub block_device_source: Option<String>,
    /// The outputs that would be written.
    pub outputs: Vec<PathBuf>,
}

/// dib's `ARCH` for `-a`: amd64 for x86_64 and so on.
fn dib_arch(arch: &str) -> Result<&'static str> {
    Ok(match arch {
        "amd64" | "x86_64" => "amd64",
        "i386" | "i686" | "x86" => "i386",
        "arm64" | "aarch64" => "arm64",
        "armhf" => "armhf",
        "ppc64le" | "ppc64el" => "ppc64el",
        "s390x" => "s390x",
        other => {
            return Err(Error::Usage {
                field: "-a".into(),
                value: other.into(),
                reason: "unknown architecture (amd64/x86_64, i386, arm64/aarch64, armhf, \
                         ppc64el/ppc64le, s390x)"
                    .into(),
            });
        }
    })
}

/// The elements to resolve: the requested ones. (`vm` without a `block-device-*` element gets
/// dib's default provider from diskforge-elements' resolution.)
fn requested_elements(req: &BuildRequest) -> Result<Vec<String>> {
    if req.elements.is_empty() {
        return Err(Error::Usage {
            field: "elements".into(),
            value: String::new(),
            reason: "name at least one element (e.g. `busybox vm`)".into(),
        });
    }
    Ok(req.elements.clone())
}

/// dib's fallback when neither `DIB_BLOCK_DEVICE_CONFIG` nor an element gives a layout
/// (`block_device_create_config_file` in dib's common-functions): one whole-disk root
/// filesystem, no partition table.
pub const DIB_FALLBACK_CONFIG: &str = "- local_loop:
    name: image0
    mkfs:
      name: mkfs_root
      mount:
        mount_point: /
        fstab:
          options: \"defaults\"
          fsck-passno: 1
";

fn resolve_options(req: &BuildRequest, shipped: &Path) -> elements::ResolveOptions {
    let mut path = req.elements_path.clone();
    path.push(shipped.to_owned());
    elements::ResolveOptions {
        elements_path: path,
        allow_nonexec: req.allow_nonexec,
        env: req.env.clone(),
    }
}

/// The block-device YAML text and a name for it (for errors).
fn block_device_text(
    req: &BuildRequest,
    resolved: &elements::Resolved,
) -> Result<(String, String)> {
    if let Some(v) = &req.block_device_config {
        let path = v.strip_prefix("file://").unwrap_or(v);
        // dib: a value that names an existing file is read; anything else is inline YAML.
        if v.starts_with("file://") || (!v.contains('\n') && Path::new(path).is_file()) {
            let bytes = fs::read(path).map_err(io_err("reading", Path::new(path)))?;
            let text = blockdev::decode(&bytes).map_err(|e| Error::BlockDevice {
                source_name: path.to_owned(),
                source: Box::new(e),
            })?;
            return Ok((text.to_owned(), path.to_owned()));
        }
        return Ok((v.clone(), "DIB_BLOCK_DEVICE_CONFIG".into()));
    }
    let Some(p) = resolved.block_device_default() else {
        return Ok((
            DIB_FALLBACK_CONFIG.to_owned(),
            "dib's fallback (one whole-disk root filesystem)".into(),
        ));
    };
    let text = fs::read_to_string(&p).map_err(io_err("reading", &p))?;
    Ok((text, p.display().to_string()))
}

/// Read and validate the block-device config (everything but the sizes, which need the
/// tree): its problems come back as [`Error::BlockDevice`] naming the config. Returns the
/// config's name.
fn check_block_device(req: &BuildRequest, resolved: &elements::Resolved) -> Result<String> {
    let (text, source_name) = block_device_text(req, resolved)?;
    let opts = blockdev::PlanOptions {
        root_fs_type: req.fs_type.clone(),
        root_label: req.root_label.clone(),
        ..Default::default()
    };
    match blockdev::load(&text, &opts) {
        Ok(_) => Ok(source_name),
        Err(e) => Err(Error::BlockDevice {
            source_name,
            source: Box::new(e),
        }),
    }
}

struct Steps<'a> {
    timings: Vec<StepTiming>,
    progress: &'a mut dyn FnMut(BuildEvent),
    cancel: Option<Arc<AtomicBool>>,
}

impl Steps<'_> {
    fn run<T>(&mut self, step: &str, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        if self
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::SeqCst))
        {
            return Err(Error::Interrupted { step: step.into() });
        }
        diskforge_fault::point(&fault_point(step))?;
        (self.progress)(BuildEvent::StepStart { step: step.into() });
        let t = Instant::now();
        let r = f(self)?;
        let millis = t.elapsed().as_millis() as u64;
        (self.progress)(BuildEvent::StepDone {
            step: step.into(),
            millis,
        });
        self.timings.push(StepTiming {
            step: step.into(),
            millis,
        });
        Ok(r)
    }
}

/// The fault point of a build step (`diskforge-fault`): `image.` and the step's name in
/// lower-case words joined by `-` (`resolve elements` → `image.resolve-elements`).
fn fault_point(step: &str) -> String {
    let words: Vec<String> = step
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    format!("image.{}", words.join("-"))
}

fn script_event(ev: elements::ScriptEvent) -> BuildEvent {
    match ev {
        elements::ScriptEvent::Start {
            element,
            phase,
            script,
        } => BuildEvent::Script {
            element,
            phase: phase.dir().into(),
            script,
        },
        elements::ScriptEvent::Output { line } => BuildEvent::Output { line },
        elements::ScriptEvent::Done {
            element,
            phase,
            script,
            elapsed,
        } => BuildEvent::ScriptDone {
            element,
            phase: phase.dir().into(),
            script,
            millis: elapsed.as_millis() as u64,
        },
    }
}

/// Prefix of a build directory (`dib_build.XXXXXX` in the work dir).
pub const BUILD_DIR_PREFIX: &str = "dib_build.";
/// The file inside a build directory naming the partial outputs the build may write (one
/// path a line), so [`cleanup_stale`] can remove them after a `kill -9`.
const PARTIALS_FILE: &str = "partials";

/// The build directory: `TMP_BUILD_DIR` with `built/` (the tree), `hooks/`, `image/` (the raw
/// disk) and `state/` (the block-device state) and `partials` (the temporary output names),
/// a [`diskforge_rundir::RunDir`]: locked (`flock` on the directory itself) for the whole
/// build and removed contents-first on drop unless kept, so after a `kill -9` at any moment
/// (even during that removal) the next build in the same work dir, or `disk-image-create
/// --cleanup`, sees the lock free and removes the directory and the partial outputs it names.
struct BuildDir {
    dir: diskforge_rundir::RunDir,
}

impl BuildDir {
    fn new(req: &BuildRequest) -> Result<BuildDir> {
        let base = work_base(req.work_dir.as_deref());
        fs::create_dir_all(&base).map_err(io_err("creating", &base))?;
        match cleanup_stale(&base) {
            Ok(gone) if !gone.is_empty() => {
                tracing::info!(removed = ?gone, "removed what killed builds left");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cleaning up after killed builds"),
        }
        let dir = diskforge_rundir::RunDir::create(&base, BUILD_DIR_PREFIX).map_err(rundir_err)?;
        let partials: String = req
            .formats
            .iter()
            .map(|f| {
                format!(
                    "{}\n",
                    crate::output::partial_path(&f.path_for(&req.name)).display()
                )
            })
            .collect();
        let pf = dir.path().join(PARTIALS_FILE);
        fs::write(&pf, partials).map_err(io_err("writing", &pf))?;
        for sub in ["built", "hooks", "image", "state", "elements"] {
            let p = dir.path().join(sub);
            fs::create_dir(&p).map_err(io_err("creating", &p))?;
        }
        Ok(BuildDir { dir })
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn tree(&self) -> PathBuf {
        self.path().join("built")
    }
    fn hooks(&self) -> PathBuf {
        self.path().join("hooks")
    }
    fn keep(self) -> PathBuf {
        self.dir.keep()
    }
}

/// Where build directories go: `work_dir`, else TMPDIR (or /tmp).
fn work_base(work_dir: Option<&Path>) -> PathBuf {
    work_dir
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir)
}

/// Remove what killed builds left in the work dir `work_dir` (default TMPDIR): every
/// `dib_build.*` directory whose lock is free (a live build holds it), the partial outputs it
/// names, and what its block-device state records. Live builds, directories that still have
/// mounts, and anything not named `dib_build.*` are left alone. Idempotent; every build does
/// this first. Returns what was removed.
pub fn cleanup_stale(work_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut partials = Vec::new();
    let dirs = diskforge_rundir::reclaim(work_dir, BUILD_DIR_PREFIX, |path| {
        let st = path.join("state");
        if st.join(blockdev::STATE_FILE).exists() {
            blockdev::delete(&st).map_err(|e| Error::BlockDevice {
                source_name: format!("the state of a killed build in {}", st.display()),
                source: Box::new(e),
            })?;
        }
        if let Ok(list) = fs::read_to_string(path.join(PARTIALS_FILE)) {
            for p in list.lines().filter(|l| !l.is_empty()).map(PathBuf::from) {
                // Only the names our own partial scheme makes (`.NAME.partial`).
                let is_partial = p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n.starts_with('.') && n.ends_with(crate::output::PARTIAL_SUFFIX)
                });
                if is_partial && fs::symlink_metadata(&p).is_ok() {
                    crate::output::remove_any(&p)?;
                    partials.push(p);
                }
            }
        }
        Ok(())
    })
    .map_err(rundir_err)?;
    partials.extend(dirs);
    Ok(partials)
}

/// A diskforge-rundir error as ours (our own undo's error comes back as it was).
fn rundir_err(e: diskforge_rundir::Error) -> Error {
    match e {
        diskforge_rundir::Error::Io { op, path, source } => Error::Io {
            action: op.into(),
            path,
            source,
        },
        diskforge_rundir::Error::Before { path, source } => match source.downcast::<Error>() {
            Ok(ours) => *ours,
            Err(other) => Error::Io {
                action: "cleaning up after the killed build in".into(),
                path,
                source: std::io::Error::other(other),
            },
        },
    }
}

/// The file name of `-o` (the hostname of busybox images, the seed of reproducible UUIDs).
fn image_base_name(req: &BuildRequest) -> String {
    req.name
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into())
}

fn run_context(req: &BuildRequest, bd: &Path, arch: &str) -> elements::RunContext {
    let mut env = req.env.clone();
    // dib: IMAGE_NAME is `-o` as given (a path when it holds one; scripts such as `manifests`
    // write `${IMAGE_NAME}.d/` next to the outputs).
    env.insert("IMAGE_NAME".into(), req.name.display().to_string());
    env.entry("DIB_ARGS".into())
        .or_insert_with(|| req.elements.join(" "));
    env.insert("ARCH".into(), arch.into());
    env.entry("DIB_INIT_SYSTEM".into())
        .or_insert_with(|| "systemd".into());
    if let Some(s) = req.image_size {
        // dib's DIB_IMAGE_SIZE is in GiB.
        env.insert(
            "DIB_IMAGE_SIZE".into(),
            format!("{}", s as f64 / (1u64 << 30) as f64),
        );
    }
    let cache = req.image_cache.clone().unwrap_or_else(|| {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/root"))
            .join(".cache/image-create")
    });
    env.insert("DIB_IMAGE_CACHE".into(), cache.display().to_string());
    if let Some(e) = req.source_date_epoch {
        env.insert("SOURCE_DATE_EPOCH".into(), e.to_string());
    }
    if req.trace {
        env.insert("DIB_DEBUG_TRACE".into(), "1".into());
    }
    env.insert(
        "TMP_MOUNT_PATH".into(),
        bd.join("built").display().to_string(),
    );
    elements::RunContext {
        target_root: bd.join("built"),
        hooks_dir: bd.join("hooks"),
        build_dir: bd.to_owned(),
        env,
        script_timeout: req.script_timeout,
        trace: req.trace,
        cancel: req.cancel.clone(),
    }
}

/// `--dry-run`: resolve everything and say what would run, writing nothing but the shipped
/// elements into a temporary directory that is removed again.
pub fn dry_run(req: &BuildRequest) -> Result<DryRun> {
    let arch = dib_arch(&req.arch)?;
    let tmp = tempfile::tempdir().map_err(io_err(
        "creating a temporary directory in",
        &std::env::temp_dir(),
    ))?;
    let shipped = elements::shipped_elements(tmp.path())
        .map_err(io_err("writing the shipped elements to", tmp.path()))?;
    let names = requested_elements(req)?;
    let resolved = elements::resolve(&names, &resolve_options(req, &shipped))
        .map_err(|e| Error::Elements(Box::new(e)))?;
    let bd = PathBuf::from("$TMP_BUILD_DIR");
    let ctx = run_context(req, &bd, arch);
    let environment = elements::environment(&resolved, &ctx);
    let scripts = Phase::ALL
        .iter()
        .map(|p| {
            (
                p.dir().to_owned(),
                resolved
                    .scripts(*p)
                    .iter()
                    .map(|s| format!("{}/{}", s.element, s.name))
                    .collect(),
            )
        })
        .collect();
    let block_device_source = if req.needs_disk() && !resolved.has("ramdisk") {
        Some(check_block_device(req, &resolved)?)
    } else {
        None
    };
    let outputs = req.formats.iter().map(|f| f.path_for(&req.name)).collect();
    Ok(DryRun {
        request: req.clone(),
        resolved,
        environment,
        scripts,
        block_device_source,
        outputs,
    })
}

/// The image size when `--image-size` is not given, as dib computes it: the tree's bytes / 0.6
/// (or plus `DIB_IMAGE_EXTRA_SIZE` MiB when set) for the root filesystem — at least the tree
/// plus 32 MiB — plus every partition that does not hold the root (dib adds a fixed 525 MiB
/// for block-device-efi's ESP; we add what the layout asks for), rounded up to a MiB.
fn auto_size(
    text: &str,
    opts: &blockdev::PlanOptions,
    tree_bytes: u64,
    extra_mib: Option<u64>,
) -> u64 {
    const MIB: u64 = 1 << 20;
    // Plan once with a large disk to learn the partitions that do not hold the root.
    let mut probe = opts.clone();
    probe.image_size = Some(1 << 40);
    probe.root = None;
    probe.content.clear();
    let fixed: u64 = match blockdev::plan_text(text, &probe) {
        Ok(p) => {
            let root_region = p.filesystems.iter().find_map(|f| {
                (f.mount_point.as_deref() == Some("/")).then_some(match &f.device {
                    blockdev::Device::Region { offset, .. } => Some(*offset),
                    blockdev::Device::Lv { .. } => None,
                })
            });
            p.disks
                .iter()
                .filter_map(|d| d.table.as_ref())
                .flat_map(|t| &t.partitions)
                .filter(|pp| Some(Some(pp.start)) != root_region)
                .map(|pp| pp.size)
                .sum()
        }
        Err(_) => 0,
    };
    let root = match extra_mib {
        Some(x) => tree_bytes + x * MIB,
        None => (tree_bytes as f64 / 0.6) as u64,
    }
    .max(tree_bytes + 32 * MIB);
    (fixed + root + 8 * MIB).div_ceil(MIB) * MIB
}

/// Build the image. See the crate docs for the steps.
pub fn build(req: &BuildRequest, progress: &mut dyn FnMut(BuildEvent)) -> Result<BuildReport> {
    let started = Instant::now();
    let arch = dib_arch(&req.arch)?;
    if req.formats.is_empty() {
        return Err(Error::Usage {
            field: "-t".into(),
            value: String::new(),
            reason: "no output type".into(),
        });
    }
    if let Some(parent) = req.name.parent()
        && !parent.as_os_str().is_empty()
        && !parent.is_dir()
    {
        return Err(Error::Usage {
            field: "-o".into(),
            value: req.name.display().to_string(),
            reason: format!("the directory {} does not exist", parent.display()),
        });
    }
    let bd = BuildDir::new(req)?;
    let mut steps = Steps {
        timings: Vec::new(),
        progress,
        cancel: req.cancel.clone(),
    };
    let res = build_in(req, arch, &bd, &mut steps);
    match res {
        Ok((elements, disk, outputs, boots)) => {
            let st = bd.path().join("state");
            if disk.is_some() {
                let _ = blockdev::cleanup(&st);
            }
            drop(bd);
            Ok(BuildReport {
                elements,
                steps: steps.timings,
                outputs,
                disk,
                boots,
                total_millis: started.elapsed().as_millis() as u64,
            })
        }
        Err(e) => {
            if req.keep_on_error {
                let kept = bd.keep();
                tracing::warn!(dir = %kept.display(), "build failed; build directory kept");
            } else {
                let st = bd.path().join("state");
                if st.join(blockdev::STATE_FILE).exists() {
                    let _ = blockdev::cleanup(&st);
                    let _ = blockdev::delete(&st);
                }
            }
            Err(e)
        }
    }
}

type Built = (
    Vec<String>,
    Option<blockdev::Plan>,
    Vec<OutputReport>,
    Vec<BootResult>,
);

fn build_in(req: &BuildRequest, arch: &str, bd: &BuildDir, steps: &mut Steps<'_>) -> Result<Built> {
    let tree = bd.tree();
    let shipped_dir = bd.path().join("elements");
    let resolved = steps.run("resolve elements", |_| {
        let shipped = elements::shipped_elements(&shipped_dir)
            .map_err(io_err("writing the shipped elements to", &shipped_dir))?;
        let mut names = requested_elements(req)?;
        let mut r = elements::resolve(&names, &resolve_options(req, &shipped))
            .map_err(|e| Error::Elements(Box::new(e)))?;
        // dib's distro elements depend on package-installs; ours is added when needed.
        if crate::packages::any(&r) && !r.has("package-installs") {
            names.push("package-installs".into());
            r = elements::resolve(&names, &resolve_options(req, &shipped))
                .map_err(|e| Error::Elements(Box::new(e)))?;
        }
        elements::prepare_hooks(&r, &bd.hooks()).map_err(|e| Error::Elements(Box::new(e)))?;
        Ok(r)
    })?;
    // A bad block-device config is found before any script runs (dib finds it after the
    // tree phases, minutes into a build).
    if req.needs_disk() && !resolved.has("ramdisk") {
        check_block_device(req, &resolved)?;
    }
    let names: Vec<String> = resolved.elements().iter().map(|e| e.name.clone()).collect();
    let mut ctx = run_context(req, bd.path(), arch);
    if resolved.has("debian-minimal") {
        ctx.env
            .entry("DISTRO_NAME".into())
            .or_insert_with(|| "debian".into());
        if let Some(r) = crate::debian::host_release() {
            ctx.env.entry("DIB_RELEASE".into()).or_insert(r);
        }
        // dib's DIB_APT_LOCAL_CACHE: the elements' chroot binds the shared package cache over
        // /var/cache/apt/archives (see diskforge-elements' chroot wrapper).
        if let Some(dir) = apt_cache(&ctx.env) {
            fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
            ctx.env
                .insert("DIB_APT_LOCAL_CACHE_DIR".into(), dir.display().to_string());
        }
    }
    if resolved.has("package-installs") {
        let lists = crate::packages::plan(&resolved, arch, &ctx.env);
        crate::packages::write_lists(&bd.hooks(), &lists)?;
    }
    let marker = req
        .boot_check
        .as_ref()
        .map(|b| b.marker.clone())
        .unwrap_or_else(|| DEFAULT_MARKER.into());

    let phase = |steps: &mut Steps<'_>, ctx: &elements::RunContext, p: Phase| -> Result<()> {
        if resolved.scripts(p).is_empty() {
            return Ok(());
        }
        steps.run(p.dir(), |s| {
            elements::run_phase(&resolved, p, ctx, &mut |ev| (s.progress)(script_event(ev)))
                .map(|_| ())
                .map_err(|e| Error::Elements(Box::new(e)))
        })
    };

    // root.d: the shipped busybox element makes its root natively first.
    if resolved.has("busybox") {
        steps.run("busybox root", |_| {
            let opts = diskforge_boot::BusyboxOptions {
                marker: marker.clone(),
                poweroff: true,
                hostname: image_base_name(req),
                source_date_epoch: req.source_date_epoch,
                ..Default::default()
            };
            diskforge_boot::busybox_root(&tree, &opts)
                .map(|_| ())
                .map_err(|e| Error::Boot(Box::new(e)))
        })?;
    }
    if resolved.has("debian-minimal") {
        match ctx.env.get("DIB_LOCAL_IMAGE").filter(|v| !v.is_empty()) {
            // dib's distro elements start from a local cloud image when one is named.
            Some(local) => steps.run("debian-minimal base (DIB_LOCAL_IMAGE)", |_| {
                crate::local::unpack_local_image(Path::new(local), &tree, bd.path()).map(|_| ())
            })?,
            None => steps.run("debian-minimal base", |s| {
                let o = debian_options(req, &ctx, resolved.has("vm"))?;
                let cancel = s.cancel.clone();
                let progress = &mut *s.progress;
                crate::debian::debian_root(
                    &tree,
                    &o,
                    &mut |message| {
                        progress(BuildEvent::Progress {
                            step: "debian-minimal base".into(),
                            message,
                        })
                    },
                    cancel.as_ref(),
                )
                .map(|_| ())
            })?,
        }
        if resolved.has("vm") {
            let poweroff = req.boot_check.is_some();
            crate::debian::install_marker_unit(&tree, &marker, poweroff)?;
        }
    }
    // The tree phases: root.d … post-root.d.
    for p in Phase::ALL
        .into_iter()
        .take_while(|p| *p != Phase::BlockDevice)
    {
        phase(steps, &ctx, p)?;
    }

    let mut plan = None;
    let mut grub = None;
    // dib: with the ramdisk element there is no disk image; the tree becomes an initramfs.
    let ramdisk = resolved.has("ramdisk");
    if req.needs_disk() && !ramdisk {
        let (text, source_name) = block_device_text(req, &resolved)?;
        let bderr = |source_name: &str| {
            let source_name = source_name.to_owned();
            move |e| Error::BlockDevice {
                source_name,
                source: Box::new(e),
            }
        };
        let p = steps.run("block-device plan", |_| {
            let mut opts = blockdev::PlanOptions {
                image_size: req.image_size,
                image_dir: bd.path().join("image"),
                root: Some(tree.clone()),
                uuid_seed: Some(match req.source_date_epoch {
                    Some(e) => format!("{}:{e}", image_base_name(req)),
                    None => uuid_seed_random(),
                }),
                source_date_epoch: req.source_date_epoch,
                content: BTreeMap::new(),
                root_fs_type: req.fs_type.clone(),
                root_label: req.root_label.clone(),
            };
            if opts.image_size.is_none() {
                let bytes = blockdev::tree_bytes(&tree, &[]).map_err(io_err("measuring", &tree))?;
                let extra = ctx
                    .env
                    .get("DIB_IMAGE_EXTRA_SIZE")
                    .and_then(|v| v.trim().parse().ok());
                opts.image_size = Some(auto_size(&text, &opts, bytes, extra));
            }
            blockdev::plan_text(&text, &opts).map_err(bderr(&source_name))
        })?;
        ctx.env.insert(
            "DIB_IMAGE_SIZE".into(),
            format!(
                "{}",
                p.disks.first().map(|d| d.size).unwrap_or_default() as f64 / (1u64 << 30) as f64
            ),
        );
        if resolved.has("vm") {
            grub = Some(steps.run("bootloader files", |_| install_tree_boot(&tree, &p, &ctx))?);
        }
        // fstab before finalise, as dib's writefstab does; create writes the same again.
        if !p.fstab.is_empty() {
            let etc = tree.join("etc");
            fs::create_dir_all(&etc).map_err(io_err("creating", &etc))?;
            let mut text = p.fstab.join("\n");
            text.push('\n');
            fs::write(etc.join("fstab"), text).map_err(io_err("writing", &etc.join("fstab")))?;
        }
        plan = Some(p);
    }
    phase(steps, &ctx, Phase::PreFinalise)?;
    phase(steps, &ctx, Phase::Finalise)?;
    // dib runs cleanup.d in finalise_base, on the mounted root before it is unmounted: what
    // it removes or writes lands in the image. Here: on the tree, before the filesystems.
    phase(steps, &ctx, Phase::Cleanup)?;
    // dpkg's build-time unsafe-io setting does not ship (dib's dpkg cleanup does the same).
    crate::debian::remove_build_settings(&tree)?;

    if let Some(e) = req.source_date_epoch {
        steps.run("clamp mtimes", |_| clamp_mtimes(&tree, e))?;
    }
    let mut raw = None;
    if let Some(p) = &plan {
        let st = bd.path().join("state");
        steps.run("block-device create", |s| {
            let opts = blockdev::CreateOptions {
                keep_on_error: req.keep_on_error,
                cancel: s.cancel.clone(),
                ..Default::default()
            };
            blockdev::create(p, &st, &opts, &mut |_| {}).map_err(|e| Error::BlockDevice {
                source_name: "create".into(),
                source: Box::new(e),
            })
        })?;
        let image = p
            .disks
            .first()
            .map(|d| d.path.clone())
            .ok_or_else(|| Error::Usage {
                field: "DIB_BLOCK_DEVICE_CONFIG".into(),
                value: String::new(),
                reason: "the layout has no local_loop image".into(),
            })?;
        if let Some(cfg) = &grub {
            steps.run("bootloader (BIOS)", |_| install_bios(&image, p, cfg))?;
        }
        ctx.env
            .insert("IMAGE_BLOCK_DEVICE".into(), image.display().to_string());
        phase(steps, &ctx, Phase::BlockDevice)?;
        raw = Some(image);
    }

    let mut outputs = Vec::new();
    let mut ramdisk_out = None;
    if ramdisk {
        ramdisk_out = Some(steps.run("ramdisk (kernel + initramfs)", |_| {
            crate::ramdisk::write_ramdisk(&tree, &req.name)
        })?);
    }
    // A raw output is written last and takes the build's image (a rename, no copy): the
    // other disk formats are converted from it first. Reported in the order asked for.
    let formats: Vec<OutputFormat> = req
        .formats
        .iter()
        .copied()
        .filter(|f| !(ramdisk && f.is_disk()))
        .collect();
    let mut order: Vec<usize> = (0..formats.len()).collect();
    order.sort_by_key(|&i| formats[i] == OutputFormat::Raw);
    let mut made: Vec<(usize, OutputReport)> = Vec::new();
    for (k, &i) in order.iter().enumerate() {
        let f = formats[i];
        let dst = f.path_for(&req.name);
        let source = match raw.as_deref() {
            None => DiskSource::None,
            Some(image) if k + 1 == order.len() => DiskSource::Take(image),
            Some(image) => DiskSource::Read(image),
        };
        let r = steps.run(&format!("output {f}"), |_| {
            write_output(f, source, &tree, &dst, &req.output)
        })?;
        made.push((i, r));
    }
    made.sort_by_key(|(i, _)| *i);
    outputs.extend(made.into_iter().map(|(_, r)| r));

    let mut boots = Vec::new();
    if let (Some(bc), Some(rd)) = (&req.boot_check, &ramdisk_out) {
        let r = steps.run("boot check (ramdisk)", |_| boot_ramdisk(rd, bc))?;
        boots.push(r);
    }
    if let (Some(bc), Some(p)) = (&req.boot_check, &plan) {
        let disk = outputs
            .iter()
            .find(|o| matches!(o.format, OutputFormat::Qcow2 | OutputFormat::Raw))
            .ok_or_else(|| Error::Usage {
                field: "--boot-check".into(),
                value: String::new(),
                reason: "needs a raw or qcow2 output (-t raw or -t qcow2)".into(),
            })?;
        // The boots run side by side (each QEMU is one vCPU); one step times them all.
        let fws = firmwares(p);
        let names: Vec<&str> = fws.iter().map(|f| firmware_name(*f)).collect();
        let results = steps.run(&format!("boot check ({})", names.join(", ")), |_| {
            let results: Vec<Result<BootResult>> = std::thread::scope(|s| {
                let handles: Vec<_> = fws
                    .iter()
                    .map(|fw| s.spawn(|| boot_check(&disk.path, disk.format, *fw, bc)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(Error::BootCheck {
                                firmware: "?".into(),
                                reason: "the boot thread panicked".into(),
                            })
                        })
                    })
                    .collect()
            });
            results.into_iter().collect::<Result<Vec<_>>>()
        })?;
        boots.extend(results);
    }
    if let Some(rd) = ramdisk_out {
        for (path, what) in [(rd.kernel, "kernel"), (rd.initramfs, "initramfs")] {
            let m = fs::metadata(&path).map_err(io_err("inspecting", &path))?;
            outputs.push(OutputReport {
                format: if what == "kernel" {
                    OutputFormat::RamdiskKernel
                } else {
                    OutputFormat::RamdiskInitramfs
                },
                path,
                bytes: m.len(),
                allocated: std::os::unix::fs::MetadataExt::blocks(&m) * 512,
                millis: 0,
                checksums: Vec::new(),
            });
        }
    }
    Ok((names, plan, outputs, boots))
}

/// Set every mtime in `tree` later than `epoch` to `epoch` (symlinks themselves, not their
/// targets), so that files the phases wrote just now (GRUB's, an element's) do not make
/// two builds differ in filesystems that keep mtimes as they are (FAT).
fn clamp_mtimes(tree: &Path, epoch: u64) -> Result<()> {
    use rustix::fs::{AtFlags, CWD, Timespec, Timestamps, UTIME_OMIT, utimensat};
    use std::os::unix::fs::MetadataExt;
    let mut stack = vec![tree.to_owned()];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p).map_err(io_err("inspecting", &p))?;
        if m.is_dir() {
            for e in fs::read_dir(&p).map_err(io_err("reading", &p))? {
                stack.push(e.map_err(io_err("reading", &p))?.path());
            }
        }
        if m.mtime() > epoch as i64 {
            let t = Timestamps {
                last_access: Timespec {
                    tv_sec: 0,
                    tv_nsec: UTIME_OMIT,
                },
                last_modification: Timespec {
                    tv_sec: epoch as i64,
                    tv_nsec: 0,
                },
            };
            utimensat(CWD, &p, &t, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| io_err("setting the mtime of", &p)(e.into()))?;
        }
    }
    Ok(())
}

/// `DIB_IMAGE_CACHE` (always set by [`run_context`]'s environment).
fn image_cache(env: &BTreeMap<String, String>) -> PathBuf {
    PathBuf::from(env.get("DIB_IMAGE_CACHE").map_or(".", String::as_str))
}

/// dib's shared package cache, `DIB_IMAGE_CACHE/apt/debian`, unless `DIB_APT_LOCAL_CACHE=0`.
fn apt_cache(env: &BTreeMap<String, String>) -> Option<PathBuf> {
    (env.get("DIB_APT_LOCAL_CACHE").map(String::as_str) != Some("0"))
        .then(|| image_cache(env).join("apt/debian"))
}

/// The `debian-minimal` options from dib's variables and the host.
fn debian_options(
    req: &BuildRequest,
    ctx: &elements::RunContext,
    vm: bool,
) -> Result<crate::debian::DebianOptions> {
    let env = |k: &str| ctx.env.get(k).filter(|v| !v.trim().is_empty()).cloned();
    let missing = |field: &str, what: &str| Error::Usage {
        field: field.into(),
        value: String::new(),
        reason: format!("not set, and {what}"),
    };
    let release = env("DIB_RELEASE")
        .or_else(crate::debian::host_release)
        .ok_or_else(|| {
            missing(
                "DIB_RELEASE",
                "the host's /etc/os-release names no codename",
            )
        })?;
    let mirror = env("DIB_DISTRIBUTION_MIRROR")
        .or_else(crate::debian::host_mirror)
        .ok_or_else(|| {
            missing(
                "DIB_DISTRIBUTION_MIRROR",
                "the host's apt sources name no mirror",
            )
        })?;
    let cache = image_cache(&ctx.env);
    let components: Vec<String> = env("DIB_DEBIAN_COMPONENTS")
        .unwrap_or_else(|| "main".into())
        .split(',')
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty())
        .collect();
    // dib: DIB_APT_SOURCES (a sources.list file) wins over DIB_APT_SOURCES_CONF, which wins
    // over the default (mirror, -updates, security mirror).
    let sources = if let Some(file) = env("DIB_APT_SOURCES") {
        let text = fs::read_to_string(&file)
            .map_err(io_err("reading DIB_APT_SOURCES", Path::new(&file)))?;
        let s = crate::debian::sources_from_list(&text);
        if s.is_empty() {
            return Err(Error::Usage {
                field: "DIB_APT_SOURCES".into(),
                value: file,
                reason: "holds no `deb` line".into(),
            });
        }
        s
    } else if let Some(conf) = env("DIB_APT_SOURCES_CONF") {
        crate::debian::sources_from_conf(&conf)
    } else {
        let security = env("DIB_DEBIAN_SECURITY_MIRROR")
            .or_else(crate::debian::host_security_mirror)
            .unwrap_or_else(|| "http://security.debian.org/".into());
        crate::debian::default_sources(
            &mirror,
            &security,
            &env("DIB_DEBIAN_SECURITY_SUBPATH").unwrap_or_default(),
            &release,
            &components,
        )
    };
    Ok(crate::debian::DebianOptions {
        release,
        mirror,
        sources,
        components,
        arch: dib_arch(&req.arch)?.into(),
        include: crate::debian::BASE_PACKAGES
            .iter()
            .chain(if vm && dib_arch(&req.arch)? == "amd64" {
                crate::debian::GRUB_PACKAGES
            } else {
                &[]
            })
            .map(|p| p.to_string())
            .collect(),
        bootstrapper: crate::debian::Bootstrapper::detect(),
        apt_cache: apt_cache(&ctx.env),
        store: cache.join("layers"),
        no_cache: env("DIB_DEBOOTSTRAP_CACHE").as_deref() == Some("0"),
        max_age: Duration::from_secs(
            env("DIB_DEBOOTSTRAP_CACHE_MAX_AGE")
                .and_then(|v| v.parse().ok())
                .unwrap_or(7 * 24 * 3600),
        ),
    })
}

fn uuid_seed_random() -> String {
    let mut b = [0u8; 16];
    if let Ok(mut f) = fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The root filesystem and the ESP (a vfat filesystem mounted at /boot/efi) of a plan.
fn root_and_esp(p: &blockdev::Plan) -> (Option<&blockdev::FsPlan>, Option<&blockdev::FsPlan>) {
    let root = p
        .filesystems
        .iter()
        .find(|f| f.mount_point.as_deref() == Some("/"));
    let esp = p
        .filesystems
        .iter()
        .find(|f| f.mount_point.as_deref() == Some("/boot/efi"));
    (root, esp)
}

/// The firmwares a plan can boot under: SeaBIOS when it has a BIOS route (MBR, or GPT with a
/// BIOS-boot partition), OVMF when it has an ESP.
fn firmwares(p: &blockdev::Plan) -> Vec<diskforge_vm::Firmware> {
    let mut v = Vec::new();
    if bios_capable(p) {
        v.push(diskforge_vm::Firmware::SeaBios);
    }
    if root_and_esp(p).1.is_some() {
        v.push(diskforge_vm::Firmware::Ovmf);
    }
    v
}

fn bios_capable(p: &blockdev::Plan) -> bool {
    p.disks
        .first()
        .and_then(|d| d.table.as_ref())
        .is_some_and(|t| {
            t.label == diskforge_part::Label::Mbr
                || t.partitions
                    .iter()
                    .any(|pp| pp.type_code.eq_ignore_ascii_case("ef02"))
        })
}

/// dib's bootloader element: the kernel command line.
fn grub_config(
    p: &blockdev::Plan,
    ctx: &elements::RunContext,
    tree: &Path,
) -> Result<diskforge_boot::GrubConfig> {
    let (root, _) = root_and_esp(p);
    let root = root.ok_or_else(|| Error::Usage {
        field: "DIB_BLOCK_DEVICE_CONFIG".into(),
        value: String::new(),
        reason: "the vm element needs a filesystem mounted at /".into(),
    })?;
    let k = diskforge_boot::find_kernel(tree)
        .map_err(|e| Error::Boot(Box::new(e)))?
        .ok_or_else(|| Error::Usage {
            field: "vm".into(),
            value: tree.join("boot").display().to_string(),
            reason: "no kernel (boot/vmlinuz-RELEASE) in the tree: add an operating-system \
                     element that installs one"
                .into(),
        })?;
    let base = ctx
        .env
        .get("DIB_BOOTLOADER_DEFAULT_CMDLINE")
        .cloned()
        .unwrap_or_else(|| "nofb nomodeset gfxpayload=text".into());
    let serial = ctx
        .env
        .get("DIB_BOOTLOADER_SERIAL_CONSOLE")
        .cloned()
        .unwrap_or_else(|| "ttyS0,115200".into());
    // diskforge-boot adds root=UUID=… (or LABEL=) from the fields below.
    let cmdline = format!("console=tty0 console={serial} no_timer_check {base}");
    Ok(diskforge_boot::GrubConfig {
        timeout: ctx
            .env
            .get("DIB_GRUB_TIMEOUT")
            .and_then(|t| t.parse().ok())
            .unwrap_or(0),
        source_date_epoch: ctx
            .env
            .get("SOURCE_DATE_EPOCH")
            .and_then(|e| e.parse().ok()),
        // A Debian target brings its own GRUB (grub-pc-bin, grub-efi-amd64-bin in the base).
        grub_lib: Some(tree.join("usr/lib/grub")).filter(|d| d.is_dir()),
        ..diskforge_boot::GrubConfig::for_root_fs(k.kernel, k.initrd, root, cmdline.trim())
    })
}

fn install_tree_boot(
    tree: &Path,
    p: &blockdev::Plan,
    ctx: &elements::RunContext,
) -> Result<diskforge_boot::GrubConfig> {
    let cfg = grub_config(p, ctx, tree)?;
    diskforge_boot::write_grub_cfg(tree, &cfg).map_err(|e| Error::Boot(Box::new(e)))?;
    if root_and_esp(p).1.is_some() {
        let esp = tree.join("boot/efi");
        fs::create_dir_all(&esp).map_err(io_err("creating", &esp))?;
        diskforge_boot::install_efi(&esp, &cfg).map_err(|e| Error::Boot(Box::new(e)))?;
    }
    Ok(cfg)
}

fn install_bios(image: &Path, p: &blockdev::Plan, cfg: &diskforge_boot::GrubConfig) -> Result<()> {
    if !bios_capable(p) {
        return Ok(());
    }
    let (Some(root), Some(disk)) = (root_and_esp(p).0, p.disks.first()) else {
        return Ok(());
    };
    diskforge_boot::install_bios(image, disk, root, cfg)
        .map(|_| ())
        .map_err(|e| Error::Boot(Box::new(e)))
}

/// Boot `NAME.kernel` + `NAME.initramfs` directly (no disk) to the marker.
fn boot_ramdisk(rd: &crate::ramdisk::Ramdisk, bc: &BootCheck) -> Result<BootResult> {
    use diskforge_vm::{Expect, KernelBoot, Vm};
    let vm = Vm::kernel(KernelBoot {
        kernel: rd.kernel.clone(),
        initrd: rd.initramfs.clone(),
        cmdline: "console=ttyS0,115200".into(),
    });
    let expect = Expect::marker(bc.marker.clone(), bc.timeout);
    let r = diskforge_vm::boot_to_marker(&vm, &expect).map_err(|e| Error::BootCheck {
        firmware: "direct kernel".into(),
        reason: e.to_string(),
    })?;
    Ok(BootResult {
        firmware: "direct kernel (ramdisk)".into(),
        image: rd.initramfs.clone(),
        accel: r.accel.name().into(),
        seconds: r.done_after.unwrap_or(r.seconds),
    })
}

fn firmware_name(fw: diskforge_vm::Firmware) -> &'static str {
    match fw {
        diskforge_vm::Firmware::SeaBios => "seabios",
        diskforge_vm::Firmware::Ovmf => "ovmf",
    }
}

fn boot_check(
    image: &Path,
    format: OutputFormat,
    fw: diskforge_vm::Firmware,
    bc: &BootCheck,
) -> Result<BootResult> {
    use diskforge_vm::{Access, Drive, Expect, Format, Vm};
    diskforge_fault::point("image.boot-check.start")?;
    let f = if format == OutputFormat::Qcow2 {
        Format::Qcow2
    } else {
        Format::Raw
    };
    let vm = Vm::disk(Drive::virtio(image, f, Access::Snapshot), fw);
    let expect = Expect::marker(bc.marker.clone(), bc.timeout);
    let name = firmware_name(fw);
    let r = diskforge_vm::boot_to_marker(&vm, &expect).map_err(|e| Error::BootCheck {
        firmware: name.into(),
        reason: e.to_string(),
    })?;
    Ok(BootResult {
        firmware: name.into(),
        image: image.to_owned(),
        accel: r.accel.name().into(),
        seconds: r.done_after.unwrap_or(r.seconds),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A killed build's directory (lock free) goes with the partial outputs it names; a live
    /// build's (lock held), other names and a partial of no build stay; twice is the same.
    #[test]
    fn stale_build_dirs_and_their_partials_are_removed() {
        let d = tempfile::tempdir().unwrap();
        let work = d.path().join("work");
        let out = d.path().join("out");
        fs::create_dir_all(&out).unwrap();
        let partial = out.join(".img.qcow2.partial");
        let other = out.join(".other.qcow2.partial");
        fs::write(&partial, "half").unwrap();
        fs::write(&other, "someone else's").unwrap();
        let dead = work.join("dib_build.dead");
        let live = work.join("dib_build.live");
        let foreign = work.join("not-a-build");
        for dir in [&dead, &live, &foreign] {
            fs::create_dir_all(dir.join("built")).unwrap();
        }
        fs::write(
            dead.join(PARTIALS_FILE),
            format!("{}\n/etc/passwd\n", partial.display()),
        )
        .unwrap();
        // A live build holds the lock on its directory.
        let held = fs::File::open(&live).unwrap();
        rustix::fs::flock(&held, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
        let gone = cleanup_stale(&work).unwrap();
        assert_eq!(gone, vec![partial.clone(), dead.clone()]);
        assert!(!dead.exists() && !partial.exists());
        assert!(live.exists() && foreign.exists() && other.exists());
        assert!(Path::new("/etc/passwd").exists());
        assert!(cleanup_stale(&work).unwrap().is_empty());
        assert!(cleanup_stale(&d.path().join("missing")).unwrap().is_empty());
        drop(held);
    }

    #[test]
    fn arch_names_follow_dib() {
        assert_eq!(dib_arch("x86_64").unwrap(), "amd64");
        assert_eq!(dib_arch("aarch64").unwrap(), "arm64");
        let e = dib_arch("sparc").unwrap_err().to_string();
        assert!(e.starts_with("-a \"sparc\": unknown architecture"), "{e}");
    }

    #[test]
    fn block_device_config_is_a_path_a_file_url_or_yaml() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("bd.yaml");
        fs::write(&f, "- local_loop:\n    name: image0\n").unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let shipped = elements::shipped_elements(tmp.path()).unwrap();
        let mut req = BuildRequest::new(["busybox"], "x");
        let resolved = elements::resolve(&req.elements, &resolve_options(&req, &shipped)).unwrap();
        for (value, name) in [
            (f.display().to_string(), f.display().to_string()),
            (format!("file://{}", f.display()), f.display().to_string()),
            (
                "- local_loop:\n    name: image0\n".to_owned(),
                "DIB_BLOCK_DEVICE_CONFIG".to_owned(),
            ),
        ] {
            req.block_device_config = Some(value);
            let (text, source) = block_device_text(&req, &resolved).unwrap();
            assert_eq!(text, "- local_loop:\n    name: image0\n");
            assert_eq!(source, name);
        }
        req.block_device_config = Some("file:///no/such/file.yaml".into());
        let e = block_device_text(&req, &resolved).unwrap_err().to_string();
        assert!(e.contains("/no/such/file.yaml"), "{e}");
    }

    /// Hardening corpus: a bad block-device config is refused by `--dry-run` (which did not
    /// read it) and before any phase of a build (which found it after the tree phases),
    /// naming the file; invalid UTF-8 is named by line and byte, not as an I/O error.
    #[test]
    fn bad_block_device_configs_are_refused_before_anything_runs() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("escape.yaml");
        fs::write(&f, "- local_loop: {name: ../diskforge-canary}\n").unwrap();
        let u = dir.path().join("utf8.yaml");
        fs::write(&u, b"- local_loop:\n    name: a\xff\n").unwrap();
        for (path, want) in [(&f, "path separator"), (&u, "not UTF-8")] {
            let mut req = BuildRequest::new(["busybox", "vm"], dir.path().join("out"));
            req.block_device_config = Some(format!("file://{}", path.display()));
            let e = dry_run(&req).unwrap_err();
            assert!(e.is_invalid_input(), "{e:?}");
            let msg = format!("{e}: {}", std::error::Error::source(&e).unwrap());
            assert!(
                msg.contains(&path.display().to_string()) && msg.contains(want),
                "{msg}"
            );
            // The build refuses it in the resolve step, before the busybox root is made.
            req.work_dir = Some(dir.path().join("work"));
            fs::create_dir_all(dir.path().join("work")).unwrap();
            let mut steps = Vec::new();
            let e = build(&req, &mut |ev| {
                if let BuildEvent::StepStart { step } = ev {
                    steps.push(step)
                }
            })
            .unwrap_err();
            assert!(e.is_invalid_input(), "{e:?}");
            assert_eq!(steps, ["resolve elements"], "{e}");
        }
    }

    #[test]
    fn auto_size_adds_the_fixed_partitions_to_the_tree() {
        let text = "- local_loop:\n    name: image0\n- partitioning:\n    base: image0\n    label: gpt\n    partitions:\n      - name: ESP\n        type: 'EF00'\n        size: 550MiB\n        mkfs:\n          type: vfat\n          mount:\n            mount_point: /boot/efi\n      - name: root\n        type: '8300'\n        size: 100%\n        mkfs:\n          type: ext4\n          mount:\n            mount_point: /\n";
        let opts = blockdev::PlanOptions::default();
        let mib = 1u64 << 20;
        // 60 MiB of tree: /0.6 = 100 MiB root, + 550 MiB ESP + 8 MiB slack.
        assert_eq!(auto_size(text, &opts, 60 * mib, None), 658 * mib);
        // DIB_IMAGE_EXTRA_SIZE=200 (MiB) instead of the 0.6 scale.
        assert_eq!(auto_size(text, &opts, 60 * mib, Some(200)), 818 * mib);
        // A tiny tree still gets 32 MiB of room.
        assert_eq!(auto_size(text, &opts, mib, None), (550 + 33 + 8) * mib);
    }
}
