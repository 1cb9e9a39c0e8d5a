//! The `dfmount` binary as a user runs it: help snapshots (no root), and bind / overlay /
//! `-o loop` / list / umount round trips checked against /proc/self/mountinfo (root).

use std::fs;

use diskforge_cmd::Cmd;
use diskforge_testutil::{KernelState, require_root, scratch_dir};

const BIN: &str = env!("CARGO_BIN_EXE_dfmount");

fn fail(args: &[&str]) -> (i32, String) {
    match Cmd::new(BIN).args(args).run() {
        Ok(_) => panic!("dfmount {args:?} succeeded"),
        Err(e) => (
            e.exit_status().and_then(|s| s.code()).unwrap_or(-1),
            e.stderr().unwrap_or("").to_owned(),
        ),
    }
}

#[test]
fn help_texts() {
    insta::assert_snapshot!("help", Cmd::new(BIN).arg("--help").read().unwrap());
    insta::assert_snapshot!(
        "help_overlay",
        Cmd::new(BIN).args(["overlay", "--help"]).read().unwrap()
    );
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(fail(&["overlay", "/mnt"]).0, 2);
    assert_eq!(
        fail(&["overlay", "--lower", "/a", "--upper", "/u", "/mnt"]).0,
        2
    );
}

#[test]
#[ignore = "needs root"]
fn missing_lower_exits_1_naming_it() {
    require_root();
    let (code, stderr) = fail(&[
        "overlay",
        "--lower",
        "/",
        "--lower",
        "/nonexistent/dfmount-lower",
        "/",
    ]);
    assert_eq!(code, 1);
    insta::assert_snapshot!("missing_lower", stderr);
}

#[test]
#[ignore = "needs root"]
fn bind_overlay_loop_list_umount_round_trip() {
    require_root();
    let dir = scratch_dir();
    let p = |n: &str| {
        let p = dir.path().join(n);
        fs::create_dir_all(&p).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let (a, b, upper, work, merged, ro, img_mnt) = (
        p("a"),
        p("b"),
        p("upper"),
        p("work"),
        p("merged"),
        p("ro"),
        p("img"),
    );
    fs::write(format!("{a}/f"), "a").unwrap();
    fs::write(format!("{b}/f"), "b").unwrap();
    fs::write(format!("{b}/g"), "b").unwrap();

    let out = Cmd::new(BIN)
        .args(["bind", "--ro", &b, &ro])
        .read()
        .unwrap();
    assert_eq!(out.trim(), format!("{b} on {ro} (bind)"));
    assert!(fs::write(format!("{ro}/x"), "x").is_err());

    let rep: serde_json::Value = Cmd::new(BIN)
        .args([
            "overlay", "--json", "--lower", &a, "--lower", &ro, "--upper", &upper, "--work", &work,
        ])
        .args(["--index", "off", &merged])
        .json()
        .unwrap();
    assert_eq!(rep["method"], "mount-data");
    assert_eq!(fs::read_to_string(format!("{merged}/f")).unwrap(), "a");
    assert_eq!(fs::read_to_string(format!("{merged}/g")).unwrap(), "b");

    let img = dir.path().join("fs.img");
    fs::File::create(&img).unwrap().set_len(8 << 20).unwrap();
    Cmd::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&img)
        .run()
        .unwrap();
    let rep: serde_json::Value = Cmd::new(BIN)
        .args(["mount", "--json", "-t", "ext4", "-o", "loop,noatime"])
        .arg(&img)
        .arg(&img_mnt)
        .json()
        .unwrap();
    let dev = rep["loop_device"].as_str().unwrap().to_owned();
    assert!(dev.starts_with("/dev/loop"));

    let listed: serde_json::Value = Cmd::new(BIN)
        .args(["list", "--json", "--under"])
        .arg(dir.path())
        .json()
        .unwrap();
    let fs_list = listed["filesystems"].as_array().unwrap();
    let kinds: Vec<(&str, &str)> = fs_list
        .iter()
        .map(|m| (m["target"].as_str().unwrap(), m["fstype"].as_str().unwrap()))
        .collect();
    assert!(kinds.contains(&(merged.as_str(), "overlay")), "{kinds:?}");
    assert!(kinds.contains(&(img_mnt.as_str(), "ext4")), "{kinds:?}");
    assert!(fs_list.iter().any(|m| m["target"] == ro.as_str() && m["options"].as_str().unwrap().starts_with("ro")));

    for t in [&img_mnt, &merged, &ro] {
        Cmd::new(BIN).args(["umount", t]).run().unwrap();
    }
    // -o loop used autoclear: the device goes with the mount (allow the kernel a moment).
    let mut st = KernelState::capture();
    for _ in 0..100 {
        if st.loops_under(dir.path()).is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        st = KernelState::capture();
    }
    assert!(
        st.loops_under(dir.path()).is_empty(),
        "{:?}",
        st.loops_under(dir.path())
    );
    assert!(
        st.mounts_under(dir.path()).is_empty(),
        "{:?}",
        st.mounts_under(dir.path())
    );
    let (code, stderr) = fail(&["umount", &merged]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("is not a mount point") && stderr.contains(&merged),
        "{stderr}"
    );
}

