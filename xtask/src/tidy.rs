//! Repository rules, checked as a test (`cargo test -p xtask`): every library crate has a
//! README and an example; every module (each `.rs` file under `crates/*/{src,examples,tests}`,
//! `tools/*/{src,tests}`, `xtask/src`, `tests/` and `vm-tests/src`) opens with a `//!` header;
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

    /// Why a module's text lacks a `//!` header: it must open with one (after `#![…]` inner
    /// attributes at most) that says something.
    fn header_problem(text: &str) -> Option<&'static str> {
        let mut lines = text.lines().skip_while(|l| l.starts_with("#!["));
        let first = lines.next().unwrap_or("");
        if !first.starts_with("//!") {
            return Some("does not open with a //! header");
        }
        let said: String = std::iter::once(first)
            .chain(lines)
            .take_while(|l| l.starts_with("//!"))
            .map(|l| l.trim_start_matches("//!").trim())
            .collect();
        if said.len() < 10 {
            return Some("//! header says nothing");
        }
        None
    }

    #[test]
    fn header_rule() {
        assert_eq!(header_problem("//! Loop devices.\nuse x;\n"), None);
        assert_eq!(
            header_problem("#![allow(dead_code)]\n//! Loop devices.\n"),
            None
        );
        assert!(header_problem("use x;\n//! Loop devices.\n").is_some());
        assert!(header_problem("// Loop devices.\n").is_some());
        assert!(header_problem("/// Loop devices.\nfn f() {}\n").is_some());
        assert!(header_problem("//!\nfn f() {}\n").is_some());
        assert!(header_problem("").is_some());
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
        }
        let mut files = Vec::new();
        for d in ["crates", "tools"] {
            for e in std::fs::read_dir(root().join(d)).unwrap().flatten() {
                for sub in ["src", "examples", "tests"] {
                    rust_files(&e.path().join(sub), &mut files);
                }
            }
        }
        for d in ["xtask/src", "tests", "vm-tests/src"] {
            rust_files(&root().join(d), &mut files);
        }
        // The walk must have found the crates' roots, or the check below proves nothing.
        for must in [
            "crates/cmd/src/lib.rs",
            "tools/dfloop/src/main.rs",
            "xtask/src/tidy.rs",
        ] {
            assert!(files.contains(&root().join(must)), "{must} not walked");
        }
        for f in &files {
            if let Some(why) = header_problem(&std::fs::read_to_string(f).unwrap_or_default()) {
                problems.push(format!("{}: {why}", f.display()));
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
