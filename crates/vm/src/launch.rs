//! Run QEMU: spawn it through diskforge-cmd, read the serial console, wait for marker lines,
//! enforce a timeout, and report.
//!
//! [`run`] resolves the accelerator ([`crate::accel`]), makes a private copy of OVMF's
//! variable store when the firmware is OVMF, starts `qemu-system-x86_64` with the serial
//! console on its stdout, and hands every serial line to the caller while it watches for
//! [`Expect::booted`] and [`Expect::done`] (a marker matches anywhere in a line: kernel
//! messages can share it). After `done` QEMU gets [`Expect::exit_grace`] to power off by
//! itself, then is killed; at [`Expect::timeout`] it is killed at once. QEMU runs in a
//! [`diskforge_cmd::StreamingChild`] guard: it dies with us (`PR_SET_PDEATHSIG`) and on every
//! early return. QEMU exiting non-zero by itself is an error that shows its stderr and the
//! serial tail ([`Error::Qemu`]); a guest that never reaches its marker is not — the
//! [`BootReport`] says so, and [`boot_to_marker`] turns it into [`Error::MarkerNotSeen`].
//!
//! A stale cached "kvm" (see [`crate::accel`]): when the boot under it does not reach its
//! first marker, [`run`] probes again and, if KVM no longer boots a kernel, runs the whole
//! boot again under TCG ([`BootReport::reprobed`]); the caller's line callback sees both
//! attempts' lines.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use diskforge_cmd::{Cmd, NextLine};
use serde::Serialize;

use crate::accel::{self, Accel, AccelCache, AccelChoice, AccelPolicy, AccelSource};
use crate::kernel::Kernel;
use crate::qemu::{self, BootDevice, Drive, Firmware, KernelBoot, Media, Serial, Share};
use crate::{Error, Result};

/// Serial lines a report keeps (the oldest are dropped beyond this).
pub const LOG_LINES: usize = 20_000;

/// A VM to boot. [`Vm::default`] gives the defaults each field names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Vm {
    /// Accelerator policy. Default [`AccelPolicy::Auto`].
    pub accel: AccelPolicy,
    /// Directory for the probe's answer (`accel-RELEASE`); none keeps it in this process
    /// only. Default none.
    pub accel_cache_dir: Option<PathBuf>,
    /// Guest memory in MiB. Default 512.
    pub memory_mib: u32,
    /// Guest CPUs. Default 1.
    pub cpus: u32,
    /// Firmware. Default [`Firmware::SeaBios`].
    pub firmware: Firmware,
    /// Drives, in order. Default none.
    pub drives: Vec<Drive>,
    /// What the firmware boots. Default: none with a [`Vm::kernel`], else the first drive's
    /// kind (a CD-ROM or a disk).
    pub boot_from: Option<BootDevice>,
    /// A kernel and initramfs booted directly. Default none.
    pub kernel: Option<KernelBoot>,
    /// 9p shares. Default none.
    pub shares: Vec<Share>,
}

impl Default for Vm {
    fn default() -> Self {
        Vm {
            accel: AccelPolicy::Auto,
            accel_cache_dir: None,
            memory_mib: 512,
            cpus: 1,
            firmware: Firmware::SeaBios,
            drives: Vec::new(),
            boot_from: None,
            kernel: None,
            shares: Vec::new(),
        }
    }
}

impl Vm {
    /// A VM booting `disk` (raw or qcow2, writes thrown away) on IDE under `firmware`.
    pub fn disk(disk: Drive, firmware: Firmware) -> Self {
        Vm {
            firmware,
            drives: vec![disk],
            ..Vm::default()
        }
    }

    /// A VM booting a kernel and initramfs directly.
    pub fn kernel(kernel: KernelBoot) -> Self {
        Vm {
            kernel: Some(kernel),
            ..Vm::default()
        }
    }

    /// What the firmware boots: [`Vm::boot_from`], else the first drive's kind.
    fn boot_device(&self) -> Option<BootDevice> {
        if self.boot_from.is_some() || self.kernel.is_some() {
            return self.boot_from;
        }
        self.drives.first().map(|d| match d.media {
            Media::Cdrom => BootDevice::Cdrom,
            Media::IdeDisk | Media::Virtio => BootDevice::Disk,
        })
    }

