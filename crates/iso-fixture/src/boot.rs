//! Boot an ISO in `qemu-system-x86_64` and report what the fixture's `/init` saw.
//!
//! The machine is QEMU's `pc` (i440fx, IDE), one CPU, no network, no display, serial console
//! to a log file, `-no-reboot` (a guest reboot or panic ends QEMU). Acceleration: KVM only
//! when a two-second probe boots a real kernel under it (on some hosts `/dev/kvm` exists but
//! a kernel hangs), else TCG. `DISKFORGE_ACCEL=tcg|kvm` skips the probe.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use diskforge_cmd::Cmd;
use serde::Serialize;

use crate::{Error, Result, markers};

/// OVMF firmware code (package `ovmf`), mapped read-only.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE.fd";
/// OVMF variable store template; each boot gets its own writable copy.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS.fd";
/// Guest memory in MiB unless [`BootOptions::memory_mib`] says otherwise.
pub const DEFAULT_MEMORY_MIB: u32 = 512;
/// How long the KVM probe may take before KVM counts as broken.
const KVM_PROBE: Duration = Duration::from_secs(2);

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

/// CPU acceleration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Probe KVM (see the module docs), fall back to TCG.
    Auto,
    /// Software emulation.
    Tcg,
    /// KVM.
    Kvm,
}

/// How to boot. [`BootOptions::new`] gives the defaults each field names.
#[derive(Debug, Clone)]
pub struct BootOptions {
    /// Firmware and attachment. No default.
    pub firmware: Firmware,
    /// Kill QEMU after this long. Default 120 s.
    pub timeout: Duration,
    /// Acceleration. Default [`Accel::Auto`].
    pub accel: Accel,
    /// Guest memory in MiB. Default [`DEFAULT_MEMORY_MIB`].
    pub memory_mib: u32,
}

impl BootOptions {
    /// The defaults for `firmware`.
    pub fn new(firmware: Firmware) -> Self {
        BootOptions {
            firmware,
            timeout: Duration::from_secs(120),
            accel: Accel::Auto,
            memory_mib: DEFAULT_MEMORY_MIB,
        }
    }
}

