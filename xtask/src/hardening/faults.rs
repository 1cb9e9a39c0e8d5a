//! Hardening group `faults` (see the module docs of `hardening`): for each tool a
//! representative run — one or more invocations, e.g. `dfloop attach` then `dfloop detach` —
//! is run once with `DISKFORGE_FAULT_LOG` to list the fault points each invocation passes;
//! then, for every point (all of them, `--quick` too: the group takes under a minute), the invocations before it run
//! normally and the one holding it runs with `DISKFORGE_FAIL_AT=<index>`. That invocation
//! must exit non-zero, name the step on stderr, and leave the system as it found it: the
//! same loop devices, mounts, device-mapper tables and LVs (those of this run: others run
//! tests on this host at the same time), and the same files in the run's directory — which
//! holds its inputs, its outputs and its `TMPDIR`, so a partial output or an orphan temp
//! file shows. Then the earlier invocations are undone (detach, umount) and the next point
//! is tried.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::state::SystemState;
use super::{Ctx, Outcome, Table, run_bounded};

/// Time bound of one invocation.
const LIMIT: Duration = Duration::from_secs(300);
/// Computes an undo invocation from a successful invocation's stdout.
type Undo = Box<dyn Fn(&str) -> Vec<OsString>>;

/// One invocation of the tool.
struct Step {
    args: Vec<OsString>,
    /// How to undo it once it succeeded (for the points of later steps).
    undo: Option<Undo>,
}

/// A tool's representative run.
struct Scenario {
    tool: &'static str,
    /// The run's directory: inputs, outputs and TMPDIR; compared before and after a fault.
    dir: PathBuf,
    env: Vec<(OsString, OsString)>,
    steps: Vec<Step>,
    /// Removed before every attempt (state a previous attempt legitimately leaves, such as
    /// the block-device state dir recording the failure for `cleanup`), and not compared.
    reset: Vec<PathBuf>,
    /// Files copied afresh (from, to) before every attempt: inputs a step edits in place.
    copies: Vec<(PathBuf, PathBuf)>,
    /// Left out of the before/after comparison (a cache, a state dir that records the
    /// failure on purpose).
    unchecked: Vec<PathBuf>,
    /// Directories that must be empty (or absent) after a failed step.
    must_be_empty: Vec<PathBuf>,
}

