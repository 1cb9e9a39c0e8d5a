//! The hook as a process sees it: the `point` example (three points: attach, write, detach)
//! run as a child with the variables set. In an `inject` build
//! (`cargo test -p diskforge-fault --features inject`) the selected point fails and the log
//! lists the points passed; in a default build the variables change nothing.

use std::path::PathBuf;

use diskforge_cmd::Cmd;

/// `target/<profile>/examples/point`, built by `cargo test` with this test's features.
fn example() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/inject-HASH → target/<profile>/examples/point
    let profile = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("test binary under target/<profile>/deps");
    profile.join("examples").join("point")
}

#[test]
fn fail_at_by_index_and_name_and_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    for spec in ["1", "write", "write#0"] {
        let log = dir.path().join(format!("log-{spec}"));
        let res = Cmd::new(example())
            .env("DISKFORGE_FAIL_AT", spec)
            .env("DISKFORGE_FAULT_LOG", &log)
            .run();
        let logged = std::fs::read_to_string(&log).unwrap_or_default();
        if diskforge_fault::ENABLED {
            let e = res.expect_err("the second point fails");
            let stderr = e.stderr().unwrap_or_default();
            assert!(
                stderr.contains("step 1 `write` failed on purpose"),
                "{spec}: {stderr}"
            );
            assert_eq!(e.exit_status().and_then(|s| s.code()), Some(1), "{spec}");
            // The failing point is logged too; the one after it is never reached.
            assert_eq!(logged, "0\tattach\n1\twrite\n", "{spec}");
        } else {
            let out = res.expect("without the feature nothing fails");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert_eq!(stdout, "attach: ok\nwrite: ok\ndetach: ok\n");
            assert_eq!(logged, "", "no log without the feature");
        }
    }
}

#[test]
fn a_spec_that_selects_nothing_fails_nothing() {
    for spec in ["7", "mount", "write#1"] {
        let out = Cmd::new(example())
            .env("DISKFORGE_FAIL_AT", spec)
            .run()
            .unwrap_or_else(|e| panic!("{spec}: {e}"));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "attach: ok\nwrite: ok\ndetach: ok\n",
            "{spec}"
        );
    }
}
