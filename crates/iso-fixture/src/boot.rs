//! Boot an ISO in `qemu-system-x86_64` and report what the fixture's `/init` saw.
//!
//! The VM is `diskforge-vm`'s: QEMU's `pc` machine (i440fx, IDE), one CPU, no network, no
//! display, serial console read line by line, `-no-reboot` (a guest reboot or panic ends
//! QEMU); the ISO as an IDE CD-ROM or as an IDE hard disk whose writes are thrown away;
//! OVMF with a private copy of its variable store. Acceleration: KVM only when a two-second
//! probe boots a real kernel under it (on some hosts `/dev/kvm` exists but a kernel hangs),
//! else TCG; the answer is kept for the process and re-probed when a boot under it fails.
//! `DISKFORGE_ACCEL=tcg|kvm` skips the probe. The boot ends at the fixture's
//! [`markers::DONE`] (QEMU then powers off by itself) or at the timeout.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use diskforge_vm::{Drive, Expect, Format, Vm};
use serde::Serialize;

pub use diskforge_vm::qemu::{OVMF_CODE, OVMF_VARS};
pub use diskforge_vm::{Accel, AccelPolicy};

use crate::{Error, Result, markers};

/// Guest memory in MiB unless [`BootOptions::memory_mib`] says otherwise.
pub const DEFAULT_MEMORY_MIB: u32 = 512;

/// Firmware and the way the ISO is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Firmware {
    /// SeaBIOS, the ISO as an IDE CD-ROM (El Torito BIOS entry, isolinux).
    #[serde(rename = "seabios-cdrom")]
    SeaBiosCdrom,
    /// SeaBIOS, the ISO as an IDE hard disk: the USB-stick case (isohybrid MBR, isolinux).
    #[serde(rename = "seabios-hard-disk")]
    SeaBiosHardDisk,
    /// OVMF (UEFI), the ISO as an IDE CD-ROM (El Torito EFI entry, GRUB from efiboot.img).
    Ovmf,
    /// OVMF, the ISO as an IDE hard disk: UEFI from a USB stick (GPT/MBR ESP partition).
    OvmfHardDisk,
}

impl Firmware {
    /// Every variant.
    pub const ALL: [Firmware; 4] = [
        Firmware::SeaBiosCdrom,
        Firmware::SeaBiosHardDisk,
        Firmware::Ovmf,
        Firmware::OvmfHardDisk,
    ];

    /// Short name (`seabios-cdrom` …), as in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Firmware::SeaBiosCdrom => "seabios-cdrom",
            Firmware::SeaBiosHardDisk => "seabios-hard-disk",
            Firmware::Ovmf => "ovmf",
            Firmware::OvmfHardDisk => "ovmf-hard-disk",
        }
    }

    /// Parse [`Firmware::name`].
    pub fn from_name(name: &str) -> Option<Firmware> {
        Firmware::ALL.into_iter().find(|f| f.name() == name)
    }

    fn is_uefi(self) -> bool {
        matches!(self, Firmware::Ovmf | Firmware::OvmfHardDisk)
    }

    fn is_cdrom(self) -> bool {
        matches!(self, Firmware::SeaBiosCdrom | Firmware::Ovmf)
    }
}

/// How to boot. [`BootOptions::new`] gives the defaults each field names.
#[derive(Debug, Clone)]
pub struct BootOptions {
    /// Firmware and attachment. No default.
    pub firmware: Firmware,
    /// Kill QEMU after this long. Default 120 s.
    pub timeout: Duration,
    /// Acceleration. Default [`AccelPolicy::Auto`].
    pub accel: AccelPolicy,
    /// Guest memory in MiB. Default [`DEFAULT_MEMORY_MIB`].
    pub memory_mib: u32,
}

impl BootOptions {
    /// The defaults for `firmware`.
    pub fn new(firmware: Firmware) -> Self {
        BootOptions {
            firmware,
            timeout: Duration::from_secs(120),
            accel: AccelPolicy::Auto,
            memory_mib: DEFAULT_MEMORY_MIB,
        }
    }
}

