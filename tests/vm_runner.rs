//! `cargo xtask vm-test` turns failures red, and leaves no QEMU, loop device or mount behind
//! on the host after a pass, a failure or a timeout.
//!
//! Runs the real runner (it boots the VM: ~10–20 s per case under TCG). The failing test
//! `basics::fail_on_purpose` exists only when `DISKFORGE_FAIL_ON_PURPOSE` is set.

use std::path::PathBuf;

use diskforge_cmd::{Cmd, Error};
use diskforge_testutil::KernelState;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// QEMU processes started by this workspace's runner (their argv names `<root>/target/vm/run-`).
fn our_qemus() -> Vec<String> {
    let marker = workspace()
        .canonicalize()
        .expect("workspace dir")
        .join("target/vm/run-");
    let marker = marker.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").expect("reading /proc").flatten() {
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let s = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if s.contains("qemu-system") && s.contains(&marker) {
            found.push(s);
        }
    }
    found
}

fn xtask(args: &[&str]) -> Cmd {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    Cmd::new(cargo)
        .args(["xtask", "vm-test"])
        .args(args)
        .dir(workspace())
        .env("RUST_BACKTRACE", "0")
}

#[test]
#[ignore = "needs root"]
fn vm_test_pass_fail_and_timeout_reach_exit_code_and_leave_nothing() {
    diskforge_testutil::require_root();
    let before = KernelState::capture();

    // Pass: exit 0, one line per test with its time, and a summary with the boot time.
    let out = xtask(&["--filter", "basics::dmsetup_lists_linear"])
        .read()
        .expect("passing run");
    assert!(
        out.contains("ok     basics::dmsetup_lists_linear ("),
        "{out}"
    );
    assert!(out.contains("1 passed, 0 failed"), "{out}");
    assert!(
        our_qemus().is_empty(),
        "qemu left after pass: {:?}",
        our_qemus()
    );

    // Failure on purpose: non-zero exit, the failing test's own output shown.
    let err = xtask(&["--filter", "basics::fail_on_purpose"])
        .env("DISKFORGE_FAIL_ON_PURPOSE", "1")
        .run()
        .expect_err("a failing vm test must fail the run");
    match &err {
        Error::Failed {
            status,
            stdout,
            stderr,
            ..
        } => {
            assert_eq!(status.code(), Some(1), "{err}");
            assert!(
                stdout.contains("FAILED basics::fail_on_purpose"),
                "{stdout}"
            );
            assert!(
                stdout.contains("DISKFORGE-FAILED-ON-PURPOSE: expected 'hello'"),
                "{stdout}"
            );
            assert!(
                stderr.contains("1 failed: basics::fail_on_purpose"),
                "{stderr}"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        our_qemus().is_empty(),
        "qemu left after failure: {:?}",
        our_qemus()
    );

    // Timeout: the watchdog kills QEMU and the run fails saying so.
    let err = xtask(&["--filter", "basics::dmsetup_lists_linear", "--timeout", "1"])
        .run()
        .expect_err("a timeout must fail the run");
    assert!(
        err.stderr()
            .unwrap_or_default()
            .contains("timed out after 1 s"),
        "{err}"
    );
    assert!(
        our_qemus().is_empty(),
        "qemu left after timeout: {:?}",
        our_qemus()
    );

    // The VM's loop devices and mounts are its own; the host gained none.
    before.assert_nothing_new();
}
