//! VM tests for the iso area: the kernel routes of `iso-remaster` (overlay, bind, and copy
//! through mount + rsync), which loop-mount the ISO as iso9660 — the host kernel cannot.
//! Each remasters the sample hybrid ISO with a kickstart, an added and a replaced file and
//! an implanted MD5, then checks the result with independent tools (`checkisomd5`,
//! `xorriso -report_el_torito`, `osirrox -extract`, `mtype`) and that no mount or loop
//! device under the scratch dir is left.
//!
//! Section "remaster modes" is owned by the iso-remaster work; the fixture's boot checks go
//! below the marked section at the end.

use anyhow::{Context, Result, ensure};
use diskforge_cmd::Cmd;
use diskforge_iso::{Edit, Event, Mode, Request, remaster};
use diskforge_iso_fixture::sample::{SampleOptions, build_sample};
use diskforge_testutil::KernelState;
use diskforge_testutil::iso::{el_torito_entries as report, extract};
use libtest_mimic::Trial;

use crate::trial;

/// This module's tests.
pub fn tests() -> Vec<Trial> {
    vec![
        // --- remaster modes (iso-remaster) ---
        trial("iso::overlay_mode_kickstart_md5", overlay_mode),
        trial("iso::bind_mode_replace_and_add", bind_mode),
        trial("iso::copy_mode_mount_rsync", copy_mode),
        trial("iso::kernel_mode_failure_releases_mounts", failure_releases),
        trial(
            "iso::kernel_reads_rewritten_directories_in_every_view",
            rewritten_directories,
        ),
        trial(
            "iso::kernel_modes_refuse_rock_ridge_names_with_a_slash",
            refuse_bad_names,
        ),
        trial(
            "iso::kernel_modes_stop_on_sigint_and_sigterm",
            kernel_signals,
        ),
        trial("iso::kernel_modes_leak_nothing_on_sigkill", kernel_sigkill),
        // --- fixture boot checks (iso-fixture) go below this line ---
    ]
}

// ---------------------------------------------------------------- remaster modes

/// Our writer rewrites directories that run out of room (patch and direct mode) and grows
/// the image: 80 files added to `/` and to `/docs` (both need more blocks, in both trees,
/// with the path tables following), 80 into new directories `/new/sub_dir`, plus a 3 MiB
/// file past the old end. The kernel's
/// iso9660 then reads every file back in all three name views: Rock Ridge, Joliet
/// (`norock`) and plain ISO 9660 (`norock,nojoliet`).
fn rewritten_directories() -> Result<()> {
    use diskforge_loop::{AttachOptions, LoopDevice};
    use diskforge_mount::{Mount, MountFlags};
    let dir = tempfile::tempdir()?;
    let iso = build_sample(dir.path(), &SampleOptions::default())?;
    let src = dir.path().join("src");
    std::fs::create_dir(&src)?;
    let mut req = Request::new(&iso);
    let out = dir.path().join("out.iso");
    req.output = Some(out.clone());
    req.mode = Mode::Direct;
    let mut expect: Vec<(String, Vec<u8>)> = Vec::new();
    for d in ["", "/docs", "/new/sub_dir"] {
        for i in 0..80 {
            let name = format!("added_{i:03}.txt");
            let body = format!("{d}/{name}: {}\n", "x".repeat(i)).into_bytes();
            let f = src.join(format!("{}{name}", d.replace('/', "_")));
            std::fs::write(&f, &body)?;
            req.edits.push(Edit::Add {
                src: f,
                dest: format!("{d}/{name}"),
            });
            expect.push((format!("{d}/{name}"), body));
        }
    }
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(src.join("big.bin"), &big)?;
    req.edits.push(Edit::Add {
        src: src.join("big.bin"),
        dest: "/docs/big.bin".into(),
    });
    expect.push(("/docs/big.bin".into(), big));
    req.implant_md5 = true;
    let o = remaster(&req, &mut |_| {})?;
    ensure!(o.reason.contains("our writer"), "{}", o.reason);
    for d in [
        "directory /:",
        "directory /docs:",
        "directory / (Joliet)",
        "directory /docs (Joliet)",
    ] {
        ensure!(
            o.notes.iter().any(|n| n.starts_with(d)),
            "no {d:?} in {:?}",
            o.notes
        );
    }
    Cmd::new("checkisomd5").arg(&out).run()?;
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt)?;
    for view in [None, Some("norock"), Some("norock,nojoliet")] {
        let dev = LoopDevice::attach(&out, &AttachOptions::new().read_only(true))?;
        let m = Mount::new(dev.path(), &mnt, "iso9660", MountFlags::RDONLY, view)?;
        let check = (|| -> Result<()> {
            for (path, body) in &expect {
                // Plain ISO 9660 names are upper case 8.3-ish (`ADDED_000.TXT`), and the
                // kernel shows them lower-cased with the `;1` version stripped.
                let on_disk = match view {
                    Some("norock,nojoliet") => path.to_ascii_lowercase(),
                    _ => path.clone(),
                };
                let got = std::fs::read(mnt.join(on_disk.trim_start_matches('/')))
                    .with_context(|| format!("{view:?}: reading {path}"))?;
                ensure!(got == *body, "{view:?}: {path} differs");
            }
            let n = std::fs::read_dir(mnt.join("docs"))?.count();
            ensure!(n >= 81, "{view:?}: /docs lists {n} entries");
            let n = std::fs::read_dir(mnt.join("new/sub_dir"))?.count();
            ensure!(n == 80, "{view:?}: /new/sub_dir lists {n} entries");
            // GNU find trusts directory link counts where it may: it must still descend into
            // the new directories (their parents' Rock Ridge link counts are not raised).
            let found = Cmd::new("find").arg(&mnt).args(["-type", "f"]).read()?;
            let files = found.lines().count();
            ensure!(
                files >= expect.len(),
                "{view:?}: find lists {files} files, {} were added",
                expect.len()
            );
            Ok(())
        })();
        m.teardown()?;
        dev.detach()?;
        check?;
    }
    Ok(())
}

