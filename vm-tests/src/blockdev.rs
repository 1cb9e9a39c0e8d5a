//! The block-device engine's kernel route where the host cannot run it: LVM (device-mapper),
//! `loopNpK` partition nodes (`losetup -P` works here) and vfat mounts.
//!
//! - `blockdev::lvm_one_pv_kernel_view` / `blockdev::lvm_two_pvs_kernel_view`: the shipped LVM
//!   examples built with a root tree and a [`MountedHook`]; afterwards the image is attached
//!   again read-only and the kernel's view is compared with the plan: `lsblk` partitions,
//!   `lvs` names and sizes, `blkid` types/labels/UUIDs of every LV, `xfs_repair -n` /
//!   `e2fsck -fn`, the files the hook and the tree put there, and the fstab written.
//! - `blockdev::thin_pool`: dib's thin pool spelling (`type: thin-pool`, `type: thin` +
//!   `thin-pool`) makes a pool and a thin LV, as `lvs` reports them.
//! - `blockdev::gpt_esp_root_pn_nodes_and_vfat_mount`: partitions through the kernel's `pN`
//!   nodes (no offset loops) and the ESP mounted as vfat in the private namespace.
//! - `blockdev::lvm_fault_injection_at_every_step` / `blockdev::lvm_sigkill_at_every_step`:
//!   fail or SIGKILL the LVM build before every step and in the mount phase: nothing mounted,
//!   no loop device and no device-mapper table of ours after the failure (after SIGKILL:
//!   nothing mounted, and once `cleanup` ran from the state alone, nothing attached or
//!   active), no stray files, `cleanup` idempotent.
//! - `blockdev::no_device_mapper_error_names_the_node` is on the host (crates/blockdev tests).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use diskforge_blockdev::{
    CreateOptions, Device, Error, MountedHook, Plan, PlanOptions, STATE_FILE, cleanup, create,
    plan_text, read_state,
};
use diskforge_cmd::Cmd;
use libtest_mimic::Trial;

use crate::trial;

/// This module's tests.
pub fn tests() -> Vec<Trial> {
    vec![
        trial("blockdev::lvm_one_pv_kernel_view", lvm_one_pv_kernel_view),
        trial("blockdev::lvm_two_pvs_kernel_view", lvm_two_pvs_kernel_view),
        trial("blockdev::thin_pool", thin_pool),
        trial(
            "blockdev::gpt_esp_root_pn_nodes_and_vfat_mount",
            gpt_esp_root_pn_nodes_and_vfat_mount,
        ),
        trial(
            "blockdev::lvm_fault_injection_at_every_step",
            lvm_fault_injection_at_every_step,
        ),
        trial(
            "blockdev::lvm_sigkill_at_every_step",
            lvm_sigkill_at_every_step,
        ),
    ]
}

/// The environment variable that turns this binary into the SIGKILL child (see
/// [`child_hook`]).
const KILL_ENV: &str = "DISKFORGE_BLOCKDEV_KILL_AT";

fn example(name: &str) -> Result<String> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/blockdev/examples/configs")
        .join(format!("{name}.yaml"));
    fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
}

fn tree(dir: &Path) -> Result<PathBuf> {
    let root = dir.join("root");
    for d in ["etc", "var/lib", "home/user", "tmp", "boot/efi/EFI/BOOT"] {
        fs::create_dir_all(root.join(d))?;
    }
    fs::write(root.join("etc/hostname"), "diskforge\n")?;
    fs::write(root.join("var/lib/state"), "var data\n")?;
    fs::write(root.join("home/user/notes"), "home data\n")?;
    fs::write(root.join("boot/efi/EFI/BOOT/BOOTX64.EFI"), vec![0x4d; 5000])?;
    Ok(root)
}

fn plan_for(text: &str, dir: &Path, root: Option<&Path>) -> Result<Plan> {
    let opts = PlanOptions {
        image_size: Some(256 << 20),
        image_dir: dir.join("images"),
        root: root.map(Path::to_owned),
        uuid_seed: Some("vm-blockdev".into()),
        ..Default::default()
    };
    Ok(plan_text(text, &opts)?)
}

