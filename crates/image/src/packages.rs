//! dib's `package-installs`: every element's `package-installs.yaml`, filtered (architecture,
//! install type, `when` conditions), mapped (`pkg-map`), and installed with one package-manager
//! call per phase for all elements together — by the shipped `package-installs` element, whose
//! in-chroot scripts read the lists this module writes into the hooks directory
//! (`/tmp/in_target.d/package-installs/PHASE.{install,uninstall}` inside the chroot).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use diskforge_elements::{PackageInstall, Phase, Resolved};
use serde::Serialize;

use crate::{Result, io_err};

/// The phases whose package lists the `package-installs` element runs.
pub const PHASES: [Phase; 3] = [Phase::PreInstall, Phase::Install, Phase::PostInstall];

/// The packages of one phase.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PhasePackages {
    /// Installed at the start of the phase.
    pub install: Vec<String>,
    /// Removed (purged) after the installs of the phase: `uninstall: true` entries, and
    /// `build-only` ones once the last phase is done.
    pub uninstall: Vec<String>,
}

/// Whether `entry` applies: its `arch`/`not-arch` lists, its install type, and its `when`
/// conditions (`VAR = value`, `VAR != value`) against `env`.
fn applies(
    entry: &PackageInstall,
    element: &str,
    arch: &str,
    env: &BTreeMap<String, String>,
) -> bool {
    let has = |list: &Option<String>| {
        list.as_deref()
            .map(|l| l.split(',').any(|a| a.trim() == arch))
    };
    if has(&entry.arch) == Some(false) || has(&entry.not_arch) == Some(true) {
        return false;
    }
    if let Some(t) = &entry.installtype {
        let var = format!("DIB_INSTALLTYPE_{}", element.replace('-', "_"));
        let chosen = env
            .get(&var)
            .or_else(|| env.get("DIB_DEFAULT_INSTALLTYPE"))
            .map_or("source", String::as_str);
        if chosen != t {
            return false;
        }
    }
    entry.when.iter().all(|cond| {
        let (var, negate, value) = match cond.split_once("!=") {
            Some((k, v)) => (k, true, v),
            None => match cond.split_once('=') {
                Some((k, v)) => (k, false, v),
                None => return true,
            },
        };
        let actual = env.get(var.trim()).map_or("", String::as_str);
        (actual == value.trim()) != negate
    })
}

/// dib's `pkg-map`: the name for `distro`/`family`/`release`, else the `default` mapping,
/// else the name itself.
fn map_name(map: Option<&serde_json::Value>, name: &str, env: &BTreeMap<String, String>) -> String {
    let Some(m) = map else {
        return name.to_owned();
    };
    let distro = env.get("DISTRO_NAME").map_or("debian", String::as_str);
    let family = match distro {
        "debian" | "ubuntu" => "debian",
        "fedora" | "centos" | "rhel" | "rocky" | "almalinux" => "redhat",
        "opensuse" => "suse",
        other => other,
    };
    let release = env.get("DIB_RELEASE").map_or("", String::as_str);
    let lookups = [
        m.get("release")
            .and_then(|r| r.get(distro))
            .and_then(|r| r.get(release)),
        m.get("distro").and_then(|d| d.get(distro)),
        m.get("family").and_then(|f| f.get(family)),
        m.get("default"),
    ];
    lookups
        .into_iter()
        .flatten()
        .find_map(|t| t.get(name).and_then(|v| v.as_str()))
        .unwrap_or(name)
        .to_owned()
}

