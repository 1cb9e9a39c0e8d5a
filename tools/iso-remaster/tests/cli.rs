//! CLI tests for `iso-remaster`: help text, inspect output, exit codes, and a remaster
//! checked with `checkisomd5` and `xorriso -report_el_torito`.

use std::path::Path;
use std::process::{Command, Output};

use diskforge_cmd::Cmd;
use diskforge_iso_fixture::sample::{SampleOptions, build_sample};

fn bin() -> Command {
    #[allow(clippy::disallowed_methods)] // the binary under test, not an external tool
    Command::new(env!("CARGO_BIN_EXE_iso-remaster"))
}

fn run(args: &[&str], dir: &Path) -> Output {
    bin()
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running iso-remaster")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn help_fits_80_columns() {
    let out = bin()
        .arg("--help")
        .env("COLUMNS", "80")
        .output()
        .expect("help");
    assert!(out.status.success());
    let help = text(&out.stdout);
    for l in help.lines() {
        assert!(l.chars().count() <= 80, "too wide: {l:?}");
    }
    insta::assert_snapshot!(help);
}

#[test]
fn inspect_human_and_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    build_sample(dir.path(), &SampleOptions::default()).expect("sample");
    let out = run(&["inspect", "df_sample.iso"], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    insta::assert_snapshot!(text(&out.stdout));
    let out = run(&["inspect", "df_sample.iso", "--json"], dir.path());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["primary"]["volume_id"], "DF_SAMPLE");
    assert_eq!(v["el_torito"]["entries"][1]["platform"], "uefi");
}