fn run_mode(mode: Mode, appended_esp: bool) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let iso = build_sample(
        dir.path(),
        &SampleOptions {
            appended_esp,
            ..Default::default()
        },
    )?;
    let ks = dir.path().join("ks.cfg");
    std::fs::write(&ks, "text\nreboot\n")?;
    let readme = dir.path().join("readme.new");
    std::fs::write(&readme, "replaced by bind/overlay\n")?;
    let out = dir.path().join("out.iso");
    let mut req = Request::new(&iso);
    req.output = Some(out.clone());
    req.mode = mode;
    req.kickstart = Some(ks);
    req.implant_md5 = true;
    req.edits = vec![
        Edit::Replace {
            src: readme.clone(),
            dest: "/docs/README.txt".into(),
        },
        Edit::Add {
            src: readme,
            dest: "/docs/added.txt".into(),
        },
    ];
    if mode != Mode::Bind {
        req.edits.push(Edit::Remove {
            dest: "/images/initrd.img".into(),
        });
    }
    let o = remaster(&req, &mut |_| {}).with_context(|| format!("remaster in {mode} mode"))?;
    ensure!(o.mode == mode, "ran {} instead of {mode}", o.mode);
    if mode == Mode::Copy {
        // With iso9660 in the kernel, copy is the conventional mount + rsync route.
        ensure!(
            o.steps.iter().any(|s| s.name.contains("mount + rsync")),
            "{:?}",
            o.steps
        );
    }
    let leaked = KernelState::capture();
    ensure!(
        leaked.mounts_under(dir.path()).is_empty(),
        "mounts left: {:?}",
        leaked.mounts_under(dir.path())
    );
    ensure!(
        leaked.loops_under(dir.path()).is_empty(),
        "loops left: {:?}",
        leaked.loops_under(dir.path())
    );
    Cmd::new("checkisomd5")
        .arg(&out)
        .run()
        .context("checkisomd5")?;
    ensure!(
        report(&iso)? == report(&out)?,
        "El Torito entries differ: {:?} vs {:?}",
        report(&iso)?,
        report(&out)?
    );
    ensure!(extract(&out, "/ks.cfg", dir.path())? == b"text\nreboot\n");
    ensure!(extract(&out, "/docs/README.txt", dir.path())? == b"replaced by bind/overlay\n");
    ensure!(extract(&out, "/docs/added.txt", dir.path())? == b"replaced by bind/overlay\n");
    let cfg = String::from_utf8(extract(&out, "/isolinux/isolinux.cfg", dir.path())?)?;
    ensure!(cfg.contains("inst.ks=hd:LABEL=DF_SAMPLE:/ks.cfg"), "{cfg}");
    if mode != Mode::Bind {
        let files = Cmd::new("xorriso")
            .arg("-indev")
            .arg(&out)
            .args(["-find", "/", "-type", "f"])
            .read()?;
        ensure!(!files.contains("initrd.img"), "{files}");
    }
    if !appended_esp {
        let efi = dir.path().join("efi.img");
        std::fs::write(&efi, extract(&out, "/images/efiboot.img", dir.path())?)?;
        let g = Cmd::new("mtype")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(&efi)
            .arg("::/EFI/BOOT/grub.cfg")
            .read()?;
        ensure!(g.contains("inst.ks=hd:LABEL=DF_SAMPLE:/ks.cfg"), "{g}");
    }
    Ok(())
}

