//! Running phases for real: host phases (any user), in-chroot phases in a busybox-static
//! chroot (root), failures, timeouts, cancel and `kill -9` of the runner.

#![allow(clippy::unwrap_used)] // test setup failures should panic at once

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use diskforge_elements::{
    Error, Phase, Resolved, RunContext, ScriptEvent, environment, prepare_hooks, resolve,
    run_phase, shipped_elements,
};

struct Build {
    _dir: tempfile::TempDir,
    root: PathBuf,
    resolved: Resolved,
    ctx: RunContext,
}

/// Elements under DIR/elements (plus `os`), resolved for `requested`, hooks prepared, an
/// empty target at DIR/target.
fn build(files: &[(&str, &str, bool)], requested: &[&str]) -> Build {
    let dir = tmp();
    let root = real(dir.path());
    let els = root.join("elements");
    os_element(&els);
    write(&els, files);
    let mut req = names(requested);
    req.push("os".into());
    let resolved = resolve(&req, &opts(&[&els], &[])).unwrap();
    let target = root.join("target");
    std::fs::create_dir_all(&target).unwrap();
    let ctx = RunContext {
        target_root: target,
        hooks_dir: root.join("build/hooks"),
        build_dir: root.join("build"),
        env: BTreeMap::from([("IMAGE_NAME".into(), "test-image".into())]),
        script_timeout: Duration::from_secs(60),
        trace: false,
        cancel: None,
    };
    prepare_hooks(&resolved, &ctx.hooks_dir).unwrap();
    Build {
        _dir: dir,
        root,
        resolved,
        ctx,
    }
}

fn run(
    b: &Build,
    phase: Phase,
) -> (
    Result<diskforge_elements::PhaseReport, Error>,
    Vec<ScriptEvent>,
) {
    let mut events = Vec::new();
    let r = run_phase(&b.resolved, phase, &b.ctx, &mut |e| events.push(e));
    (r, events)
}

#[test]
fn host_phase_sees_dib_environment_and_sourced_env_files() {
    let b = build(
        &[
            (
                "a/environment.d/10-a.bash",
                "export FROM_ENV_D=a\nNOT_EXPORTED=x\n",
                false,
            ),
            (
                "b/environment.d/20-b",
                "export FROM_ENV_D=\"$FROM_ENV_D+b\"\n",
                false,
            ),
            (
                "a/root.d/10-env",
                "#!/bin/bash\nset -eu\n\
                 echo \"target=$TARGET_ROOT mount=$TMP_MOUNT_PATH\"\n\
                 echo \"hooks=$TMP_HOOKS_PATH build=$TMP_BUILD_DIR\"\n\
                 echo \"elements=$IMAGE_ELEMENT name=$IMAGE_NAME\"\n\
                 echo \"envd=$FROM_ENV_D unexported=${NOT_EXPORTED:-unset}\"\n\
                 echo \"lib=$_LIB/die $(test -f $_LIB/die && echo ok)\"\n\
                 echo \"cwd=$(pwd) self=$0\"\n\
                 echo \":$PATH:\" | grep -q :/usr/sbin: && echo \":$PATH:\" | grep -q :/sbin: && echo sbin-on-path\n\
                 echo to-stderr >&2\n\
                 eval declare -A els=($(get_image_element_array)); echo \"array=${els[b]}\"\n\
                 touch \"$TARGET_ROOT/made-by-root.d\"\n",
                true,
            ),
            ("b/root.d/05-first", "#!/bin/sh\necho first\n", true),
        ],
        &["a", "b"],
    );
    let (r, events) = run(&b, Phase::Root);
    let report = r.unwrap();
    assert_eq!(
        report
            .scripts
            .iter()
            .map(|s| format!("{}/{}", s.element, s.script))
            .collect::<Vec<_>>(),
        ["b/05-first", "a/10-env"]
    );
    let lines: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            ScriptEvent::Output { line } => Some(
                redact(line, &b.root)
                    .replace(
                        &std::env::current_dir().unwrap().display().to_string(),
                        "[CWD]",
                    )
                    .replace(&std::env::var("PATH").unwrap(), "[PATH]"),
            ),
            _ => None,
        })
        .collect();
    insta::assert_snapshot!(lines.join("\n"), @r"
    first
    target=[ROOT]/target mount=[ROOT]/target
    hooks=[ROOT]/build/hooks build=[ROOT]/build
    elements=a b os name=test-image
    envd=a+b unexported=unset
    lib=[ROOT]/build/hooks/_lib/die ok
    cwd=[CWD] self=[ROOT]/build/hooks/root.d/10-env
    sbin-on-path
    to-stderr
    array=[ROOT]/elements/b
    ");
    assert!(
        matches!(&events[0], ScriptEvent::Start { element, phase: Phase::Root, script } if element == "b" && script == "05-first")
    );
    assert!(
        matches!(events.last().unwrap(), ScriptEvent::Done { script, .. } if script == "10-env")
    );
    assert!(b.ctx.target_root.join("made-by-root.d").exists());
    // What environment() reports is what the script saw.
    let env = environment(&b.resolved, &b.ctx);
    assert_eq!(env["IMAGE_ELEMENT"], "a b os");
    assert_eq!(env["TARGET_ROOT"], b.ctx.target_root.display().to_string());
}