/// Loop devices backed by files under `dir`, and device-mapper tables of `vgs`.
fn leftovers(dir: &Path, vgs: &[&str]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for l in diskforge_loop::list()? {
        if l.back_file.starts_with(dir) {
            out.push(format!(
                "loop {} = {}",
                l.name.display(),
                l.back_file.display()
            ));
        }
    }
    let dm = Cmd::new("dmsetup").args(["ls"]).read().unwrap_or_default();
    for line in dm.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if vgs.iter().any(|vg| name.starts_with(&format!("{vg}-"))) {
            out.push(format!("dm {name}"));
        }
    }
    let mi = fs::read_to_string("/proc/self/mountinfo")?;
    let d = dir.display().to_string();
    for line in mi.lines() {
        if line.split(' ').nth(4).is_some_and(|m| m.starts_with(&d)) {
            out.push(format!("mount {line}"));
        }
    }
    Ok(out)
}

/// A hook that checks every planned mount point is mounted in its namespace (and not in the
/// init namespace) and leaves a file in /var.
fn checking_hook(plan: &Plan) -> MountedHook {
    let points: Vec<String> = plan
        .filesystems
        .iter()
        .filter(|f| f.fs_type.as_str() != "swap")
        .filter_map(|f| f.mount_point.clone())
        .collect();
    MountedHook(Arc::new(move |mnt: &Path| {
        let mine = fs::read_to_string("/proc/thread-self/mountinfo").map_err(|e| e.to_string())?;
        let init = fs::read_to_string("/proc/1/mountinfo").map_err(|e| e.to_string())?;
        for mp in &points {
            let t = if mp == "/" {
                mnt.to_path_buf()
            } else {
                mnt.join(mp.trim_start_matches('/'))
            };
            let needle = format!(" {} ", t.display());
            if !mine.contains(&needle) {
                return Err(format!("{mp} is not mounted at {}", t.display()));
            }
            if init.contains(&needle) {
                return Err(format!("{mp} is visible outside the private namespace"));
            }
        }
        fs::write(mnt.join("var/written-by-hook"), "hook\n").map_err(|e| e.to_string())
    }))
}

/// The image attached with partition scanning, and (for LVM) its VG activated; everything
/// undone on drop.
struct Inspect {
    loop_dev: String,
    vg: Option<String>,
}

impl Inspect {
    fn new(image: &Path, vg: Option<&str>) -> Result<Self> {
        let loop_dev = Cmd::new("losetup")
            .args(["-P", "--show", "-f"])
            .arg(image)
            .read()?
            .trim()
            .to_owned();
        let me = Inspect {
            loop_dev,
            vg: vg.map(str::to_owned),
        };
        if let Some(vg) = vg {
            lvm("vgchange", &["-ay", vg])?;
        }
        Ok(me)
    }
}

impl Drop for Inspect {
    fn drop(&mut self) {
        if let Some(vg) = &self.vg {
            let _ = lvm("vgchange", &["-an", vg]);
        }
        let _ = Cmd::new("losetup").args(["-d", &self.loop_dev]).run();
    }
}

fn lvm(sub: &str, args: &[&str]) -> Result<String> {
    Ok(Cmd::new("lvm")
        .arg(sub)
        .args([
            "--config",
            "activation { udev_sync=0 udev_rules=0 } backup { backup=0 archive=0 }",
        ])
        .args(args)
        .env("DM_DISABLE_UDEV", "1")
        .read()?)
}

fn blkid(dev: &Path) -> Result<(String, String, String)> {
    let out = Cmd::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(dev)
        .read()?;
    let get = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_default()
            .to_owned()
    };
    Ok((get("TYPE"), get("LABEL"), get("UUID")))
}

fn fsck(dev: &Path, fs_type: &str) -> Result<()> {
    match fs_type {
        "xfs" => Cmd::new("xfs_repair").arg("-n").arg(dev).run()?,
        "vfat" => Cmd::new("fsck.vfat").arg("-n").arg(dev).run()?,
        _ => Cmd::new("e2fsck").arg("-fn").arg(dev).run()?,
    };
    Ok(())
}

/// Read `path` from the filesystem on `dev` by mounting it read-only (we are in the VM).
fn read_from(dev: &Path, fs_type: &str, path: &str, scratch: &Path) -> Result<String> {
    let mnt = scratch.join("inspect-mnt");
    fs::create_dir_all(&mnt)?;
    Cmd::new("mount")
        .args(["-t", fs_type, "-o", "ro"])
        .arg(dev)
        .arg(&mnt)
        .run()?;
    let res = fs::read_to_string(mnt.join(path)).with_context(|| format!("reading {path}"));
    Cmd::new("umount").arg(&mnt).run()?;
    fs::remove_dir(&mnt)?;
    res
}

