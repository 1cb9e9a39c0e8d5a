//! Integration tests for `diskforge-iso`, unprivileged: every result is read back with
//! independent tools (`xorriso -report_el_torito`, `isoinfo`, `osirrox`, `mtype`,
//! `checkisomd5`, `implantisomd5`, `sfdisk`).
//!
//! Not covered here: the overlay and bind modes (they loop-mount the ISO, which needs root
//! and the kernel's iso9660; see `vm-tests/src/iso.rs`), and booting the output (the
//! `diskforge-iso-fixture` crate's QEMU checks).

use std::path::{Path, PathBuf};

use diskforge_cmd::Cmd;
use diskforge_iso::{Edit, Mode, Request, remaster};
use diskforge_iso_fixture::sample::{SampleOptions, build_sample};
use diskforge_testutil::iso::el_torito_entries as el_torito_report;

type R = anyhow::Result<()>;

fn sample(dir: &Path, appended_esp: bool) -> anyhow::Result<PathBuf> {
    let opts = SampleOptions {
        appended_esp,
        ..SampleOptions::default()
    };
    Ok(build_sample(dir, &opts)?)
}

fn isoinfo_d(iso: &Path) -> anyhow::Result<String> {
    Ok(Cmd::new("isoinfo").args(["-d", "-i"]).arg(iso).read()?)
}

fn extract(iso: &Path, path: &str, dir: &Path) -> anyhow::Result<Vec<u8>> {
    Ok(diskforge_testutil::iso::extract(iso, path, dir)?)
}

fn fat_cfg(image: &Path) -> anyhow::Result<String> {
    Ok(Cmd::new("mtype")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(image)
        .arg("::/EFI/BOOT/grub.cfg")
        .read()?)
}

