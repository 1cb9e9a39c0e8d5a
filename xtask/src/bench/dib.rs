//! `cargo xtask bench build --vs-dib`: diskimage-builder 3.43 against our
//! `disk-image-create` on `debian-minimal`, in one run on this machine.
//!
//! - dib (installed from the Python registry into `<target>/dib-venv` when missing):
//!   `debian-minimal -t raw,qcow2`, a whole-disk image (dib's `vm` cannot partition without
//!   device-mapper).
//! - ours (the release binary, same flags): the same whole-disk `raw,qcow2`, and
//!   `debian-minimal vm -t qcow2` (partitioned, bootable).
//!
//! Each is built cold (a fresh `DIB_IMAGE_CACHE` and temp dir) and warm (a second build with
//! the first one's caches). dib's warm route is its own best one: the debootstrap tarball
//! (`DIB_DEBOOTSTRAP_CACHE=1` writes it in the cold build, `DIB_DEBIAN_USE_DEBOOTSTRAP_CACHE=1`
//! uses it) and its shared apt archive (`DIB_APT_LOCAL_CACHE`, on by default).
//!
//! Phases: ours from `--json` (`steps`), dib's from the timestamps of its own log, cut at the
//! lines dib prints when a hook directory starts (`Running hooks from …/X.d`,
//! `dib-run-parts Running …/X.d/…`), at the image-size calculation, at the block-device
//! creation, at `qemu-img convert` and at `Build completed successfully`.
//!
//! Every output timed is checked with independent tools: `qemu-img check` on each qcow2,
//! `qemu-img compare` of a whole-disk qcow2 with its raw twin, `e2fsck -fn` on the root
//! filesystem, and `/etc/debian_version` read back with `debugfs`.
//!
//! Targets (issue 16): ours cold ≤ 0.6 × dib's cold, ours warm ≤ 20 s, our qcow2 output
//! step ≤ 5 s; each printed as PASS or MISS (a miss does not fail the run; a failed build
//! or a failed check does, after the table, and keeps the work directory with every log).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use xshell::{Shell, cmd};

use crate::flags::BenchArgs;

/// The dib release compared against (the figures are for 3.43).
const DIB_VERSION: &str = "3.43";
/// The Debian release both tools build.
const RELEASE: &str = "bookworm";
/// Target: ours cold ≤ this × dib's cold.
const COLD_RATIO_TARGET: f64 = 0.6;
/// Target: ours warm ≤ this many seconds.
const WARM_TARGET_SECS: f64 = 20.0;
/// Target: our qcow2 output step ≤ this many seconds.
const QCOW2_TARGET_SECS: f64 = 5.0;

/// One build to time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// dib: `debian-minimal -t raw,qcow2`.
    DibWhole,
    /// ours: `debian-minimal -t raw,qcow2`.
    OursWhole,
    /// ours: `debian-minimal vm -t qcow2`.
    OursVm,
}

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::DibWhole => "dib  debian-minimal whole-disk raw+qcow2",
            Variant::OursWhole => "ours debian-minimal whole-disk raw+qcow2",
            Variant::OursVm => "ours debian-minimal vm qcow2 (partitioned)",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Variant::DibWhole => "dib-whole",
            Variant::OursWhole => "ours-whole",
            Variant::OursVm => "ours-vm",
        }
    }

    fn types(self) -> &'static str {
        match self {
            Variant::DibWhole | Variant::OursWhole => "raw,qcow2",
            Variant::OursVm => "qcow2",
        }
    }

    fn elements(self) -> &'static [&'static str] {
        match self {
            Variant::DibWhole | Variant::OursWhole => &["debian-minimal"],
            Variant::OursVm => &["debian-minimal", "vm"],
        }
    }
}

/// What one timed build gave.
#[derive(Debug, Clone, Default)]
struct Timed {
    /// Wall time of the whole process, seconds.
    wall: f64,
    /// Phases in order, seconds.
    phases: Vec<(String, f64)>,
    /// The qcow2 conversion, seconds (ours: the `qcow2` output step; dib: `qemu-img convert`).
    qcow2: Option<f64>,
    /// What the checks found (`debian_version` …), or why the build or a check failed.
    note: String,
    /// False when the build or a check failed.
    ok: bool,
}