/// What the boot showed.
#[derive(Debug, Clone, Serialize)]
pub struct BootReport {
    /// Firmware used.
    pub firmware: Firmware,
    /// Acceleration used (never `auto`).
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

/// Boot `iso` as `opts` says. A guest that never prints the markers is not an error: the
/// report says so (and carries the log); errors are for QEMU failing to start.
pub fn boot_with(iso: &Path, opts: &BootOptions) -> Result<BootReport> {
    if !iso.exists() {
        return Err(Error::Io {
            action: "booting",
            path: iso.to_owned(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
    }
    let accel = resolve_accel(opts.accel);
    let scratch = tempfile::Builder::new()
        .prefix("diskforge-boot-")
        .tempdir()
        .map_err(|source| Error::Io {
            action: "creating a temp dir in",
            path: std::env::temp_dir(),
            source,
        })?;
    let log = scratch.path().join("serial.log");
    let vars = if opts.firmware.is_uefi() {
        let code = PathBuf::from(OVMF_CODE);
        if !code.exists() {
            return Err(Error::MissingInput {
                what: "OVMF",
                path: code,
                package: "ovmf",
            });
        }
        let vars = scratch.path().join("OVMF_VARS.fd");
        crate::copy(Path::new(OVMF_VARS), &vars)?;
        Some(vars)
    } else {
        None
    };
    let args = qemu_args(
        iso,
        opts.firmware,
        accel,
        opts.memory_mib,
        &log,
        vars.as_deref(),
    );
    let start = Instant::now();
    let res = Cmd::new("qemu-system-x86_64")
        .args(&args)
        .timeout(opts.timeout)
        .run();
    let seconds = start.elapsed().as_secs_f64();
    let timed_out = match res {
        Ok(_) => false,
        Err(diskforge_cmd::Error::Timeout { .. }) => true,
        Err(source) => {
            return Err(Error::Tool {
                step: "booting the ISO in qemu-system-x86_64",
                source,
            });
        }
    };
    let text = std::fs::read(&log)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    Ok(BootReport::from_log(
        opts.firmware,
        accel,
        seconds,
        timed_out,
        &text,
    ))
}

/// Escape a value for a QEMU `-drive`/`-chardev` option string (commas are doubled).
fn qemu_escape(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

/// The QEMU command line: one small concern per group.
pub fn qemu_args(
    iso: &Path,
    firmware: Firmware,
    accel: Accel,
    memory_mib: u32,
    serial_log: &Path,
    ovmf_vars: Option<&Path>,
) -> Vec<OsString> {
    let mut a: Vec<String> = Vec::new();
    // Machine: i440fx with IDE (the Debian kernel's ata_piix), one CPU.
    a.extend([
        "-machine".into(),
        "pc".into(),
        "-smp".into(),
        "1".into(),
        "-m".into(),
        memory_mib.to_string(),
    ]);
    // Acceleration: KVM wants the host CPU model; TCG's default CPU runs x86-64 kernels.
    match accel {
        Accel::Kvm => a.extend(["-accel".into(), "kvm".into(), "-cpu".into(), "host".into()]),
        Accel::Tcg | Accel::Auto => a.extend(["-accel".into(), "tcg".into()]),
    }
    // No default devices (no NIC: no PXE attempts), no display; serial console to a file.
    a.extend(["-nodefaults".into(), "-display".into(), "none".into()]);
    a.extend([
        "-serial".into(),
        format!("file:{}", qemu_escape(serial_log)),
    ]);
    // A guest reboot (or `panic=-1`) ends QEMU instead of looping.
    a.push("-no-reboot".into());
    // The ISO: a read-only CD, or a hard disk whose writes go to a throwaway overlay.
    let iso = qemu_escape(iso);
    if firmware.is_cdrom() {
        a.extend([
            "-drive".into(),
            format!("file={iso},format=raw,if=ide,media=cdrom,readonly=on"),
        ]);
        a.extend(["-boot".into(), "order=d,menu=off".into()]);
    } else {
        a.extend([
            "-drive".into(),
            format!("file={iso},format=raw,if=ide,media=disk,snapshot=on"),
        ]);
        a.extend(["-boot".into(), "order=c,menu=off".into()]);
    }
    // UEFI: OVMF code read-only, a private copy of the variable store.
    if let Some(vars) = ovmf_vars.filter(|_| firmware.is_uefi()) {
        a.extend([
            "-drive".into(),
            format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"),
        ]);
        a.extend([
            "-drive".into(),
            format!("if=pflash,format=raw,unit=1,file={}", qemu_escape(vars)),
        ]);
    }
    a.into_iter().map(OsString::from).collect()
}

fn resolve_accel(want: Accel) -> Accel {
    match want {
        Accel::Tcg | Accel::Kvm => want,
        Accel::Auto => match std::env::var("DISKFORGE_ACCEL").as_deref() {
            Ok("tcg") => Accel::Tcg,
            Ok("kvm") => Accel::Kvm,
            _ => {
                static PROBED: OnceLock<Accel> = OnceLock::new();
                *PROBED.get_or_init(|| if kvm_works() { Accel::Kvm } else { Accel::Tcg })
            }
        },
    }
}

/// Boot the host's kernel under KVM for `KVM_PROBE` and look for its banner on serial.
pub fn kvm_works() -> bool {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return false;
    }
    let Ok((kernel, _)) = crate::default_kernel() else {
        return false;
    };
    let Ok(dir) = tempfile::Builder::new()
        .prefix("diskforge-kvm-probe-")
        .tempdir()
    else {
        return false;
    };
    let log = dir.path().join("serial.log");
    // Killed at the probe's end by design: only the log matters.
    let _ = Cmd::new("qemu-system-x86_64")
        .args([
            "-machine",
            "pc",
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-m",
            "256",
            "-nodefaults",
        ])
        .args(["-display", "none", "-no-reboot", "-serial"])
        .arg(format!("file:{}", qemu_escape(&log)))
        .arg("-kernel")
        .arg(&kernel)
        .args(["-append", "console=ttyS0 panic=-1"])
        .timeout(KVM_PROBE)
        .run();
    std::fs::read(&log).is_ok_and(|b| String::from_utf8_lossy(&b).contains("Linux version"))
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
    fn qemu_args_per_firmware() {
        let line = |f, vars: Option<&Path>| {
            qemu_args(
                Path::new("/x,y/a.iso"),
                f,
                Accel::Tcg,
                512,
                Path::new("/t/s.log"),
                vars,
            )
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
        };
        let cd = line(Firmware::SeaBiosCdrom, None);
        assert!(cd.contains("-drive file=/x,,y/a.iso,format=raw,if=ide,media=cdrom,readonly=on -boot order=d,menu=off"), "{cd}");
        assert!(
            cd.contains("-accel tcg")
                && cd.contains("-no-reboot")
                && cd.contains("-serial file:/t/s.log")
        );
        assert!(!cd.contains("pflash"));
        let hd = line(Firmware::SeaBiosHardDisk, None);
        assert!(hd.contains("media=disk,snapshot=on -boot order=c"), "{hd}");
        let uefi = line(Firmware::OvmfHardDisk, Some(Path::new("/t/VARS.fd")));
        assert!(
            uefi.contains("unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd"),
            "{uefi}"
        );
        assert!(uefi.contains("unit=1,file=/t/VARS.fd"), "{uefi}");
        assert_eq!(
            Firmware::from_name("ovmf-hard-disk"),
            Some(Firmware::OvmfHardDisk)
        );
    }
}
