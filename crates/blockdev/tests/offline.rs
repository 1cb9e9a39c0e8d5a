//! The offline route end to end: example configs built into image files without loop
//! devices or mounts, then checked with independent tools — `sgdisk -v`, `sfdisk --json`,
//! `blkid -p -O OFFSET`, `e2fsck -fn` and `fsck.vfat -n` on each partition's bytes, `debugfs`
//! and `mtype` for the files — plus the fstab written, the state file, fault injection at
//! every step, and the kernel route refused before anything is written.
//!
//! Not covered here: the kernel route (LVM), which is not implemented; SIGKILL during create.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use diskforge_blockdev::{
    CreateOptions, Device, Error, Plan, PlanOptions, STATE_FILE, cleanup, create, delete, getval,
    plan_text, read_state,
};
use diskforge_cmd::Cmd;

fn example(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples/configs")
        .join(format!("{name}.yaml"));
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A small root tree: files at /, /etc, /boot/efi and /var.
fn tree(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    for d in ["etc", "boot/efi/EFI/BOOT", "var/lib", "srv/data"] {
        fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    fs::write(root.join("etc/hostname"), "diskforge\n").expect("write");
    fs::write(root.join("etc/fstab"), "# the fstab before\n").expect("write");
    fs::write(root.join("boot/efi/EFI/BOOT/BOOTX64.EFI"), vec![0x4d; 5000]).expect("write");
    fs::write(root.join("var/lib/state"), "var data\n").expect("write");
    fs::write(root.join("srv/data/blob"), "data disk\n").expect("write");
    root
}

fn opts(dir: &Path, root: &Path, size: u64) -> PlanOptions {
    PlanOptions {
        image_size: Some(size),
        image_dir: dir.join("images"),
        root: Some(root.to_owned()),
        uuid_seed: Some("offline-test".into()),
        ..Default::default()
    }
}

/// Copy `size` bytes at `offset` of `image` into a file of their own (holes kept).
fn extract(image: &Path, offset: u64, size: u64, out: &Path) {
    let mut f = fs::File::open(image).expect("open image");
    f.seek(SeekFrom::Start(offset)).expect("seek");
    let mut o = fs::File::create(out).expect("create");
    o.set_len(size).expect("size");
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0;
    while done < size {
        let n = (size - done).min(buf.len() as u64) as usize;
        f.read_exact(&mut buf[..n]).expect("read");
        if buf[..n].iter().any(|b| *b != 0) {
            o.seek(SeekFrom::Start(done)).expect("seek");
            o.write_all(&buf[..n]).expect("write");
        }
        done += n as u64;
    }
}

fn region(plan: &Plan, fs_name: &str) -> (PathBuf, u64, u64) {
    let f = plan
        .filesystems
        .iter()
        .find(|f| f.name == fs_name)
        .unwrap_or_else(|| panic!("no filesystem {fs_name}"));
    match &f.device {
        Device::Region {
            image,
            offset,
            size,
        } => (image.clone(), *offset, *size),
        Device::Lv { .. } => panic!("{fs_name} is on an LV"),
    }
}

/// `blkid -p -O OFFSET -o export IMAGE` as key=value pairs.
fn blkid(image: &Path, offset: u64) -> Vec<(String, String)> {
    let out = Cmd::new("blkid")
        .args(["-p", "-O", &offset.to_string(), "-o", "export"])
        .arg(image)
        .read()
        .expect("blkid");
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn has(kv: &[(String, String)], k: &str, v: &str) -> bool {
    kv.iter().any(|(a, b)| a == k && b == v)
}

#[derive(serde::Deserialize)]
struct Sfdisk {
    partitiontable: SfTable,
}
#[derive(serde::Deserialize)]
struct SfTable {
    label: String,
    partitions: Vec<SfPart>,
}
#[derive(serde::Deserialize)]
struct SfPart {
    node: String,
    start: u64,
    size: u64,
    #[serde(rename = "type")]
    ty: String,
}

fn sfdisk(image: &Path) -> SfTable {
    Cmd::new("sfdisk")
        .arg("--json")
        .arg(image)
        .json::<Sfdisk>()
        .expect("sfdisk --json")
        .partitiontable
}

/// Every partition in the plan is where sfdisk sees it.
fn table_matches_plan(plan: &Plan, disk: &str) -> SfTable {
    let d = plan.disks.iter().find(|d| d.name == disk).expect("disk");
    let mut t = sfdisk(&d.path);
    // The extended partition is the table's, not one of ours.
    t.partitions
        .retain(|p| !matches!(p.ty.as_str(), "5" | "f" | "85"));
    let planned = &d.table.as_ref().expect("table").partitions;
    assert_eq!(t.partitions.len(), planned.len());
    for p in planned {
        let node = format!("{}{}", d.path.display(), p.number);
        let s = t
            .partitions
            .iter()
            .find(|s| s.node == node)
            .unwrap_or_else(|| panic!("sfdisk has no {node}"));
        assert_eq!(
            (s.start * 512, s.size * 512),
            (p.start, p.size),
            "{}",
            p.name
        );
    }
    t
}

fn e2fsck(image: &Path, offset: u64, size: u64, scratch: &Path) -> PathBuf {
    let out = scratch.join(format!("fs-{offset}.img"));
    extract(image, offset, size, &out);
    Cmd::new("e2fsck")
        .args(["-fn"])
        .arg(&out)
        .run()
        .expect("e2fsck -fn");
    out
}

/// A file's contents read with debugfs (the runner trims the trailing newline).
fn debugfs_cat(fs_img: &Path, path: &str) -> String {
    Cmd::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(fs_img)
        .read()
        .expect("debugfs cat")
        + "\n"
}

#[test]
fn gpt_bios_esp_root_offline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = tree(dir.path());
    let plan = plan_text(
        &example("gpt-bios-esp-root"),
        &opts(dir.path(), &root, 256 << 20),
    )
    .expect("plan");
    let state = dir.path().join("state");
    let st = create(&plan, &state, &CreateOptions::default(), &mut |_| {}).expect("create");
    assert_eq!(st.done, plan.steps.len());
    assert_eq!(read_state(&state).expect("state").done, plan.steps.len());
    let image = &plan.disks[0].path;

    let v = Cmd::new("sgdisk")
        .arg("-v")
        .arg(image)
        .read()
        .expect("sgdisk -v");
    assert!(v.contains("No problems found"), "{v}");
    let t = table_matches_plan(&plan, "image0");
    assert_eq!(t.label, "gpt");
    assert_eq!(t.partitions[0].ty, "21686148-6449-6E6F-744E-656564454649");
    assert_eq!(t.partitions[1].ty, "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");

    // The fstab, in the tree and in the root filesystem.
    let fstab =
        "LABEL=cloudimg-rootfs / ext4 defaults 0 1\nLABEL=EFI /boot/efi vfat umask=0077 0 2\n";
    assert_eq!(
        fs::read_to_string(root.join("etc/fstab")).expect("fstab"),
        fstab
    );

    let (img, off, size) = region(&plan, "mkfs_root");
    let kv = blkid(&img, off);
    assert!(
        has(&kv, "TYPE", "ext4") && has(&kv, "LABEL", "cloudimg-rootfs"),
        "{kv:?}"
    );
    let uuid = plan
        .filesystems
        .iter()
        .find(|f| f.name == "mkfs_root")
        .and_then(|f| f.uuid.clone());
    assert!(has(&kv, "UUID", &uuid.expect("uuid")), "{kv:?}");
    let rootfs = e2fsck(&img, off, size, dir.path());
    assert_eq!(debugfs_cat(&rootfs, "/etc/fstab"), fstab);
    assert_eq!(debugfs_cat(&rootfs, "/etc/hostname"), "diskforge\n");
    // /boot/efi is an empty mount point on root; its files are on the ESP.
    let ls = Cmd::new("debugfs")
        .args(["-R", "ls -l /boot/efi"])
        .arg(&rootfs)
        .read()
        .expect("ls");
    assert!(!ls.contains("EFI"), "{ls}");

    let (img, off, size) = region(&plan, "mkfs_ESP");
    let kv = blkid(&img, off);
    assert!(
        has(&kv, "TYPE", "vfat") && has(&kv, "LABEL", "EFI"),
        "{kv:?}"
    );
    let esp = dir.path().join("esp.img");
    extract(&img, off, size, &esp);
    Cmd::new("fsck.vfat")
        .arg("-n")
        .arg(&esp)
        .run()
        .expect("fsck.vfat -n");
    let efi = Cmd::new("mtype")
        .args(["-i"])
        .arg(&esp)
        .arg("::/EFI/BOOT/BOOTX64.EFI")
        .env("MTOOLS_SKIP_CHECK", "1")
        .read()
        .expect("mtype");
    assert_eq!(efi, "M".repeat(5000));

    // The image stays sparse: mkfs regions punch holes instead of writing zeros, so the
    // 256 MiB image holds only the tables, the filesystems' metadata and the files.
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(image).expect("meta");
    assert_eq!(meta.len(), 256 << 20);
    let allocated = meta.blocks() * 512;
    assert!(
        allocated < meta.len() / 4,
        "{allocated} bytes allocated of {}: not sparse",
        meta.len()
    );

    assert_eq!(
        getval(&plan, "root-label").expect("getval"),
        "cloudimg-rootfs"
    );
    assert_eq!(
        getval(&plan, "mount-points").expect("getval"),
        "/|/boot/efi"
    );
    assert_eq!(
        getval(&plan, "image-path").expect("getval"),
        image.display().to_string()
    );

    // No scratch left; cleanup removes the state and is idempotent; the image stays.
    assert!(fs::read_dir(&state).expect("state").all(|e| {
        let n = e.expect("entry").file_name();
        n == STATE_FILE || n == "fstab.orig"
    }));
    cleanup(&state).expect("cleanup");
    assert!(!state.exists());
    cleanup(&state).expect("cleanup again");
    assert!(image.exists());
}

/// A tree without the ESP's mount point: the ESP is made empty, and root gets an empty
/// `boot/efi` directory to mount it on.
#[test]
fn missing_mount_point_in_the_tree() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("bare");
    fs::create_dir_all(root.join("etc")).expect("mkdir");
    fs::write(root.join("etc/hostname"), "bare\n").expect("write");
    let plan = plan_text(
        &example("gpt-bios-esp-root"),
        &opts(dir.path(), &root, 256 << 20),
    )
    .expect("plan");
    let state = dir.path().join("state");
    create(&plan, &state, &CreateOptions::default(), &mut |_| {}).expect("create");
    let (img, off, size) = region(&plan, "mkfs_root");
    let fsimg = e2fsck(&img, off, size, dir.path());
    let ls = Cmd::new("debugfs")
        .args(["-R", "stat /boot/efi"])
        .arg(&fsimg)
        .read()
        .expect("debugfs");
    assert!(ls.contains("Type: directory"), "{ls}");
    let (img, off, size) = region(&plan, "mkfs_ESP");
    let esp = dir.path().join("esp.img");
    extract(&img, off, size, &esp);
    Cmd::new("fsck.vfat")
        .arg("-n")
        .arg(&esp)
        .run()
        .expect("fsck.vfat");
    cleanup(&state).expect("cleanup");
}

#[test]
fn mbr_logical_offline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = tree(dir.path());
    let plan =
        plan_text(&example("mbr-logical"), &opts(dir.path(), &root, 160 << 20)).expect("plan");
    let state = dir.path().join("state");
    create(&plan, &state, &CreateOptions::default(), &mut |_| {}).expect("create");
    let t = table_matches_plan(&plan, "image0");
    assert_eq!(t.label, "dos");
    let types: Vec<&str> = t.partitions.iter().map(|p| p.ty.as_str()).collect();
    assert_eq!(types, ["83", "83", "83", "82"]);
    for (name, ty, label) in [
        ("mkfs_boot", "ext2", "mkfs_boot"),
        ("mkfs_root", "ext4", "rootfs"),
        ("mkfs_var", "ext4", "mkfs_var"),
        ("mkfs_swap", "swap", "mkfs_swap"),
    ] {
        let (img, off, size) = region(&plan, name);
        let kv = blkid(&img, off);
        assert!(
            has(&kv, "TYPE", ty) && has(&kv, "LABEL", label),
            "{name}: {kv:?}"
        );
        if ty != "swap" {
            let fsimg = e2fsck(&img, off, size, dir.path());
            if name == "mkfs_var" {
                assert_eq!(debugfs_cat(&fsimg, "/lib/state"), "var data\n");
            }
        }
    }
    assert_eq!(
        fs::read_to_string(root.join("etc/fstab")).expect("fstab"),
        "LABEL=rootfs / ext4 defaults 0 1\nLABEL=mkfs_boot /boot ext2 nodev,nosuid 0 2\n\
         LABEL=mkfs_var /var ext4 defaults 0 2\nLABEL=mkfs_swap none swap sw 0 0\n"
    );
    delete(&state).expect("delete");
    assert!(!plan.disks[0].path.exists() && !state.exists());
    // delete put the fstab back.
    assert_eq!(
        fs::read_to_string(root.join("etc/fstab")).expect("fstab"),
        "# the fstab before\n"
    );
}

