//! Helpers shared by diskforge's tests (host tests in `tests/`, VM tests in `vm-tests/`).
//!
//! - [`require_root`] guards a privileged test (see "Root tests" below).
//! - [`KernelState`] snapshots the loop devices and mounts that exist, so a test can assert
//!   that it left nothing behind ([`KernelState::assert_nothing_new`]).
//! - [`scratch_dir`] makes a temporary directory on a real disk filesystem (not tmpfs), which
//!   overlayfs upper/work dirs and loop backing files need.
//! - [`iso`] reads ISO results back with independent tools (El Torito entries, file bytes).
//! - [`help`] walks a tool's `--help` pages and checks its man pages and completions.
//!
//! It never tears anything down itself: a leak is a test failure, not something to tidy.
//!
//! # Root tests
//!
//! A test that needs root (loop devices, mounts, namespaces, `chroot`) is written as
//!
//! ```text
//! #[test]
//! #[ignore = "needs root"]
//! fn attach_reads_back() {
//!     diskforge_testutil::require_root();
//!     // …
//! }
//! ```
//!
//! - `#[ignore = "needs root"]` makes the runner's summary say so: a plain `cargo test` (root
//!   or not) lists the test as `ignored, needs root` and counts it in `N ignored`, instead of
//!   counting a silent skip as passed. Use exactly this reason text for root tests.
//! - [`require_root`] (first line of the body) panics with "needs root" when the test is run
//!   anyway as non-root (`cargo test -- --include-ignored` or `--ignored`), so it fails
//!   instead of passing or failing later on an unrelated `EPERM`.
//! - Run them as root with `cargo test --workspace -- --include-ignored`. `cargo xtask ci`
//!   does that when it runs as root, and fails when `CI=true` and any test in libtest's
//!   summary was ignored or filtered out, so a root test that did not run cannot pass CI.
//!
//! Converting an old call site: replace `if !require_root("name") { return; }` with
//! `diskforge_testutil::require_root();` and add `#[ignore = "needs root"]` under `#[test]`.
//! (The old `bool`-returning form no longer compiles, so a missed one cannot slip through.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

pub mod help;

/// Panic with "needs root" unless the effective user is root.
///
/// The first line of every root test, which also carries `#[ignore = "needs root"]` (see
/// "Root tests" in the crate docs): the attribute makes the skip visible in the runner's
/// summary, this call makes an explicit non-root run fail instead of pass.
#[track_caller]
pub fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "needs root (loop devices, mounts); run as root with `cargo test -- --include-ignored`"
    );
}

/// A snapshot of the kernel objects a test could leak.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelState {
    /// Attached loop devices as `loopN=backing file`.
    pub loops: BTreeSet<String>,
    /// Mount points from `/proc/self/mountinfo` (field 5), with their source.
    pub mounts: BTreeSet<String>,
}

impl KernelState {
    /// Read the current state from `/sys/block/loop*/loop/backing_file` and `/proc/self/mountinfo`.
    pub fn capture() -> Self {
        let mut loops = BTreeSet::new();
        if let Ok(rd) = std::fs::read_dir("/sys/block") {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !name.starts_with("loop") {
                    continue;
                }
                if let Ok(b) = std::fs::read_to_string(e.path().join("loop/backing_file")) {
                    loops.insert(format!("{name}={}", b.trim_end()));
                }
            }
        }
        let mut mounts = BTreeSet::new();
        if let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") {
            for line in mi.lines() {
                let f: Vec<&str> = line.split(' ').collect();
                let src = line
                    .split(" - ")
                    .nth(1)
                    .and_then(|r| r.split(' ').nth(1))
                    .unwrap_or("");
                if let Some(mp) = f.get(4) {
                    mounts.insert(format!("{mp} ({src})"));
                }
            }
        }
        KernelState { loops, mounts }
    }

    /// Panic with a list of every loop device or mount that exists now but not in `self`.
    pub fn assert_nothing_new(&self) {
        let now = KernelState::capture();
        let new_loops: Vec<_> = now.loops.difference(&self.loops).collect();
        let new_mounts: Vec<_> = now.mounts.difference(&self.mounts).collect();
        assert!(
            new_loops.is_empty() && new_mounts.is_empty(),
            "leaked kernel state: loops {new_loops:?}, mounts {new_mounts:?}"
        );
    }

    /// Loop devices whose backing file lies under `dir` (for tests that run in parallel and
    /// must only look at their own objects).
    pub fn loops_under(&self, dir: &Path) -> Vec<String> {
        let d = dir.to_string_lossy();
        self.loops
            .iter()
            .filter(|l| l.contains(&*d))
            .cloned()
            .collect()
    }

    /// Mounts whose mount point lies under `dir`.
    pub fn mounts_under(&self, dir: &Path) -> Vec<String> {
        let d = dir.to_string_lossy();
        self.mounts
            .iter()
            .filter(|m| m.starts_with(&*d))
            .cloned()
            .collect()
    }
}

