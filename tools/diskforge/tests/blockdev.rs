//! `diskforge blockdev` through the real binary: the plan as text (snapshot) and JSON, every
//! problem of a bad config on stderr with exit 1, `DIB_BLOCK_DEVICE_CONFIG` as a path, a
//! `file://` URL or inline YAML, `create` → `getval --state` → `cleanup` (twice), `--dry-run`
//! writing nothing, LVM refused on this host with the node named and nothing written, dib's
//! `init` → `create` → `writefstab` → `umount` → `cleanup`, and (root) `create --kernel --run`.

use std::path::{Path, PathBuf};

use diskforge_cmd::Cmd;

const BIN: &str = env!("CARGO_BIN_EXE_diskforge");

fn config(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../crates/blockdev/examples/configs")
        .join(format!("{name}.yaml"))
}

fn bd(args: &[&str]) -> Cmd {
    Cmd::new(BIN).arg("blockdev").args(args)
}

/// Exit code and stderr of a command expected to fail.
fn fails(c: Cmd) -> (Option<i32>, String) {
    match c.run() {
        Ok(_) => panic!("{} succeeded", c.display()),
        Err(e) => (
            e.exit_status().and_then(|s| s.code()),
            e.stderr().unwrap_or_default().to_owned(),
        ),
    }
}

#[test]
fn plan_text_and_json() {
    let cfg = config("gpt-bios-esp-root");
    let cfg = cfg.to_str().expect("utf-8 path");
    let common = [
        "--config",
        cfg,
        "--image-size",
        "1GiB",
        "--image-dir",
        "/images",
        "--uuid-seed",
        "cli",
    ];
    let text = bd(&[&["plan"][..], &common].concat()).read().expect("plan");
    insta::assert_snapshot!(text);
    let json: serde_json::Value = bd(&[&["plan", "--json"][..], &common].concat())
        .json()
        .expect("plan --json");
    assert_eq!(json["route"], "offline");
    assert_eq!(
        json["disks"][0]["table"]["partitions"][2]["start"],
        69206016
    );
}

#[test]
fn bad_config_lists_every_problem() {
    let bad = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../crates/blockdev/tests/bad/size-does-not-parse.yaml");
    let (code, stderr) = fails(bd(&["plan", "--config"]).arg(&bad));
    assert_eq!(code, Some(1));
    // Every line names the config (as given); the checkout's path is not part of the snapshot.
    let stderr = stderr.replace(&bad.display().to_string(), "[CONFIG]");
    insta::assert_snapshot!(stderr);
    let (code, _) = fails(bd(&["plan", "--bogus"]));
    assert_eq!(code, Some(2));
}

#[test]
fn dib_block_device_config_forms() {
    let path = config("efi");
    let inline = std::fs::read_to_string(&path).expect("read");
    let forms = [
        path.display().to_string(),
        format!("file://{}", path.display()),
        inline,
    ];
    for v in forms {
        let out = bd(&["getval", "mount-points", "--image-size", "2GB"])
            .env("DIB_BLOCK_DEVICE_CONFIG", &v)
            .read()
            .expect("getval");
        assert_eq!(out, "/|/boot/efi");
    }
    let out = bd(&[
        "getval",
        "root-label",
        "--config",
        "-",
        "--image-size",
        "2GB",
    ])
    .stdin_bytes(std::fs::read(config("mbr-single-root")).expect("read"))
    .read()
    .expect("getval from stdin");
    assert_eq!(out, "cloudimg-rootfs");
    let out = bd(&[
        "getval",
        "root-fstype",
        "--config",
        "-",
        "--image-size",
        "2GB",
    ])
    .env("FS_TYPE", "xfs")
    .stdin_bytes(std::fs::read(config("mbr-single-root")).expect("read"))
    .read()
    .expect("getval FS_TYPE");
    assert_eq!(out, "xfs");
}

fn sfdisk_parts(image: &Path) -> usize {
    let v: serde_json::Value = Cmd::new("sfdisk")
        .arg("--json")
        .arg(image)
        .json()
        .expect("sfdisk --json");
    v["partitiontable"]["partitions"]
        .as_array()
        .map_or(0, Vec::len)
}

