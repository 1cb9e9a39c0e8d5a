//! Integration tests for `diskforge-part`: write tables to sparse image files (no root needed)
//! and check them with independent tools — `sgdisk -v` for GPT, `sfdisk --json` / `sfdisk -V`
//! for both labels.
//!
//! Not covered here: block devices (BLKSSZGET, 4K-native disks) — those need root and a loop
//! device; the kernel's view of logical partitions (`losetup -P` makes no pN nodes on this
//! host) is left to the loop/VM tests.

use std::path::Path;

use diskforge_cmd::Cmd;
use diskforge_part::{Flag, Label, Layout, PartKind, PartSpec, Table, WriteOptions};
use serde_json::Value;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// `len` bytes at `offset` (negative: from the end) — the tables, not the whole sparse image.
fn bytes_at(path: &Path, offset: i64, len: usize) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).expect("open image");
    let from = if offset < 0 {
        SeekFrom::End(offset)
    } else {
        SeekFrom::Start(offset as u64)
    };
    f.seek(from).expect("seek");
    let mut b = vec![0u8; len];
    f.read_exact(&mut b).expect("read");
    b
}

fn sfdisk_json(path: &Path) -> Value {
    let v: Value = Cmd::new("sfdisk")
        .arg("--json")
        .arg(path)
        .json()
        .expect("sfdisk --json");
    v["partitiontable"].clone()
}

fn sgdisk_verify(path: &Path) {
    let out = Cmd::new("sgdisk")
        .arg("-v")
        .arg(path)
        .read()
        .expect("sgdisk -v");
    assert!(out.contains("No problems found"), "sgdisk -v:\n{out}");
}

fn sfdisk_verify(path: &Path) {
    let out = Cmd::new("sfdisk")
        .arg("--verify")
        .arg(path)
        .run()
        .expect("sfdisk --verify");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !text.to_lowercase().contains("warning"),
        "sfdisk --verify:\n{text}"
    );
}

/// Check every partition of `t` against `partx` (libblkid's partition parser, independent of
/// sfdisk's libfdisk): number, start, sectors, type, UUID (MBR: the PARTUUID the kernel
/// derives), and flags (MBR boot byte, GPT attribute bits).
fn assert_partx_agrees(path: &Path, t: &Table) {
    let out = Cmd::new("partx")
        .args(["-g", "-r", "-o", "NR,START,SECTORS,TYPE,UUID,FLAGS"])
        .arg(path)
        .read()
        .expect("partx");
    let rows: Vec<Vec<&str>> = out.lines().map(|l| l.split(' ').collect()).collect();
    let ext = usize::from(t.extended.is_some());
    assert_eq!(rows.len(), t.partitions.len() + ext, "partx:\n{out}");
    for p in &t.partitions {
        let r = rows
            .iter()
            .find(|r| r[0] == p.number.to_string())
            .unwrap_or_else(|| panic!("partition {} not in partx:\n{out}", p.number));
        let (ty, flags) = match t.label {
            Label::Gpt => (
                p.part_type.guid.clone().unwrap_or_default().to_lowercase(),
                format!("0x{:x}", p.attributes),
            ),
            Label::Mbr => (
                format!("0x{:x}", p.part_type.mbr_byte().unwrap_or(0)),
                if p.flags.contains(&Flag::Boot) {
                    "0x80".into()
                } else {
                    "0x0".into()
                },
            ),
        };
        let want = [
            p.number.to_string(),
            p.start_lba.to_string(),
            p.size_lba.to_string(),
            ty,
            p.uuid.clone().unwrap_or_default(),
            flags,
        ];
        assert_eq!(r[..], want, "partx row for partition {}:\n{out}", p.number);
    }
}

/// Check every partition of `t` against what `sfdisk --json` reports, and against `partx`.
fn assert_sfdisk_agrees(path: &Path, t: &Table) {
    assert_partx_agrees(path, t);
    let j = sfdisk_json(path);
    let parts = j["partitions"].as_array().expect("partitions");
    match t.label {
        Label::Gpt => {
            assert_eq!(j["label"], "gpt");
            assert_eq!(j["id"].as_str().map(str::to_lowercase), t.disk_uuid.clone());
            assert_eq!(parts.len(), t.partitions.len());
        }
        Label::Mbr => {
            assert_eq!(j["label"], "dos");
            assert_eq!(j["id"].as_str(), t.disk_uuid.as_deref());
            // sfdisk also lists the extended partition.
            assert_eq!(
                parts.len(),
                t.partitions.len() + usize::from(t.extended.is_some())
            );
            if let Some(ext) = &t.extended {
                let node = format!("{}{}", path.display(), ext.number);
                let e = parts
                    .iter()
                    .find(|p| p["node"] == node.as_str())
                    .expect("extended in sfdisk");
                assert_eq!(e["start"].as_u64(), Some(ext.start_lba));
                assert_eq!(e["size"].as_u64(), Some(ext.size_lba));
                assert_eq!(e["type"], "f");
            }
        }
    }
    for p in &t.partitions {
        let node = format!("{}{}", path.display(), p.number);
        let s = parts
            .iter()
            .find(|q| q["node"] == node.as_str())
            .unwrap_or_else(|| panic!("{node} not in {j}"));
        assert_eq!(s["start"].as_u64(), Some(p.start_lba), "{node} start");
        assert_eq!(s["size"].as_u64(), Some(p.size_lba), "{node} size");
        match t.label {
            Label::Gpt => {
                assert_eq!(
                    s["type"].as_str(),
                    p.part_type.guid.as_deref(),
                    "{node} type"
                );
                assert_eq!(
                    s["uuid"].as_str().map(str::to_lowercase),
                    p.uuid.clone(),
                    "{node} uuid"
                );
                assert_eq!(s["name"].as_str(), p.name.as_deref(), "{node} name");
                let attrs = s["attrs"].as_str().unwrap_or("");
                assert_eq!(
                    attrs.contains("LegacyBIOSBootable"),
                    p.flags.contains(&Flag::LegacyBoot),
                    "{node} attrs {attrs}"
                );
                assert_eq!(
                    attrs.contains("RequiredPartition"),
                    p.flags.contains(&Flag::Required),
                    "{node} attrs {attrs}"
                );
            }
            Label::Mbr => {
                let want = format!("{:x}", p.part_type.mbr_byte().expect("mbr byte"));
                assert_eq!(s["type"].as_str(), Some(want.as_str()), "{node} type");
                assert_eq!(
                    s["bootable"].as_bool().unwrap_or(false),
                    p.flags.contains(&Flag::Boot),
                    "{node} boot"
                );
            }
        }
    }
}

