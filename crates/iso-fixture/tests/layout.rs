//! The built fixture, checked with independent tools (no root, no boot): El Torito entries
//! (`xorriso -report_el_torito`), isohybrid MBR and GPT (`sfdisk --json`, the MBR code of
//! `isohdpfx.bin`, `xorriso -report_system_area`), the FAT image (`mdir`, `mtype`), the
//! volume id (`isoinfo -d`) and the boot configs on the tree (`osirrox -extract`).

// Helpers outside #[test] fns: a failed unwrap is the test failing, with its message.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use diskforge_cmd::Cmd;
use diskforge_iso_fixture::{EspLayout, Fixture, FixtureSpec, build};

fn xorriso(iso: &Path, cmd: &[&str]) -> String {
    Cmd::new("xorriso")
        .arg("-indev")
        .arg(iso)
        .args(cmd)
        .read()
        .unwrap()
}

fn extract(iso: &Path, path: &str, out: &Path) {
    Cmd::new("xorriso")
        .args(["-osirrox", "on", "-indev"])
        .arg(iso)
        .args(["-extract", path])
        .arg(out)
        .run()
        .unwrap();
}

fn mtools(program: &str, image: &str, path: &str) -> String {
    Cmd::new(program)
        .args(["-i", image])
        .arg(path)
        .env("MTOOLS_SKIP_CHECK", "1")
        .read()
        .unwrap()
}

fn fixture(dir: &Path, esp: EspLayout) -> Fixture {
    let mut spec = FixtureSpec::new(dir);
    spec.esp = esp;
    spec.extra_files = vec![(
        "diskforge-added.txt".into(),
        b"added by the test\n".to_vec(),
    )];
    spec.filler_files = 3;
    spec.filler_bytes = 3 << 20;
    build(&spec).unwrap()
}

fn sfdisk(iso: &Path) -> serde_json::Value {
    Cmd::new("sfdisk").arg("--json").arg(iso).json().unwrap()
}

#[test]
fn in_tree_layout_boot_entries_hybrid_tables_and_configs() {
    let dir = diskforge_testutil::scratch_dir();
    let f = fixture(dir.path(), EspLayout::InTree);
    assert!(
        f.size > 10 << 20 && f.size.is_multiple_of(2048),
        "size {}",
        f.size
    );

    let et = xorriso(&f.iso, &["-report_el_torito", "plain"]);
    assert!(
        et.contains("El Torito boot img :   1  BIOS  y   none"),
        "{et}"
    );
    assert!(
        et.contains("El Torito boot img :   2  UEFI  y   none"),
        "{et}"
    );
    assert!(
        et.contains("El Torito img path :   1  /isolinux/isolinux.bin"),
        "{et}"
    );
    assert!(
        et.contains("El Torito img path :   2  /images/efiboot.img"),
        "{et}"
    );
    assert!(et.contains("boot-info-table isohybrid-suitable"), "{et}");

    // isohybrid MBR: isolinux's MBR code, a bootable partition from 0, the ESP as type 0xef.
    let bytes = std::fs::read(&f.iso).unwrap();
    let mbr = std::fs::read("/usr/lib/ISOLINUX/isohdpfx.bin").unwrap();
    assert_eq!(
        bytes[..432],
        mbr[..432],
        "MBR boot code is not isohdpfx.bin"
    );
    assert_eq!(bytes[510..512], [0x55, 0xaa]);
    let pt = sfdisk(&f.iso);
    assert_eq!(pt["partitiontable"]["label"], "dos", "{pt}");
    let parts = pt["partitiontable"]["partitions"].as_array().unwrap();
    assert_eq!(parts[0]["start"], 0);
    assert_eq!(parts[0]["bootable"], true);
    assert!(parts.iter().any(|p| p["type"] == "ef"), "{pt}");
    // GPT next to it (-isohybrid-gpt-basdat): header at LBA 1, the EFI image as a partition.
    assert_eq!(&bytes[512..520], b"EFI PART");
    let sa = xorriso(&f.iso, &["-report_system_area", "plain"]);
    assert!(
        sa.contains("System area summary: MBR isohybrid cyl-align-on GPT"),
        "{sa}"
    );
    assert!(
        sa.contains("GPT partition path :   2  /images/efiboot.img"),
        "{sa}"
    );

    let pvd = Cmd::new("isoinfo")
        .args(["-d", "-i"])
        .arg(&f.iso)
        .read()
        .unwrap();
    assert!(pvd.contains(&format!("Volume id: {}", f.volid)), "{pvd}");

    // The FAT image: GRUB and its config, read with mtools (no mount).
    let efi = dir.path().join("efiboot.img");
    extract(&f.iso, "/images/efiboot.img", &efi);
    let efi = efi.to_str().unwrap();
    let listing = mtools("mdir", efi, "::/EFI/BOOT");
    assert!(
        listing.contains("BOOTX64  EFI") && listing.contains("grub     cfg"),
        "{listing}"
    );
    let cfg = mtools("mtype", efi, "::/EFI/BOOT/grub.cfg");
    assert!(
        cfg.contains(&format!("search --no-floppy --set=root -l '{}'", f.volid)),
        "{cfg}"
    );
    assert_eq!(cfg.matches(&f.kernel_args).count(), f.boot_entries, "{cfg}");

    // Configs on the tree, each with every entry carrying the shared kernel args.
    assert_eq!(
        f.tree_configs,
        [
            "isolinux/isolinux.cfg",
            "EFI/BOOT/grub.cfg",
            "boot/grub/grub.cfg"
        ]
    );
    for c in &f.tree_configs {
        let out = dir.path().join(c.replace('/', "_"));
        extract(&f.iso, &format!("/{c}"), &out);
        let text = std::fs::read_to_string(&out).unwrap();
        assert_eq!(
            text.matches(&f.kernel_args).count(),
            f.boot_entries,
            "{c}: {text}"
        );
        assert!(
            text.contains("console=ttyS0") && text.contains("panic=-1"),
            "{c}"
        );
    }
    let added = dir.path().join("added.txt");
    extract(&f.iso, "/diskforge-added.txt", &added);
    assert_eq!(
        std::fs::read_to_string(added).unwrap(),
        "added by the test\n"
    );
    let files = xorriso(&f.iso, &["-find", "/Packages", "-type", "f"]);
    assert_eq!(
        files
            .lines()
            .filter(|l| l.contains("diskforge-filler-"))
            .count(),
        3,
        "{files}"
    );
}