/// A temporary directory on a disk-backed filesystem: `$DISKFORGE_SCRATCH`, else
/// `target/tmp`-style `CARGO_TARGET_TMPDIR` when set, else `/var/tmp`.
pub fn scratch_dir() -> tempfile::TempDir {
    let base: PathBuf = std::env::var_os("DISKFORGE_SCRATCH")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    // Tests cannot proceed without scratch space; the message names the directory.
    #[allow(clippy::expect_used)]
    tempfile::Builder::new()
        .prefix("diskforge-test-")
        .tempdir_in(&base)
        .expect("creating scratch dir (set DISKFORGE_SCRATCH to a writable disk directory)")
}

/// Path of a workspace binary (a tool such as `dfloop`) built next to the running test binary.
/// Tests in another package than the tool use this instead of `CARGO_BIN_EXE_*`.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/debug/deps/test-hash → target/debug/NAME
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    dir.join(name)
}

/// Run `bin ARGS` (`args` split by the shell) with its stdout already closed: the subshell
/// waits until the reader (`true`) has exited, so every write hits a closed pipe. Returns
/// the trimmed stderr, which ends with the tool's `exit=N` (dash has no pipefail).
pub fn stderr_into_closed_pipe(bin: &str, args: &str) -> String {
    let out = diskforge_cmd::Cmd::new("sh")
        .args([
            "-c",
            "(sleep 0.3; \"$0\" $1; echo \"exit=$?\" >&2) | true",
            bin,
            args,
        ])
        .run();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_owned(),
        Err(e) => format!("running {bin} {args}: {e}"),
    }
}

/// ISO checks with independent tools (xorriso, osirrox), shared by the ISO tests on the host,
/// in the VM and in `diskforge-iso-fixture`.
pub mod iso {
    use std::path::Path;

    use diskforge_cmd::Cmd;

    fn io(e: diskforge_cmd::Error) -> std::io::Error {
        std::io::Error::other(e)
    }

    /// `xorriso -report_el_torito plain`: the boot image lines without their LBA column (a
    /// rebuild moves images) and the image path lines — equal lists mean the same entries.
    pub fn el_torito_entries(iso: &Path) -> std::io::Result<Vec<String>> {
        let text = Cmd::new("xorriso")
            .arg("-indev")
            .arg(iso)
            .args(["-report_el_torito", "plain"])
            .read()
            .map_err(io)?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with("El Torito boot img") || l.starts_with("El Torito img path"))
            .map(|l| {
                let mut t: Vec<&str> = l.split_whitespace().collect();
                if l.starts_with("El Torito boot img") {
                    t.pop();
                }
                t.join(" ")
            })
            .collect())
    }

    /// The bytes of `path` in `iso`, extracted with `osirrox` into `scratch`.
    pub fn extract(iso: &Path, path: &str, scratch: &Path) -> std::io::Result<Vec<u8>> {
        let dst = scratch.join(format!("extracted{}", path.replace('/', "_")));
        let _ = std::fs::remove_file(&dst);
        Cmd::new("osirrox")
            .arg("-indev")
            .arg(iso)
            .args(["-osirrox", "on", "-extract", path])
            .arg(&dst)
            .run()
            .map_err(io)?;
        let data = std::fs::read(&dst)?;
        std::fs::remove_file(&dst)?;
        Ok(data)
    }
}
