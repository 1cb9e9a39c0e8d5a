//! `diskforge TOOL ARGS…` runs the diskforge tool `TOOL` (`loop` → `dfloop`, `mount` →
//! `dfmount`, `part` → `dfpart`, `img` → `dfimg`, `layers` → `dflayers`, `iso` →
//! `iso-remaster`) found next to this binary or on `PATH`, replacing this process.
//! `diskforge blockdev …` runs in this process (see `blockdev`).
//!
//! Exit codes: those of the tool; 2 for an unknown tool or usage error; 127 when the tool's
//! binary cannot be found.

mod blockdev;

use std::os::unix::process::CommandExt;
use std::path::PathBuf;

const TOOLS: &[(&str, &str)] = &[
    ("loop", "dfloop"),
    ("mount", "dfmount"),
    ("part", "dfpart"),
    ("img", "dfimg"),
    ("layers", "dflayers"),
    ("iso", "iso-remaster"),
];

fn usage() -> String {
    let mut s = String::from("usage: diskforge TOOL [ARGS…]\n\ntools:\n");
    for (short, bin) in TOOLS {
        s.push_str(&format!("  {short:<8} runs {bin}\n"));
    }
    s.push_str("  blockdev builds disks from diskimage-builder block-device YAML (in process)\n");
    s
}

/// The forwarder's command line as clap sees it, for its man page and completions only (the
/// arguments are forwarded, not parsed): one subcommand per tool, taking that tool's arguments.
fn command() -> clap::Command {
    let mut cmd = clap::Command::new("diskforge")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Run a diskforge tool: diskforge TOOL [ARGS…]")
        .subcommand_required(true);
    for (short, bin) in TOOLS {
        let args = clap::Arg::new("ARGS")
            .help(format!("Arguments for {bin}"))
            .num_args(0..)
            .trailing_var_arg(true)
            .allow_hyphen_values(true);
        cmd = cmd.subcommand(
            clap::Command::new(*short)
                .about(format!("Run {bin} (see {bin}(1))"))
                .arg(args),
        );
    }
    cmd
}

fn main() -> anyhow::Result<()> {
    diskforge_cli::dist_hook_with(command);
    diskforge_cmd::exit_quietly_on_broken_pipe();
    let mut args = std::env::args_os().skip(1);
    let Some(tool) = args.next() else {
        eprint!("{}", usage());
        std::process::exit(2);
    };
    let tool = tool.to_string_lossy().into_owned();
    if tool == "blockdev" {
        let code = blockdev::main(args.collect());
        std::io::Write::flush(&mut std::io::stdout())?;
        std::process::exit(code);
    }
    if tool == "-h" || tool == "--help" || tool == "help" {
        print!("{}", usage());
        return Ok(());
    }
    let Some((_, bin)) = TOOLS.iter().find(|(s, b)| *s == tool || *b == tool) else {
        eprintln!("diskforge: unknown tool {tool:?}\n\n{}", usage());
        std::process::exit(2);
    };
    let beside = std::env::current_exe()?.parent().map(|d| d.join(bin));
    let path = match beside {
        Some(p) if p.is_file() => p,
        _ => PathBuf::from(bin),
    };
    // exec replaces this process; this is a thin forwarder, not a place that runs tools.
    #[allow(clippy::disallowed_methods)]
    let err = std::process::Command::new(&path).args(args).exec();
    eprintln!("diskforge: cannot run {}: {err}", path.display());
    std::process::exit(127);
}