#[test]
fn inspect_matches_xorriso_isoinfo_and_sfdisk() -> R {
    let dir = tempfile::tempdir()?;
    for appended in [false, true] {
        let sub = dir.path().join(format!("s{appended}"));
        std::fs::create_dir(&sub)?;
        let iso = sample(&sub, appended)?;
        let r = diskforge_iso::inspect(&iso)?;
        let info = isoinfo_d(&iso)?;
        assert!(
            info.contains(&format!("Volume id: {}\n", r.primary.volume_id)),
            "{info}"
        );
        assert!(
            info.contains(&format!("Volume size is: {}\n", r.primary.volume_blocks)),
            "{info}"
        );
        assert!(info.contains(&format!("Application id: {}\n", r.primary.application_id)));
        assert!(info.contains(&format!("Publisher id: {}\n", r.primary.publisher_id)));
        assert!(info.contains("Rock Ridge signatures") && r.rock_ridge);
        assert!(info.contains("Joliet") && r.joliet.is_some());

        let report = Cmd::new("xorriso")
            .arg("-indev")
            .arg(&iso)
            .args(["-report_el_torito", "plain"])
            .read()?;
        let cat = r.el_torito.as_ref().expect("sample is bootable");
        assert!(
            report.contains(&format!("El Torito catalog  : {}  1", cat.lba)),
            "{report}"
        );
        for (i, e) in cat.entries.iter().enumerate() {
            let line = format!(
                "El Torito boot img :   {}  {}  {}   none  0x0000  0x00  {:>5}  {:>10}",
                i + 1,
                e.platform,
                if e.bootable { "y" } else { "n" },
                e.load_size,
                e.load_rba
            );
            assert!(report.contains(&line), "missing {line:?} in\n{report}");
            if let Some(p) = &e.image {
                assert!(
                    report.contains(&format!("El Torito img path :   {}  {p}", i + 1)),
                    "{report}"
                );
            }
        }
        assert_eq!(
            cat.entries[1].image.is_none(),
            appended,
            "UEFI image is hidden only when appended"
        );

        let sf: serde_json::Value = Cmd::new("sfdisk").arg("--json").arg(&iso).json()?;
        let parts = sf["partitiontable"]["partitions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mbr = r.hybrid.mbr.as_ref().expect("isohybrid MBR");
        assert_eq!(parts.len(), mbr.len());
        for (p, m) in parts.iter().zip(mbr) {
            assert_eq!(p["start"].as_u64(), Some(u64::from(m.start)));
            assert_eq!(p["size"].as_u64(), Some(u64::from(m.sectors)));
        }
        assert_eq!(r.hybrid.gpt.is_some(), !appended);
        assert!(r.implanted_md5.is_none());
        assert!(r.file_count >= 10, "{}", r.file_count);
    }
    Ok(())
}

#[test]
fn md5_is_byte_identical_to_implantisomd5_and_checks_both_ways() -> R {
    let dir = tempfile::tempdir()?;
    let iso = sample(dir.path(), false)?;
    let theirs = dir.path().join("theirs.iso");
    let ours = dir.path().join("ours.iso");
    std::fs::copy(&iso, &theirs)?;
    std::fs::copy(&iso, &ours)?;
    Cmd::new("implantisomd5").arg(&theirs).run()?;
    let sums = diskforge_iso::isomd5::implant(&ours, &mut |_, _| {})?;
    assert_eq!(
        std::fs::read(&ours)?,
        std::fs::read(&theirs)?,
        "implanted area differs from implantisomd5's"
    );
    assert_eq!(sums.fragment_sums.len(), 60);
    Cmd::new("checkisomd5").arg(&ours).run()?;
    let check = diskforge_iso::isomd5::check(&theirs, &mut |_, _| {})?;
    assert!(check.ok, "{check:?}");
    // A flipped byte in the covered data fails both checkers.
    let data = std::fs::read(&ours)?;
    let mut bad = data.clone();
    bad[40 * 2048 + 5] ^= 0xff;
    let badf = dir.path().join("bad.iso");
    std::fs::write(&badf, &bad)?;
    assert!(!diskforge_iso::isomd5::check(&badf, &mut |_, _| {})?.ok);
    assert!(Cmd::new("checkisomd5").arg(&badf).run().is_err());
    Ok(())
}

fn full_request(
    iso: &Path,
    out: Option<PathBuf>,
    mode: Mode,
    dir: &Path,
) -> anyhow::Result<Request> {
    let ks = dir.join("ks.cfg");
    std::fs::write(&ks, "# kickstart\ntext\nreboot\n")?;
    let extra = dir.join("extra.txt");
    std::fs::write(&extra, "added file\n")?;
    let readme = dir.join("README.new");
    std::fs::write(&readme, "replaced readme, longer than before\n")?;
    let mut req = Request::new(iso);
    req.output = out;
    req.mode = mode;
    req.kickstart = Some(ks);
    req.volid = Some("DF_REMASTER".into());
    req.kernel_args = vec!["console=ttyS0".into()];
    req.implant_md5 = true;
    req.edits = vec![
        Edit::Add {
            src: extra,
            dest: "/docs/extra.txt".into(),
        },
        Edit::Replace {
            src: readme,
            dest: "/docs/README.txt".into(),
        },
        Edit::Remove {
            dest: "/images/initrd.img".into(),
        },
    ];
    Ok(req)
}

fn check_output(input: &Path, out: &Path, dir: &Path) -> R {
    assert_eq!(
        el_torito_report(input)?,
        el_torito_report(out)?,
        "El Torito entries changed"
    );
    Cmd::new("checkisomd5").arg(out).run()?;
    let info = isoinfo_d(out)?;
    assert!(info.contains("Volume id: DF_REMASTER\n"), "{info}");
    assert!(
        info.contains("Application id: DISKFORGE SAMPLE\n"),
        "{info}"
    );
    assert!(info.contains("Publisher id: DISKFORGE\n"), "{info}");
    let ks_arg = "inst.ks=hd:LABEL=DF_REMASTER:/ks.cfg";
    assert_eq!(
        extract(out, "/ks.cfg", dir)?,
        b"# kickstart\ntext\nreboot\n"
    );
    assert_eq!(extract(out, "/docs/extra.txt", dir)?, b"added file\n");
    assert_eq!(
        extract(out, "/docs/README.txt", dir)?,
        b"replaced readme, longer than before\n"
    );
    let files = Cmd::new("xorriso")
        .arg("-indev")
        .arg(out)
        .args(["-find", "/", "-type", "f"])
        .read()?;
    assert!(!files.contains("initrd.img"), "{files}");
    assert!(files.contains("'/docs/extra.txt'"), "{files}");
    // Joliet sees the same names.
    let joliet = Cmd::new("isoinfo")
        .args(["-J", "-f", "-i"])
        .arg(out)
        .read()?;
    assert!(joliet.lines().any(|l| l == "/docs/extra.txt"), "{joliet}");
    assert!(joliet.lines().any(|l| l == "/ks.cfg"), "{joliet}");
    for cfg in [
        "/isolinux/isolinux.cfg",
        "/boot/grub/grub.cfg",
        "/EFI/BOOT/grub.cfg",
    ] {
        let text = String::from_utf8(extract(out, cfg, dir)?)?;
        let kernel_lines: Vec<&str> = text
            .lines()
            .filter(|l| {
                let t = l.trim_start();
                t.starts_with("append") || t.starts_with("linux")
            })
            .collect();
        assert!(!kernel_lines.is_empty(), "{cfg}");
        for l in kernel_lines {
            assert!(
                l.contains(ks_arg) && l.contains("console=ttyS0"),
                "{cfg}: {l}"
            );
        }
    }
    let efi = dir.join("efiboot.img");
    std::fs::write(&efi, extract(out, "/images/efiboot.img", dir)?)?;
    let cfg = fat_cfg(&efi)?;
    assert!(
        cfg.lines()
            .filter(|l| l.trim_start().starts_with("linux"))
            .all(|l| l.contains(ks_arg)),
        "{cfg}"
    );
    Ok(())
}

#[test]
fn direct_and_copy_modes_apply_every_edit_and_keep_boot() -> R {
    let dir = tempfile::tempdir()?;
    let iso = sample(dir.path(), false)?;
    for mode in [Mode::Direct, Mode::Copy] {
        let out = dir.path().join(format!("out-{mode}.iso"));
        let req = full_request(&iso, Some(out.clone()), mode, dir.path())?;
        let o = remaster(&req, &mut |_| {})?;
        assert_eq!(o.mode, mode);
        check_output(&iso, &out, dir.path())?;
    }
    Ok(())
}

#[test]
fn auto_falls_back_to_direct_and_says_why() -> R {
    let dir = tempfile::tempdir()?;
    let iso = sample(dir.path(), false)?;
    // A new directory tree fits the padding: auto stays in patch mode and creates it.
    let out = dir.path().join("auto.iso");
    let mut req = full_request(&iso, Some(out.clone()), Mode::Auto, dir.path())?;
    req.edits.push(Edit::Add {
        src: dir.path().join("ks.cfg"),
        dest: "/newdir/sub/ks.cfg".into(),
    });
    let o = remaster(&req, &mut |_| {})?;
    assert_eq!(o.mode, Mode::Patch, "{}", o.reason);
    assert!(
        o.notes
            .iter()
            .any(|n| n.starts_with("directory /newdir/sub: created"))
    );
    check_output(&iso, &out, dir.path())?;
    assert_eq!(
        extract(&out, "/newdir/sub/ks.cfg", dir.path())?,
        std::fs::read(dir.path().join("ks.cfg"))?
    );
    // Removing a directory is beyond our writer: auto says so and xorriso does it.
    let out = dir.path().join("auto-rm.iso");
    let mut req = Request::new(&iso);
    req.output = Some(out.clone());
    req.implant_md5 = true;
    req.edits.push(Edit::Remove {
        dest: "/docs".into(),
    });
    let o = remaster(&req, &mut |_| {})?;
    assert_eq!(o.mode, Mode::Direct);
    assert!(
        o.reason.contains("/docs is a directory") && o.reason.contains("xorriso"),
        "{}",
        o.reason
    );
    let listing = Cmd::new("isoinfo")
        .args(["-R", "-f", "-i"])
        .arg(&out)
        .read()?;
    assert!(!listing.contains("/docs"), "{listing}");
    assert_eq!(el_torito_report(&iso)?, el_torito_report(&out)?);
    Cmd::new("checkisomd5").arg(&out).run()?;
    // The same request in patch mode is refused, and leaves no output.
    let out2 = dir.path().join("patch.iso");
    let mut req2 = req.clone();
    req2.output = Some(out2.clone());
    req2.mode = Mode::Patch;
    let err = remaster(&req2, &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("/docs"), "{err}");
    assert!(!out2.exists());
    Ok(())
}

#[test]
fn patch_mode_with_output_and_in_place() -> R {
    let dir = tempfile::tempdir()?;
    let iso = sample(dir.path(), false)?;
    let orig = std::fs::read(&iso)?;
    let out = dir.path().join("patched.iso");
    let req = full_request(&iso, Some(out.clone()), Mode::Auto, dir.path())?;
    let o = remaster(&req, &mut |_| {})?;
    assert_eq!(o.mode, Mode::Patch, "{}", o.reason);
    assert_eq!(std::fs::read(&iso)?, orig, "input untouched with -o");
    check_output(&iso, &out, dir.path())?;

    // In place, a one-line kickstart touches only a handful of blocks.
    let inplace = dir.path().join("inplace.iso");
    std::fs::copy(&iso, &inplace)?;
    let ks = dir.path().join("one.ks");
    std::fs::write(&ks, "text\n")?;
    let mut req = Request::new(&inplace);
    req.kickstart = Some(ks);
    req.implant_md5 = true;
    // Issue 13 defect 7: not crash-safe, so refused without --force, input untouched.
    let e = remaster(&req, &mut |_| {}).expect_err("in place without force");
    assert!(e.to_string().contains("not crash-safe"), "{e}");
    assert_eq!(std::fs::read(&inplace)?, orig);
    req.force = true;
    let o = remaster(&req, &mut |_| {})?;
    assert!(o.in_place && o.mode == Mode::Patch);
    // The MD5 was computed before any byte went out, and it matches.
    Cmd::new("checkisomd5").arg(&inplace).run()?;
    let after = std::fs::read(&inplace)?;
    assert_eq!(after.len(), orig.len());
    let changed = orig
        .chunks(2048)
        .zip(after.chunks(2048))
        .filter(|(a, b)| a != b)
        .count();
    assert!(changed <= 16, "{changed} blocks changed");
    assert_eq!(extract(&inplace, "/one.ks", dir.path())?, b"text\n");
    assert_eq!(el_torito_report(&iso)?, el_torito_report(&inplace)?);
    Ok(())
}

#[test]
fn appended_esp_is_edited_in_patch_and_direct() -> R {
    let dir = tempfile::tempdir()?;
    let iso = sample(dir.path(), true)?;
    for mode in [Mode::Patch, Mode::Direct] {
        let out = dir.path().join(format!("esp-{mode}.iso"));
        let mut req = Request::new(&iso);
        req.output = Some(out.clone());
        req.mode = mode;
        req.kernel_args = vec!["inst.text".into()];
        remaster(&req, &mut |_| {})?;
        assert_eq!(el_torito_report(&iso)?, el_torito_report(&out)?);
        let r = diskforge_iso::inspect(&out)?;
        let esp = r.hybrid.esp_ranges();
        assert_eq!(esp.len(), 1, "{:?}", r.hybrid);
        let data = std::fs::read(&out)?;
        let img = dir.path().join(format!("esp-{mode}.img"));
        std::fs::write(
            &img,
            &data[esp[0].0 as usize..(esp[0].0 + esp[0].1) as usize],
        )?;
        let cfg = fat_cfg(&img)?;
        assert!(
            cfg.contains("linux /images/vmlinuz quiet inst.text"),
            "{mode}: {cfg}"
        );
    }
    Ok(())
}

/// Direct mode with more data than the padding holds: our writer grows the image. Checked
/// with independent tools on the sample (MBR only, ESP in the tree or appended) and on the
/// installer fixture (MBR + GPT, ESP in the tree or an appended GPT partition): the added file
/// and the edited configs read back (`osirrox`, `mtype` on the ESP wherever it went), the
/// same El Torito entries, `sgdisk -v` clean on the moved GPT, `sfdisk` sees every partition
/// unchanged, moved by the growth (an appended ESP) or grown by it (the whole-ISO one),
/// `isoinfo` reports the new volume size, and `checkisomd5` passes.
#[test]
fn direct_grows_the_image_and_moves_what_follows() -> R {
    use diskforge_iso_fixture::{EspLayout, FixtureSpec, build};
    let dir = tempfile::tempdir()?;
    let big = dir.path().join("big.bin");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&big, &data)?;
    let mut inputs = Vec::new();
    for appended in [false, true] {
        let sub = dir.path().join(format!("sample-{appended}"));
        std::fs::create_dir(&sub)?;
        inputs.push((sample(&sub, appended)?, sub));
    }
    for esp in [EspLayout::InTree, EspLayout::Appended] {
        let sub = dir.path().join(format!("fixture-{esp:?}"));
        let mut spec = FixtureSpec::new(&sub);
        spec.esp = esp;
        spec.filler_bytes = 1 << 20;
        spec.filler_files = 2;
        inputs.push((build(&spec)?.iso, sub));
    }
    let parts = |p: &Path| -> anyhow::Result<Vec<(u64, u64)>> {
        let v: serde_json::Value = Cmd::new("sfdisk").arg("--json").arg(p).json()?;
        Ok(v["partitiontable"]["partitions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p["start"].as_u64().unwrap_or(0),
                    p["size"].as_u64().unwrap_or(0),
                )
            })
            .collect())
    };
    // sgdisk -v exits 0 only when it found no problem.
    let sgdisk_ok = |p: &Path| -> (bool, String) {
        match Cmd::new("sgdisk").arg("-v").arg(p).read() {
            Ok(v) => (v.contains("No problems found"), v),
            Err(e) => (false, e.to_string()),
        }
    };
    let mut gpts = 0;
    for (iso, sub) in inputs {
        let before = diskforge_iso::inspect(&iso)?;
        let gpt = sgdisk_ok(&iso).0;
        gpts += usize::from(gpt);
        let out = sub.join("grown.iso");
        let mut req = Request::new(&iso);
        req.output = Some(out.clone());
        req.mode = Mode::Direct;
        req.kernel_args = vec!["inst.text".into()];
        req.edits.push(Edit::Add {
            src: big.clone(),
            dest: "/big.bin".into(),
        });
        req.implant_md5 = true;
        let o = remaster(&req, &mut |_| {})?;
        let what = format!("{}: {}", iso.display(), o.reason);
        assert_eq!(o.mode, Mode::Direct);
        assert!(
            o.reason.contains("our writer") && o.reason.contains("grows by"),
            "{what}"
        );
        let after = diskforge_iso::inspect(&out)?;
        let grown = std::fs::metadata(&out)?.len() - std::fs::metadata(&iso)?.len();
        assert!(grown > 0 && grown % (1 << 20) == 0, "grew by {grown}");
        assert_eq!(after.volume_size, before.volume_size + grown);
        assert!(
            isoinfo_d(&out)?.contains(&format!("Volume size is: {}\n", after.volume_size / 2048)),
            "{what}"
        );
        assert_eq!(extract(&out, "/big.bin", dir.path())?, data, "{what}");
        assert_eq!(el_torito_report(&iso)?, el_torito_report(&out)?, "{what}");
        Cmd::new("checkisomd5").arg(&out).run()?;
        if gpt {
            let (ok, v) = sgdisk_ok(&out);
            assert!(ok, "{what}\n{v}");
        }
        let (pb, pa) = (parts(&iso)?, parts(&out)?);
        assert_eq!(pb.len(), pa.len(), "{what}: {pb:?} {pa:?}");
        let g = grown / 512;
        for (b, a) in pb.iter().zip(&pa) {
            assert!(
                a == b || *a == (b.0 + g, b.1) || *a == (b.0, b.1 + g),
                "{what}: partition {b:?} became {a:?} (growth {g} sectors)"
            );
        }
        assert!(
            pa.iter().zip(&pb).any(|(a, b)| a != b),
            "{what}: nothing grew"
        );
        // The ESP (appended: moved; in the tree: where it was) has the edited grub.cfg.
        let (eb, ea) = (before.hybrid.esp_ranges(), after.hybrid.esp_ranges());
        let img = sub.join("esp.img");
        let (off, len) = match (eb.first(), ea.first()) {
            (Some(b), Some(a)) => {
                assert!(
                    *a == *b || *a == (b.0 + grown, b.1),
                    "{what}: ESP {b:?} → {a:?}"
                );
                *a
            }
            _ => {
                let p = after
                    .el_torito
                    .iter()
                    .flat_map(|c| c.entries.iter())
                    .find_map(|e| e.image.clone())
                    .filter(|p| p.ends_with(".img"))
                    .ok_or_else(|| anyhow::anyhow!("{what}: no EFI image"))?;
                std::fs::write(&img, extract(&out, &p, dir.path())?)?;
                (0, std::fs::metadata(&img)?.len())
            }
        };
        if off > 0 {
            let bytes = std::fs::read(&out)?;
            std::fs::write(&img, &bytes[off as usize..(off + len) as usize])?;
        }
        let cfg = fat_cfg(&img)?;
        assert!(cfg.contains("inst.text"), "{what}: {cfg}");
    }
    assert!(gpts >= 1, "no input had a valid GPT to check");
    Ok(())
}

