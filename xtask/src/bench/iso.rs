//! `cargo xtask bench iso`: remaster a generated ~1 GiB installer-like ISO with many files
//! (`--quick`: ~100 MiB) by every route that works on this host, each with and without an
//! implanted MD5, check every output, and report seconds and ratios.
//!
//! The edit is the main job: add a one-line kickstart and reference it from every boot entry
//! (isolinux, the tree's GRUB configs, and the GRUB config inside `images/efiboot.img`).
//! Routes:
//! - `cp`, `cp + sync`, `md5sum` of the ISO and `implantisomd5` alone: the references;
//! - the fair baseline, the best conventional route that keeps El Torito BIOS + UEFI and the
//!   isohybrid MBR/GPT: extract the four configs (`osirrox`; `mtype` inside efiboot.img),
//!   edit them, put the FAT config back with `mcopy`, then `xorriso -indev IN -outdev OUT
//!   -boot_image any replay -map …` (xorriso's default `-stdio_sync on`), `implantisomd5` for
//!   the MD5 variant, `sync OUT`. Fedora's `mkksiso` (lorax) does the same with xorriso, but
//!   is not packaged for Debian, so it is not run here;
//! - conventional as people copy it: `osirrox -extract` made once beforehand (not timed, it
//!   stands in for a free `mount -o loop`), then `cp -a` of the tree (for `rsync`), the
//!   isolinux edit, `genisoimage -U -r -v -T -J -joliet-long -V … -b isolinux/isolinux.bin
//!   -c isolinux/boot.cat -no-emul-boot -boot-load-size 4 -boot-info-table` — it drops the
//!   UEFI entry and the isohybrid layout, so it is shown but no ratio is taken against it;
//! - ours: `iso-remaster --json` in `patch` (in place and with `-o`), `direct`, `copy` and
//!   `auto` modes (the mode auto chose is read from the JSON), and `direct` adding a 16 MiB
//!   file as well (more than the padding: the image grows). Ours fsync the output before
//!   publishing it (the default), like `cp + sync` and the baseline.
//!
//! Every output is checked before its time counts: `checkisomd5` for an implanted MD5, the El
//! Torito entries (`xorriso -report_el_torito plain`, block addresses left out) equal to the
//! input's, `/ks.cfg`'s bytes and the kickstart argument in each edited config (`osirrox`,
//! `mtype`). A route whose output fails its check stops the benchmark; genisoimage's lost
//! UEFI entry is reported in its row instead. Caches are warm (the ISO was just written).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use xshell::{Shell, cmd};

use crate::flags::BenchArgs;

/// Size of the file added in the route where `direct` has to grow the image.
const BIG_MIB: usize = 16;

/// The sample's volume id (the kickstart argument names it).
const VOLID: &str = "DF_SAMPLE";

/// The kickstart's content.
const KS: &str = "text\n";

struct Row {
    route: String,
    seconds: f64,
    /// What the check found ("ok", or what differs), and the mode auto chose.
    note: String,
}

/// Rounds per route; the table shows the fastest (the machine is shared, so the minimum is
/// the least noisy estimate).
fn rounds(quick: bool) -> usize {
    if quick { 1 } else { 3 }
}

fn time<T>(f: impl FnOnce() -> Result<T>) -> Result<(f64, T)> {
    let t = Instant::now();
    let v = f()?;
    Ok((t.elapsed().as_secs_f64(), v))
}

/// The kernel argument every boot entry gets.
fn ks_arg() -> String {
    format!("inst.ks=hd:LABEL={VOLID}:/ks.cfg")
}

/// Append the kickstart argument to isolinux `append` and GRUB `linux`/`linuxefi` lines.
fn edit_config(text: &str) -> String {
    text.lines()
        .map(|l| {
            let t = l.trim_start();
            if t.starts_with("append ") || t.starts_with("linux ") || t.starts_with("linuxefi ") {
                format!("{l} {}\n", ks_arg())
            } else {
                format!("{l}\n")
            }
        })
        .collect()
}

/// Bytes of `path` in `iso` (osirrox).
fn extract(sh: &Shell, iso: &Path, path: &str, scratch: &Path) -> Result<Vec<u8>> {
    let dst = scratch.join(format!("check{}", path.replace('/', "_")));
    let _ = std::fs::remove_file(&dst);
    cmd!(sh, "osirrox -indev {iso} -osirrox on -extract {path} {dst}")
        .ignore_stderr()
        .run()?;
    let data = std::fs::read(&dst)?;
    std::fs::remove_file(&dst)?;
    Ok(data)
}

