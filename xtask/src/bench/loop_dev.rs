//! `cargo xtask bench loop`: loop attach+detach cycles per second.
//!
//! Routes, all on the same 8 MiB file in a scratch dir on disk:
//! - ours, in-process: `crates/loop/examples/attach_detach FILE N` (release build) runs N
//!   `LoopDevice::attach` + `detach` cycles and prints its own elapsed time;
//! - ours, as processes: `dfloop attach FILE` + `dfloop detach DEV`, N times;
//! - conventional: `losetup --find --show FILE` + `losetup -d DEV`, N times.
//!
//! Three interleaved rounds (one with `--quick`); the table gives each route's median round
//! in cycles/s and the ratio to `losetup`. Needs root.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use xshell::{Shell, cmd};

use crate::flags::BenchArgs;

/// Run this benchmark.
pub fn run(sh: &Shell, args: &BenchArgs) -> Result<()> {
    if !effective_uid_is_root() {
        bail!("bench loop: needs root (loop devices)");
    }
    let root = crate::project_root();
    sh.change_dir(&root);
    cmd!(sh, "cargo build --release -q -p dfloop --bin dfloop").run()?;
    cmd!(
        sh,
        "cargo build --release -q -p diskforge-loop --example attach_detach"
    )
    .run()?;
    let example = crate::target_dir().join("release/examples/attach_detach");
    let dfloop = crate::target_dir().join("release/dfloop");

    let base = std::env::var("DISKFORGE_SCRATCH").unwrap_or_else(|_| "/var/tmp".into());
    let work = tempfile::Builder::new()
        .prefix("diskforge-bench-loop-")
        .tempdir_in(&base)?;
    let file = work.path().join("loop.img");
    std::fs::File::create(&file)?.set_len(8 << 20)?;
    let (n_lib, n_proc) = if args.quick {
        (200u32, 30u32)
    } else {
        (2000, 200)
    };

    // Rounds are interleaved so that load from other work on the machine hits every route;
    // each route's median round is reported (the kernel's LOOP_CONFIGURE/LOOP_CLR_FD time
    // swings with RCU grace periods, i.e. with how busy the CPUs are).
    let rounds = if args.quick { 1 } else { 3 };
    let (mut lib, mut cli, mut los) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        // Ours, in process: the example reports `cycles=N elapsed_s=S per_s=R`.
        let n_s = n_lib.to_string();
        let out = cmd!(sh, "{example} {file} {n_s}").quiet().read()?;
        lib.push(
            out.split_whitespace()
                .find_map(|kv| kv.strip_prefix("elapsed_s="))
                .and_then(|v| v.parse::<f64>().ok())
                .with_context(|| format!("unexpected output from attach_detach: {out:?}"))?,
        );
        cli.push(time_cycles(n_proc, || {
            let dev = cmd!(sh, "{dfloop} attach {file}").quiet().read()?;
            let dev = dev.trim();
            cmd!(sh, "{dfloop} detach {dev}").quiet().run()?;
            Ok(())
        })?);
        los.push(time_cycles(n_proc, || {
            let dev = cmd!(sh, "losetup --find --show {file}").quiet().read()?;
            let dev = dev.trim();
            cmd!(sh, "losetup -d {dev}").quiet().run()?;
            Ok(())
        })?);
    }
    let (lib_s, cli_s, losetup_s) = (median(lib), median(cli), median(los));

    let losetup_rate = f64::from(n_proc) / losetup_s;
    let rows = [
        ("diskforge-loop (in process)", n_lib, lib_s),
        ("dfloop attach + detach", n_proc, cli_s),
        ("losetup --find --show + -d", n_proc, losetup_s),
    ];
    println!("bench loop: attach+detach cycles of an 8 MiB file");
    println!(
        "{:<30} {:>7} {:>9} {:>10} {:>12}",
        "route", "cycles", "seconds", "cycles/s", "vs losetup"
    );
    for (route, n, s) in rows {
        let rate = f64::from(n) / s;
        println!(
            "{route:<30} {n:>7} {s:>9.3} {rate:>10.1} {:>11.1}x",
            rate / losetup_rate
        );
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time_cycles(n: u32, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let t = Instant::now();
    for _ in 0..n {
        f()?;
    }
    Ok(t.elapsed().as_secs_f64())
}

/// Root check without adding a dependency to xtask: `/proc/self/status` `Uid:` line.
fn effective_uid_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}
