//! diskforge's VM tests: one libtest-mimic binary, run inside the QEMU VM that
//! `cargo xtask vm-test` boots (Debian's kernel, the host's root shared read-only over 9p,
//! a tmpfs scratch). Each module contributes `tests()`; filters and `--list` work as in
//! `cargo test`. Tests run on one thread because kernel state is global.
//!
//! Outside the VM (no `DISKFORGE_VM=1` in the environment) the binary refuses to run, since
//! these tests create loop devices, device-mapper targets and mounts the host cannot.

use libtest_mimic::{Arguments, Trial};

mod basics;
mod blockdev;
mod iso;
mod loop_mount;
mod part;
mod storage;

/// Wrap a test body returning `anyhow::Result` into a libtest-mimic trial.
pub(crate) fn trial(name: &str, f: fn() -> anyhow::Result<()>) -> Trial {
    Trial::test(name, move || f().map_err(|e| format!("{e:#}").into()))
}

fn main() {
    blockdev::child_hook();
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    let mut tests = Vec::new();
    tests.extend(basics::tests());
    tests.extend(loop_mount::tests());
    tests.extend(storage::tests());
    tests.extend(part::tests());
    tests.extend(iso::tests());
    tests.extend(blockdev::tests());
    if std::env::var_os("DISKFORGE_VM").is_none() && !args.list {
        eprintln!("vm-tests: run me through `cargo xtask vm-test` (I expect to be inside its VM)");
        std::process::exit(2);
    }
    libtest_mimic::run(&args, tests).exit();
}
