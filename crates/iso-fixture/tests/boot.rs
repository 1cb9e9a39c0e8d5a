//! Real boots of the fixture under QEMU (TCG unless a KVM probe passes), one per firmware
//! path: SeaBIOS with the ISO as a CD and as a hard disk (USB stick), OVMF with the ISO as a
//! CD, and OVMF with it as a hard disk using the appended-ESP layout. Each checks the marker,
//! the kernel command line and what `/init` read from the medium. No root needed.
//!
//! Not covered: real USB controllers (the hard disk is IDE), Secure Boot, 32-bit UEFI.

// Helpers outside #[test] fns: a failed unwrap is the test failing, with its message.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use diskforge_iso_fixture::boot::{BootReport, Firmware, boot};
use diskforge_iso_fixture::{EspLayout, FixtureSpec, build};

/// Generous: a TCG boot takes 8–15 s here, but CI machines are shared.
const TIMEOUT: Duration = Duration::from_secs(240);

fn boot_fixture(dir: &Path, esp: EspLayout, ks_arg: Option<&str>, fw: Firmware) -> BootReport {
    let mut spec = FixtureSpec::new(dir);
    spec.esp = esp;
    spec.extra_files = vec![
        (
            "ks/fixture-ks.cfg".into(),
            b"# kickstart on the fixture\ntext\n".to_vec(),
        ),
        (
            "diskforge-added.txt".into(),
            b"hello from the medium\n".to_vec(),
        ),
    ];
    if let Some(ks) = ks_arg {
        spec.extra_args = format!("inst.ks={ks}");
    }
    let f = build(&spec).unwrap();
    let r = boot(&f.iso, fw, TIMEOUT).unwrap();
    eprintln!("{}: {:.1} s ({:?})", fw.name(), r.seconds, r.accel);
    assert!(
        r.ok(),
        "{} did not finish (timed out: {}); serial log tail:\n{}",
        fw.name(),
        r.timed_out,
        r.log_tail(60)
    );
    assert_eq!(r.kernel_arg("console"), Some("ttyS0"));
    assert_eq!(r.kernel_arg("panic"), Some("-1"));
    assert_eq!(
        r.kernel_arg("inst.stage2"),
        Some(format!("hd:LABEL={}", f.volid).as_str())
    );
    assert_eq!(
        r.files.get("/diskforge-added.txt").map(String::as_str),
        Some("hello from the medium")
    );
    r
}

#[test]
fn seabios_cdrom_boots_and_reads_the_kickstart() {
    let dir = diskforge_testutil::scratch_dir();
    let ks = "hd:LABEL=Diskforge-Fixture-x86_64:/ks/fixture-ks.cfg";
    let r = boot_fixture(
        dir.path(),
        EspLayout::InTree,
        Some(ks),
        Firmware::SeaBiosCdrom,
    );
    assert_eq!(r.medium.as_deref(), Some("/dev/sr0"));
    // isolinux passes initrd= through; GRUB does not.
    assert_eq!(r.kernel_arg("initrd"), Some("/images/pxeboot/initrd.img"));
    assert_eq!(r.kickstart_arg.as_deref(), Some(ks));
    assert_eq!(r.kickstart.as_deref(), Some("# kickstart on the fixture"));
}

#[test]
fn seabios_hard_disk_boots_the_isohybrid_mbr() {
    let dir = diskforge_testutil::scratch_dir();
    let r = boot_fixture(
        dir.path(),
        EspLayout::InTree,
        None,
        Firmware::SeaBiosHardDisk,
    );
    assert_eq!(r.medium.as_deref(), Some("/dev/sda"));
    assert_eq!(r.kickstart_arg, None);
}

#[test]
fn ovmf_cdrom_boots_grub_and_reads_the_kickstart() {
    let dir = diskforge_testutil::scratch_dir();
    let r = boot_fixture(
        dir.path(),
        EspLayout::InTree,
        Some("cdrom:/ks/fixture-ks.cfg"),
        Firmware::Ovmf,
    );
    assert_eq!(r.medium.as_deref(), Some("/dev/sr0"));
    assert_eq!(r.kernel_arg("BOOT_IMAGE"), Some("/images/pxeboot/vmlinuz"));
    assert_eq!(
        r.kernel_arg("initrd"),
        None,
        "GRUB, not isolinux, should have booted"
    );
    assert_eq!(r.kickstart.as_deref(), Some("# kickstart on the fixture"));
}

#[test]
fn ovmf_hard_disk_boots_the_appended_esp_and_reports_a_missing_kickstart() {
    let dir = diskforge_testutil::scratch_dir();
    let r = boot_fixture(
        dir.path(),
        EspLayout::Appended,
        Some("hd:LABEL=X:/nope.cfg"),
        Firmware::OvmfHardDisk,
    );
    assert_eq!(r.medium.as_deref(), Some("/dev/sda"));
    assert_eq!(
        r.kernel_arg("initrd"),
        None,
        "GRUB, not isolinux, should have booted"
    );
    assert_eq!(r.kickstart, None);
    assert_eq!(r.kickstart_missing.as_deref(), Some("/nope.cfg"));
}
