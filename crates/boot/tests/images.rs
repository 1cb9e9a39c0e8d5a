//! End to end, offline and as the image builder does it: a busybox root tree, a block-device
//! plan of one of diskforge-blockdev's example configs (root = the tree), `grub.cfg` and
//! `BOOTX64.EFI` written into the tree, the disk created offline, GRUB for BIOS written into
//! the image — then checked with independent tools (`sgdisk -v`, `sfdisk --json`, `e2fsck
//! -fn` and `fsck.vfat -n` on each partition's bytes), compared sector by sector with the
//! image before `install_bios` (only boot code and the embedding area may change), and
//! booted under QEMU (TCG unless a KVM probe passes): SeaBIOS for every layout, OVMF for
//! the ones with an ESP, each to the marker `/sbin/init` prints. These tests run one at a
//! time (a boot competes for the same cores as a build).
//!
//! Also: the refusals (MBR gap too small, GPT without a BIOS boot partition, no partition
//! table) with their messages, and the busybox tree and initramfs reproducible with
//! `SOURCE_DATE_EPOCH`. No root needed. Not covered: Secure Boot, real hardware, 4K-sector
//! disks.

// Helpers outside #[test] fns: a failed unwrap is the test failing, with its message.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use diskforge_blockdev::{
    CreateOptions, Device, DiskPlan, FsPlan, PartPlan, Plan, PlanOptions, TablePlan, create,
    plan_text,
};
use diskforge_boot::{
    BiosReport, BusyboxOptions, EmbedArea, Error, GrubConfig, RootReport, bios, busybox_root,
    install_bios, install_efi, write_grub_cfg,
};
use diskforge_cmd::Cmd;
use diskforge_vm::{BootReport, Drive, Expect, Firmware, Format, Vm, boot_to_marker};

const MARKER: &str = "diskforge-boot-test-up";
const EPOCH: u64 = 1_700_000_000;
/// Generous: a TCG boot takes 15-30 s here on a loaded 2-core host; CI machines are shared.
const TIMEOUT: Duration = Duration::from_secs(240);
/// One image test (build, checks, boots) at a time: they compete for the same cores, and a
/// boot's time is only worth printing when nothing else of ours runs beside it.
static HEAVY: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

