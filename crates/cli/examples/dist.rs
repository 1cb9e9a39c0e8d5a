//! Write the man pages and completions of a small two-subcommand tool into DIR, as a diskforge
//! tool does when run with `DISKFORGE_DIST_DIR=DIR`.
//!
//! `cargo run -p diskforge-cli --example dist -- /tmp/dist && man -l /tmp/dist/man/demo.1`

use clap::{Arg, ArgAction, Command};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: dist DIR");
        std::process::exit(2);
    };
    let cmd = Command::new("demo")
        .about("A demo tool")
        .subcommand(
            Command::new("attach")
                .about("Attach FILE")
                .arg(Arg::new("file").required(true)),
        )
        .subcommand(
            Command::new("list")
                .about("List what is attached")
                .arg(Arg::new("json").long("json").action(ArgAction::SetTrue)),
        );
    let files = diskforge_cli::write_dist(cmd, std::path::Path::new(&dir))?;
    for f in files.man.iter().chain(&files.completions) {
        println!("{}", f.display());
    }
    Ok(())
}