#[test]
fn two_disks_offline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = tree(dir.path());
    let plan = plan_text(&example("two-disks"), &opts(dir.path(), &root, 128 << 20)).expect("plan");
    create(
        &plan,
        &dir.path().join("state"),
        &CreateOptions::default(),
        &mut |_| {},
    )
    .expect("create");
    table_matches_plan(&plan, "image0");
    let data = dir.path().join("images/data.raw");
    let kv = blkid(&data, 0);
    assert!(
        has(&kv, "TYPE", "ext4") && has(&kv, "LABEL", "data"),
        "{kv:?}"
    );
    let fsimg = e2fsck(&data, 0, 32 << 20, dir.path());
    assert_eq!(debugfs_cat(&fsimg, "/blob"), "data disk\n");
}

/// Fail every step in turn: nothing is left but the state (which says so), the tree's fstab
/// is as before, and cleanup is idempotent.
#[test]
fn fault_injection_at_every_step() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = tree(dir.path());
    let plan = plan_text(
        &example("gpt-bios-esp-root"),
        &opts(dir.path(), &root, 256 << 20),
    )
    .expect("plan");
    for n in 0..plan.steps.len() {
        let state = dir.path().join(format!("state-{n}"));
        let o = CreateOptions {
            fail_at: Some(n),
            ..Default::default()
        };
        match create(&plan, &state, &o, &mut |_| {}) {
            Err(Error::Injected { step, .. }) => assert_eq!(step, n),
            other => panic!("step {n}: {other:?}"),
        }
        let st = read_state(&state).expect("state");
        assert_eq!(st.failed.as_ref().map(|f| f.0), Some(n));
        assert!(st.images.is_empty() && st.scratch.is_empty() && st.fstab.is_none());
        assert!(!plan.disks[0].path.exists(), "step {n}: image left behind");
        assert_eq!(
            fs::read_to_string(root.join("etc/fstab")).expect("fstab"),
            "# the fstab before\n",
            "step {n}"
        );
        let left: Vec<_> = fs::read_dir(&state)
            .expect("state")
            .map(|e| e.expect("entry").file_name())
            .filter(|f| f != STATE_FILE && f != "fstab.orig")
            .collect();
        assert!(left.is_empty(), "step {n}: {left:?}");
        cleanup(&state).expect("cleanup");
        cleanup(&state).expect("cleanup again");
        assert!(!state.exists());
    }
}

