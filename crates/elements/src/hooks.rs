//! The merged hooks directory (dib's `TMP_HOOKS_PATH`).

use std::path::Path;

use crate::scan::SKIPPED_SUBDIRS;
use crate::{Error, Phase, Resolved, Result};

/// The directory under the hooks dir that `_LIB` points to.
pub(crate) const LIB_DIR: &str = "_lib";

/// Our `die` for `$_LIB/die` (dib's contract: print the message, exit non-zero).
const DIE: &str = "\
# die MESSAGE...: print MESSAGE on stderr and exit with the last command's status (1 if it
# succeeded). Sourced by elements as \"$_LIB/die\".
die() {
    _die_status=$?
    set +x
    echo \"$*\" >&2
    [ \"$_die_status\" -ne 0 ] || _die_status=1
    exit \"$_die_status\"
}
";

/// Merge every resolved element's files into `hooks_dir`, as dib's `generate_hooks` does:
/// each subdirectory (except `tests` and `__pycache__`) is merged into the subdirectory of
/// the same name, top-level files are copied in (later elements overwrite earlier ones, as in
/// dib; `*.pyc` skipped), modes and symlinks are kept. Then the selected install types are
/// linked into `install.d` (`install.d/74-nova → nova-source-install/74-nova`) and `_lib/die`
/// is written for scripts that source `$_LIB/die`.
///
/// Duplicated hooks were already reported by [`crate::resolve`]; here later copies win.
pub fn prepare_hooks(resolved: &Resolved, hooks_dir: &Path) -> Result<()> {
    diskforge_fault::point("elements.hooks")?;
    std::fs::create_dir_all(hooks_dir).map_err(Error::io("creating", hooks_dir))?;
    for e in resolved.elements() {
        let rd = std::fs::read_dir(&e.path).map_err(Error::io("listing", &e.path))?;
        let mut names = Vec::new();
        for entry in rd {
            let entry = entry.map_err(Error::io("listing", &e.path))?;
            names.push(entry.file_name());
        }
        names.sort();
        for name in names {
            let src = e.path.join(&name);
            let dst = hooks_dir.join(&name);
            let n = name.to_string_lossy();
            if src.is_dir() {
                if SKIPPED_SUBDIRS.contains(&n.as_ref()) {
                    continue;
                }
                copy_tree(&src, &dst)?;
            } else if src.is_file() && !n.ends_with(".pyc") {
                copy_entry(&src, &dst)?;
            }
        }
    }
    let install = hooks_dir.join(Phase::Install.dir());
    for s in resolved.scripts(Phase::Install) {
        if let Some(d) = &s.install_dir {
            let link = install.join(&s.name);
            remove_if_present(&link)?;
            std::os::unix::fs::symlink(Path::new(d).join(&s.name), &link)
                .map_err(Error::io("linking", &link))?;
        }
    }
    let lib = hooks_dir.join(LIB_DIR);
    std::fs::create_dir_all(&lib).map_err(Error::io("creating", &lib))?;
    std::fs::write(lib.join("die"), DIE).map_err(Error::io("writing", lib.join("die")))?;
    Ok(())
}

fn remove_if_present(p: &Path) -> Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => std::fs::remove_file(p).map_err(Error::io("replacing", p)),
        Err(_) => Ok(()),
    }
}

/// Copy one file or symlink (as a symlink), replacing what is at `dst`.
fn copy_entry(src: &Path, dst: &Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(src).map_err(Error::io("reading", src))?;
    remove_if_present(dst)?;
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(src).map_err(Error::io("reading", src))?;
        std::os::unix::fs::symlink(&target, dst).map_err(Error::io("linking", dst))?;
    } else {
        // std::fs::copy keeps the permission bits (exec bits included).
        std::fs::copy(src, dst).map_err(Error::io("copying to", dst))?;
    }
    Ok(())
}

/// Merge directory `src` into `dst` (created if missing), recursively.
fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    if !dst.is_dir() {
        remove_if_present(dst)?;
        std::fs::create_dir_all(dst).map_err(Error::io("creating", dst))?;
    }
    let rd = std::fs::read_dir(src).map_err(Error::io("listing", src))?;
    for entry in rd {
        let entry = entry.map_err(Error::io("listing", src))?;
        let s = entry.path();
        let d = dst.join(entry.file_name());
        let ft = entry.file_type().map_err(Error::io("reading", &s))?;
        if ft.is_dir() {
            copy_tree(&s, &d)?;
        } else {
            copy_entry(&s, &d)?;
        }
    }
    Ok(())
}
