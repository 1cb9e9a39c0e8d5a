//! `diskforge blockdev`: diskimage-builder's `dib-block-device` (`init`, `create`, `getval`,
//! `writefstab`, `umount`, `cleanup`, `delete`), offline by default, the kernel route for
//! LVM or on request. Parses arguments, calls diskforge-blockdev, prints; all logic lives in
//! the crate.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use diskforge_blockdev::{CreateOptions, Error, Event, Plan, PlanOptions, Route, Step};

/// Build disks from diskimage-builder block-device YAML: offline (no loop devices, no
/// mounts) when the layout allows, else through loop devices and LVM.
///
/// Exit codes: 0 success, 1 error (bad config, failed build: nothing is left attached or
/// mounted), 2 usage error, 130/143 create interrupted by SIGINT/SIGTERM (unwound as after
/// an error).
#[derive(Debug, Parser)]
#[command(name = "diskforge blockdev", version, term_width = 80)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Validate the config and print the plan (offsets and sizes in bytes and units).
    Plan(ConfigArgs),
    /// Plan the config and record it in the state directory (dib's init).
    Init {
        #[command(flatten)]
        config: ConfigArgs,
        /// State directory.
        #[arg(long)]
        state: PathBuf,
    },
    /// Build the disks the config describes, recording state after every step. Offline
    /// unless the layout has LVM or --kernel/--run ask for the kernel route. Without
    /// --config or DIB_BLOCK_DEVICE_CONFIG, the plan recorded by `init` is built.
    Create {
        #[command(flatten)]
        config: ConfigArgs,
        /// State directory (state.json is written after every step).
        #[arg(long)]
        state: PathBuf,
        /// Print the plan and stop.
        #[arg(long)]
        dry_run: bool,
        /// Keep half-made images when a step fails.
        #[arg(long)]
        keep_on_error: bool,
        /// Take the kernel route (loop devices, mkfs on them) even where offline would do.
        #[arg(long)]
        kernel: bool,
        /// Kernel route: mount the filesystems (in a private mount namespace) and run this
        /// shell command with TARGET_ROOT set to the mounted tree; unmounted afterwards.
        #[arg(long, value_name = "CMD")]
        run: Option<String>,
    },
    /// Print a value dib's scripts ask for (root-label, root-fstype, boot-label,
    /// mount-points, image-path, image-block-device, image-block-partition,
    /// image-block-devices).
    Getval {
        /// The symbol.
        symbol: String,
        /// State directory of an `init` or `create`; without it the config is planned.
        #[arg(long)]
        state: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Write the fstab lines (as dib writes them) to ROOT/etc/fstab; the file replaced is
    /// restored by `delete`.
    Writefstab {
        /// State directory.
        #[arg(long)]
        state: PathBuf,
        /// The tree; default the --root the plan was made with.
        #[arg(long)]
        root: Option<PathBuf>,
    },
    /// Release what a crashed build left (deactivate its volume groups, detach its loop
    /// devices), from the state alone; idempotent. Mounts never outlive `create`.
    Umount {
        /// State directory.
        #[arg(long)]
        state: PathBuf,
    },
    /// Release what the build recorded (as umount), remove the state directory and scratch
    /// files; the images stay. Idempotent.
    Cleanup {
        /// State directory.
        #[arg(long)]
        state: PathBuf,
    },
    /// Remove the images a build made and its state (after a failure); idempotent.
    Delete {
        /// State directory.
        #[arg(long)]
        state: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct ConfigArgs {
    /// The YAML config, or - for stdin. Default: $DIB_BLOCK_DEVICE_CONFIG (a path, a
    /// file:// URL, or the YAML itself).
    #[arg(long)]
    config: Option<String>,
    /// Size of local_loop images that give none (dib's --image-size), e.g. 4GiB.
    #[arg(long)]
    image_size: Option<String>,
    /// Directory for the image files (IMAGE_DIR/NAME.raw).
    #[arg(long, default_value = ".")]
    image_dir: PathBuf,
    /// Root tree to populate the filesystems from; its etc/fstab is written first.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Seed for table and filesystem UUIDs (reproducible images).
    #[arg(long)]
    uuid_seed: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Run `diskforge blockdev ARGS…`; the exit code: 0, 1 on errors, 2 on usage errors.
pub fn main(args: Vec<std::ffi::OsString>) -> i32 {
    let cli = match Cli::try_parse_from(
        std::iter::once(std::ffi::OsString::from("diskforge blockdev")).chain(args),
    ) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let signal = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let res = run(cli, &signal);
    // Interrupted by SIGINT/SIGTERM: 128 + the signal, as a shell reports it.
    let failed = match signal.load(std::sync::atomic::Ordering::SeqCst) {
        0 => 1,
        sig => 128 + i32::try_from(sig).unwrap_or(0),
    };
    match res {
        Ok(()) => 0,
        Err(Fail::Config {
            source,
            err: Error::Invalid(problems),
        }) => {
            // One line per problem, each naming the config, line, node, field and value.
            for p in &problems.0 {
                eprintln!("diskforge blockdev: {source}: {p}");
            }
            1
        }
        Err(Fail::Config { source, err }) => {
            report(&format!("{source}: "), &err);
            failed
        }
        Err(Fail::Other(e)) => {
            report("", &e);
            failed
        }
    }
}

fn report(prefix: &str, e: &Error) {
    eprintln!("diskforge blockdev: {prefix}{e}");
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        eprintln!("  caused by: {s}");
        src = s.source();
    }
}

/// Why a command failed: a problem of the config (named by where it came from) or anything
/// else.
enum Fail {
    /// Reading, parsing, validating or planning the config named `source` failed.
    Config {
        /// The config's file, `stdin` or `DIB_BLOCK_DEVICE_CONFIG`.
        source: String,
        /// What is wrong.
        err: Error,
    },
    /// Anything else (state, kernel, mkfs …).
    Other(Error),
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail::Other(e)
    }
}

/// Where the config of `arg` comes from, for messages.
fn config_source(arg: Option<&str>) -> String {
    match arg {
        Some("-") => "stdin".into(),
        Some(p) => p.into(),
        None => match std::env::var("DIB_BLOCK_DEVICE_CONFIG") {
            Ok(v) => match v.strip_prefix("file://") {
                Some(p) => p.into(),
                None if !v.contains('\n') && Path::new(v.trim()).is_file() => v.trim().into(),
                None => "DIB_BLOCK_DEVICE_CONFIG".into(),
            },
            Err(_) => "--config".into(),
        },
    }
}

/// The config text: `--config FILE|-`, else `DIB_BLOCK_DEVICE_CONFIG` as dib reads it.
fn config_text(arg: Option<&str>) -> Result<String, Error> {
    let read_path = |p: &Path| {
        std::fs::read(p)
            .map_err(|source| Error::Io {
                action: "reading the config".into(),
                path: p.to_owned(),
                source,
            })
            .and_then(|b| diskforge_blockdev::decode(&b).map(str::to_owned))
    };
    match arg {
        Some("-") => {
            let mut b = Vec::new();
            std::io::stdin()
                .read_to_end(&mut b)
                .map_err(|source| Error::Io {
                    action: "reading the config from".into(),
                    path: "stdin".into(),
                    source,
                })?;
            diskforge_blockdev::decode(&b).map(str::to_owned)
        }
        Some(p) => read_path(Path::new(p)),
        None => match std::env::var("DIB_BLOCK_DEVICE_CONFIG") {
            Ok(v) => {
                if let Some(p) = v.strip_prefix("file://") {
                    read_path(Path::new(p))
                } else if !v.contains('\n') && Path::new(v.trim()).is_file() {
                    read_path(Path::new(v.trim()))
                } else {
                    Ok(v)
                }
            }
            Err(_) => Err(Error::State {
                path: "--config".into(),
                reason: "no config: give --config FILE or set DIB_BLOCK_DEVICE_CONFIG".into(),
            }),
        },
    }
}

fn plan_options(a: &ConfigArgs) -> Result<PlanOptions, Error> {
    let image_size = a
        .image_size
        .as_deref()
        .map(|s| {
            diskforge_blockdev::size::parse(s)
                .map(|v| v.bytes())
                .map_err(|e| {
                    Error::Invalid(diskforge_blockdev::Problems(vec![
                        diskforge_blockdev::Problem::global(format!("--image-size: {e}")),
                    ]))
                })
        })
        .transpose()?;
    Ok(PlanOptions {
        image_size,
        image_dir: a.image_dir.clone(),
        root: a.root.clone(),
        uuid_seed: a.uuid_seed.clone(),
        source_date_epoch: std::env::var("SOURCE_DATE_EPOCH")
            .ok()
            .and_then(|s| s.trim().parse().ok()),
        content: Default::default(),
        root_fs_type: std::env::var("FS_TYPE").ok().filter(|s| !s.is_empty()),
        root_label: std::env::var("ROOT_LABEL").ok().filter(|s| !s.is_empty()),
    })
}

fn make_plan(a: &ConfigArgs) -> Result<Plan, Fail> {
    let source = config_source(a.config.as_deref());
    let named = |err: Error| Fail::Config {
        source: source.clone(),
        err,
    };
    let text = config_text(a.config.as_deref()).map_err(named)?;
    let mut opts = plan_options(a)?;
    if let Some(root) = &a.root {
        let cfg = diskforge_blockdev::load(&text, &opts).map_err(named)?;
        opts.content = diskforge_blockdev::measure_tree(root, &cfg)?;
    }
    diskforge_blockdev::plan_text(&text, &opts).map_err(named)
}

fn json<T: serde::Serialize>(v: &T) -> Result<(), Fail> {
    let s = serde_json::to_string_pretty(v).map_err(|e| Error::State {
        path: "stdout".into(),
        reason: e.to_string(),
    })?;
    println!("{s}");
    Ok(())
}

fn run(cli: Cli, signal: &std::sync::Arc<std::sync::atomic::AtomicUsize>) -> Result<(), Fail> {
    match cli.cmd {
        Cmd::Plan(a) => {
            let plan = make_plan(&a)?;
            if a.json {
                json(&plan)
            } else {
                print!("{}", render(&plan));
                Ok(())
            }
        }
        Cmd::Init { config, state } => {
            let plan = make_plan(&config)?;
            let st = diskforge_blockdev::init(&plan, &state)?;
            if config.json {
                json(&serde_json::json!({ "state": state, "steps": st.plan.steps.len() }))
            } else {
                println!("{}", state.join(diskforge_blockdev::STATE_FILE).display());
                Ok(())
            }
        }
        Cmd::Create {
            config,
            state,
            dry_run,
            keep_on_error,
            kernel,
            run,
        } => {
            let from_init = config.config.is_none()
                && std::env::var_os("DIB_BLOCK_DEVICE_CONFIG").is_none()
                && state.join(diskforge_blockdev::STATE_FILE).exists();
            let plan = if from_init {
                let st = diskforge_blockdev::read_state(&state)?;
                if st.done > 0 || !st.images.is_empty() {
                    return Err(Error::State {
                        path: state.join(diskforge_blockdev::STATE_FILE),
                        reason: "this build has run already; `cleanup` or `delete` it first".into(),
                    }
                    .into());
                }
                st.plan
            } else {
                make_plan(&config)?
            };
            if dry_run {
                return if config.json {
                    json(&plan)
                } else {
                    print!("{}", render(&plan));
                    Ok(())
                };
            }
            let tty = std::io::stderr().is_terminal() && !config.json;
            let mut progress = |e: Event| {
                if let (true, Event::Start { index, total, node }) = (tty, &e) {
                    eprintln!("[{}/{total}] {node}", index + 1);
                }
            };
            // SIGINT/SIGTERM: stop before the next step and unwind (a terminal's SIGINT
            // also reaches the mkfs child, which fails the running step).
            let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                let value = usize::try_from(sig).unwrap_or(0);
                signal_hook::flag::register(sig, cancel.clone())
                    .and_then(|_| signal_hook::flag::register_usize(sig, signal.clone(), value))
                    .map_err(|source| Error::Io {
                        action: "installing a signal handler for".into(),
                        path: "SIGINT/SIGTERM".into(),
                        source,
                    })?;
            }
            let mounted = run.map(|cmd| {
                diskforge_blockdev::MountedHook(std::sync::Arc::new(move |root: &Path| {
                    // In its own PID namespace that dies with us (setpriv's parent-death
                    // signal on unshare, --kill-child on the namespace): after `kill -9` no
                    // process of the command keeps the tree's mounts (and loops) alive.
                    let status = diskforge_cmd::Cmd::new("setpriv")
                        .args(["--pdeathsig", "KILL", "--", "unshare", "--pid", "--fork"])
                        .args(["--kill-child", "sh", "-c", &cmd])
                        .env("TARGET_ROOT", root)
                        .status()
                        .map_err(|e| format!("{e:#}"))?;
                    if status.success() {
                        Ok(())
                    } else {
                        Err(format!("--run {cmd:?}: {status}"))
                    }
                }))
            });
            let opts = CreateOptions {
                keep_on_error,
                cancel: Some(cancel),
                kernel,
                mounted,
                ..Default::default()
            };
            let st = diskforge_blockdev::create(&plan, &state, &opts, &mut progress)?;
            if config.json {
                json(&serde_json::json!({
                    "state": state,
                    "route": if st.kernel.is_some() { "kernel" } else { "offline" },
                    "images": st.images,
                    "steps": st.done,
                    "fstab": plan.fstab,
                }))
            } else {
                for d in &plan.disks {
                    println!("{}", d.path.display());
                }
                Ok(())
            }
        }
        Cmd::Getval {
            symbol,
            state,
            config,
        } => {
            let v = match state {
                Some(s) => {
                    diskforge_blockdev::getval_state(&diskforge_blockdev::read_state(&s)?, &symbol)?
                }
                None => diskforge_blockdev::getval(&make_plan(&config)?, &symbol)?,
            };
            if config.json {
                json(&serde_json::json!({ "symbol": symbol, "value": v }))
            } else {
                println!("{v}");
                Ok(())
            }
        }
        Cmd::Writefstab { state, root } => {
            let p = diskforge_blockdev::writefstab(&state, root.as_deref())?;
            println!("{}", p.display());
            Ok(())
        }
        Cmd::Umount { state } => Ok(diskforge_blockdev::umount(&state)?),
        Cmd::Cleanup { state } => Ok(diskforge_blockdev::cleanup(&state)?),
        Cmd::Delete { state } => Ok(diskforge_blockdev::delete(&state)?),
    }
}

