//! Host tests for `diskforge-loop` and `diskforge-mount` (root; skipped visibly otherwise).
//!
//! Every test works in its own scratch dir and checks, with `KernelState`, that no loop device
//! backed by a file under it and no mount under it is left. Results are checked with
//! independent tools where one exists (`losetup -J -l`, `blockdev`, `sgdisk`).
//!
//! Not covered here (the host kernel makes no `loopNpK` nodes and has no iso9660): partition
//! nodes from partscan and mounts of ISO images — see `vm-tests/src/loop_mount.rs`.

// Helpers below run only inside tests: a failed setup step is a test failure.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use diskforge_cmd::Cmd;
use diskforge_loop::{AttachMethod, AttachOptions, LoopDevice, PartitionDevice, PartitionLocation};
use diskforge_mount::{
    Error as MountError, Mount, MountFlags, MountStack, Overlay, OverlayMethod, UnmountOptions,
};
use diskforge_testutil::{KernelState, require_root, scratch_dir};

const MIB: u64 = 1 << 20;

/// A file of `size` bytes whose byte at offset `i` is `(i / 512 + i) as u8`, so any misplaced
/// range shows.
fn patterned(path: &Path, size: u64) {
    let data: Vec<u8> = (0..size).map(|i| (i / 512 + i) as u8).collect();
    fs::write(path, data).unwrap();
}

fn read_range(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut f = fs::File::open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut buf = vec![0; len];
    f.read_exact(&mut buf).unwrap();
    buf
}

/// Assert nothing of ours (under `dir`) is attached or mounted.
fn assert_clean(dir: &Path) {
    let now = KernelState::capture();
    assert!(
        now.loops_under(dir).is_empty(),
        "leaked loops: {:?}",
        now.loops_under(dir)
    );
    assert!(
        now.mounts_under(dir).is_empty(),
        "leaked mounts: {:?}",
        now.mounts_under(dir)
    );
}

fn mkdirs(base: &Path, names: &[&str]) -> Vec<PathBuf> {
    names
        .iter()
        .map(|n| {
            let p = base.join(n);
            fs::create_dir_all(&p).unwrap();
            p
        })
        .collect()
}

#[test]
#[ignore = "needs root"]
fn attach_with_offset_and_sizelimit_reads_back() {
    require_root();
    let dir = scratch_dir();
    let img = dir.path().join("img");
    patterned(&img, 4 * MIB);
    for legacy in [false, true] {
        let opts = AttachOptions::new()
            .offset(MIB)
            .sizelimit(2 * MIB)
            .legacy_ioctls(legacy);
        let dev = LoopDevice::attach(&img, &opts).unwrap();
        let want = if legacy {
            AttachMethod::SetFd
        } else {
            AttachMethod::Configure
        };
        assert_eq!(dev.method(), want);
        // Size as an independent tool sees it.
        let size = Cmd::new("blockdev")
            .args(["--getsize64"])
            .arg(dev.path())
            .read()
            .unwrap();
        assert_eq!(size.trim(), (2 * MIB).to_string());
        // The device's first and last bytes are the file's bytes at the offset.
        assert_eq!(read_range(dev.path(), 0, 4096), read_range(&img, MIB, 4096));
        assert_eq!(
            read_range(dev.path(), 2 * MIB - 512, 512),
            read_range(&img, 3 * MIB - 512, 512)
        );
        // Writes land in the file at offset + position.
        {
            let mut f = fs::OpenOptions::new().write(true).open(dev.path()).unwrap();
            f.seek(SeekFrom::Start(4096)).unwrap();
            f.write_all(&[0xAB; 512]).unwrap();
            f.sync_all().unwrap();
        }
        assert_eq!(read_range(&img, MIB + 4096, 512), vec![0xAB; 512]);
        // Our listing agrees with losetup's.
        let ours = dev.info().unwrap();
        let theirs: serde_json::Value = Cmd::new("losetup")
            .args(["-J", "-l"])
            .arg(dev.path())
            .json()
            .unwrap();
        let theirs = &theirs["loopdevices"][0];
        assert_eq!(theirs["offset"], ours.offset);
        assert_eq!(theirs["sizelimit"], ours.sizelimit);
        assert_eq!(
            theirs["back-file"].as_str().unwrap(),
            ours.back_file.to_str().unwrap()
        );
        assert_eq!(theirs["ro"], ours.ro);
        assert_eq!((ours.offset, ours.sizelimit), (MIB, 2 * MIB));
        let found = diskforge_loop::find_by_backing_file(&img).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].name, dev.path());
        dev.detach().unwrap();
        assert!(
            diskforge_loop::find_by_backing_file(&img)
                .unwrap()
                .is_empty()
        );
    }
    assert_clean(dir.path());
}

