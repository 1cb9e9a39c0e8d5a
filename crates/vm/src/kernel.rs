//! The host's Debian kernel: its image in `/boot`, its modules in `/lib/modules`, and the
//! uncompressed `vmlinux` inside it.
//!
//! [`Kernel::host`] picks the newest `/boot/vmlinuz-RELEASE` (numeric sort) that has
//! `/lib/modules/RELEASE/modules.dep` (package `linux-image-amd64`). Reading `/boot/vmlinuz-*`
//! needs root on Debian (mode 0600). [`Kernel::vmlinux`] extracts the ELF kernel from the
//! bzImage's xz payload (`xz -dc --single-stream`, package `xz-utils`) and caches it: QEMU
//! boots it directly through its PVH entry point (Debian sets `CONFIG_PVH`), which skips the
//! in-guest decompression, ~4 s less per boot under TCG. Only xz-compressed images (Debian's)
//! are supported.

use std::path::{Path, PathBuf};

use diskforge_cmd::Cmd;

use crate::{Error, Result};

/// Where kernels are looked for.
pub const BOOT_DIR: &str = "/boot";
/// Where their modules live.
pub const MODULES_ROOT: &str = "/lib/modules";
/// Start of an xz stream.
const XZ_MAGIC: &[u8] = b"\xfd7zXZ\x00";

/// A kernel image with its modules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    /// The bzImage (`/boot/vmlinuz-RELEASE`).
    pub image: PathBuf,
    /// `uname -r` of it.
    pub release: String,
    /// `/lib/modules/RELEASE`.
    pub modules_dir: PathBuf,
}

/// `6.1.0-56-amd64` → `[6, 1, 0, 56]` for a numeric sort.
fn version_key(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// The newest release among `vmlinuz-*` file names for which `has_modules` holds.
fn newest_release(names: &[String], has_modules: impl Fn(&str) -> bool) -> Option<String> {
    names
        .iter()
        .filter_map(|n| n.strip_prefix("vmlinuz-"))
        .filter(|r| has_modules(r))
        .max_by_key(|r| version_key(r))
        .map(str::to_owned)
}

impl Kernel {
    /// The newest Debian kernel in `/boot` whose modules are installed.
    pub fn host() -> Result<Kernel> {
        let names: Vec<String> = std::fs::read_dir(BOOT_DIR)
            .map_err(|source| Error::Io {
                action: "listing",
                path: BOOT_DIR.into(),
                source,
            })?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        let modules = |r: &str| {
            Path::new(MODULES_ROOT)
                .join(r)
                .join("modules.dep")
                .is_file()
        };
        let release = newest_release(&names, modules).ok_or_else(|| Error::MissingInput {
            what: "kernel with modules",
            path: format!("{BOOT_DIR}/vmlinuz-*").into(),
            package: "linux-image-amd64",
        })?;
        Ok(Kernel {
            image: Path::new(BOOT_DIR).join(format!("vmlinuz-{release}")),
            modules_dir: Path::new(MODULES_ROOT).join(&release),
            release,
        })
    }

    /// The kernel `image`, named `vmlinuz-RELEASE`, with modules from `/lib/modules/RELEASE`.
    pub fn from_image(image: &Path) -> Result<Kernel> {
        let release = image
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("vmlinuz-"))
            .ok_or_else(|| Error::Invalid {
                what: image.display().to_string(),
                reason: "a kernel image must be named vmlinuz-RELEASE".into(),
            })?
            .to_owned();
        Ok(Kernel {
            image: image.to_owned(),
            modules_dir: Path::new(MODULES_ROOT).join(&release),
            release,
        })
    }

    /// The uncompressed `vmlinux`, extracted once into `cache_dir/vmlinux-RELEASE`.
    pub fn vmlinux(&self, cache_dir: &Path) -> Result<PathBuf> {
        let out = cache_dir.join(format!("vmlinux-{}", self.release));
        if out.is_file() {
            return Ok(out);
        }
        let io = |action, path: &Path| {
            let path = path.to_owned();
            move |source| Error::Io {
                action,
                path,
                source,
            }
        };
        let image = std::fs::read(&self.image).map_err(io("reading", &self.image))?;
        let at = image
            .windows(XZ_MAGIC.len())
            .position(|w| w == XZ_MAGIC)
            .ok_or_else(|| Error::Invalid {
                what: self.image.display().to_string(),
                reason: "no xz payload (not a Debian xz bzImage?)".into(),
            })?;
        std::fs::create_dir_all(cache_dir).map_err(io("creating", cache_dir))?;
        // Unique temp names: concurrent runs may extract the same kernel at once.
        let payload = tempfile::Builder::new()
            .prefix(".vmlinux-xz-")
            .tempfile_in(cache_dir)
            .map_err(io("creating a temp file in", cache_dir))?;
        std::fs::write(payload.path(), &image[at..]).map_err(io("writing", payload.path()))?;
        let elf = Cmd::new("xz")
            .args(["-dc", "--single-stream"])
            .arg(payload.path())
            .run()
            .map_err(|source| Error::Tool {
                step: "decompressing the kernel payload with xz",
                source,
            })?
            .stdout;
        if !elf.starts_with(b"\x7fELF") {
            return Err(Error::Invalid {
                what: self.image.display().to_string(),
                reason: "the decompressed payload is not ELF".into(),
            });
        }
        let tmp = tempfile::Builder::new()
            .prefix(".vmlinux-")
            .tempfile_in(cache_dir)
            .map_err(io("creating a temp file in", cache_dir))?;
        std::fs::write(tmp.path(), &elf).map_err(io("writing", tmp.path()))?;
        tmp.persist(&out)
            .map_err(|e| io("renaming into place", &out)(e.error))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_with_modules_numeric() {
        let names: Vec<String> = [
            "vmlinuz-6.1.0-9-amd64",
            "vmlinuz-6.1.0-56-amd64",
            "vmlinuz-6.1.0-10-amd64",
            "vmlinuz-6.1.0-99-amd64",
            "config-6.1.0-99-amd64",
        ]
        .map(String::from)
        .to_vec();
        // 99 has no modules installed.
        let got = newest_release(&names, |r| r != "6.1.0-99-amd64");
        assert_eq!(got.as_deref(), Some("6.1.0-56-amd64"));
        assert_eq!(newest_release(&names, |_| false), None);
    }

    #[test]
    fn from_image_wants_vmlinuz_name() {
        let k = Kernel::from_image(Path::new("/x/vmlinuz-6.1.0-1-amd64")).unwrap();
        assert_eq!(k.release, "6.1.0-1-amd64");
        assert_eq!(k.modules_dir, Path::new("/lib/modules/6.1.0-1-amd64"));
        assert!(matches!(
            Kernel::from_image(Path::new("/x/bzImage")),
            Err(Error::Invalid { .. })
        ));
    }

    #[test]
    fn vmlinux_refuses_an_image_without_xz() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("vmlinuz-1.0");
        std::fs::write(&img, b"MZ not a kernel").unwrap();
        let k = Kernel::from_image(&img).unwrap();
        let err = k.vmlinux(d.path()).unwrap_err();
        assert!(err.to_string().contains("no xz payload"), "{err}");
    }
}
