//! The `dfloop` binary as a user runs it: help text and error snapshots (no root needed), and
//! an attach → list → find → partitions → detach round trip checked with `losetup` (root).

use diskforge_cmd::Cmd;
use diskforge_testutil::{KernelState, require_root, scratch_dir};

const BIN: &str = env!("CARGO_BIN_EXE_dfloop");

fn fail(args: &[&str]) -> (i32, String) {
    match Cmd::new(BIN).args(args).run() {
        Ok(_) => panic!("dfloop {args:?} succeeded"),
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
        "help_attach",
        Cmd::new(BIN).args(["attach", "--help"]).read().unwrap()
    );
}

#[test]
fn usage_errors_exit_2() {
    let (code, _) = fail(&["attach", "--offset", "1X", "f"]);
    assert_eq!(code, 2);
    let (code, _) = fail(&["detach"]);
    assert_eq!(code, 2);
}

#[test]
#[ignore = "needs root"]
fn missing_file_exits_1_naming_it() {
    require_root();
    let (code, stderr) = fail(&["attach", "/nonexistent/dfloop-test.img"]);
    assert_eq!(code, 1);
    insta::assert_snapshot!("missing_file", stderr);
}

#[test]
#[ignore = "needs root"]
fn attach_list_find_detach_round_trip() {
    require_root();
    let dir = scratch_dir();
    let img = dir.path().join("disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    Cmd::new("sgdisk")
        .args(["-n", "1:2048:+2M", "-n", "2:0:+1M"])
        .arg(&img)
        .run()
        .unwrap();
    let img_s = img.to_str().unwrap();
    let dev = Cmd::new(BIN)
        .args(["attach", "--offset", "0", "--ro", img_s])
        .read()
        .unwrap();
    let dev = dev.trim().to_owned();
    assert!(dev.starts_with("/dev/loop"), "{dev}");
    // The device outlives the dfloop process.
    let theirs: serde_json::Value = Cmd::new("losetup").args(["-J", "-l", &dev]).json().unwrap();
    assert_eq!(theirs["loopdevices"][0]["back-file"], img_s);
    assert_eq!(theirs["loopdevices"][0]["ro"], true);
    let ours: serde_json::Value = Cmd::new(BIN).args(["list", "--json"]).json().unwrap();
    let mine: Vec<_> = ours["loopdevices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["name"] == dev.as_str())
        .collect();
    assert_eq!(mine.len(), 1);
    for k in [
        "back-file",
        "offset",
        "sizelimit",
        "ro",
        "autoclear",
        "dio",
        "log-sec",
    ] {
        assert_eq!(mine[0][k], theirs["loopdevices"][0][k], "{k}");
    }
    let found: serde_json::Value = Cmd::new(BIN)
        .args(["find", "--json", img_s])
        .json()
        .unwrap();
    assert_eq!(found["loopdevices"][0]["name"], dev.as_str());
    let parts: serde_json::Value = Cmd::new(BIN)
        .args(["partitions", "--json", &dev])
        .json()
        .unwrap();
    assert_eq!(parts["partitions"][0]["start"], 2048 * 512);
    assert_eq!(parts["partitions"][1]["size"], 1 << 20);
    Cmd::new(BIN).args(["detach", &dev]).run().unwrap();
    let (code, _) = fail(&["find", img_s]);
    assert_eq!(code, 3);
    assert!(KernelState::capture().loops_under(dir.path()).is_empty());
}

#[test]
#[ignore = "needs root"]
fn hold_detaches_on_sigterm() {
    require_root();
    let dir = scratch_dir();
    let img = dir.path().join("held.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    // coreutils `timeout` sends SIGTERM after 1 s and then exits 124 itself.
    let e = Cmd::new("timeout")
        .args(["-s", "TERM", "1", BIN, "attach", "--hold"])
        .arg(&img)
        .run()
        .unwrap_err();
    assert_eq!(e.exit_status().and_then(|s| s.code()), Some(124), "{e}");
    let diskforge_cmd::Error::Failed { stdout, .. } = &e else {
        panic!("{e}")
    };
    assert!(stdout.starts_with("/dev/loop"), "{stdout}");
    assert!(KernelState::capture().loops_under(dir.path()).is_empty());
}

/// An MBR extended partition is listed as the container it is, with no node or range to use;
/// its logical partitions get ranges; `sfdisk --json` agrees on every start and size.
#[test]
#[ignore = "needs root"]
fn partitions_mark_the_extended_container() {
    require_root();
    let dir = scratch_dir();
    let img = dir.path().join("ext.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    Cmd::new("sfdisk")
        .arg(&img)
        .stdin_bytes(b"label: dos\n,8MiB,L\n,40MiB,E\n,6MiB,L\n,4MiB,83\n,10MiB,L\n".to_vec())
        .run()
        .unwrap();
    let sf: serde_json::Value = Cmd::new("sfdisk").arg("--json").arg(&img).json().unwrap();
    let img_s = img.to_str().unwrap();
    // No partition scan: every usable partition is reached through a range.
    let dev = Cmd::new(BIN)
        .args(["attach", "--ro", img_s])
        .read()
        .unwrap();
    let dev = dev.trim().to_owned();
    let human = Cmd::new(BIN).args(["partitions", &dev]).read();
    let json: Result<serde_json::Value, _> =
        Cmd::new(BIN).args(["partitions", "--json", &dev]).json();
    Cmd::new(BIN).args(["detach", &dev]).run().unwrap();
    let (human, json) = (human.unwrap(), json.unwrap());
    let parts = json["partitions"].as_array().unwrap();
    let want = sf["partitiontable"]["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 5, "{json}");
    assert_eq!(parts.len(), want.len(), "{json}\n{sf}");
    for (p, s) in parts.iter().zip(want) {
        assert_eq!(p["start"], s["start"].as_u64().unwrap() * 512, "{p} vs {s}");
        assert_eq!(p["size"], s["size"].as_u64().unwrap() * 512, "{p} vs {s}");
        let is_ext = s["type"] == "5";
        assert_eq!(p["extended"].as_bool().unwrap_or(false), is_ext, "{p}");
        if is_ext {
            assert!(p["location"].is_null(), "{p}");
        } else {
            assert_eq!(
                p["location"]["range"]["offset"], p["start"],
                "{p}: a usable partition has a range"
            );
        }
    }
    let row2 = human.lines().find(|l| l.starts_with("2 ")).unwrap();
    assert!(
        row2.ends_with("(extended: container of the logical partitions)"),
        "{human}"
    );
    assert!(!row2.contains("--offset"), "{human}");
}

#[test]
#[ignore = "needs root"]
fn detach_json_reports_each_device() {
    require_root();
    let dir = scratch_dir();
    let img = dir.path().join("detach.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let dev = Cmd::new(BIN).arg("attach").arg(&img).read().unwrap();
    let dev = dev.trim().to_owned();
    let not_loop = dir.path().join("not-a-loop");
    std::fs::write(&not_loop, b"x").unwrap();
    let not_loop = not_loop.to_str().unwrap();
    // One device detaches, the other path is no loop device: exit 1, both reported.
    let e = Cmd::new(BIN)
        .args(["detach", "--json", &dev, not_loop])
        .run()
        .unwrap_err();
    assert_eq!(e.exit_status().and_then(|s| s.code()), Some(1), "{e}");
    let diskforge_cmd::Error::Failed { stdout, .. } = &e else {
        panic!("{e}")
    };
    let v: serde_json::Value = serde_json::from_str(stdout).unwrap();
    let rows = v["loopdevices"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{v}");
    assert_eq!(rows[0]["name"], dev.as_str());
    assert_eq!(rows[0]["detached"], true);
    assert!(rows[0]["error"].is_null(), "{v}");
    assert_eq!(rows[1]["name"], not_loop);
    assert_eq!(rows[1]["detached"], false);
    assert!(
        rows[1]["error"].as_str().unwrap().contains("not-a-loop"),
        "{v}"
    );
    // losetup agrees that the device is gone.
    let theirs = Cmd::new("losetup").args(["-j"]).arg(&img).read().unwrap();
    assert!(theirs.trim().is_empty(), "{theirs}");
    assert!(KernelState::capture().loops_under(dir.path()).is_empty());
}
