//! `cargo xtask vm-test`: run `vm-tests/` inside a QEMU VM.
//!
//! The VM boots Debian's `linux-image-amd64` kernel from `/boot` (its uncompressed `vmlinux`,
//! cached in `target/vm/`) with a tiny initramfs (busybox-static + the virtio/9p modules from
//! `/lib/modules`, in dependency order from `modules.dep`); kernel, initramfs, KVM probe and
//! QEMU launch are `diskforge-vm`'s, this module only adds the guest's `/init` and the test
//! protocol. Its `/init` mounts the host's `/` read-only over 9p, mounts a
//! writable 9p share (a per-run directory under `target/vm/`) at the same path, puts proc,
//! sysfs, devtmpfs and tmpfs (`/tmp`, `/run`, `/var/tmp`, `/dev/shm`) into that tree and
//! chroots into it, so every host tool and the freshly built test binary are there. A script
//! generated here runs each selected test as its own process and prints a marker line per
//! test on the serial console (`DFVM-RESULT index status millis`); the test's output goes to
//! a file in the share, because a serial console carries only ~0.5 MB/s. The VM powers off
//! at the end; `-no-reboot` + `panic=-1` turn a guest panic into a QEMU exit, and a host-side
//! watchdog kills QEMU when `--timeout` passes. QEMU is spawned with `PR_SET_PDEATHSIG`
//! (through diskforge-cmd), so it never outlives us; when it fails, its stderr is in the error.
//!
//! Accelerator: KVM only when a ≤2 s probe boots the real kernel far enough to print its
//! banner (on some hosts `/dev/kvm` exists but a real kernel hangs); otherwise TCG. The answer
//! is cached in `target/vm/accel-RELEASE` and probed again when a boot under a cached "kvm"
//! fails (diskforge-vm's `accel` module).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use diskforge_vm::{Expect, Initramfs, Kernel, KernelBoot, Share, Vm};
use xshell::{Shell, cmd};

use crate::flags::VmTestArgs;

/// Modules the initramfs carries and loads at boot (from RAM: loading them later through 9p
/// costs ~1 s each under TCG): virtio + 9p to reach the host root, then what nearly every test
/// needs. Anything else (xfs, btrfs, …) the kernel loads on demand through a
/// `/proc/sys/kernel/modprobe` helper that runs the host's `modprobe` inside the chroot.
const INITRAMFS_MODULES: &[&str] = &[
    "virtio_pci",
    "9pnet_virtio",
    "9p",
    "loop",
    "dm_mod",
    "isofs",
    "vfat",
    "nls_ascii",
    "nls_cp437",
    "nls_utf8",
    "nls_iso8859_1",
    "overlay",
    "squashfs",
    "ext4",
    "virtio_blk",
];

/// Environment variables forwarded from the host into the tests.
const FORWARDED_ENV_PREFIXES: &[&str] = &["DISKFORGE_", "RUST_LOG", "RUST_BACKTRACE"];

/// Kernel arguments after diskforge-vm's `console=ttyS0 panic=-1`: an oops panics (and so
/// ends QEMU), no crypto self-tests (~0.5 s under TCG), a quiet console (serial is slow).
const CMDLINE: &str = "oops=panic cryptomgr.notests quiet loglevel=4 rdinit=/init";

/// How long QEMU may take to power off by itself after the last marker.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// Serial marker lines (the guest prints them; we parse them).
const MARK_BOOTED: &str = "DFVM-BOOTED";
const MARK_READY: &str = "DFVM-READY";
const MARK_RESULT: &str = "DFVM-RESULT ";
const MARK_DONE: &str = "DFVM-DONE";

/// The guest's `/init` (busybox sh). `@SHARE@` is the share's absolute path, `@ROOT@` the
/// workspace's; `@MODE@` is `test` or `shell`.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
die() { echo "DFVM-INIT-ERROR $*"; poweroff -f; }
for m in $(cat /etc/diskforge-modules); do insmod "$m" || die "insmod $m"; done
mkdir -p /host
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /host || die "mount host root"
# The workspace may live under /tmp or another dir that gets a tmpfs below: keep a bind of
# it and put it back on top afterwards (CI clones into a fresh temp dir).
mkdir -p /keep
mount --bind "/host@ROOT@" /keep || die "bind workspace"
printf '#!/bin/sh\nexec /bin/chroot /host /sbin/modprobe "$@"\n' > /bin/modprobe-host
chmod 755 /bin/modprobe-host
echo /bin/modprobe-host > /proc/sys/kernel/modprobe
mount -t proc proc /host/proc || die "proc"
mount -t sysfs sysfs /host/sys || die "sysfs"
mount -t devtmpfs devtmpfs /host/dev || die "devtmpfs"
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts devpts /host/dev/pts || die "devpts"
for d in /tmp /run /var/tmp /dev/shm; do mount -t tmpfs -o mode=1777 tmpfs "/host$d" || die "tmpfs $d"; done
mkdir -p "/host@ROOT@"
mount --bind /keep "/host@ROOT@" || die "rebind workspace"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 dfshare "/host@SHARE@" || die "mount share"
echo DFVM-BOOTED
if [ "@MODE@" = shell ]; then
  setsid cttyhack chroot /host /bin/bash -l