#[test]
#[ignore = "needs root"]
fn read_only_attach_rejects_writes() {
    require_root();
    let dir = scratch_dir();
    let img = dir.path().join("img");
    patterned(&img, MIB);
    let dev = LoopDevice::attach_read_only(&img).unwrap();
    assert!(dev.info().unwrap().ro);
    let ro = Cmd::new("blockdev")
        .arg("--getro")
        .arg(dev.path())
        .read()
        .unwrap();
    assert_eq!(ro.trim(), "1");
    // Depending on the kernel the open, the write or the flush is refused; never the data.
    let res = fs::OpenOptions::new()
        .write(true)
        .open(dev.path())
        .and_then(|mut f| {
            f.write_all(&[0xAB; 4096])?;
            f.sync_all()
        });
    let err = res.unwrap_err();
    assert!(
        matches!(err.raw_os_error(), Some(1 | 30)),
        "EPERM/EROFS expected, got {err}"
    );
    assert_eq!(read_range(&img, 0, 4096), read_range(dev.path(), 0, 4096));
    assert_ne!(read_range(&img, 0, 4096), vec![0xAB; 4096]);
    dev.teardown().unwrap();
    assert_clean(dir.path());
}

#[test]
#[ignore = "needs root"]
fn concurrent_attaches_all_succeed_on_distinct_devices() {
    require_root();
    let dir = scratch_dir();
    let img = dir.path().join("img");
    patterned(&img, MIB);
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..6)
            .map(|_| {
                s.spawn(|| {
                    for _ in 0..15 {
                        let d = LoopDevice::attach(&img, &AttachOptions::new().read_only(true))
                            .unwrap();
                        assert_eq!(read_range(d.path(), 0, 512), read_range(&img, 0, 512));
                        d.detach().unwrap();
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
    });
    assert_clean(dir.path());
}

#[test]
#[ignore = "needs root"]
fn partitions_resolve_to_byte_ranges_without_nodes() {
    require_root();
    let dir = scratch_dir();
    let img = dir.path().join("gpt.img");
    patterned(&img, 16 * MIB);
    Cmd::new("sgdisk")
        .args([
            "-Z",
            "-n",
            "1:2048:+4M",
            "-t",
            "1:8300",
            "-n",
            "2:0:+3M",
            "-t",
            "2:8300",
        ])
        .arg(&img)
        .run()
        .unwrap();
    // sgdisk's own view of partition 2's first sector.
    let info = Cmd::new("sgdisk")
        .args(["-i", "2"])
        .arg(&img)
        .read()
        .unwrap();
    let first: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("First sector: "))
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    let dev = LoopDevice::attach(&img, &AttachOptions::new().partscan(true)).unwrap();
    let table = dev.partitions().unwrap();
    assert_eq!(table.len(), 2);
    assert_eq!((table[0].start, table[0].size), (2048 * 512, 4 * MIB));
    assert_eq!((table[1].start, table[1].size), (first * 512, 3 * MIB));
    match dev.partition(2).unwrap() {
        PartitionLocation::Range { offset, size, .. } => {
            assert_eq!((offset, size), (first * 512, 3 * MIB))
        }
        // A kernel that makes pN nodes is fine too.
        PartitionLocation::Node(p) => assert!(p.ends_with(format!("loop{}p2", dev.number()))),
    }
    let p2 = dev.open_partition(2, true).unwrap();
    if let PartitionDevice::Loop(_) = &p2 {
        assert_eq!(
            read_range(p2.path(), 0, 4096),
            read_range(&img, first * 512, 4096)
        );
    }
    let e = dev.partition(7).unwrap_err().to_string();
    assert!(
        e.contains("no partition 7") && e.contains(&dev.path().display().to_string()),
        "{e}"
    );
    p2.teardown().unwrap();
    dev.detach().unwrap();
    assert_clean(dir.path());
}

#[test]
#[ignore = "needs root"]
fn overlay_three_lowers_precedence_copy_up_and_whiteout() {
    require_root();
    let dir = scratch_dir();
    let d = mkdirs(dir.path(), &["l1", "l2", "l3", "upper", "work", "merged"]);
    let (l1, l2, l3, upper, work, merged) = (&d[0], &d[1], &d[2], &d[3], &d[4], &d[5]);
    fs::write(l1.join("who"), "l1").unwrap();
    fs::write(l2.join("who"), "l2").unwrap();
    fs::write(l3.join("who"), "l3").unwrap();
    fs::write(l2.join("mid"), "l2").unwrap();
    fs::write(l3.join("mid"), "l3").unwrap();
    fs::write(l3.join("bottom"), "l3").unwrap();
    let ov = Overlay::new()
        .lower(l1)
        .lower(l2)
        .lower(l3)
        .upper(upper, work)
        .index(false);
    let m = ov.mount(merged).unwrap();
    assert_eq!(m.method(), OverlayMethod::MountData);
    assert_eq!(fs::read_to_string(merged.join("who")).unwrap(), "l1");
    assert_eq!(fs::read_to_string(merged.join("mid")).unwrap(), "l2");
    assert_eq!(fs::read_to_string(merged.join("bottom")).unwrap(), "l3");
    // Copy-up: the change lands in upper only.
    fs::write(merged.join("bottom"), "changed").unwrap();
    fs::write(merged.join("new"), "new").unwrap();
    assert_eq!(fs::read_to_string(upper.join("bottom")).unwrap(), "changed");
    assert_eq!(fs::read_to_string(upper.join("new")).unwrap(), "new");
    assert_eq!(fs::read_to_string(l3.join("bottom")).unwrap(), "l3");
    // Deleting a lower file leaves a whiteout: a 0/0 character device in upper.
    fs::remove_file(merged.join("who")).unwrap();
    assert!(!merged.join("who").exists());
    let wh = fs::symlink_metadata(upper.join("who")).unwrap();
    assert!(
        wh.file_type().is_char_device(),
        "whiteout is not a char device"
    );
    assert_eq!(wh.rdev(), 0);
    assert_eq!(fs::read_to_string(l1.join("who")).unwrap(), "l1");
    m.teardown().unwrap();
    // The same upper/work can be mounted again (work now holds overlayfs's own dir).
    let again = ov.mount(merged).unwrap();
    assert!(!merged.join("who").exists());
    again.teardown().unwrap();
    assert_clean(dir.path());
}

#[test]
#[ignore = "needs root"]
fn single_file_bind_over_read_only_mount() {
    require_root();
    let dir = scratch_dir();
    let d = mkdirs(dir.path(), &["tree", "mnt"]);
    fs::write(d[0].join("EULA"), "old terms").unwrap();
    let newfile = dir.path().join("new-EULA");
    fs::write(&newfile, "new terms").unwrap();
    let mnt = &d[1];
    let mut stack = MountStack::new();
    stack.push(Mount::bind_read_only(&d[0], mnt).unwrap());
    let e = fs::write(mnt.join("EULA"), "x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(30), "EROFS expected: {e}");
    stack.push(Mount::bind(&newfile, mnt.join("EULA")).unwrap());
    assert_eq!(fs::read_to_string(mnt.join("EULA")).unwrap(), "new terms");
    // A file cannot be bound over a directory (error names both paths).
    let e = Mount::bind(&newfile, mnt).unwrap_err().to_string();
    assert!(
        e.contains("new-EULA") && e.contains(&mnt.display().to_string()),
        "{e}"
    );
    assert_eq!(stack.describe().len(), 2);
    stack.teardown().unwrap();
    assert_eq!(fs::read_to_string(d[0].join("EULA")).unwrap(), "old terms");
    assert_clean(dir.path());
}

#[test]
#[ignore = "needs root"]
fn hundred_lowers_use_the_long_option_path() {
    require_root();
    let dir = scratch_dir();
    let base = dir
        .path()
        .join("layers-with-rather-long-names-to-pass-one-page");
    let lowers: Vec<PathBuf> = (0..100)
        .map(|i| {
            let p = base.join(format!("layer-number-{i:03}-of-a-hundred"));
            fs::create_dir_all(&p).unwrap();
            fs::write(p.join(format!("only-{i:03}")), i.to_string()).unwrap();
            fs::write(p.join("who"), i.to_string()).unwrap();
            p
        })
        .collect();
    let d = mkdirs(dir.path(), &["upper", "work", "merged"]);
    let ov = Overlay::new().lowers(&lowers).upper(&d[0], &d[1]);
    assert!(
        ov.option_string().len() > 4096,
        "the test must exceed one page"
    );
    let m = ov.mount(&d[2]).unwrap();
    assert_eq!(m.method(), OverlayMethod::Fsconfig);
    assert_eq!(m.lower_count(), 100);
    assert_eq!(fs::read_to_string(d[2].join("who")).unwrap(), "0");
    for i in [0, 42, 99] {
        assert_eq!(
            fs::read_to_string(d[2].join(format!("only-{i:03}"))).unwrap(),
            i.to_string()
        );
    }
    assert_eq!(fs::read_dir(&d[2]).unwrap().count(), 101);
    // The stack shows in /proc/self/mountinfo as overlay.
    let mi = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        mi.lines()
            .any(|l| l.contains(d[2].to_str().unwrap()) && l.contains(" - overlay "))
    );
    m.teardown().unwrap();
    assert_clean(dir.path());
}

#[test]
#[ignore = "needs root"]
fn panic_while_holding_guards_leaves_nothing_attached() {
    require_root();
    let dir = scratch_dir();
    let img = dir.path().join("fs.img");
    fs::File::create(&img).unwrap().set_len(16 * MIB).unwrap();
    Cmd::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&img)
        .run()
        .unwrap();
    let d = mkdirs(dir.path(), &["fs", "l2", "merged", "bind"]);
    let before = KernelState::capture();
    let losetup_before = Cmd::new("losetup")
        .args(["-l", "-n", "-O", "NAME,BACK-FILE"])
        .read()
        .unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut stack = MountStack::new();
        stack.push(Mount::image(&img, &d[0], "ext4", false).unwrap());
        fs::create_dir(d[0].join("lower")).unwrap();
        fs::create_dir(d[0].join("upper")).unwrap();
        fs::create_dir(d[0].join("work")).unwrap();
        let ov = Overlay::new()
            .lower(d[0].join("lower"))
            .upper(d[0].join("upper"), d[0].join("work"));
        stack.push(ov.mount(&d[2]).unwrap());
        stack.push(Mount::bind(&d[1], &d[3]).unwrap());
        let extra = LoopDevice::attach(&img, &AttachOptions::new().read_only(true)).unwrap();
        assert_eq!(KernelState::capture().loops_under(dir.path()).len(), 2);
        assert_eq!(KernelState::capture().mounts_under(dir.path()).len(), 3);
        let _keep = extra;
        panic!("on purpose, holding 2 loop devices and 3 mounts");
    }));
    assert!(r.is_err());
    assert_clean(dir.path());
    // The whole system, as /proc/self/mountinfo and losetup see it, is back where it was
    // (other tests run in parallel, so only objects under our dir are compared).
    let after = KernelState::capture();
    assert_eq!(
        before.loops_under(dir.path()),
        after.loops_under(dir.path())
    );
    let losetup_after = Cmd::new("losetup")
        .args(["-l", "-n", "-O", "NAME,BACK-FILE"])
        .read()
        .unwrap();
    let ours = |s: &str| {
        s.lines()
            .filter(|l| l.contains(dir.path().to_str().unwrap()))
            .count()
    };
    assert_eq!(ours(&losetup_before), 0);
    assert_eq!(ours(&losetup_after), 0);
    Cmd::new("e2fsck").args(["-fn"]).arg(&img).run().unwrap();
}

