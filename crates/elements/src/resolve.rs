//! Element discovery and resolution: `element-deps`, `element-provides`, install types,
//! and every check that can be made before anything runs.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::packages::{PackageInstall, read_packages, read_pkg_map};
use crate::scan::scan_hooks;
use crate::{Error, Phase, Result};

/// The name every root element provides (dib refuses a build without one).
pub const OPERATING_SYSTEM: &str = "operating-system";
/// The element file in which an element declares the host programs its phases run.
pub const HOST_PROGRAMS_FILE: &str = "host-programs";
/// How often the provides/deps expansion is repeated to reach a fixed point.
const EXPANSION_ROUNDS: usize = 8;

/// What [`resolve`] needs besides the requested element names.
#[derive(Debug, Clone, Default)]
pub struct ResolveOptions {
    /// The elements path, earlier entries winning over later ones (dib's `ELEMENTS_PATH`
    /// split at `:`, with the directory of [`crate::shipped_elements`] appended last).
    pub elements_path: Vec<PathBuf>,
    /// Keep dib's behaviour of silently skipping phase files that are not executable or whose
    /// names dib-run-parts ignores, instead of reporting them as problems. Default: `false`.
    pub allow_nonexec: bool,
    /// Build variables that change resolution: `ARCH` (block-device file choice and the
    /// `vm` default; default: the host's), `DIB_DEFAULT_INSTALLTYPE` (default `source`) and
    /// every `DIB_INSTALLTYPE_<prefix>`. The caller passes them from its environment; the
    /// process environment is not read here.
    pub env: BTreeMap<String, String>,
}

/// One resolved element.
#[derive(Debug, Clone, Serialize)]
pub struct Element {
    /// Its name (the directory name).
    pub name: String,
    /// Its directory (symlinks resolved, as dib does).
    pub path: PathBuf,
    /// Its `element-deps`, in file order.
    pub deps: Vec<String>,
    /// Its `element-provides`, in file order.
    pub provides: Vec<String>,
    /// How it came in: a requested element, then each dependency down to this one.
    pub chain: Vec<String>,
    /// Its `package-installs.yaml`/`.json` entries.
    pub packages: Vec<PackageInstall>,
    /// Its `pkg-map` (JSON), if it has one.
    pub pkg_map: Option<serde_json::Value>,
    /// Host programs it declares in `host-programs` (checked at resolution).
    pub host_programs: Vec<String>,
}

/// One script of a phase, after merging all elements and applying install types.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Script {
    /// The element that ships it.
    pub element: String,
    /// Its phase.
    pub phase: Phase,
    /// Its name in the merged phase directory (what dib-run-parts runs).
    pub name: String,
    /// The file in the element's directory.
    pub path: PathBuf,
    /// For `install.d` scripts from a `<prefix>-<type>-install/` directory: that directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub install_dir: Option<String>,
}

/// Why a phase file does not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SkipReason {
    /// It is not executable (reported as a problem unless `allow_nonexec`).
    NotExecutable,
    /// Its name has characters outside `[0-9A-Za-z_-]` (dib-run-parts' rule).
    Name,
}

/// A file in a phase directory that does not run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// The element.
    pub element: String,
    /// The phase directory it is in.
    pub phase: Phase,
    /// The file.
    pub path: PathBuf,
    /// Why it does not run.
    pub reason: SkipReason,
}