#[test]
fn remaster_kickstart_md5_then_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let iso = build_sample(dir.path(), &SampleOptions::default()).expect("sample");
    std::fs::write(dir.path().join("ks.cfg"), "text\n").expect("ks");
    // No MD5 yet: exit 3.
    let out = run(&["--check-md5", "df_sample.iso"], dir.path());
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));

    let out = run(
        &[
            "df_sample.iso",
            "-o",
            "out.iso",
            "--kickstart",
            "ks.cfg",
            "--implant-md5",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("mode: patch (patch: every edit fits"),
        "{stdout}"
    );
    assert!(
        stdout.contains("boot config edited: /images/efiboot.img::/EFI/BOOT/grub.cfg"),
        "{stdout}"
    );
    let outp = dir.path().join("out.iso");
    Cmd::new("checkisomd5")
        .arg(&outp)
        .run()
        .expect("checkisomd5 passes");
    let out = run(&["--check-md5", "out.iso"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let report = |p: &Path| {
        Cmd::new("xorriso")
            .arg("-indev")
            .arg(p)
            .args(["-report_el_torito", "plain"])
            .read()
            .expect("xorriso")
    };
    let strip = |s: String| {
        s.lines()
            .filter(|l| l.starts_with("El Torito"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(report(&iso)), strip(report(&outp)));

    // JSON output of a direct-mode run.
    let out = run(
        &[
            "df_sample.iso",
            "-o",
            "direct.iso",
            "--mode",
            "direct",
            "--volid",
            "NEW",
            "--json",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["mode"], "direct");
}

#[test]
fn errors_name_the_value_and_exit_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    build_sample(dir.path(), &SampleOptions::default()).expect("sample");
    std::fs::write(dir.path().join("notiso.bin"), vec![0u8; 100_000]).expect("write");
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "df_sample.iso",
                "-o",
                "o.iso",
                "--add",
                "missing.cfg:/m.cfg",
            ],
            "missing.cfg",
        ),
        (
            &["df_sample.iso", "-o", "o.iso", "--remove", "/not/there"],
            "/not/there",
        ),
        (
            &["notiso.bin", "-o", "o.iso", "--volid", "X"],
            "not an ISO 9660 image",
        ),
        (
            &[
                "df_sample.iso",
                "-o",
                "o.iso",
                "--mode",
                "patch",
                "--add",
                "df_sample.iso:/newdir/x",
            ],
            "/newdir",
        ),
    ];
    for (args, needle) in cases {
        let out = run(args, dir.path());
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = text(&out.stderr);
        assert!(err.contains(needle), "{needle:?} not in {err:?}");
        assert!(
            !dir.path().join("o.iso").exists(),
            "{args:?} left an output"
        );
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("ls")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".iso-remaster"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // Usage errors exit 2, as --help says (issue 13 defect 11): clap's own and ours.
    for (args, needle) in [
        (&["--mode", "fast", "df_sample.iso"][..], "fast"),
        (
            &["df_sample.iso", "-o", "o.iso", "--add", "nocolon"][..],
            "nocolon",
        ),
        (&["-o", "o.iso"][..], "no input image"),
    ] {
        let out = run(args, dir.path());
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = text(&out.stderr);
        assert!(err.contains(needle), "{needle:?} not in {err:?}");
    }
}

#[test]
fn dry_run_prints_the_plan_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    build_sample(dir.path(), &SampleOptions::default()).expect("sample");
    std::fs::write(dir.path().join("ks.cfg"), "text\n").expect("ks");
    let before = std::fs::read(dir.path().join("df_sample.iso")).expect("read");

    // With -o: the mode and every edit are reported, no output appears.
    let args = [
        "df_sample.iso",
        "-o",
        "out.iso",
        "--kickstart",
        "ks.cfg",
        "--implant-md5",
    ];
    let out = run(&[&args[..], &["--dry-run", "--json"]].concat(), dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["mode"], "patch");
    let notes = plan["notes"].to_string();
    assert!(notes.contains("/ks.cfg"), "{notes}");
    assert!(notes.contains("MD5 would be implanted"), "{notes}");
    assert!(!dir.path().join("out.iso").exists());

    // In place: the input keeps every byte; no temp or scratch file is left.
    let out = run(
        &["df_sample.iso", "--kickstart", "ks.cfg", "--dry-run"],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("would write df_sample.iso (in place)"));
    assert_eq!(
        std::fs::read(dir.path().join("df_sample.iso")).expect("read"),
        before
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("ls")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".iso-remaster"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// The output is flushed before it is published: under strace, `fsync` of the staged file
/// comes before the rename to OUT and `fsync` of the directory after it; `--no-sync` makes no
/// `fsync` at all (patch mode runs no other program that could). Needs `strace` (package
/// strace); a missing one fails the test with the package named.
#[test]
fn output_is_fsynced_around_the_rename_unless_no_sync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let iso = build_sample(dir.path(), &SampleOptions::default()).expect("sample");
    std::fs::write(dir.path().join("ks.cfg"), "text\n").expect("ks");
    for no_sync in [false, true] {
        let out = dir.path().join(format!("out-{no_sync}.iso"));
        let log = dir.path().join(format!("strace-{no_sync}.log"));
        let mut c = Cmd::new("strace")
            .args([
                "-f",
                "-e",
                "trace=fsync,fdatasync,rename,renameat,renameat2,open,openat",
            ])
            .arg("-o")
            .arg(&log)
            .arg(env!("CARGO_BIN_EXE_iso-remaster"))
            .arg(&iso)
            .arg("-o")
            .arg(&out)
            .args(["--mode", "patch", "--kickstart"])
            .arg(dir.path().join("ks.cfg"));
        if no_sync {
            c = c.arg("--no-sync");
        }
        c.run().expect("iso-remaster under strace");
        assert!(out.is_file());
        let trace = std::fs::read_to_string(&log).expect("strace log");
        let lines: Vec<&str> = trace.lines().collect();
        let out_name = out.file_name().unwrap().to_string_lossy().into_owned();
        let rename = lines
            .iter()
            .position(|l| l.contains("rename") && l.contains(&out_name))
            .unwrap_or_else(|| panic!("no rename to {out_name}:\n{trace}"));
        let fsyncs: Vec<usize> = (0..lines.len())
            .filter(|&i| lines[i].contains("fsync(") && !lines[i].contains("= -1"))
            .collect();
        if no_sync {
            assert!(fsyncs.is_empty(), "--no-sync still fsyncs:\n{trace}");
        } else {
            assert!(
                fsyncs.iter().any(|&i| i < rename) && fsyncs.iter().any(|&i| i > rename),
                "expected fsync before and after the rename:\n{trace}"
            );
            // The one after the rename is the directory's: opened just before it.
            let after = fsyncs.iter().find(|&&i| i > rename).unwrap();
            let dir_name = dir.path().to_string_lossy().into_owned();
            assert!(
                lines[rename..*after]
                    .iter()
                    .any(|l| l.contains("open") && l.contains(&format!("\"{dir_name}\""))),
                "the directory was not opened between the rename and the fsync:\n{trace}"
            );
        }
    }
}

/// Run directories and temporary files left in `dir`.
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("ls")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".iso-remaster"))
        .collect()
}

