//! `disk-image-create`: diskimage-builder's image builder, as its users call it — elements as
//! arguments, `-o`, `-t`, `-a`, `--image-size`, `-x`, `-u`, `ELEMENTS_PATH`,
//! `DIB_BLOCK_DEVICE_CONFIG` — built offline (no loop device, no mount) by diskforge-image.
//! Parses arguments, calls the library, prints.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Parser;
#[cfg(test)]
use diskforge_image::OutputFormat;
use diskforge_image::{BootCheck, BuildEvent, BuildReport, BuildRequest, Error};

const AFTER_HELP: &str = "\
Examples:
  disk-image-create -o demo --boot-check busybox vm block-device-efi
  ELEMENTS_PATH=./elements disk-image-create -o web -t raw,tar my-element
  DIB_BLOCK_DEVICE_CONFIG=file://layout.yaml disk-image-create busybox vm
  disk-image-create --dry-run --json busybox vm

Environment:
  ELEMENTS_PATH            colon-separated element dirs, earlier wins
  DIB_BLOCK_DEVICE_CONFIG  a path, file://PATH or inline YAML
  SOURCE_DATE_EPOCH        reproducible outputs (fixed UUIDs and times)
  FS_TYPE, DIB_*           passed on to the element scripts

Exit codes:
  0        built
  1        the build failed (a script, mkfs, qemu-img …)
  2        usage error
  3        invalid input (elements that do not resolve, a bad block-device
           config)
  4        the boot check failed
  130/143  interrupted by SIGINT/SIGTERM (everything made is removed)";

/// Build a VM disk image from diskimage-builder elements.
#[derive(Debug, Parser)]
#[command(name = "disk-image-create", version, after_help = AFTER_HELP, term_width = 80)]
struct Cli {
    /// Elements to build from (with their dependencies).
    #[arg(value_name = "ELEMENT", required_unless_present = "cleanup")]
    elements: Vec<String>,
    /// Output base name: writes NAME.qcow2, NAME.tar, …
    #[arg(short = 'o', value_name = "NAME", default_value = "image")]
    output: PathBuf,
    /// Output types, comma-separated or repeated: raw, qcow2, vhd, vhdx, vmdk, tar, tgz,
    /// squashfs, docker, oci.
    #[arg(short = 't', value_name = "TYPES", default_value = "qcow2")]
    types: Vec<String>,
    /// Architecture (amd64/x86_64, i386, arm64/aarch64, …).
    #[arg(
        short = 'a',
        value_name = "ARCH",
        env = "ARCH",
        default_value = "amd64"
    )]
    arch: String,
    /// Image size: a bare number is GiB as in dib (`2` = 2×2³⁰ bytes), or a size with a unit
    /// (`800MiB`, `3GB`). Default: as dib, the tree / 0.6 (or plus DIB_IMAGE_EXTRA_SIZE MiB)
    /// plus the other partitions.
    #[arg(long, value_name = "SIZE")]
    image_size: Option<String>,
    /// Trace the element scripts (`set -x`, DIB_DEBUG_TRACE=1) and show their output.
    #[arg(short = 'x')]
    trace: bool,
    /// Do not compress qcow2 output.
    #[arg(short = 'u')]
    uncompressed: bool,
    /// Accepted for dib compatibility: no tmpfs is ever mounted.
    #[arg(long)]
    no_tmpfs: bool,
    /// Accepted for dib compatibility: no tmpfs is ever mounted.
    #[arg(long, value_name = "GB")]
    min_tmpfs: Option<String>,
    /// Extra qemu-img `-o` options for the disk outputs (comma-separated).
    #[arg(long, value_name = "OPTS")]
    qemu_img_options: Option<String>,
    /// Write OUTPUT.md5 and OUTPUT.sha256 beside each output file.
    #[arg(long)]
    checksum: bool,
    /// Cache directory for elements (DIB_IMAGE_CACHE).
    #[arg(long, value_name = "DIR", env = "DIB_IMAGE_CACHE")]
    image_cache: Option<PathBuf>,
    /// Do not start from a cached base (debian-minimal): bootstrap again and replace the
    /// cache entry (as DIB_DEBOOTSTRAP_CACHE=0).
    #[arg(long)]
    no_cache: bool,
    /// Label of the root filesystem when the layout gives none.
    #[arg(long, value_name = "LABEL")]
    root_label: Option<String>,
    /// Boot each disk output in QEMU (SeaBIOS; OVMF too when the layout has an ESP) and wait
    /// for the marker on the serial console.
    #[arg(long)]
    boot_check: bool,
    /// The boot-check marker line (the busybox element prints the default).
    #[arg(long, value_name = "TEXT", default_value = "diskforge-image-booted")]
    boot_marker: String,
    /// Seconds each boot may take.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    boot_timeout: u64,
    /// Seconds each element script may run before it and its children are killed.
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    script_timeout: u64,
    /// Skip non-executable phase files silently, as dib does (default: refuse to build).
    #[arg(long)]
    allow_nonexec: bool,
    /// Keep the build directory and half-made image when the build fails.
    #[arg(long)]
    keep_on_error: bool,
    /// Where the build directory goes (default TMPDIR or /tmp).
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Resolve everything and print what would run; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Remove what killed builds left in the work dir (--work-dir, else TMPDIR): their
    /// dib_build.* directories whose lock is free and the partial outputs they name; live
    /// builds are left alone. Every build does this too. Builds nothing.
    #[arg(long, conflicts_with = "dry_run")]
    cleanup: bool,
    /// Print one JSON object (the report, or the dry run) on stdout.
    #[arg(long)]
    json: bool,
}

