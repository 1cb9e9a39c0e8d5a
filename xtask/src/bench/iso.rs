//! `cargo xtask bench iso`: remaster a generated ~1 GiB installer-like ISO with many files
//! (`--quick`: ~100 MiB) by every route that works on this host, each with and without an
//! implanted MD5, and report seconds and the ratio to `cp` of the ISO (the floor).
//!
//! The edit is the main job: add a one-line kickstart and reference it from every boot entry.
//! Routes:
//! - `cp`, `cp + sync`, `md5sum` of the ISO and `implantisomd5` alone: the references;
//! - conventional: on a host without iso9660 in the kernel the "mount" is an `osirrox
//!   -extract` made once beforehand (not timed, it stands in for a free `mount -o loop`), then,
//!   timed: `cp -a` of the tree (the stand-in for `rsync`), the edits, `genisoimage -U -r -v
//!   -T -J -joliet-long -V … -b isolinux/isolinux.bin -c isolinux/boot.cat -no-emul-boot
//!   -boot-load-size 4 -boot-info-table` (which, as people run it, drops the UEFI entry and
//!   the isohybrid layout), and `implantisomd5` for the MD5 variant;
//! - ours: `iso-remaster` in `patch` (in place and with `-o`), `direct` and `copy` modes, and
//!   `direct` adding a 16 MiB file as well (more than the padding: the image grows);
//! - reference: `xorriso -boot_image any replay` (what `direct` falls back to).
//!
//! Caches are warm (the ISO was just written); each output is deleted after its run.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use xshell::{Shell, cmd};

use crate::flags::BenchArgs;

/// Size of the file added in the route where `direct` has to grow the image.
const BIG_MIB: usize = 16;

struct Row {
    route: String,
    seconds: f64,
}

/// Rounds per route; the table shows the fastest (the machine is shared, so the minimum is
/// the least noisy estimate).
fn rounds(quick: bool) -> usize {
    if quick { 1 } else { 3 }
}

fn time(f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64())
}