    /// The QEMU arguments under `accel`, with `ovmf_vars` as OVMF's variable store and the
    /// serial console going to `serial`.
    pub fn argv(&self, accel: Accel, ovmf_vars: &Path, serial: Serial) -> Vec<String> {
        let mut a = qemu::machine_args(accel, self.memory_mib, self.cpus);
        a.extend(qemu::base_args());
        a.extend(qemu::firmware_args(self.firmware, ovmf_vars));
        for d in &self.drives {
            a.extend(qemu::drive_args(d));
        }
        if let Some(b) = self.boot_device() {
            a.extend(qemu::boot_order_args(b));
        }
        if let Some(k) = &self.kernel {
            a.extend(qemu::kernel_args(k));
        }
        for s in &self.shares {
            a.extend(qemu::share_args(s));
        }
        a.extend(qemu::serial_args(serial));
        a
    }
}

/// What to wait for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    /// A marker that proves the guest booted (its `/init` ran); with none, `done` serves.
    pub booted: Option<String>,
    /// The marker the boot is for.
    pub done: String,
    /// Kill QEMU this long after it started.
    pub timeout: Duration,
    /// After `done`, how long QEMU may take to exit by itself before it is killed.
    pub exit_grace: Duration,
}

impl Expect {
    /// Wait for `done` at most `timeout`; 5 s grace after it.
    pub fn marker(done: impl Into<String>, timeout: Duration) -> Self {
        Expect {
            booted: None,
            done: done.into(),
            timeout,
            exit_grace: Duration::from_secs(5),
        }
    }

    /// Also watch for a `booted` marker.
    pub fn booted(mut self, booted: impl Into<String>) -> Self {
        self.booted = Some(booted.into());
        self
    }
}

/// What a boot showed.
#[derive(Debug, Clone, Serialize)]
pub struct BootReport {
    /// The accelerator used (of the last attempt).
    pub accel: Accel,
    /// Where that choice came from.
    pub accel_source: AccelSource,
    /// A cached "kvm" failed, a new probe said TCG, and the boot ran again under TCG.
    pub reprobed: bool,
    /// Seconds from QEMU's start to its end.
    pub seconds: f64,
    /// Seconds from QEMU's start to [`Expect::booted`], when seen.
    pub booted_after: Option<f64>,
    /// Seconds from QEMU's start to [`Expect::done`], when seen.
    pub done_after: Option<f64>,
    /// QEMU was killed at the timeout.
    pub timed_out: bool,
    /// QEMU's exit code when it exited by itself (0 after a poweroff or a guest reboot).
    pub exit_code: Option<i32>,
    /// The serial console, one entry a line (the last [`LOG_LINES`]).
    pub log: Vec<String>,
    /// The tail of QEMU's stderr.
    pub stderr: String,
}

impl BootReport {
    /// The `done` marker was seen.
    pub fn done(&self) -> bool {
        self.done_after.is_some()
    }

    /// The serial log as text.
    pub fn log_text(&self) -> String {
        let mut s = self.log.join("\n");
        s.push('\n');
        s
    }

    /// The last `n` serial lines, for error messages.
    pub fn log_tail(&self, n: usize) -> String {
        self.log[self.log.len().saturating_sub(n)..].join("\n")
    }
}

/// One QEMU run.
struct Attempt {
    seconds: f64,
    booted_after: Option<f64>,
    done_after: Option<f64>,
    timed_out: bool,
    finished: diskforge_cmd::Finished,
    log: Vec<String>,
}

impl Attempt {
    /// The guest got as far as its first marker.
    fn booted(&self) -> bool {
        self.booted_after.or(self.done_after).is_some()
    }
}

/// The accelerator for `vm`, with the cache and kernel image a re-probe needs.
fn resolve_accel(vm: &Vm) -> (AccelChoice, Option<(AccelCache, PathBuf)>) {
    let Ok(kernel) = Kernel::host() else {
        // No kernel to probe with: only the caller or the environment can ask for KVM.
        let choice = accel::choose(
            vm.accel,
            std::env::var(accel::ENV).ok().as_deref(),
            None,
            || Accel::Tcg,
        );
        return (choice, None);
    };
    let cache = AccelCache::new(&kernel.release, vm.accel_cache_dir.as_deref());
    let choice = cache.resolve(vm.accel, || accel::probe_kvm(&kernel.image));
    (choice, Some((cache, kernel.image)))
}