/// What the boot showed.
#[derive(Debug, Clone, Serialize)]
pub struct BootReport {
    /// Firmware used.
    pub firmware: Firmware,
    /// Acceleration used.
    pub accel: Accel,
    /// Wall time from QEMU start to its exit (or the timeout).
    pub seconds: f64,
    /// QEMU was killed at the timeout.
    pub timed_out: bool,
    /// The fixture's `/init` ran ([`markers::BOOTED`]).
    pub booted: bool,
    /// `/init` got to the end and powered off ([`markers::DONE`]).
    pub done: bool,
    /// The kernel command line.
    pub cmdline: Option<String>,
    /// The device the ISO 9660 medium was mounted from.
    pub medium: Option<String>,
    /// The `inst.ks=` value.
    pub kickstart_arg: Option<String>,
    /// First line of the kickstart read from the medium.
    pub kickstart: Option<String>,
    /// Path of a kickstart named on the command line but absent from the medium.
    pub kickstart_missing: Option<String>,
    /// The `preseed/file=` value.
    pub preseed_arg: Option<String>,
    /// First line of the preseed file read from the medium.
    pub preseed: Option<String>,
    /// `/diskforge-*` files at the medium's root → their first line.
    pub files: BTreeMap<String, String>,
    /// The whole serial log.
    #[serde(skip)]
    pub log: String,
}

impl BootReport {
    /// The value of `key=` on the kernel command line (`Some("")` for a bare `key`).
    pub fn kernel_arg(&self, key: &str) -> Option<&str> {
        self.cmdline
            .as_deref()?
            .split_whitespace()
            .find_map(|a| match a.split_once('=') {
                Some((k, v)) if k == key => Some(v),
                None if a == key => Some(""),
                _ => None,
            })
    }

    /// Booted, found the medium and finished.
    pub fn ok(&self) -> bool {
        self.booted && self.done && self.medium.is_some()
    }