#[test]
fn lvm_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = tree(dir.path());
    let plan = plan_text(&example("lvm-one-pv"), &opts(dir.path(), &root, 1 << 30)).expect("plan");
    let state = dir.path().join("state");
    let e = create(&plan, &state, &CreateOptions::default(), &mut |_| {}).expect_err("lvm");
    assert!(
        matches!(&e, Error::NeedsDeviceMapper { kind: "pv", node } if node == "pv"),
        "{e}"
    );
    assert!(e.to_string().contains("device-mapper"), "{e}");
    assert!(!state.exists() && !dir.path().join("images").exists());
    assert_eq!(
        fs::read_to_string(root.join("etc/fstab")).expect("fstab"),
        "# the fstab before\n"
    );
}

#[test]
fn an_existing_image_is_never_overwritten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = tree(dir.path());
    let plan = plan_text(
        &example("gpt-bios-esp-root"),
        &opts(dir.path(), &root, 256 << 20),
    )
    .expect("plan");
    fs::create_dir_all(dir.path().join("images")).expect("mkdir");
    fs::write(&plan.disks[0].path, "precious").expect("write");
    let e = create(
        &plan,
        &dir.path().join("state"),
        &CreateOptions::default(),
        &mut |_| {},
    )
    .expect_err("exists");
    assert!(matches!(e, Error::Exists { .. }), "{e}");
    assert_eq!(
        fs::read_to_string(&plan.disks[0].path).expect("read"),
        "precious"
    );
}