fn gpt_layout() -> Layout {
    let mut l = Layout::new(Label::Gpt);
    l.partitions = vec![
        PartSpec::new("bios", "1MiB").with_type("EF02"),
        PartSpec::new("ESP", "512MiB")
            .with_type("EF00")
            .with_flag(Flag::LegacyBoot),
        PartSpec::new("swap", "256MiB")
            .with_type("8200")
            .with_flag(Flag::Required),
        PartSpec::new("lvm", "30%").with_type("8E00"),
        PartSpec::new("raid", "10%").with_type("FD00"),
        PartSpec::new("data", "100MB").with_type("0700"),
        PartSpec::new("root", "rest")
            .with_type("8300")
            .with_uuid("0fc63daf-0000-4000-8000-00000000aaaa"),
    ];
    l.disk_uuid = Some("5EED0000-1111-4222-8333-444455556666".into());
    l.seed_uuids("tests/part.rs");
    l
}

fn mbr_layout() -> Layout {
    let mut l = Layout::new(Label::Mbr);
    l.partitions = vec![
        PartSpec::new("boot", "256MiB")
            .with_type("0x83")
            .with_flag(Flag::Boot),
        PartSpec::new("swap", "128MiB").with_type("8200"),
        PartSpec::new("esp", "64MiB").with_type("0xef"),
        PartSpec::new("lvm", "200MiB").with_type("8E00"),
        PartSpec::new("raid", "20%").with_type("FD00"),
        PartSpec::new("win", "100MiB").with_type("0700"),
        PartSpec::new("home", "rest").with_type("linux"),
    ];
    l.disk_uuid = Some("0xdf0a1b2c".into());
    l
}

#[test]
fn gpt_checked_by_sgdisk_and_sfdisk() {
    let dir = diskforge_testutil::scratch_dir();
    let img = dir.path().join("gpt.img");
    let layout = gpt_layout();
    let plan = diskforge_part::plan(&layout, 2 * GIB).expect("plan");
    let t = diskforge_part::create(
        &img,
        &layout,
        &WriteOptions {
            size: Some(2 * GIB),
        },
    )
    .expect("create");
    assert_eq!(t, plan.table, "what was written is what was planned");
    sgdisk_verify(&img);
    sfdisk_verify(&img);
    assert_sfdisk_agrees(&img, &t);
    assert_eq!(
        t.by_name("root").and_then(|p| p.uuid.as_deref()),
        Some("0fc63daf-0000-4000-8000-00000000aaaa")
    );
    // Byte offsets for loop attach.
    let parts = diskforge_part::partitions(&img).expect("partitions");
    assert_eq!(parts.len(), 7);
    assert_eq!(
        (parts[1].start_bytes, parts[1].size_bytes),
        (2 * MIB, 512 * MIB)
    );
    assert!(parts.iter().all(|p| p.start_bytes % MIB == 0));
}

#[test]
fn mbr_with_logical_partitions_checked_by_sfdisk() {
    let dir = diskforge_testutil::scratch_dir();
    let img = dir.path().join("mbr.img");
    let layout = mbr_layout();
    let t =
        diskforge_part::create(&img, &layout, &WriteOptions { size: Some(GIB) }).expect("create");
    let plan = diskforge_part::plan(&layout, GIB).expect("plan");
    assert_eq!(t, plan.table);
    let numbers: Vec<(u32, PartKind)> = t.partitions.iter().map(|p| (p.number, p.kind)).collect();
    assert_eq!(
        numbers,
        [
            (1, PartKind::Primary),
            (2, PartKind::Primary),
            (3, PartKind::Primary),
            (5, PartKind::Logical),
            (6, PartKind::Logical),
            (7, PartKind::Logical),
            (8, PartKind::Logical)
        ]
    );
    sfdisk_verify(&img);
    assert_sfdisk_agrees(&img, &t);
    // Read back from scratch: offsets of logical partitions included, names unknown on MBR.
    let parts = diskforge_part::partitions(&img).expect("partitions");
    let offsets: Vec<(u64, u64)> = parts
        .iter()
        .map(|p| (p.start_bytes, p.size_bytes))
        .collect();
    let planned: Vec<(u64, u64)> = plan
        .table
        .partitions
        .iter()
        .map(|p| (p.start_bytes, p.size_bytes))
        .collect();
    assert_eq!(offsets, planned);
    assert!(parts.iter().all(|p| p.name.is_none()));
    assert_eq!(parts[3].uuid.as_deref(), Some("df0a1b2c-05"));
}

#[test]
fn mbr_logical_partitions_past_4gib() {
    // mbrman 0.6 computes EBR offsets in 32 bits; ours must land past 4 GiB correctly.
    let dir = diskforge_testutil::scratch_dir();
    let img = dir.path().join("big.img");
    let mut l = Layout::new(Label::Mbr);
    l.partitions = vec![
        PartSpec::new("a", "4GiB"),
        PartSpec::new("b", "1GiB").with_flag(Flag::Logical),
        PartSpec::new("c", "1GiB"),
        PartSpec::new("d", "rest"),
    ];
    let t = diskforge_part::create(
        &img,
        &l,
        &WriteOptions {
            size: Some(8 * GIB),
        },
    )
    .expect("create");
    assert_eq!(
        t.partitions.iter().map(|p| p.number).collect::<Vec<_>>(),
        [1, 5, 6, 7]
    );
    assert!(t.partitions[3].start_bytes > 6 * GIB);
    sfdisk_verify(&img);
    assert_sfdisk_agrees(&img, &t);
}