fn example(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../blockdev/examples/configs")
        .join(format!("{name}.yaml"));
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn busybox_opts() -> BusyboxOptions {
    BusyboxOptions {
        marker: MARKER.into(),
        poweroff: true,
        source_date_epoch: Some(EPOCH),
        ..BusyboxOptions::default()
    }
}

struct Built {
    _dir: tempfile::TempDir,
    plan: Plan,
    grub: GrubConfig,
    root: RootReport,
    bios: BiosReport,
    image: PathBuf,
    before: PathBuf,
}

impl Built {
    fn fs(&self, mount_point: &str) -> Option<&FsPlan> {
        self.plan
            .filesystems
            .iter()
            .find(|f| f.mount_point.as_deref() == Some(mount_point))
    }
}

/// Tree → plan → grub.cfg (+ EFI) → create → install_bios, keeping a copy of the image as
/// it was before install_bios.
fn build(config: &str, size_mib: u64) -> Built {
    build_with(config, size_mib, None)
}

/// [`build`] with dib's `FS_TYPE` for `mkfs_root` (its module joins the initramfs).
fn build_with(config: &str, size_mib: u64, fs_type: Option<&str>) -> Built {
    let dir = tempfile::Builder::new()
        .prefix("diskforge-boot-")
        .tempdir()
        .unwrap();
    let tree = dir.path().join("root");
    let opts = BusyboxOptions {
        extra_modules: fs_type.iter().map(|t| (*t).to_owned()).collect(),
        ..busybox_opts()
    };
    let root = busybox_root(&tree, &opts).unwrap();
    let text = example(config);
    let mut popts = PlanOptions {
        image_size: Some(size_mib << 20),
        image_dir: dir.path().join("images"),
        root: Some(tree.clone()),
        uuid_seed: Some(format!("diskforge-boot-{config}")),
        source_date_epoch: Some(EPOCH),
        root_fs_type: fs_type.map(str::to_owned),
        ..PlanOptions::default()
    };
    let cfg = diskforge_blockdev::load(&text, &popts).unwrap();
    popts.content = diskforge_blockdev::measure_tree(&tree, &cfg).unwrap();
    let plan = plan_text(&text, &popts).unwrap();
    let root_fs = plan
        .filesystems
        .iter()
        .find(|f| f.mount_point.as_deref() == Some("/"))
        .unwrap()
        .clone();
    let grub = GrubConfig {
        source_date_epoch: Some(EPOCH),
        ..GrubConfig::for_root_fs(
            root.kernel.clone(),
            Some(root.initrd.clone()),
            &root_fs,
            "panic=-1",
        )
    };
    let cfg_path = write_grub_cfg(&tree, &grub).unwrap();
    assert_eq!(cfg_path, tree.join("boot/grub/grub.cfg"));
    let has_esp = plan
        .filesystems
        .iter()
        .any(|f| f.mount_point.as_deref() == Some("/boot/efi"));
    if has_esp {
        let efi = install_efi(&tree.join("boot/efi"), &grub).unwrap();
        assert!(efi.bytes > 100_000, "{efi:?}");
        let pe = fs::read(&efi.path).unwrap();
        assert_eq!(&pe[..2], b"MZ");
    }
    create(
        &plan,
        &dir.path().join("state"),
        &CreateOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    let disk = &plan.disks[0];
    let image = disk.path.clone();
    let before = dir.path().join("before.raw");
    // A sparse copy: the efi layout's image is 640 MiB, mostly holes.
    extract(&image, 0, disk.size, &before);
    let bios = install_bios(&image, disk, &root_fs, &grub).unwrap();
    Built {
        _dir: dir,
        plan,
        grub,
        root,
        bios,
        image,
        before,
    }
}

/// Copy `size` bytes at `offset` of `image` into a file of their own (holes kept).
fn extract(image: &Path, offset: u64, size: u64, out: &Path) {
    let mut f = fs::File::open(image).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut o = fs::File::create(out).unwrap();
    o.set_len(size).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0;
    while done < size {
        let n = (size - done).min(buf.len() as u64) as usize;
        f.read_exact(&mut buf[..n]).unwrap();
        if buf[..n].iter().any(|b| *b != 0) {
            o.seek(SeekFrom::Start(done)).unwrap();
            o.write_all(&buf[..n]).unwrap();
        }
        done += n as u64;
    }
}

/// The sectors that differ between two equally long files.
fn changed_sectors(a: &Path, b: &Path) -> Vec<u64> {
    let (mut fa, mut fb) = (fs::File::open(a).unwrap(), fs::File::open(b).unwrap());
    let len = fa.metadata().unwrap().len();
    assert_eq!(len, fb.metadata().unwrap().len());
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut out = Vec::new();
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(ba.len() as u64) as usize;
        fa.read_exact(&mut ba[..n]).unwrap();
        fb.read_exact(&mut bb[..n]).unwrap();
        if ba[..n] != bb[..n] {
            for s in 0..n / 512 {
                if ba[s * 512..(s + 1) * 512] != bb[s * 512..(s + 1) * 512] {
                    out.push(at / 512 + s as u64);
                }
            }
        }
        at += n as u64;
    }
    out
}

/// Independent checks of the image: the table, each filesystem, and exactly what
/// install_bios changed.
fn check_image(b: &Built) {
    let disk = &b.plan.disks[0];
    let table = disk.table.as_ref().unwrap();
    let sf: serde_json::Value = Cmd::new("sfdisk")
        .arg("--json")
        .arg(&b.image)
        .json()
        .unwrap();
    let parts = sf["partitiontable"]["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), table.partitions.len(), "{sf}");
    if table.label == diskforge_part::Label::Gpt {
        let v = Cmd::new("sgdisk").arg("-v").arg(&b.image).read().unwrap();
        assert!(v.contains("No problems found"), "sgdisk -v:\n{v}");
    }
    for f in &b.plan.filesystems {
        let Device::Region { offset, size, .. } = f.device else {
            panic!("{} not on a region", f.name);
        };
        let part = b._dir.path().join(format!("{}.part", f.name));
        extract(&b.image, offset, size, &part);
        let out = match f.fs_type {
            diskforge_mkfs::FsType::Vfat => Cmd::new("fsck.vfat").arg("-n").arg(&part).read(),
            _ => Cmd::new("e2fsck").arg("-fn").arg(&part).read(),
        };
        out.unwrap_or_else(|e| panic!("{}: {e}", f.name));
        fs::remove_file(&part).unwrap();
    }
    // install_bios touched sector 0 and the core image's sectors, nothing else.
    let changed = changed_sectors(&b.before, &b.image);
    let core = b.bios.core_sector..b.bios.core_sector + b.bios.core_sectors;
    assert_eq!(changed.first(), Some(&0), "{changed:?}");
    assert!(
        changed[1..].iter().all(|s| core.contains(s)),
        "outside sector 0 and {core:?}: {changed:?}"
    );
    assert!(changed.len() as u64 > b.bios.core_sectors / 2);
    // Sector 0: the partition table and disk signature as before, the patched fields set.
    let mut s0 = [0u8; 512];
    fs::File::open(&b.image)
        .unwrap()
        .read_exact(&mut s0)
        .unwrap();
    let mut old0 = [0u8; 512];
    fs::File::open(&b.before)
        .unwrap()
        .read_exact(&mut old0)
        .unwrap();
    assert_eq!(s0[0x1b8..], old0[0x1b8..]);
    let ks = u64::from_le_bytes(
        s0[bios::KERNEL_SECTOR..bios::KERNEL_SECTOR + 8]
            .try_into()
            .unwrap(),
    );
    assert_eq!(ks, b.bios.core_sector);
    assert_eq!(s0[bios::DRIVE_CHECK..bios::DRIVE_CHECK + 2], [0x90, 0x90]);
    // The blocklist in the image points at the rest of core.img.
    let mut f = fs::File::open(&b.image).unwrap();
    let mut first = vec![0u8; 512];
    f.seek(SeekFrom::Start(b.bios.core_sector * 512)).unwrap();
    f.read_exact(&mut first).unwrap();
    let lists = bios::read_blocklists(&first);
    assert_eq!(lists, b.bios.blocklists);
    assert_eq!(lists.len(), 1);
    assert_eq!(lists[0].start, b.bios.core_sector + 1);
    assert_eq!(u64::from(lists[0].len), b.bios.core_sectors - 1);
    assert_eq!(lists[0].segment, 0x820);
}

fn boot(b: &Built, fw: Firmware) -> BootReport {
    let vm = Vm::disk(Drive::ide_disk(&b.image, Format::Raw), fw);
    let r = boot_to_marker(&vm, &Expect::marker(MARKER, TIMEOUT))
        .unwrap_or_else(|e| panic!("{fw:?} boot of {}: {e}", b.image.display()));
    eprintln!(
        "{}: {fw:?}: marker after {:.1} s ({})",
        b.image.display(),
        r.done_after.unwrap_or_default(),
        r.accel
    );
    let log = r.log_text();
    let mounted: Vec<&str> = log
        .lines()
        .find_map(|l| l.split("diskforge init: mounted ").nth(1))
        .unwrap_or_else(|| panic!("no mount line:\n{log}"))
        .split_whitespace()
        .collect();
    // Every fstab entry got mounted (the ESP needs vfat + code pages from the initramfs).
    for f in &b.plan.filesystems {
        let mp = f.mount_point.as_deref().unwrap();
        assert!(mounted.contains(&mp), "{mp} not mounted: {mounted:?}");
    }
    assert!(
        log.contains(&format!(
            "root=UUID={}",
            b.fs("/").unwrap().uuid.as_deref().unwrap()
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!("BOOT_IMAGE={}", b.root.kernel)),
        "{log}"
    );
    r
}

#[test]
fn gpt_bios_esp_root_boots_bios_and_uefi() {
    let _one = one_at_a_time();
    let b = build("gpt-bios-esp-root", 128);
    assert_eq!(b.bios.area, EmbedArea::BiosBootPartition { number: 1 });
    check_image(&b);
    boot(&b, Firmware::SeaBios);
    boot(&b, Firmware::Ovmf);
}

#[test]
fn mbr_single_root_boots_bios() {
    let _one = one_at_a_time();
    let b = build("mbr-single-root", 64);
    assert_eq!(
        b.bios.area,
        EmbedArea::MbrGap {
            first_partition_sector: 2048
        }
    );
    assert_eq!(b.bios.core_sector, 1);
    check_image(&b);
    // Installing again gives the same bytes (nothing accumulates in sector 0 or core.img).
    let once = fs::read(&b.image).unwrap();
    let disk = &b.plan.disks[0];
    let again = install_bios(&b.image, disk, b.fs("/").unwrap(), &b.grub).unwrap();
    assert_eq!(again, b.bios);
    assert!(
        fs::read(&b.image).unwrap() == once,
        "a second install changed the image"
    );
    boot(&b, Firmware::SeaBios);
}

/// dib's `FS_TYPE=xfs`: GRUB needs its xfs driver in core.img, the initramfs the xfs module.
#[test]
fn mbr_xfs_root_boots_bios() {
    let _one = one_at_a_time();
    let b = build_with("mbr-single-root", 400, Some("xfs"));
    assert!(
        b.bios.modules.contains(&"xfs".to_owned()),
        "{:?}",
        b.bios.modules
    );
    assert!(
        b.root.modules.iter().any(|m| m.ends_with("/xfs.ko")),
        "{:?}",
        b.root.modules
    );
    let r = boot(&b, Firmware::SeaBios);
    assert!(
        r.log_text().contains("XFS (sda1): Mounting"),
        "{}",
        r.log_text()
    );
}

#[test]
fn efi_layout_boots_uefi_and_bios() {
    let _one = one_at_a_time();
    // dib's block-device-efi: ESP first (550 MiB), then an 8 MiB BIOS boot partition.
    let b = build("efi", 640);
    assert_eq!(b.bios.area, EmbedArea::BiosBootPartition { number: 2 });
    check_image(&b);
    boot(&b, Firmware::Ovmf);
    boot(&b, Firmware::SeaBios);
}

fn grub_for(root: &str) -> GrubConfig {
    let mut g = GrubConfig::new(
        "/boot/vmlinuz-1",
        None,
        Some("0a1b2c3d-0000-4000-8000-000000000001".into()),
    );
    g.cmdline = format!("root={root}");
    g
}

fn root_fs(image: &Path) -> FsPlan {
    FsPlan {
        name: "root".into(),
        base: "root".into(),
        fs_type: diskforge_mkfs::FsType::Ext4,
        label: "cloudimg-rootfs".into(),
        uuid: None,
        opts: Vec::new(),
        mount_point: Some("/".into()),
        device: Device::Region {
            image: image.to_owned(),
            offset: 63 * 512,
            size: 1000 * 512,
        },
        source: None,
        exclude: Vec::new(),
        epoch: None,
    }
}

fn disk(image: &Path, label: diskforge_part::Label, parts: Vec<PartPlan>) -> DiskPlan {
    DiskPlan {
        name: "image0".into(),
        path: image.to_owned(),
        size: 4 << 20,
        size_human: "4 MiB".into(),
        table: Some(TablePlan {
            name: "image0".into(),
            label,
            align: 512,
            partitions: parts,
            free_at_end: 0,
        }),
    }
}

fn part(number: u32, start: u64, size: u64, type_code: &str) -> PartPlan {
    PartPlan {
        name: format!("p{number}"),
        number,
        kind: diskforge_part::PartKind::Primary,
        requested: size.to_string(),
        start,
        size,
        size_human: String::new(),
        type_code: type_code.into(),
        gap_before: 0,
    }
}

/// A DOS partition table starting at sector 63, as old fdisk made them: 62 sectors of gap,
/// far less than core.img needs. Refused, naming the numbers; the image is untouched.
#[test]
fn mbr_gap_too_small_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("old.raw");
    fs::File::create(&image).unwrap().set_len(4 << 20).unwrap();
    Cmd::new("sfdisk")
        .arg("--no-reread")
        .arg("--no-tell-kernel")
        .arg(&image)
        .stdin_bytes("label: dos\nstart=63, size=1000, type=83\n")
        .run()
        .unwrap();
    let before = fs::read(&image).unwrap();
    let d = disk(
        &image,
        diskforge_part::Label::Mbr,
        vec![part(1, 63 * 512, 1000 * 512, "83")],
    );
    let err = install_bios(&image, &d, &root_fs(&image), &grub_for("/dev/sda1")).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, Error::NoRoomForCore { available: 62, needed, .. } if needed > 62),
        "{msg}"
    );
    assert!(
        msg.contains("the MBR gap (sectors 1..63, before the first partition) has 62 sectors, GRUB's core image needs"),
        "{msg}"
    );
    assert!(msg.contains("start the first partition at 1 MiB"), "{msg}");
    assert_eq!(fs::read(&image).unwrap(), before, "the image was changed");
}

