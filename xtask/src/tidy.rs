//! Repository rules, checked as a test (`cargo test -p xtask`): every library crate has a
//! README, an example and a `//!` header; every tool and the xtask modules open with `//!`;
//! no file outside `crates/cmd` and `xtask` spawns processes directly.

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    fn root() -> PathBuf {
        crate::project_root()
    }

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n == "target") {
                    continue;
                }
                rust_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    #[test]
    fn every_crate_has_readme_example_and_header() {
        let mut problems = Vec::new();
        for e in std::fs::read_dir(root().join("crates")).unwrap().flatten() {
            let dir = e.path();
            let name = dir.file_name().unwrap().to_string_lossy().into_owned();
            if !dir.join("README.md").is_file() {
                problems.push(format!("crates/{name}: no README.md"));
            }
            let has_example = std::fs::read_dir(dir.join("examples"))
                .map(|rd| {
                    rd.flatten()
                        .any(|f| f.path().extension().is_some_and(|x| x == "rs"))
                })
                .unwrap_or(false);
            if !has_example {
                problems.push(format!("crates/{name}: no examples/*.rs"));
            }
            let lib = std::fs::read_to_string(dir.join("src/lib.rs")).unwrap_or_default();
            if !lib.starts_with("//!") {
                problems.push(format!("crates/{name}: src/lib.rs does not open with //!"));
            }
        }
        for e in std::fs::read_dir(root().join("tools")).unwrap().flatten() {
            let main = std::fs::read_to_string(e.path().join("src/main.rs")).unwrap_or_default();
            if !main.starts_with("//!") {
                problems.push(format!(
                    "{}: src/main.rs does not open with //!",
                    e.path().display()
                ));
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    #[test]
    fn processes_are_spawned_only_through_diskforge_cmd() {
        let mut files = Vec::new();
        for d in ["crates", "tools", "tests", "vm-tests"] {
            rust_files(&root().join(d), &mut files);
        }
        let offenders: Vec<String> = files
            .iter()
            .filter(|p| !p.starts_with(root().join("crates/cmd")))
            .filter(|p| {
                let s = std::fs::read_to_string(p).unwrap_or_default();
                s.contains("process::Command::new") || s.contains("duct::cmd(")
            })
            .map(|p| p.display().to_string())
            .collect();
        // tools/diskforge exec()s the tool it forwards to (no child process is run).
        let offenders: Vec<_> = offenders
            .into_iter()
            .filter(|p| !p.ends_with("tools/diskforge/src/main.rs"))
            .collect();
        assert!(
            offenders.is_empty(),
            "spawn through diskforge_cmd::Cmd: {offenders:?}"
        );
    }
}
