//! Storage: `diskforge-mkfs` and `qemu-img-cmd` checked with independent tools.
//!
//! Unprivileged (mkfs into image files): every type is found by `blkid` with its label and
//! UUID (and by our own superblock reader), and passes its checker (`e2fsck -fn`,
//! `xfs_repair -n`, `fsck.vfat -n`, `btrfs check`, `fsck.erofs`, `unsquashfs -l`); a
//! rootless-populated ext4 holds the tree (`debugfs`); byte ranges; reproducibility; qemu-img
//! round trips raw→qcow2→vhdx→raw (`qemu-img check`, `qemu-img compare`).
//!
//! Root only (skipped visibly otherwise): loop-mounting the populated ext4 and xfs images and
//! comparing their content with the source tree.
//!
//! Not covered here: vfat mounts (no vfat in the host kernel) and LVM (no device-mapper) —
//! see `vm-tests/src/storage.rs`.

// Helpers shared by the tests panic on failure like the tests themselves (clippy's
// allow-unwrap-in-tests only covers `#[test]` functions).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use diskforge_cmd::Cmd;
use diskforge_mkfs::{
    DetectedBy, FsType, MkfsOptions, Target, detect, detect_at, detect_magic, mkfs, plan,
};
use qemu_img_cmd::{ConvertOptions, CreateOptions, Format, NewSize};

const EPOCH: u64 = 1_700_000_000;
const UUID: &str = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f0";

/// A small tree: nested dirs, an empty file, a 1 MiB file, a symlink.
fn make_tree(root: &Path) -> PathBuf {
    let t = root.join("tree");
    std::fs::create_dir_all(t.join("etc/conf.d")).unwrap();
    std::fs::create_dir_all(t.join("usr/bin")).unwrap();
    std::fs::write(t.join("etc/hostname"), "diskforge\n").unwrap();
    std::fs::write(t.join("etc/conf.d/empty"), "").unwrap();
    let big: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(t.join("usr/bin/tool"), big).unwrap();
    std::os::unix::fs::symlink("../etc/hostname", t.join("usr/hostname-link")).unwrap();
    t
}