/// The mirrors the host's own apt uses.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HostMirrors {
    /// The first non-security Debian mirror.
    mirror: String,
    /// The security mirror, when the host has one.
    security: Option<String>,
}

/// Run the comparison.
pub fn run(sh: &Shell, _args: &BenchArgs) -> Result<()> {
    let root = crate::project_root();
    sh.change_dir(&root);
    let mirrors = host_mirrors()?;
    ensure_host_tools(sh)?;
    let venv = crate::target_dir().join("dib-venv");
    let dib_version = ensure_dib(sh, &venv)?;
    cmd!(sh, "cargo build --release -q -p disk-image-create").run()?;
    let ours = crate::target_dir().join("release/disk-image-create");

    let base = std::env::var("DISKFORGE_SCRATCH").unwrap_or_else(|_| "/var/tmp".into());
    let work = tempfile::Builder::new()
        .prefix("diskforge-bench-vs-dib-")
        .tempdir_in(&base)?;
    let w = work.path().to_owned();
    eprintln!(
        "bench build --vs-dib: work dir {} (logs kept there on failure)",
        w.display()
    );

    let mut results: Vec<(Variant, Timed, Timed)> = Vec::new();
    for v in [Variant::DibWhole, Variant::OursWhole, Variant::OursVm] {
        let cache = w.join(format!("{}-cache", v.short()));
        fs::create_dir_all(&cache)?;
        let mut pair = Vec::new();
        for temp in ["cold", "warm"] {
            let tmp = w.join(format!("{}-{temp}-tmp", v.short()));
            fs::create_dir_all(&tmp)?;
            let out = w.join(format!("{}-{temp}", v.short()));
            let log = w.join(format!("{}-{temp}.log", v.short()));
            eprintln!("  building {} ({temp}) …", v.label());
            let mut t = match v {
                Variant::DibWhole => build_dib(&venv, &mirrors, &cache, &tmp, &out, &log, temp),
                _ => build_ours(&ours, v, &mirrors, &cache, &tmp, &out, &log),
            }
            .unwrap_or_else(|e| Timed {
                note: format!("build failed: {e:#} (log {})", log.display()),
                ..Timed::default()
            });
            if t.ok {
                match check_outputs(sh, v, &out, &w) {
                    Ok(note) => t.note = note,
                    Err(e) => {
                        t.ok = false;
                        t.note = format!("check failed: {e:#}");
                    }
                }
            }
            eprintln!("    {:.1} s: {}", t.wall, t.note);
            // Leave no image behind once it is checked (each is ~2 GB); the logs stay.
            for ext in ["raw", "qcow2"] {
                let _ = fs::remove_file(out.with_extension(ext));
            }
            let _ = fs::remove_dir_all(&tmp);
            pair.push(t);
        }
        let warm = pair.pop().unwrap_or_default();
        let cold = pair.pop().unwrap_or_default();
        results.push((v, cold, warm));
    }

    print_table(&dib_version, &mirrors, &results);
    let failed: Vec<String> = results
        .iter()
        .flat_map(|(v, c, w)| {
            [("cold", c), ("warm", w)]
                .into_iter()
                .filter(|(_, t)| !t.ok)
                .map(move |(temp, t)| format!("{} {temp}: {}", v.short(), t.note))
        })
        .collect();
    if !failed.is_empty() {
        let kept = work.keep();
        bail!(
            "{} build(s) or check(s) failed (logs kept in {}):\n  {}",
            failed.len(),
            kept.display(),
            failed.join("\n  ")
        );
    }
    Ok(())
}

