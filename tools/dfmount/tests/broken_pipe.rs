//! `dfmount list` piped into a reader that is already gone ends quietly with exit code 0
//! (STYLE: commands that only report exit quietly on SIGPIPE), instead of panicking with
//! "failed printing to stdout: Broken pipe".

use diskforge_cmd::Cmd;

const BIN: &str = env!("CARGO_BIN_EXE_dfmount");

#[test]
fn closed_stdout_exits_quietly() {
    // The subshell waits until `true` has exited, so every write hits a closed pipe; it
    // reports the tool's exit code on stderr (dash has no pipefail).
    for args in ["list", "list --json"] {
        let out = Cmd::new("sh")
            .args([
                "-c",
                "(sleep 0.3; \"$0\" $1; echo \"exit=$?\" >&2) | true",
                BIN,
                args,
            ])
            .run()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim(), "exit=0", "dfmount {args}: {stderr}");
    }
}