fn run(program: &str, args: &[&str], path: &Path) -> String {
    Cmd::new(program)
        .args(args)
        .arg(path)
        .read()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn size_for(fs: FsType) -> Option<u64> {
    match fs {
        FsType::Xfs => Some(300 << 20),
        FsType::Btrfs => Some(256 << 20),
        FsType::Squashfs | FsType::Erofs => None,
        _ => Some(32 << 20),
    }
}

/// Make `fs` with a label/UUID where the type has them, populated where it can be, then check
/// blkid, our magic reader and the type's own checker.
fn make_and_check(fs: FsType) {
    let dir = diskforge_testutil::scratch_dir();
    let tree = make_tree(dir.path());
    let img = dir.path().join(format!("{fs}.img"));
    let mut o = MkfsOptions::new(fs);
    o.label = fs.max_label().map(|_| {
        if fs == FsType::Vfat {
            "DFTEST".to_owned()
        } else {
            "df-test".to_owned()
        }
    });
    o.uuid = match fs {
        FsType::Squashfs => None,
        FsType::Vfat => Some("ABCD-1234".into()),
        _ => Some(UUID.into()),
    };
    if fs != FsType::Swap {
        o.populate_from = Some(tree.clone());
    }
    let report = mkfs(
        &o,
        &Target::File {
            path: img.clone(),
            size: size_for(fs),
        },
    )
    .unwrap();
    let d = report.detected.clone().unwrap();
    assert_eq!(d.by, DetectedBy::Blkid);
    assert_eq!(d.fs_type, fs.as_str());
    assert_eq!(d.label, o.label, "{fs} label");
    assert_eq!(d.uuid, o.uuid, "{fs} uuid");
    // Our superblock reader agrees with blkid.
    let mut f = std::fs::File::open(&img).unwrap();
    let magic = detect_magic(&mut f, 0).unwrap().unwrap();
    assert_eq!(
        (magic.fs_type.as_str(), &magic.label, &magic.uuid),
        (fs.as_str(), &d.label, &d.uuid),
        "{fs} magic"
    );

    match fs {
        FsType::Ext2 | FsType::Ext3 | FsType::Ext4 => {
            run("e2fsck", &["-fn"], &img);
        }
        FsType::Xfs => {
            run("xfs_repair", &["-n"], &img);
        }
        FsType::Vfat => {
            run("fsck.vfat", &["-n"], &img);
            let ls = Cmd::new("mdir")
                .args(["-b", "-i"])
                .arg(&img)
                .arg("::/etc")
                .env("MTOOLS_SKIP_CHECK", "1")
                .read()
                .unwrap();
            assert!(ls.contains("hostname"), "{ls}");
            let hostname = Cmd::new("mtype")
                .arg("-i")
                .arg(&img)
                .arg("::/etc/hostname")
                .read()
                .unwrap();
            assert_eq!(hostname, "diskforge");
        }
        FsType::Btrfs => {
            run("btrfs", &["check", "--readonly"], &img);
        }
        FsType::Erofs => {
            run("fsck.erofs", &[], &img);
        }
        FsType::Squashfs => {
            let ls = run("unsquashfs", &["-l", "-d", "/r"], &img);
            for p in [
                "/r/etc/hostname",
                "/r/usr/bin/tool",
                "/r/usr/hostname-link",
                "/r/etc/conf.d/empty",
            ] {
                assert!(ls.lines().any(|l| l == p), "{p} missing from\n{ls}");
            }
        }
        FsType::Swap => {}
    }
}

#[test]
fn ext2() {
    make_and_check(FsType::Ext2);
}
#[test]
fn ext3() {
    make_and_check(FsType::Ext3);
}
#[test]
fn ext4() {
    make_and_check(FsType::Ext4);
}
#[test]
fn xfs_populated_from_protofile() {
    make_and_check(FsType::Xfs);
}
#[test]
fn vfat_populated_with_mcopy() {
    make_and_check(FsType::Vfat);
}
#[test]
fn btrfs_rootdir() {
    make_and_check(FsType::Btrfs);
}
#[test]
fn swap() {
    make_and_check(FsType::Swap);
}
#[test]
fn squashfs() {
    make_and_check(FsType::Squashfs);
}
#[test]
fn erofs() {
    make_and_check(FsType::Erofs);
}

#[test]
fn rootless_ext4_holds_the_tree() {
    let dir = diskforge_testutil::scratch_dir();
    let tree = make_tree(dir.path());
    let img = dir.path().join("root.img");
    let mut o = MkfsOptions::new(FsType::Ext4);
    o.populate_from = Some(tree.clone());
    mkfs(
        &o,
        &Target::File {
            path: img.clone(),
            size: Some(32 << 20),
        },
    )
    .unwrap();
    let ls = run("debugfs", &["-R", "ls -l /usr/bin"], &img);
    assert!(ls.contains(" 1048576 ") && ls.contains("tool"), "{ls}");
    let link = run("debugfs", &["-R", "stat /usr/hostname-link"], &img);
    assert!(
        link.contains("Type: symlink") && link.contains("../etc/hostname"),
        "{link}"
    );
    let out = dir.path().join("tool.out");
    run(
        "debugfs",
        &["-R", &format!("dump /usr/bin/tool {}", out.display())],
        &img,
    );
    assert_eq!(
        std::fs::read(out).unwrap(),
        std::fs::read(tree.join("usr/bin/tool")).unwrap()
    );
}

/// Touch the tree's atimes (as any reader would) between builds.
fn read_tree(p: &Path) {
    for e in std::fs::read_dir(p).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            read_tree(&e.path());
        } else if e.file_type().unwrap().is_file() {
            let _ = std::fs::read(e.path()).unwrap();
        }
    }
}