else
  chroot /host /bin/sh "@SHARE@/run.sh"
  echo "DFVM-EXIT $?"
fi
sync
poweroff -f
"#;

/// Build the initramfs for `kernel` into `out`.
fn build_initramfs(
    kernel: &Kernel,
    root: &Path,
    share: &Path,
    shell: bool,
    out: &Path,
) -> Result<()> {
    let share_s = share.to_str().context("share path is not UTF-8")?;
    let root_s = root.to_str().context("workspace path is not UTF-8")?;
    let init = INIT
        .replace("@ROOT@", root_s)
        .replace("@SHARE@", share_s)
        .replace("@MODE@", if shell { "shell" } else { "test" });
    Initramfs::new(init)
        .modules(&kernel.modules_dir, INITRAMFS_MODULES)
        .write(out)
        .context("building the initramfs")?;
    Ok(())
}

/// Names of the tests in the vm-tests binary matching `filter`.
fn list_tests(sh: &Shell, bin: &Path, filter: Option<&str>) -> Result<Vec<String>> {
    let out = cmd!(sh, "{bin} --list")
        .quiet()
        .read()
        .context("listing vm tests")?;
    Ok(out
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .filter(|n| filter.is_none_or(|f| n.contains(f)))
        .map(str::to_owned)
        .collect())
}

/// The script the guest runs in the chroot.
fn run_script(
    bin: &Path,
    share: &Path,
    workdir: &Path,
    keep_going: bool,
    env: &[(String, String)],
) -> String {
    let mut s = String::from("#!/bin/sh\n# generated by cargo xtask vm-test\n");
    s.push_str("export DISKFORGE_VM=1 HOME=/root TMPDIR=/tmp PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n");
    for (k, v) in env {
        s.push_str(&format!("export {k}='{}'\n", v.replace('\'', "'\\''")));
    }
    s.push_str(&format!("cd '{}'\n", workdir.display()));
    s.push_str(&format!("echo {MARK_READY}\n"));
    s.push_str(&format!(
        r#"n=0
while IFS= read -r name; do
  s=$(date +%s%N)
  '{bin}' --exact "$name" --test-threads 1 > '{share}/out/'$n.log 2>&1
  rc=$?
  e=$(date +%s%N)
  echo "{MARK_RESULT}$n $rc $(( (e - s) / 1000000 ))"
  if [ $rc -ne 0 ] && [ {kg} = 0 ]; then break; fi
  n=$((n + 1))
done < '{share}/tests.list'
sync
echo {MARK_DONE}
"#,
        bin = bin.display(),
        share = share.display(),
        kg = u8::from(keep_going),
    ));
    s
}

/// The outcome of one test.
#[derive(Debug)]
struct TestResult {
    name: String,
    ok: bool,
    millis: u64,
}

/// Parse a `DFVM-RESULT index status millis` marker's fields, print the test's line (and its
/// output when it failed).
fn test_result(fields: &str, tests: &[String], share: &Path) -> Option<TestResult> {
    let f: Vec<&str> = fields.split_whitespace().collect();
    let i = f.first()?.parse::<usize>().ok()?;
    let rc = f.get(1)?.parse::<i32>().ok()?;
    let ms = f.get(2)?.parse::<u64>().ok()?;
    let name = tests.get(i).cloned().unwrap_or_else(|| format!("#{i}"));
    let ok = rc == 0;
    println!(
        "{} {name} ({:.2} s)",
        if ok { "ok    " } else { "FAILED" },
        ms as f64 / 1000.0
    );
    std::io::stdout().flush().ok();
    if !ok {
        let log =
            std::fs::read_to_string(share.join("out").join(format!("{i}.log"))).unwrap_or_default();
        println!(
            "---- {name} output ----\n{}\n---- end of {name} ----",
            log.trim_end()
        );
    }
    Some(TestResult {
        name,
        ok,
        millis: ms,
    })
}

