//! Build the sample installer-like hybrid ISO (see `diskforge_iso_fixture::sample`) and print its path.
//! Used by `cargo xtask bench iso` to make a large image with many files.
//!
//! `cargo run -p diskforge-iso --example sample -- DIR [--bytes N] [--files K] [--appended-esp]`

use diskforge_iso_fixture::sample::{SampleOptions, build_sample};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const USAGE: &str = "usage: sample DIR [--bytes N] [--files K] [--appended-esp]";
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or(USAGE)?;
    // Not a directory named "--help" in the current one.
    if dir.starts_with('-') {
        if dir == "-h" || dir == "--help" {
            println!("{USAGE}");
            return Ok(());
        }
        return Err(format!("{dir:?}: DIR comes first\n{USAGE}").into());
    }
    let mut opts = SampleOptions::default();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bytes" => opts.filler_bytes = args.next().ok_or("--bytes N")?.parse()?,
            "--files" => opts.filler_files = args.next().ok_or("--files K")?.parse()?,
            "--appended-esp" => opts.appended_esp = true,
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    std::fs::create_dir_all(&dir)?;
    let iso = build_sample(std::path::Path::new(&dir), &opts)?;
    println!("{}", iso.display());
    Ok(())
}