#[test]
fn appended_layout_has_a_gpt_esp_and_no_tree_image() {
    let dir = diskforge_testutil::scratch_dir();
    let f = fixture(dir.path(), EspLayout::Appended);
    assert_eq!((f.efiboot.as_deref(), f.esp_partition), (None, Some(2)));
    let et = xorriso(&f.iso, &["-report_el_torito", "plain"]);
    assert!(
        et.contains("El Torito boot img :   2  UEFI  y   none"),
        "{et}"
    );
    assert!(!et.contains("/images/efiboot.img"), "{et}");
    let pt = sfdisk(&f.iso);
    assert_eq!(pt["partitiontable"]["label"], "gpt", "{pt}");
    let parts = pt["partitiontable"]["partitions"].as_array().unwrap();
    let esp = parts
        .iter()
        .find(|p| p["type"] == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B")
        .unwrap_or_else(|| panic!("no ESP in {pt}"));
    assert_eq!(
        esp["node"].as_str().unwrap(),
        format!("{}2", f.iso.display())
    );
    let offset = esp["start"].as_u64().unwrap() * 512;
    let image = format!("{}@@{offset}", f.iso.display());
    let cfg = mtools("mtype", &image, "::/EFI/BOOT/grub.cfg");
    assert_eq!(cfg.matches(&f.kernel_args).count(), f.boot_entries, "{cfg}");
    let v = Cmd::new("sgdisk").arg("-v").arg(&f.iso).read().unwrap();
    assert!(v.contains("No problems found"), "{v}");
    let bytes = std::fs::read(&f.iso).unwrap();
    assert_eq!(
        bytes[..432],
        std::fs::read("/usr/lib/ISOLINUX/isohdpfx.bin").unwrap()[..432]
    );
}

#[test]
fn bios_only_fixture_has_one_entry() {
    let dir = diskforge_testutil::scratch_dir();
    let mut spec = FixtureSpec::new(dir.path());
    spec.uefi = false;
    spec.volid = "DFBIOS".into();
    let f = build(&spec).unwrap();
    let et = xorriso(&f.iso, &["-report_el_torito", "plain"]);
    assert!(et.contains("El Torito boot img :   1  BIOS"), "{et}");
    assert!(!et.contains("UEFI"), "{et}");
    assert_eq!(
        f.tree_configs,
        ["isolinux/isolinux.cfg", "boot/grub/grub.cfg"]
    );
    assert!(
        !dir.path().join("tree").exists(),
        "staging tree left behind"
    );
}

#[test]
fn same_spec_gives_the_same_bytes() {
    let dir = diskforge_testutil::scratch_dir();
    let mut spec = FixtureSpec::new(dir.path());
    spec.source_date_epoch = 1_234_567_890;
    let first = std::fs::read(build(&spec).unwrap().iso).unwrap();
    // Let the clock move on: nothing in the image may depend on it.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    spec.iso_name = "again.iso".into();
    let second = std::fs::read(build(&spec).unwrap().iso).unwrap();
    assert!(first == second, "two builds of one spec differ");
}