/// `sudo` (dib calls it even as root), and what dib and the checks run on the host.
fn ensure_host_tools(sh: &Shell) -> Result<()> {
    // program → Debian package
    let need = [
        ("sudo", "sudo"),
        ("debootstrap", "debootstrap"),
        ("qemu-img", "qemu-utils"),
        ("e2fsck", "e2fsprogs"),
        ("debugfs", "e2fsprogs"),
        ("sfdisk", "fdisk"),
        ("python3", "python3-venv"),
    ];
    let mut missing: Vec<&str> = need
        .iter()
        .filter(|(prog, _)| {
            cmd!(sh, "which {prog}")
                .quiet()
                .ignore_stdout()
                .run()
                .is_err()
        })
        .map(|(_, pkg)| *pkg)
        .collect();
    missing.sort();
    missing.dedup();
    if !missing.is_empty() {
        eprintln!("installing for dib: {}", missing.join(" "));
        cmd!(sh, "apt-get install -y -q {missing...}")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .run()
            .context("apt-get install (run `apt-get update` first if the lists are stale)")?;
    }
    Ok(())
}

/// diskimage-builder 3.43.x in a venv under the target dir; installed only when missing.
/// Returns the exact version.
fn ensure_dib(sh: &Shell, venv: &Path) -> Result<String> {
    let pip = venv.join("bin/pip");
    let installed = |sh: &Shell| -> Option<String> {
        let out = cmd!(sh, "{pip} show diskimage-builder")
            .quiet()
            .ignore_stderr()
            .read()
            .ok()?;
        out.lines()
            .find_map(|l| l.strip_prefix("Version:"))
            .map(|v| v.trim().to_owned())
    };
    if let Some(v) = installed(sh).filter(|v| is_wanted_version(v)) {
        return Ok(v);
    }
    if !pip.exists() {
        cmd!(sh, "python3 -m venv {venv}").run()?;
    }
    // The newest 3.43.x the registry has (pip picks it from the specifier).
    let spec = format!("diskimage-builder=={DIB_VERSION}.*");
    cmd!(sh, "{pip} install -q {spec}").run()?;
    let v = installed(sh).context("diskimage-builder not installed after pip install")?;
    ensure!(is_wanted_version(&v), "pip installed diskimage-builder {v}");
    Ok(v)
}

fn is_wanted_version(v: &str) -> bool {
    v == DIB_VERSION || v.starts_with(&format!("{DIB_VERSION}."))
}

/// The Debian mirror and security mirror of the host's apt sources (deb822 `.sources` files in
/// /etc/apt/sources.list.d, then one-line `.list` files and /etc/apt/sources.list).
fn host_mirrors() -> Result<HostMirrors> {
    let mut files: Vec<PathBuf> = fs::read_dir("/etc/apt/sources.list.d")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    files.push("/etc/apt/sources.list".into());
    let mut entries = Vec::new();
    for f in files {
        let Ok(text) = fs::read_to_string(&f) else {
            continue;
        };
        let e = if f.extension().is_some_and(|x| x == "sources") {
            deb822_entries(&text)
        } else {
            list_entries(&text)
        };
        entries.extend(e);
    }
    mirrors_of(&entries).context("the host's apt sources name no Debian mirror")
}

/// `(uri, suite)` pairs of the `deb` stanzas of a deb822 text.
fn deb822_entries(text: &str) -> Vec<(String, String)> {
    let mut v = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.trim().strip_prefix(name))
                .map(|v| v.trim().to_owned())
        };
        let (Some(types), Some(uris), Some(suites)) =
            (field("Types:"), field("URIs:"), field("Suites:"))
        else {
            continue;
        };
        if !types.split_whitespace().any(|t| t == "deb") {
            continue;
        }
        for uri in uris.split_whitespace() {
            for suite in suites.split_whitespace() {
                v.push((uri.to_owned(), suite.to_owned()));
            }
        }
    }
    v
}

/// `(uri, suite)` pairs of the `deb` lines of a one-line sources.list.
fn list_entries(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace().filter(|w| !w.starts_with('['));
            (w.next()? == "deb").then_some(())?;
            Some((w.next()?.to_owned(), w.next()?.to_owned()))
        })
        .collect()
}

/// The first Debian mirror (a suite of [`RELEASE`] or `-updates`) and the first security one.
fn mirrors_of(entries: &[(String, String)]) -> Option<HostMirrors> {
    let is_debian = |suite: &str| suite == RELEASE || suite.starts_with(&format!("{RELEASE}-"));
    let mirror = entries
        .iter()
        .find(|(_, s)| is_debian(s) && !s.ends_with("-security"))?
        .0
        .clone();
    let security = entries
        .iter()
        .find(|(_, s)| is_debian(s) && s.ends_with("-security"))
        .map(|(u, _)| u.clone());
    Some(HostMirrors { mirror, security })
}

