//! Filesystems made straight into a partition's byte range of a sparse 1 GiB image (no loop
//! device, no mount, no root): the file stays sparse (`du`), bytes outside the range are
//! unchanged, stale bytes inside it are gone, and independent tools (e2fsck, debugfs,
//! fsck.vfat, mtype) find a clean filesystem holding the tree.

// Helpers panic like the tests they serve (allow-unwrap-in-tests covers only #[test] fns).
#![allow(clippy::unwrap_used)]

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use diskforge_cmd::Cmd;
use diskforge_mkfs::{FsType, MkfsOptions, RegionRoute, mkfs_in_region};

const MIB: u64 = 1 << 20;
const IMAGE: u64 = 1 << 30;

fn scratch() -> tempfile::TempDir {
    // A real disk filesystem (punching holes and SEEK_DATA behave as in production).
    tempfile::Builder::new()
        .prefix("diskforge-mkfs-region-")
        .tempdir_in("/var/tmp")
        .unwrap()
}

fn tree(root: &Path) -> PathBuf {
    let t = root.join("tree");
    fs::create_dir_all(t.join("sub")).unwrap();
    fs::write(t.join("hello.txt"), "hello from the root dir\n").unwrap();
    fs::write(t.join("sub/nested.txt"), "nested\n").unwrap();
    let big: Vec<u8> = (0..3 * MIB).map(|i| (i % 251) as u8).collect();
    fs::write(t.join("big.bin"), big).unwrap();
    t
}

/// Bytes the file occupies on disk, as `du -B1` reports them.
fn du(path: &Path) -> u64 {
    let out = Cmd::new("du").arg("-B1").arg(path).read().unwrap();
    out.split_whitespace().next().unwrap().parse().unwrap()
}

/// A new read-write file of `len` bytes, all holes.
fn sparse_image(path: &Path, len: u64) -> File {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .unwrap();
    f.set_len(len).unwrap();
    f
}

fn fill(f: &File, offset: u64, len: u64, byte: u8) {
    f.write_all_at(&vec![byte; len as usize], offset).unwrap();
}

fn all(f: &File, offset: u64, len: u64, byte: u8) -> bool {
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, offset).unwrap();
    buf.iter().all(|b| *b == byte)
}

/// Copy `[offset, offset+len)` of `image` into its own sparse file.
fn extract(image: &Path, offset: u64, len: u64, out: &Path) {
    Cmd::new("dd")
        .arg(format!("if={}", image.display()))
        .arg(format!("of={}", out.display()))
        .args(["bs=1M", "conv=sparse", "status=none"])
        .arg(format!("skip={}", offset / MIB))
        .arg(format!("count={}", len / MIB))
        .run()
        .unwrap();
}