/// The plan for humans: disks, partitions with offsets and sizes (bytes and units),
/// volume groups, filesystems, fstab, steps.
fn render(plan: &Plan) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let human = diskforge_blockdev::size::human;
    match &plan.route {
        Route::Offline => s.push_str("route: offline (no loop device, no mount)\n"),
        Route::Kernel { reasons } => {
            s.push_str("route: kernel (loop devices, device-mapper):\n");
            for r in reasons {
                let _ = writeln!(s, "  {r}");
            }
        }
    }
    for d in &plan.disks {
        let _ = writeln!(
            s,
            "disk {} {}: {} bytes ({})",
            d.name,
            d.path.display(),
            d.size,
            d.size_human
        );
        if let Some(t) = &d.table {
            let _ = writeln!(s, "  {} table, align {}", t.label, human(t.align));
            for p in &t.partitions {
                let _ = writeln!(
                    s,
                    "  {:>3} {:<12} {:<7} start {:>12} ({:>9}) size {:>12} ({:>9}) type {} asked {}",
                    p.number,
                    p.name,
                    format!("{:?}", p.kind).to_lowercase(),
                    p.start,
                    human(p.start),
                    p.size,
                    p.size_human,
                    p.type_code,
                    p.requested
                );
            }
            let _ = writeln!(s, "  free at end: {} bytes", t.free_at_end);
        }
    }
    for vg in &plan.volume_groups {
        let _ = writeln!(
            s,
            "vg {}: {} extents, {} free",
            vg.name, vg.extents, vg.free_extents
        );
        for lv in &vg.lvs {
            let _ = writeln!(
                s,
                "  lv {:<12} {:>6} extents {:>12} ({:>9}) asked {}",
                lv.name, lv.extents, lv.size, lv.size_human, lv.requested
            );
        }
    }
    for f in &plan.filesystems {
        let _ = writeln!(
            s,
            "mkfs {} on {}: {} label {} mount {}",
            f.name,
            f.base,
            f.fs_type,
            f.label,
            f.mount_point.as_deref().unwrap_or("-")
        );
    }
    if !plan.fstab.is_empty() {
        s.push_str("fstab:\n");
        for l in &plan.fstab {
            let _ = writeln!(s, "  {l}");
        }
    }
    s.push_str("steps:\n");
    for (i, st) in plan.steps.iter().enumerate() {
        let what = match st {
            Step::CreateImage { .. } => "create image",
            Step::PartitionTable { .. } => "write partition table",
            Step::PhysicalVolume { .. } => "pvcreate",
            Step::VolumeGroup { .. } => "vgcreate",
            Step::LogicalVolume { .. } => "lvcreate",
            Step::WriteFstab { .. } => "write fstab",
            Step::Mkfs { .. } => "mkfs",
        };
        let _ = writeln!(s, "  {:>2}. {what} {}", i + 1, st.node());
    }
    for w in &plan.warnings {
        let _ = writeln!(s, "warning: {w}");
    }
    s
}