/// Directory LBAs as the path table lists them (`isoinfo -p`) and as each directory's `.`
/// record says (`isoinfo -l`): they must be the same set.
fn path_table_and_dot_lbas(iso: &Path) -> anyhow::Result<(Vec<u32>, Vec<u32>)> {
    let p = Cmd::new("isoinfo").args(["-p", "-i"]).arg(iso).read()?;
    let mut table: Vec<u32> = p
        .lines()
        .filter(|l| l.contains(':') && !l.starts_with("Path table"))
        .filter_map(|l| l.split_whitespace().nth(2))
        .map(|h| u32::from_str_radix(h, 16))
        .collect::<Result<_, _>>()?;
    let l = Cmd::new("isoinfo").args(["-l", "-i"]).arg(iso).read()?;
    let mut dots: Vec<u32> = l
        .lines()
        .filter(|x| x.trim_end().ends_with("]  ."))
        .filter_map(|x| x.split('[').nth(1))
        .filter_map(|x| x.split_whitespace().next())
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    table.sort_unstable();
    dots.sort_unstable();
    Ok((table, dots))
}

/// Adding more records than a directory's blocks hold rewrites the directory (in patch mode
/// into the padding, in direct mode wherever there is room), in both trees, with the parent
/// record, the `..` of subdirectories and the path tables following; files under missing
/// directories create them (`mkdir -p`, path tables in ECMA-119 order). Checked with
/// `isoinfo` (Rock Ridge, Joliet and plain listings, path table against `.` records),
/// `osirrox`, and `checkisomd5`.
#[test]
fn full_directories_are_rewritten_in_both_trees() -> R {
    let dir = tempfile::tempdir()?;
    let iso = sample(dir.path(), false)?;
    let src = dir.path().join("src");
    std::fs::create_dir(&src)?;
    for mode in [Mode::Patch, Mode::Direct] {
        let out = dir.path().join(format!("many-{mode}.iso"));
        let mut req = Request::new(&iso);
        req.output = Some(out.clone());
        req.mode = mode;
        req.implant_md5 = true;
        for d in ["", "/docs", "/boot/grub", "/new", "/docs/new/deeper"] {
            for i in 0..60 {
                let name = format!("new_{i:02}.cfg");
                let f = src.join(format!("{}{name}", d.replace('/', "_")));
                std::fs::write(&f, format!("{d}/{name}\n"))?;
                req.edits.push(Edit::Add {
                    src: f,
                    dest: format!("{d}/{name}"),
                });
            }
        }
        let o = remaster(&req, &mut |_| {})?;
        assert_eq!(o.mode, mode, "{}", o.reason);
        let rewritten = o
            .notes
            .iter()
            .filter(|n| n.starts_with("directory "))
            .count();
        assert!(rewritten >= 4, "{:?}", o.notes);
        Cmd::new("checkisomd5").arg(&out).run()?;
        assert_eq!(el_torito_report(&iso)?, el_torito_report(&out)?);
        let (table, dots) = path_table_and_dot_lbas(&out)?;
        assert_eq!(table, dots, "{mode}: path table vs . records");
        for (flag, needle) in [
            ("-R", "new_59.cfg"),
            ("-J", "new_59.cfg"),
            ("", "NEW_59.CFG;1"),
        ] {
            let mut c = Cmd::new("isoinfo").arg("-l");
            if !flag.is_empty() {
                c = c.arg(flag);
            }
            let listing = c.arg("-i").arg(&out).read()?;
            assert_eq!(listing.matches(needle).count(), 5, "{mode} {flag}");
        }
        for d in ["", "/docs", "/boot/grub", "/new", "/docs/new/deeper"] {
            let got = extract(&out, &format!("{d}/new_42.cfg"), dir.path())?;
            assert_eq!(got, format!("{d}/new_42.cfg\n").into_bytes());
        }
        // What was there before is still there.
        assert_eq!(
            extract(&out, "/isolinux/isolinux.cfg", dir.path())?,
            extract(&iso, "/isolinux/isolinux.cfg", dir.path())?
        );
    }
    Ok(())
}

