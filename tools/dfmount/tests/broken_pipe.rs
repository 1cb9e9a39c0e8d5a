//! `dfmount list` piped into a reader that is already gone ends quietly with exit code 0
//! (STYLE: commands that only report exit quietly on SIGPIPE), instead of panicking with
//! "failed printing to stdout: Broken pipe".

const BIN: &str = env!("CARGO_BIN_EXE_dfmount");

#[test]
fn closed_stdout_exits_quietly() {
    for args in ["list", "list --json"] {
        let stderr = diskforge_testutil::stderr_into_closed_pipe(BIN, args);
        assert_eq!(stderr, "exit=0", "dfmount {args}: {stderr}");
    }
}