/// Send `sig` (`INT`, `TERM`, `KILL`) to `pid`.
fn signal(pid: u32, sig: &str) {
    Cmd::new("kill")
        .args(["-s", sig, &pid.to_string()])
        .run()
        .expect("kill");
}

/// Start `iso-remaster ARGS` in `dir`, send `sig` after `delay`; the exit status, the
/// seconds from the signal to the exit, and stderr.
fn interrupted(
    dir: &Path,
    args: &[&str],
    delay: std::time::Duration,
    sig: &str,
) -> (Option<i32>, f64, String) {
    use std::io::Read;
    let mut child = bin()
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    std::thread::sleep(delay);
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "{args:?} finished before the signal: the image is too small for this test"
    );
    signal(child.id(), sig);
    let t = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        assert!(t.elapsed().as_secs() < 20, "{args:?} ignored SIG{sig}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    let secs = t.elapsed().as_secs_f64();
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("stderr");
    (status.code(), secs, err)
}

/// Issue 13 defect 5: SIGINT/SIGTERM in the unprivileged modes (auto → patch with -o,
/// direct growing the image, copy through osirrox and xorriso, patch in place): each stops
/// within a second, removes its temporary files, exits 130/143 and says whether the output
/// was written (it never is, half-way). Defect 6's unprivileged half: after SIGKILL the run
/// directory is left, and `iso-remaster cleanup` (or the next run) removes it.
#[test]
fn signals_stop_every_mode_and_leave_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = SampleOptions {
        filler_bytes: 600 << 20,
        ..SampleOptions::default()
    };
    build_sample(dir.path(), &opts).expect("sample");
    std::fs::write(dir.path().join("ks.cfg"), "text\n").expect("ks");
    std::fs::write(dir.path().join("big.bin"), vec![7u8; 8 << 20]).expect("big");
    let ms = std::time::Duration::from_millis;
    let cases: &[(&[&str], u64, &str, i32)] = &[
        (&["--implant-md5"], 300, "INT", 130),
        (
            &["--mode", "direct", "--add", "big.bin:/big.bin"],
            150,
            "TERM",
            143,
        ),
        (&["--mode", "copy"], 400, "INT", 130),
        (&["--mode", "copy"], 1500, "TERM", 143),
    ];
    let mut worst = 0f64;
    for (extra, delay, sig, code) in cases {
        let mut args = vec!["df_sample.iso", "-o", "out.iso", "--kickstart", "ks.cfg"];
        args.extend_from_slice(extra);
        let (got, secs, err) = interrupted(dir.path(), &args, ms(*delay), sig);
        worst = worst.max(secs);
        assert_eq!(got, Some(*code), "{args:?}: {err}");
        assert!(secs < 1.0, "{args:?}: {secs:.2} s after SIG{sig}");
        assert!(err.contains("no output written"), "{args:?}: {err}");
        assert!(!dir.path().join("out.iso").exists(), "{args:?}");
        assert!(
            leftovers(dir.path()).is_empty(),
            "{args:?}: {:?}",
            leftovers(dir.path())
        );
    }
    eprintln!("slowest stop after a signal: {worst:.3} s");

    // In place (--force): the MD5 of the result is computed before any byte is written,
    // so a signal then leaves the input as it was.
    let head = |p: &Path| {
        use std::io::Read;
        let mut b = vec![0u8; 8 << 20];
        std::fs::File::open(p)
            .expect("open")
            .read_exact(&mut b)
            .expect("read");
        b
    };
    let before = head(&dir.path().join("df_sample.iso"));
    let args = [
        "df_sample.iso",
        "--force",
        "--kickstart",
        "ks.cfg",
        "--implant-md5",
    ];
    let (got, secs, err) = interrupted(dir.path(), &args, ms(200), "INT");
    assert_eq!(got, Some(130), "{err}");
    assert!(secs < 1.0, "in place: {secs:.2} s");
    assert!(err.contains("input unchanged"), "{err}");
    assert!(
        head(&dir.path().join("df_sample.iso")) == before,
        "input edited"
    );

    // SIGKILL cannot be caught: the run directory stays until cleanup.
    let args = ["df_sample.iso", "-o", "out.iso", "--mode", "copy"];
    let (got, _, _) = interrupted(dir.path(), &args, ms(800), "KILL");
    assert_eq!(got, None, "killed by a signal");
    let left = leftovers(dir.path());
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].starts_with(".iso-remaster-run-"), "{left:?}");
    let out = run(&["cleanup", "."], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&left[0]),
        "{}",
        text(&out.stdout)
    );
    assert!(leftovers(dir.path()).is_empty());
    assert!(!dir.path().join("out.iso").exists());
}