/// An image without padding (`-no-pad`: the last file reaches the end of the volume) cannot
/// grow before its isomd5sum skip area without splitting that file: direct mode leaves it to
/// xorriso, and the last file and the new one read back intact.
#[test]
fn direct_does_not_grow_through_a_file() -> R {
    let dir = tempfile::tempdir()?;
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree)?;
    let last: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
    std::fs::write(tree.join("last.bin"), &last)?;
    let iso = dir.path().join("nopad.iso");
    Cmd::new("xorriso")
        .args(["-as", "mkisofs", "-R", "-J", "-no-pad", "-o"])
        .arg(&iso)
        .arg(&tree)
        .run()?;
    let big = dir.path().join("big.bin");
    std::fs::write(&big, vec![7u8; 1 << 20])?;
    let out = dir.path().join("out.iso");
    let mut req = Request::new(&iso);
    req.output = Some(out.clone());
    req.mode = Mode::Direct;
    req.edits.push(Edit::Add {
        src: big.clone(),
        dest: "/big.bin".into(),
    });
    let o = remaster(&req, &mut |_| {})?;
    assert!(
        o.reason.contains("where the image would grow") && o.reason.contains("xorriso"),
        "{}",
        o.reason
    );
    assert_eq!(extract(&out, "/last.bin", dir.path())?, last);
    assert_eq!(extract(&out, "/big.bin", dir.path())?, std::fs::read(&big)?);
    Ok(())
}

