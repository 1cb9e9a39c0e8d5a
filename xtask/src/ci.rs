//! `cargo xtask ci`: everything CI runs, in order, stopping at the first failure:
//! deps, `cargo fmt --check`, `cargo clippy --workspace --all-targets -D warnings`,
//! `cargo test --workspace`, then `vm-test` and `hardening --quick` (as root: every tool
//! through injected faults, signals, SIGKILL, parallel runs and the hostile-input corpus; its
//! table is printed) side by side — the VM is one TCG vCPU, so the second core would idle;
//! vm-test runs as a child process whose output is printed whole when it ends. Each step's
//! time is printed at the end.
//!
//! Root tests carry `#[ignore = "needs root"]` (see diskforge-testutil's "Root tests"): as
//! root, the test step adds `-- --include-ignored` so they all run. Its stdout is read back
//! ([`Tally::parse`] sums libtest's `test result:` lines); with `CI=true` the step fails when
//! any test was ignored or filtered out, so a test that did not run cannot pass CI.
//!
//! Publishing hygiene: `package` (every publishable crate packages, offline) and `doc`
//! (rustdoc with warnings denied) after fmt, `deny` (`cargo deny --offline check licenses
//! bans`, deny.toml) after test. On a fresh machine cargo-deny is missing: its install (a release build,
//! LTO off, at `nice 19` so that it only takes CPU the other steps leave idle) starts in the
//! background before `deps`, and `deny` runs after `test`, joining it.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use xshell::{Shell, cmd};

use crate::flags::{CiArgs, VmTestArgs};

/// Run CI.
pub fn run(sh: &Shell, args: &CiArgs) -> Result<()> {
    let mut times = Vec::new();
    let mut step = |name: &str, f: &mut dyn FnMut() -> Result<()>| -> Result<()> {
        eprintln!("==> {name}");
        let t = Instant::now();
        let r = f().with_context(|| format!("ci step `{name}` failed"));
        times.push((name.to_owned(), t.elapsed()));
        r
    };
    // cargo-deny (when missing) compiles in the background, niced; joined by `deny`.
    let target = crate::target_dir();
    std::fs::create_dir_all(&target)?;
    let mut deny_install = Some(crate::deps::cargo_deny_in_background(
        target.join("ci-cargo-deny-install.log"),
    ));
    step("deps", &mut || crate::deps::ensure_installed(sh))?;
    step(
        "fmt",
        &mut || Ok(cmd!(sh, "cargo fmt --all --check").run()?),
    )?;
    step("package", &mut || package(sh))?;
    step("doc", &mut || doc(sh))?;
    step("clippy", &mut || {
        Ok(cmd!(
            sh,
            "cargo clippy --workspace --all-targets --locked -- -D warnings"
        )
        .run()?)
    })?;
    step("test", &mut || {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        test_step(rustix::process::geteuid().is_root(), ci)
    })?;
    // After the test step: the cargo-deny build (niced) has used the idle CPU of the steps
    // before it (apt-get, QEMU's single TCG thread, downloads) rather than delaying them.
    step("deny", &mut || {
        if let Some(h) = deny_install.take() {
            h.join()
                .map_err(|_| anyhow::anyhow!("the cargo-deny install thread panicked"))??;
        }
        deny(sh)
    })?;
    let root = rustix::process::geteuid().is_root();
    let h = crate::flags::HardeningArgs {
        quick: true,
        only: None,
        seed: None,
        json: false,
    };
    match (!args.no_vm, root) {
        // Side by side: the VM is one TCG vCPU, the hardening runs mostly use the other core,
        // and neither touches what the other watches (the VM's files stay under target/vm;
        // the hardening harness snapshots mounts, loops and /tmp, /var/tmp names).
        (true, true) => {
            eprintln!("==> vm-test + hardening (side by side; vm-test's output follows)");
            let both = Instant::now();
            let (vm, hardening) = std::thread::scope(|s| {
                let vm = s.spawn(vm_test_child);
                let t = Instant::now();
                let r = crate::hardening::run(sh, &h);
                let hardening = (r, t.elapsed());
                let vm = vm.join().unwrap_or_else(|_| {
                    (
                        Err(anyhow::anyhow!("vm-test thread panicked")),
                        both.elapsed(),
                    )
                });
                (vm, hardening)
            });
            times.push(("vm-test".into(), vm.1));
            times.push(("hardening".into(), hardening.1));
            times.push(("vm+hard".into(), both.elapsed()));
            match (vm.0, hardening.0) {
                (Ok(()), Ok(())) => {}
                (Err(e), Ok(())) => return Err(e.context("ci step `vm-test` failed")),
                (Ok(()), Err(e)) => return Err(e.context("ci step `hardening` failed")),
                (Err(v), Err(h)) => bail!(
                    "ci steps `vm-test` and `hardening` failed:\nvm-test: {v:#}\nhardening: {h:#}"
                ),
            }
        }
        (true, false) => {
            let vm = vm_args();
            step("vm-test", &mut || crate::vm::run(sh, &vm))?;
        }
        (false, true) => step("hardening", &mut || crate::hardening::run(sh, &h))?,
        (false, false) => {}
    }
    for (n, t) in &times {
        eprintln!("ci: {n:<8} {:>7.1} s", t.as_secs_f64());
    }
    Ok(())
}