/// What a checked output must be: the kickstart, the argument in every config, the input's
/// El Torito entries (unless `boot_may_differ`), a valid implanted MD5 when `md5`.
/// Returns "ok" or, with `boot_may_differ`, what the boot entries lost.
fn check(
    sh: &Shell,
    input_boot: &[String],
    out: &Path,
    md5: bool,
    boot_may_differ: bool,
    scratch: &Path,
) -> Result<String> {
    if md5 {
        cmd!(sh, "checkisomd5 {out}")
            .quiet()
            .ignore_stdout()
            .run()
            .with_context(|| format!("checkisomd5 {}", out.display()))?;
    }
    ensure!(
        extract(sh, out, "/ks.cfg", scratch)? == KS.as_bytes(),
        "{}: /ks.cfg differs",
        out.display()
    );
    let configs: &[&str] = if boot_may_differ {
        &["/isolinux/isolinux.cfg"]
    } else {
        &[
            "/isolinux/isolinux.cfg",
            "/boot/grub/grub.cfg",
            "/EFI/BOOT/grub.cfg",
        ]
    };
    for c in configs {
        let text = String::from_utf8(extract(sh, out, c, scratch)?)?;
        ensure!(
            text.contains(&ks_arg()),
            "{}: {c} lacks the kickstart argument",
            out.display()
        );
    }
    let boot = diskforge_testutil::iso::el_torito_entries(out)?;
    if boot_may_differ {
        return Ok(if boot == input_boot {
            "ok".into()
        } else {
            format!(
                "boot differs: {} of {} El Torito entries",
                boot.len(),
                input_boot.len()
            )
        });
    }
    ensure!(
        boot == input_boot,
        "{}: El Torito entries {boot:?}, input has {input_boot:?}",
        out.display()
    );
    let efi = scratch.join("check-efiboot.img");
    std::fs::write(&efi, extract(sh, out, "/images/efiboot.img", scratch)?)?;
    let fat = cmd!(sh, "mtype -i {efi} ::/EFI/BOOT/grub.cfg")
        .env("MTOOLS_SKIP_CHECK", "1")
        .read()?;
    std::fs::remove_file(&efi)?;
    ensure!(
        fat.contains(&ks_arg()),
        "{}: efiboot.img's grub.cfg lacks the kickstart argument",
        out.display()
    );
    Ok("ok".into())
}