/// What went wrong during resolution (see [`Problem`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ProblemKind {
    /// No element was requested.
    NoElements,
    /// An elements-path entry is not a directory.
    BadElementsPath {
        /// The entry.
        path: PathBuf,
    },
    /// No element of this name on the elements path, and no element provides it.
    MissingElement {
        /// The name.
        name: String,
    },
    /// An entry of this name is on the elements path but is not a usable directory (a
    /// symlink that loops or dangles, a directory we cannot read).
    BrokenElement {
        /// The name.
        name: String,
        /// The entry.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// Elements depend on each other in a circle.
    Cycle {
        /// The circle, its first element repeated at the end.
        cycle: Vec<String>,
    },
    /// Two elements provide the same name.
    ProvidedTwice {
        /// The name.
        name: String,
        /// The elements providing it.
        by: Vec<String>,
    },
    /// A requested element is also provided by another element (dib: "already provided").
    RequestedButProvided {
        /// The requested element.
        name: String,
        /// The element providing it.
        by: String,
    },
    /// No element provides `operating-system` (dib: "Please include an operating system
    /// element").
    NoOperatingSystem,
    /// A phase file that dib-run-parts would skip because it is not executable.
    NotExecutable {
        /// The element.
        element: String,
        /// The file.
        path: PathBuf,
    },
    /// Two elements ship the same hook file (dib: "There is a duplicated hook").
    DuplicateHook {
        /// The file relative to the hooks dir (`install.d/10-foo`).
        hook: String,
        /// The elements shipping it.
        elements: Vec<String>,
    },
    /// A host program an element declares in `host-programs` is not installed.
    MissingHostProgram {
        /// The element.
        element: String,
        /// The program.
        program: String,
        /// The Debian package that ships it, when known.
        package: Option<String>,
    },
    /// An element file could not be read or parsed.
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the field and value.
        message: String,
    },
}

/// A resolution problem and the dependency chain that led to it (requested element first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// What is wrong.
    #[serde(flatten)]
    pub kind: ProblemKind,
    /// Requested element → … → the element concerned (empty for global problems).
    pub chain: Vec<String>,
}

impl std::fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProblemKind::NoElements => write!(f, "no elements requested"),
            ProblemKind::BadElementsPath { path } => {
                write!(
                    f,
                    "elements path entry {} is not a directory",
                    path.display()
                )
            }
            ProblemKind::MissingElement { name } => write!(f, "element {name:?} not found"),
            ProblemKind::BrokenElement { name, path, reason } => write!(
                f,
                "element {name:?} cannot be used: {} {reason}",
                path.display()
            ),
            ProblemKind::Cycle { cycle } => write!(f, "dependency cycle {}", cycle.join(" → ")),
            ProblemKind::ProvidedTwice { name, by } => {
                write!(
                    f,
                    "{name:?} is provided by more than one element: {}",
                    by.join(", ")
                )
            }
            ProblemKind::RequestedButProvided { name, by } => {
                write!(f, "{name:?} was requested but is already provided by {by}")
            }
            ProblemKind::NoOperatingSystem => write!(
                f,
                "no element provides {OPERATING_SYSTEM:?}; include an operating system element"
            ),
            ProblemKind::NotExecutable { element, path } => write!(
                f,
                "{element}: {} is not executable and would be skipped (chmod +x it, or allow non-executable files)",
                path.display()
            ),
            ProblemKind::DuplicateHook { hook, elements } => {
                write!(
                    f,
                    "hook {hook} is shipped by more than one element: {}",
                    elements.join(", ")
                )
            }
            ProblemKind::MissingHostProgram {
                element,
                program,
                package,
            } => {
                write!(
                    f,
                    "{element} needs host program {program:?}, which is not installed"
                )?;
                if let Some(p) = package {
                    write!(f, " (install {p})")?;
                }
                Ok(())
            }
            ProblemKind::BadFile { path, message } => write!(f, "{}: {message}", path.display()),
        }
    }
}