/// How CI runs the VM tests.
fn vm_args() -> VmTestArgs {
    VmTestArgs {
        filter: None,
        timeout: 1200,
        keep_going: true,
        shell: false,
        release: false,
        memory: 4096,
    }
}

/// `cargo xtask vm-test` as a child process (this xtask binary), its output kept in
/// `target/vm/ci-vm-test.log` and printed whole once it ends, so that it does not interleave
/// with the hardening run beside it. Returns its result and how long it took.
#[allow(clippy::disallowed_methods)] // xtask runs processes directly by design
fn vm_test_child() -> (Result<()>, std::time::Duration) {
    let t = Instant::now();
    let run = || -> Result<()> {
        let a = vm_args();
        let dir = crate::target_dir().join("vm");
        std::fs::create_dir_all(&dir)?;
        let log_path = dir.join("ci-vm-test.log");
        let log = std::fs::File::create(&log_path)?;
        let exe = std::env::current_exe().context("finding the xtask binary")?;
        let mut c = std::process::Command::new(exe);
        c.arg("vm-test");
        if a.keep_going {
            c.arg("--keep-going");
        }
        let status = c
            .arg("--timeout")
            .arg(a.timeout.to_string())
            .arg("--memory")
            .arg(a.memory.to_string())
            .current_dir(crate::project_root())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()
            .context("running xtask vm-test")?;
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        eprintln!("==> vm-test (its output)\n{text}");
        if !status.success() {
            bail!(
                "vm-test failed ({status}); its output is above and in {}",
                log_path.display()
            );
        }
        Ok(())
    };
    (run(), t.elapsed())
}

/// `cargo test --workspace` (with `--include-ignored` as root), its stdout passed through and
/// tallied; an error when it fails, or when `ci` and any test did not run.
#[allow(clippy::disallowed_methods)] // xtask runs processes directly by design
fn test_step(root: bool, ci: bool) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut c = std::process::Command::new(cargo);
    c.args(["test", "--workspace", "--locked"]);
    if root {
        c.args(["--", "--include-ignored"]);
    }
    let mut child = c
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    let mut stdout = String::new();
    if let Some(out) = child.stdout.take() {
        let mut r = BufReader::new(out);
        let mut line = Vec::new();
        while r
            .read_until(b'\n', &mut line)
            .context("reading cargo test's output")?
            > 0
        {
            let text = String::from_utf8_lossy(&line);
            print!("{text}");
            stdout.push_str(&text);
            line.clear();
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    let tally = Tally::parse(&stdout);
    eprintln!("ci: {tally}");
    if let Some(warning) = verdict(&tally, root, ci)? {
        eprintln!("ci: warning: {warning}");
    }
    Ok(())
}

/// Whether the tests' tally passes: an error when no summary was found, or when `ci` and any
/// test was ignored or filtered out; otherwise a warning naming what did not run, if any.
fn verdict(tally: &Tally, root: bool, ci: bool) -> Result<Option<String>> {
    if tally.binaries == 0 {
        bail!("found no `test result:` line in cargo test's output; cannot tell what ran");
    }
    if tally.ignored + tally.filtered_out == 0 {
        return Ok(None);
    }
    let names = if tally.ignored_names.is_empty() {
        String::new()
    } else {
        format!(": {}", tally.ignored_names.join(", "))
    };
    let how = if root {
        ""
    } else {
        " (root tests run only as root)"
    };
    let msg = format!(
        "not every test ran: {} ignored and {} filtered out{how}{names}",
        tally.ignored, tally.filtered_out
    );
    if ci {
        bail!("CI=true and {msg}");
    }
    Ok(Some(msg))
}

/// What libtest's summaries say, summed over every test binary (unit, integration, doc).
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    /// `test result:` lines seen (one per test binary).
    binaries: u64,
    passed: u64,
    failed: u64,
    ignored: u64,
    filtered_out: u64,
    /// Names from `test NAME ... ignored[, reason]` lines.
    ignored_names: Vec<String>,
}

impl Tally {
    /// Sum the counts in every `test result: ok. 5 passed; 0 failed; 2 ignored; 0 measured;
    /// 0 filtered out; finished in 0.01s` line of `stdout`, and collect the ignored tests.
    fn parse(stdout: &str) -> Tally {
        let mut t = Tally::default();
        for line in stdout.lines() {
            if let Some(rest) = line.strip_prefix("test result: ") {
                t.binaries += 1;
                // "ok. 5 passed" / "FAILED. 1 passed"
                let rest = rest.split_once(". ").map_or(rest, |(_, r)| r);
                for field in rest.split("; ") {
                    let Some((n, what)) = field.split_once(' ') else {
                        continue;
                    };
                    let Ok(n) = n.parse::<u64>() else {
                        continue;
                    };
                    match what {
                        "passed" => t.passed += n,
                        "failed" => t.failed += n,
                        "ignored" => t.ignored += n,
                        "filtered out" => t.filtered_out += n,
                        _ => {}
                    }
                }
            } else if let Some((name, status)) = line
                .strip_prefix("test ")
                .and_then(|r| r.rsplit_once(" ... "))
                && (status == "ignored" || status.starts_with("ignored, "))
            {
                t.ignored_names.push(name.to_owned());
            }
        }
        t
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} test binaries: {} passed, {} failed, {} ignored, {} filtered out",
            self.binaries, self.passed, self.failed, self.ignored, self.filtered_out
        )
    }
}