#[test]
#[ignore = "needs root"]
fn bad_input_errors_name_the_path_and_leave_nothing() {
    require_root();
    let dir = scratch_dir();
    let missing = dir.path().join("no-such-file");
    let e = LoopDevice::attach(&missing, &AttachOptions::new()).unwrap_err();
    assert!(matches!(e, diskforge_loop::Error::OpenBacking { .. }));
    assert!(e.to_string().contains("no-such-file"), "{e}");
    let e = LoopDevice::attach(dir.path(), &AttachOptions::new()).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: not a regular file or block device",
            dir.path().display()
        )
    );
    let img = dir.path().join("small");
    patterned(&img, MIB);
    let e = LoopDevice::attach(&img, &AttachOptions::new().offset(2 * MIB)).unwrap_err();
    assert!(matches!(e, diskforge_loop::Error::OffsetBeyondEnd { .. }));
    assert!(
        e.to_string().contains("small") && e.to_string().contains("2097152"),
        "{e}"
    );

    let d = mkdirs(dir.path(), &["l1", "upper", "work", "merged", "tmpfs"]);
    let e = Overlay::new()
        .lower(&d[0])
        .lower(dir.path().join("gone"))
        .upper(&d[1], &d[2])
        .mount(&d[3]);
    assert_eq!(
        e.unwrap_err().to_string(),
        format!(
            "lower dir {} does not exist",
            dir.path().join("gone").display()
        )
    );
    // Upper on another filesystem than work.
    let tmpfs = Mount::new(
        "tmpfs",
        &d[4],
        "tmpfs",
        MountFlags::empty(),
        Some("size=1m"),
    )
    .unwrap();
    fs::create_dir(d[4].join("upper")).unwrap();
    let e = Overlay::new()
        .lower(&d[0])
        .upper(d[4].join("upper"), &d[2])
        .mount(&d[3])
        .unwrap_err();
    assert!(matches!(e, MountError::DifferentFilesystems { .. }));
    let msg = e.to_string();
    assert!(
        msg.contains(&d[4].join("upper").display().to_string()) && msg.contains("work"),
        "{msg}"
    );
    tmpfs.teardown().unwrap();
    // Work dir not empty.
    fs::write(d[2].join("junk"), "x").unwrap();
    let e = Overlay::new()
        .lower(&d[0])
        .upper(&d[1], &d[2])
        .mount(&d[3])
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("overlay work dir {} is not empty", d[2].display())
    );
    // A read-write attach of a file on a read-only mount says to attach read-only.
    let ro_view = mkdirs(dir.path(), &["ro-view"]).remove(0);
    let ro = Mount::bind_read_only(dir.path().join("l1"), &ro_view).unwrap();
    fs::write(dir.path().join("l1/img"), vec![0u8; 4096]).unwrap();
    let e = LoopDevice::attach(ro_view.join("img"), &AttachOptions::new()).unwrap_err();
    assert!(
        matches!(e, diskforge_loop::Error::BackingNotWritable { .. }),
        "{e}"
    );
    assert!(
        e.to_string().contains("ro-view/img") && e.to_string().contains("attach it read-only"),
        "{e}"
    );
    let dev = LoopDevice::attach_read_only(ro_view.join("img")).unwrap();
    dev.detach().unwrap();
    ro.teardown().unwrap();
    // Unmounting what is not mounted.
    let e = diskforge_mount::unmount(&d[3], UnmountOptions::default()).unwrap_err();
    assert!(matches!(e, MountError::NotMounted { .. }), "{e}");
    assert_clean(dir.path());
}