#[test]
fn reproducible_types_give_identical_bytes() {
    let dir = diskforge_testutil::scratch_dir();
    let tree = make_tree(dir.path());
    // Old atimes, so relatime updates them on the next read.
    Cmd::new("find")
        .arg(&tree)
        .args(["-exec", "touch", "-a", "-h", "-d", "@1000000000", "{}", "+"])
        .run()
        .unwrap();
    let build = |fs: FsType, n: u32| {
        let mut o = MkfsOptions::new(fs);
        o.source_date_epoch = Some(EPOCH);
        if fs != FsType::Swap {
            o.populate_from = Some(tree.clone());
        }
        let img = dir.path().join(format!("{fs}-{n}.img"));
        let r = mkfs(
            &o,
            &Target::File {
                path: img.clone(),
                size: size_for(fs),
            },
        )
        .unwrap();
        read_tree(&tree);
        (img, r.plan.reproducible)
    };
    // Every type once, a clock tick later every type again (the tree's atimes changed).
    let first: Vec<_> = FsType::ALL.iter().map(|&fs| build(fs, 1)).collect();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let mut reproducible = Vec::new();
    for (fs, (a, promised)) in FsType::ALL.into_iter().zip(first) {
        let (b, _) = build(fs, 2);
        let same = std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap();
        assert_eq!(promised, fs.reproducible());
        assert!(
            !promised || same,
            "{fs} promised reproducible output but differs"
        );
        if same {
            reproducible.push(fs.as_str());
        }
        std::fs::remove_file(a).unwrap();
        std::fs::remove_file(b).unwrap();
    }
    assert_eq!(
        reproducible,
        ["ext2", "ext3", "ext4", "vfat", "swap", "squashfs", "erofs"]
    );
}

#[test]
fn region_inside_an_image() {
    let dir = diskforge_testutil::scratch_dir();
    let tree = make_tree(dir.path());
    let img = dir.path().join("disk.img");
    // Markers before and after the range must survive; stale bytes inside it must go.
    std::fs::write(&img, vec![0xAAu8; 48 << 20]).unwrap();
    for (fs, offset) in [(FsType::Ext4, 1u64 << 20), (FsType::Squashfs, 40 << 20)] {
        let mut o = MkfsOptions::new(fs);
        o.label = (fs == FsType::Ext4).then(|| "part".to_owned());
        o.populate_from = Some(tree.clone());
        let size = if fs == FsType::Ext4 {
            32 << 20
        } else {
            8 << 20
        };
        let r = mkfs(
            &o,
            &Target::Region {
                image: img.clone(),
                offset,
                size,
            },
        )
        .unwrap();
        let d = r.detected.unwrap();
        assert_eq!(d.fs_type, fs.as_str());
        assert_eq!(d.label, o.label);
        assert!(
            r.plan.temporaries.iter().all(|t| !t.exists()),
            "temporary left behind"
        );
        assert_eq!(
            detect_at(&img, offset).unwrap().map(|d| d.fs_type),
            Some(fs.as_str().to_owned())
        );
    }
    let bytes = std::fs::read(&img).unwrap();
    assert!(
        bytes[..1 << 20].iter().all(|b| *b == 0xAA),
        "bytes before the partition changed"
    );
    assert!(
        bytes[33 << 20..40 << 20].iter().all(|b| *b == 0xAA),
        "bytes between partitions changed"
    );
    assert_eq!(
        bytes[(48 << 20) - 1],
        0,
        "rest of the squashfs range not zeroed"
    );
    let part = dir.path().join("p1.img");
    std::fs::write(&part, &bytes[1 << 20..33 << 20]).unwrap();
    run("e2fsck", &["-fn"], &part);
    // A filesystem that does not fit is refused, naming the sizes.
    let mut o = MkfsOptions::new(FsType::Squashfs);
    o.populate_from = Some(tree);
    let err = mkfs(
        &o,
        &Target::Region {
            image: img.clone(),
            offset: 0,
            size: 4096,
        },
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("larger than the 4096 bytes"),
        "{err}"
    );
}