impl Problem {
    /// [`ProblemKind::BadFile`] for `path` with `message`.
    pub(crate) fn bad_file(path: &Path, chain: &[String], message: String) -> Problem {
        Problem {
            kind: ProblemKind::BadFile {
                path: path.to_owned(),
                message,
            },
            chain: chain.to_vec(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.kind)?;
        match self.chain.len() {
            0 => Ok(()),
            1 => write!(f, " [requested: {}]", self.chain[0]),
            _ => write!(f, " [via {}]", self.chain.join(" → ")),
        }
    }
}

/// The outcome of [`resolve`]: the elements and everything derived from them.
#[derive(Debug, Clone, Serialize)]
pub struct Resolved {
    /// The requested elements (after dib's `vm` default of a block-device element).
    requested: Vec<String>,
    /// The elements path searched, earlier entries winning.
    elements_path: Vec<PathBuf>,
    /// Resolved elements in resolution order (breadth first from the requested ones).
    elements: Vec<Element>,
    /// Provided (virtual) names and the element providing each.
    provided: BTreeMap<String, String>,
    /// `DIB_DEFAULT_INSTALLTYPE` used for install types.
    default_install_type: String,
    /// Every phase's scripts in run order.
    scripts: BTreeMap<Phase, Vec<Script>>,
    /// Phase files that are not run (with `allow_nonexec`, or not named like scripts).
    skipped: Vec<Skipped>,
    /// `environment.d` files in the order they are sourced.
    environment_files: Vec<PathBuf>,
    /// The block-device configuration the elements default to.
    block_device_default: Option<PathBuf>,
}

impl Resolved {
    /// The resolved elements, in resolution order.
    pub fn elements(&self) -> &[Element] {
        &self.elements
    }

    /// The requested elements, as resolution saw them (dib adds `block-device-mbr`, or
    /// `block-device-efi` on arm64, to a `vm` build that names no `block-device-*`).
    pub fn requested(&self) -> &[String] {
        &self.requested
    }

    /// The elements path that was searched (earlier entries win).
    pub fn elements_path(&self) -> &[PathBuf] {
        &self.elements_path
    }

    /// Whether `name` is a resolved element or provided by one.
    pub fn has(&self, name: &str) -> bool {
        self.provided.contains_key(name) || self.elements.iter().any(|e| e.name == name)
    }

    /// The element called `name`.
    pub fn element(&self, name: &str) -> Option<&Element> {
        self.elements.iter().find(|e| e.name == name)
    }

    /// Provided names and the element that provides each.
    pub fn provided(&self) -> &BTreeMap<String, String> {
        &self.provided
    }

    /// The scripts of `phase`, merged across elements, in dib-run-parts order, with install
    /// types applied to `install.d`.
    pub fn scripts(&self, phase: Phase) -> Vec<Script> {
        self.scripts.get(&phase).cloned().unwrap_or_default()
    }

    /// The block-device configuration file of the first element (in resolution order) that
    /// has one: `block-device-<ARCH>.yaml` (`ppc64el` for both ppc64le spellings) before
    /// `block-device-default.yaml`, as dib's `block_device_create_config_file` searches.
    /// `DIB_BLOCK_DEVICE_CONFIG` overrides it; that is the caller's business.
    pub fn block_device_default(&self) -> Option<PathBuf> {
        self.block_device_default.clone()
    }

    /// The `environment.d` files of all elements in the order dib sources them (byte order of
    /// their names: dib sorts the full paths with `sort -n`, where every key is 0).
    pub fn environment_files(&self) -> Vec<PathBuf> {
        self.environment_files.clone()
    }

    /// Files in phase directories that will not run, and why: names outside
    /// `[0-9A-Za-z_-]` (elements keep data such as `foo.sh` next to their scripts), and, with
    /// [`ResolveOptions::allow_nonexec`], files that are not executable.
    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }

    /// `DIB_DEFAULT_INSTALLTYPE` as used for install types (default `source`).
    pub fn default_install_type(&self) -> &str {
        &self.default_install_type
    }
}

/// The host's architecture in dib's (Debian's) spelling.
pub(crate) fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "i386",
        "powerpc64" => "ppc64el",
        other => other,
    }
}

