//! Shared command-line plumbing for the diskforge tools: man pages (`clap_mangen`) and shell
//! completions (`clap_complete`) generated from a tool's own `clap::Command`, so they never
//! drift from `--help`.
//!
//! [`dist_hook`] is the one line each tool's `main` starts with: when the environment variable
//! [`DIST_DIR_ENV`] names a directory, the tool writes its man pages and completions there
//! ([`write_dist`]) and exits; otherwise it returns at once. `cargo xtask dist` builds every
//! tool and runs it that way, so adding a tool needs no change to xtask.
//!
//! Layout written under the directory (also what `cargo xtask dist --install` copies):
//! - `man/TOOL.1` and `man/TOOL-SUB.1` for every subcommand, nested ones as
//!   `TOOL-SUB-SUBSUB.1` (`help` is left out);
//! - `completions/bash/TOOL`, `completions/zsh/_TOOL`, `completions/fish/TOOL.fish`.
//!
//! Unlike the other diskforge libraries, [`dist_hook`] prints (the error, on stderr) and exits
//! the process: it runs in a tool's `main`, in place of the tool. [`write_dist`] does neither.
//!
//! Follows the `clap_mangen` and `clap_complete` conventions; man pages are section 1.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use clap::{Command, CommandFactory};
use clap_complete::Shell;

/// The environment variable that turns a tool into its own man page and completion writer:
/// set it to a directory and run the tool (any arguments are ignored).
pub const DIST_DIR_ENV: &str = "DISKFORGE_DIST_DIR";

/// Errors from [`write_dist`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Creating a directory or writing a file failed.
    #[error("writing {path}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// The files [`write_dist`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DistFiles {
    /// Man pages (section 1), the tool's own first, then one per subcommand.
    pub man: Vec<PathBuf>,
    /// Completion scripts, one per shell (bash, zsh, fish).
    pub completions: Vec<PathBuf>,
}

/// The completion shells and the file name each expects under `completions/SHELL/`
/// (the names bash-completion, zsh's `fpath` and fish's vendor directory look for).
const SHELLS: &[(Shell, &str, &str)] = &[
    (Shell::Bash, "bash", ""),
    (Shell::Zsh, "zsh", "_"),
    (Shell::Fish, "fish", ""),
];

/// Call first in a tool's `main`: when [`DIST_DIR_ENV`] is set, write the man pages and
/// completions of `T`'s command into that directory and exit (0 on success, 1 with the error
/// on stderr); when it is not set, return at once.
pub fn dist_hook<T: CommandFactory>() {
    dist_hook_with(T::command);
}

/// [`dist_hook`] for a tool whose command is built by a function rather than derived.
pub fn dist_hook_with(command: impl FnOnce() -> Command) {
    let Some(dir) = std::env::var_os(DIST_DIR_ENV) else {
        return;
    };
    let cmd = command();
    let name = cmd.get_name().to_owned();
    match write_dist(cmd, Path::new(&dir)) {
        Ok(_) => std::process::exit(0),
        Err(e) => {
            eprintln!("{name}: {e}: {}", source_text(&e));
            std::process::exit(1);
        }
    }
}

fn source_text(e: &Error) -> String {
    match e {
        Error::Write { source, .. } => source.to_string(),
    }
}

/// Write the man pages and the bash, zsh and fish completions of `cmd` under `dir` (layout in
/// the crate documentation), creating directories as needed. The tool's name is
/// `cmd.get_name()`.
pub fn write_dist(cmd: Command, dir: &Path) -> Result<DistFiles, Error> {
    let mut cmd = cmd;
    let name = cmd.get_name().to_owned();
    cmd.set_bin_name(&name);
    cmd.build();
    let mut files = DistFiles::default();
    let man_dir = dir.join("man");
    create_dir(&man_dir)?;
    write_man_pages(&cmd, &man_dir, &mut files.man)?;
    for (shell, sub, prefix) in SHELLS {
        let shell_dir = dir.join("completions").join(sub);
        create_dir(&shell_dir)?;
        let file_name = match shell {
            Shell::Fish => format!("{name}.fish"),
            _ => format!("{prefix}{name}"),
        };
        let path = shell_dir.join(file_name);
        let mut buf = Vec::new();
        clap_complete::generate(*shell, &mut cmd, &name, &mut buf);
        write_file(&path, &buf)?;
        files.completions.push(path);
    }
    Ok(files)
}

/// Render `cmd`'s page, then recurse into its subcommands. Page and file names come from
/// clap's display names (`TOOL-SUB`, set when the command was built).
fn write_man_pages(cmd: &Command, dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), Error> {
    let man = clap_mangen::Man::new(cmd.clone());
    let path = dir.join(man.get_filename());
    let mut buf = Vec::new();
    man.render(&mut buf).map_err(|source| Error::Write {
        path: path.clone(),
        source,
    })?;
    write_file(&path, &buf)?;
    out.push(path);
    for sub in cmd.get_subcommands() {
        if sub.get_name() == "help" || sub.is_hide_set() {
            continue;
        }
        write_man_pages(sub, dir, out)?;
    }
    Ok(())
}

fn create_dir(path: &Path) -> Result<(), Error> {
    fs::create_dir_all(path).map_err(|source| Error::Write {
        path: path.to_owned(),
        source,
    })
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    fs::write(path, bytes).map_err(|source| Error::Write {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction};

    fn sample() -> Command {
        Command::new("dfsample")
            .about("A sample tool")
            .subcommand(
                Command::new("attach")
                    .about("Attach a file")
                    .arg(Arg::new("file").required(true))
                    .subcommand(Command::new("deeper").about("A nested subcommand")),
            )
            .subcommand(
                Command::new("list")
                    .about("List things")
                    .arg(Arg::new("json").long("json").action(ArgAction::SetTrue)),
            )
    }

    #[test]
    fn writes_a_page_per_subcommand_and_three_completions() -> Result<(), Error> {
        let dir = tempfile::tempdir().map_err(|source| Error::Write {
            path: PathBuf::from("tempdir"),
            source,
        })?;
        let files = write_dist(sample(), dir.path())?;
        let names: Vec<String> = files
            .man
            .iter()
            .filter_map(|p| p.file_name()?.to_str().map(String::from))
            .collect();
        assert_eq!(
            names,
            [
                "dfsample.1",
                "dfsample-attach.1",
                "dfsample-attach-deeper.1",
                "dfsample-list.1"
            ]
        );
        let man = fs::read_to_string(dir.path().join("man/dfsample-list.1")).map_err(|source| {
            Error::Write {
                path: PathBuf::from("read"),
                source,
            }
        })?;
        assert!(man.contains(".TH dfsample-list 1"), "{man}");
        assert!(man.contains("json"), "{man}");
        for rel in [
            "completions/bash/dfsample",
            "completions/zsh/_dfsample",
            "completions/fish/dfsample.fish",
        ] {
            let text = fs::read_to_string(dir.path().join(rel)).map_err(|source| Error::Write {
                path: PathBuf::from(rel),
                source,
            })?;
            assert!(text.contains("attach"), "{rel}: {text}");
        }
        Ok(())
    }

    #[test]
    fn unwritable_dir_names_the_path() {
        let err = write_dist(sample(), Path::new("/proc/version/sub"));
        match err {
            Err(Error::Write { path, .. }) => assert_eq!(path, Path::new("/proc/version/sub/man")),
            other => panic!("expected a write error, got {other:?}"),
        }
    }
}
