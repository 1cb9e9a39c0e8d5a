//! Resolve elements the way `disk-image-create --dry-run --json` does and print the result.
//!
//! ```text
//! ELEMENTS_PATH=~/my-elements cargo run -p diskforge-elements --example resolve -- busybox vm
//! ```
//!
//! The shipped elements are materialised into a temporary directory and searched after
//! `ELEMENTS_PATH`. `DIB_*` variables and `ARCH` are taken from the environment. Prints the
//! resolved elements, the environment files and every phase's scripts as JSON, or every
//! problem (with the chain that led to it) and exits 1.

use std::collections::BTreeMap;
use std::path::PathBuf;

use diskforge_elements::{Error, Phase, ResolveOptions, resolve, shipped_elements};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let requested: Vec<String> = std::env::args().skip(1).collect();
    let shipped = tempfile::tempdir()?;
    let mut elements_path: Vec<PathBuf> = std::env::var_os("ELEMENTS_PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default();
    elements_path.push(shipped_elements(shipped.path())?);
    let env: BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("DIB_") || k == "ARCH")
        .collect();
    let opts = ResolveOptions {
        elements_path,
        allow_nonexec: std::env::var_os("ALLOW_NONEXEC").is_some(),
        env,
    };
    match resolve(&requested, &opts) {
        Ok(r) => {
            let scripts: BTreeMap<&str, Vec<String>> = Phase::ALL
                .iter()
                .map(|p| {
                    let v = r
                        .scripts(*p)
                        .into_iter()
                        .map(|s| format!("{}/{}", s.element, s.name))
                        .collect();
                    (p.dir(), v)
                })
                .collect();
            let out = serde_json::json!({
                "elements": r.elements().iter().map(|e| &e.name).collect::<Vec<_>>(),
                "provided": r.provided(),
                "environment_files": r.environment_files(),
                "block_device_default": r.block_device_default(),
                "scripts": scripts,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(())
        }
        Err(Error::Problems(problems)) => {
            for p in problems {
                eprintln!("{p}");
            }
            std::process::exit(1);
        }
        Err(e) => Err(e.into()),
    }
}