fn overlay_mode() -> Result<()> {
    run_mode(Mode::Overlay, false)
}

fn bind_mode() -> Result<()> {
    run_mode(Mode::Bind, true)
}

fn copy_mode() -> Result<()> {
    run_mode(Mode::Copy, false)
}

/// A kernel route that fails after mounting still unmounts and detaches everything it made.
/// Through the public API: the replacement's source file is deleted when the mount step
/// starts (the progress event), after `remaster` checked it, so copying it into the overlay
/// (or bind-mounting it) fails with everything mounted.
fn failure_releases() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let iso = build_sample(dir.path(), &SampleOptions::default())?;
    for mode in [Mode::Overlay, Mode::Bind] {
        let src = dir.path().join("vanishes");
        std::fs::write(&src, "gone before the mount uses it\n")?;
        let out = dir.path().join("out.iso");
        let mut req = Request::new(&iso);
        req.output = Some(out.clone());
        req.mode = mode;
        req.edits.push(Edit::Replace {
            src: src.clone(),
            dest: "/docs/README.txt".into(),
        });
        let mut removed = false;
        let res = remaster(&req, &mut |e| {
            if let Event::Step(name) = e
                && name.starts_with("mount")
                && !removed
            {
                removed = std::fs::remove_file(&src).is_ok();
            }
        });
        ensure!(removed, "{mode}: no mount step was announced");
        let err = match res {
            Ok(o) => anyhow::bail!("{mode}: expected an error, got {:?}", o.steps),
            Err(e) => e,
        };
        ensure!(
            matches!(
                err,
                diskforge_iso::Error::Io { .. } | diskforge_iso::Error::Kernel { .. }
            ),
            "{mode}: unexpected error {err:?}"
        );
        ensure!(!out.exists(), "{mode}: a failed run left {}", out.display());
        let now = KernelState::capture();
        ensure!(
            now.mounts_under(dir.path()).is_empty(),
            "{mode}: {:?}",
            now.mounts_under(dir.path())
        );
        ensure!(
            now.loops_under(dir.path()).is_empty(),
            "{mode}: {:?}",
            now.loops_under(dir.path())
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- hostile input, signals

/// Issue 13 defect 2: Rock Ridge names with `/` made the mounted view return EIO and the
/// overlay and bind modes publish an image with a fraction of the files, rc 0. Our reader
/// refuses the image before mounting (and a rebuild is compared with the input's file list
/// before it is published); nothing is left mounted or attached.
fn refuse_bad_names() -> Result<()> {
    use std::os::unix::fs::FileExt;
    let dir = diskforge_testutil::scratch_dir();
    let iso = build_sample(dir.path(), &SampleOptions::default())?;
    let vol = diskforge_iso::iso9660::Volume::open(&iso)?;
    let tree = vol.tree(diskforge_iso::iso9660::TreeKind::Primary)?;
    let rec = tree
        .get("/docs/README.txt")
        .context("README in the sample")?
        .records[0];
    let mut buf = vec![0u8; 255];
    std::fs::File::open(&iso)?.read_exact_at(&mut buf, rec)?;
    let nm = buf[..usize::from(buf[0])]
        .windows(2)
        .position(|w| w == b"NM")
        .context("NM entry")?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&iso)?
        .write_all_at(b"/", rec + nm as u64 + 7)?;
    let before = KernelState::capture();
    for mode in [Mode::Overlay, Mode::Bind, Mode::Copy] {
        let out = dir.path().join("out.iso");
        let mut req = Request::new(&iso);
        req.output = Some(out.clone());
        req.mode = mode;
        req.volid = Some("RENAMED".into());
        let err = match remaster(&req, &mut |_| {}) {
            Ok(o) => anyhow::bail!("{mode}: remastered a damaged image: {:?}", o.steps),
            Err(e) => e,
        };
        ensure!(
            matches!(err, diskforge_iso::Error::Hostile { .. }),
            "{mode}: {err:?}"
        );
        ensure!(err.to_string().contains("RE/DME.txt"), "{mode}: {err}");
        ensure!(!out.exists(), "{mode}: left an output");
    }
    let now = KernelState::capture();
    ensure!(now.loops == before.loops, "loops: {:?}", now.loops);
    ensure!(now.mounts == before.mounts, "mounts: {:?}", now.mounts);
    Ok(())
}

/// The `iso-remaster` binary next to this one (`cargo test --workspace`, which CI runs
/// before the VM tests, builds it).
fn iso_remaster_bin() -> Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .context("vm-tests has a directory")?
        .join("iso-remaster");
    ensure!(
        bin.is_file(),
        "{} is missing: run `cargo build -p iso-remaster` first",
        bin.display()
    );
    Ok(bin)
}