/// Read an `element-deps`/`element-provides` file: one name per line, blanks ignored.
fn read_name_set(path: &Path, problems: &mut Vec<Problem>, chain: &[String]) -> Vec<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mut out: Vec<String> = Vec::new();
            for l in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
                if !out.iter().any(|o| o == l) {
                    out.push(l.to_owned());
                }
            }
            out
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            problems.push(Problem {
                kind: ProblemKind::BadFile {
                    path: path.to_owned(),
                    message: format!("cannot read: {e}"),
                },
                chain: chain.to_vec(),
            });
            Vec::new()
        }
    }
}

/// Entries on the elements path that look like elements but cannot be used: name → (entry,
/// why). Reported only when that name is asked for.
type Broken = BTreeMap<String, (PathBuf, String)>;

/// Why entry `p` (not a directory when followed) cannot be an element, if it looks like one
/// (a symlink that loops or dangles); `None` for plain files.
fn broken_entry(p: &Path) -> Option<String> {
    let meta = std::fs::symlink_metadata(p).ok()?;
    if !meta.file_type().is_symlink() {
        return None;
    }
    match std::fs::metadata(p) {
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            Some("is a symlink that loops (ELOOP)".to_owned())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Some("is a symlink to nothing".to_owned())
        }
        Err(e) => Some(format!("cannot be followed: {e}")),
        Ok(_) => Some("is a symlink to something that is not a directory".to_owned()),
    }
}

/// Every element directory on the path: name → directory, earlier entries winning; and the
/// entries that cannot be used.
fn discover(paths: &[PathBuf], problems: &mut Vec<Problem>) -> (BTreeMap<String, PathBuf>, Broken) {
    let mut all = BTreeMap::new();
    let mut broken = Broken::new();
    for dir in paths.iter().rev() {
        let rd = match std::fs::read_dir(dir) {
            Ok(rd) if dir.is_dir() => rd,
            _ => {
                problems.push(Problem {
                    kind: ProblemKind::BadElementsPath { path: dir.clone() },
                    chain: Vec::new(),
                });
                continue;
            }
        };
        for entry in rd.flatten() {
            let p = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !p.is_dir() {
                if let Some(why) = broken_entry(&p) {
                    // An earlier path entry still wins over a broken later one.
                    all.remove(&name);
                    broken.insert(name, (p, why));
                }
                continue;
            }
            broken.remove(&name);
            let real = std::fs::canonicalize(&p).unwrap_or(p);
            if let Some(old) = all.insert(name.clone(), real.clone()) {
                tracing::debug!(element = %name, new = %real.display(), old = %old.display(), "element overrides");
            }
        }
    }
    (all, broken)
}

/// Breadth-first expansion of the requested names; names in `skip` (provided by an element
/// of the previous round) are not looked up.
struct Expansion {
    order: Vec<String>,
    parent: BTreeMap<String, String>,
    missing: Vec<String>,
}

fn expand(
    requested: &[String],
    deps: &mut dyn FnMut(&str) -> Option<Vec<String>>,
    skip: &BTreeSet<String>,
) -> Expansion {
    let mut queue: VecDeque<String> = requested.iter().cloned().collect();
    let mut seen = BTreeSet::new();
    let mut ex = Expansion {
        order: Vec::new(),
        parent: BTreeMap::new(),
        missing: Vec::new(),
    };
    while let Some(name) = queue.pop_front() {
        if !seen.insert(name.clone()) {
            continue;
        }
        if skip.contains(&name) && !requested.contains(&name) {
            continue;
        }
        let Some(ds) = deps(&name) else {
            ex.missing.push(name);
            continue;
        };
        ex.order.push(name.clone());
        for d in ds {
            if !seen.contains(&d) && !ex.parent.contains_key(&d) && !requested.contains(&d) {
                ex.parent.insert(d.clone(), name.clone());
            }
            queue.push_back(d);
        }
    }
    ex
}