/// GPT without an EF02 partition: refused before anything is read or built.
#[test]
fn gpt_without_bios_boot_partition_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("never-created.raw");
    let d = disk(
        &image,
        diskforge_part::Label::Gpt,
        vec![
            part(1, 1 << 20, 1 << 20, "EF00"),
            part(2, 2 << 20, 1 << 20, "8300"),
        ],
    );
    let err = install_bios(&image, &d, &root_fs(&image), &grub_for("/dev/sda2")).unwrap_err();
    assert!(matches!(err, Error::NoBiosBootPartition { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "{}: the GPT has no BIOS boot partition (type EF02) for GRUB's core image; add one \
             (1 MiB is enough) to the block-device config, or boot this disk with UEFI only",
            image.display()
        )
    );
    assert!(!image.exists());
    // A whole-disk filesystem: no table at all.
    let mut d = d;
    d.table = None;
    let err = install_bios(&image, &d, &root_fs(&image), &grub_for("/dev/sda")).unwrap_err();
    assert!(matches!(err, Error::NoPartitionTable { .. }), "{err}");
}

/// A BIOS boot partition of 100 sectors: too small for core.img; refused, image untouched.
#[test]
fn small_bios_boot_partition_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("gpt.raw");
    fs::File::create(&image).unwrap().set_len(4 << 20).unwrap();
    Cmd::new("sgdisk")
        .args(["-n1:2048:2147", "-t1:EF02", "-n2:4096:0", "-t2:8300"])
        .arg(&image)
        .run()
        .unwrap();
    let before = fs::read(&image).unwrap();
    let d = disk(
        &image,
        diskforge_part::Label::Gpt,
        vec![
            part(1, 2048 * 512, 100 * 512, "EF02"),
            part(2, 4096 * 512, 2048 * 512, "8300"),
        ],
    );
    let err = install_bios(&image, &d, &root_fs(&image), &grub_for("/dev/sda2")).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, Error::NoRoomForCore { available: 100, .. }),
        "{msg}"
    );
    assert!(
        msg.contains("BIOS boot partition 1 has 100 sectors, GRUB's core image needs")
            && msg.ends_with("make the BIOS boot partition at least 1 MiB"),
        "{msg}"
    );
    assert_eq!(fs::read(&image).unwrap(), before, "the image was changed");
}

