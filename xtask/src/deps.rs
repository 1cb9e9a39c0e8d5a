//! `cargo xtask deps`: make sure every system tool the tools and tests use is installed.
//!
//! The packages are diskforge-cmd's one program → package table ([`PACKAGES`]), the same one
//! that names the package of a missing program in errors.
//!
//! One `dpkg-query` call checks all packages (well under a second when nothing is missing).
//! When something is missing it runs `apt-get update` once, then one `apt-get install`.
//!
//! The qemu trap: the machine image may ship a backported `qemu-utils` (10.x) while apt offers
//! `qemu-system-x86` 7.2, which conflicts with it; installing `qemu-system-x86` alone silently
//! removes `qemu-img`. So whenever a qemu package is missing, both are installed in the same
//! command with `qemu-utils` pinned to the version apt offers for `qemu-system-x86`
//! (`--allow-downgrades`).

use anyhow::{Context, Result, bail};
use diskforge_cmd::PACKAGES;
use xshell::{Shell, cmd};

use crate::flags::DepsArgs;

/// Package names from [`PACKAGES`] that dpkg does not report as installed.
pub fn missing(sh: &Shell) -> Result<Vec<&'static str>> {
    let names: Vec<&str> = PACKAGES.iter().map(|p| p.name).collect();
    // dpkg-query exits 1 when some package is unknown; its stdout still lists the known ones.
    let query = names.clone();
    let format = "-f=${Package}\t${Status}\n";
    let out = cmd!(sh, "dpkg-query -W {format} {query...}")
        .quiet()
        .ignore_status()
        .ignore_stderr()
        .read()
        .context("running dpkg-query")?;
    let installed: Vec<&str> = out
        .lines()
        .filter(|l| l.ends_with("install ok installed"))
        .filter_map(|l| l.split('\t').next())
        .map(|p| p.split(':').next().unwrap_or(p))
        .collect();
    Ok(names
        .into_iter()
        .filter(|n| !installed.contains(n))
        .collect())
}

/// Install whatever is missing (apt-get update once first). Used by `deps`, `ci` and `demo`.
pub fn ensure_installed(sh: &Shell) -> Result<()> {
    let missing = missing(sh)?;
    if missing.is_empty() {
        eprintln!("deps: all {} packages present", PACKAGES.len());
        return Ok(());
    }
    eprintln!("deps: missing {}", missing.join(" "));
    if !rustix::process::geteuid().is_root() {
        bail!("deps: need root to apt-get install: {}", missing.join(" "));
    }
    let _env = sh.push_env("DEBIAN_FRONTEND", "noninteractive");
    cmd!(sh, "apt-get update -q")
        .run()
        .context("apt-get update")?;
    let mut args: Vec<String> = missing.iter().map(|s| s.to_string()).collect();
    if missing.iter().any(|p| p.starts_with("qemu-")) {
        let policy = cmd!(sh, "apt-cache policy qemu-system-x86")
            .quiet()
            .read()?;
        let candidate = policy
            .lines()
            .find_map(|l| l.trim().strip_prefix("Candidate:"))
            .map(str::trim)
            .filter(|v| *v != "(none)")
            .context("apt offers no qemu-system-x86 candidate")?
            .to_owned();
        args.retain(|p| !p.starts_with("qemu-"));
        args.push("qemu-system-x86".into());
        args.push(format!("qemu-utils={candidate}"));
    }
    cmd!(
        sh,
        "apt-get install -y -q --no-install-recommends --allow-downgrades {args...}"
    )
    .run()
    .context("apt-get install")?;
    let still = self::missing(sh)?;
    if !still.is_empty() {
        bail!(
            "deps: still missing after apt-get install: {}",
            still.join(" ")
        );
    }
    for tool in ["qemu-img", "qemu-system-x86_64"] {
        cmd!(sh, "{tool} --version")
            .quiet()
            .ignore_stdout()
            .run()
            .with_context(|| format!("{tool} missing after install"))?;
    }
    Ok(())
}

/// Whether `cargo deny` runs (CI's `deny` step needs it).
fn has_cargo_deny(sh: &Shell) -> bool {
    cmd!(sh, "cargo deny --version")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run()
        .is_ok()
}

/// Install cargo-deny (`cargo install --locked cargo-deny`, a release build of a few hundred
/// crates) when `cargo deny` is missing.
///
/// cargo-deny's own release profile is LTO with one codegen unit; a licence check that runs in
/// half a second does not need it, so it is built with LTO off and 16 codegen units
/// (`CARGO_PROFILE_RELEASE_*`). Most of the ~3 minutes on 2 cores is compiling its ~300
/// dependencies either way (177 s vs 187 s measured), which is why CI builds it in the background
/// ([`cargo_deny_in_background`]).
pub fn ensure_cargo_deny(sh: &Shell) -> Result<()> {
    if has_cargo_deny(sh) {
        return Ok(());
    }
    eprintln!("deps: installing cargo-deny (cargo install --locked cargo-deny)");
    cmd!(sh, "cargo install --locked cargo-deny")
        .envs(DENY_BUILD_ENV)
        .run()
        .context("cargo install --locked cargo-deny")?;
    Ok(())
}

/// How [`ensure_cargo_deny`] builds it.
const DENY_BUILD_ENV: [(&str, &str); 2] = [
    ("CARGO_PROFILE_RELEASE_LTO", "false"),
    ("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "16"),
];

/// [`ensure_cargo_deny`] in the background at `nice 19`, its output in `log` (CI starts it
/// first, so that the compile uses the CPU apt-get, downloads and single-threaded QEMU leave
/// idle, and joins it in its `deny` step, after the tests).
/// The handle gives the log's tail in the error when the install failed.
pub fn cargo_deny_in_background(log: std::path::PathBuf) -> std::thread::JoinHandle<Result<()>> {
    std::thread::spawn(move || {
        let sh = Shell::new()?;
        if has_cargo_deny(&sh) {
            return Ok(());
        }
        let f =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        #[allow(clippy::disallowed_methods)] // xtask runs tools directly (see clippy.toml)
        // Niced: it should only take the CPU the foreground steps leave idle.
        let status = std::process::Command::new("nice")
            .args(["-n", "19", "cargo", "install", "--locked", "cargo-deny"])
            .envs(DENY_BUILD_ENV)
            .stdin(std::process::Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .status()
            .context("running cargo install --locked cargo-deny")?;
        if !status.success() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "cargo install --locked cargo-deny exited with {status} (log {}):\n{}",
                log.display(),
                tail.join("\n")
            );
        }
        Ok(())
    })
}

/// `cargo xtask deps [--check]`
pub fn run(sh: &Shell, args: &DepsArgs) -> Result<()> {
    if args.check {
        let m = missing(sh)?;
        let no_deny = !has_cargo_deny(sh);
        if m.is_empty() && !no_deny {
            println!("all {} packages present, and cargo-deny", PACKAGES.len());
            return Ok(());
        }
        for p in &m {
            let why = PACKAGES
                .iter()
                .find(|pkg| pkg.name == *p)
                .map(|pkg| pkg.why)
                .unwrap_or("");
            println!("missing {p:<20} {why}");
        }
        if no_deny {
            println!(
                "missing {:<20} ci step `deny` (cargo install)",
                "cargo-deny"
            );
        }
        bail!(
            "{} packages missing (run `cargo xtask deps`)",
            m.len() + usize::from(no_deny)
        );
    }
    ensure_installed(sh)?;
    ensure_cargo_deny(sh)
}