fn chain_of(name: &str, parent: &BTreeMap<String, String>) -> Vec<String> {
    let mut chain = vec![name.to_owned()];
    let mut cur = name;
    while let Some(p) = parent.get(cur) {
        if chain.contains(p) {
            break;
        }
        chain.push(p.clone());
        cur = p;
    }
    chain.reverse();
    chain
}

/// Resolve `requested` elements: expand dependencies, check everything, and compute scripts,
/// environment files and the block-device default. Every problem found is returned at once
/// in [`Error::Problems`].
pub fn resolve(requested: &[String], opts: &ResolveOptions) -> Result<Resolved> {
    let arch = opts
        .env
        .get("ARCH")
        .cloned()
        .unwrap_or_else(|| host_arch().to_owned());
    let mut r = Resolver::new(requested, &arch, opts);
    let ex = r.expand_to_fixed_point();
    let providers = r.providers(&ex);
    r.check_names(&ex, &providers);
    r.check_cycles(&ex, &providers);
    let elements = r.elements(&ex);
    let default_install_type = opts
        .env
        .get("DIB_DEFAULT_INSTALLTYPE")
        .filter(|s| !s.is_empty())
        .cloned()
        .unwrap_or_else(|| "source".to_owned());
    let hooks = scan_hooks(&elements, opts, &default_install_type, &mut r.problems)?;
    if !r.problems.is_empty() {
        return Err(Error::Problems(r.problems));
    }
    Ok(Resolved {
        block_device_default: block_device_default(&elements, &arch),
        requested: r.requested,
        elements_path: opts.elements_path.clone(),
        elements,
        provided: providers
            .iter()
            .map(|(k, v)| (k.clone(), v[0].clone()))
            .collect(),
        default_install_type,
        scripts: hooks.scripts,
        skipped: hooks.skipped,
        environment_files: hooks.environment_files,
    })
}

/// The state of one resolution: every element on the path, what was read of them, and the
/// problems found so far.
struct Resolver {
    /// The requested names, deduplicated, with dib's `vm` default added.
    requested: Vec<String>,
    /// Every element on the path: name → directory.
    all: BTreeMap<String, PathBuf>,
    /// Entries that look like elements but cannot be used.
    broken: Broken,
    /// `element-deps` and `element-provides` of the elements looked at, read once.
    files: BTreeMap<String, (Vec<String>, Vec<String>)>,
    problems: Vec<Problem>,
}

impl Resolver {
    fn new(requested: &[String], arch: &str, opts: &ResolveOptions) -> Resolver {
        let mut problems = Vec::new();
        let mut req: Vec<String> = Vec::new();
        for r in requested {
            if !req.contains(r) {
                req.push(r.clone());
            }
        }
        if req.is_empty() {
            problems.push(Problem {
                kind: ProblemKind::NoElements,
                chain: Vec::new(),
            });
        }
        // dib's _arg_defaults_hack: `vm` without any block-device-* gets the old default.
        if req.iter().any(|r| r == "vm") && !req.iter().any(|r| r.starts_with("block-device-")) {
            let default = if arch == "arm64" || arch == "aarch64" {
                "block-device-efi"
            } else {
                "block-device-mbr"
            };
            req.push(default.to_owned());
        }
        let (all, broken) = discover(&opts.elements_path, &mut problems);
        Resolver {
            requested: req,
            all,
            broken,
            files: BTreeMap::new(),
            problems,
        }
    }

    /// `(deps, provides)` of element `name`, or `None` when no such element exists.
    fn read(&mut self, name: &str) -> Option<(Vec<String>, Vec<String>)> {
        let dir = self.all.get(name)?;
        if let Some(v) = self.files.get(name) {
            return Some(v.clone());
        }
        let chain = [name.to_owned()];
        let d = read_name_set(&dir.join("element-deps"), &mut self.problems, &chain);
        let p = read_name_set(&dir.join("element-provides"), &mut self.problems, &chain);
        self.files.insert(name.to_owned(), (d.clone(), p.clone()));
        Some((d, p))
    }