#[test]
fn create_getval_cleanup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("boot/efi")).expect("mkdir");
    std::fs::write(root.join("hello"), "hi\n").expect("write");
    let state = dir.path().join("state");
    let images = dir.path().join("images");
    let cfg = config("gpt-bios-esp-root");
    let args = |extra: &[&str]| {
        let mut c = bd(&["create", "--image-size", "200MiB", "--config"])
            .arg(&cfg)
            .arg("--state")
            .arg(&state)
            .arg("--image-dir")
            .arg(&images)
            .arg("--root")
            .arg(&root);
        for a in extra {
            c = c.arg(a);
        }
        c
    };
    // --dry-run prints the plan and writes nothing.
    let out = args(&["--dry-run"]).read().expect("dry run");
    assert!(out.contains("route: offline"), "{out}");
    assert!(!state.exists() && !images.exists() && !root.join("etc").exists());

    let out: serde_json::Value = args(&["--json"]).json().expect("create --json");
    assert_eq!(out["steps"], 5);
    let image = images.join("image0.raw");
    assert_eq!(sfdisk_parts(&image), 3);
    assert_eq!(
        std::fs::read_to_string(root.join("etc/fstab")).expect("fstab"),
        "LABEL=cloudimg-rootfs / ext4 defaults 0 1\nLABEL=EFI /boot/efi vfat umask=0077 0 2\n"
    );
    let p = bd(&["getval", "image-path", "--state"])
        .arg(&state)
        .read()
        .expect("getval");
    assert_eq!(p, image.display().to_string());
    bd(&["cleanup", "--state"])
        .arg(&state)
        .run()
        .expect("cleanup");
    bd(&["cleanup", "--state"])
        .arg(&state)
        .run()
        .expect("cleanup again");
    assert!(!state.exists() && image.exists());
}

/// dib's sequence: `init` records the plan, `create` builds it from the state alone,
/// `writefstab` writes the fstab into another tree, `getval` answers from the state,
/// `umount` and `cleanup` are idempotent.
#[test]
fn init_create_writefstab_umount_cleanup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let images = dir.path().join("images");
    bd(&["init", "--image-size", "64MiB", "--config"])
        .arg(config("mbr-single-root"))
        .arg("--state")
        .arg(&state)
        .arg("--image-dir")
        .arg(&images)
        .run()
        .expect("init");
    assert!(!images.exists());
    let v = bd(&["getval", "root-fstype", "--state"])
        .arg(&state)
        .read()
        .expect("getval");
    assert_eq!(v, "ext4");
    let out = bd(&["create", "--state"])
        .arg(&state)
        .read()
        .expect("create");
    assert_eq!(out, images.join("image0.raw").display().to_string());
    assert_eq!(sfdisk_parts(&images.join("image0.raw")), 1);
    // A second create on the same state is refused; nothing is touched.
    let (code, stderr) = fails(bd(&["create", "--state"]).arg(&state));
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("exists already") || stderr.contains("has run"),
        "{stderr}"
    );
    let tree = dir.path().join("built");
    let p = bd(&["writefstab", "--state"])
        .arg(&state)
        .arg("--root")
        .arg(&tree)
        .read()
        .expect("writefstab");
    assert_eq!(p, tree.join("etc/fstab").display().to_string());
    assert_eq!(
        std::fs::read_to_string(tree.join("etc/fstab")).expect("fstab"),
        "LABEL=cloudimg-rootfs / ext4 defaults 0 1\n"
    );
    let v = bd(&["getval", "image-block-device", "--state"])
        .arg(&state)
        .read()
        .expect("getval");
    assert_eq!(v, images.join("image0.raw").display().to_string());
    for _ in 0..2 {
        bd(&["umount", "--state"])
            .arg(&state)
            .run()
            .expect("umount");
    }
    for _ in 0..2 {
        bd(&["cleanup", "--state"])
            .arg(&state)
            .run()
            .expect("cleanup");
    }
    assert!(!state.exists() && images.join("image0.raw").exists());
}

