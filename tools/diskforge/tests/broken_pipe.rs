//! `diskforge --help` piped into a reader that is already gone ends quietly with exit code
//! 0 (STYLE: commands that only report exit quietly on SIGPIPE), instead of panicking with
//! "failed printing to stdout: Broken pipe".

use diskforge_cmd::Cmd;

const BIN: &str = env!("CARGO_BIN_EXE_diskforge");

#[test]
fn closed_stdout_exits_quietly() {
    let stderr = diskforge_testutil::stderr_into_closed_pipe(BIN, "--help");
    assert_eq!(stderr, "exit=0", "{stderr}");
    // And through a reader that takes a little: the start of the help arrives.
    let out = Cmd::new("sh")
        .args(["-c", "\"$0\" --help | head -c 6", BIN])
        .read()
        .unwrap();
    assert_eq!(out, "usage:");
}