#[test]
#[ignore = "needs root"]
fn hold_unmounts_on_sigterm() {
    require_root();
    let dir = scratch_dir();
    for d in ["a", "b", "m"] {
        fs::create_dir(dir.path().join(d)).unwrap();
    }
    let p = |n: &str| dir.path().join(n);
    // coreutils `timeout` sends SIGTERM after 1 s and then exits 124 itself.
    let e = Cmd::new("timeout")
        .args(["-s", "TERM", "1", BIN, "overlay", "--hold", "--lower"])
        .arg(p("a"))
        .arg("--lower")
        .arg(p("b"))
        .arg(p("m"))
        .run()
        .unwrap_err();
    assert_eq!(e.exit_status().and_then(|s| s.code()), Some(124), "{e}");
    let diskforge_cmd::Error::Failed { stdout, .. } = &e else {
        panic!("{e}")
    };
    assert!(stdout.starts_with("overlay on "), "{stdout}");
    assert!(KernelState::capture().mounts_under(dir.path()).is_empty());
}

#[test]
#[ignore = "needs root"]
fn hold_on_a_busy_target_detaches_lazily_naming_the_user() {
    diskforge_testutil::require_root();
    let dir = scratch_dir();
    for d in ["a", "m"] {
        fs::create_dir(dir.path().join(d)).unwrap();
    }
    fs::write(dir.path().join("a/f"), "a").unwrap();
    // dfmount holds a bind; a second process sits in it (cwd and an open file) while
    // dfmount gets SIGTERM, so the unmount at the end of the hold meets EBUSY.
    let script = r#"
        "$BIN" bind --hold a m >out 2>err & P=$!
        for i in $(seq 100); do [ -e m/f ] && break; sleep 0.05; done
        (cd m && exec sleep 30 <f) & S=$!
        sleep 0.2
        kill -TERM $P; wait $P; echo "rc=$?"
        grep -c " $PWD/m " /proc/self/mountinfo
        kill $S; wait $S 2>/dev/null
        echo "sleeper=$S"
    "#;
    let out = Cmd::new("sh")
        .args(["-c", script])
        .env("BIN", BIN)
        .dir(dir.path())
        .read()
        .unwrap();
    let stderr = fs::read_to_string(dir.path().join("err")).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "rc=3", "{out}\n{stderr}");
    assert_eq!(
        lines[1], "0",
        "the bind is still in the mount tree: {stderr}"
    );
    let sleeper = lines[2].trim_start_matches("sleeper=");
    let m = dir.path().join("m");
    assert!(
        stderr.contains(&format!("{} stayed busy", m.display()))
            && stderr.contains(&format!(
                "used by pid {sleeper} (sleep): cwd, open {}/f",
                m.display()
            ))
            && stderr.contains("detached")
            && stderr.contains("lazily"),
        "{stderr}"
    );
    assert!(KernelState::capture().mounts_under(dir.path()).is_empty());
}