#[test]
fn ext4_into_a_partition_of_a_sparse_image() {
    assert_eq!(FsType::Ext4.region_route(), RegionRoute::Direct);
    let dir = scratch();
    let src = tree(dir.path());
    let img = dir.path().join("disk.img");
    let f = sparse_image(&img, IMAGE);
    // Markers around the partition, and stale bytes inside it that must not survive.
    let (offset, len) = (MIB, 512 * MIB);
    fill(&f, 0, MIB, 0xAA);
    fill(&f, offset + len, MIB, 0xBB);
    fill(&f, IMAGE - 4096, 4096, 0xCC);
    let stale = offset + 509 * MIB;
    fill(&f, stale, MIB, 0x55);
    f.sync_all().unwrap();

    let mut o = MkfsOptions::new(FsType::Ext4);
    o.label = Some("part1".into());
    o.populate_from = Some(src);
    o.source_date_epoch = Some(1_700_000_000);
    let t = std::time::Instant::now();
    let report = mkfs_in_region(&o, &img, offset, len).unwrap();
    let took = t.elapsed();
    let d = report.detected.unwrap();
    assert_eq!(
        (d.fs_type.as_str(), d.label.as_deref()),
        ("ext4", Some("part1"))
    );

    let used = du(&img);
    eprintln!(
        "ext4 region: {took:?}, {} KiB allocated of 1 GiB",
        used >> 10
    );
    assert!(used < 16 * MIB, "image grew to {used} bytes on disk");
    assert_eq!(fs::metadata(&img).unwrap().len(), IMAGE);
    assert!(all(&f, 0, MIB, 0xAA), "bytes before the range changed");
    assert!(
        all(&f, offset + len, MIB, 0xBB),
        "bytes after the range changed"
    );
    assert!(
        all(&f, IMAGE - 4096, 4096, 0xCC),
        "end of the image changed"
    );
    assert!(
        all(&f, stale, MIB, 0),
        "stale bytes inside the range remain"
    );

    let part = dir.path().join("p1.img");
    extract(&img, offset, len, &part);
    Cmd::new("e2fsck").arg("-fn").arg(&part).run().unwrap();
    let cat = |p: &str| {
        Cmd::new("debugfs")
            .args(["-R", &format!("cat {p}")])
            .arg(&part)
            .read()
            .unwrap()
    };
    assert_eq!(cat("/hello.txt"), "hello from the root dir");
    assert_eq!(cat("/sub/nested.txt"), "nested");
    // The times were clamped through `debugfs IMAGE?offset=` on the image itself.
    let stat = Cmd::new("debugfs")
        .args(["-R", "stat /hello.txt"])
        .arg(&part)
        .read()
        .unwrap();
    assert!(stat.contains("atime: 0x6553f100"), "{stat}");
}

#[test]
fn vfat_built_beside_and_copied_by_extent() {
    assert_eq!(FsType::Vfat.region_route(), RegionRoute::BuildAndCopy);
    let dir = scratch();
    let src = tree(dir.path());
    let img = dir.path().join("disk.img");
    let f = sparse_image(&img, IMAGE);
    let (offset, len) = (600 * MIB, 256 * MIB);
    fill(&f, offset - MIB, MIB, 0xAA);
    fill(&f, offset + len, MIB, 0xBB);
    fill(&f, offset + 200 * MIB, MIB, 0x55);
    f.sync_all().unwrap();

    let mut o = MkfsOptions::new(FsType::Vfat);
    o.label = Some("esp".into());
    o.populate_from = Some(src);
    let report = mkfs_in_region(&o, &img, offset, len).unwrap();
    assert!(report.plan.temporaries.iter().all(|t| !t.exists()));
    // FAT labels are written in upper case.
    assert_eq!(report.detected.unwrap().label.as_deref(), Some("ESP"));

    let used = du(&img);
    assert!(used < 32 * MIB, "image grew to {used} bytes on disk");
    assert!(
        all(&f, offset - MIB, MIB, 0xAA),
        "bytes before the range changed"
    );
    assert!(
        all(&f, offset + len, MIB, 0xBB),
        "bytes after the range changed"
    );
    assert!(
        all(&f, offset + 200 * MIB, MIB, 0),
        "stale bytes inside the range remain"
    );

    let part = dir.path().join("esp.img");
    extract(&img, offset, len, &part);
    Cmd::new("fsck.vfat").arg("-n").arg(&part).run().unwrap();
    let hello = Cmd::new("mtype")
        .arg("-i")
        .arg(&part)
        .arg("::/hello.txt")
        .env("MTOOLS_SKIP_CHECK", "1")
        .read()
        .unwrap();
    assert_eq!(hello, "hello from the root dir");
}

#[test]
fn a_range_past_the_end_is_refused_and_nothing_is_written() {
    let dir = scratch();
    let img = dir.path().join("small.img");
    File::create(&img).unwrap().set_len(8 * MIB).unwrap();
    let o = MkfsOptions::new(FsType::Ext4);
    let err = mkfs_in_region(&o, &img, 4 * MIB, 8 * MIB).unwrap_err();
    assert!(err.to_string().contains("invalid region"), "{err}");
    assert_eq!(du(&img), 0);
}