#[test]
fn failing_script_names_element_phase_script_status_and_last_lines() {
    let b = build(
        &[
            ("el/post-root.d/10-ok", "#!/bin/sh\necho fine\n", true),
            (
                "el/post-root.d/20-fail",
                "#!/bin/sh\nfor i in $(seq 1 30); do echo line $i; done\necho boom >&2\nexit 3\n",
                true,
            ),
            (
                "el/post-root.d/30-never",
                "#!/bin/sh\ntouch \"$TARGET_ROOT/ran\"\n",
                true,
            ),
        ],
        &["el"],
    );
    let (r, _) = run(&b, Phase::PostRoot);
    let err = r.unwrap_err();
    match &err {
        Error::ScriptFailed {
            element,
            phase,
            script,
            status,
            last_lines,
        } => {
            assert_eq!(
                (element.as_str(), *phase, script.as_str()),
                ("el", Phase::PostRoot, "20-fail")
            );
            assert_eq!(status, "exit status 3");
            assert_eq!(last_lines.len(), 20);
            assert_eq!(last_lines.first().unwrap(), "line 12");
            assert_eq!(last_lines.last().unwrap(), "boom");
        }
        other => panic!("unexpected {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.starts_with(
            "el/post-root.d/20-fail failed (exit status 3); last 20 lines:\n    line 12\n"
        ),
        "{msg}"
    );
    assert!(
        !b.ctx.target_root.join("ran").exists(),
        "the build stops at the failure"
    );
}

#[test]
fn failing_environment_file_fails_the_phase_before_any_script() {
    let b = build(
        &[
            (
                "el/environment.d/10-gate",
                "echo 'not on this arch' >&2\nexit 1\n",
                false,
            ),
            (
                "el/cleanup.d/10-x",
                "#!/bin/sh\ntouch \"$TARGET_ROOT/ran\"\n",
                true,
            ),
        ],
        &["el"],
    );
    let (r, events) = run(&b, Phase::Cleanup);
    let err = r.unwrap_err();
    assert!(
        matches!(&err, Error::PhaseSetupFailed { phase: Phase::Cleanup, last_lines, env_file, .. }
            if last_lines == &["not on this arch"] && env_file.as_deref() == Some("10-gate")),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "cleanup.d: setting up the scripts (sourcing environment.d/10-gate) failed (exit status \
         1); last 1 line:\n    not on this arch"
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, ScriptEvent::Start { .. }))
    );
    assert!(!b.ctx.target_root.join("ran").exists());
}

