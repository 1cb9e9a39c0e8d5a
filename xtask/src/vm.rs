//! `cargo xtask vm-test`: run `vm-tests/` inside a QEMU VM.
//!
//! The VM boots Debian's `linux-image-amd64` kernel from `/boot` with a tiny initramfs we
//! write ourselves (busybox-static + the virtio/9p modules from `/lib/modules`, in dependency
//! order from `modules.dep`). Its `/init` mounts the host's `/` read-only over 9p, mounts a
//! writable 9p share (a per-run directory under `target/vm/`) at the same path, puts proc,
//! sysfs, devtmpfs and tmpfs (`/tmp`, `/run`, `/var/tmp`, `/dev/shm`) into that tree and
//! chroots into it, so every host tool and the freshly built test binary are there. A script
//! generated here runs each selected test as its own process and prints a marker line per
//! test on the serial console (`DFVM-RESULT index status millis`); the test's output goes to
//! a file in the share, because a serial console carries only ~0.5 MB/s. The VM powers off
//! at the end; `-no-reboot` + `panic=-1` turn a guest panic into a QEMU exit, and a host-side
//! watchdog kills QEMU when `--timeout` passes. QEMU runs under `setpriv --pdeathsig KILL`,
//! so it never outlives us.
//!
//! Accelerator: KVM only when a ≤2 s probe boots the real kernel far enough to print its
//! banner (on some hosts `/dev/kvm` exists but a real kernel hangs); otherwise TCG.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
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

/// How long the KVM probe may take before we decide KVM does not work here.
const KVM_PROBE: Duration = Duration::from_secs(2);

/// Serial marker lines (the guest prints them; we parse them).
const MARK_BOOTED: &str = "DFVM-BOOTED";
const MARK_READY: &str = "DFVM-READY";
const MARK_RESULT: &str = "DFVM-RESULT ";
const MARK_DONE: &str = "DFVM-DONE";

/// The kernel to boot: Debian's newest `/boot/vmlinuz-*` with matching `/lib/modules`.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// Path of the bzImage.
    pub image: PathBuf,
    /// `uname -r` of it.
    pub release: String,
}

/// The uncompressed `vmlinux` inside a bzImage, cached under `cache_dir`. QEMU boots it
/// directly through its PVH entry point (Debian sets CONFIG_PVH), which skips the in-guest
/// decompression: ~4 s less per boot under TCG.
pub fn vmlinux(sh: &Shell, kernel: &Kernel, cache_dir: &Path) -> Result<PathBuf> {
    let out = cache_dir.join(format!("vmlinux-{}", kernel.release));
    if out.is_file() {
        return Ok(out);
    }
    let image = std::fs::read(&kernel.image)
        .with_context(|| format!("reading {}", kernel.image.display()))?;
    const XZ_MAGIC: &[u8] = b"\xfd7zXZ\x00";
    let at = image
        .windows(XZ_MAGIC.len())
        .position(|w| w == XZ_MAGIC)
        .context("no xz payload in the kernel image (not a Debian xz bzImage?)")?;
    let payload = &image[at..];
    let xz = cache_dir.join(format!("vmlinux-{}.xz", kernel.release));
    std::fs::write(&xz, payload)?;
    let elf = cmd!(sh, "xz -dc --single-stream {xz}")
        .quiet()
        .output()
        .context("xz -d of the kernel payload");
    std::fs::remove_file(&xz)?;
    let elf = elf?;
    if !elf.stdout.starts_with(b"\x7fELF") {
        bail!("decompressed kernel payload is not ELF");
    }
    let tmp = out.with_extension("tmp");
    std::fs::write(&tmp, &elf.stdout)?;
    std::fs::rename(&tmp, &out)?;
    Ok(out)
}