/// Loop devices backed by `file`, matched on its last two path components: inside the
/// VM's chroot the kernel shows the path outside it (`/host/…`), and once the mount
/// namespace it was opened in is gone, the path relative to its filesystem.
fn loops_of(file: &std::path::Path) -> Vec<String> {
    let tail = |p: &std::path::Path| {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
        let dir = p
            .parent()
            .and_then(|d| d.file_name())
            .map(|n| n.to_string_lossy().into_owned());
        format!("/{}/{}", dir.unwrap_or_default(), name.unwrap_or_default())
    };
    let want = tail(file);
    KernelState::capture()
        .loops
        .into_iter()
        .filter(|l| l.ends_with(&want))
        .collect()
}

/// Start `iso-remaster IN -o OUT --mode MODE --volid RENAMED`, wait until its loop device
/// is attached plus `settle`, send `sig`; the exit code, seconds from the signal to the exit,
/// and stderr.
fn kernel_run_signalled(
    iso: &std::path::Path,
    out: &std::path::Path,
    mode: &str,
    settle: std::time::Duration,
    sig: &str,
) -> Result<(Option<i32>, f64, String)> {
    use std::time::{Duration, Instant};
    let child = Cmd::new(iso_remaster_bin()?)
        .arg(iso)
        .arg("-o")
        .arg(out)
        .args(["--mode", mode, "--volid", "RENAMED"])
        .spawn_streaming()?;
    let mut child = child;
    let pid = child.pid().context("pid")?;
    let t = Instant::now();
    let mut seen = std::collections::BTreeSet::new();
    while loops_of(iso).is_empty() {
        seen.extend(KernelState::capture().loops);
        if child.try_wait()?.is_some() {
            let fin = child.finish(Duration::ZERO)?;
            anyhow::bail!(
                "{mode}: finished ({}) after {:.1} s before a loop device of {} showed up \
                 (loops seen: {seen:?}): {}",
                fin.status,
                t.elapsed().as_secs_f64(),
                iso.display(),
                fin.stderr
            );
        }
        ensure!(
            t.elapsed() < Duration::from_secs(60),
            "{mode}: no loop device"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(settle);
    ensure!(
        child.try_wait()?.is_none(),
        "{mode}: finished before the signal (image too small)"
    );
    Cmd::new("kill").args(["-s", sig, &pid.to_string()]).run()?;
    let t = Instant::now();
    while child.try_wait()?.is_none() {
        ensure!(
            t.elapsed() < Duration::from_secs(30),
            "{mode}: ignored SIG{sig}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let secs = t.elapsed().as_secs_f64();
    let fin = child.finish(Duration::ZERO)?;
    Ok((fin.status.code(), secs, fin.stderr))
}

/// Issue 13 defect 5 in the kernel modes: SIGINT/SIGTERM while mounted stop the run within
/// a second, unmount, detach, remove the run directory, exit 130/143 and say that no output
/// was written.
fn kernel_signals() -> Result<()> {
    let dir = diskforge_testutil::scratch_dir();
    let opts = SampleOptions {
        filler_bytes: 300 << 20,
        ..SampleOptions::default()
    };
    let iso = build_sample(dir.path(), &opts)?;
    let before = KernelState::capture();
    let mut worst = 0f64;
    for (mode, sig, code) in [
        ("overlay", "INT", 130),
        ("bind", "TERM", 143),
        ("copy", "INT", 130),
        ("overlay", "TERM", 143),
    ] {
        let out = dir.path().join("out.iso");
        let settle = std::time::Duration::from_millis(300);
        let (got, secs, err) = kernel_run_signalled(&iso, &out, mode, settle, sig)?;
        worst = worst.max(secs);
        ensure!(got == Some(code), "{mode}/{sig}: exit {got:?}: {err}");
        ensure!(secs < 1.0, "{mode}/{sig}: {secs:.2} s to stop");
        ensure!(err.contains("no output written"), "{mode}/{sig}: {err}");
        ensure!(!out.exists(), "{mode}/{sig}: output left");
        let left: Vec<String> = std::fs::read_dir(dir.path())?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".iso-remaster"))
            .collect();
        ensure!(left.is_empty(), "{mode}/{sig}: left {left:?}");
        let now = KernelState::capture();
        ensure!(
            now.loops == before.loops,
            "{mode}/{sig}: loops {:?}",
            now.loops
        );
        ensure!(
            now.mounts == before.mounts,
            "{mode}/{sig}: mounts {:?}",
            now.mounts
        );
    }
    eprintln!("slowest stop after a signal: {worst:.3} s");
    Ok(())
}

/// Issue 13 defect 6: SIGKILL while mounted leaked the loop device, the iso9660 and
/// overlay mounts, the temporary file and the work dir. Now the mounts are in the
/// process's private mount namespace and the loop device autoclears: both are gone as soon
/// as the process is; the run directory stays until the next run or `iso-remaster cleanup`
/// removes it.
fn kernel_sigkill() -> Result<()> {
    let dir = diskforge_testutil::scratch_dir();
    let opts = SampleOptions {
        filler_bytes: 300 << 20,
        ..SampleOptions::default()
    };
    let iso = build_sample(dir.path(), &opts)?;
    let before = KernelState::capture();
    for mode in ["overlay", "bind", "copy"] {
        let out = dir.path().join("out.iso");
        let settle = std::time::Duration::from_millis(300);
        let (got, _, _) = kernel_run_signalled(&iso, &out, mode, settle, "KILL")?;
        ensure!(got.is_none(), "{mode}: not killed by the signal");
        // The namespace goes with the process (and with the programs it ran, killed by
        // PDEATHSIG); the kernel detaches on the last close. Under TCG that can take a
        // few seconds.
        let t = std::time::Instant::now();
        while !loops_of(&iso).is_empty() && t.elapsed().as_secs() < 30 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        eprintln!(
            "{mode}: loop device gone {:.2} s after SIGKILL",
            t.elapsed().as_secs_f64()
        );
        let now = KernelState::capture();
        if now.loops != before.loops {
            let flags: Vec<String> = loops_of(&iso)
                .iter()
                .filter_map(|l| l.split('=').next())
                .map(|d| {
                    let f = format!("/sys/block/{d}/loop/autoclear");
                    format!(
                        "{d} autoclear={}",
                        std::fs::read_to_string(f).unwrap_or_default().trim()
                    )
                })
                .collect();
            anyhow::bail!("{mode}: loops {:?} ({flags:?})", now.loops);
        }
        ensure!(
            now.mounts == before.mounts,
            "{mode}: mounts {:?}",
            now.mounts
        );
        ensure!(!out.exists(), "{mode}: output left");
        let out = Cmd::new(iso_remaster_bin()?)
            .args(["cleanup"])
            .arg(dir.path())
            .read()?;
        ensure!(
            out.contains(".iso-remaster-run-"),
            "{mode}: cleanup said {out:?}"
        );
        let left: Vec<String> = std::fs::read_dir(dir.path())?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".iso-remaster"))
            .collect();
        ensure!(left.is_empty(), "{mode}: left {left:?}");
    }
    Ok(())
}

// --- fixture boot checks (iso-fixture) below ---
