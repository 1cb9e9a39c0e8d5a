//! Run a program given on the command line and show stdout, or the typed error.
//!
//! `cargo run -p diskforge-cmd --example run -- uname -a`

use diskforge_cmd::Cmd;

fn main() {
    let mut argv = std::env::args().skip(1);
    let Some(program) = argv.next() else {
        eprintln!("usage: run PROGRAM [ARGS…]");
        std::process::exit(2);
    };
    match Cmd::new(program).args(argv).read() {
        Ok(out) => println!("{out}"),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