/// Find the newest Debian kernel that has its modules installed.
pub fn find_kernel() -> Result<Kernel> {
    let mut found: Vec<Kernel> = std::fs::read_dir("/boot")
        .context("reading /boot")?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let release = name.strip_prefix("vmlinuz-")?.to_owned();
            Path::new("/lib/modules")
                .join(&release)
                .join("modules.dep")
                .is_file()
                .then(|| Kernel {
                    image: e.path(),
                    release,
                })
        })
        .collect();
    found.sort_by(|a, b| a.release.cmp(&b.release));
    found.pop().context(
        "no /boot/vmlinuz-* with /lib/modules/<release>/modules.dep (run `cargo xtask deps`: it installs linux-image-amd64)",
    )
}

/// Module file paths (relative to `/lib/modules/<release>`) for `names`, dependencies first,
/// each once, resolved from `modules.dep`.
pub fn resolve_modules(modules_dep: &str, names: &[&str]) -> Result<Vec<String>> {
    let mut deps = std::collections::HashMap::new();
    for line in modules_dep.lines() {
        if let Some((module, rest)) = line.split_once(':') {
            deps.insert(
                module.to_owned(),
                rest.split_whitespace()
                    .map(str::to_owned)
                    .collect::<Vec<_>>(),
            );
        }
    }
    let by_name = |n: &str| -> Option<String> {
        let want = n.replace('-', "_");
        deps.keys()
            .find(|k| {
                let file = k.rsplit('/').next().unwrap_or(k);
                let stem = file.split(".ko").next().unwrap_or(file).replace('-', "_");
                stem == want
            })
            .cloned()
    };
    let mut order = Vec::new();
    fn visit(
        m: &str,
        deps: &std::collections::HashMap<String, Vec<String>>,
        order: &mut Vec<String>,
    ) {
        if order.iter().any(|o| o == m) {
            return;
        }
        // modules.dep lists all (transitive) dependencies; load the deepest ones first.
        if let Some(ds) = deps.get(m) {
            for d in ds.iter().rev() {
                visit(d, deps, order);
            }
        }
        order.push(m.to_owned());
    }
    for n in names {
        let m = by_name(n).with_context(|| format!("module {n} not in modules.dep"))?;
        visit(&m, &deps, &mut order);
    }
    Ok(order)
}

/// A `newc` cpio archive writer (what the kernel unpacks as an initramfs).
#[derive(Default)]
pub struct Cpio {
    buf: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let namesize = name.len() + 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            namesize,
            0
        );
        self.buf.extend_from_slice(header.as_bytes());
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }
    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }
    /// Add a directory.
    pub fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[]);
    }
    /// Add a regular file.
    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, 0o100000 | mode, data);
    }
    /// Add a symlink.
    pub fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, 0o120777, target.as_bytes());
    }
    /// Finish the archive.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.buf
    }
}

/// The guest's `/init` (busybox sh). `@SHARE@` is the share's absolute path, `@ROOT@` the
/// workspace's; `@MODE@` is `test` or `shell`.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
die() { echo "DFVM-INIT-ERROR $*"; poweroff -f; }
for m in $(cat /modules.list); do insmod "/$m" || die "insmod $m"; done
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
    let moddir = Path::new("/lib/modules").join(&kernel.release);
    let dep = std::fs::read_to_string(moddir.join("modules.dep")).context("reading modules.dep")?;
    let modules = resolve_modules(&dep, INITRAMFS_MODULES)?;
    let busybox = std::fs::read("/bin/busybox").context("reading /bin/busybox (busybox-static)")?;
    let mut c = Cpio::default();
    for d in ["bin", "dev", "proc", "sys", "mod"] {
        c.dir(d);
    }
    c.file("bin/busybox", 0o755, &busybox);
    c.symlink("bin/sh", "busybox");
    let mut list = String::new();
    for (i, m) in modules.iter().enumerate() {
        let data = std::fs::read(moddir.join(m)).with_context(|| format!("reading module {m}"))?;
        let name = format!("mod/{i:02}.ko");
        c.file(&name, 0o644, &data);
        list.push_str(&name);
        list.push('\n');
    }
    c.file("modules.list", 0o644, list.as_bytes());
    let share_s = share.to_str().context("share path is not UTF-8")?;
    let root_s = root.to_str().context("workspace path is not UTF-8")?;
    let init = INIT
        .replace("@ROOT@", root_s)
        .replace("@SHARE@", share_s)
        .replace("@MODE@", if shell { "shell" } else { "test" });
    c.file("init", 0o755, init.as_bytes());
    std::fs::write(out, c.finish()).with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

