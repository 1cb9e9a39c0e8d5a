//! `cargo xtask dist [--install PREFIX] [--debug]`: build every tool (each binary target of a
//! package under `tools/`, found with `cargo metadata`, so a new tool needs no change here),
//! then run each with `DISKFORGE_DIST_DIR=target/dist` so that it writes its own man pages and
//! bash/zsh/fish completions from its clap definition (`diskforge_cli::dist_hook`, the first
//! line of every tool's `main`):
//!
//! - `target/dist/man/TOOL.1`, `target/dist/man/TOOL-SUB.1` (one per subcommand);
//! - `target/dist/completions/bash/TOOL`, `…/zsh/_TOOL`, `…/fish/TOOL.fish`.
//!
//! A tool that writes no man page or bash completion fails the task (its `main` lacks the
//! hook). `--install PREFIX` then copies binaries to `PREFIX/bin`, man pages to
//! `PREFIX/share/man/man1`, and completions to `PREFIX/share/bash-completion/completions`,
//! `PREFIX/share/zsh/site-functions` and `PREFIX/share/fish/vendor_completions.d`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use xshell::{Shell, cmd};

use crate::flags::DistArgs;

/// Where each generated directory goes under an install prefix.
const INSTALL_DIRS: &[(&str, &str)] = &[
    ("man", "share/man/man1"),
    ("completions/bash", "share/bash-completion/completions"),
    ("completions/zsh", "share/zsh/site-functions"),
    ("completions/fish", "share/fish/vendor_completions.d"),
];

/// A tool binary: its package and its binary name.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Tool {
    package: String,
    bin: String,
}

/// Run `cargo xtask dist`.
pub fn run(sh: &Shell, args: &DistArgs) -> Result<()> {
    let meta = metadata(sh)?;
    let tools = tools(&meta, &crate::project_root())?;
    let target_dir = meta["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("cargo metadata: no target_directory")?;
    let profile = if args.debug { "debug" } else { "release" };
    let packages: Vec<String> = tools
        .iter()
        .flat_map(|t| ["-p".to_owned(), t.package.clone()])
        .collect();
    let release = (!args.debug).then_some("--release");
    cmd!(sh, "cargo build --locked --bins {release...} {packages...}")
        .run()
        .context("building the tools")?;
    let bin_dir = target_dir.join(profile);
    let out = target_dir.join("dist");
    for sub in ["man", "completions"] {
        let d = out.join(sub);
        if d.exists() {
            std::fs::remove_dir_all(&d).with_context(|| format!("removing {}", d.display()))?;
        }
    }
    for t in &tools {
        let exe = bin_dir.join(&t.bin);
        cmd!(sh, "{exe}")
            .env("DISKFORGE_DIST_DIR", &out)
            .quiet()
            .ignore_stdout()
            .run()
            .with_context(|| format!("{} with DISKFORGE_DIST_DIR", t.bin))?;
        for f in [
            format!("man/{}.1", t.bin),
            format!("completions/bash/{}", t.bin),
        ] {
            if !out.join(&f).is_file() {
                bail!(
                    "{} wrote no {f}: does its main start with `diskforge_cli::dist_hook`?",
                    t.bin
                );
            }
        }
    }
    let pages = count_files(&out.join("man"))?;
    eprintln!(
        "dist: {} tools, {pages} man pages, completions for bash, zsh, fish in {}",
        tools.len(),
        out.display()
    );
    if let Some(prefix) = &args.install {
        install(&tools, &bin_dir, &out, prefix)?;
    }
    Ok(())
}

fn metadata(sh: &Shell) -> Result<serde_json::Value> {
    let json = cmd!(sh, "cargo metadata --no-deps --format-version 1 --locked")
        .quiet()
        .read()
        .context("cargo metadata")?;
    serde_json::from_str(&json).context("parsing cargo metadata")
}

/// Every binary target of the workspace packages that live under `ROOT/tools/`, sorted.
fn tools(meta: &serde_json::Value, root: &Path) -> Result<Vec<Tool>> {
    let tools_dir = root.join("tools");
    let mut out = Vec::new();
    for p in meta["packages"]
        .as_array()
        .context("cargo metadata: no packages")?
    {
        let manifest = p["manifest_path"].as_str().unwrap_or_default();
        if !Path::new(manifest).starts_with(&tools_dir) {
            continue;
        }
        let package = p["name"].as_str().unwrap_or_default().to_owned();
        for t in p["targets"].as_array().into_iter().flatten() {
            let is_bin = t["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"));
            if is_bin && let Some(bin) = t["name"].as_str() {
                out.push(Tool {
                    package: package.clone(),
                    bin: bin.to_owned(),
                });
            }
        }
    }
    if out.is_empty() {
        bail!("no tool binaries under {}", tools_dir.display());
    }
    out.sort_by(|a, b| a.bin.cmp(&b.bin));
    Ok(out)
}