/// New directories keep Rock Ridge link counts right: on an image whose directories count
/// their subdirectories (`genisoimage -R`), adding `mkdir -p`-style paths gives every
/// directory record (`.`, `..` and the names in parents) the same link count as
/// `genisoimage` itself writes for the edited tree.
#[test]
fn rock_ridge_link_counts_match_a_rebuild() -> R {
    let dir = tempfile::tempdir()?;
    let t = dir.path().join("tree");
    for d in ["docs/a", "boot/grub", "empty"] {
        std::fs::create_dir_all(t.join(d))?;
    }
    std::fs::write(t.join("docs/a/f"), "x\n")?;
    std::fs::write(t.join("boot/grub/g"), "y\n")?;
    let mkiso = |tree: &Path, out: &Path| -> anyhow::Result<()> {
        Cmd::new("genisoimage")
            .args(["-quiet", "-R", "-J", "-o"])
            .arg(out)
            .arg(tree)
            .run()?;
        Ok(())
    };
    let (a, b, c) = (
        dir.path().join("a.iso"),
        dir.path().join("b.iso"),
        dir.path().join("c.iso"),
    );
    mkiso(&t, &a)?;
    let q = dir.path().join("q.cfg");
    std::fs::write(&q, "z\n")?;
    let added = ["/newdir/sub/q.cfg", "/docs/newsub/q.cfg", "/empty/n/q.cfg"];
    let mut req = Request::new(&a);
    req.output = Some(b.clone());
    for d in added {
        req.edits.push(Edit::Add {
            src: q.clone(),
            dest: d.into(),
        });
        let f = t.join(d.trim_start_matches('/'));
        std::fs::create_dir_all(f.parent().expect("has a parent"))?;
        std::fs::copy(&q, &f)?;
    }
    remaster(&req, &mut |_| {})?;
    mkiso(&t, &c)?;
    // Every directory line of the Rock Ridge listing: where, name, link count.
    let dirs = |iso: &Path| -> anyhow::Result<Vec<String>> {
        let l = Cmd::new("isoinfo")
            .args(["-R", "-l", "-i"])
            .arg(iso)
            .read()?;
        let mut at = String::new();
        let mut v = Vec::new();
        for line in l.lines() {
            if let Some(d) = line.strip_prefix("Directory listing of ") {
                at = d.trim().to_owned();
            } else if line.starts_with('d') {
                let w: Vec<&str> = line.split_whitespace().collect();
                v.push(format!("{at} {} {}", w[w.len() - 1], w[1]));
            }
        }
        v.sort();
        Ok(v)
    };
    let (ours, theirs) = (dirs(&b)?, dirs(&c)?);
    assert!(ours.iter().any(|l| l == "/ newdir 3"), "{ours:?}");
    assert_eq!(ours, theirs);
    Ok(())
}