/// The environment both tools get.
fn common_env(mirrors: &HostMirrors, cache: &Path, tmp: &Path) -> Vec<(String, String)> {
    let mut env = vec![
        ("DIB_RELEASE".to_owned(), RELEASE.to_owned()),
        ("DIB_DISTRIBUTION_MIRROR".into(), mirrors.mirror.clone()),
        ("DIB_IMAGE_CACHE".into(), cache.display().to_string()),
        ("TMPDIR".into(), tmp.display().to_string()),
    ];
    if let Some(s) = &mirrors.security {
        env.push(("DIB_DEBIAN_SECURITY_MIRROR".into(), s.clone()));
    }
    env
}

/// One dib build, its log in `log`.
fn build_dib(
    venv: &Path,
    mirrors: &HostMirrors,
    cache: &Path,
    tmp: &Path,
    out: &Path,
    log: &Path,
    temp: &str,
) -> Result<Timed> {
    let path = format!(
        "{}:{}",
        venv.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut env = common_env(mirrors, cache, tmp);
    env.push(("PATH".into(), path));
    // Its log's timestamps are local time: make them UTC to line them up with our clock.
    env.push(("TZ".into(), "UTC".into()));
    env.push(("DIB_DEBOOTSTRAP_CACHE".into(), "1".into()));
    if temp == "warm" {
        env.push(("DIB_DEBIAN_USE_DEBOOTSTRAP_CACHE".into(), "1".into()));
    }
    let f = fs::File::create(log)?;
    #[allow(clippy::disallowed_methods)] // xtask runs tools directly (see clippy.toml)
    let mut c = std::process::Command::new(venv.join("bin/disk-image-create"));
    c.arg("-o")
        .arg(out)
        .args(["-t", Variant::DibWhole.types()])
        .args(Variant::DibWhole.elements())
        .envs(env)
        .stdin(Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f);
    let start = utc_seconds_of_day();
    let t = Instant::now();
    let status = c.status().context("running dib's disk-image-create")?;
    let wall = t.elapsed().as_secs_f64();
    let text = fs::read_to_string(log).unwrap_or_default();
    ensure!(
        status.success(),
        "dib exited with {status}; last lines:\n{}",
        tail(&text, 8)
    );
    let phases = dib_phases(&text, start, wall);
    let qcow2 = phases
        .iter()
        .find(|(p, _)| p.starts_with("qemu-img convert"))
        .map(|(_, s)| *s);
    Ok(Timed {
        wall,
        phases,
        qcow2,
        note: String::new(),
        ok: true,
    })
}

/// One build of ours, `--json` on stdout, progress in `log`.
fn build_ours(
    ours: &Path,
    v: Variant,
    mirrors: &HostMirrors,
    cache: &Path,
    tmp: &Path,
    out: &Path,
    log: &Path,
) -> Result<Timed> {
    let f = fs::File::create(log)?;
    #[allow(clippy::disallowed_methods)] // xtask runs tools directly (see clippy.toml)
    let mut c = std::process::Command::new(ours);
    c.arg("-o")
        .arg(out)
        .args(["-t", v.types(), "--json"])
        .args(v.elements())
        .envs(common_env(mirrors, cache, tmp))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(f);
    let t = Instant::now();
    let o = c.output().context("running our disk-image-create")?;
    let wall = t.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&o.stdout);
    fs::write(log.with_extension("json"), stdout.as_bytes())?;
    if !o.status.success() {
        let text = fs::read_to_string(log).unwrap_or_default();
        bail!("exited with {}; last lines:\n{}", o.status, tail(&text, 8));
    }
    let json: Value = serde_json::from_str(&stdout).context("parsing --json")?;
    let phases: Vec<(String, f64)> = json["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            (
                s["step"].as_str().unwrap_or("?").to_owned(),
                s["millis"].as_f64().unwrap_or(0.0) / 1000.0,
            )
        })
        .collect();
    let qcow2 = phases
        .iter()
        .filter(|(p, _)| p.contains("qcow2"))
        .map(|(_, s)| *s)
        .reduce(f64::max);
    Ok(Timed {
        wall,
        phases,
        qcow2,
        note: String::new(),
        ok: true,
    })
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Check what a build wrote; returns a one-line summary.
fn check_outputs(sh: &Shell, v: Variant, out: &Path, work: &Path) -> Result<String> {
    let qcow2 = out.with_extension("qcow2");
    cmd!(sh, "qemu-img check -q {qcow2}")
        .quiet()
        .run()
        .with_context(|| format!("qemu-img check {}", qcow2.display()))?;
    let (fs_image, scratch) = match v {
        Variant::DibWhole | Variant::OursWhole => {
            let raw = out.with_extension("raw");
            // The qcow2 must hold the same disk as the raw image.
            cmd!(sh, "qemu-img compare -q -f raw -F qcow2 {raw} {qcow2}")
                .quiet()
                .run()
                .with_context(|| format!("{} and {} differ", raw.display(), qcow2.display()))?;
            (raw, None)
        }
        Variant::OursVm => {
            let root = root_partition(sh, &qcow2, work)?;
            (root.clone(), Some(root))
        }
    };
    let r = check_root_fs(sh, &fs_image);
    if let Some(s) = scratch {
        let _ = fs::remove_file(s);
    }
    let version = r?;
    Ok(match v {
        Variant::OursVm => {
            format!("ok: qemu-img check, root partition e2fsck -fn clean, debian_version {version}")
        }
        _ => format!(
            "ok: qemu-img check, qcow2 = raw (qemu-img compare), e2fsck -fn clean, \
             debian_version {version}"
        ),
    })
}