/// A plan whose BIOS boot partition is not where the image's GPT has it: refused before
/// writing (the plan alone would have GRUB's core image written over a filesystem).
#[test]
fn plan_and_image_disagreeing_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("gpt.raw");
    fs::File::create(&image).unwrap().set_len(4 << 20).unwrap();
    Cmd::new("sgdisk")
        .args(["-n1:2048:4095", "-t1:EF02", "-n2:4096:0", "-t2:8300"])
        .arg(&image)
        .run()
        .unwrap();
    let before = fs::read(&image).unwrap();
    // The plan has the partitions the other way round.
    let d = disk(
        &image,
        diskforge_part::Label::Gpt,
        vec![
            part(1, 2048 * 512, 2048 * 512, "8300"),
            part(2, 4096 * 512, 2048 * 512, "EF02"),
        ],
    );
    let err = install_bios(&image, &d, &root_fs(&image), &grub_for("/dev/sda1")).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: the plan's BIOS boot partition (2048 sectors at 4096) is not in the image's \
             GPT: was the image made from this plan?",
            image.display()
        )
    );
    assert_eq!(fs::read(&image).unwrap(), before, "the image was changed");
}

/// Everything in a tree, for comparing two builds: path, kind, mode, mtime, content.
fn manifest(root: &Path) -> Vec<(String, String, u32, i64, Vec<u8>)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let (kind, data) = if m.file_type().is_symlink() {
                (
                    "link",
                    fs::read_link(&p)
                        .unwrap()
                        .display()
                        .to_string()
                        .into_bytes(),
                )
            } else if m.is_dir() {
                stack.push(p.clone());
                ("dir", Vec::new())
            } else {
                ("file", fs::read(&p).unwrap())
            };
            out.push((rel, kind.to_owned(), m.mode(), m.mtime(), data));
        }
    }
    out.sort();
    out
}

