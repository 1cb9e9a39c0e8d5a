//! Real boots under QEMU (TCG unless a KVM probe passes), one per firmware path. The first
//! boots the fixture as built (its own `inst.ks=`), isolating the fixture from the
//! remaster code; the other three boot the fixture after `diskforge_iso::remaster`
//! (`--kickstart`, `--add`, `--implant-md5`, mode auto), which is the check that
//! a remastered installer still boots on BIOS and UEFI, from CD and from a USB stick, and
//! that the kickstart reaches the kernel and is readable from the medium:
//! - SeaBIOS, ISO as CD: fixture as built;
//! - SeaBIOS, ISO as hard disk (isohybrid MBR): remastered, with a 4 MiB file added too, so
//!   the image has to grow (`direct` mode, our writer: MBR partition resized);
//! - OVMF, ISO as CD (El Torito EFI → GRUB → tree `EFI/BOOT/grub.cfg`): remastered;
//! - OVMF, ISO as hard disk with the appended-ESP layout (GRUB reads the `grub.cfg` inside
//!   the FAT partition): remastered, growing too (the ESP, the backup GPT and the hidden El
//!   Torito image move up) — the USB/UEFI case that ignores a kickstart when a tool forgets
//!   the FAT image.
//!
//! No root needed. Not covered: real USB controllers (the disk is IDE), Secure Boot.

// Helpers outside #[test] fns: a failed unwrap is the test failing, with its message.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use diskforge_iso::{Edit, Mode, Request, remaster};
use diskforge_iso_fixture::boot::{BootReport, Firmware, boot};
use diskforge_iso_fixture::{EspLayout, Fixture, FixtureSpec, build};

/// Generous: a TCG boot takes 8–16 s here, but CI machines are shared.
const TIMEOUT: Duration = Duration::from_secs(240);
const KS_FIRST_LINE: &str = "# kickstart from the boot test";
const ADDED_FIRST_LINE: &str = "hello from the medium";
const BIG_FIRST_LINE: &str = "a file in the blocks the image grew by";

fn fixture(dir: &Path, esp: EspLayout, extra: impl FnOnce(&mut FixtureSpec)) -> Fixture {
    let mut spec = FixtureSpec::new(dir);
    spec.esp = esp;
    extra(&mut spec);
    build(&spec).unwrap()
}

/// Boot and check what every boot must show.
fn boot_ok(iso: &Path, volid: &str, fw: Firmware) -> BootReport {
    let r = boot(iso, fw, TIMEOUT).unwrap();
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
        Some(format!("hd:LABEL={volid}").as_str())
    );
    r
}

/// Remaster `f` with a kickstart, an added file and an MD5; boot it; check all three. With
/// `grow`, a 4 MiB file is added as well: more than the image's padding, so auto picks
/// `direct`, which grows the image.
fn remastered_boot(dir: &Path, f: &Fixture, fw: Firmware, grow: bool) -> BootReport {
    let ks = dir.join("ks.cfg");
    std::fs::write(&ks, format!("{KS_FIRST_LINE}\ntext\n")).unwrap();
    let added = dir.join("added.txt");
    std::fs::write(&added, format!("{ADDED_FIRST_LINE}\n")).unwrap();
    let out = dir.join("remastered.iso");
    let mut req = Request::new(&f.iso);
    req.output = Some(out.clone());
    req.kickstart = Some(ks);
    req.edits.push(Edit::Add {
        src: added,
        dest: "/diskforge-added.txt".into(),
    });
    if grow {
        let big = dir.join("big.txt");
        let mut text = format!("{BIG_FIRST_LINE}\n").into_bytes();
        text.resize(4 << 20, b'.');
        std::fs::write(&big, text).unwrap();
        req.edits.push(Edit::Add {
            src: big,
            dest: "/diskforge-big.txt".into(),
        });
    }
    req.implant_md5 = true;
    req.mode = Mode::Auto;
    let outcome = remaster(&req, &mut |_| {}).unwrap();
    eprintln!(
        "{}: remastered in mode {} ({})",
        fw.name(),
        outcome.mode,
        outcome.reason
    );
    if grow {
        assert_eq!(outcome.mode, Mode::Direct, "{}", outcome.reason);
        assert!(outcome.reason.contains("grows by"), "{}", outcome.reason);
        assert_eq!(
            first_line_on_host(&out, dir),
            BIG_FIRST_LINE,
            "the big file read back on the host"
        );
    }
    let r = boot_ok(&out, &f.volid, fw);
    let ks_arg = r.kernel_arg("inst.ks").unwrap_or_else(|| {
        panic!(
            "{}: no inst.ks= on the kernel command line: {:?}",
            fw.name(),
            r.cmdline
        )
    });
    assert!(ks_arg.ends_with(":/ks.cfg"), "{ks_arg}");
    assert_eq!(
        r.kickstart.as_deref(),
        Some(KS_FIRST_LINE),
        "{}: {:?}",
        fw.name(),
        r.kickstart_missing
    );
    assert_eq!(
        r.files.get("/diskforge-added.txt").map(String::as_str),
        Some(ADDED_FIRST_LINE)
    );
    if grow {
        assert_eq!(
            r.files.get("/diskforge-big.txt").map(String::as_str),
            Some(BIG_FIRST_LINE),
            "{}: the file in the grown blocks, read by the guest's kernel",
            fw.name()
        );
    }
    r
}