#[test]
fn plans_are_data() {
    let tree = PathBuf::from("/src/tree");
    let dev = Target::Device {
        path: "/dev/vdb".into(),
    };
    let mut plans = Vec::new();
    for fs in FsType::ALL {
        let mut o = MkfsOptions::new(fs);
        o.source_date_epoch = Some(EPOCH);
        o.label = fs.max_label().map(|_| "ROOT".to_owned());
        if fs != FsType::Swap {
            o.populate_from = Some(tree.clone());
        }
        plans.push(plan(&o, &dev).unwrap());
    }
    let mut o = MkfsOptions::new(FsType::Vfat);
    o.label = Some("ESP".into());
    o.uuid = Some("1234-abcd".into());
    o.populate_from = Some(tree);
    plans.push(
        plan(
            &o,
            &Target::Region {
                image: "/img/disk.raw".into(),
                offset: 1 << 20,
                size: 64 << 20,
            },
        )
        .unwrap(),
    );
    insta::assert_yaml_snapshot!(plans);
}

#[test]
fn detect_reports() {
    let dir = diskforge_testutil::scratch_dir();
    let img = dir.path().join("none.img");
    std::fs::write(&img, vec![0u8; 128 << 10]).unwrap();
    assert_eq!(detect(&img).unwrap(), None);
    let mut o = MkfsOptions::new(FsType::Ext4);
    o.label = Some("snap".into());
    o.uuid = Some(UUID.into());
    let r = mkfs(
        &o,
        &Target::File {
            path: img.clone(),
            size: Some(8 << 20),
        },
    )
    .unwrap();
    insta::assert_yaml_snapshot!(r.detected);
}

/// Root only: loop-mount the rootless-built ext4 and xfs read-only and compare with the tree.
#[test]
#[ignore = "needs root"]
fn mounted_content_matches_tree() {
    diskforge_testutil::require_root();
    let dir = diskforge_testutil::scratch_dir();
    let before = diskforge_testutil::KernelState::capture();
    let tree = make_tree(dir.path());
    for fs in [FsType::Ext4, FsType::Xfs] {
        let img = dir.path().join(format!("{fs}.img"));
        let mut o = MkfsOptions::new(fs);
        o.populate_from = Some(tree.clone());
        mkfs(
            &o,
            &Target::File {
                path: img.clone(),
                size: size_for(fs),
            },
        )
        .unwrap();
        let mnt = dir.path().join(format!("mnt-{fs}"));
        std::fs::create_dir(&mnt).unwrap();
        Cmd::new("mount")
            .args(["-o", "loop,ro", "-t", fs.as_str()])
            .arg(&img)
            .arg(&mnt)
            .run()
            .unwrap();
        let diff = Cmd::new("diff")
            .args(["-r", "--no-dereference", "-x", "lost+found"])
            .arg(&tree)
            .arg(&mnt)
            .run();
        let link = std::fs::read_link(mnt.join("usr/hostname-link"));
        Cmd::new("umount").arg(&mnt).run().unwrap();
        std::fs::remove_dir(&mnt).unwrap();
        diff.unwrap_or_else(|e| panic!("{fs}: {e}"));
        assert_eq!(link.unwrap(), Path::new("../etc/hostname"));
    }
    let now = diskforge_testutil::KernelState::capture();
    assert!(now.loops_under(dir.path()).is_empty() && now.mounts_under(dir.path()).is_empty());
    assert_eq!(
        before.mounts_under(dir.path()),
        now.mounts_under(dir.path())
    );
}

