//! `cargo xtask demo`: the README's main job, end to end on this machine.
//!
//! 1. `deps`: install missing system tools (the same table as `cargo xtask deps`);
//! 2. build `disk-image-create`, `iso-remaster` and the fixture's `build_fixture`/`boot_iso`
//!    examples (release);
//! 3. `disk-image-create -o DIR/demo -t qcow2 --boot-check busybox vm block-device-efi`: the
//!    embedded default VM image (GPT with BIOS-boot + ESP + root, GRUB for BIOS and UEFI),
//!    built offline and booted to its serial marker under SeaBIOS and OVMF;
//! 4. build the installer-like fixture ISO (isolinux + GRUB EFI on an appended ESP,
//!    isohybrid MBR/GPT, busybox initrd) in `target/demo`;
//! 5. `iso-remaster IN -o OUT --kickstart ks.cfg --add … --implant-md5 --mode auto --json`;
//! 6. `checkisomd5 OUT`, and the El Torito entries of OUT against IN (`xorriso`);
//! 7. boot OUT in QEMU: SeaBIOS as CD and as hard disk (USB stick), OVMF as CD and as hard
//!    disk; each must show the fixture's marker, `inst.ks=` on the kernel command line, the
//!    kickstart's first line read from the medium and the added file.
//!
//! Prints each step's time and result (`--json`: the same as JSON on stdout) and where the
//! outputs are (`target/demo/demo.qcow2`, `target/demo/remastered.iso`, kept for use or a
//! post-mortem), and exits non-zero when any check fails.
//!
//! It drives the tools as processes (xtask never depends on workspace crates).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::{Value, json};
use xshell::{Shell, cmd};

use crate::flags::DemoArgs;

/// The kickstart the demo adds; its first line is what the booted fixture must print.
const KICKSTART: &str = "# diskforge demo kickstart\ntext\nlang en_US.UTF-8\nreboot\n";
/// A file the demo adds at the ISO root; the fixture's `/init` prints `/diskforge-*` files.
const ADDED: (&str, &str) = ("diskforge-added.txt", "added by cargo xtask demo\n");
/// Firmware paths booted, in order; the first runs alone (it settles KVM vs TCG), the rest
/// run concurrently.
const FIRMWARES: &[&str] = &[
    "seabios-cdrom",
    "seabios-hard-disk",
    "ovmf",
    "ovmf-hard-disk",
];
/// Per-boot timeout in seconds (a TCG boot takes 8–16 s here).
const BOOT_TIMEOUT_SECS: &str = "240";

/// One line of the report.
struct Step {
    name: String,
    seconds: Option<f64>,
    ok: bool,
    detail: String,
}

impl Step {
    fn json(&self) -> Value {
        json!({ "name": self.name, "seconds": self.seconds, "ok": self.ok, "detail": self.detail })
    }
}

/// Run a closure, timing it, and record the step (a closure error is a failed step).
fn timed<T>(
    steps: &mut Vec<Step>,
    name: &str,
    f: impl FnOnce() -> Result<(T, String)>,
) -> Option<T> {
    let start = Instant::now();
    let res = f();
    let seconds = Some(start.elapsed().as_secs_f64());
    match res {
        Ok((v, detail)) => {
            steps.push(Step {
                name: name.into(),
                seconds,
                ok: true,
                detail,
            });
            Some(v)
        }
        Err(e) => {
            steps.push(Step {
                name: name.into(),
                seconds,
                ok: false,
                detail: format!("{e:#}"),
            });
            None
        }
    }
}