/// Which accelerator QEMU uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// Software emulation.
    Tcg,
}

/// Machine, CPU and memory flags.
pub fn machine_args(accel: Accel, memory_mib: u32, cpus: u32) -> Vec<String> {
    let (machine, accel_arg, cpu) = match accel {
        Accel::Kvm => ("pc,accel=kvm", None, "host"),
        // A larger translation-block cache cuts TCG retranslation; `max` gives TCG every
        // CPU feature it can emulate.
        Accel::Tcg => ("pc", Some("tcg,tb-size=256"), "max"),
    };
    let mut v: Vec<String> = vec!["-machine".into(), machine.into()];
    if let Some(a) = accel_arg {
        v.extend(["-accel".into(), a.into()]);
    }
    v.extend([
        "-cpu".into(),
        cpu.into(),
        "-m".into(),
        memory_mib.to_string(),
        "-smp".into(),
        cpus.to_string(),
        // No default devices (NIC, VGA, floppy…), no user config files.
        "-nodefaults".into(),
        "-no-user-config".into(),
        // A guest reboot (panic=-1 or a reboot) ends QEMU instead of looping.
        "-no-reboot".into(),
        "-display".into(),
        "none".into(),
    ]);
    v
}

/// Kernel, initramfs and command line.
pub fn kernel_args(kernel: &Path, initrd: &Path, extra_cmdline: &str) -> Vec<String> {
    let mut cmdline = String::from(
        // Serial console; reboot (= QEMU exit, with -no-reboot) at once on panic; skip the
        // crypto self-tests (~0.5 s under TCG); quiet boot keeps the console fast.
        "console=ttyS0 panic=-1 oops=panic cryptomgr.notests quiet loglevel=4 rdinit=/init",
    );
    if !extra_cmdline.is_empty() {
        cmdline.push(' ');
        cmdline.push_str(extra_cmdline);
    }
    vec![
        "-kernel".into(),
        kernel.display().to_string(),
        "-initrd".into(),
        initrd.display().to_string(),
        "-append".into(),
        cmdline,
    ]
}

/// A 9p share of host directory `path` under mount tag `tag`.
pub fn share_args(id: &str, path: &Path, tag: &str, readonly: bool) -> Vec<String> {
    vec![
        "-fsdev".into(),
        // security_model=none: the guest sees host owners/modes as they are (we run as root).
        format!(
            "local,id={id},path={},security_model=none,multidevs=remap{}",
            path.display(),
            if readonly { ",readonly=on" } else { "" }
        ),
        "-device".into(),
        format!("virtio-9p-pci,fsdev={id},mount_tag={tag}"),
    ]
}

/// Serial console: on stdio, for us to parse (tests) or for a person (shell, with the monitor
/// multiplexed so Ctrl-A X quits).
pub fn serial_args(interactive: bool) -> Vec<String> {
    vec![
        "-serial".into(),
        if interactive { "mon:stdio" } else { "stdio" }.into(),
    ]
}

/// A running QEMU that is killed and reaped when dropped (every early return included).
struct Qemu {
    child: Option<Child>,
}