#[test]
fn environment_is_sourced_once_per_phase_and_background_work_lives_until_its_end() {
    let b = build(
        &[
            (
                "el/environment.d/10-count",
                "echo sourced >> \"$TARGET_ROOT/count\"\n",
                false,
            ),
            (
                "el/root.d/10-start-bg",
                "#!/bin/sh\nsleep 987691 &\necho $! > \"$TARGET_ROOT/bg\"\nprintf 'no newline'\n",
                true,
            ),
            (
                "el/root.d/20-check-bg",
                "#!/bin/sh\nkill -0 \"$(cat \"$TARGET_ROOT/bg\")\" && echo bg alive\nsleep 0.3\n",
                true,
            ),
            ("el/root.d/30-last", "#!/bin/sh\necho last\n", true),
        ],
        &["el"],
    );
    let (r, events) = run(&b, Phase::Root);
    let report = r.unwrap();
    assert_eq!(
        std::fs::read_to_string(b.ctx.target_root.join("count")).unwrap(),
        "sourced\n"
    );
    let seq: Vec<String> = events
        .iter()
        .map(|e| match e {
            ScriptEvent::Start { script, .. } => format!("start {script}"),
            ScriptEvent::Output { line } => line.clone(),
            ScriptEvent::Done { script, .. } => format!("done {script}"),
        })
        .collect();
    assert_eq!(
        seq,
        [
            "start 10-start-bg",
            "no newline",
            "done 10-start-bg",
            "start 20-check-bg",
            "bg alive",
            "done 20-check-bg",
            "start 30-last",
            "last",
            "done 30-last",
        ]
    );
    assert!(report.scripts[1].elapsed >= Duration::from_millis(300));
    assert!(report.scripts[2].elapsed < Duration::from_millis(300));
    assert_eq!(wait_no_process("sleep 987691"), Vec::<u32>::new());
}

#[test]
fn timeout_kills_the_script_and_its_children() {
    let mut b = build(
        &[(
            "el/extra-data.d/10-hang",
            "#!/bin/bash\necho started\nsleep 987651 &\nsleep 987652\n",
            true,
        )],
        &["el"],
    );
    b.ctx.script_timeout = Duration::from_millis(1500);
    let t0 = Instant::now();
    let err = run(&b, Phase::ExtraData).0.unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    match &err {
        Error::ScriptTimedOut {
            element,
            script,
            timeout,
            last_lines,
            ..
        } => {
            assert_eq!((element.as_str(), script.as_str()), ("el", "10-hang"));
            assert_eq!(*timeout, Duration::from_millis(1500));
            assert_eq!(last_lines, &["started"]);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        err.to_string()
            .contains("el/extra-data.d/10-hang timed out after 1.5s"),
        "{err}"
    );
    // Gone by the time run_phase returned: no waiting here.
    assert_eq!(processes_with("sleep 987651"), Vec::<u32>::new());
    assert_eq!(processes_with("sleep 987652"), Vec::<u32>::new());
}

#[test]
fn cancel_kills_the_running_script() {
    let mut b = build(
        &[
            (
                "el/block-device.d/10-hang",
                "#!/bin/sh\nsleep 987653 &\nsleep 987654\n",
                true,
            ),
            (
                "el/block-device.d/20-never",
                "#!/bin/sh\ntouch \"$TARGET_ROOT/ran\"\n",
                true,
            ),
        ],
        &["el"],
    );
    let flag = Arc::new(AtomicBool::new(false));
    b.ctx.cancel = Some(flag.clone());
    let raiser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        flag.store(true, Ordering::SeqCst);
    });
    let err = run(&b, Phase::BlockDevice).0.unwrap_err();
    raiser.join().unwrap();
    assert_eq!(
        err.to_string(),
        "cancelled during el/block-device.d/10-hang"
    );
    assert!(!b.ctx.target_root.join("ran").exists());
    assert_eq!(processes_with("sleep 987653"), Vec::<u32>::new());
    assert_eq!(processes_with("sleep 987654"), Vec::<u32>::new());
    // Raised before the phase: nothing starts.
    let (r, events) = run(&b, Phase::BlockDevice);
    assert_eq!(r.unwrap_err().to_string(), "cancelled");
    assert!(events.is_empty());
}

#[test]
fn trace_sets_debug_trace() {
    let mut b = build(
        &[(
            "el/pre-finalise.d/10-x",
            "#!/bin/sh\necho \"trace=$DIB_DEBUG_TRACE\"\n",
            true,
        )],
        &["el"],
    );
    b.ctx.trace = true;
    let (r, events) = run(&b, Phase::PreFinalise);
    r.unwrap();
    assert!(events.contains(&ScriptEvent::Output {
        line: "trace=1".into()
    }));
}