/// Patch `bytes` at `off` of `iso`.
fn poke(iso: &Path, off: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(iso)
        .expect("open");
    f.write_all_at(bytes, off).expect("write");
}

/// Issue 13 defects 4 and 10 through the CLI: `inspect` lists what is wrong (a volume
/// space past the end of the file, a file extent past it) on stderr and in `--json`,
/// exits 0, and 4 with `--strict`; a copy of an image whose volume space is too large
/// works but warns.
#[test]
fn inspect_reports_problems_and_strict_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let iso = build_sample(dir.path(), &SampleOptions::default()).expect("sample");
    let out = run(&["inspect", "--strict", "df_sample.iso"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // Volume space: both-endian blocks at byte 80 of the PVD (block 16), plus 1000.
    let pvd = 16 * 2048 + 80;
    let mut b = [0u8; 4];
    {
        use std::os::unix::fs::FileExt;
        std::fs::File::open(&iso)
            .expect("open")
            .read_exact_at(&mut b, pvd)
            .expect("read");
    }
    let blocks = u32::from_le_bytes(b) + 1000;
    let mut both = blocks.to_le_bytes().to_vec();
    both.extend(blocks.to_be_bytes());
    poke(&iso, pvd, &both);
    let out = run(&["inspect", "df_sample.iso"], dir.path());
    assert_eq!(out.status.code(), Some(0));
    let err = text(&out.stderr);
    assert!(
        err.contains("warning") && err.contains("volume space"),
        "{err}"
    );
    assert!(text(&out.stdout).contains("VolumePastEnd"));
    let out = run(
        &["inspect", "--strict", "--json", "df_sample.iso"],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["problems"][0]["kind"], "volume-past-end");

    let out = run(
        &[
            "df_sample.iso",
            "-o",
            "copy.iso",
            "--mode",
            "copy",
            "--volid",
            "X",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("warning") && err.contains("volume space"),
        "{err}"
    );
}

/// Issue 13 defect 11: a failing external program is one line saying what failed and
/// why (not its argv and 64 lines of transcript); `--verbose` adds the transcript.
#[test]
fn tool_failure_is_one_line_and_verbose_shows_the_transcript() {
    let dir = tempfile::tempdir().expect("tempdir");
    build_sample(dir.path(), &SampleOptions::default()).expect("sample");
    // An osirrox that talks a lot and fails, first on PATH.
    let fake = dir.path().join("bin");
    std::fs::create_dir(&fake).expect("mkdir");
    let script = "#!/bin/sh\n\
                  i=0; while [ $i -lt 64 ]; do echo \"xorriso : UPDATE : line $i\" >&2; \
                  i=$((i+1)); done\n\
                  echo 'xorriso : FAILURE : Cannot read the test tree' >&2\n\
                  echo 'xorriso : aborting : -abort_on FAILURE' >&2\nexit 5\n";
    std::fs::write(fake.join("osirrox"), script).expect("write");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(fake.join("osirrox"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    let path = format!(
        "{}:{}",
        fake.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let args = [
        "df_sample.iso",
        "-o",
        "o.iso",
        "--mode",
        "copy",
        "--volid",
        "X",
    ];
    // Copy mode extracts with osirrox where the kernel has no iso9660 (this host, CI);
    // with iso9660 it would mount instead and this test would fail on the first assert.
    let out = bin()
        .args(args)
        .current_dir(dir.path())
        .env("PATH", &path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].contains("extracting the tree with osirrox")
            && lines[0].contains("FAILURE : Cannot read the test tree"),
        "{err}"
    );
    assert!(!err.contains("line 3"), "{err}");
    let out = bin()
        .args(args)
        .arg("--verbose")
        .current_dir(dir.path())
        .env("PATH", &path)
        .output()
        .expect("run");
    let err = text(&out.stderr);
    assert!(
        err.contains("transcript:") && err.contains("UPDATE : line 63"),
        "{err}"
    );
    assert!(!dir.path().join("o.iso").exists());
}
