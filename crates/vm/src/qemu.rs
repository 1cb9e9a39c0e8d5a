//! QEMU argv, one small pure function per concern, each flag commented.
//!
//! Reference: qemu(1) for QEMU 7.2 (`-machine`, `-accel`, `-drive`, `-fsdev`, `-serial`,
//! `-no-reboot`). [`crate::launch`] puts the pieces together; nothing here touches the host.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// An accelerator QEMU runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// Software emulation.
    Tcg,
}

impl Accel {
    /// `kvm` or `tcg`.
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// Parse [`Accel::name`].
    pub fn from_name(s: &str) -> Option<Accel> {
        match s.trim() {
            "kvm" => Some(Accel::Kvm),
            "tcg" => Some(Accel::Tcg),
            _ => None,
        }
    }
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The program.
pub const QEMU: &str = "qemu-system-x86_64";
/// OVMF firmware code (package `ovmf`), mapped read-only.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE.fd";
/// OVMF variable store template; each boot gets its own writable copy.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS.fd";
/// What every kernel boot's command line starts with: the console on the first serial port,
/// and a panic reboots at once — which `-no-reboot` turns into QEMU exiting.
pub const BASE_CMDLINE: &str = "console=ttyS0 panic=-1";

/// Escape a value inside a QEMU option string (`-drive file=…`): commas are doubled.
pub fn escape(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

/// Machine, accelerator, CPU model, memory and CPU count.
pub fn machine_args(accel: Accel, memory_mib: u32, cpus: u32) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    match accel {
        // i440fx (IDE for CD and disk images, what Debian's ata_piix drives); the host CPU.
        Accel::Kvm => v.extend(["-machine", "pc,accel=kvm", "-cpu", "host"].map(String::from)),
        // A larger translation-block cache cuts TCG retranslation; `max` gives TCG every
        // CPU feature it can emulate.
        Accel::Tcg => v.extend(
            ["-machine", "pc", "-accel", "tcg,tb-size=256", "-cpu", "max"].map(String::from),
        ),
    }
    v.extend(["-m".into(), memory_mib.to_string()]);
    v.extend(["-smp".into(), cpus.to_string()]);
    v
}

/// What every VM gets: no default devices (NIC: no PXE attempts, VGA, floppy), no user
/// config files, no display, and a guest reboot (`panic=-1` included) ends QEMU.
pub fn base_args() -> Vec<String> {
    [
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]
    .map(String::from)
    .to_vec()
}

/// Firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// SeaBIOS (QEMU's built-in BIOS).
    #[default]
    SeaBios,
    /// OVMF (UEFI) from package `ovmf`.
    Ovmf,
}

/// Firmware flags; `ovmf_vars` is the private writable copy of the variable store.
pub fn firmware_args(firmware: Firmware, ovmf_vars: &Path) -> Vec<String> {
    match firmware {
        // Built in: nothing to add.
        Firmware::SeaBios => Vec::new(),
        // Code read-only, our own copy of the variables (OVMF writes boot entries there).
        Firmware::Ovmf => vec![
            "-drive".into(),
            format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"),
            "-drive".into(),
            format!("if=pflash,format=raw,unit=1,file={}", escape(ovmf_vars)),
        ],
    }
}

/// Image format of a drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Raw bytes (also ISO images).
    Raw,
    /// qcow2.
    Qcow2,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        }
    }
}

/// What the guest may do to a drive's image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// Read-only device.
    ReadOnly,
    /// Writable device; writes go to a throwaway overlay (`snapshot=on`), the image stays.
    Snapshot,
    /// Writable; writes reach the image.
    ReadWrite,
}

/// How a drive appears to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Media {
    /// IDE CD-ROM (El Torito boot from SeaBIOS/OVMF; `/dev/sr0`).
    Cdrom,
    /// IDE hard disk (`/dev/sda`; the USB-stick case for hybrid ISOs).
    IdeDisk,
    /// virtio-blk disk (`/dev/vda`; fastest for bulk data).
    Virtio,
}