#[test]
fn gpt_4k_sectors_checked_by_fdisk() {
    let dir = diskforge_testutil::scratch_dir();
    let img = dir.path().join("4k.img");
    let mut l = Layout::new(Label::Gpt);
    l.sector_size = Some(4096);
    l.partitions = vec![
        PartSpec::new("ESP", "64MiB").with_type("EF00"),
        PartSpec::new("root", "rest"),
    ];
    let t = diskforge_part::create(
        &img,
        &l,
        &WriteOptions {
            size: Some(256 * MIB),
        },
    )
    .expect("create");
    assert_eq!(t.first_usable_lba, 6);
    let back = diskforge_part::read_with_sector_size(&img, 4096).expect("read");
    assert_eq!(back.partitions, t.partitions);
    // sfdisk has no --sector-size; fdisk does.
    let out = Cmd::new("fdisk")
        .args(["-b", "4096", "-l", "-o", "Device,Start,Sectors,Type-UUID"])
        .arg(&img)
        .read()
        .expect("fdisk -l");
    assert!(
        out.contains("Sector size (logical/physical): 4096 bytes"),
        "{out}"
    );
    for p in &t.partitions {
        let row: Vec<&str> = out
            .lines()
            .find(|l| l.starts_with(&format!("{}{} ", img.display(), p.number)))
            .unwrap_or_else(|| panic!("partition {} missing:\n{out}", p.number))
            .split_whitespace()
            .collect();
        let want = [
            p.start_lba.to_string(),
            p.size_lba.to_string(),
            p.part_type.guid.clone().unwrap_or_default(),
        ];
        assert_eq!(row[1..], want, "{out}");
    }
}

#[test]
fn same_seed_same_bytes() {
    let dir = diskforge_testutil::scratch_dir();
    let mut tables = Vec::new();
    for name in ["a.img", "b.img"] {
        let img = dir.path().join(name);
        diskforge_part::create(&img, &gpt_layout(), &WriteOptions { size: Some(GIB) })
            .expect("create");
        // The table lives in the first MiB and the last 33 sectors.
        let mut table = bytes_at(&img, 0, MIB as usize);
        table.extend_from_slice(&bytes_at(&img, -33 * 512, 33 * 512));
        tables.push(table);
    }
    assert!(
        tables[0] == tables[1],
        "two images from one seeded layout differ"
    );
}

#[test]
fn gpt_keeps_boot_code_and_mbr_wipes_gpt() {
    let dir = diskforge_testutil::scratch_dir();
    let img = dir.path().join("switch.img");
    diskforge_part::create(&img, &mbr_layout(), &WriteOptions { size: Some(GIB) }).expect("mbr");
    // Pretend a boot loader was installed in the MBR's code area.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .expect("open");
    std::io::Write::write_all(&mut f, &[0xeb; 440]).expect("write boot code");
    drop(f);
    let t = diskforge_part::create(&img, &gpt_layout(), &WriteOptions::default())
        .expect("gpt over mbr");
    assert_eq!(t.label, Label::Gpt);
    let bytes = bytes_at(&img, 0, 512);
    assert!(bytes[..440].iter().all(|b| *b == 0xeb), "boot code kept");
    assert_eq!(bytes[446 + 4], 0xee, "protective entry");
    sgdisk_verify(&img);
    // And back to MBR: both GPT headers go, so sfdisk and blkid see a DOS table.
    let t = diskforge_part::create(&img, &mbr_layout(), &WriteOptions::default())
        .expect("mbr over gpt");
    assert_eq!(sfdisk_json(&img)["label"], "dos");
    assert_sfdisk_agrees(&img, &t);
    let pttype = Cmd::new("blkid")
        .args(["-p", "-o", "value", "-s", "PTTYPE"])
        .arg(&img)
        .read()
        .expect("blkid");
    assert_eq!(pttype, "dos");
}

#[test]
fn pmbr_boot_flag() {
    let dir = diskforge_testutil::scratch_dir();
    let img = dir.path().join("pmbr.img");
    let mut l = gpt_layout();
    l.pmbr_boot = true;
    let t = diskforge_part::create(&img, &l, &WriteOptions { size: Some(GIB) }).expect("create");
    assert!(t.pmbr_boot);
    assert_eq!(bytes_at(&img, 446, 1), [0x80]);
    sgdisk_verify(&img);
}