#[test]
fn missing_hooks_are_reported() {
    let b = build(&[("el/root.d/10-x", "#!/bin/sh\n", true)], &["el"]);
    std::fs::remove_file(b.ctx.hooks_dir.join("root.d/10-x")).unwrap();
    let err = run(&b, Phase::Root).0.unwrap_err();
    assert!(matches!(err, Error::HookMissing { .. }), "{err:?}");
}

// ---------------------------------------------------------------------------------------
// In-chroot phases (root): a busybox-static chroot.

/// Put the host's busybox-static into `target` with the applets the scripts use.
fn busybox_root(target: &Path) {
    let bin = target.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox-static installed");
    std::fs::copy(busybox, bin.join("busybox")).unwrap();
    for applet in [
        "sh", "cat", "echo", "ls", "touch", "test", "grep", "sleep", "mkdir", "stat", "seq",
    ] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
}

#[test]
#[ignore = "needs root"]
fn chroot_phase_has_binds_inside_and_none_outside() {
    diskforge_testutil::require_root();
    let b = build(
        &[
            ("el/environment.d/10-e", "export IN_CHROOT_ENV=yes\n", false),
            (
                "el/install.d/10-check",
                "#!/bin/sh\nset -eu\n\
                 test $$ -lt 100 && echo \"own pid namespace\"\n\
                 echo \"env=$IN_CHROOT_ENV home=$HOME target_root=${TARGET_ROOT:-unset}\"\n\
                 test -e /proc/self/mountinfo && echo proc-ok\n\
                 test -d /sys/kernel && echo sys-ok\n\
                 test -c /dev/null && echo dev-ok\n\
                 test -d /dev/pts && grep -q ' /dev/pts ' /proc/self/mountinfo && echo pts-ok\n\
                 test -x /tmp/in_target.d/install.d/10-check && echo hooks-ok\n\
                 if touch /tmp/in_target.d/x 2>/dev/null; then echo hooks-writable; else echo hooks-ro; fi\n\
                 touch /ready\n\
                 while ! test -e /go; do sleep 0.05; done\n\
                 echo done > /result\n",
                true,
            ),
        ],
        &["el"],
    );
    busybox_root(&b.ctx.target_root);
    let target = b.ctx.target_root.clone();
    let before = diskforge_testutil::KernelState::capture();
    let mut lines = Vec::new();
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            let mut events = Vec::new();
            let r = run_phase(&b.resolved, Phase::Install, &b.ctx, &mut |e| events.push(e));
            (r, events)
        });
        let until = Instant::now() + Duration::from_secs(30);
        while !target.join("ready").exists() {
            assert!(Instant::now() < until, "script never got ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        // While the script runs inside, the host sees none of its mounts.
        assert_eq!(host_mounts_under(&target), Vec::<String>::new());
        std::fs::write(target.join("go"), "").unwrap();
        let (r, events) = h.join().unwrap();
        r.unwrap();
        for e in events {
            if let ScriptEvent::Output { line } = e {
                lines.push(line);
            }
        }
    });
    assert_eq!(
        lines,
        [
            "own pid namespace",
            "env=yes home=/root target_root=unset",
            "proc-ok",
            "sys-ok",
            "dev-ok",
            "pts-ok",
            "hooks-ok",
            "hooks-ro",
        ]
    );
    assert_eq!(
        std::fs::read_to_string(target.join("result")).unwrap(),
        "done\n"
    );
    // Afterwards: nothing mounted, the hooks mount point removed, /proc an empty dir.
    assert_eq!(host_mounts_under(&target), Vec::<String>::new());
    assert!(!target.join("tmp/in_target.d").exists());
    assert_eq!(std::fs::read_dir(target.join("proc")).unwrap().count(), 0);
    before.assert_nothing_new();
}

