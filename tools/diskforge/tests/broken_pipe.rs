//! `diskforge --help` piped into a reader that is already gone ends quietly with exit code
//! 0 (STYLE: commands that only report exit quietly on SIGPIPE), instead of panicking with
//! "failed printing to stdout: Broken pipe".

use diskforge_cmd::Cmd;

const BIN: &str = env!("CARGO_BIN_EXE_diskforge");

#[test]
fn closed_stdout_exits_quietly() {
    // The subshell waits until `true` has exited, so the write hits a closed pipe; it reports
    // the exit code on stderr (dash has no pipefail).
    let out = Cmd::new("sh")
        .args([
            "-c",
            "(sleep 0.3; \"$0\" --help; echo \"exit=$?\" >&2) | true",
            BIN,
        ])
        .run()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim(), "exit=0", "{stderr}");
    // And through a reader that takes a little: the start of the help arrives.
    let out = Cmd::new("sh")
        .args(["-c", "\"$0\" --help | head -c 6", BIN])
        .read()
        .unwrap();
    assert_eq!(out, "usage:");
}