fn os(parts: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<OsString> {
    parts.iter().map(|p| p.as_ref().to_owned()).collect()
}

fn step(args: Vec<OsString>) -> Step {
    Step { args, undo: None }
}

/// Run `program` to set a scenario up (not under test); fail loudly.
fn setup(program: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Result<()> {
    let out = Command::new(program)
        .args(args.iter().map(|a| a.as_ref()))
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "setting up: {program} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn file_of(path: &Path, len: u64) -> Result<()> {
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.set_len(len)?;
    Ok(())
}

fn scenarios(ctx: &Ctx) -> Result<Vec<Scenario>> {
    let mut v = Vec::new();

    // dfloop: attach a file, then detach it.
    let dir = ctx.dir("faults-dfloop")?;
    let img = dir.join("disk.img");
    file_of(&img, 8 << 20)?;
    v.push(Scenario {
        tool: "dfloop",
        env: Vec::new(),
        steps: vec![
            Step {
                args: os(&[&"attach", &img]),
                undo: Some(Box::new(|out| os(&[&"detach", &out.trim()]))),
            },
            Step {
                args: os(&[
                    &"attach",
                    &"--offset",
                    &"1MiB",
                    &"--sizelimit",
                    &"4MiB",
                    &"-r",
                    &img,
                ]),
                undo: Some(Box::new(|out| os(&[&"detach", &out.trim()]))),
            },
        ],
        reset: Vec::new(),
        copies: Vec::new(),
        unchecked: Vec::new(),
        must_be_empty: Vec::new(),
        dir,
    });

    // dfmount: mount an ext4 image (-o loop), bind it, unmount both.
    let dir = ctx.dir("faults-dfmount")?;
    let img = dir.join("fs.img");
    file_of(&img, 16 << 20)?;
    setup("mkfs.ext4", &[&"-q", &"-F", &img])?;
    let mnt = dir.join("mnt");
    let bind = dir.join("bind");
    std::fs::create_dir_all(&mnt)?;
    std::fs::create_dir_all(&bind)?;
    let (m1, m2) = (mnt.clone(), bind.clone());
    v.push(Scenario {
        tool: "dfmount",
        env: Vec::new(),
        steps: vec![
            Step {
                args: os(&[&"mount", &"-t", &"ext4", &"-o", &"loop", &img, &mnt]),
                undo: Some(Box::new(move |_| os(&[&"umount", &m1]))),
            },
            Step {
                args: os(&[&"bind", &"--ro", &mnt, &bind]),
                undo: Some(Box::new(move |_| os(&[&"umount", &m2]))),
            },
            step(os(&[&"umount", &bind])),
            step(os(&[&"umount", &mnt])),
        ],
        reset: Vec::new(),
        copies: Vec::new(),
        unchecked: Vec::new(),
        must_be_empty: Vec::new(),
        dir,
    });

    // dfpart: a new image with a GPT layout.
    let dir = ctx.dir("faults-dfpart")?;
    let img = dir.join("gpt.img");
    v.push(Scenario {
        tool: "dfpart",
        env: Vec::new(),
        steps: vec![step(os(&[
            &"create",
            &img,
            &"--label",
            &"gpt",
            &"--size",
            &"64MiB",
            &"--part",
            &"name=esp,size=16MiB,type=ef00",
            &"--part",
            &"name=root,size=100%",
        ]))],
        reset: vec![img.clone()],
        copies: Vec::new(),
        unchecked: Vec::new(),
        must_be_empty: Vec::new(),
        dir,
    });

    // dfimg: create a qcow2, convert a raw image to qcow2 and to vmdk.
    let dir = ctx.dir("faults-dfimg")?;
    let raw = dir.join("in.raw");
    file_of(&raw, 8 << 20)?;
    v.push(Scenario {
        tool: "dfimg",
        env: Vec::new(),
        steps: vec![
            step(os(&[
                &"create",
                &"-f",
                &"qcow2",
                &dir.join("new.qcow2"),
                &"16MiB",
            ])),
            step(os(&[
                &"convert",
                &"-f",
                &"raw",
                &"-O",
                &"qcow2",
                &raw,
                &dir.join("out.qcow2"),
            ])),
        ],
        reset: vec![dir.join("new.qcow2"), dir.join("out.qcow2")],
        copies: Vec::new(),
        unchecked: Vec::new(),
        must_be_empty: Vec::new(),
        dir,
    });

    // iso-remaster: every mode that writes here (no kernel iso9660: overlay and bind cannot
    // run; copy takes the extract + rebuild route).
    let dir = ctx.dir("faults-iso-remaster")?;
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("docs"))?;
    std::fs::write(tree.join("README.TXT"), "hello\n")?;
    std::fs::write(tree.join("docs/a.txt"), "a\n")?;
    let iso = dir.join("in.iso");
    setup(
        "xorriso",
        &[
            &"-as", &"mkisofs", &"-quiet", &"-R", &"-J", &"-V", &"FAULTS", &"-o", &iso, &tree,
        ],
    )?;
    let add = dir.join("added.txt");
    std::fs::write(&add, "added\n")?;
    let add_arg = format!("{}:/ADDED.TXT", add.display());
    let inplace = dir.join("inplace.iso");
    let outs: Vec<PathBuf> = ["patch", "direct", "copy", "md5"]
        .iter()
        .map(|m| dir.join(format!("out-{m}.iso")))
        .collect();
    v.push(Scenario {
        tool: "iso-remaster",
        env: Vec::new(),
        steps: vec![
            step(os(&[
                &iso, &"--mode", &"patch", &"--volid", &"NEWVOL", &"-o", &outs[0],
            ])),
            step(os(&[
                &iso, &"--mode", &"direct", &"--add", &add_arg, &"-o", &outs[1],
            ])),
            step(os(&[
                &iso, &"--mode", &"copy", &"--add", &add_arg, &"-o", &outs[2],
            ])),
            step(os(&[
                &iso,
                &"--mode",
                &"patch",
                &"--implant-md5",
                &"-o",
                &outs[3],
            ])),
            // In place: the input is the output; a fault must leave it byte for byte.
            step(os(&[
                &inplace, &"--mode", &"patch", &"--volid", &"INPLACE", &"--force",
            ])),
        ],
        reset: outs,
        copies: vec![(iso.clone(), inplace)],
        unchecked: Vec::new(),
        must_be_empty: Vec::new(),
        dir,
    });

    // dflayers: unpack a tarball into a store, run a command in the stack with an upper
    // dir, commit the upper dir as a tarball and into an OCI layout.
    let dir = ctx.dir("faults-dflayers")?;
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin"))?;
    for d in ["proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d))?;
    }
    std::fs::copy("/usr/bin/busybox", rootfs.join("bin/busybox"))
        .context("copying /usr/bin/busybox (apt install busybox-static)")?;
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh"))?;
    let tarball = dir.join("base.tar");
    setup("tar", &[&"-C", &rootfs, &"-cf", &tarball, &"."])?;
    let store = dir.join("store");
    let upper = dir.join("upper");
    let work = dir.join(".upper.work");
    let scratch = dir.join("scratch");
    std::fs::create_dir_all(&scratch)?;
    let layer = tarball.display().to_string();
    let out_tar = dir.join("layer.tar.gz");
    let layout = dir.join("oci");
    v.push(Scenario {
        tool: "dflayers",
        env: vec![("DFLAYERS_STORE".into(), store.clone().into())],
        steps: vec![
            step(os(&[&"unpack", &layer])),
            step(os(&[
                &"run",
                &"-l",
                &layer,
                &"--upper",
                &upper,
                &"--scratch",
                &scratch,
                &"--",
                &"/bin/sh",
                &"-c",
                &"echo hi > /tmp/hello",
            ])),
            step(os(&[&"commit", &upper, &"-o", &out_tar])),
            step(os(&[
                &"commit",
                &upper,
                &"--oci-layout",
                &layout,
                &"--tag",
                &"t1",
            ])),
        ],
        // The store is a cache: what an earlier attempt published stays valid, but each
        // attempt starts from an empty one so unpack's points are passed every time.
        reset: vec![store.clone(), upper, work, out_tar, layout],
        copies: Vec::new(),
        unchecked: vec![store.clone()],
        must_be_empty: vec![store.join("tmp"), scratch],
        dir,
    });

    // diskforge blockdev create: an offline GPT (BIOS boot, ESP, root) from the example.
    let dir = ctx.dir("faults-diskforge")?;
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("boot/efi"))?;
    std::fs::create_dir_all(root.join("etc"))?;
    std::fs::write(root.join("hello"), "hi\n")?;
    // The tree's fstab before: a failed create must put it back as it was.
    let fstab_before = dir.join("fstab.before");
    std::fs::write(&fstab_before, "# the fstab before\n")?;
    let cfg = ctx
        .root
        .join("crates/blockdev/examples/configs/gpt-bios-esp-root.yaml");
    let state = dir.join("state");
    let images = dir.join("images");
    v.push(Scenario {
        tool: "diskforge",
        env: Vec::new(),
        steps: vec![step(os(&[
            &"blockdev",
            &"create",
            &"--image-size",
            &"200MiB",
            &"--config",
            &cfg,
            &"--state",
            &state,
            &"--image-dir",
            &images,
            &"--root",
            &root,
        ]))],
        // The state dir records a failed run for `blockdev cleanup`; the images must go.
        reset: vec![state.clone(), images],
        copies: vec![(fstab_before, root.join("etc/fstab"))],
        unchecked: vec![state],
        must_be_empty: Vec::new(),
        dir,
    });

    // disk-image-create busybox vm -t qcow2.
    let dir = ctx.dir("faults-disk-image-create")?;
    let name = dir.join("out").join("img");
    std::fs::create_dir_all(dir.join("out"))?;
    // The caller's work dir exists; after a failure it must hold no build dir.
    let work = dir.join("work");
    std::fs::create_dir_all(&work)?;
    v.push(Scenario {
        tool: "disk-image-create",
        env: Vec::new(),
        steps: vec![step(os(&[
            &"busybox",
            &"vm",
            &"-t",
            &"qcow2",
            &"--no-tmpfs",
            &"--work-dir",
            &dir.join("work"),
            &"-o",
            &name,
        ]))],
        reset: vec![dir.join("out/img.qcow2")],
        copies: Vec::new(),
        unchecked: Vec::new(),
        must_be_empty: vec![work],
        dir,
    });
    Ok(v)
}