/// dib's `--image-size`: a bare number is GiB (dib multiplies it by 1024² KiB), fractions
/// allowed.
fn image_size(s: &str) -> Result<u64, Error> {
    let bad = |reason: String| Error::Usage {
        field: "--image-size".into(),
        value: s.into(),
        reason,
    };
    if let Ok(gb) = s.trim().parse::<f64>() {
        if !(gb.is_finite() && gb > 0.0 && gb < 1e6) {
            return Err(bad("must be a positive number of GiB below 10⁶".into()));
        }
        return Ok((gb * (1u64 << 30) as f64).round() as u64);
    }
    diskforge_size::parse_bytes(s).map_err(|e| bad(e.to_string()))
}

fn request(cli: &Cli) -> Result<BuildRequest, Error> {
    let mut req = BuildRequest::new(cli.elements.clone(), cli.output.clone());
    req.formats = diskforge_image::parse_formats(&cli.types.join(","))?;
    req.arch = cli.arch.clone();
    req.image_size = cli.image_size.as_deref().map(image_size).transpose()?;
    req.elements_path = std::env::var("ELEMENTS_PATH")
        .map(|p| {
            p.split(':')
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .collect()
        })
        .unwrap_or_default();
    req.block_device_config = std::env::var("DIB_BLOCK_DEVICE_CONFIG")
        .ok()
        .filter(|s| !s.trim().is_empty());
    req.output.compress = !cli.uncompressed;
    req.output.checksum = cli.checksum;
    req.output.qemu_img_options = cli
        .qemu_img_options
        .iter()
        .flat_map(|o| o.split(','))
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if let Ok(e) = std::env::var("SOURCE_DATE_EPOCH") {
        let epoch = e.trim().parse().map_err(|_| Error::Usage {
            field: "SOURCE_DATE_EPOCH".into(),
            value: e.clone(),
            reason: "not a number of seconds".into(),
        })?;
        req.source_date_epoch = Some(epoch);
        req.output.epoch = Some(epoch);
    }
    let env: BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| {
            k.starts_with("DIB_")
                || k == "FS_TYPE"
                || k == "http_proxy"
                || k == "https_proxy"
                || k == "no_proxy"
        })
        .collect();
    req.fs_type = env.get("FS_TYPE").cloned();
    req.env = env;
    // dib exports its own arguments to the scripts (the `manifests` element records them).
    req.env.insert(
        "DIB_ARGS".into(),
        std::env::args().skip(1).collect::<Vec<_>>().join(" "),
    );
    req.trace = cli.trace;
    req.allow_nonexec = cli.allow_nonexec;
    req.keep_on_error = cli.keep_on_error;
    req.work_dir = cli.work_dir.clone();
    req.image_cache = cli.image_cache.clone();
    if cli.no_cache {
        req.env.insert("DIB_DEBOOTSTRAP_CACHE".into(), "0".into());
    }
    req.root_label = cli.root_label.clone();
    req.script_timeout = Duration::from_secs(cli.script_timeout);
    if cli.boot_check {
        req.boot_check = Some(BootCheck {
            marker: cli.boot_marker.clone(),
            timeout: Duration::from_secs(cli.boot_timeout),
        });
    }
    Ok(req)
}