/// The package lists per phase for the resolved elements.
pub fn plan(
    resolved: &Resolved,
    arch: &str,
    env: &BTreeMap<String, String>,
) -> BTreeMap<Phase, PhasePackages> {
    let mut out: BTreeMap<Phase, PhasePackages> = BTreeMap::new();
    let mut build_only = Vec::new();
    for e in resolved.elements() {
        for p in &e.packages {
            if !applies(p, &e.name, arch, env) {
                continue;
            }
            let name = map_name(e.pkg_map.as_ref(), &p.package, env);
            if name.is_empty() {
                continue; // mapped to nothing: not needed on this distro
            }
            let phase = Phase::from_dir(&p.phase).unwrap_or(Phase::Install);
            let entry = out.entry(phase).or_default();
            if p.uninstall {
                entry.uninstall.push(name);
            } else {
                entry.install.push(name.clone());
                if p.build_only {
                    build_only.push(name);
                }
            }
        }
    }
    if !build_only.is_empty() {
        out.entry(Phase::PostInstall)
            .or_default()
            .uninstall
            .extend(build_only);
    }
    for v in out.values_mut() {
        v.install.sort();
        v.install.dedup();
        v.uninstall.sort();
        v.uninstall.dedup();
    }
    out
}

/// Whether any element asks for packages.
pub fn any(resolved: &Resolved) -> bool {
    resolved.elements().iter().any(|e| !e.packages.is_empty())
}

/// Write the lists into `hooks/package-installs/` (what the element's scripts read).
pub fn write_lists(hooks: &Path, lists: &BTreeMap<Phase, PhasePackages>) -> Result<()> {
    let dir = hooks.join("package-installs");
    fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
    for phase in PHASES {
        let p = lists.get(&phase).cloned().unwrap_or_default();
        for (kind, names) in [("install", &p.install), ("uninstall", &p.uninstall)] {
            let f = dir.join(format!("{}.{kind}", phase.dir()));
            let mut text = names.join("\n");
            if !text.is_empty() {
                text.push('\n');
            }
            fs::write(&f, text).map_err(io_err("writing", &f))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> PackageInstall {
        PackageInstall {
            package: name.into(),
            phase: "install.d".into(),
            uninstall: false,
            build_only: false,
            installtype: None,
            arch: None,
            not_arch: None,
            when: Vec::new(),
        }
    }

    #[test]
    fn filters_follow_dib() {
        let env: BTreeMap<String, String> = [("DIB_FOO".to_owned(), "1".to_owned())]
            .into_iter()
            .collect();
        let mut e = entry("a");
        assert!(applies(&e, "el", "amd64", &env));
        e.arch = Some("arm64, ppc64el".into());
        assert!(!applies(&e, "el", "amd64", &env));
        e.arch = None;
        e.not_arch = Some("amd64".into());
        assert!(!applies(&e, "el", "amd64", &env));
        e.not_arch = None;
        e.when = vec!["DIB_FOO = 1".into()];
        assert!(applies(&e, "el", "amd64", &env));
        e.when = vec!["DIB_FOO != 1".into()];
        assert!(!applies(&e, "el", "amd64", &env));
        e.when.clear();
        e.installtype = Some("package".into());
        assert!(!applies(&e, "my-el", "amd64", &env));
        let env: BTreeMap<String, String> =
            [("DIB_INSTALLTYPE_my_el".to_owned(), "package".to_owned())]
                .into_iter()
                .collect();
        assert!(applies(&e, "my-el", "amd64", &env));
    }

    #[test]
    fn pkg_map_prefers_release_then_distro_then_family_then_default() {
        let m = serde_json::json!({
            "release": {"debian": {"bookworm": {"a": "a-bookworm"}}},
            "distro": {"debian": {"b": "b-debian"}},
            "family": {"debian": {"c": "c-family"}, "redhat": {"c": "c-rh"}},
            "default": {"d": "d-default", "e": ""}
        });
        let env: BTreeMap<String, String> = [("DIB_RELEASE".to_owned(), "bookworm".to_owned())]
            .into_iter()
            .collect();
        for (name, want) in [
            ("a", "a-bookworm"),
            ("b", "b-debian"),
            ("c", "c-family"),
            ("d", "d-default"),
            ("e", ""),
            ("f", "f"),
        ] {
            assert_eq!(map_name(Some(&m), name, &env), want, "{name}");
        }
    }
}