/// The OVMF variable store copy for `vm` in `scratch` (a path QEMU never opens otherwise).
fn prepare_firmware(vm: &Vm, scratch: &Path) -> Result<PathBuf> {
    let vars = scratch.join("OVMF_VARS.fd");
    if vm.firmware == Firmware::Ovmf {
        for f in [qemu::OVMF_CODE, qemu::OVMF_VARS] {
            if !Path::new(f).is_file() {
                return Err(Error::MissingInput {
                    what: "OVMF firmware",
                    path: f.into(),
                    package: "ovmf",
                });
            }
        }
        std::fs::copy(qemu::OVMF_VARS, &vars).map_err(|source| Error::Io {
            action: "copying OVMF_VARS.fd to",
            path: vars.clone(),
            source,
        })?;
    }
    Ok(vars)
}

fn scratch_dir() -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("diskforge-vm-")
        .tempdir()
        .map_err(|source| Error::Io {
            action: "creating a temp dir in",
            path: std::env::temp_dir(),
            source,
        })
}

fn attempt(
    vm: &Vm,
    accel: Accel,
    expect: &Expect,
    on_line: &mut dyn FnMut(&str),
) -> Result<Attempt> {
    let scratch = scratch_dir()?;
    let vars = prepare_firmware(vm, scratch.path())?;
    let argv = vm.argv(accel, &vars, Serial::Stdio);
    let start = Instant::now();
    let mut child = Cmd::new(qemu::QEMU)
        .args(&argv)
        .spawn_streaming()
        .map_err(|source| Error::Tool {
            step: "starting qemu-system-x86_64",
            source,
        })?;
    let deadline = start + expect.timeout;
    let (mut booted_after, mut done_after, mut timed_out) = (None, None, false);
    let mut log: Vec<String> = Vec::new();
    loop {
        match child.next_line(deadline) {
            NextLine::Line(l) => {
                on_line(&l);
                let t = Some(start.elapsed().as_secs_f64());
                if booted_after.is_none() && expect.booted.as_deref().is_some_and(|m| l.contains(m))
                {
                    booted_after = t;
                }
                let done = l.contains(&expect.done);
                if log.len() >= LOG_LINES {
                    log.remove(0);
                }
                log.push(l);
                if done {
                    done_after = t;
                    break;
                }
            }
            NextLine::TimedOut => {
                timed_out = true;
                break;
            }
            NextLine::Closed => break,
        }
    }
    let grace = if timed_out {
        Duration::ZERO
    } else {
        expect.exit_grace
    };
    let finished = child.finish(grace).map_err(|source| Error::Tool {
        step: "waiting for qemu-system-x86_64",
        source,
    })?;
    Ok(Attempt {
        seconds: start.elapsed().as_secs_f64(),
        booted_after,
        done_after,
        timed_out,
        finished,
        log,
    })
}

/// Boot `vm`, handing each serial line to `on_line`, until [`Expect::done`] or the timeout
/// (each attempt gets the whole timeout). See the module docs.
pub fn run(vm: &Vm, expect: &Expect, mut on_line: impl FnMut(&str)) -> Result<BootReport> {
    let (mut choice, probe) = resolve_accel(vm);
    let mut a = attempt(vm, choice.accel, expect, &mut on_line)?;
    let mut reprobed = false;
    if !a.booted()
        && choice.reprobe_on_failure()
        && let Some((cache, image)) = &probe
    {
        let fresh = cache.reprobe(|| accel::probe_kvm(image));
        tracing::info!(now = %fresh, "boot under the cached kvm answer failed; probed again");
        if fresh == Accel::Tcg {
            choice = AccelChoice {
                accel: Accel::Tcg,
                source: AccelSource::Probe,
            };
            reprobed = true;
            a = attempt(vm, Accel::Tcg, expect, &mut on_line)?;
        }
    }
    let exit_code = (!a.finished.killed)
        .then(|| a.finished.status.code())
        .flatten();
    let report = BootReport {
        accel: choice.accel,
        accel_source: choice.source,
        reprobed,
        seconds: a.seconds,
        booted_after: a.booted_after,
        done_after: a.done_after,
        timed_out: a.timed_out,
        exit_code,
        stderr: a.finished.stderr.clone(),
        log: a.log,
    };
    if !a.finished.killed && !a.finished.status.success() {
        return Err(Error::Qemu {
            qemu: Box::new(a.finished.error()),
            log_tail: report.log_tail(20),
        });
    }
    Ok(report)
}