fn count_files(dir: &Path) -> Result<usize> {
    Ok(std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .count())
}

/// Copy binaries, man pages and completions under `prefix` (directories created as needed).
fn install(tools: &[Tool], bin_dir: &Path, out: &Path, prefix: &Path) -> Result<()> {
    let mut n = 0;
    let dest = prefix.join("bin");
    for t in tools {
        copy_into(&bin_dir.join(&t.bin), &dest)?;
        n += 1;
    }
    for (from, to) in INSTALL_DIRS {
        let dest = prefix.join(to);
        let src = out.join(from);
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&src)
            .with_context(|| format!("reading {}", src.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .with_context(|| format!("reading {}", src.display()))?;
        entries.sort();
        for f in entries {
            copy_into(&f, &dest)?;
            n += 1;
        }
    }
    eprintln!("dist: installed {n} files under {}", prefix.display());
    Ok(())
}

fn copy_into(file: &Path, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = file
        .file_name()
        .with_context(|| format!("{} has no file name", file.display()))?;
    std::fs::copy(file, dir.join(name))
        .with_context(|| format!("copying {} to {}", file.display(), dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every tool opts into dist with the hook and checks its output in tests/help.rs (which
    /// runs the hook and checks the man pages with `man` and the completions with `bash`).
    #[test]
    fn every_tool_has_the_dist_hook_and_its_help_test() {
        let root = crate::project_root();
        let mut problems = Vec::new();
        let mut n = 0;
        for e in std::fs::read_dir(root.join("tools")).unwrap().flatten() {
            let dir = e.path();
            n += 1;
            let main = std::fs::read_to_string(dir.join("src/main.rs")).unwrap_or_default();
            if !main.contains("diskforge_cli::dist_hook") {
                problems.push(format!(
                    "{}: main lacks diskforge_cli::dist_hook",
                    dir.display()
                ));
            }
            let help = std::fs::read_to_string(dir.join("tests/help.rs")).unwrap_or_default();
            if !help.contains("check_dist(") || !help.contains("assert_fits_columns(") {
                problems.push(format!(
                    "{}: tests/help.rs does not check help width and dist output",
                    dir.display()
                ));
            }
        }
        assert!(n >= 7, "only {n} tools found");
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    #[test]
    fn tools_are_the_bin_targets_under_tools() {
        let meta = serde_json::json!({ "packages": [
            { "name": "dfloop", "manifest_path": "/r/tools/dfloop/Cargo.toml",
              "targets": [ { "name": "dfloop", "kind": ["bin"] },
                           { "name": "cli", "kind": ["test"] } ] },
            { "name": "diskforge-loop", "manifest_path": "/r/crates/loop/Cargo.toml",
              "targets": [ { "name": "diskforge_loop", "kind": ["lib"] } ] },
            { "name": "dfimg", "manifest_path": "/r/tools/dfimg/Cargo.toml",
              "targets": [ { "name": "dfimg", "kind": ["bin"] } ] },
        ]});
        let t = tools(&meta, Path::new("/r")).unwrap();
        let bins: Vec<&str> = t.iter().map(|t| t.bin.as_str()).collect();
        assert_eq!(bins, ["dfimg", "dfloop"]);
        assert!(tools(&serde_json::json!({ "packages": [] }), Path::new("/r")).is_err());
    }
}