/// Cancelling (what the tool's SIGINT/SIGTERM handler does) stops before the next step and
/// removes what was made.
#[test]
fn cancel_unwinds() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().expect("tempdir");
    let root = tree(dir.path());
    let plan = plan_text(
        &example("gpt-bios-esp-root"),
        &opts(dir.path(), &root, 256 << 20),
    )
    .expect("plan");
    let cancel = Arc::new(AtomicBool::new(false));
    let o = CreateOptions {
        cancel: Some(cancel.clone()),
        ..Default::default()
    };
    let state = dir.path().join("state");
    let mut progress = |e: diskforge_blockdev::Event| {
        if let diskforge_blockdev::Event::Done { index: 2 } = e {
            cancel.store(true, Ordering::SeqCst);
        }
    };
    match create(&plan, &state, &o, &mut progress) {
        Err(Error::Interrupted { step: 3, .. }) => {}
        other => panic!("{other:?}"),
    }
    assert!(!plan.disks[0].path.exists());
    assert_eq!(
        fs::read_to_string(root.join("etc/fstab")).expect("fstab"),
        "# the fstab before\n"
    );
    delete(&state).expect("delete");
    assert!(!state.exists());
}

/// dib's own block-device-mbr default, unchanged: one primary, bootable, ext4 partition
/// (mkfs_root's type and label come from the root-filesystem defaults).
#[test]
fn dib_mbr_default_offline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = tree(dir.path());
    let plan = plan_text(
        &example("mbr-single-root"),
        &opts(dir.path(), &root, 64 << 20),
    )
    .expect("plan");
    create(
        &plan,
        &dir.path().join("state"),
        &CreateOptions::default(),
        &mut |_| {},
    )
    .expect("create");
    let t = table_matches_plan(&plan, "image0");
    assert_eq!(
        (t.label.as_str(), t.partitions[0].ty.as_str()),
        ("dos", "83")
    );
    let v: serde_json::Value = Cmd::new("sfdisk")
        .arg("--json")
        .arg(&plan.disks[0].path)
        .json()
        .expect("sfdisk");
    assert_eq!(v["partitiontable"]["partitions"][0]["bootable"], true);
    let (img, off, size) = region(&plan, "mkfs_root");
    let kv = blkid(&img, off);
    assert!(
        has(&kv, "TYPE", "ext4") && has(&kv, "LABEL", "cloudimg-rootfs"),
        "{kv:?}"
    );
    let fsimg = e2fsck(&img, off, size, dir.path());
    assert_eq!(
        debugfs_cat(&fsimg, "/etc/fstab"),
        "LABEL=cloudimg-rootfs / ext4 defaults 0 1\n"
    );
    assert_eq!(debugfs_cat(&fsimg, "/var/lib/state"), "var data\n");
}