#[test]
#[ignore = "needs root"]
fn busy_unmount_fails_then_lazy_detach_succeeds() {
    require_root();
    let dir = scratch_dir();
    let d = mkdirs(dir.path(), &["t"]);
    let m = Mount::new(
        "tmpfs",
        &d[0],
        "tmpfs",
        MountFlags::empty(),
        Some("size=1m"),
    )
    .unwrap();
    let held = fs::File::create(d[0].join("open")).unwrap();
    let e = diskforge_mount::unmount(m.target(), UnmountOptions { lazy: false }).unwrap_err();
    assert!(matches!(e, MountError::Busy { .. }), "{e}");
    m.lazy(true).teardown().unwrap();
    drop(held);
    assert_clean(dir.path());
}

#[test]
#[ignore = "needs root"]
fn stack_reports_every_failure() {
    require_root();
    let dir = scratch_dir();
    let d = mkdirs(dir.path(), &["a", "b", "c", "src"]);
    let mut stack = MountStack::new();
    stack.push(Mount::adopt(&d[0])); // not mounted: fails
    stack.push(Mount::bind(&d[3], &d[1]).unwrap()); // real: succeeds
    stack.push(Mount::adopt(&d[2])); // not mounted: fails
    let e = stack.teardown().unwrap_err();
    let MountError::Teardown { failures } = &e else {
        panic!("{e}")
    };
    assert_eq!(failures.len(), 2);
    assert!(
        failures[0].what.ends_with("/c") && failures[1].what.ends_with("/a"),
        "{e}"
    );
    assert_clean(dir.path());
}