#[test]
fn read_errors() {
    let dir = diskforge_testutil::scratch_dir();
    let img = dir.path().join("blank.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).expect("write");
    let err = diskforge_part::read(&img).expect_err("blank");
    assert!(
        matches!(err, diskforge_part::Error::NoTable { .. }),
        "{err}"
    );
    // A protective MBR whose GPT is gone.
    let mut bytes = vec![0u8; 1 << 20];
    bytes[446 + 4] = 0xee;
    bytes[446 + 8] = 1;
    bytes[510] = 0x55;
    bytes[511] = 0xaa;
    std::fs::write(&img, &bytes).expect("write");
    let err = diskforge_part::read(&img).expect_err("no gpt");
    assert!(
        err.to_string()
            .contains("protective MBR (type 0xee) but no GPT header"),
        "{err}"
    );
    // A GPT header with 256-byte entries (valid, but we refuse rather than mis-read).
    let gpt = dir.path().join("gpt.img");
    diskforge_part::create(&gpt, &gpt_layout(), &WriteOptions { size: Some(GIB) }).expect("create");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&gpt)
        .expect("open");
    use std::io::{Seek, SeekFrom, Write};
    f.seek(SeekFrom::Start(512 + 84))
        .and_then(|_| f.write_all(&256u32.to_le_bytes()))
        .expect("poke");
    drop(f);
    let err = diskforge_part::read(&gpt).expect_err("entry size");
    assert!(
        err.to_string()
            .contains("primary GPT header has 128 entries of 256 bytes"),
        "{err}"
    );
    // Missing files name the path.
    let err = diskforge_part::read(&dir.path().join("missing.img")).expect_err("missing");
    assert!(err.to_string().ends_with("missing.img: opening"), "{err}");
    // A plan made for another size is refused.
    let p = diskforge_part::plan(&gpt_layout(), 2 * GIB).expect("plan");
    let err = diskforge_part::apply(&gpt, &p).expect_err("size");
    assert!(
        err.to_string()
            .contains("the plan is for 2147483648 bytes but the disk has 1073741824"),
        "{err}"
    );
    // Hand-edited plans that no planning function makes are refused before writing.
    let good = diskforge_part::plan(&gpt_layout(), GIB).expect("plan");
    let mut bad = good.clone();
    bad.table.partitions[1].start_lba = bad.table.partitions[0].start_lba;
    let err = diskforge_part::apply(&gpt, &bad).expect_err("overlap");
    assert!(
        err.to_string()
            .contains("not a valid plan: partition 2 has an impossible extent"),
        "{err}"
    );
    let mut bad = good.clone();
    bad.table.partitions[0].end_lba = bad.table.partitions[1].start_lba;
    bad.table.partitions[0].size_lba =
        bad.table.partitions[0].end_lba - bad.table.partitions[0].start_lba + 1;
    let err = diskforge_part::apply(&gpt, &bad).expect_err("overlap");
    assert!(
        err.to_string()
            .contains("not a valid plan: partitions 1 and 2 overlap"),
        "{err}"
    );
    let mut bad = good;
    bad.table.partitions[6].end_lba += 1 << 30;
    bad.table.partitions[6].size_lba += 1 << 30;
    let err = diskforge_part::apply(&gpt, &bad).expect_err("past the end");
    assert!(
        err.to_string()
            .contains("not a valid plan: partition 7 has an impossible extent"),
        "{err}"
    );
}

#[test]
fn gpt_add_delete_set_checked_by_sgdisk_and_sfdisk() {
    let dir = diskforge_testutil::scratch_dir();
    let img = dir.path().join("modify.img");
    let mut l = Layout::new(Label::Gpt);
    l.partitions = vec![
        PartSpec::new("ESP", "100MiB").with_type("EF00"),
        PartSpec::new("root", "200MiB").with_type("8304"),
    ];
    l.seed_uuids("modify");
    let t0 = diskforge_part::create(&img, &l, &WriteOptions { size: Some(GIB) }).expect("create");

    let add = [
        PartSpec::new("home", "50%").with_type("home"),
        PartSpec::new("data", "rest"),
    ];
    let plan = diskforge_part::plan_add(&t0, &add, None).expect("plan add");
    let t1 = diskforge_part::apply(&img, &plan).expect("add");
    assert_eq!(t1.partitions.len(), 4);
    assert_eq!(
        t1.partitions[..2],
        t0.partitions[..],
        "existing partitions untouched"
    );
    assert_eq!(t1.disk_uuid, t0.disk_uuid);
    assert_eq!(t1.partitions[2].start_bytes, 301 * MIB);
    sgdisk_verify(&img);
    assert_sfdisk_agrees(&img, &t1);

    let change = diskforge_part::PartChange {
        name: Some("var".into()),
        type_code: Some("8310".into()),
        uuid: Some("12345678-1234-4234-8234-123456789abc".into()),
        flags: Some(vec![Flag::Required, Flag::Boot]),
    };
    let t2 = diskforge_part::apply(
        &img,
        &diskforge_part::plan_set(&t1, 3, &change).expect("set"),
    )
    .expect("apply set");
    let p = t2.by_number(3).expect("partition 3");
    assert_eq!(p.name.as_deref(), Some("var"));
    assert_eq!(p.part_type.code.as_deref(), Some("8310"));
    assert_eq!(p.flags, [Flag::Required, Flag::LegacyBoot]);
    sgdisk_verify(&img);
    assert_sfdisk_agrees(&img, &t2);

    let t3 = diskforge_part::apply(
        &img,
        &diskforge_part::plan_delete(&t2, &[1]).expect("delete"),
    )
    .expect("apply delete");
    let names: Vec<(u32, Option<&str>)> = t3
        .partitions
        .iter()
        .map(|p| (p.number, p.name.as_deref()))
        .collect();
    assert_eq!(
        names,
        [(1, Some("root")), (2, Some("var")), (3, Some("data"))],
        "renumbered compactly"
    );
    sgdisk_verify(&img);
    assert_sfdisk_agrees(&img, &t3);

    let err = diskforge_part::plan_delete(&t3, &[9]).expect_err("missing");
    assert!(
        matches!(err, diskforge_part::Error::NoSuchPartition { number: 9 }),
        "{err}"
    );
    let err =
        diskforge_part::plan_add(&t3, &[PartSpec::new("more", "1MiB")], None).expect_err("full");
    assert!(
        err.to_string()
            .starts_with("partition 4 (more): size=\"1MiB\": no space left")
            || err
                .to_string()
                .starts_with("partition 4 (more): size=\"1MiB\": does not fit"),
        "{err}"
    );
}