/// A drive: an image file attached to the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drive {
    /// The image file.
    pub path: PathBuf,
    /// Its format.
    pub format: Format,
    /// How it appears.
    pub media: Media,
    /// What the guest may do to it.
    pub access: Access,
}

impl Drive {
    /// A read-only IDE CD-ROM of a raw (ISO) image.
    pub fn cdrom(path: impl Into<PathBuf>) -> Self {
        Drive {
            path: path.into(),
            format: Format::Raw,
            media: Media::Cdrom,
            access: Access::ReadOnly,
        }
    }

    /// An IDE disk whose writes are thrown away.
    pub fn ide_disk(path: impl Into<PathBuf>, format: Format) -> Self {
        Drive {
            path: path.into(),
            format,
            media: Media::IdeDisk,
            access: Access::Snapshot,
        }
    }

    /// A virtio-blk disk.
    pub fn virtio(path: impl Into<PathBuf>, format: Format, access: Access) -> Self {
        Drive {
            path: path.into(),
            format,
            media: Media::Virtio,
            access,
        }
    }
}

/// One `-drive` for `d`.
pub fn drive_args(d: &Drive) -> Vec<String> {
    let (iface, media) = match d.media {
        Media::Cdrom => ("ide", ",media=cdrom"),
        Media::IdeDisk => ("ide", ",media=disk"),
        Media::Virtio => ("virtio", ""),
    };
    let access = match d.access {
        Access::ReadOnly => ",readonly=on",
        Access::Snapshot => ",snapshot=on",
        Access::ReadWrite => "",
    };
    vec![
        "-drive".into(),
        format!(
            "file={},format={},if={iface}{media}{access}",
            escape(&d.path),
            d.format.name()
        ),
    ]
}

/// Which device the firmware boots first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BootDevice {
    /// The first CD-ROM.
    Cdrom,
    /// The first hard disk.
    Disk,
}

/// Boot order, without the interactive boot menu.
pub fn boot_order_args(dev: BootDevice) -> Vec<String> {
    let order = match dev {
        BootDevice::Cdrom => "order=d,menu=off",
        BootDevice::Disk => "order=c,menu=off",
    };
    vec!["-boot".into(), order.into()]
}

/// A kernel booted directly (no firmware boot loader).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KernelBoot {
    /// bzImage or uncompressed `vmlinux` (booted through PVH).
    pub kernel: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
    /// Kernel arguments after [`BASE_CMDLINE`].
    pub cmdline: String,
}

/// `-kernel`, `-initrd` and `-append` ([`BASE_CMDLINE`], then the caller's arguments).
pub fn kernel_args(k: &KernelBoot) -> Vec<String> {
    let mut cmdline = BASE_CMDLINE.to_owned();
    if !k.cmdline.is_empty() {
        cmdline.push(' ');
        cmdline.push_str(&k.cmdline);
    }
    vec![
        "-kernel".into(),
        k.kernel.display().to_string(),
        "-initrd".into(),
        k.initrd.display().to_string(),
        "-append".into(),
        cmdline,
    ]
}

/// A host directory shared into the guest over virtio-9p.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Share {
    /// Host directory.
    pub path: PathBuf,
    /// Mount tag (`mount -t 9p TAG …` in the guest); also the fsdev id.
    pub tag: String,
    /// Refuse guest writes.
    pub readonly: bool,
}

/// `-fsdev` + `-device virtio-9p-pci` for `s`.
pub fn share_args(s: &Share) -> Vec<String> {
    vec![
        "-fsdev".into(),
        // security_model=none: the guest sees host owners/modes as they are (we run as
        // root); multidevs=remap keeps inode numbers unique across host filesystems.
        format!(
            "local,id={},path={},security_model=none,multidevs=remap{}",
            s.tag,
            escape(&s.path),
            if s.readonly { ",readonly=on" } else { "" }
        ),
        "-device".into(),
        format!("virtio-9p-pci,fsdev={},mount_tag={}", s.tag, s.tag),
    ]
}

/// Where the first serial port goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serial {
    /// QEMU's stdout, for the launcher to read.
    Stdio,
    /// This terminal, with the monitor multiplexed (Ctrl-A X quits), for a person.
    Interactive,
}

