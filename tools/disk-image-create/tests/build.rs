//! `disk-image-create` end to end: the embedded default boots under SeaBIOS and OVMF, every
//! output type is accepted by an independent tool, builds are reproducible, failing and hanging
//! scripts are reported and killed, signals unwind, and bad input fails early and cleanly.
//!
//! The binary under test runs through `std::process` (its exit codes, stderr and signals are
//! what is tested), as do the independent checkers whose output is asserted on.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_disk-image-create");

struct Run {
    dir: tempfile::TempDir,
}

impl Run {
    fn new() -> Run {
        Run {
            dir: diskforge_testutil::scratch_dir(),
        }
    }
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    fn work(&self) -> PathBuf {
        let w = self.path("work");
        fs::create_dir_all(&w).unwrap();
        w
    }
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--work-dir").arg(self.work());
        c.args(args);
        c.env_remove("ELEMENTS_PATH")
            .env_remove("DIB_BLOCK_DEVICE_CONFIG")
            .env_remove("SOURCE_DATE_EPOCH");
        c
    }
    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = self.cmd(args);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    }
    /// The build directory is gone after every run, success or failure.
    fn assert_no_build_dir(&self) {
        let left: Vec<_> = fs::read_dir(self.work())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "left in the work dir: {left:?}");
    }
    /// Write an element `name` with `files` (path, text) under `elements/`.
    fn element(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let root = self.path("elements");
        let dir = root.join(name);
        for (p, text) in files {
            let f = dir.join(p);
            fs::create_dir_all(f.parent().unwrap()).unwrap();
            fs::write(&f, text).unwrap();
            if p.contains(".d/") {
                fs::set_permissions(&f, fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        root
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        stderr(o)
    );
}

fn tool(program: &str, args: &[&str]) -> String {
    let o = Command::new(program).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "{program} {args:?}: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// dib's `debian` element name: debian-minimal plus the cloud-image packages, resolved
/// without building.
#[test]
fn the_debian_element_is_debian_minimal_with_cloud_packages() {
    let r = Run::new();
    let o = r.run(
        &[
            "-o",
            r.path("d").to_str().unwrap(),
            "--dry-run",
            "--json",
            "debian",
        ],
        &[("DIB_RELEASE", "bookworm")],
    );
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let els = v["resolved"]["elements"].as_array().unwrap();
    let names: Vec<&str> = els.iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["debian", "debian-minimal", "package-installs"]);
    let pkgs: Vec<&str> = els[0]["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["package"].as_str().unwrap())
        .collect();
    for want in ["openssh-server", "cloud-init", "curl", "netplan.io"] {
        assert!(pkgs.contains(&want), "{want} not in {pkgs:?}");
    }
    r.assert_no_build_dir();
}

/// Real dib elements copied unchanged into tests/fixtures/dib-elements (Apache-2.0, see its
/// NOTICE.md).
fn dib_fixtures() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dib-elements").to_owned()
}

/// dib's own `manifests` element, unchanged: its host-side `extra-data.d` and `cleanup.d`
/// scripts (bash, `sudo`, `DIB_ENV`, `DIB_ARGS`) run, the manifests land in the image (so
/// cleanup.d runs before the filesystem is made, as under dib) and next to it as
/// `NAME.d/dib-manifests`.
#[test]
#[ignore = "needs root"]
fn dib_manifests_element_runs_unchanged() {
    diskforge_testutil::require_root();
    let r = Run::new();
    let out = r.path("img");
    let o = r.run(
        &[
            "-o",
            out.to_str().unwrap(),
            "-t",
            "tar",
            "busybox",
            "manifests",
        ],
        &[
            ("ELEMENTS_PATH", &dib_fixtures()),
            ("DIB_RELEASE", "fixture-release"),
        ],
    );
    ok(&o);
    r.assert_no_build_dir();
    let saved = r.path("img.d/dib-manifests");
    let args = fs::read_to_string(saved.join("dib_arguments")).expect("dib_arguments");
    assert!(args.contains("busybox manifests"), "{args}");
    let env = fs::read_to_string(saved.join("dib_environment")).expect("dib_environment");
    assert!(
        env.contains("declare -x DIB_RELEASE=\"fixture-release\""),
        "{env}"
    );
    let listing = tool("tar", &["-tvf", r.path("img.tar").to_str().unwrap()]);
    let line = listing
        .lines()
        .find(|l| l.ends_with("etc/dib-manifests/dib_arguments"))
        .unwrap_or_else(|| panic!("no manifest in the image:\n{listing}"));
    assert!(line.starts_with("-rw-------"), "{line}");
}

/// `busybox vm block-device-efi` → qcow2, booted to the marker under SeaBIOS and OVMF.
#[test]
fn default_image_boots_under_bios_and_uefi() {
    let r = Run::new();
    let out = r.path("demo");
    let o = r.run(
        &[
            "-o",
            out.to_str().unwrap(),
            "-t",
            "qcow2",
            "--boot-check",
            "--json",
            "busybox",
            "vm",
            "block-device-efi",
        ],
        &[],
    );
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let fws: Vec<&str> = v["boots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["firmware"].as_str().unwrap())
        .collect();
    assert_eq!(fws, ["seabios", "ovmf"], "{v}");
    let qcow2 = r.path("demo.qcow2");
    let info = tool(
        "qemu-img",
        &["info", "--output=json", qcow2.to_str().unwrap()],
    );
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["format"], "qcow2");
    assert_eq!(
        info["format-specific"]["data"]["compression-type"], "zstd",
        "{info}"
    );
    // Compressed qcow2 in 256 KiB clusters (and it booted above under both firmwares).
    assert_eq!(info["cluster-size"], 262144, "{info}");
    tool("qemu-img", &["check", qcow2.to_str().unwrap()]);
    r.assert_no_build_dir();
}

/// `--qemu-img-options` comes after ours, so `cluster_size=64k` restores qcow2's default.
#[test]
fn qemu_img_options_override_the_cluster_size() {
    let r = Run::new();
    let out = r.path("small");
    let o = r.run(
        &[
            "-o",
            out.to_str().unwrap(),
            "-t",
            "raw,qcow2",
            "--qemu-img-options",
            "cluster_size=64k",
            "busybox",
        ],
        &[],
    );
    ok(&o);
    let p = |s: &str| r.path(s).to_str().unwrap().to_owned();
    let info = tool("qemu-img", &["info", "--output=json", &p("small.qcow2")]);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["cluster-size"], 65536, "{info}");
    assert_eq!(
        info["format-specific"]["data"]["compression-type"], "zstd",
        "{info}"
    );
    tool(
        "qemu-img",
        &["compare", "-f", "raw", &p("small.raw"), &p("small.qcow2")],
    );
    r.assert_no_build_dir();
}

/// Every `-t` type from one build, each checked by an independent tool.
#[test]
fn every_output_type_is_accepted_by_its_tool() {
    let r = Run::new();
    let out = r.path("all");
    let o = r.run(
        &[
            "-o",
            out.to_str().unwrap(),
            "-t",
            "raw,qcow2,vhd,vhdx,vmdk,tar,tgz,squashfs,docker,oci",
            "--checksum",
            "busybox",
            "vm",
            "block-device-gpt",
        ],
        &[],
    );
    ok(&o);
    let p = |s: &str| r.path(s).to_str().unwrap().to_owned();
    let v = tool("sgdisk", &["-v", &p("all.raw")]);
    assert!(v.contains("No problems found"), "{v}");
    for (file, fmt) in [
        ("all.qcow2", "qcow2"),
        ("all.vhd", "vpc"),
        ("all.vhdx", "vhdx"),
        ("all.vmdk", "vmdk"),
    ] {
        let info = tool("qemu-img", &["info", "--output=json", &p(file)]);
        let info: serde_json::Value = serde_json::from_str(&info).unwrap();
        assert_eq!(info["format"], fmt, "{file}");
        if fmt != "vpc" {
            tool("qemu-img", &["check", &p(file)]);
        }
        // The converted disk holds the same bytes as the raw image.
        tool(
            "qemu-img",
            &["compare", "-f", "raw", &p("all.raw"), &p(file)],
        );
    }
    for tarball in ["all.tar", "all.tgz", "all.docker.tar"] {
        let list = tool("tar", &["-tf", &p(tarball)]);
        for want in [
            "./bin/busybox",
            "./sbin/init",
            "./etc/fstab",
            "./boot/grub/grub.cfg",
        ] {
            assert!(list.lines().any(|l| l == want), "{tarball} lacks {want}");
        }
    }
    let list = tool("unsquashfs", &["-l", &p("all.squash")]);
    assert!(list.contains("squashfs-root/bin/busybox"), "{list}");
    let unpacked = r.path("oci-unpacked");
    tool(
        "umoci",
        &[
            "unpack",
            "--rootless",
            "--image",
            &format!("{}:latest", p("all.oci")),
            unpacked.to_str().unwrap(),
        ],
    );
    assert!(unpacked.join("rootfs/bin/busybox").is_file());
    // --checksum: md5sum -c and sha256sum -c accept them.
    for f in ["all.qcow2", "all.tar"] {
        for (sum, ext) in [("md5sum", "md5"), ("sha256sum", "sha256")] {
            let o = Command::new(sum)
                .arg("-c")
                .arg(format!("{f}.{ext}"))
                .current_dir(r.dir.path())
                .output()
                .unwrap();
            assert!(o.status.success(), "{sum} -c {f}.{ext}: {}", stderr(&o));
        }
    }
    r.assert_no_build_dir();
}

/// With SOURCE_DATE_EPOCH, two builds give byte-identical tar and raw outputs.
#[test]
fn builds_are_reproducible() {
    let r = Run::new();
    let mut sums = Vec::new();
    for dir in ["a", "b"] {
        fs::create_dir_all(r.path(dir)).unwrap();
        let out = r.path(&format!("{dir}/img"));
        let o = r.run(
            &[
                "-o",
                out.to_str().unwrap(),
                "-t",
                "raw,tar",
                "busybox",
                "vm",
                "block-device-efi",
            ],
            &[("SOURCE_DATE_EPOCH", "1700000000")],
        );
        ok(&o);
        let s = tool(
            "sha256sum",
            &[
                r.path(&format!("{dir}/img.raw")).to_str().unwrap(),
                r.path(&format!("{dir}/img.tar")).to_str().unwrap(),
            ],
        );
        sums.push(
            s.lines()
                .map(|l| l.split_whitespace().next().unwrap().to_owned())
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(sums[0], sums[1]);
}

/// A custom element's scripts see dib's environment; a script that fails names element,
/// phase and script with its last lines, and nothing is left behind.
#[test]
fn failing_script_is_named_and_nothing_is_left() {
    let r = Run::new();
    let elements = r.element(
        "breaks",
        &[
            ("element-deps", "busybox\n"),
            (
                "root.d/50-env",
                "#!/bin/sh\nset -e\necho \"target=$TARGET_ROOT name=$IMAGE_NAME arch=$ARCH\"\ntest -d \"$TARGET_ROOT\"\necho made > \"$TARGET_ROOT/made-by-root.d\"\n",
            ),
            (
                "post-root.d/90-fail",
                "#!/bin/sh\necho first line\necho the last words\nexit 7\n",
            ),
        ],
    );
    let out = r.path("broken");
    let o = r.run(
        &["-o", out.to_str().unwrap(), "-t", "raw", "breaks", "vm"],
        &[("ELEMENTS_PATH", elements.to_str().unwrap())],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    for want in ["breaks", "post-root.d", "90-fail", "the last words"] {
        assert!(e.contains(want), "stderr lacks {want:?}:\n{e}");
    }
    assert!(!r.path("broken.raw").exists());
    r.assert_no_build_dir();
}

/// A script that never ends is killed at `--script-timeout`, with its children.
#[test]
fn hanging_script_is_killed_with_its_children() {
    let r = Run::new();
    let elements = r.element(
        "hangs",
        &[(
            "extra-data.d/10-hang",
            "#!/bin/sh\nsleep 4242 &\nsleep 4243\n",
        )],
    );
    let t = Instant::now();
    let o = r.run(
        &[
            "-t",
            "tar",
            "-o",
            r.path("h").to_str().unwrap(),
            "--script-timeout",
            "2",
            "busybox",
            "hangs",
        ],
        &[("ELEMENTS_PATH", elements.to_str().unwrap())],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    let e = stderr(&o);
    assert!(e.contains("10-hang") && e.contains("hangs"), "{e}");
    std::thread::sleep(Duration::from_millis(300));
    let ps = tool("ps", &["-eo", "args"]);
    assert!(
        !ps.lines().any(|l| l.starts_with("sleep 424")),
        "a script's process survived:\n{ps}"
    );
    r.assert_no_build_dir();
}

/// Bad input fails before anything is built, with the exit code `--help` documents.
#[test]
fn bad_input_fails_early() {
    let r = Run::new();
    let nonexec = r.element("nonexec", &[("install.d/10-x", "#!/bin/sh\ntrue\n")]);
    fs::set_permissions(
        nonexec.join("nonexec/install.d/10-x"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, i32, &'a str);
    let cases: Vec<Case> = vec![
        (vec!["-t", "qcow3", "busybox"], vec![], 2, "qcow3"),
        (vec!["--image-size", "lots", "busybox"], vec![], 2, "lots"),
        (vec!["-a", "sparc", "busybox"], vec![], 2, "sparc"),
        (vec!["no-such-element"], vec![], 3, "no-such-element"),
        (
            vec!["busybox", "nonexec"],
            vec![("ELEMENTS_PATH", nonexec.to_str().unwrap())],
            3,
            "10-x",
        ),
        (
            vec!["busybox", "vm"],
            vec![(
                "DIB_BLOCK_DEVICE_CONFIG",
                "- local_loop:\n    name: image0\n- mkfs:\n    base: nothere\n",
            )],
            3,
            "nothere",
        ),
    ];
    for (args, env, code, needle) in cases {
        let mut a = vec!["-o", "x"];
        a.extend(args.iter().copied());
        let o = r.run(&a, &env);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {e}");
        assert!(e.contains(needle), "{args:?}: stderr lacks {needle:?}: {e}");
        assert!(!e.contains("panicked"), "{e}");
    }
    r.assert_no_build_dir();
}

/// `--dry-run --json` resolves and lists, writing nothing.
#[test]
fn dry_run_writes_nothing() {
    let r = Run::new();
    let out = r.path("dry");
    let o = r.run(
        &[
            "--dry-run",
            "--json",
            "-o",
            out.to_str().unwrap(),
            "busybox",
            "vm",
        ],
        &[],
    );
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let src = v["block_device_source"].as_str().unwrap();
    assert!(
        src.ends_with("block-device-mbr/block-device-default.yaml"),
        "{src}"
    );
    assert!(v["environment"]["TARGET_ROOT"].is_string(), "{v}");
    assert!(!r.path("dry.qcow2").exists());
    r.assert_no_build_dir();
}

/// SIGTERM during a build: exit 143, no output, no build directory.
#[test]
fn sigterm_unwinds() {
    let r = Run::new();
    let elements = r.element("slow", &[("extra-data.d/10-slow", "#!/bin/sh\nsleep 30\n")]);
    let mut c = r.cmd(&[
        "-o",
        r.path("s").to_str().unwrap(),
        "-t",
        "raw",
        "busybox",
        "vm",
        "slow",
    ]);
    c.env("ELEMENTS_PATH", &elements)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = c.spawn().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let t = Instant::now();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(o.status.code(), Some(143), "{}", stderr(&o));
    assert!(!r.path("s.raw").exists());
    r.assert_no_build_dir();
}

/// A script failing in each phase stops the build naming element, phase and script; the
/// host's mount table is the same before and after, and nothing is left in the work dir.
/// In-chroot phases need root (mount and PID namespaces, chroot).
#[test]
#[ignore = "needs root"]
fn a_failing_script_in_every_phase_leaves_nothing() {
    diskforge_testutil::require_root();
    let phases = [
        "root.d",
        "extra-data.d",
        "pre-install.d",
        "install.d",
        "post-install.d",
        "post-root.d",
        "block-device.d",
        "pre-finalise.d",
        "finalise.d",
        "cleanup.d",
    ];
    let mounts = || {
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .map(|l| l.split_whitespace().nth(4).unwrap_or("").to_owned())
            .collect::<Vec<_>>()
    };
    let before = mounts();
    for phase in phases {
        let r = Run::new();
        let script = format!("{phase}/42-fails");
        let elements = r.element(
            "fails",
            &[(
                script.as_str(),
                "#!/bin/sh\necho \"in $0 as $(id -u)\"\necho doomed >&2\nexit 3\n",
            )],
        );
        let o = r.run(
            &[
                "-o",
                r.path("f").to_str().unwrap(),
                "-t",
                "raw",
                "busybox",
                "vm",
                "fails",
            ],
            &[("ELEMENTS_PATH", elements.to_str().unwrap())],
        );
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{phase}: {e}");
        for want in ["fails", phase, "42-fails", "doomed"] {
            assert!(e.contains(want), "{phase}: stderr lacks {want:?}:\n{e}");
        }
        assert!(!r.path("f.raw").exists(), "{phase}");
        r.assert_no_build_dir();
        assert_eq!(mounts(), before, "{phase}: the mount table changed");
    }
}

/// `debian-minimal vm` from the host's own Debian mirror: built, booted to the marker under
/// SeaBIOS and OVMF (a one-shot systemd unit prints it); the second build takes the
/// debootstrapped base from the layer cache instead of running debootstrap again; a third
/// (a tar, from the same cached base) adds an element whose `package-installs.yaml`
/// installs (per phase) and removes packages; a fourth starts from the second's qcow2
/// (`DIB_LOCAL_IMAGE`, GPT with an ESP) into an MBR layout plus an element whose change shows
/// on the serial console at boot.
#[test]
#[ignore = "needs root"]
fn debian_minimal_vm_boots_and_the_base_is_cached() {
    diskforge_testutil::require_root();
    let r = Run::new();
    let cache = r.path("cache");
    let build = |name: &str, boot: bool| {
        let out = r.path(name);
        let mut args = vec!["-o", out.to_str().unwrap(), "-t", "qcow2", "--json"];
        if boot {
            args.extend(["--boot-check", "--boot-timeout", "400"]);
        }
        args.extend(["--image-cache", cache.to_str().unwrap()]);
        args.extend(["debian-minimal", "vm", "block-device-efi"]);
        let o = r.run(&args, &[]);
        ok(&o);
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let step = |v: &serde_json::Value, name: &str| {
        v["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["step"] == name)
            .map(|s| s["millis"].as_u64().unwrap())
            .unwrap_or_else(|| panic!("no step {name}: {v}"))
    };
    let cold = build("cold", true);
    let fws: Vec<&str> = cold["boots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["firmware"].as_str().unwrap())
        .collect();
    assert_eq!(fws, ["seabios", "ovmf"], "{cold}");
    let warm = build("warm", false);
    let (c, w) = (
        step(&cold, "debian-minimal base"),
        step(&warm, "debian-minimal base"),
    );
    assert!(w * 10 < c, "the warm base took {w} ms, the cold one {c} ms");
    // The image holds Debian with its kernel, initramfs and the apt lists cleaned.
    let elements = r.element(
        "withless",
        &[
            (
                "package-installs.yaml",
                "less:\nfile:\n  phase: post-install.d\nnano:\n  build-only: true\nnot-on-x86:\n  arch: arm64\n",
            ),
            // read by dib's own `modprobe` element (a fixture, unchanged)
            ("modprobe.d/diskforge-test.conf", "options loop max_loop=8\n"),
        ],
    );
    let path = format!("{}:{}", elements.display(), dib_fixtures());
    let o = r.run(
        &[
            "-o",
            r.path("pk").to_str().unwrap(),
            "-t",
            "tar",
            "--image-cache",
            cache.to_str().unwrap(),
            "debian-minimal",
            // `vm` only for its package set: the base cached above serves (a tar build
            // makes no disk, so no bootloader), one bootstrap per test run.
            "vm",
            "withless",
            "modprobe",
        ],
        &[
            ("ELEMENTS_PATH", &path),
            ("DIB_MODPROBE_BLACKLIST", "floppy pcspkr"),
        ],
    );
    ok(&o);
    let pk = r.path("pk.tar");
    let list = tool("tar", &["-tf", pk.to_str().unwrap()]);
    // dib's `modprobe`: the host-side script copied the element's conf, the in-chroot one
    // wrote the blacklist.
    assert!(
        list.lines()
            .any(|l| l == "./etc/modprobe.d/diskforge-test.conf"),
        "{list}"
    );
    let blacklist = tool(
        "tar",
        &[
            "-xOf",
            pk.to_str().unwrap(),
            "./etc/modprobe.d/blacklist.conf",
        ],
    );
    assert_eq!(blacklist, "blacklist floppy\nblacklist pcspkr\n");
    // Build-time settings are gone; the shared apt cache kept what package-installs fetched.
    assert!(
        !list
            .lines()
            .any(|l| l.ends_with("dpkg.cfg.d/diskforge-unsafe-io")),
        "dpkg's unsafe-io left in the image"
    );
    let debs: Vec<String> = fs::read_dir(cache.join("apt/debian"))
        .expect("the shared apt cache")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        debs.iter()
            .any(|d| d.starts_with("less_") && d.ends_with(".deb")),
        "{debs:?}"
    );
    for (path, want) in [
        ("./usr/bin/less", true),
        ("./usr/bin/file", true),
        ("./usr/bin/nano", false),
    ] {
        assert_eq!(list.lines().any(|l| l == path), want, "{path}");
    }
    assert!(
        !list
            .lines()
            .any(|l| l.starts_with("./var/lib/apt/lists/") && l.len() > 20),
        "apt lists left in the image"
    );
    // DIB_LOCAL_IMAGE: the warm image's tree (read without mounting) + one more element.
    let change = r.element(
        "change",
        &[(
            "install.d/50-change",
            "#!/bin/sh\nset -e\nu=/etc/systemd/system/local-change.service\nprintf '[Unit]\\nAfter=multi-user.target\\n[Service]\\nType=oneshot\\nStandardOutput=tty\\nTTYPath=/dev/ttyS0\\nExecStart=/bin/echo local-image-change-seen\\n[Install]\\nWantedBy=multi-user.target\\n' > $u\nln -s ../local-change.service /etc/systemd/system/multi-user.target.wants/\n",
        )],
    );
    let o = r.run(
        &[
            "-o",
            r.path("local").to_str().unwrap(),
            "-t",
            "qcow2",
            "--json",
            "--boot-check",
            "--boot-timeout",
            "400",
            "--boot-marker",
            "local-image-change-seen",
            "debian-minimal",
            "vm",
            // MBR: one boot (SeaBIOS) shows the change; both firmwares were booted above.
            "block-device-mbr",
            "change",
        ],
        &[
            ("ELEMENTS_PATH", change.to_str().unwrap()),
            ("DIB_LOCAL_IMAGE", r.path("warm.qcow2").to_str().unwrap()),
        ],
    );
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["boots"].as_array().map(Vec::len), Some(1), "{v}");
    let raw = r.path("warm.raw");
    tool(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            r.path("warm.qcow2").to_str().unwrap(),
            raw.to_str().unwrap(),
        ],
    );
    let v = tool("sgdisk", &["-v", raw.to_str().unwrap()]);
    assert!(v.contains("No problems found"), "{v}");
    r.assert_no_build_dir();
}

/// `busybox ramdisk`: NAME.kernel + NAME.initramfs (no disk), booted directly to the marker.
#[test]
fn busybox_ramdisk_boots_without_a_disk() {
    let r = Run::new();
    let out = r.path("rd");
    let o = r.run(
        &[
            "-o",
            out.to_str().unwrap(),
            "--boot-check",
            "--json",
            "busybox",
            "ramdisk",
        ],
        &[],
    );
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["boots"][0]["firmware"], "direct kernel (ramdisk)", "{v}");
    assert!(
        !r.path("rd.qcow2").exists(),
        "a ramdisk build writes no disk"
    );
    let listing = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "gzip -dc {} | cpio -it --quiet",
            r.path("rd.initramfs").display()
        ))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    for want in ["init", "sbin/init", "bin/busybox"] {
        assert!(listing.lines().any(|l| l == want), "initramfs lacks {want}");
    }
    // The x86 boot protocol's setup header magic: a bzImage.
    let kernel = fs::read(r.path("rd.kernel")).unwrap();
    assert_eq!(&kernel[0x202..0x206], b"HdrS");
    r.assert_no_build_dir();
}

/// Without `vm` or any layout, a disk output gets dib's fallback: one whole-disk root
/// filesystem, no partition table.
#[test]
fn no_layout_gives_dibs_whole_disk_fallback() {
    let r = Run::new();
    let out = r.path("whole");
    let o = r.run(
        &[
            "-o",
            out.to_str().unwrap(),
            "-t",
            "raw",
            "--json",
            "busybox",
        ],
        &[],
    );
    ok(&o);
    let raw = r.path("whole.raw");
    let ty = tool(
        "blkid",
        &["-p", "-o", "value", "-s", "TYPE", raw.to_str().unwrap()],
    );
    assert_eq!(ty.trim(), "ext4");
    let pt = Command::new("blkid")
        .args(["-p", "-o", "value", "-s", "PTTYPE", raw.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&pt.stdout).trim().is_empty(),
        "a partition table"
    );
    tool("e2fsck", &["-fn", raw.to_str().unwrap()]);
    r.assert_no_build_dir();
}