#[test]
fn mbr_add_and_delete_logical_checked_by_sfdisk() {
    let dir = diskforge_testutil::scratch_dir();
    let img = dir.path().join("mbr-modify.img");
    let mut l = Layout::new(Label::Mbr);
    l.partitions = vec![
        PartSpec::new("a", "100MiB").with_flag(Flag::Boot),
        PartSpec::new("b", "100MiB").with_type("8200"),
    ];
    l.disk_uuid = Some("0x0badf00d".into());
    let t0 = diskforge_part::create(&img, &l, &WriteOptions { size: Some(GIB) }).expect("create");

    // Two free slots, four new partitions: one primary, the extended, three logical.
    let add: Vec<PartSpec> = ["c", "d", "e", "f"]
        .iter()
        .map(|n| PartSpec::new(*n, "50MiB"))
        .collect();
    let t1 = diskforge_part::apply(
        &img,
        &diskforge_part::plan_add(&t0, &add, None).expect("plan"),
    )
    .expect("add");
    let kinds: Vec<(u32, PartKind)> = t1.partitions.iter().map(|p| (p.number, p.kind)).collect();
    assert_eq!(
        kinds,
        [
            (1, PartKind::Primary),
            (2, PartKind::Primary),
            (3, PartKind::Primary),
            (5, PartKind::Logical),
            (6, PartKind::Logical),
            (7, PartKind::Logical)
        ]
    );
    assert_eq!(t1.extended.as_ref().map(|e| e.number), Some(4));
    sfdisk_verify(&img);
    assert_sfdisk_agrees(&img, &t1);

    // The extended partition ends the used space: a new partition is appended as logical 8.
    let t2 = diskforge_part::apply(
        &img,
        &diskforge_part::plan_add(&t1, &[PartSpec::new("g", "rest")], None).expect("plan"),
    )
    .expect("append");
    assert_eq!(
        t2.partitions.last().map(|p| (p.number, p.kind)),
        Some((8, PartKind::Logical))
    );
    sfdisk_verify(&img);
    assert_sfdisk_agrees(&img, &t2);

    // Removing logical 6 renumbers 7 and 8 along the chain.
    let t3 = diskforge_part::apply(&img, &diskforge_part::plan_delete(&t2, &[6]).expect("plan"))
        .expect("delete");
    assert_eq!(
        t3.partitions.iter().map(|p| p.number).collect::<Vec<_>>(),
        [1, 2, 3, 5, 6, 7]
    );
    sfdisk_verify(&img);
    assert_sfdisk_agrees(&img, &t3);
    // Removing the first logical partition moves the extended partition's start to the next EBR.
    let t3 = diskforge_part::apply(&img, &diskforge_part::plan_delete(&t3, &[5]).expect("plan"))
        .expect("delete first");
    assert_eq!(
        t3.extended.as_ref().map(|e| e.start_lba),
        t3.partitions[3].ebr_lba
    );
    sfdisk_verify(&img);
    assert_sfdisk_agrees(&img, &t3);
    // Removing every logical partition removes the extended one too.
    let t4 = diskforge_part::apply(
        &img,
        &diskforge_part::plan_delete(&t3, &[5, 6]).expect("plan"),
    )
    .expect("delete");
    assert!(t4.extended.is_none());
    assert_sfdisk_agrees(&img, &t4);

    let err = diskforge_part::plan_set(
        &t4,
        1,
        &diskforge_part::PartChange {
            name: Some("x".into()),
            ..Default::default()
        },
    )
    .expect_err("name on mbr");
    assert!(
        err.to_string()
            .starts_with("partition 1 (a): name=\"x\": MBR partitions have no names"),
        "{err}"
    );
}

#[test]
fn reads_tables_made_by_sfdisk_and_sgdisk() {
    let dir = diskforge_testutil::scratch_dir();
    // MBR with an extended (type 5) and logical partitions, written by sfdisk.
    let img = dir.path().join("sfdisk.img");
    diskforge_part::ensure_size(&img, 512 * MIB).expect("size");
    let script = "label: dos\nlabel-id: 0x11223344\n\nsize=64MiB, type=83, bootable\nsize=64MiB, type=82\n\
                  type=5\nsize=32MiB, type=83\nsize=32MiB, type=8e\n";
    Cmd::new("sfdisk")
        .arg("--no-reread")
        .arg("--no-tell-kernel")
        .arg(&img)
        .stdin_bytes(script)
        .run()
        .expect("sfdisk");
    let t = diskforge_part::read(&img).expect("read");
    assert_eq!(
        t.partitions.iter().map(|p| p.number).collect::<Vec<_>>(),
        [1, 2, 5, 6]
    );
    assert_eq!(
        t.extended.as_ref().map(|e| e.type_byte.as_str()),
        Some("0x05")
    );
    assert_sfdisk_agrees_except_ext_type(&img, &t);
    // Append a logical partition to sfdisk's chain; sfdisk still agrees.
    let t2 = diskforge_part::apply(
        &img,
        &diskforge_part::plan_add(&t, &[PartSpec::new("x", "16MiB")], None).expect("plan"),
    )
    .expect("append");
    assert_eq!(t2.partitions.last().map(|p| p.number), Some(7));
    sfdisk_verify(&img);
    assert_sfdisk_agrees_except_ext_type(&img, &t2);

    // GPT with a gap in the entry numbers, written by sgdisk.
    let img = dir.path().join("sgdisk.img");
    diskforge_part::ensure_size(&img, 256 * MIB).expect("size");
    Cmd::new("sgdisk")
        .args([
            "-n", "1:0:+32M", "-t", "1:ef00", "-c", "1:EFI", "-n", "3:0:+64M", "-t", "3:8e00",
            "-A", "3:set:2",
        ])
        .arg(&img)
        .run()
        .expect("sgdisk");
    let t = diskforge_part::read(&img).expect("read");
    assert_eq!(
        t.partitions.iter().map(|p| p.number).collect::<Vec<_>>(),
        [1, 3]
    );
    assert_eq!(t.partitions[1].flags, [Flag::LegacyBoot]);
    assert_sfdisk_agrees(&img, &t);
}

/// [`assert_sfdisk_agrees`] for tables whose extended partition is not our 0x0f.
fn assert_sfdisk_agrees_except_ext_type(path: &Path, t: &Table) {
    let mut t = t.clone();
    let ext = t.extended.take();
    let j = sfdisk_json(path);
    if let Some(e) = ext {
        let node = format!("{}{}", path.display(), e.number);
        let parts = j["partitions"].as_array().expect("partitions");
        let s = parts
            .iter()
            .find(|p| p["node"] == node.as_str())
            .expect("extended");
        assert_eq!(
            (s["start"].as_u64(), s["size"].as_u64()),
            (Some(e.start_lba), Some(e.size_lba))
        );
        // Compare the rest without the extended entry.
        let mut others = t.clone();
        others.partitions.retain(|p| p.number != e.number);
        for p in &others.partitions {
            let node = format!("{}{}", path.display(), p.number);
            let s = parts
                .iter()
                .find(|q| q["node"] == node.as_str())
                .expect("partition");
            assert_eq!(
                (s["start"].as_u64(), s["size"].as_u64()),
                (Some(p.start_lba), Some(p.size_lba)),
                "{node}"
            );
            let want = format!("{:x}", p.part_type.mbr_byte().expect("mbr byte"));
            assert_eq!(s["type"].as_str(), Some(want.as_str()), "{node}");
        }
    } else {
        assert_sfdisk_agrees(path, &t);
    }
}