impl Qemu {
    #[allow(clippy::disallowed_methods)] // xtask runs processes directly by design
    fn spawn(argv: &[String], interactive: bool) -> Result<Qemu> {
        // setpriv --pdeathsig KILL: QEMU dies with us even if we are SIGKILLed.
        let mut c = std::process::Command::new("setpriv");
        c.args(["--pdeathsig", "KILL", "--", "qemu-system-x86_64"])
            .args(argv);
        if !interactive {
            c.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
        }
        let child = c
            .spawn()
            .context("spawning qemu-system-x86_64 (run `cargo xtask deps`)")?;
        Ok(Qemu { child: Some(child) })
    }
    fn child(&mut self) -> Result<&mut Child> {
        self.child.as_mut().context("qemu already reaped")
    }
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Stream a child's stdout lines into a channel from a thread.
fn line_channel(child: &mut Child) -> Result<mpsc::Receiver<String>> {
    let out = child.stdout.take().context("qemu stdout not piped")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).split(b'\n').map_while(Result::ok) {
            let s = String::from_utf8_lossy(&line)
                .trim_end_matches('\r')
                .to_owned();
            if tx.send(s).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

/// Boot the real kernel under KVM for at most [`KVM_PROBE`] and look for its banner.
pub fn probe_kvm(kernel: &Kernel) -> bool {
    if !Path::new("/dev/kvm").exists() {
        return false;
    }
    let mut argv = machine_args(Accel::Kvm, 256, 1);
    argv.extend(["-kernel".into(), kernel.image.display().to_string()]);
    argv.extend(["-append".into(), "console=ttyS0 panic=-1".into()]);
    argv.extend(serial_args(false));
    let Ok(mut q) = Qemu::spawn(&argv, false) else {
        return false;
    };
    let Ok(child) = q.child() else { return false };
    let Ok(rx) = line_channel(child) else {
        return false;
    };
    let deadline = Instant::now() + KVM_PROBE;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) if l.contains("Linux version") => return true,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    false
}

/// [`probe_kvm`], remembered per kernel release in `cache_dir` (the probe costs 2 s when KVM
/// hangs). Delete `target/vm/accel-*` to probe again.
pub fn accel_cached(kernel: &Kernel, cache_dir: &Path) -> Accel {
    let f = cache_dir.join(format!("accel-{}", kernel.release));
    match std::fs::read_to_string(&f).as_deref() {
        Ok("kvm") => return Accel::Kvm,
        Ok("tcg") => return Accel::Tcg,
        _ => {}
    }
    let a = if probe_kvm(kernel) {
        Accel::Kvm
    } else {
        Accel::Tcg
    };
    let _ = std::fs::write(&f, if a == Accel::Kvm { "kvm" } else { "tcg" });
    a
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
    let kernel = find_kernel()?;

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

    let accel = accel_cached(&kernel, &vmdir);
    let image = vmlinux(sh, &kernel, &vmdir)?;
    let mut argv = machine_args(accel, args.memory, 2);
    argv.extend(kernel_args(&image, &initrd, ""));
    argv.extend(share_args("hostroot", Path::new("/"), "hostroot", true));
    argv.extend(share_args("dfshare", &share_path, "dfshare", false));
    argv.extend(serial_args(args.shell));
    eprintln!(
        "vm-test: kernel {} ({:?}), {} test(s)",
        kernel.release,
        accel,
        tests.len()
    );

    if args.shell {
        let mut q = Qemu::spawn(&argv, true)?;
        q.child()?.wait()?;
        return Ok(());
    }

    let spawned = Instant::now();
    let mut q = Qemu::spawn(&argv, false)?;
    let rx = line_channel(q.child()?)?;
    let deadline = start + Duration::from_secs(args.timeout);
    let mut console_tail: Vec<String> = Vec::new();
    let mut results: Vec<TestResult> = Vec::new();
    let mut booted_at = None;
    let mut ready_at = None;
    let mut done = false;
    let mut timed_out = false;
    loop {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            timed_out = true;
            break;
        };
        let line = match rx.recv_timeout(left) {
            Ok(l) => l,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break, // QEMU exited
        };
        if console_tail.len() >= 60 {
            console_tail.remove(0);
        }
        console_tail.push(line.clone());
        if line.starts_with(MARK_BOOTED) {
            booted_at = Some(spawned.elapsed());
        } else if line.starts_with(MARK_READY) {
            ready_at = Some(spawned.elapsed());
        } else if let Some(rest) = line.strip_prefix(MARK_RESULT) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let (Some(i), Some(rc), Some(ms)) = (
                f.first().and_then(|x| x.parse::<usize>().ok()),
                f.get(1).and_then(|x| x.parse::<i32>().ok()),
                f.get(2).and_then(|x| x.parse::<u64>().ok()),
            ) else {
                continue;
            };
            let name = tests.get(i).cloned().unwrap_or_else(|| format!("#{i}"));
            let ok = rc == 0;
            println!(
                "{} {name} ({:.2} s)",
                if ok { "ok    " } else { "FAILED" },
                ms as f64 / 1000.0
            );
            std::io::stdout().flush().ok();
            if !ok {
                let log = std::fs::read_to_string(share_path.join("out").join(format!("{i}.log")))
                    .unwrap_or_default();
                println!(
                    "---- {name} output ----\n{}\n---- end of {name} ----",
                    log.trim_end()
                );
            }
            results.push(TestResult {
                name,
                ok,
                millis: ms,
            });
        } else if line.starts_with(MARK_DONE) {
            done = true;
        } else if line.starts_with("DFVM-WARN") || line.starts_with("DFVM-INIT-ERROR") {
            eprintln!("{line}");
        }
    }
    // Give QEMU a moment to power off by itself, then make sure it is gone.
    if done {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if q.child()?.try_wait()?.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    q.kill();

    let failed: Vec<&TestResult> = results.iter().filter(|r| !r.ok).collect();
    let passed = results.len() - failed.len();
    let test_ms: u64 = results.iter().map(|r| r.millis).sum();
    println!(
        "vm-test: {passed} passed, {} failed, {} not run; VM boot {:.1} s (ready {:.1} s), tests {:.1} s, total {:.1} s ({:?})",
        failed.len(),
        tests.len() - results.len(),
        booted_at.map(|d| d.as_secs_f64()).unwrap_or(f64::NAN),
        ready_at.map(|d| d.as_secs_f64()).unwrap_or(f64::NAN),
        test_ms as f64 / 1000.0,
        start.elapsed().as_secs_f64(),
        accel,
    );
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
    fn modules_resolve_deps_first() {
        let dep = "kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/netfs/netfs.ko\n\
                   kernel/net/9p/9pnet.ko:\nkernel/fs/netfs/netfs.ko:\n\
                   kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio_ring.ko\n\
                   kernel/drivers/virtio/virtio_ring.ko:\n";
        let order = resolve_modules(dep, &["9pnet_virtio", "9p"]).unwrap();
        assert_eq!(
            order,
            [
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/net/9p/9pnet.ko",
                "kernel/net/9p/9pnet_virtio.ko",
                "kernel/fs/netfs/netfs.ko",
                "kernel/fs/9p/9p.ko"
            ]
        );
        assert!(resolve_modules(dep, &["nope"]).is_err());
    }

    #[test]
    fn cpio_is_newc_and_aligned() {
        let mut c = Cpio::default();
        c.dir("bin");
        c.file("init", 0o755, b"#!/bin/sh\n");
        let bytes = c.finish();
        assert!(bytes.starts_with(b"070701"));
        assert_eq!(bytes.len() % 4, 0);
        let s = String::from_utf8_lossy(&bytes);
        assert!(s.contains("TRAILER!!!"));
        // mode of "init" is a regular file 0755.
        assert!(s.contains("000081ed"));
    }

    #[test]
    fn qemu_argv() {
        let m = machine_args(Accel::Tcg, 2048, 2);
        assert!(m.windows(2).any(|w| w == ["-machine", "pc"]));
        assert!(m.windows(2).any(|w| w == ["-accel", "tcg,tb-size=256"]));
        assert!(m.contains(&"-no-reboot".to_owned()));
        let k = machine_args(Accel::Kvm, 2048, 2);
        assert!(k.windows(2).any(|w| w == ["-machine", "pc,accel=kvm"]));
        let ka = kernel_args(Path::new("/boot/vmlinuz"), Path::new("/i"), "x=1");
        assert!(ka[5].contains("panic=-1") && ka[5].ends_with(" x=1"));
        let s = share_args("r", Path::new("/"), "hostroot", true);
        assert_eq!(
            s[1],
            "local,id=r,path=/,security_model=none,multidevs=remap,readonly=on"
        );
        assert_eq!(s[3], "virtio-9p-pci,fsdev=r,mount_tag=hostroot");
        assert_eq!(serial_args(true), ["-serial", "mon:stdio"]);
    }

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
