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

    /// No library crate has modules that import each other in a cycle: the `use crate::…`,
    /// `crate::…` paths and `super::…` paths of every module (its `#[cfg(test)]` module,
    /// comments and doc links left out) give an import graph per crate, which must have no
    /// cycle. The crate root (`lib.rs`) is left out: it declares the modules, the error type
    /// and the re-exports every module may use. Also checked on planted cycles, so it can fail.
    #[test]
    fn library_modules_do_not_import_in_a_cycle() {
        use std::collections::{BTreeMap, BTreeSet};

        /// Module path (`a::b`, `crate` for lib.rs) of a file under `src`.
        fn module_of(src: &Path, file: &Path) -> String {
            let rel = file.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|l| l == "mod" || l == "lib") {
                parts.pop();
            }
            if parts.is_empty() {
                "crate".into()
            } else {
                parts.join("::")
            }
        }

        /// The source without comments, string literals and `#[cfg(test)]` items.
        fn code_of(text: &str) -> String {
            let mut out = String::new();
            for line in text.lines() {
                let mut in_str = false;
                let mut prev = ' ';
                let mut kept = String::new();
                let chars: Vec<char> = line.chars().collect();
                let mut i = 0;
                while i < chars.len() {
                    let c = chars[i];
                    if !in_str && c == '/' && chars.get(i + 1) == Some(&'/') {
                        break;
                    }
                    if c == '"' && prev != '\\' {
                        in_str = !in_str;
                    } else if !in_str {
                        kept.push(c);
                    }
                    prev = if prev == '\\' && c == '\\' { ' ' } else { c };
                    i += 1;
                }
                out.push_str(&kept);
                out.push('\n');
            }
            // Drop each `#[cfg(test)]` item (brace-balanced).
            while let Some(at) = out.find("#[cfg(test)]") {
                let Some(open) = out[at..].find('{').map(|o| at + o) else {
                    out.truncate(at);
                    break;
                };
                let mut depth = 0usize;
                let mut end = out.len();
                for (i, c) in out[open..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = open + i + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                out.replace_range(at..end, "");
            }
            out
        }

        /// The paths after every `prefix` (`crate::a::X`, `crate::{a::X, b}` give `a::X`, `b`).
        fn targets(code: &str, prefix: &str) -> Vec<String> {
            let ident = |s: &str| -> String {
                let p: String = s
                    .trim_start()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                p.trim_end_matches(':').to_owned()
            };
            let mut out = Vec::new();
            let mut rest = code;
            while let Some(at) = rest.find(prefix) {
                let before = rest[..at].chars().next_back();
                rest = &rest[at + prefix.len()..];
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                    continue;
                }
                if let Some(group) = rest.strip_prefix('{') {
                    let mut depth = 0usize;
                    let mut item = String::new();
                    for c in group.chars() {
                        match c {
                            '{' => depth += 1,
                            '}' if depth == 0 => break,
                            '}' => depth -= 1,
                            ',' if depth == 0 => {
                                out.push(ident(&item));
                                item.clear();
                                continue;
                            }
                            _ => {}
                        }
                        item.push(c);
                    }
                    out.push(ident(&item));
                } else {
                    out.push(ident(rest));
                }
            }
            out.retain(|t| !t.is_empty());
            out
        }

        /// Every import cycle among the modules under `src`, as `a -> b -> a`.
        fn cycles(src: &Path) -> Vec<String> {
            let mut files = Vec::new();
            rust_files(src, &mut files);
            let modules: BTreeMap<String, PathBuf> = files
                .iter()
                .map(|f| (module_of(src, f), f.clone()))
                .collect();
            let resolve = |path: String| -> Option<String> {
                // The longest module that the path names (`a::b::Item` → `a::b`).
                let mut p = path;
                loop {
                    if modules.contains_key(&p) {
                        return Some(p);
                    }
                    p = p.rsplit_once("::")?.0.to_owned();
                }
            };
            let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for (m, file) in &modules {
                if m == "crate" {
                    continue;
                }
                let code = code_of(&std::fs::read_to_string(file).unwrap());
                let parent = m.rsplit_once("::").map_or("", |(p, _)| p).to_owned();
                let mut to: Vec<String> = targets(&code, "crate::");
                for t in targets(&code, "super::") {
                    // `super::super::x` climbs once per `super`.
                    let (mut base, mut t) = (parent.clone(), t.as_str());
                    while let Some(rest) = t.strip_prefix("super::") {
                        base = base.rsplit_once("::").map_or("", |(p, _)| p).to_owned();
                        t = rest;
                    }
                    to.push(if base.is_empty() {
                        t.to_owned()
                    } else {
                        format!("{base}::{t}")
                    });
                }
                let edges = graph.entry(m.clone()).or_default();
                for t in to {
                    if let Some(t) = resolve(t)
                        && t != *m
                        && t != "crate"
                    {
                        edges.insert(t);
                    }
                }
            }
            // Depth-first search; a back edge closes a cycle.
            fn visit(
                m: &str,
                graph: &BTreeMap<String, BTreeSet<String>>,
                stack: &mut Vec<String>,
                done: &mut BTreeSet<String>,
                found: &mut BTreeSet<String>,
            ) {
                if let Some(i) = stack.iter().position(|s| s == m) {
                    let mut cycle = stack[i..].to_vec();
                    // One spelling per cycle: start at its smallest module.
                    let min = (0..cycle.len()).min_by_key(|&k| &cycle[k]).unwrap();
                    cycle.rotate_left(min);
                    cycle.push(cycle[0].clone());
                    found.insert(cycle.join(" -> "));
                    return;
                }
                if done.contains(m) {
                    return;
                }
                stack.push(m.to_owned());
                for t in graph.get(m).into_iter().flatten() {
                    visit(t, graph, stack, done, found);
                }
                stack.pop();
                done.insert(m.to_owned());
            }
            let mut found = BTreeSet::new();
            let mut done = BTreeSet::new();
            for m in graph.keys() {
                visit(m, &graph, &mut Vec::new(), &mut done, &mut found);
            }
            found.into_iter().collect()
        }

        // The detector itself: planted cycles are found, a layered crate passes.
        let planted = tempfile::tempdir().unwrap();
        let p = planted.path();
        std::fs::create_dir(p.join("net")).unwrap();
        for (f, text) in [
            ("lib.rs", "//! x\nmod a;\nmod b;\nmod net;\npub use a::A;\n"),
            (
                "a.rs",
                "use crate::{b::B, Error};\n// crate::c in a comment\n",
            ),
            (
                "b.rs",
                "use crate::net::wire::W;\nfn f() { let _ = \"crate::a\"; }\n",
            ),
            (
                "c.rs",
                "pub struct C;\n#[cfg(test)]\nmod tests { use crate::a::A; }\n",
            ),
            ("net/mod.rs", "mod wire;\n"),
            ("net/wire.rs", "use super::super::a::A;\nuse crate::c::C;\n"),
        ] {
            std::fs::write(p.join(f), text).unwrap();
        }
        assert_eq!(cycles(p), ["a -> b -> net::wire -> a"], "planted cycle");
        std::fs::write(p.join("net/wire.rs"), "use crate::c::C;\n").unwrap();
        assert!(cycles(p).is_empty(), "{:?}", cycles(p));

        let mut problems = Vec::new();
        for e in std::fs::read_dir(root().join("crates")).unwrap().flatten() {
            let src = e.path().join("src");
            if !src.join("lib.rs").is_file() {
                continue;
            }
            for c in cycles(&src) {
                problems.push(format!("{}: {c}", e.path().display()));
            }
        }
        assert!(
            problems.is_empty(),
            "modules importing each other (move the shared items into a leaf module):\n{}",
            problems.join("\n")
        );
    }
}