/// The `package` step: `cargo package --no-verify --offline` for every crate that may be
/// published (`publish = false` ones left out), so manifests, versions of internal
/// dependencies and packaged files are checked without the network. The full
/// `cargo publish --workspace --dry-run` also compiles each packaged crate (minutes here).
fn package(sh: &Shell) -> Result<()> {
    let json = cmd!(
        sh,
        "cargo metadata --no-deps --format-version 1 --offline --locked"
    )
    .quiet()
    .read()?;
    let meta: serde_json::Value = serde_json::from_str(&json)?;
    let mut packages = Vec::new();
    for p in meta["packages"].as_array().into_iter().flatten() {
        // `publish = false` reads as an empty registry list.
        let unpublished = p["publish"].as_array().is_some_and(|r| r.is_empty());
        if let (false, Some(name)) = (unpublished, p["name"].as_str()) {
            packages.extend(["-p".to_owned(), name.to_owned()]);
        }
    }
    anyhow::ensure!(!packages.is_empty(), "no publishable packages");
    cmd!(
        sh,
        "cargo package --no-verify --offline --locked --allow-dirty {packages...}"
    )
    .run()?;
    Ok(())
}

/// The `deny` step: licenses and bans (deny.toml) without fetching anything; installs
/// cargo-deny first when missing.
fn deny(sh: &Shell) -> Result<()> {
    crate::deps::ensure_cargo_deny(sh)?;
    cmd!(sh, "cargo deny --offline --locked check licenses bans").run()?;
    Ok(())
}

/// The `doc` step: `cargo doc --workspace --no-deps` with rustdoc warnings denied.
fn doc(sh: &Shell) -> Result<()> {
    cmd!(sh, "cargo doc --workspace --no-deps --locked")
        .env("RUSTDOCFLAGS", "-D warnings")
        .run()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Tally, verdict};

    const ROOT_RUN: &str = "\
running 3 tests
test attach_reads_back ... ok
test usage_errors_exit_2 ... ok
test hold_detaches_on_sigterm ... ok

test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.20s


running 0 tests

test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s

";

    const USER_RUN: &str = "\
running 3 tests
test attach_reads_back ... ignored, needs root
test usage_errors_exit_2 ... ok
test hold_detaches_on_sigterm ... ignored

test result: ok. 1 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.01s

running 2 tests
test crates/testutil/src/lib.rs - require_root (line 9) ... ignored
test crates/testutil/src/lib.rs - scratch_dir (line 30) ... ok

test result: FAILED. 1 passed; 1 failed; 1 ignored; 0 measured; 4 filtered out; finished in 0.30s
";

    #[test]
    fn everything_ran() {
        let t = Tally::parse(ROOT_RUN);
        assert_eq!(
            t,
            Tally {
                binaries: 2,
                passed: 3,
                ..Tally::default()
            }
        );
    }

    #[test]
    fn ignored_and_filtered_are_summed_and_named() {
        let t = Tally::parse(USER_RUN);
        assert_eq!(
            t,
            Tally {
                binaries: 2,
                passed: 2,
                failed: 1,
                ignored: 3,
                filtered_out: 4,
                ignored_names: vec![
                    "attach_reads_back".into(),
                    "hold_detaches_on_sigterm".into(),
                    "crates/testutil/src/lib.rs - require_root (line 9)".into(),
                ],
            }
        );
    }

    #[test]
    fn ci_fails_when_a_test_did_not_run() {
        let all = Tally::parse(ROOT_RUN);
        let some = Tally::parse(USER_RUN);
        assert_eq!(verdict(&all, true, true).unwrap(), None);
        let err = verdict(&some, false, true).unwrap_err().to_string();
        assert!(err.starts_with("CI=true and not every test ran: 3 ignored and 4 filtered out"));
        assert!(err.contains("(root tests run only as root): attach_reads_back"));
        let warn = verdict(&some, true, false).unwrap().unwrap();
        assert!(warn.starts_with("not every test ran: 3 ignored"), "{warn}");
        assert!(verdict(&Tally::default(), true, false).is_err());
    }

    #[test]
    fn test_output_that_only_looks_like_a_summary_is_not_counted() {
        // A test named "ignored_paths" that passed, and a line without a summary prefix.
        let t = Tally::parse("test ignored_paths ... ok\nresult: ok. 9 ignored\n");
        assert_eq!(t, Tally::default());
    }
}