/// First line of `/diskforge-big.txt` in `iso`, read with `osirrox` (independent reader).
fn first_line_on_host(iso: &Path, dir: &Path) -> String {
    let data = diskforge_testutil::iso::extract(iso, "/diskforge-big.txt", dir).unwrap();
    let text = String::from_utf8_lossy(&data);
    text.lines().next().unwrap_or_default().to_owned()
}

#[test]
fn seabios_cdrom_boots_the_fixture_and_reads_its_kickstart() {
    let dir = diskforge_testutil::scratch_dir();
    let ks = "hd:LABEL=Diskforge-Fixture-x86_64:/ks/fixture-ks.cfg";
    let f = fixture(dir.path(), EspLayout::InTree, |s| {
        s.extra_files = vec![
            (
                "ks/fixture-ks.cfg".into(),
                b"# kickstart on the fixture\ntext\n".to_vec(),
            ),
            (
                "diskforge-added.txt".into(),
                format!("{ADDED_FIRST_LINE}\n").into_bytes(),
            ),
        ];
        s.extra_args = format!("inst.ks={ks}");
    });
    let r = boot_ok(&f.iso, &f.volid, Firmware::SeaBiosCdrom);
    assert_eq!(r.medium.as_deref(), Some("/dev/sr0"));
    // isolinux passes initrd= through; GRUB does not.
    assert_eq!(r.kernel_arg("initrd"), Some("/images/pxeboot/initrd.img"));
    assert_eq!(r.kickstart_arg.as_deref(), Some(ks));
    assert_eq!(r.kickstart.as_deref(), Some("# kickstart on the fixture"));
    assert_eq!(
        r.files.get("/diskforge-added.txt").map(String::as_str),
        Some(ADDED_FIRST_LINE)
    );
}

#[test]
fn seabios_hard_disk_boots_the_remastered_and_grown_isohybrid_mbr() {
    let dir = diskforge_testutil::scratch_dir();
    let f = fixture(dir.path(), EspLayout::InTree, |_| {});
    let r = remastered_boot(dir.path(), &f, Firmware::SeaBiosHardDisk, true);
    assert_eq!(r.medium.as_deref(), Some("/dev/sda"));
    assert_eq!(r.kernel_arg("initrd"), Some("/images/pxeboot/initrd.img"));
}

#[test]
fn ovmf_cdrom_boots_remastered_grub_from_el_torito() {
    let dir = diskforge_testutil::scratch_dir();
    let f = fixture(dir.path(), EspLayout::InTree, |_| {});
    let r = remastered_boot(dir.path(), &f, Firmware::Ovmf, false);
    assert_eq!(r.medium.as_deref(), Some("/dev/sr0"));
    assert_eq!(r.kernel_arg("BOOT_IMAGE"), Some("/images/pxeboot/vmlinuz"));
    assert_eq!(
        r.kernel_arg("initrd"),
        None,
        "GRUB, not isolinux, should have booted"
    );
}

#[test]
fn ovmf_hard_disk_boots_the_remastered_and_grown_appended_esp() {
    let dir = diskforge_testutil::scratch_dir();
    let f = fixture(dir.path(), EspLayout::Appended, |_| {});
    let r = remastered_boot(dir.path(), &f, Firmware::OvmfHardDisk, true);
    assert_eq!(r.medium.as_deref(), Some("/dev/sda"));
    assert_eq!(
        r.kernel_arg("initrd"),
        None,
        "GRUB, not isolinux, should have booted"
    );
}

/// Issue 13 defect 1: `--volid` with a GRUB whose `search --label` is built into
/// `BOOTX64.EFI` (and no `grub.cfg` in the FAT image): OVMF stopped at `grub>` because the
/// binary still searched for the old label. The remaster rewrites the built-in config (in
/// the FAT image and on the tree) and the result boots under OVMF; a new id that does not
/// fit the built-in config is refused, naming the file, unless forced.
#[test]
fn ovmf_boots_after_volid_change_with_the_label_built_into_grub() {
    let dir = diskforge_testutil::scratch_dir();
    let f = fixture(dir.path(), EspLayout::InTree, |s| {
        s.grub_embedded_search = true;
    });
    assert!(f.efiboot_configs.is_empty(), "no grub.cfg in the FAT image");
    let new = "DF-RENAMED";
    let out = dir.path().join("renamed.iso");
    let mut req = Request::new(&f.iso);
    req.output = Some(out.clone());
    req.volid = Some(new.into());
    let o = remaster(&req, &mut |_| {}).unwrap();
    assert!(
        o.configs
            .iter()
            .any(|c| c.ends_with("::/EFI/BOOT/BOOTX64.EFI")),
        "{:?}",
        o.configs
    );
    let r = boot_ok(&out, new, Firmware::Ovmf);
    assert_eq!(r.medium.as_deref(), Some("/dev/sr0"));

    // 32 characters: 8 more than the old id, more than the built-in config's padding.
    let long = "DF-A-VOLUME-ID-OF-32-CHARACTERS!";
    assert_eq!(long.len(), 32);
    let refused = dir.path().join("refused.iso");
    req.output = Some(refused.clone());
    req.volid = Some(long.into());
    let e = remaster(&req, &mut |_| {}).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("BOOTX64.EFI") && msg.contains("has room for"),
        "{msg}"
    );
    assert!(!refused.exists());
    req.force = true;
    let o = remaster(&req, &mut |_| {}).unwrap();
    assert!(
        o.warnings.iter().any(|w| w.contains("BOOTX64.EFI")),
        "{:?}",
        o.warnings
    );
}
