//! `dfimg` through its binary: help text, JSON output, and the documented exit codes.

// Helpers panic like the tests they serve (allow-unwrap-in-tests covers only #[test] fns).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Output;

use diskforge_cmd::Cmd;

fn dfimg(args: &[&str], dir: &Path) -> Output {
    let r = Cmd::new(env!("CARGO_BIN_EXE_dfimg"))
        .args(args)
        .dir(dir)
        .run();
    match r {
        Ok(o) => o,
        Err(diskforge_cmd::Error::Failed {
            status,
            stderr,
            stdout,
            ..
        }) => Output {
            status,
            stdout: stdout.into_bytes(),
            stderr: stderr.into_bytes(),
        },
        Err(e) => panic!("{e}"),
    }
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn json(o: &Output) -> serde_json::Value {
    assert_eq!(code(o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn help_fits_80_columns() {
    let dir = diskforge_testutil::scratch_dir();
    let help = dfimg(&["--help"], dir.path());
    let text = String::from_utf8(help.stdout).unwrap();
    assert!(text.lines().all(|l| l.chars().count() <= 80), "{text}");
    insta::assert_snapshot!(text);
    let usage = dfimg(&["convert", "a"], dir.path());
    assert_eq!(code(&usage), 2);
}

/// Set the refcount of cluster `idx` of a qcow2 (16-bit refcounts, first refcount block).
fn poke_refcount(path: &Path, idx: u64, value: u16) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut h = [0u8; 104];
    f.read_exact(&mut h).unwrap();
    let rt = u64::from_be_bytes(h[48..56].try_into().unwrap());
    f.seek(SeekFrom::Start(rt)).unwrap();
    let mut b = [0u8; 8];
    f.read_exact(&mut b).unwrap();
    let block = u64::from_be_bytes(b);
    f.seek(SeekFrom::Start(block + idx * 2)).unwrap();
    f.write_all(&value.to_be_bytes()).unwrap();
}

#[test]
fn create_convert_check_exit_codes() {
    let dir = diskforge_testutil::scratch_dir();
    let d = dir.path();
    let info = json(&dfimg(&["create", "disk.raw", "16MiB", "--json"], d));
    assert_eq!(info["virtual-size"], 16 << 20);
    let info = json(&dfimg(
        &[
            "convert",
            "disk.raw",
            "disk.qcow2",
            "-O",
            "qcow2",
            "-c",
            "-m",
            "2",
            "--json",
        ],
        d,
    ));
    assert_eq!(info["format"], "qcow2");
    let again = dfimg(&["convert", "disk.raw", "disk.qcow2", "-O", "qcow2"], d);
    assert_eq!(code(&again), 1);
    assert!(String::from_utf8_lossy(&again.stderr).contains("disk.qcow2: exists already"));
    let missing = dfimg(&["convert", "nope.raw", "nope.qcow2", "-O", "qcow2"], d);
    assert_eq!(code(&missing), 1);
    assert!(!d.join("nope.qcow2").exists() && !d.join(".nope.qcow2.partial").exists());
    let report = json(&dfimg(&["check", "disk.qcow2", "--json"], d));
    assert_eq!(report["check-errors"], 0);
    assert_eq!(code(&dfimg(&["check", "disk.raw", "-f", "raw"], d)), 5);
    // Without -f the format is detected first, and named plainly.
    let raw = dfimg(&["check", "disk.raw"], d);
    assert_eq!(code(&raw), 5);
    let msg = String::from_utf8_lossy(&raw.stderr);
    assert!(
        msg.contains("disk.raw is a raw image: raw images have no metadata to check"),
        "{msg}"
    );
    assert!(!msg.contains("auto"), "{msg}");
    let raw = dfimg(&["check", "disk.raw", "--json"], d);
    assert_eq!(code(&raw), 5);
    let rep: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    assert_eq!(
        (rep["format"].as_str(), rep["checked"].as_bool()),
        (Some("raw"), Some(false))
    );
    let vhd = dfimg(&["convert", "disk.raw", "disk.vhd", "-O", "vpc"], d);
    assert_eq!(code(&vhd), 0);
    let vhd = dfimg(&["check", "disk.vhd"], d);
    assert_eq!(code(&vhd), 5);
    assert!(String::from_utf8_lossy(&vhd.stderr).contains("is a vpc image: qemu-img has no check"));
    let bad = dfimg(&["convert", "disk.raw", "x.vhdx", "-O", "vhdx", "-c"], d);
    assert_eq!(code(&bad), 1);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("vhdx cannot be compressed"));

    // A leaked cluster (refcount 1, no reference) past the end, then a corruption.
    let len = std::fs::metadata(d.join("disk.qcow2")).unwrap().len();
    let free_cluster = len.div_ceil(65536);
    std::fs::copy(d.join("disk.qcow2"), d.join("leak.qcow2")).unwrap();
    poke_refcount(&d.join("leak.qcow2"), free_cluster, 1);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(d.join("leak.qcow2"))
        .unwrap();
    f.set_len((free_cluster + 1) * 65536).unwrap();
    let leak = dfimg(&["check", "leak.qcow2"], d);
    assert_eq!(code(&leak), 4, "{}", String::from_utf8_lossy(&leak.stdout));
    assert!(String::from_utf8_lossy(&leak.stdout).contains("leaked clusters: 1"));
    std::fs::copy(d.join("disk.qcow2"), d.join("bad.qcow2")).unwrap();
    poke_refcount(&d.join("bad.qcow2"), 0, 0);
    assert_eq!(code(&dfimg(&["check", "bad.qcow2", "-f", "qcow2"], d)), 3);

    // Overlay, resize, measure, info --backing-chain.
    json(&dfimg(
        &[
            "create",
            "top.qcow2",
            "-f",
            "qcow2",
            "-b",
            "disk.qcow2",
            "-F",
            "qcow2",
            "--json",
        ],
        d,
    ));
    assert_eq!(code(&dfimg(&["resize", "top.qcow2", "+1MiB"], d)), 0);
    let chain = json(&dfimg(
        &["info", "top.qcow2", "--backing-chain", "--json"],
        d,
    ));
    assert_eq!(chain[0]["virtual-size"], 17 << 20);
    assert_eq!(chain[1]["filename"], "disk.qcow2");
    let m = json(&dfimg(
        &["measure", "--size", "1GiB", "-O", "qcow2", "--json"],
        d,
    ));
    assert!(m["fully-allocated"].as_u64().unwrap() > 1 << 30);
    let human = dfimg(&["info", "top.qcow2"], d);
    assert!(String::from_utf8_lossy(&human.stdout).contains("backing file: disk.qcow2 (qcow2)"));
}

#[test]
fn mkfs_and_detect() {
    let dir = diskforge_testutil::scratch_dir();
    let d = dir.path();
    std::fs::create_dir_all(d.join("tree/boot")).unwrap();
    std::fs::write(d.join("tree/boot/cfg"), "x").unwrap();
    let r = json(&dfimg(
        &[
            "mkfs", "ext4", "root.img", "--size", "16MiB", "-L", "root", "--from", "tree", "--json",
        ],
        d,
    ));
    assert_eq!(r["detected"]["fs_type"], "ext4");
    assert_eq!(r["detected"]["label"], "root");
    json(&dfimg(&["create", "disk.img", "64MiB", "--json"], d));
    let out = dfimg(
        &[
            "mkfs",
            "vfat",
            "disk.img",
            "--offset",
            "1MiB",
            "--size",
            "32MiB",
            "-L",
            "ESP",
            "-U",
            "1234-ABCD",
        ],
        d,
    );
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let det = dfimg(&["detect", "disk.img", "--offset", "1MiB"], d);
    assert_eq!(
        String::from_utf8_lossy(&det.stdout).trim(),
        "disk.img: vfat label=ESP uuid=1234-ABCD"
    );
    let none = dfimg(&["detect", "disk.img"], d);
    assert!(String::from_utf8_lossy(&none.stdout).contains("no filesystem"));
    let bad = dfimg(
        &["mkfs", "squashfs", "x.img", "-L", "nope", "--from", "tree"],
        d,
    );
    assert_eq!(code(&bad), 1);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("squashfs does not support labels"));
    let plan = dfimg(
        &[
            "mkfs",
            "xfs",
            "/dev/null-not-here",
            "--size",
            "300MiB",
            "--dry-run",
        ],
        d,
    );
    assert!(String::from_utf8_lossy(&plan.stdout).contains("mkfs.xfs"));
}
