//! A tool's command line as its users meet it: every `--help` page (for the 80-column
//! snapshots in `tools/*/tests/help.rs`) and the man pages and completions it writes through
//! `diskforge_cli::dist_hook`, checked with `man` and `bash` themselves.

use std::path::Path;

use diskforge_cmd::Cmd;

/// Width every help line must fit in (STYLE.md: help fits 80 columns).
pub const HELP_COLUMNS: usize = 80;

/// One `--help` page: the page name (`dfloop`, `dfloop-attach`, …, as the man page is named)
/// and the text the tool printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelpPage {
    /// `TOOL` or `TOOL-SUB[-SUBSUB]`.
    pub name: String,
    /// The arguments that printed it, e.g. `["attach", "--help"]`.
    pub args: Vec<String>,
    /// What `TOOL ARGS` printed on stdout.
    pub text: String,
}

/// Every help page of the tool binary `bin` named `name`: `bin --help`, then
/// `bin SUB --help` for each subcommand listed under `Commands:`, recursively (`help` itself
/// left out). Panics when a page cannot be read (this serves tests).
pub fn help_pages(bin: &str, name: &str) -> Vec<HelpPage> {
    let mut pages = Vec::new();
    collect(bin, name, &[], &mut pages);
    pages
}

fn collect(bin: &str, name: &str, path: &[String], out: &mut Vec<HelpPage>) {
    let mut args: Vec<String> = path.to_vec();
    args.push("--help".into());
    let text = match Cmd::new(bin).args(&args).read() {
        Ok(t) => t,
        Err(e) => panic!("{bin} {args:?}: {e}"),
    };
    let subs = subcommands(&text);
    out.push(HelpPage {
        name: name.to_owned(),
        args,
        text,
    });
    for sub in subs {
        let mut p = path.to_vec();
        p.push(sub.clone());
        collect(bin, &format!("{name}-{sub}"), &p, out);
    }
}

/// The subcommand names listed under `Commands:` in a clap help text (not `help`).
pub fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim_end() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|s| *s != "help")
        .map(str::to_owned)
        .collect()
}

/// Panic naming the page and line when a line of `page` is wider than [`HELP_COLUMNS`].
pub fn assert_fits_columns(page: &HelpPage) {
    for line in page.text.lines() {
        assert!(
            line.chars().count() <= HELP_COLUMNS,
            "{} ({:?}): line over {HELP_COLUMNS} columns: {line:?}",
            page.name,
            page.args
        );
    }
}

/// Run `bin` with `DISKFORGE_DIST_DIR=dir` and check what it wrote: a man page per help page
/// (`man -l` renders each, naming the page), and bash completions that `bash` loads and that
/// complete `first_sub`'s first two letters to it. Panics on any failure.
pub fn check_dist(bin: &str, pages: &[HelpPage], dir: &Path) {
    if let Err(e) = Cmd::new(bin).env("DISKFORGE_DIST_DIR", dir).run() {
        panic!("{bin} with DISKFORGE_DIST_DIR: {e}");
    }
    let Some(tool) = pages.first().map(|p| p.name.clone()) else {
        panic!("no help pages for {bin}");
    };
    for page in pages {
        let man = dir.join("man").join(format!("{}.1", page.name));
        let text = match Cmd::new("man")
            .arg("-l")
            .arg(&man)
            .env("MANWIDTH", "80")
            .env("MAN_KEEP_FORMATTING", "0")
            .read()
        {
            Ok(t) => t,
            Err(e) => panic!("man -l {}: {e}", man.display()),
        };
        assert!(text.contains(&page.name), "{}:\n{text}", man.display());
    }
    let bash = dir.join("completions/bash").join(&tool);
    let Some(first_sub) = subcommands(&pages[0].text).into_iter().next() else {
        // A tool without subcommands: loading the script is the check.
        let r = Cmd::new("bash")
            .arg("-c")
            .arg("source \"$1\" && complete -p \"$2\"")
            .args(["bash".as_ref(), bash.as_os_str(), tool.as_ref()])
            .run();
        if let Err(e) = r {
            panic!("bash completions {}: {e}", bash.display());
        }
        return;
    };
    let prefix: String = first_sub.chars().take(2).collect();
    // Load the script, find the function it registered for the tool, and call it the way
    // bash's programmable completion does for `TOOL PREFIX<TAB>`.
    let script = r#"source "$1" || exit 1
spec=$(complete -p "$2") || exit 1
f=${spec#*-F }; f=${f%% *}
COMP_WORDS=("$2" "$3"); COMP_CWORD=1; COMP_LINE="$2 $3"; COMP_POINT=${#COMP_LINE}
"$f" "$2" "$3" "$2"
printf '%s\n' "${COMPREPLY[@]}""#;
    let out = match Cmd::new("bash")
        .arg("-c")
        .arg(script)
        .args([
            "bash".as_ref(),
            bash.as_os_str(),
            tool.as_ref(),
            prefix.as_ref(),
        ])
        .read()
    {
        Ok(t) => t,
        Err(e) => panic!("bash completions {}: {e}", bash.display()),
    };
    assert!(
        out.lines().any(|l| l.trim() == first_sub),
        "{tool} {prefix}<TAB> does not offer {first_sub}: {out:?}"
    );
    for rel in [format!("zsh/_{tool}"), format!("fish/{tool}.fish")] {
        let p = dir.join("completions").join(rel);
        let ok = std::fs::metadata(&p).map(|m| m.len() > 0).unwrap_or(false);
        assert!(ok, "missing or empty {}", p.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subcommands_come_from_the_commands_section_only() {
        let help = "About\n\nUsage: t <COMMAND>\n\nCommands:\n  info     Show it\n  check    Check it (exit 3: corrupt, 4: leaks, 5: not\n           checkable)\n  help     Print this message\n\nOptions:\n  -h, --help  Print help\n";
        assert_eq!(subcommands(help), ["info", "check"]);
        assert!(subcommands("Usage: t [OPTIONS]\n\nOptions:\n  -h\n").is_empty());
    }
}