/// The mode `iso-remaster --json` reports it ran.
fn mode_of(json: &str) -> Result<String> {
    let v: serde_json::Value = serde_json::from_str(json).context("iso-remaster --json")?;
    match v.get("mode").and_then(|m| m.as_str()) {
        Some(m) => Ok(m.to_owned()),
        None => bail!("iso-remaster --json has no mode: {json}"),
    }
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
    let tool = crate::target_dir().join("release/iso-remaster");
    let sample = crate::target_dir().join("release/examples/sample");

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
    let input_boot = diskforge_testutil::iso::el_torito_entries(&iso)?;
    ensure!(
        input_boot.iter().any(|l| l.contains(" UEFI ")),
        "the sample has no UEFI entry: {input_boot:?}"
    );
    let ks = w.join("ks.cfg");
    std::fs::write(&ks, KS)?;
    let big = w.join("big.bin");
    std::fs::write(&big, vec![0x5au8; BIG_MIB << 20])?;
    let out = w.join("out.iso");
    let scratch = w.join("scratch");
    std::fs::create_dir(&scratch)?;

    let mut rows: Vec<Row> = Vec::new();
    let mut push = |route: &str, seconds: f64, note: String| {
        eprintln!("  {route:<46} {seconds:8.3} s  {note}");
        match rows.iter_mut().find(|r| r.route == route) {
            Some(r) if seconds < r.seconds => {
                r.seconds = seconds;
                r.note = note;
            }
            Some(_) => {}
            None => rows.push(Row {
                route: route.into(),
                seconds,
                note,
            }),
        }
    };
    let rm = |p: &Path| -> Result<()> {
        if p.exists() {
            std::fs::remove_file(p)?;
        }
        Ok(())
    };
    let checked = |md5: bool| -> Result<String> {
        let note = check(sh, &input_boot, &out, md5, false, &scratch)?;
        rm(&out)?;
        Ok(note)
    };

    let mnt = w.join("mnt");
    cmd!(sh, "osirrox -indev {iso} -extract / {mnt}")
        .ignore_stderr()
        .run()?;
    cmd!(sh, "chmod -R u+w {mnt}").run()?;
    for round in 0..rounds(args.quick) {
        eprintln!("round {}", round + 1);
        let (t, ()) = time(|| Ok(cmd!(sh, "cp {iso} {out}").run()?))?;
        ensure!(std::fs::metadata(&out)?.len() == size, "cp: size differs");
        push("cp", t, "-".into());
        rm(&out)?;
        let (t, ()) = time(|| {
            cmd!(sh, "cp {iso} {out}").run()?;
            Ok(cmd!(sh, "sync {out}").run()?)
        })?;
        push("cp + sync", t, "-".into());
        rm(&out)?;
        let (t, ()) = time(|| Ok(cmd!(sh, "md5sum {iso}").ignore_stdout().run()?))?;
        push("md5sum of the ISO", t, "-".into());
        cmd!(sh, "cp {iso} {out}").run()?;
        let (t, ()) = time(|| {
            Ok(cmd!(sh, "implantisomd5 --force {out}")
                .ignore_stdout()
                .run()?)
        })?;
        cmd!(sh, "checkisomd5 {out}")
            .quiet()
            .ignore_stdout()
            .run()?;
        push("implantisomd5 alone", t, "checkisomd5 ok".into());
        rm(&out)?;

        // The fair baseline: edit the four configs, xorriso replays the boot setup.
        let edits = w.join("edits");
        let replay = |md5: bool| -> Result<f64> {
            let (t, ()) = time(|| {
                std::fs::create_dir(&edits)?;
                let mut maps: Vec<String> =
                    vec!["-map".into(), ks.display().to_string(), "/ks.cfg".into()];
                for (i, c) in [
                    "/isolinux/isolinux.cfg",
                    "/boot/grub/grub.cfg",
                    "/EFI/BOOT/grub.cfg",
                ]
                .iter()
                .enumerate()
                {
                    let f = edits.join(format!("cfg-{i}"));
                    cmd!(sh, "osirrox -indev {iso} -osirrox on -extract {c} {f}")
                        .ignore_stderr()
                        .run()?;
                    let text = std::fs::read_to_string(&f)?;
                    std::fs::remove_file(&f)?;
                    std::fs::write(&f, edit_config(&text))?;
                    maps.extend(["-map".into(), f.display().to_string(), (*c).to_owned()]);
                }
                let efi = edits.join("efiboot.img");
                cmd!(
                    sh,
                    "osirrox -indev {iso} -osirrox on -extract /images/efiboot.img {efi}"
                )
                .ignore_stderr()
                .run()?;
                cmd!(sh, "chmod u+w {efi}").run()?;
                let fat = cmd!(sh, "mtype -i {efi} ::/EFI/BOOT/grub.cfg")
                    .env("MTOOLS_SKIP_CHECK", "1")
                    .read()?;
                let fat_cfg = edits.join("fat-grub.cfg");
                std::fs::write(&fat_cfg, edit_config(&fat))?;
                cmd!(sh, "mcopy -o -i {efi} {fat_cfg} ::/EFI/BOOT/grub.cfg")
                    .env("MTOOLS_SKIP_CHECK", "1")
                    .run()?;
                maps.extend([
                    "-map".into(),
                    efi.display().to_string(),
                    "/images/efiboot.img".into(),
                ]);
                cmd!(sh, "xorriso -indev {iso} -outdev {out} -boot_image any replay -joliet on -compliance joliet_long_names {maps...} -commit")
                    .ignore_stderr()
                    .run()?;
                implant_and_sync(sh, &out, md5)
            })?;
            sh.remove_path(&edits)?;
            Ok(t)
        };
        let t = replay(false)?;
        push(BASELINE, t, checked(false)?);
        let t = replay(true)?;
        push(BASELINE_MD5, t, checked(true)?);

        // Conventional as copied from the web: extract once (the mount stand-in), then
        // cp -a + edit + genisoimage (which drops UEFI and isohybrid).
        let copy = w.join("copy");
        let conventional = |md5: bool| -> Result<(f64, String)> {
            let (t, ()) = time(|| {
                cmd!(sh, "cp -a {mnt} {copy}").run()?;
                std::fs::copy(&ks, copy.join("ks.cfg"))?;
                let cfg = copy.join("isolinux/isolinux.cfg");
                let text = std::fs::read_to_string(&cfg)?;
                std::fs::write(&cfg, edit_config(&text))?;
                cmd!(sh, "genisoimage -quiet -U -r -v -T -J -joliet-long -V {VOLID} -volset {VOLID} -A {VOLID} -b isolinux/isolinux.bin -c isolinux/boot.cat -no-emul-boot -boot-load-size 4 -boot-info-table -o {out} {copy}")
                .ignore_stderr()
                .run()?;
                implant_and_sync(sh, &out, md5)
            })?;
            sh.remove_path(&copy)?;
            let note = check(sh, &input_boot, &out, md5, true, &scratch)?;
            rm(&out)?;
            Ok((t, note))
        };
        let (t, note) = conventional(false)?;
        push("genisoimage route (cp -a + edit + genisoimage)", t, note);
        let (t, note) = conventional(true)?;
        push("genisoimage route + implantisomd5", t, note);

        for md5 in [false, true] {
            let flag: &[&str] = if md5 { &["--implant-md5"] } else { &[] };
            let sfx = if md5 { " + md5" } else { "" };
            let ours = |extra: &[&str], into: &Path| -> Result<(f64, String)> {
                time(|| {
                    let json = cmd!(
                        sh,
                        "{tool} {iso} -o {into} --json --kickstart {ks} {extra...} {flag...}"
                    )
                    .read()
                    .with_context(|| format!("iso-remaster {extra:?}"))?;
                    mode_of(&json)
                })
            };
            // patch in place: the copy is preparation, not timed.
            let inplace = w.join("inplace.iso");
            cmd!(sh, "cp {iso} {inplace}").run()?;
            let (t, mode) = time(|| {
                let json = cmd!(
                    sh,
                    "{tool} {inplace} --json --force --mode patch --kickstart {ks} {flag...}"
                )
                .read()?;
                mode_of(&json)
            })?;
            ensure!(mode == "patch", "in place ran {mode}");
            std::fs::rename(&inplace, &out)?;
            push(&format!("ours: patch in place{sfx}"), t, checked(md5)?);
            for mode in ["patch", "direct", "copy"] {
                let (t, ran) = ours(&["--mode", mode], &out)?;
                ensure!(ran == mode, "--mode {mode} ran {ran}");
                push(&format!("ours: {mode} -o{sfx}"), t, checked(md5)?);
            }
            let (t, ran) = ours(&[], &out)?;
            push(
                &format!("ours: auto -o{sfx}"),
                t,
                format!("{} (auto chose {ran})", checked(md5)?),
            );
            // More than the padding holds: direct grows the image (our writer).
            let big_map = format!("{}:/big.bin", big.display());
            let (t, ran) = ours(&["--mode", "direct", "--add", &big_map], &out)?;
            ensure!(ran == "direct", "growing ran {ran}");
            ensure!(
                extract(sh, &out, "/big.bin", &scratch)?.len() == BIG_MIB << 20,
                "/big.bin differs"
            );
            push(
                &format!("ours: direct -o, grows (+{BIG_MIB} MiB file){sfx}"),
                t,
                checked(md5)?,
            );
            if !md5 {
                let (t, ran) = ours(&["--no-sync"], &out)?;
                push(
                    "ours: auto -o --no-sync",
                    t,
                    format!("{} (auto chose {ran})", checked(false)?),
                );
            }
        }
    }
    sh.remove_path(&mnt)?;
    print_table(&rows, size, files, args.quick);
    Ok(())
}