/// What reading a table must give after one byte of a field is changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MustRead {
    /// An error: the table cannot be trusted and the reader has no good copy to use.
    Error,
    /// The intact table: the field is under a CRC and has a good twin (GPT keeps its header
    /// twice), or nothing reads it (CHS addresses, unused EBR entries).
    Intact,
    /// An error or the intact table, never a different one.
    ErrorOrIntact,
    /// An MBR field no checksum guards: one changed byte can make another valid table
    /// (another type, size or chain). Whatever is read must hold together ([`consistent`]).
    Consistent,
}

/// Why `t` does not hold together, if it does not: every partition non-empty and inside the
/// usable area (logical ones inside the extended partition), none overlapping.
fn consistent(t: &Table) -> Result<(), &'static str> {
    let inside = |start: u64, size: u64, lo: u64, hi: u64| {
        start >= lo && start.checked_add(size).is_some_and(|end| end <= hi)
    };
    let usable = (t.first_usable_lba, t.last_usable_lba + 1);
    let mut top: Vec<(u64, u64)> = Vec::new();
    let mut logical: Vec<(u64, u64)> = Vec::new();
    if let Some(e) = &t.extended {
        if !inside(e.start_lba, e.size_lba, usable.0, usable.1) {
            return Err("extended partition outside the disk's usable area");
        }
        top.push((e.start_lba, e.start_lba + e.size_lba));
    }
    for p in &t.partitions {
        if p.size_lba == 0 {
            return Err("empty partition");
        }
        let (lo, hi, spans) = match (p.kind, &t.extended) {
            (PartKind::Logical, Some(e)) => (e.start_lba, e.start_lba + e.size_lba, &mut logical),
            (PartKind::Logical, None) => return Err("logical partition without extended"),
            _ => (usable.0, usable.1, &mut top),
        };
        if !inside(p.start_lba, p.size_lba, lo, hi) {
            return Err("partition outside its area");
        }
        spans.push((p.start_lba, p.start_lba + p.size_lba));
    }
    for s in [&mut top, &mut logical] {
        s.sort_unstable();
        if s.windows(2).any(|w| w[0].1 > w[1].0) {
            return Err("overlapping partitions");
        }
    }
    Ok(())
}

/// What one poked image read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Error,
    Intact,
    Different,
    Inconsistent(&'static str),
    Panic,
}

/// One field of a table to damage.
struct Case<'a> {
    field: String,
    image: &'a Path,
    bytes: std::ops::Range<u64>,
    must: MustRead,
    /// Inconsistent tables the reader still accepts from this field (known gaps in
    /// diskforge-part's MBR reader). Each must still occur — a fixed gap fails the test
    /// until it is removed here — and no other inconsistency may.
    known_gaps: &'static [&'static str],
}

/// A [`Case`] without known gaps.
fn case<'a>(field: &str, image: &'a Path, bytes: std::ops::Range<u64>, must: MustRead) -> Case<'a> {
    Case {
        field: field.to_owned(),
        image,
        bytes,
        must,
        known_gaps: &[],
    }
}