#[test]
fn bad_input_names_the_value_and_leaves_no_output() -> R {
    let dir = tempfile::tempdir()?;
    let iso = sample(dir.path(), false)?;
    let outdir = dir.path().join("out");
    std::fs::create_dir(&outdir)?;
    let out = outdir.join("o.iso");
    let cases: Vec<(Request, &str)> = vec![
        {
            let mut r = Request::new(&iso);
            r.edits.push(Edit::Add {
                src: dir.path().join("missing.cfg"),
                dest: "/m.cfg".into(),
            });
            (r, "missing.cfg")
        },
        {
            let mut r = Request::new(&iso);
            r.edits.push(Edit::Remove {
                dest: "/no/such/file".into(),
            });
            (r, "/no/such/file")
        },
        {
            let mut r = Request::new(&iso);
            r.edits.push(Edit::Replace {
                src: iso.clone(),
                dest: "/nope.txt".into(),
            });
            (r, "/nope.txt")
        },
        {
            let mut r = Request::new(dir.path().join("sample-grub.cfg"));
            r.volid = Some("X".into());
            (r, "sample-grub.cfg")
        },
        {
            let mut r = Request::new(&iso);
            r.volid = Some("A".repeat(40));
            (r, "AAAA")
        },
    ];
    for (mut req, needle) in cases {
        req.output = Some(out.clone());
        let err = format!(
            "{:#}",
            anyhow::Error::from(remaster(&req, &mut |_| {}).unwrap_err())
        );
        assert!(err.contains(needle), "{needle:?} not in {err:?}");
    }
    let err = Edit::parse_pair("--add", "no-colon-here")
        .unwrap_err()
        .to_string();
    assert!(err.contains("no-colon-here"), "{err}");
    assert_eq!(
        std::fs::read_dir(&outdir)?.count(),
        0,
        "output dir must stay empty"
    );
    Ok(())
}