/// `cleanup` and `delete` refuse what the build did not make: a directory that is no state
/// directory, a state naming a scratch directory outside it or an image that is not one of
/// its plan's disks — each left untouched. A killed build's half-made image goes with
/// `cleanup`; a finished build's stays.
#[test]
fn cleanup_refuses_what_it_did_not_make() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = tree(dir.path());
    let foreign = dir.path().join("foreign");
    fs::create_dir_all(&foreign).expect("mkdir");
    fs::write(foreign.join("keep"), "mine").expect("write");
    for f in [cleanup, delete] {
        let e = f(&foreign).expect_err("a directory without state.json");
        assert!(
            e.to_string().contains("not a block-device state directory"),
            "{e}"
        );
        assert_eq!(
            fs::read_to_string(foreign.join("keep")).expect("kept"),
            "mine"
        );
    }
    // Already cleaned up (missing): nothing to do.
    cleanup(&dir.path().join("gone")).expect("missing state dir");

    let plan = plan_text(
        &example("gpt-bios-esp-root"),
        &opts(dir.path(), &root, 256 << 20),
    )
    .expect("plan");
    let state = dir.path().join("state");
    let st = create(&plan, &state, &CreateOptions::default(), &mut |_| {}).expect("create");
    let image = plan.disks[0].path.clone();
    let write = |s: &diskforge_blockdev::State| {
        fs::write(
            state.join(STATE_FILE),
            serde_json::to_string(s).expect("json"),
        )
        .expect("write state")
    };
    let mut forged = st.clone();
    forged.scratch = vec![foreign.clone()];
    write(&forged);
    let e = cleanup(&state).expect_err("scratch outside the state dir");
    assert!(e.to_string().contains("was not made by this build"), "{e}");
    assert!(foreign.join("keep").exists() && image.exists());
    let mut forged = st.clone();
    forged.images.push(foreign.join("keep"));
    write(&forged);
    let e = delete(&state).expect_err("an image that is not the plan's");
    assert!(e.to_string().contains("was not made by this build"), "{e}");
    assert!(foreign.join("keep").exists() && image.exists());

    // As a kill -9 after step 2 leaves it: not done, no failure recorded.
    let mut killed = st.clone();
    killed.done = 2;
    write(&killed);
    cleanup(&state).expect("cleanup of a killed build");
    assert!(
        !image.exists(),
        "the half-made image of a killed build is removed"
    );
    assert!(!state.exists());
    cleanup(&state).expect("idempotent");
}