/// Build an LVM example and compare the kernel's view with the plan.
fn lvm_example(name: &str, lv_count: usize, parts: usize) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = tree(dir.path())?;
    let plan = plan_for(&example(name)?, dir.path(), Some(&root))?;
    let state = dir.path().join("state");
    let opts = CreateOptions {
        mounted: Some(checking_hook(&plan)),
        ..Default::default()
    };
    let st = create(&plan, &state, &opts, &mut |_| {})?;
    let ks = st.kernel.as_ref().context("kernel state")?;
    ensure!(ks.released && ks.vgs.iter().all(|v| !v.active), "{ks:?}");
    let left = leftovers(dir.path(), &["vg"])?;
    ensure!(left.is_empty(), "left after create: {left:?}");

    let vg = &plan.volume_groups[0];
    let image = &plan.disks[0].path;
    {
        let ins = Inspect::new(image, Some(&vg.name))?;
        let lsblk = Cmd::new("lsblk")
            .args(["-J", "-b", "-o", "NAME,SIZE,TYPE"])
            .arg(&ins.loop_dev)
            .read()?;
        let nparts = lsblk.matches("\"type\": \"part\"").count()
            + lsblk.matches("\"type\":\"part\"").count();
        ensure!(nparts == parts, "lsblk sees {nparts} partitions: {lsblk}");
        let lvs = lvm(
            "lvs",
            &[
                "--reportformat",
                "json",
                "--units",
                "b",
                "--nosuffix",
                "-o",
                "lv_name,lv_size",
                &vg.name,
            ],
        )?;
        let rows: serde_json::Value = serde_json::from_str(&lvs)?;
        let rows = rows["report"][0]["lv"]
            .as_array()
            .context("lvs rows")?
            .clone();
        ensure!(rows.len() == lv_count, "lvs: {lvs}");
        for lv in &vg.lvs {
            let row = rows
                .iter()
                .find(|r| r["lv_name"] == lv.name.as_str())
                .with_context(|| format!("no LV {} in {lvs}", lv.name))?;
            let size: u64 = row["lv_size"].as_str().unwrap_or("0").parse()?;
            ensure!(
                size == lv.size,
                "{}: lvs says {size}, the plan {}",
                lv.name,
                lv.size
            );
        }
        for f in &plan.filesystems {
            let Device::Lv { vg, lv, .. } = &f.device else {
                continue;
            };
            let dev = PathBuf::from(format!("/dev/mapper/{vg}-{lv}"));
            let (t, l, u) = blkid(&dev)?;
            ensure!(t == f.fs_type.as_str(), "{}: blkid TYPE {t}", f.name);
            ensure!(l == f.label, "{}: blkid LABEL {l}", f.name);
            ensure!(
                Some(&u) == f.uuid.as_ref(),
                "{}: blkid UUID {u} vs {:?}",
                f.name,
                f.uuid
            );
            fsck(&dev, &t)?;
        }
        let fs_of = |mp: &str| {
            plan.filesystems
                .iter()
                .find(|f| f.mount_point.as_deref() == Some(mp))
                .and_then(|f| match &f.device {
                    Device::Lv { vg, lv, .. } => Some((
                        PathBuf::from(format!("/dev/mapper/{vg}-{lv}")),
                        f.fs_type.as_str(),
                    )),
                    Device::Region { .. } => None,
                })
        };
        let (rdev, rt) = fs_of("/").context("root LV")?;
        let fstab = read_from(&rdev, rt, "etc/fstab", dir.path())?;
        ensure!(
            fstab.lines().map(str::to_owned).collect::<Vec<_>>() == plan.fstab,
            "fstab: {fstab:?}"
        );
        ensure!(read_from(&rdev, rt, "etc/hostname", dir.path())? == "diskforge\n");
        // /var is its own LV in both examples' plans or part of root: the hook's file and
        // the tree's file are wherever /var lives.
        let (vdev, vt, prefix) = match fs_of("/var") {
            Some((d, t)) => (d, t, ""),
            None => (rdev.clone(), rt, "var/"),
        };
        ensure!(read_from(&vdev, vt, &format!("{prefix}written-by-hook"), dir.path())? == "hook\n");
        ensure!(read_from(&vdev, vt, &format!("{prefix}lib/state"), dir.path())? == "var data\n");
    }
    let left = leftovers(dir.path(), &["vg"])?;
    ensure!(left.is_empty(), "left after inspection: {left:?}");
    cleanup(&state)?;
    cleanup(&state)?;
    ensure!(!state.exists());
    Ok(())
}