#[test]
#[ignore = "needs root"]
fn chroot_failure_and_timeout_leave_nothing_behind() {
    diskforge_testutil::require_root();
    let mut b = build(
        &[
            (
                "el/finalise.d/10-fail",
                "#!/bin/sh\necho inside\nexit 7\n",
                true,
            ),
            (
                "hang/post-install.d/10-hang",
                "#!/bin/sh\nsleep 987655 &\nsleep 987656\n",
                true,
            ),
        ],
        &["el", "hang"],
    );
    busybox_root(&b.ctx.target_root);
    let err = run(&b, Phase::Finalise).0.unwrap_err();
    assert_eq!(
        err.to_string(),
        "el/finalise.d/10-fail failed (exit status 7); last 1 line:\n    inside"
    );
    b.ctx.script_timeout = Duration::from_secs(1);
    let err = run(&b, Phase::PostInstall).0.unwrap_err();
    assert!(matches!(err, Error::ScriptTimedOut { .. }), "{err:?}");
    assert_eq!(processes_with("sleep 987655"), Vec::<u32>::new());
    assert_eq!(processes_with("sleep 987656"), Vec::<u32>::new());
    assert_eq!(host_mounts_under(&b.ctx.target_root), Vec::<String>::new());
    assert!(!b.ctx.target_root.join("tmp/in_target.d").exists());
}

/// The `run_phase` example binary (built by `cargo test` with the other examples).
fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("examples/run_phase");
    assert!(
        p.exists(),
        "{} missing: run through `cargo test` so examples are built",
        p.display()
    );
    p
}