/// `create --kernel --run CMD`: the command sees the mounted tree at $TARGET_ROOT; what it
/// writes lands in the image; nothing stays mounted or attached.
#[test]
#[ignore = "needs root"]
fn kernel_route_run_command() {
    diskforge_testutil::require_root();
    let dir = diskforge_testutil::scratch_dir();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("etc")).expect("mkdir");
    std::fs::write(root.join("etc/hostname"), "df\n").expect("write");
    let state = dir.path().join("state");
    let images = dir.path().join("images");
    let nothing_left = || {
        let k = diskforge_testutil::KernelState::capture();
        assert!(k.loops_under(dir.path()).is_empty(), "{k:?}");
        assert!(k.mounts_under(dir.path()).is_empty(), "{k:?}");
    };
    let out: serde_json::Value = bd(&["create", "--kernel", "--json", "--image-size", "64MiB"])
        .arg("--config")
        .arg(config("mbr-single-root"))
        .arg("--state")
        .arg(&state)
        .arg("--image-dir")
        .arg(&images)
        .arg("--root")
        .arg(&root)
        .args([
            "--run",
            "test \"$(cat $TARGET_ROOT/etc/hostname)\" = df && echo ran > $TARGET_ROOT/etc/ran",
        ])
        .json()
        .expect("create --kernel --run");
    assert_eq!(out["route"], "kernel");
    nothing_left();
    let image = images.join("image0.raw");
    let offset = 1 << 20;
    let ran = Cmd::new("debugfs")
        .args(["-R", "cat /etc/ran"])
        .arg(format!("{}?offset={offset}", image.display()))
        .read()
        .expect("debugfs");
    assert_eq!(ran, "ran");
    // A failing command fails the build and removes the image.
    let state2 = dir.path().join("state2");
    let (code, stderr) = fails(
        bd(&["create", "--kernel", "--image-size", "64MiB", "--config"])
            .arg(config("mbr-single-root"))
            .arg("--state")
            .arg(&state2)
            .arg("--image-dir")
            .arg(dir.path().join("images2"))
            .args(["--run", "exit 7"]),
    );
    assert_eq!(code, Some(1));
    assert!(stderr.contains("exit 7"), "{stderr}");
    assert!(!dir.path().join("images2/image0.raw").exists());
    nothing_left();
    for s in [&state, &state2] {
        bd(&["cleanup", "--state"]).arg(s).run().expect("cleanup");
    }
}

/// SIGTERM while `--run` works on the mounted tree: the build stops after the command,
/// unwinds (image removed) and exits 1; nothing stays mounted or attached.
#[test]
#[ignore = "needs root"]
fn sigterm_during_the_kernel_route_unwinds() {
    diskforge_testutil::require_root();
    let dir = diskforge_testutil::scratch_dir();
    let state = dir.path().join("state");
    let images = dir.path().join("images");
    let script = format!(
        "{BIN} blockdev create --kernel --image-size 64MiB --config {} --state {} \
         --image-dir {} --run 'sleep 1' & pid=$!; sleep 0.5; kill -TERM $pid; wait $pid",
        config("mbr-single-root").display(),
        state.display(),
        images.display()
    );
    let (code, stderr) = fails(Cmd::new("sh").args(["-c", &script]));
    assert_eq!(code, Some(143), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(!images.join("image0.raw").exists());
    let k = diskforge_testutil::KernelState::capture();
    assert!(k.loops_under(dir.path()).is_empty(), "{k:?}");
    assert!(k.mounts_under(dir.path()).is_empty(), "{k:?}");
    bd(&["cleanup", "--state"])
        .arg(&state)
        .run()
        .expect("cleanup");
}

#[test]
fn lvm_needs_the_kernel_route() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let (code, stderr) = fails(
        bd(&["create", "--config"])
            .arg(config("lvm-two-pvs"))
            .arg("--state")
            .arg(&state)
            .arg("--image-dir")
            .arg(dir.path()),
    );
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("pv \"pv\" needs device-mapper, which this kernel does not have"),
        "{stderr}"
    );
    assert!(!state.exists() && !dir.path().join("image0.raw").exists());
}

#[test]
fn help_fits_80_columns() {
    for sub in [
        "plan",
        "init",
        "create",
        "getval",
        "writefstab",
        "umount",
        "cleanup",
        "delete",
    ] {
        let help = bd(&[sub, "--help"]).read().expect("help");
        for l in help.lines() {
            assert!(l.chars().count() <= 80, "{sub}: {l:?}");
        }
    }
    let help = bd(&["--help"]).read().expect("help");
    assert!(help.lines().all(|l| l.chars().count() <= 80), "{help}");
}