/// The fair baseline's rows.
const BASELINE: &str = "conventional: configs + xorriso replay";
/// See [`BASELINE`].
const BASELINE_MD5: &str = "conventional: configs + xorriso replay + md5";

fn print_table(rows: &[Row], size: u64, files: u32, quick: bool) {
    let find = |name: &str| {
        rows.iter()
            .find(|r| r.route == name)
            .map_or(f64::NAN, |r| r.seconds.max(1e-6))
    };
    let (cp, cp_sync, md5sum) = (find("cp"), find("cp + sync"), find("md5sum of the ISO"));
    let (base, base_md5) = (find(BASELINE), find(BASELINE_MD5));
    println!();
    println!(
        "bench iso: {} MiB ISO, {files} files, one-line kickstart added + every boot entry \
         edited (also in efiboot.img)",
        size >> 20
    );
    println!(
        "{} round(s), fastest shown; every output checked (checkisomd5, El Torito entries, \
         ks.cfg and configs)",
        rounds(quick)
    );
    println!(
        "\"base / this\": the conventional xorriso replay route (keeps BIOS + UEFI + isohybrid) \
         with the same MD5 choice, divided by this route"
    );
    println!(
        "{:<48} {:>8} {:>6} {:>8} {:>8} {:>11}  check",
        "route", "seconds", "x cp", "x cp+sync", "x md5sum", "base / this"
    );
    for r in rows {
        let is_md5 = r.route.contains("md5");
        let m = if is_md5 {
            format!("{:.2}", r.seconds / md5sum)
        } else {
            "-".into()
        };
        let comparable = r.route.starts_with("ours") || r.route.starts_with("conventional");
        let b = if comparable {
            let base = if is_md5 { base_md5 } else { base };
            format!("{:.1}", base / r.seconds.max(1e-6))
        } else {
            "-".into()
        };
        println!(
            "{:<48} {:>8.3} {:>6.2} {:>8.2} {:>8} {:>11}  {}",
            r.route,
            r.seconds,
            r.seconds / cp,
            r.seconds / cp_sync,
            m,
            b,
            r.note
        );
    }
}

/// The conventional routes' last steps: `implantisomd5` when asked, then `sync` of the output.
fn implant_and_sync(sh: &Shell, out: &Path, md5: bool) -> Result<()> {
    if md5 {
        cmd!(sh, "implantisomd5 {out}").ignore_stdout().run()?;
    }
    Ok(cmd!(sh, "sync {out}").run()?)
}