#[test]
fn busybox_tree_is_reproducible_and_complete() {
    let d = tempfile::tempdir().unwrap();
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    let ra = busybox_root(&a, &busybox_opts()).unwrap();
    let rb = busybox_root(&b, &busybox_opts()).unwrap();
    assert_eq!(ra, rb);
    let (ma, mb) = (manifest(&a), manifest(&b));
    assert!(ma == mb, "the two trees differ");
    assert!(
        ma.iter().all(|e| e.3 == EPOCH as i64),
        "an mtime is not the epoch"
    );
    assert!(ra.applets > 100, "{ra:?}");
    // What the tree must have.
    let init = fs::read_to_string(a.join("sbin/init")).unwrap();
    assert!(
        init.contains(&format!("echo '{MARKER}' > /dev/console")),
        "{init}"
    );
    assert!(init.contains("poweroff -f"), "{init}");
    assert_eq!(
        fs::read_link(a.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(
        fs::read_link(a.join("usr/bin/env")).unwrap(),
        Path::new("../../bin/busybox")
    );
    assert_eq!(
        fs::read_link(a.join("vmlinuz")).unwrap(),
        Path::new(&ra.kernel[1..])
    );
    let os = fs::read_to_string(a.join("etc/os-release")).unwrap();
    assert!(
        os.contains("ID=diskforge\n") && os.contains("VARIANT_ID=busybox\n"),
        "{os}"
    );
    assert_eq!(
        fs::read_to_string(a.join("etc/hostname")).unwrap(),
        "diskforge\n"
    );
    // The initramfs, listed by GNU cpio (an independent reader): init, busybox, the modules.
    let initrd = fs::read(a.join(&ra.initrd[1..])).unwrap();
    let cpio = Cmd::new("sh")
        .args(["-c", "gzip -dc | cpio -t --quiet"])
        .stdin_bytes(initrd)
        .read()
        .unwrap();
    let names: Vec<&str> = cpio.lines().collect();
    for want in ["init", "bin/busybox", "etc/diskforge-modules"] {
        assert!(names.contains(&want), "{want} missing: {names:?}");
    }
    for m in [
        "ata_piix.ko",
        "virtio_blk.ko",
        "ext4.ko",
        "sd_mod.ko",
        "vfat.ko",
    ] {
        assert!(
            names.iter().any(|n| n.ends_with(&format!("/{m}"))),
            "{m} missing: {names:?}"
        );
    }
    assert_eq!(
        ra.modules.len(),
        names.iter().filter(|n| n.contains(".ko")).count()
    );
}

/// `grub.cfg` and `BOOTX64.EFI` (grub-mkimage) are the same bytes each time, and with
/// `source_date_epoch` they and the directories above them carry that mtime.
#[test]
fn grub_files_are_reproducible() {
    let d = tempfile::tempdir().unwrap();
    let mut grub = grub_for("/dev/sda2");
    grub.source_date_epoch = Some(EPOCH);
    let trees: Vec<PathBuf> = ["a", "b"]
        .iter()
        .map(|n| {
            let t = d.path().join(n);
            write_grub_cfg(&t, &grub).unwrap();
            let efi = install_efi(&t.join("boot/efi"), &grub).unwrap();
            assert_eq!(efi.path, t.join("boot/efi/EFI/BOOT/BOOTX64.EFI"));
            assert!(
                efi.embedded_config
                    .contains("--fs-uuid --set=root 0a1b2c3d-")
            );
            t
        })
        .collect();
    let (ma, mb) = (manifest(&trees[0]), manifest(&trees[1]));
    assert!(ma == mb, "the two trees differ");
    assert_eq!(
        ma.len(),
        7,
        "{:?}",
        ma.iter().map(|e| &e.0).collect::<Vec<_>>()
    );
    assert!(
        ma.iter().all(|e| e.3 == EPOCH as i64),
        "an mtime is not the epoch"
    );
}

#[test]
fn bad_options_are_refused_before_writing() {
    let d = tempfile::tempdir().unwrap();
    let tree = d.path().join("t");
    let opts = BusyboxOptions {
        hostname: "no spaces please".into(),
        ..busybox_opts()
    };
    let err = busybox_root(&tree, &opts).unwrap_err().to_string();
    assert!(err.starts_with("hostname \"no spaces please\""), "{err}");
    assert!(!tree.exists());
    let opts = BusyboxOptions {
        kernel: Some(d.path().join("bzImage")),
        ..busybox_opts()
    };
    let err = busybox_root(&tree, &opts).unwrap_err();
    assert!(matches!(err, Error::Vm { .. }), "{err}");
    assert!(!tree.exists());
    let opts = BusyboxOptions {
        extra_modules: vec!["no_such_module".into()],
        ..busybox_opts()
    };
    let err = busybox_root(&tree, &opts).unwrap_err();
    assert_eq!(err.to_string(), "resolving the initramfs modules");
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert!(
        source.starts_with("kernel module no_such_module not in /lib/modules/"),
        "{source}"
    );
    assert!(!tree.exists());
}