/// `cargo xtask vm-test`
pub fn run(sh: &Shell, args: &VmTestArgs) -> Result<()> {
    let start = Instant::now();
    let root = crate::project_root();
    let profile = if args.release { "release" } else { "debug" };
    let mut build = vec!["build", "-q", "-p", "diskforge-vm-tests", "--bins"];
    if args.release {
        build.push("--release");
    }
    cmd!(sh, "cargo {build...}")
        .run()
        .context("building vm-tests")?;
    let bin = root.join("target").join(profile).join("vm-tests");
    let kernel = Kernel::host()?;

    let tests = if args.shell {
        Vec::new()
    } else {
        list_tests(sh, &bin, args.filter.as_deref())?
    };
    if !args.shell && tests.is_empty() {
        bail!("no vm test matches {:?}", args.filter);
    }

    let vmdir = root.join("target").join("vm");
    std::fs::create_dir_all(&vmdir)?;
    let share = tempfile::Builder::new().prefix("run-").tempdir_in(&vmdir)?;
    let share_path = share.path().to_path_buf();
    std::fs::create_dir(share_path.join("out"))?;
    std::fs::write(
        share_path.join("tests.list"),
        tests.iter().map(|t| format!("{t}\n")).collect::<String>(),
    )?;
    let env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| FORWARDED_ENV_PREFIXES.iter().any(|p| k.starts_with(p)))
        .collect();
    std::fs::write(
        share_path.join("run.sh"),
        run_script(&bin, &share_path, &root, args.keep_going, &env),
    )?;
    let initrd = share_path.join("initramfs.cpio");
    build_initramfs(&kernel, &root, &share_path, args.shell, &initrd)?;

    let image = kernel.vmlinux(&vmdir)?;
    let mut vm = Vm::kernel(KernelBoot {
        kernel: image,
        initrd,
        cmdline: CMDLINE.into(),
    });
    vm.accel_cache_dir = Some(vmdir.clone());
    vm.memory_mib = args.memory;
    vm.cpus = 2;
    vm.shares = vec![
        Share {
            path: "/".into(),
            tag: "hostroot".into(),
            readonly: true,
        },
        Share {
            path: share_path.clone(),
            tag: "dfshare".into(),
            readonly: false,
        },
    ];
    eprintln!(
        "vm-test: kernel {}, {} test(s)",
        kernel.release,
        tests.len()
    );

    if args.shell {
        diskforge_vm::run_interactive(&vm)?;
        return Ok(());
    }

    let deadline = start + Duration::from_secs(args.timeout);
    let expect = Expect {
        booted: Some(MARK_BOOTED.into()),
        done: MARK_DONE.into(),
        timeout: deadline.saturating_duration_since(Instant::now()),
        exit_grace: EXIT_GRACE,
    };
    let spawned = Instant::now();
    let mut console_tail: Vec<String> = Vec::new();
    let mut results: Vec<TestResult> = Vec::new();
    let mut ready_at = None;
    let outcome = diskforge_vm::run(&vm, &expect, |line| {
        if console_tail.len() >= 60 {
            console_tail.remove(0);
        }
        console_tail.push(line.to_owned());
        if line.starts_with(MARK_READY) {
            ready_at = Some(spawned.elapsed());
        } else if let Some(rest) = line.strip_prefix(MARK_RESULT) {
            if let Some(r) = test_result(rest, &tests, &share_path) {
                results.push(r);
            }
        } else if line.starts_with("DFVM-WARN") || line.starts_with("DFVM-INIT-ERROR") {
            eprintln!("{line}");
        }
    });
    let report = match outcome {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "---- last console lines ----\n{}\n----",
                console_tail.join("\n")
            );
            return Err(e).context("vm-test: running the VM");
        }
    };
    let accel = report.accel;
    let done = report.done();
    let timed_out = report.timed_out;
    let booted_at = report.booted_after;
    if !report.stderr.trim().is_empty() {
        eprintln!("vm-test: qemu stderr:\n{}", report.stderr.trim_end());
    }

    let failed: Vec<&TestResult> = results.iter().filter(|r| !r.ok).collect();
    let passed = results.len() - failed.len();
    let test_ms: u64 = results.iter().map(|r| r.millis).sum();
    println!(
        "vm-test: {passed} passed, {} failed, {} not run; VM boot {:.1} s (ready {:.1} s), tests {:.1} s, total {:.1} s ({:?})",
        failed.len(),
        tests.len() - results.len(),
        booted_at.unwrap_or(f64::NAN),
        ready_at.map(|d| d.as_secs_f64()).unwrap_or(f64::NAN),
        test_ms as f64 / 1000.0,
        start.elapsed().as_secs_f64(),
        accel,
    );
    if report.reprobed {
        eprintln!("vm-test: the cached kvm answer failed; probed again and ran under tcg");
    }
    let problem = if timed_out {
        Some(format!("timed out after {} s", args.timeout))
    } else if !done {
        Some("the VM stopped before finishing (panic or init error)".to_owned())
    } else {
        None
    };
    if let Some(p) = problem {
        eprintln!(
            "---- last console lines ----\n{}\n----",
            console_tail.join("\n")
        );
        bail!("vm-test: {p}");
    }
    if !failed.is_empty() {
        bail!(
            "vm-test: {} failed: {}",
            failed.len(),
            failed
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if results.len() != tests.len() {
        bail!(
            "vm-test: only {} of {} tests reported",
            results.len(),
            tests.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_marks_results_and_stops_on_failure() {
        let s = run_script(
            Path::new("/t/vm-tests"),
            Path::new("/s"),
            Path::new("/w"),
            false,
            &[("DISKFORGE_X".into(), "a'b".into())],
        );
        assert!(s.contains("export DISKFORGE_X='a'\\''b'"));
        assert!(s.contains("'/t/vm-tests' --exact \"$name\""));
        assert!(s.contains("[ 0 = 0 ]; then break"));
        assert!(s.contains(MARK_DONE));
    }
}