    /// Expand the requested elements until the set of provided names stops changing, so a
    /// name provided by an element found later is not looked up as an element.
    fn expand_to_fixed_point(&mut self) -> Expansion {
        let requested = self.requested.clone();
        let mut provided = BTreeSet::new();
        let mut ex = expand(&requested, &mut |n| self.read(n).map(|(d, _)| d), &provided);
        for _ in 0..EXPANSION_ROUNDS {
            let now: BTreeSet<String> = ex
                .order
                .iter()
                .filter_map(|n| self.read(n))
                .flat_map(|(_, p)| p)
                .collect();
            if now == provided {
                break;
            }
            provided = now;
            ex = expand(&requested, &mut |n| self.read(n).map(|(d, _)| d), &provided);
        }
        ex
    }

    /// Provided name → the elements providing it, in resolution order.
    fn providers(&mut self, ex: &Expansion) -> BTreeMap<String, Vec<String>> {
        let mut providers: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for n in &ex.order {
            if let Some((_, p)) = self.read(n) {
                for name in p {
                    providers.entry(name).or_default().push(n.clone());
                }
            }
        }
        providers
    }

    /// Missing elements, names provided twice, requested names that are provided, and the
    /// missing operating system.
    fn check_names(&mut self, ex: &Expansion, providers: &BTreeMap<String, Vec<String>>) {
        for m in &ex.missing {
            if !providers.contains_key(m) {
                let kind = match self.broken.get(m) {
                    Some((path, reason)) => ProblemKind::BrokenElement {
                        name: m.clone(),
                        path: path.clone(),
                        reason: reason.clone(),
                    },
                    None => ProblemKind::MissingElement { name: m.clone() },
                };
                self.problems.push(Problem {
                    kind,
                    chain: chain_of(m, &ex.parent),
                });
            }
        }
        for (name, by) in providers {
            if by.len() > 1 {
                self.problems.push(Problem {
                    kind: ProblemKind::ProvidedTwice {
                        name: name.clone(),
                        by: by.clone(),
                    },
                    chain: chain_of(&by[1], &ex.parent),
                });
            }
            if self.requested.contains(name) {
                self.problems.push(Problem {
                    kind: ProblemKind::RequestedButProvided {
                        name: name.clone(),
                        by: by[0].clone(),
                    },
                    chain: chain_of(&by[0], &ex.parent),
                });
            }
        }
        if !self.requested.is_empty() && !providers.contains_key(OPERATING_SYSTEM) {
            self.problems.push(Problem {
                kind: ProblemKind::NoOperatingSystem,
                chain: Vec::new(),
            });
        }
    }

    /// Dependency cycles, following provided names to their provider.
    fn check_cycles(&mut self, ex: &Expansion, providers: &BTreeMap<String, Vec<String>>) {
        let graph: BTreeMap<String, Vec<String>> = ex
            .order
            .iter()
            .map(|n| {
                let deps = self
                    .files
                    .get(n)
                    .map(|(d, _)| d.clone())
                    .unwrap_or_default();
                let targets = deps
                    .into_iter()
                    .filter_map(|d| match providers.get(&d) {
                        Some(p) => p.first().cloned(),
                        None => ex.order.contains(&d).then_some(d),
                    })
                    .collect();
                (n.clone(), targets)
            })
            .collect();
        for cycle in find_cycles(&ex.order, &graph) {
            self.problems.push(Problem {
                chain: chain_of(&cycle[0], &ex.parent),
                kind: ProblemKind::Cycle { cycle },
            });
        }
    }