fn exit_code(e: &Error, cancelled: Option<i32>) -> i32 {
    if let Some(sig) = cancelled {
        return 128 + sig;
    }
    match e {
        Error::Usage { .. } => 2,
        e if e.is_invalid_input() => 3,
        Error::BootCheck { .. } => 4,
        _ => 1,
    }
}

fn human_bytes(n: u64) -> String {
    diskforge_size::Size::from_bytes(n).approx()
}

fn summary(r: &BuildReport) -> String {
    let mut s = String::new();
    s.push_str(&format!("elements: {}\n", r.elements.join(" ")));
    s.push_str("steps:\n");
    for t in &r.steps {
        s.push_str(&format!(
            "  {:<28} {:>8.2} s\n",
            t.step,
            t.millis as f64 / 1000.0
        ));
    }
    s.push_str("outputs:\n");
    for o in &r.outputs {
        s.push_str(&format!(
            "  {:<9} {:>10} ({} on disk)  {}\n",
            o.format.name(),
            human_bytes(o.bytes),
            human_bytes(o.allocated),
            o.path.display()
        ));
    }
    for b in &r.boots {
        s.push_str(&format!(
            "boot check: {} booted to the marker in {:.1} s ({})\n",
            b.firmware, b.seconds, b.accel
        ));
    }
    s.push_str(&format!("total: {:.2} s\n", r.total_millis as f64 / 1000.0));
    s
}

fn main() {
    diskforge_cli::dist_hook::<Cli>();
    diskforge_cmd::exit_quietly_on_broken_pipe();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    std::process::exit(run(&cli));
}

fn run(cli: &Cli) -> i32 {
    if cli.cleanup {
        let dir = cli.work_dir.clone().unwrap_or_else(std::env::temp_dir);
        return match diskforge_image::cleanup_stale(&dir) {
            Ok(gone) => {
                if cli.json {
                    println!("{}", serde_json::json!({ "removed": gone }));
                } else {
                    for g in &gone {
                        println!("removed {}", g.display());
                    }
                }
                0
            }
            Err(e) => {
                eprintln!("disk-image-create: {}", chain(&e));
                1
            }
        };
    }
    let mut req = match request(cli) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("disk-image-create: {}", chain(&e));
            return 2;
        }
    };
    if cli.dry_run {
        return match diskforge_image::dry_run(&req) {
            Ok(d) => {
                if cli.json {
                    println!("{}", serde_json::to_string_pretty(&d).unwrap_or_default());
                } else {
                    print!("{}", dry_run_text(&d));
                }
                0
            }
            Err(e) => {
                print_error(&e);
                exit_code(&e, None)
            }
        };
    }
    let cancel = Arc::new(AtomicBool::new(false));
    let term = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, cancel.clone()) {
            eprintln!("disk-image-create: installing a signal handler: {e}");
            return 1;
        }
    }
    let _ = signal_hook::flag::register(signal_hook::consts::SIGTERM, term.clone());
    req.cancel = Some(cancel.clone());

    let tty = std::io::stderr().is_terminal() && !cli.json;
    let bar = if tty {
        let b = indicatif::ProgressBar::new_spinner();
        b.enable_steady_tick(Duration::from_millis(120));
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let trace = cli.trace;
    let mut on_event = |ev: BuildEvent| match ev {
        BuildEvent::StepStart { step } => bar.set_message(step),
        BuildEvent::StepDone { step, millis } => {
            bar.println(format!("✓ {step} ({:.2} s)", millis as f64 / 1000.0));
        }
        BuildEvent::Script {
            element,
            phase,
            script,
        } => bar.set_message(format!("{phase}: {element}/{script}")),
        BuildEvent::ScriptDone {
            element,
            phase,
            script,
            millis,
        } => bar.println(format!(
            "  {phase}/{script} ({element}) {:.2} s",
            millis as f64 / 1000.0
        )),
        BuildEvent::Progress { step, message } => bar.set_message(format!("{step}: {message}")),
        BuildEvent::Output { line } => {
            if trace {
                bar.suspend(|| eprintln!("{line}"));
            }
        }
    };
    let res = diskforge_image::build(&req, &mut on_event);
    bar.finish_and_clear();
    match res {
        Ok(r) => {
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            } else {
                print!("{}", summary(&r));
            }
            0
        }
        Err(e) => {
            let sig = cancel.load(Ordering::SeqCst).then(|| {
                if term.load(Ordering::SeqCst) {
                    signal_hook::consts::SIGTERM
                } else {
                    signal_hook::consts::SIGINT
                }
            });
            print_error(&e);
            if sig.is_some() {
                eprintln!("disk-image-create: interrupted; no output was left half-written");
            }
            exit_code(&e, sig)
        }
    }
}