#[test]
fn qemu_img_round_trip_raw_qcow2_vhdx_raw() {
    let dir = diskforge_testutil::scratch_dir();
    let tree = make_tree(dir.path());
    let raw = dir.path().join("disk.raw");
    let mut o = MkfsOptions::new(FsType::Ext4);
    o.populate_from = Some(tree);
    mkfs(
        &o,
        &Target::File {
            path: raw.clone(),
            size: Some(64 << 20),
        },
    )
    .unwrap();

    let qcow2 = dir.path().join("disk.qcow2");
    let mut c = ConvertOptions::to(Format::Qcow2);
    c.source_format = Some(Format::Raw);
    c.compress = true;
    c.coroutines = Some(4);
    c.out_of_order = true;
    let mut seen = Vec::new();
    qemu_img_cmd::convert(&raw, &qcow2, &c, |p| seen.push(p)).unwrap();
    assert_eq!(seen.last(), Some(&100.0), "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");

    let vhdx = dir.path().join("disk.vhdx");
    qemu_img_cmd::convert(&qcow2, &vhdx, &ConvertOptions::to(Format::Vhdx), |_| {}).unwrap();
    let back = dir.path().join("back.raw");
    qemu_img_cmd::convert(&vhdx, &back, &ConvertOptions::to(Format::Raw), |_| {}).unwrap();

    for (p, f) in [(&qcow2, Format::Qcow2), (&vhdx, Format::Vhdx)] {
        let r = qemu_img_cmd::check(p, Some(f)).unwrap();
        assert!(r.is_clean(), "{r:?}");
        // Independently of our parser: the CLI exits 0.
        Cmd::new("qemu-img")
            .args(["check", "-f", f.as_str()])
            .arg(p)
            .run()
            .unwrap();
    }
    let err = qemu_img_cmd::check(&raw, Some(Format::Raw)).unwrap_err();
    assert!(
        matches!(err, qemu_img_cmd::Error::CheckUnsupported { .. }),
        "{err}"
    );
    assert!(qemu_img_cmd::compare(&raw, &back, false).unwrap());
    Cmd::new("qemu-img")
        .arg("compare")
        .arg(&raw)
        .arg(&qcow2)
        .run()
        .unwrap();
    assert_eq!(std::fs::read(&raw).unwrap(), std::fs::read(&back).unwrap());

    // vpc keeps the exact size only with force_size; vmdk via compare.
    for (f, opts) in [
        (Format::Vpc, vec!["force_size=on".to_owned()]),
        (Format::Vmdk, vec![]),
    ] {
        let out = dir.path().join(format!("disk.{f}"));
        let mut c = ConvertOptions::to(f);
        c.options = opts;
        qemu_img_cmd::convert(&raw, &out, &c, |_| {}).unwrap();
        assert_eq!(
            qemu_img_cmd::info(&out, Some(f)).unwrap().virtual_size,
            64 << 20,
            "{f}"
        );
        assert!(qemu_img_cmd::compare(&raw, &out, false).unwrap(), "{f}");
    }

    // Backing chain, resize, measure.
    let overlay = dir.path().join("overlay.qcow2");
    let mut co = CreateOptions::new(Format::Qcow2, 64 << 20);
    co.backing = Some((qcow2.clone(), Format::Qcow2));
    co.size = None;
    qemu_img_cmd::create(&overlay, &co).unwrap();
    let chain = qemu_img_cmd::backing_chain(&overlay).unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[1].filename, qcow2.display().to_string());
    assert!(qemu_img_cmd::compare(&overlay, &raw, false).unwrap());
    qemu_img_cmd::resize(&overlay, Some(Format::Qcow2), NewSize::Grow(1 << 20), false).unwrap();
    assert_eq!(
        qemu_img_cmd::info(&overlay, None).unwrap().virtual_size,
        65 << 20
    );
    let m = qemu_img_cmd::measure(qemu_img_cmd::MeasureInput::Image(&raw), Format::Qcow2).unwrap();
    assert!(
        m.required > 1 << 20 && m.fully_allocated > 64 << 20,
        "{m:?}"
    );
    let mut info = qemu_img_cmd::info(&qcow2, None).unwrap();
    info.filename = "disk.qcow2".into();
    info.actual_size = None;
    insta::assert_yaml_snapshot!(info);
}

#[test]
fn xfs_refuses_names_a_protofile_cannot_express() {
    let dir = diskforge_testutil::scratch_dir();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("has space"), "x").unwrap();
    let mut o = MkfsOptions::new(FsType::Xfs);
    o.populate_from = Some(tree);
    let img = dir.path().join("x.img");
    let err = mkfs(
        &o,
        &Target::File {
            path: img,
            size: Some(300 << 20),
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, diskforge_mkfs::Error::BadName { .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("has space: xfs protofile names cannot contain whitespace"),
        "{err}"
    );
    // The protofile temporary is gone even though the plan failed half-way.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        !left.iter().any(|n| n.to_string_lossy().ends_with(".proto")),
        "{left:?}"
    );
}