    /// The element records, reading (and checking) their package lists, pkg-map and host
    /// programs.
    fn elements(&mut self, ex: &Expansion) -> Vec<Element> {
        let mut elements = Vec::new();
        for n in &ex.order {
            let Some(path) = self.all.get(n).cloned() else {
                continue;
            };
            let (deps, provides) = self.files.get(n).cloned().unwrap_or_default();
            let chain = chain_of(n, &ex.parent);
            let problems = &mut self.problems;
            elements.push(Element {
                packages: read_packages(&path, &chain, problems),
                pkg_map: read_pkg_map(&path, &chain, problems),
                host_programs: read_host_programs(n, &path, &chain, problems),
                name: n.clone(),
                path,
                deps,
                provides,
                chain,
            });
        }
        elements
    }
}

/// The block-device configuration of the first element (in resolution order) that has one:
/// `block-device-<ARCH>.yaml` (`ppc64el` for both ppc64le spellings), else
/// `block-device-default.yaml`.
fn block_device_default(elements: &[Element], arch: &str) -> Option<PathBuf> {
    let arch_file = if ["ppc64le", "ppc64el"].contains(&arch) {
        "block-device-ppc64el.yaml".to_owned()
    } else {
        format!("block-device-{arch}.yaml")
    };
    elements.iter().find_map(|e| {
        [arch_file.as_str(), "block-device-default.yaml"]
            .iter()
            .map(|f| e.path.join(f))
            .find(|p| p.exists())
    })
}

/// Every elementary cycle reachable in `graph`, each once, as `a → b → … → a`, rotated to
/// start at its earliest element in `order`.
fn find_cycles(order: &[String], graph: &BTreeMap<String, Vec<String>>) -> Vec<Vec<String>> {
    fn dfs(
        n: &str,
        graph: &BTreeMap<String, Vec<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        found: &mut Vec<Vec<String>>,
    ) {
        if let Some(pos) = stack.iter().position(|s| s == n) {
            found.push(stack[pos..].to_vec());
            return;
        }
        if done.contains(n) {
            return;
        }
        stack.push(n.to_owned());
        for m in graph.get(n).into_iter().flatten() {
            dfs(m, graph, stack, done, found);
        }
        stack.pop();
        done.insert(n.to_owned());
    }
    let mut found = Vec::new();
    let mut done = BTreeSet::new();
    for n in order {
        dfs(n, graph, &mut Vec::new(), &mut done, &mut found);
    }
    let rank = |s: &String| order.iter().position(|o| o == s).unwrap_or(usize::MAX);
    let mut out: Vec<Vec<String>> = Vec::new();
    for mut c in found {
        let start = (0..c.len()).min_by_key(|&i| rank(&c[i])).unwrap_or(0);
        c.rotate_left(start);
        if let Some(first) = c.first().cloned() {
            c.push(first);
        }
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

/// Read `host-programs` (one program per line, `#` comments) and check each is installed.
fn read_host_programs(
    element: &str,
    dir: &Path,
    chain: &[String],
    problems: &mut Vec<Problem>,
) -> Vec<String> {
    let path = dir.join(HOST_PROGRAMS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            problems.push(Problem::bad_file(&path, chain, format!("cannot read: {e}")));
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        if line.contains(char::is_whitespace) {
            problems.push(Problem::bad_file(
                &path,
                chain,
                format!("{line:?}: one program name per line"),
            ));
            continue;
        }
        if !program_installed(line) {
            problems.push(Problem {
                kind: ProblemKind::MissingHostProgram {
                    element: element.to_owned(),
                    program: line.to_owned(),
                    package: diskforge_cmd::debian_package(line).map(str::to_owned),
                },
                chain: chain.to_vec(),
            });
        }
        out.push(line.to_owned());
    }
    out
}

/// On `PATH`, or in the sbin directories a non-root `PATH` often lacks (dib adds them too).
fn program_installed(program: &str) -> bool {
    diskforge_cmd::exists(program)
        || ["/usr/local/sbin", "/usr/sbin", "/sbin"]
            .iter()
            .any(|d| Path::new(d).join(program).is_file())
}
