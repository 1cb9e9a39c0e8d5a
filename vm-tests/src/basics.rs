//! Proofs that the VM has what the host lacks: iso9660, vfat, loop partition scanning,
//! device-mapper and LVM. Plus a test that fails on purpose (only registered when
//! `DISKFORGE_FAIL_ON_PURPOSE=1`), used by `tests/vm_runner.rs` to prove failures reach the
//! host's exit code.

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use diskforge_cmd::Cmd;
use libtest_mimic::Trial;

use crate::trial;

/// This module's tests.
pub fn tests() -> Vec<Trial> {
    let mut v = vec![
        trial(
            "basics::iso9660_loop_mount_reads_file",
            iso9660_loop_mount_reads_file,
        ),
        trial("basics::vfat_mkfs_and_mount", vfat_mkfs_and_mount),
        trial(
            "basics::losetup_partscan_gives_p1_p2",
            losetup_partscan_gives_p1_p2,
        ),
        trial("basics::dmsetup_lists_linear", dmsetup_lists_linear),
        trial("basics::lvm_vg_on_loop", lvm_vg_on_loop),
    ];
    if std::env::var_os("DISKFORGE_FAIL_ON_PURPOSE").is_some() {
        v.push(trial("basics::fail_on_purpose", || {
            bail!("DISKFORGE-FAILED-ON-PURPOSE: expected 'hello' but file held 'goodbye'")
        }));
    }
    v
}

/// Attach `file` to a loop device (partscan optional) and return its path.
fn losetup(file: &Path, partscan: bool) -> Result<String> {
    let mut c = Cmd::new("losetup").args(["--find", "--show"]);
    if partscan {
        c = c.arg("--partscan");
    }
    Ok(c.arg(file).read()?)
}

fn detach(dev: &str) -> Result<()> {
    Cmd::new("losetup").args(["-d", dev]).run()?;
    Ok(())
}

fn sparse(path: &Path, size: u64) -> Result<()> {
    std::fs::File::create(path)?.set_len(size)?;
    Ok(())
}

fn iso9660_loop_mount_reads_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("sub"))?;
    std::fs::write(tree.join("sub/hello.txt"), "hello from iso\n")?;
    let iso = dir.path().join("t.iso");
    Cmd::new("xorriso")
        .args(["-as", "mkisofs", "-R", "-J", "-V", "DFTEST", "-o"])
        .arg(&iso)
        .arg(&tree)
        .run()?;
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt)?;
    Cmd::new("mount")
        .args(["-t", "iso9660", "-o", "loop,ro"])
        .arg(&iso)
        .arg(&mnt)
        .run()?;
    let read = std::fs::read_to_string(mnt.join("sub/hello.txt"));
    Cmd::new("umount").arg(&mnt).run()?;
    ensure!(read? == "hello from iso\n", "wrong content");
    Ok(())
}

fn vfat_mkfs_and_mount() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let img = dir.path().join("fat.img");
    sparse(&img, 32 << 20)?;
    Cmd::new("mkfs.vfat")
        .args(["-n", "DFESP"])
        .arg(&img)
        .run()?;
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt)?;
    Cmd::new("mount")
        .args(["-t", "vfat", "-o", "loop"])
        .arg(&img)
        .arg(&mnt)
        .run()?;
    let res = (|| -> Result<String> {
        std::fs::create_dir_all(mnt.join("EFI/BOOT"))?;
        std::fs::write(mnt.join("EFI/BOOT/x.cfg"), "fat ok")?;
        Ok(std::fs::read_to_string(mnt.join("EFI/BOOT/x.cfg"))?)
    })();
    Cmd::new("umount").arg(&mnt).run()?;
    ensure!(res? == "fat ok");
    // Independent check of what we wrote, without mounting.
    let listing = Cmd::new("mdir")
        .args(["-b", "-i"])
        .arg(&img)
        .arg("::/EFI/BOOT")
        .read()?;
    ensure!(
        listing.contains("X.CFG") || listing.contains("x.cfg"),
        "mdir shows {listing}"
    );
    Ok(())
}

fn losetup_partscan_gives_p1_p2() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let img = dir.path().join("gpt.img");
    sparse(&img, 64 << 20)?;
    Cmd::new("sgdisk")
        .args([
            "-n", "1:0:+16M", "-t", "1:8300", "-n", "2:0:0", "-t", "2:8300",
        ])
        .arg(&img)
        .run()?;
    let dev = losetup(&img, true)?;
    let p1 = format!("{dev}p1");
    let p2 = format!("{dev}p2");
    // Without udev the kernel creates the nodes in devtmpfs directly; allow it a moment.
    let mut ok = false;
    for _ in 0..50 {
        if Path::new(&p1).exists() && Path::new(&p2).exists() {
            ok = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let size = Cmd::new("blockdev").args(["--getsize64", &p1]).read();
    detach(&dev)?;
    ensure!(ok, "{p1} / {p2} did not appear");
    ensure!(
        size?.trim() == (16u64 << 20).to_string(),
        "p1 has the wrong size"
    );
    Ok(())
}

fn dmsetup_lists_linear() -> Result<()> {
    let out = Cmd::new("dmsetup").arg("targets").read()?;
    ensure!(
        out.lines().any(|l| l.starts_with("linear")),
        "dmsetup targets: {out}"
    );
    Ok(())
}

/// lvm2 without udev: no udev sync, and never touch the read-only /etc (archives, backups).
const LVM_CONFIG: &str = "activation { udev_sync=0 udev_rules=0 } backup { backup=0 archive=0 }";

fn lvm(args: &[&str]) -> Result<String> {
    Ok(Cmd::new("lvm")
        .args(args)
        .args(["--config", LVM_CONFIG])
        .env("DM_DISABLE_UDEV", "1")
        .read()?)
}

fn lvm_vg_on_loop() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let img = dir.path().join("pv.img");
    sparse(&img, 64 << 20)?;
    let dev = losetup(&img, false)?;
    let res = (|| -> Result<()> {
        lvm(&["pvcreate", "-y", &dev])?;
        lvm(&["vgcreate", "dfvmtest", &dev])?;
        lvm(&["lvcreate", "-y", "-n", "lv0", "-L", "16M", "dfvmtest"])?;
        let lvs = lvm(&[
            "lvs",
            "--noheadings",
            "-o",
            "lv_name,lv_size",
            "--units",
            "m",
            "dfvmtest",
        ])?;
        ensure!(lvs.contains("lv0") && lvs.contains("16.00m"), "lvs: {lvs}");
        Ok(())
    })();
    let cleanup = lvm(&["vgremove", "-y", "dfvmtest"])
        .and_then(|_| lvm(&["pvremove", "-y", &dev]))
        .context("removing test VG");
    detach(&dev)?;
    res?;
    cleanup?;
    Ok(())
}