/// Run the demo.
pub fn run(sh: &Shell, args: &DemoArgs) -> Result<()> {
    let total = Instant::now();
    let mut steps = Vec::new();
    let mut mode = Value::Null;
    let mut boots = Vec::new();
    // Outputs stay where the user can use them: target/demo (emptied first).
    let dir = crate::target_dir().join("demo");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("emptying {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let ok = demo(sh, &dir, &mut steps, &mut mode, &mut boots);
    let seconds = total.elapsed().as_secs_f64();
    let outputs: Vec<PathBuf> = ["demo.qcow2", "remastered.iso"]
        .iter()
        .map(|f| dir.join(f))
        .filter(|p| p.exists())
        .collect();
    if args.json {
        let report = json!({
            "ok": ok,
            "mode": mode,
            "seconds": seconds,
            "steps": steps.iter().map(Step::json).collect::<Vec<_>>(),
            "boots": boots,
            "outputs": outputs,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_human(&steps, &mode, seconds, ok, &outputs);
    }
    anyhow::ensure!(ok, "demo: some checks failed (see above)");
    Ok(())
}

/// Every step; false when any failed. Later steps are skipped when their input is missing.
fn demo(
    sh: &Shell,
    dir: &Path,
    steps: &mut Vec<Step>,
    mode: &mut Value,
    boots: &mut Vec<Value>,
) -> bool {
    timed(steps, "deps (system tools)", || {
        crate::deps::ensure_installed(sh)?;
        Ok(((), "all present".into()))
    });
    let release = crate::target_dir().join("release");
    let remaster = release.join("iso-remaster");
    let dic = release.join("disk-image-create");
    let build_fixture = release.join("examples/build_fixture");
    let boot_iso = release.join("examples/boot_iso");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = timed(steps, "build tools (cargo --release)", || {
        cmd!(
            sh,
            "{cargo} build --release --quiet -p iso-remaster -p disk-image-create"
        )
        .run()?;
        cmd!(sh, "{cargo} build --release --quiet -p diskforge-iso-fixture --example build_fixture --example boot_iso")
            .run()?;
        Ok((
            (),
            "disk-image-create, iso-remaster, build_fixture, boot_iso".into(),
        ))
    });
    if built.is_none() {
        return false;
    }
    let image_ok = vm_image(sh, &dic, dir, steps, boots);
    let input = dir.join("fixture.iso");
    let fixture = timed(steps, "build fixture ISO", || {
        let out = cmd!(sh, "{build_fixture} {dir} --esp-appended")
            .quiet()
            .read()?;
        let v: Value = serde_json::from_str(&out).context("parsing build_fixture output")?;
        let detail = format!(
            "{:.1} MiB, volume id {}, BIOS isolinux + UEFI GRUB (appended ESP), isohybrid MBR+GPT",
            v["size"].as_f64().unwrap_or(0.0) / 1048576.0,
            v["volid"].as_str().unwrap_or("?")
        );
        Ok((v, detail))
    });
    if fixture.is_none() {
        return false;
    }
    let ks = dir.join("ks.cfg");
    let added = dir.join(ADDED.0);
    let output = dir.join("remastered.iso");
    let remastered = timed(
        steps,
        "remaster (iso-remaster --mode auto --implant-md5)",
        || {
            std::fs::write(&ks, KICKSTART)?;
            std::fs::write(&added, ADDED.1)?;
            let add = format!("{}:/{}", added.display(), ADDED.0);
            let out = cmd!(
            sh,
            "{remaster} {input} -o {output} --kickstart {ks} --add {add} --implant-md5 --mode auto --json"
        )
        .quiet()
        .ignore_status()
        .output()?;
            if !out.status.success() {
                let stderr = String::from_utf8_lossy(&out.stderr);
                anyhow::bail!("iso-remaster failed ({}): {}", out.status, stderr.trim());
            }
            let v: Value =
                serde_json::from_slice(&out.stdout).context("parsing iso-remaster --json")?;
            let detail = v["reason"].as_str().unwrap_or("").to_owned();
            Ok((v, detail))
        },
    );
    let Some(remastered) = remastered else {
        return false;
    };
    *mode = json!({
        "mode": remastered["mode"],
        "reason": remastered["reason"],
        "steps": remastered["steps"],
        "configs": remastered["configs"],
    });
    for s in remastered["steps"].as_array().into_iter().flatten() {
        steps.push(Step {
            name: format!("  iso-remaster: {}", s["name"].as_str().unwrap_or("?")),
            seconds: s["seconds"].as_f64(),
            ok: true,
            detail: String::new(),
        });
    }
    timed(steps, "checkisomd5", || {
        let out = cmd!(sh, "checkisomd5 {output}")
            .quiet()
            .ignore_status()
            .output()?;
        // The verdict goes to stderr; exit status 0 means PASS, 1 FAIL.
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let pass = out.status.success() && text.contains("result is: PASS");
        anyhow::ensure!(
            pass,
            "checkisomd5 did not pass ({}): {}",
            out.status,
            text.trim()
        );
        Ok(((), "PASS".into()))
    });
    timed(
        steps,
        "boot entries kept (xorriso -report_el_torito)",
        || {
            let before = el_torito(sh, &input)?;
            let after = el_torito(sh, &output)?;
            anyhow::ensure!(before == after, "before {before:?}, after {after:?}");
            Ok(((), after.join("; ")))
        },
    );
    // The first boot settles the accelerator; the others reuse it and run concurrently.
    let first = boot(&boot_iso, &output, FIRMWARES[0], None);
    let accel = first
        .as_ref()
        .ok()
        .and_then(|r| r["accel"].as_str().map(str::to_owned));
    let mut results = vec![(FIRMWARES[0], first)];
    std::thread::scope(|s| {
        let handles: Vec<_> = FIRMWARES[1..]
            .iter()
            .map(|fw| {
                let (boot_iso, output, accel) = (&boot_iso, &output, accel.as_deref());
                (*fw, s.spawn(move || boot(boot_iso, output, fw, accel)))
            })
            .collect();
        for (fw, h) in handles {
            let r = h
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("boot thread panicked")));
            results.push((fw, r));
        }
    });
    let ks_first = KICKSTART.lines().next().unwrap_or_default();
    let added_first = ADDED.1.trim_end();
    for (fw, r) in results {
        let name = format!("boot {fw}");
        match r {
            Err(e) => steps.push(Step {
                name,
                seconds: None,
                ok: false,
                detail: format!("{e:#}"),
            }),
            Ok(r) => {
                let marker = r["booted"] == true && r["done"] == true;
                let ks_arg = r["cmdline"]
                    .as_str()
                    .is_some_and(|c| c.split_whitespace().any(|a| a.starts_with("inst.ks=")));
                let ks_read = r["kickstart"].as_str() == Some(ks_first);
                let file_read = r["files"][format!("/{}", ADDED.0)].as_str() == Some(added_first);
                let yn = |b: bool| if b { "yes" } else { "NO" };
                let mut detail = format!(
                    "{}: marker {}, inst.ks on cmdline {}, kickstart read {}, added file read {}",
                    r["accel"].as_str().unwrap_or("?"),
                    yn(marker),
                    yn(ks_arg),
                    yn(ks_read),
                    yn(file_read)
                );
                if r["timed_out"] == true {
                    detail.push_str(" (timed out)");
                }
                steps.push(Step {
                    name,
                    seconds: r["seconds"].as_f64(),
                    ok: marker && ks_arg && ks_read && file_read,
                    detail,
                });
                let mut r = r;
                r["checks"] = json!({
                    "marker": marker, "kickstart_arg_on_cmdline": ks_arg,
                    "kickstart_read": ks_read, "added_file_read": file_read,
                });
                boots.push(r);
            }
        }
    }
    image_ok && steps.iter().all(|s| s.ok)
}

/// Build the embedded default VM image with `disk-image-create` and boot it (its own
/// `--boot-check`); one step for the build, one line per build step and per boot.
fn vm_image(
    sh: &Shell,
    dic: &Path,
    dir: &Path,
    steps: &mut Vec<Step>,
    boots: &mut Vec<Value>,
) -> bool {
    let name = dir.join("demo");
    let report = timed(
        steps,
        "disk-image-create busybox vm block-device-efi (qcow2, --boot-check)",
        || {
            let out = cmd!(
                sh,
                "{dic} -o {name} -t qcow2 --boot-check --json busybox vm block-device-efi"
            )
            .quiet()
            .ignore_status()
            .output()?;
            if !out.status.success() {
                anyhow::bail!(
                    "disk-image-create failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            let v: Value =
                serde_json::from_slice(&out.stdout).context("parsing disk-image-create --json")?;
            let out = &v["outputs"][0];
            let detail = format!(
                "{} ({:.1} MiB)",
                out["path"].as_str().unwrap_or("?"),
                out["bytes"].as_f64().unwrap_or(0.0) / 1048576.0
            );
            Ok((v, detail))
        },
    );
    let Some(v) = report else {
        return false;
    };
    for s in v["steps"].as_array().into_iter().flatten() {
        steps.push(Step {
            name: format!("  disk-image-create: {}", s["step"].as_str().unwrap_or("?")),
            seconds: s["millis"].as_f64().map(|m| m / 1000.0),
            ok: true,
            detail: String::new(),
        });
    }
    let fws: Vec<&str> = v["boots"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b["firmware"].as_str())
        .collect();
    let both = fws == ["seabios", "ovmf"];
    steps.push(Step {
        name: "  VM image booted to its marker".into(),
        seconds: None,
        ok: both,
        detail: format!("under {}", fws.join(" and ")),
    });
    for b in v["boots"].as_array().into_iter().flatten() {
        boots.push(json!({ "image": b["image"], "firmware": b["firmware"], "seconds": b["seconds"], "accel": b["accel"] }));
    }
    both
}

/// Boot `iso` with the fixture's `boot_iso` example; its JSON report (it exits 1 when the
/// fixture did not finish, which the report shows too).
fn boot(boot_iso: &Path, iso: &Path, firmware: &str, accel: Option<&str>) -> Result<Value> {
    let sh = Shell::new()?;
    if let Some(a) = accel {
        sh.set_var("DISKFORGE_ACCEL", a);
    }
    let out = cmd!(sh, "{boot_iso} {iso} {firmware} {BOOT_TIMEOUT_SECS}")
        .quiet()
        .ignore_status()
        .output()?;
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "boot_iso {firmware} printed no report: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })
}

/// `N platform bootable emulation image` for each El Torito entry, from xorriso.
fn el_torito(sh: &Shell, iso: &Path) -> Result<Vec<String>> {
    let out = cmd!(sh, "xorriso -indev {iso} -report_el_torito plain")
        .quiet()
        .ignore_stderr()
        .read()?;
    let mut entries: Vec<String> = out
        .lines()
        .filter_map(|l| l.strip_prefix("El Torito boot img :"))
        .map(|l| l.split_whitespace().take(4).collect::<Vec<_>>().join(" "))
        .collect();
    for l in out
        .lines()
        .filter_map(|l| l.strip_prefix("El Torito img path :"))
    {
        let mut w = l.split_whitespace();
        if let (Some(n), Some(path)) = (w.next(), w.next())
            && let Some(e) = entries.iter_mut().find(|e| e.split(' ').next() == Some(n))
        {
            e.push(' ');
            e.push_str(path);
        }
    }
    for e in entries.iter_mut().filter(|e| e.split(' ').count() == 4) {
        e.push_str(" (hidden image)");
    }
    anyhow::ensure!(
        !entries.is_empty(),
        "{}: no El Torito entries",
        iso.display()
    );
    Ok(entries)
}

fn print_human(steps: &[Step], mode: &Value, seconds: f64, ok: bool, outputs: &[PathBuf]) {
    println!("diskforge demo: build a VM image from diskimage-builder elements and boot it; build");
    println!("an installer-like ISO, remaster it with a kickstart and an implanted MD5, and boot");
    println!("the result with SeaBIOS and OVMF\n");
    if let Some(m) = mode["mode"].as_str() {
        println!(
            "mode chosen: {m} ({})\n",
            mode["reason"].as_str().unwrap_or("")
        );
    }
    for s in steps {
        let time = s
            .seconds
            .map(|t| format!("{t:8.2} s"))
            .unwrap_or_else(|| "         ".into());
        let status = if s.ok { "ok  " } else { "FAIL" };
        println!("{status} {time}  {:<50} {}", s.name, s.detail);
    }
    let failed = steps.iter().filter(|s| !s.ok).count();
    println!();
    if ok {
        println!("PASS: every check passed in {seconds:.1} s");
    } else {
        println!("FAIL: {failed} step(s) failed in {seconds:.1} s");
    }
    for o in outputs {
        println!("output: {}", o.display());
    }
}
