//! Edit boot configs inside a FAT image file (the El Torito UEFI `efiboot.img`, or an
//! appended EFI system partition copied out to a file) with mtools, never mounting it.
//!
//! The image keeps its size: mtools allocates inside the filesystem, so the edited image
//! always fits back where it came from.

use std::path::Path;

use diskforge_cmd::Cmd;

use crate::bootcfg::{ConfigEdit, dialect, edit_config};
use crate::{Error, Result};

fn mtools(program: &str, image: &Path) -> Cmd {
    // Images made by other tools often have geometry mtools would refuse to trust.
    Cmd::new(program)
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(image)
}

/// Every file path (`/EFI/BOOT/grub.cfg` style) in the image.
pub fn list_files(image: &Path) -> Result<Vec<String>> {
    let out = mtools("mdir", image).args(["-/", "-b", "::/"]).read()?;
    Ok(out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("::"))
        .filter(|p| !p.ends_with('/'))
        .map(str::to_owned)
        .collect())
}

/// Read one file out of the image.
pub fn read_file(image: &Path, path: &str) -> Result<Vec<u8>> {
    Ok(mtools("mtype", image)
        .arg(format!("::{path}"))
        .run()?
        .stdout)
}

/// Overwrite one file in the image with `data` (staged in `scratch`).
pub fn write_file(image: &Path, path: &str, data: &[u8], scratch: &Path) -> Result<()> {
    let staged = scratch.join("fat-staged-file");
    std::fs::write(&staged, data).map_err(|e| Error::io("writing", &staged, e))?;
    mtools("mcopy", image)
        .arg("-o")
        .arg(&staged)
        .arg(format!("::{path}"))
        .run()?;
    std::fs::remove_file(&staged).map_err(|e| Error::io("removing", &staged, e))
}

/// Apply `edit` to every boot config (`grub.cfg`, `*linux.cfg`, …) in the image. Returns the
/// paths changed (inside the image).
pub fn edit_configs(image: &Path, edit: &ConfigEdit, scratch: &Path) -> Result<Vec<String>> {
    let mut changed = Vec::new();
    for path in list_files(image)? {
        let Some(d) = dialect(&path) else { continue };
        let old = read_file(image, &path)?;
        let text = String::from_utf8_lossy(&old);
        let new = edit_config(d, &text, edit);
        if new.as_bytes() != old.as_slice() {
            write_file(image, &path, new.as_bytes(), scratch)?;
            changed.push(path);
        }
    }
    Ok(changed)
}