/// `e2fsck -fn` clean and `/etc/debian_version` present; returns its contents.
fn check_root_fs(sh: &Shell, image: &Path) -> Result<String> {
    cmd!(sh, "e2fsck -fn {image}")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run()
        .with_context(|| format!("e2fsck -fn {} found problems", image.display()))?;
    let version = cmd!(sh, "debugfs -R 'cat /etc/debian_version' {image}")
        .quiet()
        .ignore_stderr()
        .read()?;
    let version = version.trim().to_owned();
    ensure!(
        version.chars().next().is_some_and(|c| c.is_ascii_digit()),
        "/etc/debian_version missing or odd in {}: {version:?}",
        image.display()
    );
    Ok(version)
}

/// The largest partition of a partitioned qcow2, extracted into a sparse file in `work`.
fn root_partition(sh: &Shell, qcow2: &Path, work: &Path) -> Result<PathBuf> {
    let raw = work.join("vm-check.raw");
    let part = work.join("vm-check-root.img");
    cmd!(sh, "qemu-img convert -f qcow2 -O raw {qcow2} {raw}")
        .quiet()
        .run()?;
    let table = cmd!(sh, "sfdisk -J {raw}").quiet().read();
    let r = (|| -> Result<PathBuf> {
        let json: Value = serde_json::from_str(&table?).context("parsing sfdisk -J")?;
        let sector = json["partitiontable"]["sectorsize"].as_u64().unwrap_or(512);
        let (start, size) = json["partitiontable"]["partitions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p["start"].as_u64()?, p["size"].as_u64()?)))
            .max_by_key(|&(_, size)| size)
            .context("no partitions in the vm image")?;
        let skip = format!("skip={}", start * sector);
        let count = format!("count={}", size * sector);
        let of = format!("of={}", part.display());
        let iff = format!("if={}", raw.display());
        cmd!(
            sh,
            "dd {iff} {of} bs=4M {skip} {count} iflag=skip_bytes,count_bytes conv=sparse status=none"
        )
        .quiet()
        .run()?;
        Ok(part.clone())
    })();
    let _ = fs::remove_file(&raw);
    r
}

/// dib's phases from the timestamps of its log (`YYYY-MM-DD HH:MM:SS.mmm | text`, UTC since
/// dib runs with `TZ=UTC`): a phase starts at each marker line and ends at the next. `start`
/// is when the process was started (UTC seconds of the day), `wall` how long it ran; the time
/// before the first log line is `start-up`, the time after `Build completed successfully`
/// until the process ended is `exit`.
fn dib_phases(log: &str, start: f64, wall: f64) -> Vec<(String, f64)> {
    let mut marks: Vec<(String, f64)> =
        vec![("start-up (python, before the first log line)".into(), start)];
    let mut after_size = false;
    let mut first = true;
    for line in log.lines() {
        let Some((t, text)) = stamp(line) else {
            continue;
        };
        // A log line past midnight.
        let t = if t + 43_200.0 < start {
            t + 86_400.0
        } else {
            t
        };
        if first {
            first = false;
            marks.push(("setup (elements, block-device config)".into(), t));
        }
        let current = marks.last().map(|(p, _)| p.as_str()).unwrap_or("");
        let name = if let Some(rest) = text.strip_prefix("Running hooks from ") {
            hook_dir(rest.trim())
        } else if let Some(rest) = text.strip_prefix("dib-run-parts Running ") {
            Path::new(rest.trim())
                .parent()
                .and_then(|p| hook_dir(&p.display().to_string()))
        } else if text.starts_with("Calculating image size") {
            after_size = true;
            Some("image size (du)".into())
        } else if after_size && text.contains("diskimage_builder.block_device") {
            after_size = false;
            Some("block-device (image file, mkfs, mount) + copy in".into())
        } else if text.starts_with("Converting image using qemu-img convert") {
            Some("qemu-img convert (qcow2)".into())
        } else if text.starts_with("Build completed successfully") {
            Some("exit".into())
        } else {
            None
        };
        if let Some(n) = name.filter(|n| n != current) {
            marks.push((n, t));
        }
    }
    let end = start + wall;
    let mut v: Vec<(String, f64)> = Vec::new();
    for (i, (name, t)) in marks.iter().enumerate() {
        let next = marks.get(i + 1).map(|(_, t)| *t).unwrap_or(end);
        let secs = (next.min(end) - t.clamp(start, end)).max(0.0);
        match v.iter_mut().find(|(n, _)| n == name) {
            Some((_, s)) => *s += secs,
            None => v.push((name.clone(), secs)),
        }
    }
    v
}

/// UTC seconds of the day now.
fn utc_seconds_of_day() -> f64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    now % 86_400.0
}