fn lvm_one_pv_kernel_view() -> Result<()> {
    lvm_example("lvm-one-pv", 4, 2)
}

fn lvm_two_pvs_kernel_view() -> Result<()> {
    lvm_example("lvm-two-pvs", 2, 2)
}

const THIN: &str = "
- local_loop: {name: image0, size: 512MiB}
- partitioning:
    base: image0
    label: gpt
    partitions:
      - {name: pvpart, type: '8E00', size: 100%}
- lvm:
    name: lvm
    pvs: [{name: pv, base: pvpart}]
    vgs: [{name: vgthin, base: [pv]}]
    lvs:
      - {name: pool, base: vgthin, size: 256MiB, type: thin-pool}
      - {name: lv_root, base: vgthin, size: 400MiB, type: thin, thin-pool: pool}
- mkfs: {name: fs_root, base: lv_root, type: ext4, label: thinroot}
- mount: {name: mount_root, base: fs_root, mount_point: /}
";

fn thin_pool() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let plan = plan_for(THIN, dir.path(), None)?;
    let state = dir.path().join("state");
    create(&plan, &state, &CreateOptions::default(), &mut |_| {})?;
    ensure!(leftovers(dir.path(), &["vgthin"])?.is_empty());
    {
        let _ins = Inspect::new(&plan.disks[0].path, Some("vgthin"))?;
        let lvs = lvm(
            "lvs",
            &[
                "--reportformat",
                "json",
                "--units",
                "b",
                "--nosuffix",
                "-o",
                "lv_name,segtype,pool_lv,lv_size",
                "vgthin",
            ],
        )?;
        ensure!(
            lvs.contains("\"segtype\":\"thin-pool\"") || lvs.contains("\"segtype\": \"thin-pool\""),
            "{lvs}"
        );
        ensure!(
            lvs.contains("\"pool_lv\":\"pool\"") || lvs.contains("\"pool_lv\": \"pool\""),
            "{lvs}"
        );
        let (t, l, _) = blkid(Path::new("/dev/mapper/vgthin-lv_root"))?;
        ensure!(t == "ext4" && l == "thinroot", "{t} {l}");
        fsck(Path::new("/dev/mapper/vgthin-lv_root"), "ext4")?;
    }
    ensure!(leftovers(dir.path(), &["vgthin"])?.is_empty());
    cleanup(&state)?;
    Ok(())
}

fn gpt_esp_root_pn_nodes_and_vfat_mount() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = tree(dir.path())?;
    let plan = plan_for(&example("gpt-bios-esp-root")?, dir.path(), Some(&root))?;
    let state = dir.path().join("state");
    let hook = MountedHook(Arc::new(|mnt: &Path| {
        let efi = fs::read(mnt.join("boot/efi/EFI/BOOT/BOOTX64.EFI")).map_err(|e| e.to_string())?;
        if efi != vec![0x4d; 5000] {
            return Err("BOOTX64.EFI differs".into());
        }
        let mine = fs::read_to_string("/proc/thread-self/mountinfo").map_err(|e| e.to_string())?;
        let efi_mp = format!(" {} ", mnt.join("boot/efi").display());
        let line = mine
            .lines()
            .find(|l| l.contains(&efi_mp))
            .ok_or("ESP not mounted")?;
        if !line.contains(" - vfat ") {
            return Err(format!("ESP mount is not vfat: {line}"));
        }
        Ok(())
    }));
    let st = create(
        &plan,
        &state,
        &CreateOptions {
            mounted: Some(hook),
            ..Default::default()
        },
        &mut |_| {},
    )?;
    let ks = st.kernel.as_ref().context("kernel state")?;
    // One loop device for the disk; the partitions are its pN nodes (no offset loops).
    ensure!(ks.loops.len() == 1, "{:?}", ks.loops);
    let esp = ks.devices.get("ESP").context("ESP device")?;
    ensure!(
        esp.display().to_string().ends_with("p2"),
        "ESP on {}",
        esp.display()
    );
    ensure!(leftovers(dir.path(), &[])?.is_empty());
    Cmd::new("sgdisk")
        .arg("-v")
        .arg(&plan.disks[0].path)
        .run()?;
    cleanup(&state)?;
    Ok(())
}