/// Run this benchmark.
pub fn run(sh: &Shell, args: &BenchArgs) -> Result<()> {
    let root = crate::project_root();
    sh.change_dir(&root);
    // `--bins` too: `--example` alone selects only the example and would leave a stale
    // iso-remaster binary in place.
    cmd!(
        sh,
        "cargo build --release -p iso-remaster -p diskforge-iso --bins --example sample"
    )
    .run()?;
    let tool = root.join("target/release/iso-remaster");
    let sample = root.join("target/release/examples/sample");

    let base =
        PathBuf::from(std::env::var("DISKFORGE_SCRATCH").unwrap_or_else(|_| "/var/tmp".into()));
    let work = tempfile::Builder::new()
        .prefix("diskforge-bench-iso-")
        .tempdir_in(&base)?;
    let w = work.path();
    let (bytes, files) = if args.quick {
        (100u64 << 20, 400u32)
    } else {
        (1u64 << 30, 4000u32)
    };
    eprintln!(
        "bench iso: generating a {} MiB ISO with {files} files in {}",
        bytes >> 20,
        w.display()
    );
    let gen_dir = w.join("gen");
    let (bytes_s, files_s) = (bytes.to_string(), files.to_string());
    let iso = cmd!(sh, "{sample} {gen_dir} --bytes {bytes_s} --files {files_s}").read()?;
    let iso = PathBuf::from(iso.trim());
    // The sample's source tree is not needed any more.
    sh.remove_path(gen_dir.join("sample-tree"))?;
    let size = std::fs::metadata(&iso)?.len();
    let ks = w.join("ks.cfg");
    std::fs::write(&ks, "text\n")?;
    let big = w.join("big.bin");
    std::fs::write(&big, vec![0x5au8; BIG_MIB << 20])?;
    let out = w.join("out.iso");

    let mut rows: Vec<Row> = Vec::new();
    let mut push = |route: &str, seconds: f64| {
        eprintln!("  {route:<44} {seconds:8.3} s");
        match rows.iter_mut().find(|r| r.route == route) {
            Some(r) => r.seconds = r.seconds.min(seconds),
            None => rows.push(Row {
                route: route.into(),
                seconds,
            }),
        }
    };
    let rm = |p: &Path| -> Result<()> {
        if p.exists() {
            std::fs::remove_file(p)?;
        }
        Ok(())
    };

    let mnt = w.join("mnt");
    cmd!(sh, "osirrox -indev {iso} -extract / {mnt}")
        .ignore_stderr()
        .run()?;
    cmd!(sh, "chmod -R u+w {mnt}").run()?;
    for round in 0..rounds(args.quick) {
        eprintln!("round {}", round + 1);
        push("cp", time(|| Ok(cmd!(sh, "cp {iso} {out}").run()?))?);
        rm(&out)?;
        push(
            "cp + sync",
            time(|| {
                cmd!(sh, "cp {iso} {out}").run()?;
                Ok(cmd!(sh, "sync {out}").run()?)
            })?,
        );
        rm(&out)?;
        push(
            "md5sum of the ISO",
            time(|| Ok(cmd!(sh, "md5sum {iso}").ignore_stdout().run()?))?,
        );
        cmd!(sh, "cp {iso} {out}").run()?;
        push(
            "implantisomd5 alone",
            time(|| {
                Ok(cmd!(sh, "implantisomd5 --force {out}")
                    .ignore_stdout()
                    .run()?)
            })?,
        );
        rm(&out)?;

        // Conventional route: extract once (the mount stand-in), then cp -a + edit + genisoimage.
        let copy = w.join("copy");
        let volid = "DF_SAMPLE";
        let conventional = |md5: bool| -> Result<f64> {
            let t = time(|| {
                cmd!(sh, "cp -a {mnt} {copy}").run()?;
                std::fs::copy(&ks, copy.join("ks.cfg"))?;
                let cfg = copy.join("isolinux/isolinux.cfg");
                let text = std::fs::read_to_string(&cfg)?;
                let arg = format!(" inst.ks=hd:LABEL={volid}:/ks.cfg");
                let edited: String = text
                    .lines()
                    .map(|l| {
                        if l.trim_start().starts_with("append") {
                            format!("{l}{arg}\n")
                        } else {
                            format!("{l}\n")
                        }
                    })
                    .collect();
                std::fs::write(&cfg, edited)?;
                cmd!(sh, "genisoimage -quiet -U -r -v -T -J -joliet-long -V {volid} -volset {volid} -A {volid} -b isolinux/isolinux.bin -c isolinux/boot.cat -no-emul-boot -boot-load-size 4 -boot-info-table -o {out} {copy}")
                .ignore_stderr()
                .run()?;
                if md5 {
                    cmd!(sh, "implantisomd5 {out}").ignore_stdout().run()?;
                }
                Ok(())
            })?;
            sh.remove_path(&copy)?;
            rm(&out)?;
            Ok(t)
        };
        push(
            "conventional (cp -a + edit + genisoimage)",
            conventional(false)?,
        );
        push("conventional + implantisomd5", conventional(true)?);

        for md5 in [false, true] {
            let flag: &[&str] = if md5 { &["--implant-md5"] } else { &[] };
            let sfx = if md5 { " + md5" } else { "" };
            // patch in place: the copy is preparation, not timed.
            let inplace = w.join("inplace.iso");
            cmd!(sh, "cp {iso} {inplace}").run()?;
            let t = time(|| {
                Ok(cmd!(
                    sh,
                    "{tool} {inplace} --mode patch --kickstart {ks} {flag...}"
                )
                .ignore_stdout()
                .run()?)
            })?;
            push(&format!("ours: patch in place{sfx}"), t);
            rm(&inplace)?;
            for mode in ["patch", "direct", "copy"] {
                let t = time(|| {
                    Ok(cmd!(
                        sh,
                        "{tool} {iso} -o {out} --mode {mode} --kickstart {ks} {flag...}"
                    )
                    .ignore_stdout()
                    .run()?)
                })
                .with_context(|| format!("iso-remaster --mode {mode}"))?;
                push(&format!("ours: {mode} -o{sfx}"), t);
                rm(&out)?;
            }
            let t = time(|| {
                Ok(cmd!(sh, "{tool} {iso} -o {out} --kickstart {ks} {flag...}")
                    .ignore_stdout()
                    .run()?)
            })?;
            push(&format!("ours: auto -o{sfx}"), t);
            rm(&out)?;
            // More than the padding holds: direct grows the image (our writer).
            let t = time(|| {
                Ok(cmd!(
                    sh,
                    "{tool} {iso} -o {out} --mode direct --kickstart {ks} --add {big}:/big.bin {flag...}"
                )
                .ignore_stdout()
                .run()?)
            })?;
            push(
                &format!("ours: direct -o, grows (+{BIG_MIB} MiB file){sfx}"),
                t,
            );
            rm(&out)?;
        }
        // Reference: the xorriso route direct mode used before (and still falls back to).
        let t = time(|| {
            Ok(cmd!(sh, "xorriso -indev {iso} -outdev {out} -stdio_sync off -boot_image any replay -joliet on -map {ks} /ks.cfg -commit")
                .ignore_stderr()
                .run()?)
        })?;
        push("xorriso -boot_image any replay (reference)", t);
        rm(&out)?;
    }
    sh.remove_path(&mnt)?;

    let cp = rows
        .iter()
        .find(|r| r.route == "cp")
        .map(|r| r.seconds)
        .unwrap_or(1.0)
        .max(1e-6);
    println!();
    println!(
        "bench iso: {} MiB ISO, {files} files, one-line kickstart added + every boot entry edited",
        size >> 20
    );
    println!(
        "conventional route here: osirrox -extract once (stands in for mount -o loop, not timed),"
    );
    println!("  then cp -a (stands in for rsync) + edit + genisoimage [+ implantisomd5]");
    let md5sum = rows
        .iter()
        .find(|r| r.route == "md5sum of the ISO")
        .map(|r| r.seconds)
        .unwrap_or(1.0)
        .max(1e-6);
    let conv = rows
        .iter()
        .find(|r| r.route.starts_with("conventional ("))
        .map(|r| r.seconds)
        .unwrap_or(1.0);
    println!(
        "({} round(s), fastest shown; auto chose patch here; x md5sum only for MD5 routes)",
        rounds(args.quick)
    );
    println!(
        "{:<46} {:>9} {:>9} {:>9} {:>11}",
        "route", "seconds", "x cp", "x md5sum", "conv / this"
    );
    for r in &rows {
        let m = if r.route.contains("md5") {
            format!("{:.2}", r.seconds / md5sum)
        } else {
            "-".into()
        };
        println!(
            "{:<46} {:>9.3} {:>9.2} {:>9} {:>11.1}",
            r.route,
            r.seconds,
            r.seconds / cp,
            m,
            conv / r.seconds.max(1e-6)
        );
    }
    Ok(())
}
