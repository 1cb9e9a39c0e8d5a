//! Scanning the resolved elements' files the way dib's `generate_hooks` and dib-run-parts
//! see them: duplicated hooks, each phase's scripts (install types applied, exec bits
//! checked) and the `environment.d` files.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::order::{is_env_name, is_script_name, sort_n};
use crate::{
    Element, Error, Phase, Problem, ProblemKind, ResolveOptions, Result, Script, SkipReason,
    Skipped,
};

/// Subdirectories of an element that dib does not copy into the hooks dir.
pub(crate) const SKIPPED_SUBDIRS: [&str; 2] = ["tests", "__pycache__"];

/// What the scan found.
pub(crate) struct Hooks {
    pub(crate) scripts: BTreeMap<Phase, Vec<Script>>,
    pub(crate) skipped: Vec<Skipped>,
    pub(crate) environment_files: Vec<PathBuf>,
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Names of the entries of `dir`, sorted bytewise; empty when it does not exist.
fn entries(dir: &Path) -> Result<Vec<String>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("listing", dir)(e)),
    };
    let mut v = Vec::new();
    for e in rd {
        let e = e.map_err(Error::io("listing", dir))?;
        if let Some(n) = e.file_name().to_str() {
            v.push(n.to_owned());
        }
    }
    v.sort();
    Ok(v)
}

/// Install-type directories `<prefix>-<type>-install` selected by the environment, as dib's
/// `install-types` element does: `DIB_INSTALLTYPE_<prefix>` (`_` → `-`) picks
/// `<prefix>-<type>-install`; every other prefix gets `DIB_DEFAULT_INSTALLTYPE`.
fn selected_install_dirs(
    available: &BTreeSet<String>,
    env: &BTreeMap<String, String>,
    default_type: &str,
) -> BTreeSet<String> {
    let mut selected = BTreeSet::new();
    let mut specified = BTreeSet::new();
    for (k, v) in env {
        if let Some(prefix) = k.strip_prefix("DIB_INSTALLTYPE_") {
            let prefix = prefix.replace('_', "-");
            let dir = format!("{prefix}-{v}-install");
            if available.contains(&dir) {
                selected.insert(dir);
            }
            specified.insert(prefix);
        }
    }
    let suffix = format!("-{default_type}-install");
    for d in available {
        if let Some(prefix) = d.strip_suffix(&suffix)
            && !specified.contains(prefix)
        {
            selected.insert(d.clone());
        }
    }
    selected
}

/// Two elements with the same top-level file in a subdirectory (`install.d/10-foo`,
/// `environment.d/10-x`, `bin/tool`): dib's `copy_hooks_not_overwrite` refuses those.
fn check_duplicates(elements: &[Element], problems: &mut Vec<Problem>) -> Result<()> {
    let mut owners: BTreeMap<String, Vec<&Element>> = BTreeMap::new();
    for e in elements {
        for sub in entries(&e.path)? {
            let sp = e.path.join(&sub);
            if !sp.is_dir() || SKIPPED_SUBDIRS.contains(&sub.as_str()) {
                continue;
            }
            for f in entries(&sp)? {
                if sp.join(&f).is_file() {
                    owners.entry(format!("{sub}/{f}")).or_default().push(e);
                }
            }
        }
    }
    for (hook, els) in owners {
        if els.len() > 1 {
            problems.push(Problem {
                kind: ProblemKind::DuplicateHook {
                    hook,
                    elements: els.iter().map(|e| e.name.clone()).collect(),
                },
                chain: els[1].chain.clone(),
            });
        }
    }
    Ok(())
}

/// A file of a phase directory: its name there, its path, and the install-type directory it
/// comes from.
type Candidate = (String, PathBuf, Option<String>);