/// Print `e` on stderr: an invalid block-device config as one line per problem, each naming
/// the config, line, node, field and value; anything else as one line with its causes.
fn print_error(e: &Error) {
    if let Error::BlockDevice {
        source_name,
        source,
    } = e
        && let diskforge_blockdev::Error::Invalid(problems) = &**source
    {
        for p in &problems.0 {
            eprintln!("disk-image-create: block device ({source_name}): {p}");
        }
        return;
    }
    eprintln!("disk-image-create: {}", chain(e));
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

fn dry_run_text(d: &diskforge_image::DryRun) -> String {
    let mut s = String::new();
    s.push_str("elements (resolved):\n");
    for e in d.resolved.elements() {
        s.push_str(&format!("  {:<24} {}\n", e.name, e.path.display()));
    }
    s.push_str("scripts:\n");
    for (phase, list) in &d.scripts {
        if list.is_empty() {
            continue;
        }
        s.push_str(&format!("  {phase}\n"));
        for l in list {
            s.push_str(&format!("    {l}\n"));
        }
    }
    if let Some(b) = &d.block_device_source {
        s.push_str(&format!("block-device config: {b}\n"));
    }
    s.push_str("environment:\n");
    for (k, v) in &d.environment {
        s.push_str(&format!("  {k}={v}\n"));
    }
    s.push_str("outputs:\n");
    for o in &d.outputs {
        s.push_str(&format!("  {}\n", o.display()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_size_is_dib_gb_or_a_size() {
        assert_eq!(image_size("2").unwrap(), 2 << 30);
        assert_eq!(image_size("1.5").unwrap(), 3 << 29);
        assert_eq!(image_size("2GiB").unwrap(), 2 << 30);
        assert!(image_size("-1").is_err());
        assert!(image_size("lots").is_err());
    }

    #[test]
    fn formats_default_to_qcow2() {
        let cli = Cli::parse_from(["disk-image-create", "busybox"]);
        let r = request(&cli).unwrap();
        assert_eq!(r.formats, [OutputFormat::Qcow2]);
        assert!(r.output.compress);
        let cli = Cli::parse_from(["disk-image-create", "-t", "raw,tar", "-t", "oci", "-u", "x"]);
        let r = request(&cli).unwrap();
        assert_eq!(
            r.formats,
            [OutputFormat::Raw, OutputFormat::Tar, OutputFormat::Oci]
        );
        assert!(!r.output.compress);
    }
}
