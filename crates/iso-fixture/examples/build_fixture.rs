//! Build the fixture ISO and print its facts as JSON.
//!
//! `cargo run -p diskforge-iso-fixture --example build_fixture -- DIR [--volid V]
//! [--filler-bytes N] [--filler-files N] [--no-uefi] [--esp-appended] [--grub-embedded-search]`

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        eprintln!(
            "usage: build_fixture DIR [--volid V] [--filler-bytes N] [--filler-files N] [--no-uefi] [--esp-appended] [--grub-embedded-search] [--iso-name NAME]"
        );
        return ExitCode::from(2);
    };
    let mut spec = diskforge_iso_fixture::FixtureSpec::new(dir);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        let res: Result<(), String> = (|| {
            match a.as_str() {
                "--volid" => spec.volid = value("--volid")?,
                "--grub-embedded-search" => spec.grub_embedded_search = true,
                "--iso-name" => spec.iso_name = value("--iso-name")?,
                "--filler-bytes" => {
                    spec.filler_bytes = value("--filler-bytes")?
                        .parse()
                        .map_err(|e| format!("--filler-bytes: {e}"))?
                }
                "--filler-files" => {
                    spec.filler_files = value("--filler-files")?
                        .parse()
                        .map_err(|e| format!("--filler-files: {e}"))?
                }
                "--no-uefi" => spec.uefi = false,
                "--esp-appended" => spec.esp = diskforge_iso_fixture::EspLayout::Appended,
                "--keep-tree" => spec.keep_tree = true,
                other => return Err(format!("unknown argument {other}")),
            }
            Ok(())
        })();
        if let Err(e) = res {
            eprintln!("build_fixture: {e}");
            return ExitCode::from(2);
        }
    }
    match diskforge_iso_fixture::build(&spec) {
        Ok(f) => {
            println!("{}", serde_json::to_string_pretty(&f).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            eprintln!("build_fixture: {msg}");
            ExitCode::FAILURE
        }
    }
}