/// `kill -9` of the runner while a script (and a background child) runs leaves no process
/// and no mount.
fn kill9_leaves_nothing(phase: Phase, marker: &str, as_nobody: bool) {
    let b = build(
        &[(
            &format!("el/{}/10-hang", phase.dir()),
            &format!(
                "#!/bin/sh\necho \"uid=$(id -u)\"\nsleep {marker}1 &\necho ready\nsleep {marker}2\n"
            ),
            true,
        )],
        &["el"],
    );
    if phase.in_chroot() {
        busybox_root(&b.ctx.target_root);
    }
    let els = b.root.join("elements");
    let mut cmd = diskforge_cmd::Cmd::new(example_binary());
    if as_nobody {
        // The runner as an unprivileged user: its scripts go into a user + PID namespace.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&b.root, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Hooks are prepared again by the runner, as nobody.
        std::fs::remove_dir_all(&b.ctx.hooks_dir).unwrap();
        for d in [&b.ctx.target_root, &b.ctx.build_dir] {
            std::os::unix::fs::chown(d, Some(65534), Some(65534)).unwrap();
        }
        cmd = diskforge_cmd::Cmd::new("setpriv")
            .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
            .arg(example_binary());
    }
    let mut child = cmd
        .arg(&els)
        .arg(&b.ctx.target_root)
        .arg(&b.ctx.build_dir)
        .arg(phase.dir())
        .args(["el", "os"])
        .spawn_streaming()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        match child.next_line(until) {
            diskforge_cmd::NextLine::Line(l) if l.contains("ready") => break,
            diskforge_cmd::NextLine::Line(l) if l.contains("uid=") => {
                assert_eq!(l.trim(), if as_nobody { "uid=65534" } else { "uid=0" });
            }
            diskforge_cmd::NextLine::Line(_) => {}
            other => {
                let f = child.finish(Duration::from_secs(5)).unwrap();
                panic!("runner ended before the script was ready: {other:?}: {f:?}")
            }
        }
    }
    let until = Instant::now() + Duration::from_secs(10);
    while processes_with(&format!("sleep {marker}2")).is_empty() {
        assert!(Instant::now() < until, "the script's sleep never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = rustix::process::Pid::from_raw(child.pid().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    let f = child.finish(Duration::from_secs(5)).unwrap();
    assert!(!f.status.success());
    assert_eq!(
        wait_no_process(&format!("sleep {marker}")),
        Vec::<u32>::new()
    );
    assert_eq!(host_mounts_under(&b.ctx.target_root), Vec::<String>::new());
}

#[test]
fn kill9_of_the_runner_in_a_host_phase_leaves_no_process() {
    // As whoever runs the tests (root in CI).
    kill9_leaves_nothing(Phase::PostRoot, "98766", false);
}

#[test]
#[ignore = "needs root"]
fn kill9_of_the_runner_in_a_chroot_phase_leaves_no_process_or_mount() {
    diskforge_testutil::require_root();
    kill9_leaves_nothing(Phase::PreInstall, "98767", false);
}

#[test]
#[ignore = "needs root"]
fn kill9_of_an_unprivileged_runner_leaves_no_process() {
    // Root only to switch to `nobody`; needs unprivileged user namespaces.
    diskforge_testutil::require_root();
    kill9_leaves_nothing(Phase::Cleanup, "98768", true);
}

#[test]
#[ignore = "needs root"]
fn shipped_install_static_and_stable_interface_names_work_in_a_busybox_chroot() {
    diskforge_testutil::require_root();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tmp();
    let root = real(dir.path());
    let els = root.join("elements");
    os_element(&els);
    write(
        &els,
        &[
            ("mine/static/etc/motd", "hello from static\n", false),
            (
                "mine/static/usr/local/bin/tool",
                "#!/bin/sh\necho tool\n",
                true,
            ),
            ("mine/static/tmp/note", "kept\n", false),
        ],
    );
    std::os::unix::fs::symlink("motd", els.join("mine/static/etc/motd-link")).unwrap();
    let shipped = shipped_elements(&root.join("shipped")).unwrap();
    let resolved = resolve(
        &names(&["os", "mine", "install-static", "stable-interface-names"]),
        &opts(&[&els, &shipped], &[]),
    )
    .unwrap();
    let target = root.join("target");
    busybox_root(&target);
    std::fs::create_dir_all(target.join("tmp")).unwrap();
    std::fs::set_permissions(target.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::create_dir_all(target.join("etc/udev/rules.d")).unwrap();
    std::os::unix::fs::symlink(
        "/dev/null",
        target.join("etc/udev/rules.d/80-net-name-slot.rules"),
    )
    .unwrap();
    let ctx = RunContext {
        target_root: target.clone(),
        hooks_dir: root.join("build/hooks"),
        build_dir: root.join("build"),
        env: BTreeMap::new(),
        script_timeout: Duration::from_secs(60),
        trace: true,
        cancel: None,
    };
    prepare_hooks(&resolved, &ctx.hooks_dir).unwrap();
    let mut out = Vec::new();
    let report = run_phase(&resolved, Phase::Install, &ctx, &mut |e| {
        if let ScriptEvent::Output { line } = e {
            out.push(line)
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.scripts.len(), 2, "{out:?}");
    assert_eq!(
        std::fs::read_to_string(target.join("etc/motd")).unwrap(),
        "hello from static\n"
    );
    let tool = std::fs::metadata(target.join("usr/local/bin/tool")).unwrap();
    assert_eq!(tool.mode() & 0o777, 0o755);
    assert_eq!((tool.uid(), tool.gid()), (0, 0));
    assert_eq!(
        std::fs::read_link(target.join("etc/motd-link")).unwrap(),
        Path::new("motd")
    );
    assert_eq!(
        std::fs::read_to_string(target.join("tmp/note")).unwrap(),
        "kept\n"
    );
    // An existing directory keeps its mode.
    assert_eq!(
        std::fs::metadata(target.join("tmp")).unwrap().mode() & 0o7777,
        0o1777
    );
    assert!(
        std::fs::symlink_metadata(target.join("etc/udev/rules.d/80-net-name-slot.rules")).is_err()
    );
    assert_eq!(host_mounts_under(&target), Vec::<String>::new());
}

#[test]
#[ignore = "needs root"]
fn chroot_refuses_symlinked_mount_points() {
    diskforge_testutil::require_root();
    let b = build(&[("el/install.d/10-x", "#!/bin/sh\n", true)], &["el"]);
    busybox_root(&b.ctx.target_root);
    std::os::unix::fs::symlink("/tmp", b.ctx.target_root.join("tmp")).unwrap();
    let err = run(&b, Phase::Install).0.unwrap_err();
    assert!(
        matches!(&err, Error::TargetSymlink { path } if path.ends_with("target/tmp")),
        "{err:?}"
    );
}

#[test]
fn chroot_phase_without_scripts_does_nothing() {
    let b = build(&[("el/root.d/10-x", "#!/bin/sh\necho hi\n", true)], &["el"]);
    // No install.d scripts: nothing runs, nothing is created in the target.
    let (r, events) = run(&b, Phase::Install);
    assert!(r.unwrap().scripts.is_empty() && events.is_empty());
    assert_eq!(std::fs::read_dir(&b.ctx.target_root).unwrap().count(), 0);
}

#[test]
fn a_script_that_closes_its_output_runs_to_the_end() {
    let b = build(
        &[(
            "el/root.d/10-quiet",
            "#!/bin/sh\necho before\nexec >/dev/null 2>&1\nsleep 0.5\ntouch \"$TARGET_ROOT/after\"\n",
            true,
        )],
        &["el"],
    );
    let (r, events) = run(&b, Phase::Root);
    r.unwrap();
    assert!(events.contains(&ScriptEvent::Output {
        line: "before".into()
    }));
    assert!(b.ctx.target_root.join("after").exists());
}

#[test]
fn block_device_scripts_can_replace_the_device() {
    let mut b = build(
        &[
            (
                "el/block-device.d/10-show",
                "#!/bin/sh\necho \"given=$IMAGE_BLOCK_DEVICE\"\necho IMAGE_BLOCK_DEVICE=/dev/replaced\n",
                true,
            ),
            (
                "el/root.d/10-x",
                "#!/bin/sh\necho IMAGE_BLOCK_DEVICE=/dev/ignored\n",
                true,
            ),
        ],
        &["el"],
    );
    b.ctx
        .env
        .insert("IMAGE_BLOCK_DEVICE".into(), "/dev/loop7".into());
    let (r, events) = run(&b, Phase::BlockDevice);
    let report = r.unwrap();
    assert_eq!(report.image_block_device.as_deref(), Some("/dev/replaced"));
    assert!(events.contains(&ScriptEvent::Output {
        line: "given=/dev/loop7".into()
    }));
    // Only block-device.d output counts.
    assert_eq!(run(&b, Phase::Root).0.unwrap().image_block_device, None);
}

#[test]
#[ignore = "needs root"]
fn shipped_devuser_creates_the_user_in_a_busybox_root() {
    diskforge_testutil::require_root();
    use std::os::unix::fs::MetadataExt;
    let dir = tmp();
    let root = real(dir.path());
    let els = root.join("elements");
    os_element(&els);
    write(
        &root,
        &[("key.pub", "ssh-ed25519 AAAATEST me@host\n", false)],
    );
    let shipped = shipped_elements(&root.join("shipped")).unwrap();
    let resolved = resolve(&names(&["os", "devuser"]), &opts(&[&els, &shipped], &[])).unwrap();
    let target = root.join("target");
    busybox_root(&target);
    write(
        &target,
        &[
            (
                "etc/passwd",
                "root:x:0:0:root:/root:/bin/sh\nweird:x:1000:1000::/:/bin/sh\n",
                false,
            ),
            (
                "etc/group",
                "root:x:0:\nwheel:x:10:root\naudio:x:29:\n",
                false,
            ),
        ],
    );
    let ctx = RunContext {
        target_root: target.clone(),
        hooks_dir: root.join("build/hooks"),
        build_dir: root.join("build"),
        env: BTreeMap::from([
            ("DIB_DEV_USER_GROUPS".into(), "wheel,audio".into()),
            ("DIB_DEV_USER_PWDLESS_SUDO".into(), "1".into()),
            (
                "DIB_DEV_USER_AUTHORIZED_KEYS".into(),
                root.join("key.pub").display().to_string(),
            ),
            ("SOURCE_DATE_EPOCH".into(), "1700000000".into()),
        ]),
        script_timeout: Duration::from_secs(60),
        trace: false,
        cancel: None,
    };
    prepare_hooks(&resolved, &ctx.hooks_dir).unwrap();
    let mut out = Vec::new();
    for phase in [Phase::ExtraData, Phase::Install] {
        run_phase(&resolved, phase, &ctx, &mut |e| {
            if let ScriptEvent::Output { line } = e {
                out.push(line)
            }
        })
        .unwrap_or_else(|e| panic!("{e}\n{out:?}"));
    }
    let read = |p: &str| std::fs::read_to_string(target.join(p)).unwrap();
    assert_eq!(
        read("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nweird:x:1000:1000::/:/bin/sh\n\
         devuser:x:1001:1001::/home/devuser:/bin/sh\n"
    );
    assert_eq!(
        read("etc/group"),
        "root:x:0:\nwheel:x:10:root,devuser\naudio:x:29:devuser\ndevuser:x:1001:\n"
    );
    assert_eq!(read("etc/shadow"), "devuser:!:19675:0:99999:7:::\n");
    assert_eq!(
        read("etc/sudoers.d/devuser"),
        "devuser ALL=(ALL) NOPASSWD:ALL\n"
    );
    let sudoers = std::fs::metadata(target.join("etc/sudoers.d/devuser")).unwrap();
    assert_eq!(sudoers.mode() & 0o777, 0o440);
    assert_eq!(
        read("home/devuser/.ssh/authorized_keys"),
        "ssh-ed25519 AAAATEST me@host\n"
    );
    let keys = std::fs::metadata(target.join("home/devuser/.ssh/authorized_keys")).unwrap();
    assert_eq!(
        (keys.mode() & 0o777, keys.uid(), keys.gid()),
        (0o600, 1001, 1001)
    );
    // Twice is an error naming the user, not a second account.
    let err = run_phase(&resolved, Phase::Install, &ctx, &mut |_| {}).unwrap_err();
    assert!(
        err.to_string()
            .contains("devuser: user devuser already exists"),
        "{err}"
    );
}

#[test]
#[ignore = "needs root"]
fn relative_paths_work_for_chroot_and_host_phases() {
    diskforge_testutil::require_root();
    let mut b = build(
        &[
            (
                "el/install.d/10-x",
                "#!/bin/sh\necho inside > /inside\n",
                true,
            ),
            (
                "el/post-root.d/10-x",
                "#!/bin/sh\necho \"$TARGET_ROOT\"\n",
                true,
            ),
        ],
        &["el"],
    );
    // The tests run in the crate directory: a scratch dir there, named relatively.
    let here = tempfile::tempdir_in(".").unwrap();
    let rel = PathBuf::from(here.path().file_name().unwrap());
    busybox_root(&rel.join("target"));
    b.ctx.target_root = rel.join("target");
    let hooks = rel.join("hooks");
    prepare_hooks(&b.resolved, &hooks).unwrap();
    b.ctx.hooks_dir = hooks;
    run(&b, Phase::Install).0.unwrap();
    assert_eq!(
        std::fs::read_to_string(rel.join("target/inside")).unwrap(),
        "inside\n"
    );
    let (r, events) = run(&b, Phase::PostRoot);
    r.unwrap();
    let abs = std::path::absolute(rel.join("target")).unwrap();
    assert!(events.contains(&ScriptEvent::Output {
        line: abs.display().to_string()
    }));
}

/// Hardening corpus `elements/env-exits`: an `environment.d` file that exits silently is
/// named in the error (it used to say only "setting up the scripts … failed; it printed
/// nothing"); the files before it were sourced, no script ran.
#[test]
fn a_silently_exiting_environment_file_is_named() {
    let b = build(
        &[
            ("el/environment.d/05-fine", "export FINE=1\n", false),
            ("el/environment.d/10-exits.bash", "exit 7\n", false),
            (
                "el/cleanup.d/10-x",
                "#!/bin/sh\ntouch \"$TARGET_ROOT/ran\"\n",
                true,
            ),
        ],
        &["el"],
    );
    let (r, _) = run(&b, Phase::Cleanup);
    let err = r.unwrap_err();
    assert_eq!(
        err.to_string(),
        "cleanup.d: setting up the scripts (sourcing environment.d/10-exits.bash) failed (exit \
         status 7); it printed nothing"
    );
    assert!(!b.ctx.target_root.join("ran").exists());
}
