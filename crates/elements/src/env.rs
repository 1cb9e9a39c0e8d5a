//! The environment a phase script sees, as dib's `disk-image-create` exports it.

use std::collections::BTreeMap;

use crate::hooks::LIB_DIR;
use crate::resolve::host_arch;
use crate::{Phase, Resolved, RunContext, Script};

/// The variables a script sees on top of the builder's own environment (which scripts
/// inherit, as under dib): what the caller put in [`RunContext::env`] (`IMAGE_NAME`,
/// `DIB_RELEASE`, `DIB_IMAGE_SIZE`, `IMAGE_BLOCK_DEVICE`, …) over dib's defaults
/// (`ARCH` = the host's, `IMAGE_NAME=image`, `DIB_DEFAULT_INSTALLTYPE`, `LC_ALL=C`), and
/// always these, derived from the build:
///
/// - `TARGET_ROOT`, `TMP_MOUNT_PATH`: the target root ([`crate::run_phase`] drops
///   `TARGET_ROOT` inside the chroot, as dib only sets it for host phases);
/// - `TMP_HOOKS_PATH`, `TMP_BUILD_DIR`, `_LIB` (holding `die`);
/// - `ELEMENTS_PATH` (`:`-joined), `IMAGE_ELEMENT` (space-separated names),
///   `IMAGE_ELEMENT_YAML` (name: path) and the exported bash function
///   `get_image_element_array` (`eval declare -A image_elements=($(get_image_element_array))`);
/// - `DIB_DEBUG_TRACE`: `1` with [`RunContext::trace`], else the caller's value or `0`.
pub fn environment(resolved: &Resolved, ctx: &RunContext) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let mut set = |k: &str, v: String| {
        env.insert(k.to_owned(), v);
    };
    set("ARCH", host_arch().to_owned());
    set("IMAGE_NAME", "image".to_owned());
    set("LC_ALL", "C".to_owned());
    set(
        "DIB_DEFAULT_INSTALLTYPE",
        resolved.default_install_type().to_owned(),
    );
    set("DIB_DEBUG_TRACE", "0".to_owned());
    for (k, v) in &ctx.env {
        env.insert(k.clone(), v.clone());
    }
    let d = |p: &std::path::Path| p.display().to_string();
    let mut ours = BTreeMap::new();
    ours.insert("TARGET_ROOT", d(&ctx.target_root));
    ours.insert("TMP_MOUNT_PATH", d(&ctx.target_root));
    ours.insert("TMP_HOOKS_PATH", d(&ctx.hooks_dir));
    ours.insert("TMP_BUILD_DIR", d(&ctx.build_dir));
    ours.insert("_LIB", d(&ctx.hooks_dir.join(LIB_DIR)));
    ours.insert(
        "ELEMENTS_PATH",
        resolved
            .elements_path()
            .iter()
            .map(|p| d(p))
            .collect::<Vec<_>>()
            .join(":"),
    );
    let els = resolved.elements();
    ours.insert(
        "IMAGE_ELEMENT",
        els.iter()
            .map(|e| e.name.as_str())
            .collect::<Vec<_>>()
            .join(" "),
    );
    let yaml: BTreeMap<&str, String> = els.iter().map(|e| (e.name.as_str(), d(&e.path))).collect();
    ours.insert(
        "IMAGE_ELEMENT_YAML",
        serde_norway::to_string(&yaml).unwrap_or_default(),
    );
    let array: String = els
        .iter()
        .map(|e| format!("[{}]={} ", e.name, d(&e.path)))
        .collect();
    ours.insert(
        "BASH_FUNC_get_image_element_array%%",
        format!("() {{  echo \"{array}\"\n}}"),
    );
    if ctx.trace {
        ours.insert("DIB_DEBUG_TRACE", "1".to_owned());
    }
    for (k, v) in ours {
        env.insert(k.to_owned(), v);
    }
    // dib's DIB_ENV: `declare -p` of every DIB_ variable (the `manifests` element saves it).
    let dib_env: Vec<String> = env
        .iter()
        .filter(|(k, _)| k.starts_with("DIB_") && k.as_str() != "DIB_ENV")
        .map(|(k, v)| format!("declare -x {k}=\"{}\"", bash_dquote(v)))
        .collect();
    env.insert("DIB_ENV".to_owned(), dib_env.join("\n"));
    env
}

/// `v` escaped for bash double quotes, as `declare -p` prints it.
fn bash_dquote(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if matches!(c, '"' | '\\' | '$' | '`') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// One phase of a [`Plan`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct PhasePlan {
    /// The phase.
    pub phase: Phase,
    /// Whether it runs chrooted into the target.
    pub in_chroot: bool,
    /// Its scripts in run order.
    pub scripts: Vec<Script>,
}

/// Everything `--dry-run` shows: the resolution, the environment scripts will see, and every
/// phase's scripts in order. Built by [`plan`]; writes nothing.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan<'a> {
    /// The resolution (elements, provided names, skipped files, environment files, the
    /// block-device default).
    pub resolved: &'a Resolved,
    /// The variables scripts see on top of the builder's environment ([`environment`]).
    pub environment: BTreeMap<String, String>,
    /// Every phase in run order, with its scripts.
    pub phases: Vec<PhasePlan>,
}

/// The [`Plan`] of running `resolved` with `ctx`.
pub fn plan<'a>(resolved: &'a Resolved, ctx: &RunContext) -> Plan<'a> {
    Plan {
        resolved,
        environment: environment(resolved, ctx),
        phases: Phase::ALL
            .iter()
            .map(|&phase| PhasePlan {
                phase,
                in_chroot: phase.in_chroot(),
                scripts: resolved.scripts(phase),
            })
            .collect(),
    }
}