#[test]
#[ignore = "needs root"]
fn private_namespace_mounts_stay_invisible() {
    require_root();
    let dir = scratch_dir();
    let d = mkdirs(dir.path(), &["ns"]);
    let target = d[0].clone();
    let seen_inside = diskforge_mount::in_private_namespace(|| {
        let m = Mount::new(
            "tmpfs",
            &target,
            "tmpfs",
            MountFlags::empty(),
            Some("size=1m"),
        )
        .unwrap();
        let inside = fs::read_to_string("/proc/thread-self/mountinfo").unwrap();
        let outside = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let t = target.to_str().unwrap();
        let r = (inside.contains(t), outside.contains(t));
        // Forgotten on purpose: the namespace dies with the thread.
        let _ = m.release();
        r
    })
    .unwrap();
    assert_eq!(seen_inside, (true, false));
    assert_clean(dir.path());
}

#[test]
#[ignore = "needs root"]
fn block_size_direct_io_and_autoclear() {
    require_root();
    let dir = scratch_dir();
    let img = dir.path().join("img");
    patterned(&img, 4 * MIB);
    for legacy in [false, true] {
        let opts = AttachOptions::new()
            .block_size(4096)
            .direct_io(true)
            .autoclear(true)
            .legacy_ioctls(legacy);
        let dev = LoopDevice::attach(&img, &opts).unwrap();
        let info = dev.info().unwrap();
        assert_eq!(info.log_sec, 4096, "legacy={legacy}");
        assert!(info.autoclear && info.dio, "legacy={legacy}: {info:?}");
        let sec = Cmd::new("blockdev")
            .arg("--getss")
            .arg(dev.path())
            .read()
            .unwrap();
        assert_eq!(sec.trim(), "4096");
        assert_eq!(
            read_range(dev.path(), 8192, 4096),
            read_range(&img, 8192, 4096)
        );
        // Autoclear: once the guard lets go and nobody holds it, the kernel detaches it.
        let path = dev.release();
        let mut gone = false;
        for _ in 0..200 {
            // Another test may reuse the number at once: only "not ours any more" counts.
            if diskforge_loop::info(&path).map_or(true, |i| i.back_file != img) {
                gone = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(gone, "{} still attached", path.display());
    }
    assert_clean(dir.path());
}

#[test]
#[ignore = "needs root"]
fn guard_unmounts_a_mount_made_through_a_symlink() {
    require_root();
    let dir = scratch_dir();
    let d = mkdirs(dir.path(), &["src", "real"]);
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&d[1], &link).unwrap();
    let m = Mount::bind(&d[0], &link).unwrap();
    assert_eq!(m.target(), d[1]);
    m.teardown().unwrap();
    assert_clean(dir.path());
}

#[test]
#[ignore = "needs root"]
fn recursive_bind_teardown_takes_submounts_down() {
    require_root();
    let dir = scratch_dir();
    let d = mkdirs(dir.path(), &["src/sub", "dst"]);
    let (src, dst) = (d[0].parent().unwrap().to_owned(), d[1].clone());
    let base = dir.path().to_owned();
    // In a private namespace, so propagation cannot touch anything outside this test.
    let left = diskforge_mount::in_private_namespace(|| {
        let sub = Mount::new(
            "tmpfs",
            src.join("sub"),
            "tmpfs",
            MountFlags::empty(),
            Some("size=1m"),
        )
        .unwrap();
        fs::write(src.join("sub/in-tmpfs"), "x").unwrap();
        let r = Mount::bind_recursive(&src, &dst).unwrap();
        assert!(dst.join("sub/in-tmpfs").exists(), "submount not copied");
        r.teardown().unwrap();
        assert!(!dst.join("sub").exists());
        sub.teardown().unwrap();
        let mi = fs::read_to_string("/proc/thread-self/mountinfo").unwrap();
        diskforge_mount::parse_mountinfo(&mi)
            .into_iter()
            .filter(|m| m.target.starts_with(&base))
            .count()
    })
    .unwrap();
    assert_eq!(left, 0);
    assert_clean(dir.path());
}
