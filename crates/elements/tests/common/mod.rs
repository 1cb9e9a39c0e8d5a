//! Helpers shared by the integration tests: element trees in temporary directories.

#![allow(dead_code)] // each test binary uses a different subset
#![allow(clippy::unwrap_used)] // test helpers: a failed setup should panic at once

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use diskforge_elements::ResolveOptions;

/// Write `files` (path relative to `root`, contents, executable) under `root`.
pub fn write(root: &Path, files: &[(&str, &str, bool)]) {
    for (rel, text, exec) in files {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        let mode = if *exec { 0o755 } else { 0o644 };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

/// Options searching `paths` only, with `env`.
pub fn opts(paths: &[&Path], env: &[(&str, &str)]) -> ResolveOptions {
    ResolveOptions {
        elements_path: paths.iter().map(|p| p.to_path_buf()).collect(),
        allow_nonexec: false,
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
    }
}

/// Names as owned strings.
pub fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Replace `root` in `text` with `[ROOT]` for snapshots.
pub fn redact(text: &str, root: &Path) -> String {
    text.replace(&root.display().to_string(), "[ROOT]")
}

/// A minimal operating-system element, so that resolution does not complain.
pub fn os_element(root: &Path) {
    write(
        root,
        &[("os/element-provides", "operating-system\n", false)],
    );
}

/// Processes whose command line contains `needle` (pids).
pub fn processes_with(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            out.push(pid);
        }
    }
    out
}

/// Wait up to 5 s for no process to match `needle`; the survivors otherwise.
pub fn wait_no_process(needle: &str) -> Vec<u32> {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let left = processes_with(needle);
        if left.is_empty() || std::time::Instant::now() > until {
            return left;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Lines of our /proc/self/mountinfo that mention `path`.
pub fn host_mounts_under(path: &Path) -> Vec<String> {
    let p = path.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&p))
        .map(str::to_owned)
        .collect()
}

/// A scratch dir.
pub fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// `dir` canonicalised (resolution reports real paths).
pub fn real(dir: &Path) -> PathBuf {
    dir.canonicalize().unwrap()
}