/// `-serial` for `s`.
pub fn serial_args(s: Serial) -> Vec<String> {
    let to = match s {
        Serial::Stdio => "stdio",
        Serial::Interactive => "mon:stdio",
    };
    vec!["-serial".into(), to.into()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has(v: &[String], pair: [&str; 2]) -> bool {
        v.windows(2).any(|w| w == pair)
    }

    #[test]
    fn machine_per_accel() {
        let t = machine_args(Accel::Tcg, 512, 1);
        assert_eq!(
            t,
            [
                "-machine",
                "pc",
                "-accel",
                "tcg,tb-size=256",
                "-cpu",
                "max",
                "-m",
                "512",
                "-smp",
                "1"
            ]
        );
        let k = machine_args(Accel::Kvm, 2048, 2);
        assert!(has(&k, ["-machine", "pc,accel=kvm"]) && has(&k, ["-cpu", "host"]));
        assert!(has(&k, ["-smp", "2"]) && !k.contains(&"-accel".to_owned()));
    }

    #[test]
    fn base_ends_qemu_on_reboot() {
        let b = base_args();
        assert!(b.contains(&"-no-reboot".to_owned()) && b.contains(&"-nodefaults".to_owned()));
        assert!(has(&b, ["-display", "none"]));
    }

    #[test]
    fn firmware() {
        assert!(firmware_args(Firmware::SeaBios, Path::new("/v")).is_empty());
        let o = firmware_args(Firmware::Ovmf, Path::new("/t,x/VARS.fd"));
        assert_eq!(
            o,
            [
                "-drive",
                "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd",
                "-drive",
                "if=pflash,format=raw,unit=1,file=/t,,x/VARS.fd"
            ]
        );
    }

    #[test]
    fn drives() {
        assert_eq!(
            drive_args(&Drive::cdrom("/x,y/a.iso"))[1],
            "file=/x,,y/a.iso,format=raw,if=ide,media=cdrom,readonly=on"
        );
        assert_eq!(
            drive_args(&Drive::ide_disk("/a.qcow2", Format::Qcow2))[1],
            "file=/a.qcow2,format=qcow2,if=ide,media=disk,snapshot=on"
        );
        assert_eq!(
            drive_args(&Drive::virtio("/d.img", Format::Raw, Access::ReadWrite))[1],
            "file=/d.img,format=raw,if=virtio"
        );
        assert_eq!(
            drive_args(&Drive::virtio("/d.img", Format::Raw, Access::ReadOnly))[1],
            "file=/d.img,format=raw,if=virtio,readonly=on"
        );
        assert_eq!(
            boot_order_args(BootDevice::Cdrom),
            ["-boot", "order=d,menu=off"]
        );
        assert_eq!(
            boot_order_args(BootDevice::Disk),
            ["-boot", "order=c,menu=off"]
        );
    }

    #[test]
    fn kernel_cmdline_starts_with_panic_reboot() {
        let k = KernelBoot {
            kernel: "/k".into(),
            initrd: "/i".into(),
            cmdline: "quiet x=1".into(),
        };
        assert_eq!(
            kernel_args(&k),
            [
                "-kernel",
                "/k",
                "-initrd",
                "/i",
                "-append",
                "console=ttyS0 panic=-1 quiet x=1"
            ]
        );
        let bare = KernelBoot {
            cmdline: String::new(),
            ..k
        };
        assert_eq!(kernel_args(&bare)[5], BASE_CMDLINE);
    }

    #[test]
    fn shares_and_serial() {
        let s = share_args(&Share {
            path: "/".into(),
            tag: "hostroot".into(),
            readonly: true,
        });
        assert_eq!(
            s,
            [
                "-fsdev",
                "local,id=hostroot,path=/,security_model=none,multidevs=remap,readonly=on",
                "-device",
                "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot"
            ]
        );
        assert_eq!(serial_args(Serial::Stdio), ["-serial", "stdio"]);
        assert_eq!(serial_args(Serial::Interactive), ["-serial", "mon:stdio"]);
    }
}