    /// The last `n` lines of the serial log, for error messages.
    pub fn log_tail(&self, n: usize) -> String {
        let lines: Vec<&str> = self.log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The report for a serial log.
    fn from_log(
        firmware: Firmware,
        accel: Accel,
        seconds: f64,
        timed_out: bool,
        log: &str,
    ) -> Self {
        let mut r = BootReport {
            firmware,
            accel,
            seconds,
            timed_out,
            booted: false,
            done: false,
            cmdline: None,
            medium: None,
            kickstart_arg: None,
            kickstart: None,
            kickstart_missing: None,
            preseed_arg: None,
            preseed: None,
            files: BTreeMap::new(),
            log: String::new(),
        };
        r.parse(log);
        r
    }

    /// Fill the marker fields from a serial log.
    fn parse(&mut self, log: &str) {
        for raw in log.lines() {
            let line = raw.trim_end_matches('\r');
            let value = |m: &str| line.find(m).map(|i| line[i + m.len()..].trim().to_owned());
            if line.contains(markers::BOOTED) {
                self.booted = true;
            } else if line.contains(markers::DONE) {
                self.done = true;
            } else if let Some(v) = value(markers::CMDLINE) {
                self.cmdline = Some(v);
            } else if let Some(v) = value(markers::MEDIUM) {
                self.medium = Some(v);
            } else if let Some(v) = value(markers::KS_ARG) {
                self.kickstart_arg = Some(v);
            } else if let Some(v) = value(markers::KS_MISSING) {
                self.kickstart_missing = Some(v);
            } else if let Some(v) = value(markers::KS) {
                self.kickstart = Some(v);
            } else if let Some(v) = value(markers::PRESEED_ARG) {
                self.preseed_arg = Some(v);
            } else if let Some(v) = value(markers::PRESEED) {
                self.preseed = Some(v);
            } else if let Some(v) = value(markers::FILE)
                && let Some((name, first)) = v
                    .split_once(": ")
                    .or_else(|| v.strip_suffix(':').map(|n| (n, "")))
            {
                self.files.insert(name.to_owned(), first.to_owned());
            }
        }
        self.log = log.to_owned();
    }
}

/// Boot `iso` with `firmware` under the default options and `timeout`.
pub fn boot(iso: &Path, firmware: Firmware, timeout: Duration) -> Result<BootReport> {
    boot_with(
        iso,
        &BootOptions {
            timeout,
            ..BootOptions::new(firmware)
        },
    )
}

/// The VM for `iso` booted as `opts` says.
fn vm(iso: &Path, opts: &BootOptions) -> Vm {
    let drive = if opts.firmware.is_cdrom() {
        Drive::cdrom(iso)
    } else {
        Drive::ide_disk(iso, Format::Raw)
    };
    let firmware = if opts.firmware.is_uefi() {
        diskforge_vm::Firmware::Ovmf
    } else {
        diskforge_vm::Firmware::SeaBios
    };
    let mut vm = Vm::disk(drive, firmware);
    vm.accel = opts.accel;
    vm.memory_mib = opts.memory_mib;
    vm
}

/// Boot `iso` as `opts` says. A guest that never prints the markers is not an error: the
/// report says so (and carries the log); errors are for QEMU failing (with its stderr).
pub fn boot_with(iso: &Path, opts: &BootOptions) -> Result<BootReport> {
    if !iso.exists() {
        return Err(Error::Io {
            action: "booting",
            path: iso.to_owned(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
    }
    let expect = Expect::marker(markers::DONE, opts.timeout).booted(markers::BOOTED);
    let r = diskforge_vm::run(&vm(iso, opts), &expect, |_| {})?;
    Ok(BootReport::from_log(
        opts.firmware,
        r.accel,
        r.seconds,
        r.timed_out,
        &r.log_text(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_markers_among_kernel_noise() {
        let r = BootReport::from_log(
            Firmware::Ovmf,
            Accel::Tcg,
            0.0,
            false,
            "[    0.000000] Linux version 6.1\r\n\
             DISKFORGE-FIXTURE-BOOTED\r\n\
             DISKFORGE-CMDLINE: BOOT_IMAGE=/images/pxeboot/vmlinuz inst.ks=hd:LABEL=X:/ks.cfg quiet\r\n\
             [    2.1] sr 0:0:0:0: ...DISKFORGE-MEDIUM: /dev/sr0\n\
             DISKFORGE-KS-ARG: hd:LABEL=X:/ks.cfg\n\
             DISKFORGE-KS: # kickstart from diskforge\n\
             DISKFORGE-FILE: /diskforge-added.txt: hello world\n\
             DISKFORGE-FILE: /diskforge-empty.txt:\n\
             DISKFORGE-FIXTURE-DONE\n",
        );
        assert!(r.ok());
        assert_eq!(r.kernel_arg("inst.ks"), Some("hd:LABEL=X:/ks.cfg"));
        assert_eq!(r.kernel_arg("quiet"), Some(""));
        assert_eq!(r.kernel_arg("ks"), None);
        assert_eq!(r.medium.as_deref(), Some("/dev/sr0"));
        assert_eq!(r.kickstart.as_deref(), Some("# kickstart from diskforge"));
        assert_eq!(r.kickstart_missing, None);
        assert_eq!(r.files["/diskforge-added.txt"], "hello world");
        assert_eq!(r.files["/diskforge-empty.txt"], "");
        assert_eq!(r.log_tail(1), "DISKFORGE-FIXTURE-DONE");
    }

    #[test]
    fn missing_kickstart_and_no_medium() {
        let r = BootReport::from_log(
            Firmware::SeaBiosCdrom,
            Accel::Tcg,
            0.0,
            false,
            "DISKFORGE-FIXTURE-BOOTED\nDISKFORGE-KS-MISSING: /ks.cfg\nDISKFORGE-FIXTURE-DONE\n",
        );
        assert!(!r.ok());
        assert_eq!(r.kickstart_missing.as_deref(), Some("/ks.cfg"));
        assert_eq!(r.kickstart, None);
    }

    #[test]
    fn vm_per_firmware() {
        let argv = |f| {
            vm(Path::new("/x,y/a.iso"), &BootOptions::new(f))
                .argv(
                    Accel::Tcg,
                    Path::new("/t/VARS.fd"),
                    diskforge_vm::qemu::Serial::Stdio,
                )
                .join(" ")
        };
        let cd = argv(Firmware::SeaBiosCdrom);
        assert!(cd.contains("-drive file=/x,,y/a.iso,format=raw,if=ide,media=cdrom,readonly=on -boot order=d,menu=off"), "{cd}");
        assert!(
            cd.contains("-no-reboot") && cd.contains("-m 512 -smp 1"),
            "{cd}"
        );
        assert!(!cd.contains("pflash"));
        let hd = argv(Firmware::SeaBiosHardDisk);
        assert!(hd.contains("media=disk,snapshot=on -boot order=c"), "{hd}");
        let uefi = argv(Firmware::OvmfHardDisk);
        assert!(
            uefi.contains("unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd"),
            "{uefi}"
        );
        assert!(uefi.contains("unit=1,file=/t/VARS.fd"), "{uefi}");
        assert!(argv(Firmware::Ovmf).contains("media=cdrom"));
        assert_eq!(
            Firmware::from_name("ovmf-hard-disk"),
            Some(Firmware::OvmfHardDisk)
        );
    }
}
