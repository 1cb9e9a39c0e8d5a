//! Build the small sample hybrid ISO in a temp dir (or take a path argument) and print what
//! `diskforge_iso::inspect` reads from it.
//!
//! `cargo run -p diskforge-iso --example inspect [IMAGE.iso]`

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = match std::env::args_os().nth(1) {
        Some(p) => p.into(),
        None => diskforge_iso_fixture::sample::build_sample(dir.path(), &Default::default())?,
    };
    let report = diskforge_iso::inspect(&path)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