/// [`run`], failing with [`Error::MarkerNotSeen`] (QEMU's stderr and the serial tail) when
/// the `done` marker did not appear: "boot this and wait for marker X within T".
pub fn boot_to_marker(vm: &Vm, expect: &Expect) -> Result<BootReport> {
    let r = run(vm, expect, |_| {})?;
    if r.done() {
        return Ok(r);
    }
    Err(Error::MarkerNotSeen {
        marker: expect.done.clone(),
        how: if r.timed_out {
            format!("within {:?}", expect.timeout)
        } else {
            format!("before the VM stopped after {:.1} s", r.seconds)
        },
        accel: r.accel,
        stderr: r.stderr.trim().to_owned(),
        log_tail: r.log_tail(30),
    })
}

/// Boot `vm` with the serial console (and QEMU's monitor, Ctrl-A X quits) on this terminal;
/// QEMU's exit status.
pub fn run_interactive(vm: &Vm) -> Result<ExitStatus> {
    let (choice, _) = resolve_accel(vm);
    let scratch = scratch_dir()?;
    let vars = prepare_firmware(vm, scratch.path())?;
    Cmd::new(qemu::QEMU)
        .args(vm.argv(choice.accel, &vars, Serial::Interactive))
        .status()
        .map_err(|source| Error::Tool {
            step: "running qemu-system-x86_64",
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qemu::Format;

    #[test]
    fn argv_disk_under_ovmf() {
        let vm = Vm::disk(Drive::ide_disk("/i/d.qcow2", Format::Qcow2), Firmware::Ovmf);
        let a = vm
            .argv(Accel::Tcg, Path::new("/s/VARS.fd"), Serial::Stdio)
            .join(" ");
        assert_eq!(
            a,
            "-machine pc -accel tcg,tb-size=256 -cpu max -m 512 -smp 1 \
             -nodefaults -no-user-config -display none -no-reboot \
             -drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd \
             -drive if=pflash,format=raw,unit=1,file=/s/VARS.fd \
             -drive file=/i/d.qcow2,format=qcow2,if=ide,media=disk,snapshot=on \
             -boot order=c,menu=off -serial stdio"
        );
    }

    #[test]
    fn argv_cdrom_boots_d_and_kernel_has_no_boot_order() {
        let vm = Vm::disk(Drive::cdrom("/a.iso"), Firmware::SeaBios);
        let a = vm.argv(Accel::Kvm, Path::new("/v"), Serial::Stdio);
        assert!(a.windows(2).any(|w| w == ["-boot", "order=d,menu=off"]));
        assert!(!a.iter().any(|x| x.contains("pflash")));
        let mut vm = Vm::kernel(KernelBoot {
            kernel: "/k".into(),
            initrd: "/i".into(),
            cmdline: "quiet".into(),
        });
        vm.drives
            .push(Drive::virtio("/d", Format::Raw, qemu::Access::ReadOnly));
        vm.shares.push(Share {
            path: "/h".into(),
            tag: "h".into(),
            readonly: true,
        });
        let a = vm.argv(Accel::Tcg, Path::new("/v"), Serial::Interactive);
        assert!(!a.contains(&"-boot".to_owned()));
        let line = a.join(" ");
        assert!(
            line.contains("-append console=ttyS0 panic=-1 quiet"),
            "{line}"
        );
        assert!(line.ends_with("mount_tag=h -serial mon:stdio"), "{line}");
    }

    #[test]
    fn report_tail_and_text() {
        let r = BootReport {
            accel: Accel::Tcg,
            accel_source: AccelSource::Caller,
            reprobed: false,
            seconds: 1.0,
            booted_after: None,
            done_after: Some(0.5),
            timed_out: false,
            exit_code: Some(0),
            log: vec!["a".into(), "b".into(), "c".into()],
            stderr: String::new(),
        };
        assert!(r.done());
        assert_eq!(r.log_tail(2), "b\nc");
        assert_eq!(r.log_tail(9), "a\nb\nc");
        assert_eq!(r.log_text(), "a\nb\nc\n");
    }
}