/// Damaged tables: change each byte of every field of the GPT headers and entries and of the
/// MBR and EBR entries, one at a time (to 0x00, 0xff, 0x80 and the byte with its low bit
/// flipped), and read. Per field, the read must give what [`MustRead`] says; none may panic.
#[test]
fn corrupt_tables_are_refused_recovered_or_consistent() {
    use MustRead::*;
    use std::io::{Seek, SeekFrom, Write};
    let dir = diskforge_testutil::scratch_dir();
    let gpt = dir.path().join("gpt.img");
    let mut l = Layout::new(Label::Gpt);
    l.partitions = vec![PartSpec::new("a", "1MiB"), PartSpec::new("b", "rest")];
    let size = 4 * MIB;
    let tg = diskforge_part::create(&gpt, &l, &WriteOptions { size: Some(size) }).expect("gpt");
    let mbr = dir.path().join("mbr.img");
    let mut l = Layout::new(Label::Mbr);
    l.partitions = ["a", "b", "c"]
        .iter()
        .map(|n| PartSpec::new(*n, "1MiB").with_flag(Flag::Logical))
        .collect();
    let tm = diskforge_part::create(
        &mbr,
        &l,
        &WriteOptions {
            size: Some(8 * MIB),
        },
    )
    .expect("mbr");
    let intact_gpt = diskforge_part::read(&gpt).expect("intact gpt");
    let intact_mbr = diskforge_part::read(&mbr).expect("intact mbr");
    assert_eq!(intact_gpt.partitions, tg.partitions);
    assert_eq!(consistent(&intact_gpt), Ok(()));
    assert_eq!(consistent(&intact_mbr), Ok(()));
    assert_eq!(
        (intact_gpt.partitions.len(), intact_mbr.partitions.len()),
        (2, 3)
    );

    let backup = size - 512;
    let mut cases = vec![
        // Primary GPT header (LBA 1). Without its signature only the protective MBR is left,
        // which is an error. Entry count and size are checked before the CRC (on both
        // headers): a size other than 128 is refused, a count is refused when too large.
        // Any other change breaks the header CRC and the backup header is read instead.
        case("primary GPT signature", &gpt, 512..520, Error),
        case("primary GPT revision..entries LBA", &gpt, 520..592, Intact),
        case("primary GPT entry count", &gpt, 592..596, ErrorOrIntact),
        case("primary GPT entry size", &gpt, 596..600, Error),
        case("primary GPT entries CRC", &gpt, 600..604, Intact),
        // The primary entries (LBA 2): the entries CRC no longer matches — refused.
        case("primary GPT entry a", &gpt, 1024..1152, Error),
        case("primary GPT entry b", &gpt, 1152..1280, Error),
        // The backup header: the primary is intact and is what is read; its entry count
        // and size are checked all the same.
        case("backup GPT header", &gpt, backup..backup + 80, Intact),
        case(
            "backup GPT entry count",
            &gpt,
            backup + 80..backup + 84,
            ErrorOrIntact,
        ),
        case(
            "backup GPT entry size",
            &gpt,
            backup + 84..backup + 88,
            Error,
        ),
        case(
            "backup GPT entries CRC",
            &gpt,
            backup + 88..backup + 92,
            Intact,
        ),
        // The protective MBR's type byte: GPT is found at LBA 1 first.
        case("protective MBR type", &gpt, 450..451, Intact),
    ];
    // MBR: the extended partition's entry field by field (0x80 on an extended partition is
    // not kept, other boot bytes are invalid), the three empty entries (one byte cannot make
    // both a type and a size), the signature.
    const OUTSIDE: &[&str] = &["extended partition outside the disk's usable area"];
    for (field, r, must, known_gaps) in [
        ("boot flag", 0..1, ErrorOrIntact, &[][..]),
        ("CHS start", 1..4, Intact, &[]),
        ("type", 4..5, Consistent, &[]),
        ("CHS end", 5..8, Intact, &[]),
        // Known gaps: an extended partition at LBA 0 (over the MBR) or past the disk's end
        // is accepted.
        ("start LBA", 8..12, Consistent, OUTSIDE),
        ("sectors", 12..16, Consistent, OUTSIDE),
    ] {
        cases.push(Case {
            known_gaps,
            ..case(
                &format!("MBR extended entry {field}"),
                &mbr,
                446 + r.start..446 + r.end,
                must,
            )
        });
    }
    cases.push(Case {
        // Known gap: a type byte on an entry of 0 sectors is read as an empty partition at
        // LBA 0 (sfdisk and the kernel treat 0 sectors as unused).
        known_gaps: &["empty partition"],
        ..case("MBR empty entries", &mbr, 462..510, ErrorOrIntact)
    });
    cases.push(case("MBR boot signature", &mbr, 510..512, Error));
    // Every EBR: its logical partition's entry, the link to the next EBR (the last one's is
    // empty, and one byte cannot make both a type and a start), the unused entries, the
    // signature (without it the first EBR means an empty extended partition, a later one
    // a broken chain).
    for (i, p) in tm.partitions.iter().enumerate() {
        let ebr = p.ebr_lba.expect("logical") * 512;
        let n = p.number;
        let last = i + 1 == tm.partitions.len();
        cases.push(case(
            &format!("EBR {n} entry"),
            &mbr,
            ebr + 446..ebr + 462,
            Consistent,
        ));
        let link = if last { Intact } else { Consistent };
        cases.push(case(
            &format!("EBR {n} link"),
            &mbr,
            ebr + 462..ebr + 478,
            link,
        ));
        cases.push(case(
            &format!("EBR {n} unused entries"),
            &mbr,
            ebr + 478..ebr + 510,
            Intact,
        ));
        let signature = if i == 0 { Consistent } else { Error };
        cases.push(case(
            &format!("EBR {n} signature"),
            &mbr,
            ebr + 510..ebr + 512,
            signature,
        ));
    }

    let mut wrong = Vec::new();
    let mut reads = 0;
    for c in &cases {
        let intact = if c.image == gpt.as_path() {
            &intact_gpt
        } else {
            &intact_mbr
        };
        let bytes = std::fs::read(c.image).expect("read image");
        let mut gaps_seen = std::collections::BTreeSet::new();
        for off in c.bytes.clone() {
            let orig = bytes[off as usize];
            for v in [0x00u8, 0xff, 0x80, orig ^ 0x01] {
                if v == orig {
                    continue;
                }
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(c.image)
                    .expect("open");
                f.seek(SeekFrom::Start(off))
                    .and_then(|_| f.write_all(&[v]))
                    .expect("poke");
                let got = std::panic::catch_unwind(|| diskforge_part::read(c.image));
                f.seek(SeekFrom::Start(off))
                    .and_then(|_| f.write_all(&[orig]))
                    .expect("restore");
                reads += 1;
                let outcome = match &got {
                    Err(_) => Outcome::Panic,
                    Ok(Err(_)) => Outcome::Error,
                    Ok(Ok(t)) if t == intact => Outcome::Intact,
                    Ok(Ok(t)) => {
                        consistent(t).map_or_else(Outcome::Inconsistent, |()| Outcome::Different)
                    }
                };
                let ok = match (c.must, outcome) {
                    (_, Outcome::Panic) => false,
                    (_, Outcome::Inconsistent(why)) if c.known_gaps.contains(&why) => {
                        gaps_seen.insert(why);
                        true
                    }
                    (Error, o) => o == Outcome::Error,
                    (Intact, o) => o == Outcome::Intact,
                    (ErrorOrIntact, o) => matches!(o, Outcome::Error | Outcome::Intact),
                    (Consistent, o) => !matches!(o, Outcome::Inconsistent(_)),
                };
                if !ok {
                    let shown = match &got {
                        Ok(Err(e)) => e.to_string(),
                        Ok(Ok(t)) => format!("{:?}", t.partitions),
                        Err(_) => "panic".into(),
                    };
                    wrong.push(format!(
                        "{}: byte {off} = {v:#04x} read {outcome:?}, must be {:?}: {shown}",
                        c.field, c.must
                    ));
                }
            }
        }
        for gap in c.known_gaps.iter().filter(|g| !gaps_seen.contains(*g)) {
            wrong.push(format!(
                "{}: known gap {gap:?} no longer occurs: remove it from known_gaps",
                c.field
            ));
        }
    }
    assert!(reads > 1500, "only {reads} reads");
    assert!(
        wrong.is_empty(),
        "{} wrong reads of {reads}:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    // Every poke was undone.
    assert_eq!(diskforge_part::read(&gpt).expect("intact"), intact_gpt);
    assert_eq!(diskforge_part::read(&mbr).expect("intact"), intact_mbr);
}

/// Block devices: a loop device over an image, with 512- and 4096-byte logical sectors
/// (`BLKSSZGET` decides the sector size `read` uses; plans for the other size are refused).
#[test]
#[ignore = "needs root"]
fn block_devices_with_512_and_4096_byte_sectors() {
    diskforge_testutil::require_root();
    use diskforge_loop::{AttachOptions, LoopDevice};
    let dir = diskforge_testutil::scratch_dir();
    for ss in [512u32, 4096] {
        let img = dir.path().join(format!("dev{ss}.img"));
        diskforge_part::ensure_size(&img, 64 * MIB).expect("size");
        let dev = LoopDevice::attach(&img, &AttachOptions::new().block_size(ss)).expect("attach");
        let res = std::panic::catch_unwind(|| {
            let mut l = Layout::new(Label::Gpt);
            l.partitions = vec![PartSpec::new("a", "16MiB"), PartSpec::new("b", "rest")];
            // The wrong sector size is refused before anything is written.
            l.sector_size = Some(if ss == 512 { 4096 } else { 512 });
            let err =
                diskforge_part::create(dev.path(), &l, &WriteOptions::default()).expect_err("ss");
            assert!(
                err.to_string()
                    .contains(&format!("device has {ss}-byte sectors")),
                "{err}"
            );
            l.sector_size = Some(ss);
            let t =
                diskforge_part::create(dev.path(), &l, &WriteOptions::default()).expect("create");
            assert_eq!(t.sector_size, ss);
            // Read back through the device (sector size from BLKSSZGET) and the file.
            assert_eq!(
                diskforge_part::read(dev.path())
                    .expect("read dev")
                    .partitions,
                t.partitions
            );
            let via_file = diskforge_part::read_with_sector_size(&img, ss).expect("read file");
            assert_eq!(via_file.partitions, t.partitions);
            let err = diskforge_part::create(dev.path(), &l, &WriteOptions { size: Some(GIB) })
                .expect_err("resize");
            assert!(
                err.to_string().contains("cannot resize a block device"),
                "{err}"
            );
        });
        dev.detach().expect("detach");
        if let Err(p) = res {
            std::panic::resume_unwind(p);
        }
    }
    let st = diskforge_testutil::KernelState::capture();
    assert!(
        st.loops_under(dir.path()).is_empty(),
        "{:?}",
        st.loops_under(dir.path())
    );
}

#[test]
fn disks_past_2tib() {
    let dir = diskforge_testutil::scratch_dir();
    let img = dir.path().join("3t.img");
    // GPT: the protective MBR entry saturates at 0xffffffff sectors; sgdisk is happy.
    let mut l = Layout::new(Label::Gpt);
    l.partitions = vec![PartSpec::new("a", "1TiB"), PartSpec::new("b", "rest")];
    let t = diskforge_part::create(
        &img,
        &l,
        &WriteOptions {
            size: Some(3 << 40),
        },
    )
    .expect("gpt");
    assert!(t.partitions[1].start_bytes + t.partitions[1].size_bytes > 2 << 40);
    assert_eq!(bytes_at(&img, 446 + 12, 4), [0xff; 4]);
    sgdisk_verify(&img);
    assert_sfdisk_agrees(&img, &t);
    // MBR: nothing may end past 2^32 sectors; `rest` stops there, a fixed size errors.
    let mut l = Layout::new(Label::Mbr);
    l.partitions = vec![PartSpec::new("a", "1TiB"), PartSpec::new("b", "rest")];
    let t = diskforge_part::create(&img, &l, &WriteOptions::default()).expect("mbr");
    assert!(t.partitions[1].end_lba < u64::from(u32::MAX));
    assert_sfdisk_agrees(&img, &t);
    l.partitions[1].size = "1.5TiB".into();
    let err = diskforge_part::plan(&l, 3 << 40).expect_err("too big for mbr");
    assert!(
        err.to_string()
            .starts_with("partition 2 (b): size=\"1.5TiB\": does not fit"),
        "{err}"
    );
}

/// `diskforge_loop::read_partition_table` (the loop crate's minimal reader, used where the
/// kernel makes no `pN` nodes) finds the logical partitions of an MBR table that `sfdisk`
/// wrote, numbered and placed as `sfdisk --json` reports them.
#[test]
fn loop_reader_sees_logical_partitions_like_sfdisk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("logical.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(64 * MIB))
        .expect("image");
    Cmd::new("sfdisk")
        .arg(&img)
        .stdin_bytes(
            "label: dos\n,8M,L\n,40M,E\n,6M,L\n,4M,83\n,10M,L\n"
                .as_bytes()
                .to_vec(),
        )
        .run()
        .expect("sfdisk");
    let v: Value = Cmd::new("sfdisk")
        .arg("--json")
        .arg(&img)
        .json()
        .expect("sfdisk --json");
    let want: Vec<(u32, u64, u64)> = v["partitiontable"]["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| {
            let node = p["node"].as_str().unwrap_or_default();
            let n = node.rsplit_once(".img").map_or("0", |(_, n)| n);
            (
                n.parse().unwrap_or(0),
                p["start"].as_u64().unwrap_or(0) * 512,
                p["size"].as_u64().unwrap_or(0) * 512,
            )
        })
        .collect();
    let got: Vec<(u32, u64, u64)> = diskforge_loop::read_partition_table(&img)
        .expect("read")
        .iter()
        .map(|e| (e.number, e.start, e.size))
        .collect();
    assert_eq!(want.len(), 5, "{want:?}");
    // sfdisk lists the extended container with its full size, as we do.
    assert_eq!(got, want);
}
