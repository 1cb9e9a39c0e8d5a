//! `package-installs.yaml`/`.json` and `pkg-map`: parsed, checked and reported (installing
//! packages is the distro elements' job), following dib's `package-installs` and `pkg-map`
//! element READMEs.

use std::path::Path;

use serde::Serialize;

use crate::{Phase, Problem};

/// One package entry of an element's `package-installs.yaml`/`.json`, parsed and reported
/// (installing packages is the distro elements' job, not this crate's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackageInstall {
    /// The package name (before `pkg-map` translation).
    pub package: String,
    /// The phase that installs it. Default: `install.d`.
    pub phase: String,
    /// Remove instead of install. Default: `false`.
    pub uninstall: bool,
    /// Install for the build, remove at the end. Default: `false`.
    pub build_only: bool,
    /// Only for this install type of the element. Default: any.
    pub installtype: Option<String>,
    /// Only for these architectures (comma-separated). Default: all.
    pub arch: Option<String>,
    /// Not for these architectures (comma-separated). Default: none.
    pub not_arch: Option<String>,
    /// `VAR = value` / `VAR != value` conditions, all of which must hold.
    pub when: Vec<String>,
}

/// Parse `package-installs.yaml` (or `.json`) into entries.
pub(crate) fn read_packages(
    dir: &Path,
    chain: &[String],
    problems: &mut Vec<Problem>,
) -> Vec<PackageInstall> {
    let (path, value) = {
        let yaml = dir.join("package-installs.yaml");
        let json = dir.join("package-installs.json");
        let path = if yaml.exists() {
            yaml
        } else if json.exists() {
            json
        } else {
            return Vec::new();
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                problems.push(Problem::bad_file(&path, chain, format!("cannot read: {e}")));
                return Vec::new();
            }
        };
        // JSON is YAML, so one parser reads both.
        match serde_norway::from_str::<serde_json::Value>(&text) {
            Ok(v) => (path, v),
            Err(e) => {
                problems.push(Problem::bad_file(
                    &path,
                    chain,
                    format!("not valid YAML/JSON: {e}"),
                ));
                return Vec::new();
            }
        }
    };
    let map = match value {
        serde_json::Value::Null => return Vec::new(),
        serde_json::Value::Object(m) => m,
        other => {
            problems.push(Problem::bad_file(
                &path,
                chain,
                format!(
                    "expected a mapping of package names, found {}",
                    json_kind(&other)
                ),
            ));
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (package, params) in map {
        let entries: Vec<serde_json::Value> = match params {
            serde_json::Value::Null => vec![serde_json::Value::Null],
            serde_json::Value::Array(a) => a,
            o => vec![o],
        };
        for entry in entries {
            match package_entry(&package, &entry) {
                Ok(p) => out.push(p),
                Err(msg) => problems.push(Problem::bad_file(
                    &path,
                    chain,
                    format!("package {package:?}: {msg}"),
                )),
            }
        }
    }
    out
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "nothing",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "a mapping",
    }
}

fn package_entry(
    package: &str,
    v: &serde_json::Value,
) -> std::result::Result<PackageInstall, String> {
    let mut p = PackageInstall {
        package: package.to_owned(),
        phase: "install.d".to_owned(),
        uninstall: false,
        build_only: false,
        installtype: None,
        arch: None,
        not_arch: None,
        when: Vec::new(),
    };
    let map = match v {
        serde_json::Value::Null => return Ok(p),
        serde_json::Value::Object(m) => m,
        other => {
            return Err(format!(
                "expected a mapping of options, found {}",
                json_kind(other)
            ));
        }
    };
    let text = |key: &str, v: &serde_json::Value| -> std::result::Result<String, String> {
        match v {
            serde_json::Value::String(s) => Ok(s.clone()),
            serde_json::Value::Number(n) => Ok(n.to_string()),
            other => Err(format!("{key}: expected text, found {}", json_kind(other))),
        }
    };
    let flag = |key: &str, v: &serde_json::Value| -> std::result::Result<bool, String> {
        match v {
            serde_json::Value::Bool(b) => Ok(*b),
            serde_json::Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
            serde_json::Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
            other => Err(format!("{key}: expected true or false, found {other}")),
        }
    };
    for (key, val) in map {
        match key.as_str() {
            "phase" => {
                let ph = text(key, val)?;
                if Phase::from_dir(&ph).is_none() {
                    return Err(format!(
                        "phase: {ph:?} is not a phase directory (e.g. install.d)"
                    ));
                }
                p.phase = ph;
            }
            "uninstall" => p.uninstall = flag(key, val)?,
            "build-only" => p.build_only = flag(key, val)?,
            "installtype" => p.installtype = Some(text(key, val)?),
            "arch" => p.arch = Some(text(key, val)?),
            "not-arch" => p.not_arch = Some(text(key, val)?),
            "when" => {
                p.when = match val {
                    serde_json::Value::Array(a) => a
                        .iter()
                        .map(|w| text(key, w))
                        .collect::<std::result::Result<_, _>>()?,
                    other => vec![text(key, other)?],
                };
                for w in &p.when {
                    if !w.contains('=') {
                        return Err(format!(
                            "when: {w:?} is not `VAR = value` or `VAR != value`"
                        ));
                    }
                }
            }
            // Only meaningful to dib's python selection; accepted and ignored.
            "dib_python_version" => {}
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    if p.arch.is_some() && p.not_arch.is_some() {
        return Err("arch and not-arch cannot both be given".to_owned());
    }
    Ok(p)
}

/// Parse `pkg-map` (JSON with `release`/`distro`/`family`/`default` sections).
pub(crate) fn read_pkg_map(
    dir: &Path,
    chain: &[String],
    problems: &mut Vec<Problem>,
) -> Option<serde_json::Value> {
    let path = dir.join("pkg-map");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            problems.push(Problem::bad_file(&path, chain, format!("cannot read: {e}")));
            return None;
        }
    };
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Object(m)) => {
            for k in m.keys() {
                if !["release", "distro", "family", "default"].contains(&k.as_str()) {
                    problems.push(Problem::bad_file(
                        &path,
                        chain,
                        format!(
                            "unknown section {k:?} (expected release, distro, family or default)"
                        ),
                    ));
                }
            }
            Some(serde_json::Value::Object(m))
        }
        Ok(other) => {
            problems.push(Problem::bad_file(
                &path,
                chain,
                format!("expected a JSON object, found {}", json_kind(&other)),
            ));
            None
        }
        Err(e) => {
            problems.push(Problem::bad_file(
                &path,
                chain,
                format!("not valid JSON: {e}"),
            ));
            None
        }
    }
}