/// `X.d` of a hook directory path `…/hooks/X.d` or `/tmp/in_target.d/X.d` (in the chroot).
fn hook_dir(path: &str) -> Option<String> {
    let p = Path::new(path);
    let name = p.file_name()?.to_str()?;
    if !name.ends_with(".d") || name == "in_target.d" {
        return None;
    }
    let in_target = p
        .parent()
        .and_then(|q| q.file_name())
        .is_some_and(|q| q == "in_target.d");
    Some(if in_target {
        format!("{name} (in chroot)")
    } else {
        name.to_owned()
    })
}

/// Seconds of the day and the text of a `YYYY-MM-DD HH:MM:SS.mmm | text` line.
fn stamp(line: &str) -> Option<(f64, &str)> {
    let (head, text) = line.split_once(" | ")?;
    let (_date, time) = head.trim().split_once(' ')?;
    let mut it = time.split(':');
    let h: f64 = it.next()?.parse().ok()?;
    let m: f64 = it.next()?.parse().ok()?;
    let s: f64 = it.next()?.parse().ok()?;
    Some((h * 3600.0 + m * 60.0 + s, text))
}

fn fmt_secs(t: &Timed, f: impl Fn(&Timed) -> Option<f64>) -> String {
    if !t.ok {
        return "failed".into();
    }
    f(t).map(|s| format!("{s:.1}"))
        .unwrap_or_else(|| "-".into())
}