/// Run the group, adding to `table`.
pub fn run(ctx: &Ctx, table: &mut Table) -> Result<()> {
    let logs = ctx.dir("faults-logs")?;
    for sc in scenarios(ctx)? {
        let t = std::time::Instant::now();
        let n = run_scenario(ctx, &sc, &logs, table)
            .with_context(|| format!("fault injection for {}", sc.tool))?;
        eprintln!(
            "hardening: faults: {}: {n} points failed in {:.1} s",
            sc.tool,
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// The objects of this run in a snapshot: those naming the scratch dir (loop backing
/// files, mount points), and every dm table and LV (this kernel has no device-mapper, so
/// nobody else makes them). Temp names in /tmp and /var/tmp are left out: other tests on
/// this host make them all the time; our runs get a TMPDIR inside their own directory.
fn ours(ctx: &Ctx, s: &SystemState) -> BTreeSet<String> {
    let scratch = ctx.scratch.path().display().to_string();
    s.objects
        .iter()
        .filter(|o| o.contains(&scratch) || o.starts_with("dm: ") || o.starts_with("lv: "))
        .cloned()
        .collect()
}

/// Every path under `dir` (files with size and mtime, dirs and symlinks by name), minus the
/// reset paths.
fn listing(dir: &Path, skip: &[PathBuf]) -> BTreeMap<PathBuf, String> {
    use std::os::unix::fs::MetadataExt as _;
    super::walk(dir, skip)
        .into_iter()
        .map(|(p, m)| {
            let what = if m.is_dir() {
                "dir".to_owned()
            } else if m.file_type().is_symlink() {
                "symlink".to_owned()
            } else {
                format!("{} bytes, mtime {}.{}", m.len(), m.mtime(), m.mtime_nsec())
            };
            (p, what)
        })
        .collect()
}

fn invoke(
    ctx: &Ctx,
    sc: &Scenario,
    args: &[OsString],
    env: &[(&str, OsString)],
) -> Result<Outcome> {
    let tmp = sc.dir.join("tmp");
    let mut c = Command::new(ctx.bin(sc.tool));
    c.args(args)
        .current_dir(&sc.dir)
        .env("TMPDIR", &tmp)
        .env_remove("DISKFORGE_FAIL_AT")
        .env_remove("DISKFORGE_KILL_AT")
        .env_remove("DISKFORGE_FAULT_LOG");
    for (k, v) in &sc.env {
        c.env(k, v);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    run_bounded(c, LIMIT)
}

fn reset(sc: &Scenario) -> Result<()> {
    for p in &sc.reset {
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => {
                std::fs::remove_dir_all(p).with_context(|| format!("removing {}", p.display()))?
            }
            Ok(_) => {
                std::fs::remove_file(p).with_context(|| format!("removing {}", p.display()))?
            }
            Err(_) => {}
        }
    }
    for (from, to) in &sc.copies {
        std::fs::copy(from, to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    Ok(())
}

fn describe(o: &Outcome) -> String {
    match o {
        Outcome::Hung => "hung".into(),
        Outcome::Exited { status, stderr, .. } => {
            let last = stderr.lines().last().unwrap_or("").trim();
            format!("{status}: {last}")
        }
    }
}

/// Run steps `0..upto` normally; their stdouts, or a description of the failure.
fn prefix(
    ctx: &Ctx,
    sc: &Scenario,
    upto: usize,
) -> Result<std::result::Result<Vec<String>, String>> {
    let mut outs = Vec::new();
    for (i, s) in sc.steps[..upto].iter().enumerate() {
        match invoke(ctx, sc, &s.args, &[])? {
            Outcome::Exited { status, stdout, .. } if status.success() => outs.push(stdout),
            o => {
                undo(ctx, sc, &outs)?;
                return Ok(Err(format!("step {i} {:?}: {}", s.args, describe(&o))));
            }
        }
    }
    Ok(Ok(outs))
}

/// Undo the successful steps whose stdouts are `outs`, last first.
fn undo(ctx: &Ctx, sc: &Scenario, outs: &[String]) -> Result<()> {
    for (s, out) in sc.steps.iter().zip(outs).rev() {
        if let Some(u) = &s.undo {
            let args = u(out);
            let o = invoke(ctx, sc, &args, &[])?;
            if !matches!(&o, Outcome::Exited { status, .. } if status.success()) {
                eprintln!(
                    "hardening: faults: {}: undo {args:?}: {}",
                    sc.tool,
                    describe(&o)
                );
            }
        }
    }
    Ok(())
}

/// The points of `log` (one `INDEX\tNAME` line each), by index.
fn read_log(log: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut seen = BTreeMap::new();
    for l in text.lines() {
        if let Some((i, n)) = l.split_once('\t')
            && let Ok(i) = i.parse::<usize>()
        {
            seen.entry(i).or_insert_with(|| n.to_owned());
        }
    }
    seen.into_iter().collect()
}

/// Remove kernel objects a failed check left (ours: under the scratch dir), so the next
/// point starts clean: unmount, then detach.
fn scrub(ctx: &Ctx, leaked: &[String]) {
    let scratch = ctx.scratch.path().display().to_string();
    for l in leaked {
        if let Some(m) = l.strip_prefix("mount: ")
            && let Some((mp, _)) = m.split_once(" (")
            && mp.starts_with(&scratch)
        {
            let _ = Command::new("umount").arg(mp).status();
        }
    }
    for l in leaked {
        if let Some(m) = l.strip_prefix("loop: ")
            && let Some((dev, backing)) = m.split_once('=')
            && backing.starts_with(&scratch)
        {
            let _ = Command::new("losetup")
                .args(["-d", &format!("/dev/{dev}")])
                .status();
        }
    }
}

fn run_scenario(ctx: &Ctx, sc: &Scenario, logs: &Path, table: &mut Table) -> Result<u32> {
    let tool = sc.tool;
    // 1. Enumerate: one clean run, one log per step.
    std::fs::create_dir_all(sc.dir.join("tmp"))?;
    reset(sc)?;
    let clean0 = ours(ctx, &SystemState::capture());
    let clean_files0 = listing(&sc.dir, &sc.unchecked);
    let mut points = Vec::new();
    let mut outs = Vec::new();
    for (i, s) in sc.steps.iter().enumerate() {
        let log = logs.join(format!("{tool}-{i}.log"));
        let _ = std::fs::remove_file(&log);
        let o = invoke(
            ctx,
            sc,
            &s.args,
            &[("DISKFORGE_FAULT_LOG", log.clone().into())],
        )?;
        match &o {
            Outcome::Exited { status, stdout, .. } if status.success() => outs.push(stdout.clone()),
            _ => {
                undo(ctx, sc, &outs)?;
                table.problem(
                    tool,
                    format!(
                        "the clean run failed at step {i} {:?}: {}",
                        s.args,
                        describe(&o)
                    ),
                );
                return Ok(0);
            }
        }
        points.push(read_log(&log));
    }
    undo(ctx, sc, &outs)?;
    // The clean run, undone, must leave nothing either (else every point below would
    // inherit it).
    let clean1 = ours(ctx, &SystemState::capture());
    for l in clean1.difference(&clean0) {
        table.row(tool).leaked += 1;
        table.problem(tool, format!("the clean run, undone, left {l}"));
    }
    scrub(
        ctx,
        &clean1.difference(&clean0).cloned().collect::<Vec<_>>(),
    );
    reset(sc)?;
    for p in listing(&sc.dir, &sc.unchecked).keys() {
        if !clean_files0.contains_key(p) {
            table.row(tool).leaked += 1;
            table.problem(tool, format!("the clean run left {}", p.display()));
        }
    }
    if points.iter().all(Vec::is_empty) {
        table.problem(
            tool,
            "the run passed no fault point (not a fault-injection build?)",
        );
        return Ok(0);
    }
    // 2. Fail each point in turn.
    let mut n = 0;
    for (i, pts) in points.iter().enumerate() {
        for (index, name) in pts {
            let what = format!(
                "step {i} ({}) point {index} `{name}`",
                first_word(&sc.steps[i])
            );
            reset(sc)?;
            let outs = match prefix(ctx, sc, i)? {
                Ok(o) => o,
                Err(e) => {
                    table.problem(tool, format!("{what}: the steps before it failed: {e}"));
                    continue;
                }
            };
            let state0 = ours(ctx, &SystemState::capture());
            let files0 = listing(&sc.dir, &sc.unchecked);
            let o = invoke(
                ctx,
                sc,
                &sc.steps[i].args,
                &[("DISKFORGE_FAIL_AT", index.to_string().into())],
            )?;
            n += 1;
            table.row(tool).faults += 1;
            match &o {
                Outcome::Hung => {
                    table.row(tool).hung += 1;
                    table.problem(tool, format!("{what}: hung"));
                }
                Outcome::Exited { status, stderr, .. } => {
                    use std::os::unix::process::ExitStatusExt as _;
                    if let Some(sig) = status.signal() {
                        table.row(tool).crashed += 1;
                        table.problem(tool, format!("{what}: died of signal {sig}"));
                    } else if status.success() {
                        table.problem(tool, format!("{what}: exit 0 although the step failed"));
                    } else if stderr.contains("panicked") {
                        table.row(tool).crashed += 1;
                        table.problem(tool, format!("{what}: panicked: {}", describe(&o)));
                    } else if !stderr.contains(name.as_str()) {
                        table.problem(
                            tool,
                            format!("{what}: stderr does not name the step: {}", describe(&o)),
                        );
                    }
                }
            }
            let state1 = ours(ctx, &SystemState::capture());
            let leaked: Vec<String> = state1.difference(&state0).cloned().collect();
            for l in &leaked {
                table.row(tool).leaked += 1;
                table.problem(tool, format!("{what}: left behind {l}"));
            }
            for l in state0.difference(&state1) {
                table.problem(tool, format!("{what}: removed {l}, which it did not make"));
            }
            scrub(ctx, &leaked);
            let files1 = listing(&sc.dir, &sc.unchecked);
            for (p, w) in &files1 {
                match files0.get(p) {
                    None => {
                        table.row(tool).leaked += 1;
                        table.problem(tool, format!("{what}: left {} ({w})", p.display()));
                    }
                    Some(w0) if w0 != w => {
                        table.problem(
                            tool,
                            format!("{what}: changed {} ({w0} -> {w})", p.display()),
                        );
                    }
                    _ => {}
                }
            }
            for p in files0.keys().filter(|p| !files1.contains_key(*p)) {
                table.problem(tool, format!("{what}: removed {}", p.display()));
            }
            for d in &sc.must_be_empty {
                for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
                    table.row(tool).leaked += 1;
                    table.problem(tool, format!("{what}: left {}", e.path().display()));
                }
            }
            undo(ctx, sc, &outs)?;
        }
    }
    reset(sc)?;
    Ok(n)
}

fn first_word(s: &Step) -> String {
    s.args
        .first()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_are_read_by_index_first_line_wins() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log");
        std::fs::write(&p, "0\tloop.attach\n1\tmount.mount\n0\tchild.point\nbad\n").unwrap();
        assert_eq!(
            read_log(&p),
            vec![(0, "loop.attach".to_owned()), (1, "mount.mount".to_owned())]
        );
    }
}