/// The files element `e` has for `phase`, install-type directories included.
fn candidates(e: &Element, phase: Phase, selected: &BTreeSet<String>) -> Result<Vec<Candidate>> {
    let pdir = e.path.join(phase.dir());
    let mut out = Vec::new();
    for f in entries(&pdir)? {
        out.push((f.clone(), pdir.join(&f), None));
    }
    if phase == Phase::Install {
        for d in selected {
            let tdir = pdir.join(d);
            if tdir.is_dir() {
                for f in entries(&tdir)? {
                    out.push((f.clone(), tdir.join(&f), Some(d.clone())));
                }
            }
        }
    }
    Ok(out.into_iter().filter(|(_, p, _)| p.is_file()).collect())
}

/// Scan every element as dib would copy and run it: duplicated hooks, scripts per phase in
/// run order (exec bits and names checked), skipped files and environment files.
pub(crate) fn scan_hooks(
    elements: &[Element],
    opts: &ResolveOptions,
    default_type: &str,
    problems: &mut Vec<Problem>,
) -> Result<Hooks> {
    check_duplicates(elements, problems)?;
    let mut type_dirs = BTreeSet::new();
    for e in elements {
        let idir = e.path.join(Phase::Install.dir());
        for d in entries(&idir)? {
            if d.ends_with("-install") && idir.join(&d).is_dir() {
                type_dirs.insert(d);
            }
        }
    }
    let selected = selected_install_dirs(&type_dirs, &opts.env, default_type);

    let mut scripts = BTreeMap::new();
    let mut skipped = Vec::new();
    for phase in Phase::ALL {
        // name → script; the first element wins (same-path duplicates are reported above)
        let mut merged: BTreeMap<String, Script> = BTreeMap::new();
        for e in elements {
            for (name, path, install_dir) in candidates(e, phase, &selected)? {
                let good_name = is_script_name(&name);
                if !good_name || !is_executable(&path) {
                    // Files with other names are the element's data (`foo.sh`, `foo.init`
                    // next to the script that uses them): dib skips them and so do we.
                    let reason = if good_name {
                        SkipReason::NotExecutable
                    } else {
                        SkipReason::Name
                    };
                    if reason == SkipReason::NotExecutable && !opts.allow_nonexec {
                        problems.push(Problem {
                            kind: ProblemKind::NotExecutable {
                                element: e.name.clone(),
                                path: path.clone(),
                            },
                            chain: e.chain.clone(),
                        });
                    }
                    skipped.push(Skipped {
                        element: e.name.clone(),
                        phase,
                        path,
                        reason,
                    });
                    continue;
                }
                if let Some(existing) = merged.get(&name) {
                    // An install-type link that shadows another script.
                    if existing.install_dir.is_some() || install_dir.is_some() {
                        problems.push(Problem {
                            kind: ProblemKind::DuplicateHook {
                                hook: format!("{}/{name}", phase.dir()),
                                elements: vec![existing.element.clone(), e.name.clone()],
                            },
                            chain: e.chain.clone(),
                        });
                    }
                    continue;
                }
                let script = Script {
                    element: e.name.clone(),
                    phase,
                    name: name.clone(),
                    path,
                    install_dir,
                };
                merged.insert(name, script);
            }
        }
        let mut list: Vec<Script> = merged.into_values().collect();
        list.sort_by(|a, b| sort_n(&a.name, &b.name));
        scripts.insert(phase, list);
    }
    Ok(Hooks {
        scripts,
        skipped,
        environment_files: environment_files(elements)?,
    })
}

/// `environment.d` files in byte order of their names, the first element's copy of a name.
fn environment_files(elements: &[Element]) -> Result<Vec<PathBuf>> {
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for e in elements {
        let dir = e.path.join("environment.d");
        for f in entries(&dir)? {
            let p = dir.join(&f);
            if p.is_file() && is_env_name(&f) && !files.iter().any(|(n, _)| *n == f) {
                files.push((f, p));
            }
        }
    }
    files.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok(files.into_iter().map(|(_, p)| p).collect())
}