fn unwound(plan: &Plan, state: &Path, dir: &Path, what: &str) -> Result<()> {
    let left = leftovers(dir, &["vg"])?;
    ensure!(left.is_empty(), "{what}: {left:?}");
    for d in &plan.disks {
        ensure!(!d.path.exists(), "{what}: {} left", d.path.display());
    }
    let extra: Vec<_> = fs::read_dir(state)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<Vec<_>>>()?
        .into_iter()
        .filter(|f| f != STATE_FILE && f != "fstab.orig")
        .collect();
    ensure!(extra.is_empty(), "{what}: stray files {extra:?}");
    cleanup(state)?;
    cleanup(state)?;
    ensure!(!state.exists(), "{what}: state dir left");
    Ok(())
}

fn lvm_fault_injection_at_every_step() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = tree(dir.path())?;
    let plan = plan_for(&example("lvm-one-pv")?, dir.path(), Some(&root))?;
    for n in 0..=plan.steps.len() {
        let state = dir.path().join(format!("state-{n}"));
        let o = CreateOptions {
            fail_at: Some(n),
            mounted: Some(checking_hook(&plan)),
            ..Default::default()
        };
        match create(&plan, &state, &o, &mut |_| {}) {
            Err(Error::Injected { step, .. }) if step == n => {}
            other => bail!("step {n}: {other:?}"),
        }
        let st = read_state(&state)?;
        ensure!(
            st.failed.as_ref().map(|f| f.0) == Some(n),
            "step {n}: {:?}",
            st.failed
        );
        unwound(&plan, &state, dir.path(), &format!("fail at step {n}"))?;
        ensure!(
            fs::read_to_string(root.join("etc/hostname"))? == "diskforge\n"
                && !root.join("etc/fstab").exists(),
            "step {n}: the tree was not restored"
        );
    }
    Ok(())
}

/// Called first thing in `main`: when [`KILL_ENV`] is set this process is the child of
/// `lvm_sigkill_at_every_step` — build with `kill_at` and never return.
pub fn child_hook() {
    let Ok(spec) = std::env::var(KILL_ENV) else {
        return;
    };
    let res = (|| -> Result<()> {
        let (n, dir) = spec.split_once(':').context("N:DIR")?;
        let dir = PathBuf::from(dir);
        let plan = plan_for(&example("lvm-one-pv")?, &dir, Some(&dir.join("root")))?;
        let n: usize = n.parse()?;
        let o = CreateOptions {
            kill_at: Some(n),
            mounted: Some(checking_hook(&plan)),
            ..Default::default()
        };
        create(&plan, &dir.join("state"), &o, &mut |_| {})?;
        Ok(())
    })();
    eprintln!("blockdev SIGKILL child was not killed: {res:?}");
    std::process::exit(3);
}

fn lvm_sigkill_at_every_step() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let exe = std::env::current_exe()?;
    let steps = plan_for(&example("lvm-one-pv")?, dir.path(), None)?
        .steps
        .len();
    for n in 0..=steps {
        let root = tree(dir.path())?;
        let plan = plan_for(&example("lvm-one-pv")?, dir.path(), Some(&root))?;
        let e = Cmd::new(&exe)
            .env(KILL_ENV, format!("{n}:{}", dir.path().display()))
            .run()
            .err()
            .with_context(|| format!("step {n}: the child was not killed"))?;
        use std::os::unix::process::ExitStatusExt;
        ensure!(
            e.exit_status().and_then(|s| s.signal()) == Some(9),
            "step {n}: {e:#}"
        );
        // Before cleanup: nothing mounted; a loop device may only remain under an active VG
        // that the state records.
        let state = dir.path().join("state");
        let st = read_state(&state)?;
        let left = leftovers(dir.path(), &["vg"])?;
        ensure!(
            !left.iter().any(|l| l.starts_with("mount")),
            "step {n}: {left:?}"
        );
        let active = st
            .kernel
            .as_ref()
            .is_some_and(|k| k.vgs.iter().any(|v| v.active));
        ensure!(
            active || left.is_empty(),
            "step {n}: {left:?} with no active VG recorded"
        );
        diskforge_blockdev::delete(&state)?;
        diskforge_blockdev::delete(&state)?;
        let left = leftovers(dir.path(), &["vg"])?;
        ensure!(left.is_empty(), "step {n}: after delete {left:?}");
        for d in &plan.disks {
            ensure!(!d.path.exists(), "step {n}: image left");
        }
        ensure!(!state.exists());
        fs::remove_dir_all(&root)?;
    }
    Ok(())
}
