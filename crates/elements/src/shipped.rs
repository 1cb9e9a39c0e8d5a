//! The elements diskforge ships, embedded in the binary.

use std::path::{Path, PathBuf};

/// One embedded file: path relative to the elements dir, contents, and whether it is
/// executable.
#[derive(Debug, Clone, Copy)]
pub struct ShippedFile {
    /// Path under the elements dir (`vm/element-deps`).
    pub path: &'static str,
    /// The file's bytes.
    pub contents: &'static [u8],
    /// Executable (mode 0755) or not (0644).
    pub executable: bool,
}

macro_rules! shipped {
    ($( $path:literal $(, $x:ident)? ;)*) => {
        &[$(ShippedFile {
            path: $path,
            contents: include_bytes!(concat!("../elements/", $path)),
            executable: shipped!(@x $($x)?),
        },)*]
    };
    (@x exec) => { true };
    (@x) => { false };
}

/// Every file of the shipped elements (`crates/elements/elements/` in the source tree).
pub const SHIPPED: &[ShippedFile] = shipped! {
    "block-device-efi/README.rst";
    "block-device-efi/block-device-default.yaml";
    "block-device-efi/element-provides";
    "block-device-efi/environment.d/15-block-device.bash";
    "block-device-gpt/README.rst";
    "block-device-gpt/block-device-default.yaml";
    "block-device-gpt/element-provides";
    "block-device-gpt/environment.d/15-block-device.bash";
    "block-device-mbr/README.rst";
    "block-device-mbr/block-device-default.yaml";
    "block-device-mbr/element-provides";
    "block-device-mbr/environment.d/15-block-device.bash";
    "busybox/README.rst";
    "busybox/element-provides";
    "busybox/host-programs";
    "debian-minimal/README.rst";
    "debian-minimal/element-provides";
    "debian-minimal/host-programs";
    "debian/README.rst";
    "debian/element-deps";
    "debian/package-installs.yaml";
    "devuser/README.rst";
    "devuser/environment.d/50-devuser";
    "devuser/extra-data.d/50-devuser", exec;
    "devuser/install.d/50-devuser", exec;
    "install-static/README.rst";
    "install-static/install.d/10-install-static-files", exec;
    "package-installs/README.rst";
    "package-installs/finalise.d/99-package-installs-cleanup", exec;
    "package-installs/install.d/01-package-installs", exec;
    "package-installs/post-install.d/01-package-installs", exec;
    "package-installs/pre-install.d/01-package-installs", exec;
    "ramdisk/README.rst";
    "stable-interface-names/README.rst";
    "stable-interface-names/install.d/02-stable-interface-names", exec;
    "stable-interface-names/package-installs.yaml";
    "vm/README.rst";
    "vm/element-deps";
};

/// Write the shipped elements under `dest` (created if needed; files rewritten, exec bits
/// set) and return the directory to append to the elements path (`dest` itself).
pub fn shipped_elements(dest: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    for f in SHIPPED {
        let p = dest.join(f.path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, f.contents)?;
        let mode = if f.executable { 0o755 } else { 0o644 };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(dest.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// The table lists exactly the files in the source tree, with their exec bits.
    #[test]
    fn table_matches_source_tree() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("elements");
        let mut found = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let exec = p.metadata().unwrap().permissions().mode() & 0o111 != 0;
                    let rel = p.strip_prefix(&root).unwrap().to_str().unwrap().to_owned();
                    found.push((rel, exec));
                }
            }
        }
        found.sort();
        let table: Vec<(String, bool)> = SHIPPED
            .iter()
            .map(|f| (f.path.to_owned(), f.executable))
            .collect();
        assert_eq!(table, found);
    }

    #[test]
    fn materialised_with_modes() {
        let dir = tempfile::tempdir().unwrap();
        let out = shipped_elements(dir.path()).unwrap();
        assert_eq!(out, dir.path());
        let script = out.join("install-static/install.d/10-install-static-files");
        assert_eq!(
            script.metadata().unwrap().permissions().mode() & 0o777,
            0o755
        );
        let provides = std::fs::read_to_string(out.join("vm/element-deps")).unwrap();
        assert_eq!(provides, "block-device\n");
        // Idempotent: a second run over the first succeeds.
        shipped_elements(dir.path()).unwrap();
    }
}
