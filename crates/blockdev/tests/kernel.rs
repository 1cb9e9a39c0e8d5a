//! The kernel route on the host (root): loop devices with autoclear, offset loops for the
//! partitions (this host's kernel makes no `loopNpK` nodes), mkfs onto the loop devices, and
//! mounts in a private mount namespace. Checked with `sfdisk --json`, `blkid`, `e2fsck -fn`,
//! `debugfs`, the loop devices in sysfs and `/proc/*/mountinfo`; fault injection and SIGKILL
//! at every step.
//!
//! Not covered here: LVM and vfat mounts (this host has no device-mapper and no vfat); they
//! run in the VM (`cargo xtask vm-test --filter blockdev`).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use diskforge_blockdev::{
    CreateOptions, Device, Error, MountedHook, Plan, PlanOptions, STATE_FILE, cleanup, create,
    delete, plan_text, read_state,
};
use diskforge_cmd::Cmd;
use diskforge_testutil::{KernelState, require_root};

fn example(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples/configs")
        .join(format!("{name}.yaml"));
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn tree(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    for d in ["etc", "boot/efi/EFI/BOOT", "var/lib"] {
        fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    fs::write(root.join("etc/hostname"), "diskforge\n").expect("write");
    fs::write(root.join("boot/efi/EFI/BOOT/BOOTX64.EFI"), vec![0x4d; 5000]).expect("write");
    fs::write(root.join("var/lib/state"), "var data\n").expect("write");
    root
}

fn plan_in(config: &str, dir: &Path, root: &Path, size: u64) -> Plan {
    let opts = PlanOptions {
        image_size: Some(size),
        image_dir: dir.join("images"),
        root: Some(root.to_owned()),
        uuid_seed: Some("route-test".into()),
        source_date_epoch: Some(1_700_000_000),
        ..Default::default()
    };
    plan_text(&example(config), &opts).expect("plan")
}

fn kernel() -> CreateOptions {
    CreateOptions {
        kernel: true,
        ..Default::default()
    }
}

#[derive(Debug, PartialEq, serde::Deserialize)]
struct Sfdisk {
    partitiontable: SfTable,
}
#[derive(Debug, PartialEq, serde::Deserialize)]
struct SfTable {
    label: String,
    id: String,
    partitions: Vec<SfPart>,
}
#[derive(Debug, PartialEq, serde::Deserialize)]
struct SfPart {
    start: u64,
    size: u64,
    #[serde(rename = "type")]
    ty: String,
    uuid: Option<String>,
    name: Option<String>,
}

fn sfdisk(image: &Path) -> SfTable {
    Cmd::new("sfdisk")
        .arg("--json")
        .arg(image)
        .json::<Sfdisk>()
        .expect("sfdisk --json")
        .partitiontable
}

/// TYPE, LABEL and UUID of every filesystem of the plan, read with `blkid -p -O`.
fn identities(plan: &Plan) -> Vec<(String, String, String, String)> {
    plan.filesystems
        .iter()
        .map(|f| {
            let Device::Region { image, offset, .. } = &f.device else {
                panic!("{} is on an LV", f.name)
            };
            let out = Cmd::new("blkid")
                .args(["-p", "-O", &offset.to_string(), "-o", "export"])
                .arg(image)
                .read()
                .expect("blkid");
            let get = |k: &str| {
                out.lines()
                    .find_map(|l| l.strip_prefix(&format!("{k}=")))
                    .unwrap_or_default()
                    .to_owned()
            };
            (f.name.clone(), get("TYPE"), get("LABEL"), get("UUID"))
        })
        .collect()
}

/// Nothing of ours attached or mounted (anywhere under `dir`).
fn nothing_left(dir: &Path, what: &str) {
    let k = KernelState::capture();
    assert!(
        k.loops_under(dir).is_empty(),
        "{what}: loops {:?}",
        k.loops_under(dir)
    );
    assert!(
        k.mounts_under(dir).is_empty(),
        "{what}: mounts {:?}",
        k.mounts_under(dir)
    );
}

/// The same config and seeds give the same partition table and the same filesystem types,
/// labels and UUIDs on both routes; the kernel route leaves no loop device.
#[test]
#[ignore = "needs root"]
fn kernel_route_matches_offline() {
    require_root();
    let dir = diskforge_testutil::scratch_dir();
    let root = tree(dir.path());
    let off = plan_in(
        "gpt-bios-esp-root",
        &dir.path().join("off"),
        &root,
        256 << 20,
    );
    let ker = plan_in(
        "gpt-bios-esp-root",
        &dir.path().join("ker"),
        &root,
        256 << 20,
    );
    create(
        &off,
        &dir.path().join("s-off"),
        &CreateOptions::default(),
        &mut |_| {},
    )
    .expect("offline");
    let st = create(&ker, &dir.path().join("s-ker"), &kernel(), &mut |_| {}).expect("kernel");
    let ks = st.kernel.as_ref().expect("kernel state");
    assert!(ks.released, "{ks:?}");
    // One loop for the disk, offset loops for the two filesystems (no pN nodes here).
    assert!(ks.loops.len() >= 2, "{ks:?}");
    nothing_left(dir.path(), "after create");

    assert_eq!(sfdisk(&off.disks[0].path), sfdisk(&ker.disks[0].path));
    let a = identities(&off);
    let b = identities(&ker);
    assert_eq!(a, b);
    assert!(
        a.iter()
            .any(|(n, t, l, _)| n == "mkfs_ESP" && t == "vfat" && l == "EFI"),
        "{a:?}"
    );
    assert!(
        a.iter()
            .any(|(_, t, l, u)| t == "ext4" && l == "cloudimg-rootfs" && !u.is_empty())
    );
    Cmd::new("sgdisk")
        .arg("-v")
        .arg(&ker.disks[0].path)
        .run()
        .expect("sgdisk -v");
    // The root filesystem made through the loop device holds the tree and passes fsck.
    let f = ker
        .filesystems
        .iter()
        .find(|f| f.fs_type.as_str() == "ext4")
        .expect("root");
    let Device::Region {
        image,
        offset,
        size,
    } = &f.device
    else {
        panic!()
    };
    let out = dir.path().join("root.ext4");
    Cmd::new("dd")
        .arg(format!("if={}", image.display()))
        .arg(format!("of={}", out.display()))
        .args(["bs=1M", "status=none", "conv=sparse"])
        .arg(format!("skip={}", offset >> 20))
        .arg(format!("count={}", size >> 20))
        .run()
        .expect("dd");
    Cmd::new("e2fsck")
        .arg("-fn")
        .arg(&out)
        .run()
        .expect("e2fsck -fn");
    let host = Cmd::new("debugfs")
        .args(["-R", "cat /etc/hostname"])
        .arg(&out)
        .read()
        .expect("debugfs");
    assert_eq!(host, "diskforge");
    cleanup(&dir.path().join("s-ker")).expect("cleanup");
    cleanup(&dir.path().join("s-ker")).expect("cleanup again");
    cleanup(&dir.path().join("s-off")).expect("cleanup");
}

/// Every other non-LVM example (MBR with logical partitions and swap, the EFI layout, two
/// disks, dib's MBR default): the same table and the same filesystem identities on both
/// routes, and nothing left attached.
#[test]
#[ignore = "needs root"]
fn every_example_same_on_both_routes() {
    require_root();
    let dir = diskforge_testutil::scratch_dir();
    let root = tree(dir.path());
    for (config, size) in [
        ("mbr-logical", 160u64 << 20),
        ("efi", 1 << 30),
        ("two-disks", 128 << 20),
        ("mbr-single-root", 64 << 20),
    ] {
        let off = plan_in(
            config,
            &dir.path().join(format!("{config}-off")),
            &root,
            size,
        );
        let ker = plan_in(
            config,
            &dir.path().join(format!("{config}-ker")),
            &root,
            size,
        );
        let (so, sk) = (
            dir.path().join(format!("{config}-s-off")),
            dir.path().join(format!("{config}-s-ker")),
        );
        create(&off, &so, &CreateOptions::default(), &mut |_| {}).expect("offline");
        create(&ker, &sk, &kernel(), &mut |_| {}).unwrap_or_else(|e| panic!("{config}: {e}"));
        nothing_left(dir.path(), config);
        for (a, b) in off.disks.iter().zip(&ker.disks) {
            if a.table.is_some() {
                assert_eq!(sfdisk(&a.path), sfdisk(&b.path), "{config} {}", a.name);
            }
        }
        let ids = identities(&off);
        assert_eq!(ids, identities(&ker), "{config}");
        assert!(
            ids.iter()
                .all(|(_, t, _, u)| !t.is_empty() && !u.is_empty()),
            "{config}: {ids:?}"
        );
        for s in [&so, &sk] {
            cleanup(s).expect("cleanup");
        }
        // Each build wrote the tree's etc/fstab; the next starts without it.
        let _ = fs::remove_file(root.join("etc/fstab"));
    }
}

/// With a hook, the filesystems are mounted in mount order in a private namespace: the hook
/// sees the tree and writes into it; the host never sees the mount; after `create`, the file
/// is in the image and nothing is mounted or attached.
#[test]
#[ignore = "needs root"]
fn mounted_hook_runs_in_a_private_namespace() {
    require_root();
    let dir = diskforge_testutil::scratch_dir();
    let root = tree(dir.path());
    let plan = plan_in("mbr-single-root", dir.path(), &root, 64 << 20);
    let state = dir.path().join("state");
    let seen = Arc::new(std::sync::Mutex::new(String::new()));
    let seen2 = seen.clone();
    let hook = MountedHook(Arc::new(move |mnt: &Path| {
        let host = fs::read_to_string(mnt.join("etc/hostname")).map_err(|e| e.to_string())?;
        let mine = fs::read_to_string("/proc/thread-self/mountinfo").map_err(|e| e.to_string())?;
        let host_view = fs::read_to_string("/proc/1/mountinfo").map_err(|e| e.to_string())?;
        let m = mnt.display().to_string();
        *seen2.lock().map_err(|e| e.to_string())? = format!(
            "{host}|{}|{}",
            mine.contains(&format!(" {m} ")),
            host_view.contains(&format!(" {m} "))
        );
        fs::write(mnt.join("etc/written-by-hook"), "hello\n").map_err(|e| e.to_string())
    }));
    let o = CreateOptions {
        mounted: Some(hook),
        ..Default::default()
    };
    let st = create(&plan, &state, &o, &mut |_| {}).expect("create");
    assert_eq!(*seen.lock().expect("lock"), "diskforge\n|true|false");
    assert!(st.mount_root.is_none() && !state.join("mnt").exists());
    nothing_left(dir.path(), "after create");
    let f = &plan.filesystems[0];
    let Device::Region { image, offset, .. } = &f.device else {
        panic!()
    };
    let out = Cmd::new("debugfs")
        .args(["-R", "cat /etc/written-by-hook"])
        .arg(format!("{}?offset={offset}", image.display()))
        .read()
        .expect("debugfs");
    assert_eq!(out, "hello");
    cleanup(&state).expect("cleanup");
}

fn assert_unwound(plan: &Plan, state: &Path, dir: &Path, n: usize) {
    nothing_left(dir, &format!("step {n}"));
    let st = read_state(state).expect("state");
    assert_eq!(st.failed.as_ref().map(|f| f.0), Some(n));
    assert!(
        st.images.is_empty() && st.scratch.is_empty(),
        "step {n}: {st:?}"
    );
    for d in &plan.disks {
        assert!(
            !d.path.exists(),
            "step {n}: {} left behind",
            d.path.display()
        );
    }
    let left: Vec<_> = fs::read_dir(state)
        .expect("state")
        .map(|e| e.expect("entry").file_name())
        .filter(|f| f != STATE_FILE && f != "fstab.orig")
        .collect();
    assert!(left.is_empty(), "step {n}: {left:?}");
    cleanup(state).expect("cleanup");
    cleanup(state).expect("cleanup again");
    assert!(!state.exists());
}

/// Fail every step of the GPT+ESP+root plan on the kernel route, and the mount phase of a
/// single-root plan: nothing attached or mounted, no stray files, cleanup idempotent.
#[test]
#[ignore = "needs root"]
fn kernel_fault_injection_at_every_step() {
    require_root();
    let dir = diskforge_testutil::scratch_dir();
    let root = tree(dir.path());
    let plan = plan_in("gpt-bios-esp-root", dir.path(), &root, 256 << 20);
    for n in 0..plan.steps.len() {
        let state = dir.path().join(format!("state-{n}"));
        let o = CreateOptions {
            fail_at: Some(n),
            ..kernel()
        };
        match create(&plan, &state, &o, &mut |_| {}) {
            Err(Error::Injected { step, .. }) => assert_eq!(step, n),
            other => panic!("step {n}: {other:?}"),
        }
        assert_unwound(&plan, &state, dir.path(), n);
    }
    let single = plan_in(
        "mbr-single-root",
        &dir.path().join("single"),
        &root,
        64 << 20,
    );
    let n = single.steps.len();
    let state = dir.path().join("state-mount");
    let o = CreateOptions {
        fail_at: Some(n),
        mounted: Some(MountedHook(Arc::new(|_: &Path| Ok(())))),
        ..Default::default()
    };
    match create(&single, &state, &o, &mut |_| {}) {
        Err(Error::Injected { step, .. }) => assert_eq!(step, n),
        other => panic!("mount phase: {other:?}"),
    }
    assert_unwound(&single, &state, dir.path(), n);
}

/// The child half of `sigkill_at_every_step`: builds with `kill_at` from the environment.
#[test]
#[ignore = "needs root"]
fn sigkill_child() {
    let (Ok(n), Ok(dir), Ok(config)) = (
        std::env::var("BLOCKDEV_KILL_AT"),
        std::env::var("BLOCKDEV_KILL_DIR"),
        std::env::var("BLOCKDEV_KILL_CONFIG"),
    ) else {
        return; // only meaningful when the parent runs it
    };
    let dir = PathBuf::from(dir);
    let root = dir.join("root");
    let plan = plan_in(&config, &dir, &root, 256 << 20);
    let n: usize = n.parse().expect("n");
    let o = CreateOptions {
        kill_at: Some(n),
        mounted: (n == plan.steps.len()).then(|| MountedHook(Arc::new(|_: &Path| Ok(())))),
        ..kernel()
    };
    let _ = create(&plan, &dir.join("state"), &o, &mut |_| {});
    panic!("not killed at step {n}");
}

/// SIGKILL before every step (and inside the mount phase): nothing of ours stays mounted or
/// attached even before `cleanup`; `delete` then removes the files the state records.
#[test]
#[ignore = "needs root"]
fn sigkill_at_every_step() {
    require_root();
    let dir = diskforge_testutil::scratch_dir();
    let exe = std::env::current_exe().expect("exe");
    for (config, steps) in [("gpt-bios-esp-root", false), ("mbr-single-root", true)] {
        let root = dir.path().join("root");
        let plan = plan_in(config, dir.path(), &root, 256 << 20);
        let ns: Vec<usize> = if steps {
            vec![plan.steps.len()]
        } else {
            (0..plan.steps.len()).collect()
        };
        for n in ns {
            tree(dir.path());
            let out = Cmd::new(&exe)
                .args([
                    "--exact",
                    "sigkill_child",
                    "--include-ignored",
                    "--nocapture",
                ])
                .env("BLOCKDEV_KILL_AT", n.to_string())
                .env("BLOCKDEV_KILL_DIR", dir.path())
                .env("BLOCKDEV_KILL_CONFIG", config)
                .run();
            let e = out.expect_err("the child must die");
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(
                e.exit_status().and_then(|s| s.signal()),
                Some(9),
                "{config} step {n}: {e:#}"
            );
            nothing_left(dir.path(), &format!("{config}: SIGKILL at step {n}"));
            let state = dir.path().join("state");
            assert_eq!(
                read_state(&state).expect("state").done,
                n.min(plan.steps.len())
            );
            delete(&state).expect("delete");
            delete(&state).expect("delete again");
            for d in &plan.disks {
                assert!(!d.path.exists(), "{config} step {n}: image left");
            }
            assert!(!state.exists());
            fs::remove_dir_all(&root).expect("rm root");
        }
    }
}