fn print_table(dib_version: &str, mirrors: &HostMirrors, results: &[(Variant, Timed, Timed)]) {
    println!(
        "bench build --vs-dib: debian-minimal {RELEASE} from {} (security: {}), \
         diskimage-builder {dib_version} vs ours, on this machine",
        mirrors.mirror,
        mirrors.security.as_deref().unwrap_or("dib's default")
    );
    println!(
        "  cold: fresh DIB_IMAGE_CACHE and TMPDIR; warm: the second build with the first's \
         caches."
    );
    println!(
        "  dib's warm route: the debootstrap tarball (DIB_DEBOOTSTRAP_CACHE=1 when cold, \
         DIB_DEBIAN_USE_DEBOOTSTRAP_CACHE=1 when warm) + its shared apt archive \
         (DIB_APT_LOCAL_CACHE=1, the default)."
    );
    println!();
    println!(
        "  {:<58} {:>8} {:>8}",
        "TOTAL (wall, whole process)", "cold s", "warm s"
    );
    for (v, c, w) in results {
        println!(
            "  {:<58} {:>8} {:>8}",
            v.label(),
            fmt_secs(c, |t| Some(t.wall)),
            fmt_secs(w, |t| Some(t.wall))
        );
    }
    for (v, c, w) in results {
        println!();
        println!(
            "  {:<58} {:>8} {:>8}",
            format!("{} — per phase", v.label()),
            "cold s",
            "warm s"
        );
        let mut names: Vec<&str> = c.phases.iter().map(|(n, _)| n.as_str()).collect();
        for (n, _) in &w.phases {
            if !names.contains(&n.as_str()) {
                names.push(n);
            }
        }
        let get = |t: &Timed, n: &str| {
            t.phases
                .iter()
                .find(|(p, _)| p == n)
                .map(|(_, s)| format!("{s:.1}"))
                .unwrap_or_else(|| "-".into())
        };
        for n in names {
            println!("    {:<56} {:>8} {:>8}", n, get(c, n), get(w, n));
        }
        for (temp, t) in [("cold", c), ("warm", w)] {
            println!("    {temp}: {}", t.note);
        }
    }
    println!();
    println!("  targets (issue 16)");
    let dib_cold = results
        .iter()
        .find(|(v, c, _)| *v == Variant::DibWhole && c.ok)
        .map(|(_, c, _)| c.wall);
    let verdict = |ok: bool| if ok { "PASS" } else { "MISS" };
    // One target's line: the figure and its verdict, or n/a (a MISS) when nothing was measured.
    let target = |label: String, got: Option<(String, bool)>, why: &str| match got {
        Some((figure, ok)) => println!("    {label:<58} {figure} {}", verdict(ok)),
        None => println!("    {label:<58} n/a{why}  MISS"),
    };
    for (v, c, w) in results.iter().filter(|(v, ..)| *v != Variant::DibWhole) {
        target(
            format!("{} cold / dib cold", v.short()),
            dib_cold.filter(|_| c.ok).map(|d| {
                let r = c.wall / d;
                (
                    format!("{r:>5.2}× dib whole-disk cold  (≤ {COLD_RATIO_TARGET}×)"),
                    r <= COLD_RATIO_TARGET,
                )
            }),
            " (a build failed)",
        );
        target(
            format!("{} warm", v.short()),
            w.ok.then(|| {
                (
                    format!("{:>5.1} s  (≤ {WARM_TARGET_SECS} s)", w.wall),
                    w.wall <= WARM_TARGET_SECS,
                )
            }),
            " (failed)",
        );
        for (temp, t) in [("cold", c), ("warm", w)] {
            target(
                format!("{} {temp} qcow2 conversion", v.short()),
                t.qcow2.filter(|_| t.ok).map(|q| {
                    (
                        format!("{q:>5.1} s  (≤ {QCOW2_TARGET_SECS} s)"),
                        q <= QCOW2_TARGET_SECS,
                    )
                }),
                "",
            );
        }
    }
    if let Some((_, c, w)) = results.iter().find(|(v, ..)| *v == Variant::DibWhole) {
        println!(
            "    {:<58} cold {} s, warm {} s  (for comparison)",
            "dib qemu-img convert (qcow2)",
            fmt_secs(c, |t| t.qcow2),
            fmt_secs(w, |t| t.qcow2)
        );
    }
    let ours_whole = results.iter().find(|(v, ..)| *v == Variant::OursWhole);
    let dib = results.iter().find(|(v, ..)| *v == Variant::DibWhole);
    if let (Some((_, oc, ow)), Some((_, dc, dw))) = (ours_whole, dib)
        && oc.ok
        && ow.ok
        && dc.ok
        && dw.ok
    {
        println!(
            "    ratios ours/dib, whole-disk raw+qcow2: cold {:.2}×, warm {:.2}×",
            oc.wall / dc.wall,
            ow.wall / dw.wall
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_from_deb822_and_list() {
        let deb822 = "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm \
                      bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: \
                      http://deb.debian.org/debian-security\nSuites: bookworm-security\n\
                      Components: main\n";
        let mut e = deb822_entries(deb822);
        e.extend(list_entries(
            "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n",
        ));
        assert_eq!(
            mirrors_of(&e),
            Some(HostMirrors {
                mirror: "http://deb.debian.org/debian".into(),
                security: Some("http://deb.debian.org/debian-security".into()),
            })
        );
        // A third-party repository alone is no Debian mirror.
        let only = list_entries("deb [arch=amd64] https://example.invalid/apt nodistro main\n");
        assert_eq!(mirrors_of(&only), None);
        let plain = list_entries("deb http://mirror.invalid/debian bookworm main contrib\n");
        assert_eq!(
            mirrors_of(&plain),
            Some(HostMirrors {
                mirror: "http://mirror.invalid/debian".into(),
                security: None
            })
        );
    }

    #[test]
    fn dib_log_phases() {
        let log = "\
2026-12-02 15:46:44.287 | diskimage-builder version 3.43.0
2026-12-02 15:46:52.892 | Running hooks from /var/tmp/x/dib_build.c/hooks/root.d
2026-12-02 15:46:53.067 | dib-run-parts Running /var/tmp/x/dib_build.c/hooks/root.d/08-debootstrap
2026-12-02 15:47:53.067 | dib-run-parts Running /tmp/in_target.d/install.d/01-x
2026-12-02 15:48:03.000 | dib-run-parts Running /tmp/in_target.d/install.d/02-y
2026-12-02 15:48:13.000 | Calculating image size (this may take a minute)...
2026-12-02 15:48:15.000 | INFO diskimage_builder.block_device.blockdevice [-] create
2026-12-02 15:48:25.000 | Running hooks from /var/tmp/x/dib_build.c/hooks/cleanup.d
2026-12-02 15:48:26.000 | Converting image using qemu-img convert
2026-12-02 15:48:56.000 | Build completed successfully
";
        // Started 2 s before its first line, ran 134 s.
        let p = dib_phases(log, 15.0 * 3600.0 + 46.0 * 60.0 + 42.287, 134.0);
        let names: Vec<&str> = p.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "start-up (python, before the first log line)",
                "setup (elements, block-device config)",
                "root.d",
                "install.d (in chroot)",
                "image size (du)",
                "block-device (image file, mkfs, mount) + copy in",
                "cleanup.d",
                "qemu-img convert (qcow2)",
                "exit",
            ]
        );
        let get = |n: &str| p.iter().find(|(x, _)| x == n).map(|(_, s)| *s).unwrap();
        assert!((get("root.d") - 60.175).abs() < 1e-6);
        assert!((get("install.d (in chroot)") - 19.933).abs() < 1e-6);
        assert!((get("qemu-img convert (qcow2)") - 30.0).abs() < 1e-6);
        // From the first line to the end of the process: 134 s; the phases sum to it.
        let sum: f64 = p.iter().map(|(_, s)| s).sum();
        assert!((sum - 134.0).abs() < 1e-6, "{sum}");
        assert!((get("start-up (python, before the first log line)") - 2.0).abs() < 1e-6);
        assert!((get("exit") - (134.0 - 133.713)).abs() < 1e-6);
    }

    #[test]
    fn dib_log_midnight_and_noise() {
        let log = "no stamp here\n\
2026-12-02 23:59:59.000 | Running hooks from /b/hooks/root.d\n\
2026-12-03 00:00:09.000 | Build completed successfully\n";
        let p = dib_phases(log, 86_399.0 - 10.0, 22.0);
        let root = p.iter().find(|(n, _)| n == "root.d").unwrap().1;
        assert!((root - 10.0).abs() < 1e-6, "{root}");
        assert_eq!(hook_dir("/tmp/in_target.d"), None);
        assert_eq!(
            hook_dir("/x/hooks/extra-data.d").as_deref(),
            Some("extra-data.d")
        );
    }
}