/// The installer-like fixture (`diskforge-iso-fixture`: real GRUB EFI in the FAT image, in the
/// tree or as an appended GPT partition): a kickstart remaster in patch and direct mode edits
/// every config the fixture lists, including the ones inside the EFI image, keeps the boot
/// entries, and passes `checkisomd5`. (Booting the results is the fixture's QEMU check.)
#[test]
fn installer_fixture_kickstart_in_patch_and_direct() -> R {
    use diskforge_iso_fixture::{EspLayout, FixtureSpec, build};
    let dir = tempfile::tempdir()?;
    let ks = dir.path().join("ks.cfg");
    std::fs::write(&ks, "text\n")?;
    for esp in [EspLayout::InTree, EspLayout::Appended] {
        let mut spec = FixtureSpec::new(dir.path().join(format!("{esp:?}")));
        spec.esp = esp;
        spec.filler_bytes = 2 << 20;
        spec.filler_files = 4;
        let fx = build(&spec)?;
        let arg = format!(
            "inst.ks=hd:LABEL={}:/ks.cfg",
            fx.volid.replace(' ', "\\x20")
        );
        for mode in [Mode::Auto, Mode::Direct, Mode::Copy] {
            let out = dir.path().join(format!("{esp:?}-{mode}.iso"));
            let mut req = Request::new(&fx.iso);
            req.output = Some(out.clone());
            req.mode = mode;
            req.kickstart = Some(ks.clone());
            req.implant_md5 = true;
            let o = remaster(&req, &mut |_| {})?;
            if mode == Mode::Auto {
                assert_eq!(o.mode, Mode::Patch, "{esp:?}: {}", o.reason);
            }
            assert_eq!(
                el_torito_report(&fx.iso)?,
                el_torito_report(&out)?,
                "{esp:?} {mode}"
            );
            Cmd::new("checkisomd5").arg(&out).run()?;
            for cfg in &fx.tree_configs {
                let text = String::from_utf8(extract(&out, &format!("/{cfg}"), dir.path())?)?;
                assert!(text.contains(&arg), "{esp:?} {mode} {cfg}:\n{text}");
            }
            let efi = dir.path().join("efi.img");
            match (&fx.efiboot, fx.esp_partition) {
                (Some(p), _) => std::fs::write(&efi, extract(&out, &format!("/{p}"), dir.path())?)?,
                (None, Some(_)) => {
                    let r = diskforge_iso::inspect(&out)?;
                    let (off, len) = r.hybrid.esp_ranges()[0];
                    let data = std::fs::read(&out)?;
                    std::fs::write(&efi, &data[off as usize..(off + len) as usize])?;
                }
                (None, None) => unreachable!("the fixture has UEFI"),
            }
            for cfg in &fx.efiboot_configs {
                let text = Cmd::new("mtype")
                    .env("MTOOLS_SKIP_CHECK", "1")
                    .arg("-i")
                    .arg(&efi)
                    .arg(format!("::/{}", cfg.trim_start_matches('/')))
                    .read()?;
                assert!(text.contains(&arg), "{esp:?} {mode} efi {cfg}:\n{text}");
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- hostile and damaged input
//
// Each crafted image starts as the valid xorriso sample and gets a few bytes patched at the
// offsets our reader reports. Every remaster must refuse it before writing anything (no
// output, no temporary file, in well under the time a copy would take) and `inspect` must
// list what is wrong.

/// Overwrite `bytes` at `off` of `iso`.
fn poke(iso: &Path, off: u64, bytes: &[u8]) -> R {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(iso)?;
    f.write_all_at(bytes, off)?;
    Ok(())
}

/// An ISO 9660 both-endian 32-bit field.
fn both32(v: u32) -> [u8; 8] {
    let mut o = [0u8; 8];
    o[..4].copy_from_slice(&v.to_le_bytes());
    o[4..].copy_from_slice(&v.to_be_bytes());
    o
}

/// The primary tree of `iso` as our reader sees it.
fn primary(iso: &Path) -> anyhow::Result<diskforge_iso::iso9660::Tree> {
    let vol = diskforge_iso::iso9660::Volume::open(iso)?;
    Ok(vol.tree(diskforge_iso::iso9660::TreeKind::Primary)?)
}

/// The byte offset of the directory record of `path` in the primary tree.
fn record_of(iso: &Path, path: &str) -> anyhow::Result<u64> {
    let t = primary(iso)?;
    let n = t
        .get(path)
        .ok_or_else(|| anyhow::anyhow!("{path} not in the sample"))?;
    Ok(n.records[0])
}

/// Remaster `iso` in every mode that runs unprivileged; each must fail with an error
/// containing `needle`, leave nothing in `dir` but the input, and be quick.
fn refused_everywhere(iso: &Path, dir: &Path, needle: &str) -> R {
    let ks = dir.join("ks.cfg");
    std::fs::write(&ks, "text\n")?;
    for mode in [Mode::Auto, Mode::Patch, Mode::Direct, Mode::Copy] {
        let mut req = Request::new(iso);
        let out = dir.join("out.iso");
        req.output = Some(out.clone());
        req.mode = mode;
        req.kickstart = Some(ks.clone());
        let t = std::time::Instant::now();
        let e = remaster(&req, &mut |_| {}).expect_err("a damaged image was remastered");
        let msg = format!("{e:#}");
        assert!(msg.contains(needle), "{mode}: {needle:?} not in {msg:?}");
        assert!(
            matches!(e, diskforge_iso::Error::Hostile { .. }),
            "{mode}: {e:?}"
        );
        assert!(t.elapsed().as_secs() < 10, "{mode}: took {:?}", t.elapsed());
        let left: Vec<String> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".iso-remaster") || n == "out.iso")
            .collect();
        assert!(left.is_empty(), "{mode}: left {left:?}");
    }
    Ok(())
}

/// The problem kinds `inspect` reports for `iso`.
fn problem_kinds(iso: &Path) -> anyhow::Result<Vec<String>> {
    let r = diskforge_iso::inspect(iso)?;
    Ok(r.problems.iter().map(|p| format!("{:?}", p.kind)).collect())
}

/// Issue 13 defect 3: a record length of 0 in the middle of the root's block hid the
/// entries after it, silently.
#[test]
fn zero_length_record_is_reported_and_refused() -> R {
    let dir = tempfile::tempdir()?;
    let iso = sample(dir.path(), false)?;
    let before = primary(&iso)?;
    let docs = record_of(&iso, "/docs")?;
    poke(&iso, docs, &[0])?;
    let after = primary(&iso)?;
    // The reader still cannot see past it (ECMA-119: continue at the next block) …
    assert!(after.nodes.len() < before.nodes.len());
    // … but says so, naming the directory.
    let kinds = problem_kinds(&iso)?;
    assert!(kinds.contains(&"ZeroLengthRecord".to_owned()), "{kinds:?}");
    refused_everywhere(&iso, dir.path(), "record length 0")
}

/// Issue 13 defect 8: a directory pointing back at the root made the xorriso fallback
/// hang; detected by our reader before any program runs.
#[test]
fn directory_loop_is_refused_before_xorriso_runs() -> R {
    let dir = tempfile::tempdir()?;
    let iso = sample(dir.path(), false)?;
    let root_lba = primary(&iso)?.dirs["/"].lba;
    let boot_grub = record_of(&iso, "/boot/grub")?;
    poke(&iso, boot_grub + 2, &both32(root_lba))?;
    let kinds = problem_kinds(&iso)?;
    assert!(kinds.contains(&"DirectoryLoop".to_owned()), "{kinds:?}");
    refused_everywhere(&iso, dir.path(), "directory loop")
}

/// Issue 13 defect 9: a file size past the end (4 GiB) was written out in full before
/// failing; extents are validated before anything is written.
#[test]
fn extent_past_the_end_is_refused_before_writing() -> R {
    let dir = tempfile::tempdir()?;
    let iso = sample(dir.path(), false)?;
    let rec = record_of(&iso, "/docs/README.txt")?;
    poke(&iso, rec + 10, &both32(0xffff_f000))?;
    let kinds = problem_kinds(&iso)?;
    assert!(kinds.contains(&"ExtentPastEnd".to_owned()), "{kinds:?}");
    refused_everywhere(&iso, dir.path(), "/docs/README.txt")
}

/// Issue 13 defect 4: a truncated image (half of it gone) inspected without a word.
#[test]
fn truncated_image_is_reported_and_refused() -> R {
    let dir = tempfile::tempdir()?;
    let iso = sample(dir.path(), false)?;
    let len = std::fs::metadata(&iso)?.len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&iso)?
        .set_len(len / 2 / 2048 * 2048)?;
    let kinds = problem_kinds(&iso)?;
    assert!(kinds.contains(&"VolumePastEnd".to_owned()), "{kinds:?}");
    assert!(kinds.contains(&"ExtentPastEnd".to_owned()), "{kinds:?}");
    refused_everywhere(&iso, dir.path(), "past the end")
}

/// Issue 13 defect 2 (the reader's half): Rock Ridge names with `/` made the kernel's view
/// return EIO and the kernel modes drop files; refused up front in every mode.
#[test]
fn rock_ridge_name_with_a_slash_is_refused() -> R {
    let dir = tempfile::tempdir()?;
    let iso = sample(dir.path(), false)?;
    let rec = record_of(&iso, "/docs/README.txt")?;
    let mut buf = vec![0u8; 255];
    {
        use std::os::unix::fs::FileExt;
        std::fs::File::open(&iso)?.read_exact_at(&mut buf, rec)?;
    }
    let len = usize::from(buf[0]);
    let nm = buf[..len]
        .windows(2)
        .position(|w| w == b"NM")
        .ok_or_else(|| anyhow::anyhow!("no NM entry"))?;
    // NM: signature, length, version, flags, then the name: "README.txt" -> "RE/DME.txt".
    assert_eq!(&buf[nm + 5..nm + 7], b"RE");
    poke(&iso, rec + nm as u64 + 7, b"/")?;
    let kinds = problem_kinds(&iso)?;
    assert!(kinds.contains(&"BadName".to_owned()), "{kinds:?}");
    refused_everywhere(&iso, dir.path(), "RE/DME.txt")
}

/// Issue 13 defect 10: a volume space larger than the file: copy mode returned 0 without a
/// warning. It still works (every extent is inside the file) and says so.
#[test]
fn volume_space_past_the_end_warns() -> R {
    let dir = tempfile::tempdir()?;
    let iso = sample(dir.path(), false)?;
    let vol = diskforge_iso::iso9660::Volume::open(&iso)?;
    let blocks = vol.primary.volume_blocks;
    poke(
        &iso,
        u64::from(vol.primary.lba) * 2048 + 80,
        &both32(blocks + 1000),
    )?;
    assert_eq!(problem_kinds(&iso)?, ["VolumePastEnd"]);
    for mode in [Mode::Copy, Mode::Direct] {
        let mut req = Request::new(&iso);
        let out = dir.path().join(format!("{mode}.iso"));
        req.output = Some(out.clone());
        req.mode = mode;
        req.volid = Some("NEWVOL".into());
        let o = remaster(&req, &mut |_| {})?;
        assert!(
            o.warnings.iter().any(|w| w.contains("volume space")),
            "{mode}: {:?}",
            o.warnings
        );
        assert!(out.is_file());
    }
    Ok(())
}
