//! Kernel modules with their dependencies, from `modules.dep`.
//!
//! `modules.dep` (depmod(5)) has one line per module, `path: dep dep …`, listing every
//! module it needs, transitively. [`ModuleDeps::load_order`] gives the paths to `insmod` for
//! a list of module names: each after its dependencies, each once, dependencies in the
//! reverse of their listed order as modprobe loads them. Names match with `-` and `_`
//! folded together (`crc-t10dif` is `crc_t10dif`). It does not read `modules.softdep` or
//! aliases: soft dependencies (such as the `*_generic` crypto providers that `crc-t10dif`
//! looks up by algorithm name) must be named by the caller, before the module that needs
//! them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// `modules.dep` parsed.
#[derive(Debug, Default, Clone)]
pub struct ModuleDeps {
    dir: PathBuf,
    by_name: BTreeMap<String, String>,
    deps: BTreeMap<String, Vec<String>>,
}

/// A module's name from its path: `kernel/lib/crc-t10dif.ko.xz` → `crc_t10dif`.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

impl ModuleDeps {
    /// Read `modules_dir/modules.dep` (`modules_dir` is `/lib/modules/RELEASE`).
    pub fn read(modules_dir: &Path) -> Result<Self> {
        let path = modules_dir.join("modules.dep");
        let text = std::fs::read(&path).map_err(|source| Error::Io {
            action: "reading",
            path,
            source,
        })?;
        Ok(Self::parse(&String::from_utf8_lossy(&text), modules_dir))
    }

    /// Parse the text of `modules.dep` found in `modules_dir`.
    pub fn parse(text: &str, modules_dir: &Path) -> Self {
        let mut m = ModuleDeps {
            dir: modules_dir.to_owned(),
            ..ModuleDeps::default()
        };
        for line in text.lines() {
            let Some((path, deps)) = line.split_once(':') else {
                continue;
            };
            let path = path.trim().to_owned();
            m.by_name.insert(module_name(&path), path.clone());
            m.deps
                .insert(path, deps.split_whitespace().map(str::to_owned).collect());
        }
        m
    }

    /// The module paths (relative to the modules directory) to load for `names`, in order.
    pub fn load_order(&self, names: &[&str]) -> Result<Vec<String>> {
        let mut order = Vec::new();
        for name in names {
            let path =
                self.by_name
                    .get(&name.replace('-', "_"))
                    .ok_or_else(|| Error::ModuleNotFound {
                        module: (*name).to_owned(),
                        modules_dep: self.dir.join("modules.dep"),
                    })?;
            self.visit(path, &mut order);
        }
        Ok(order)
    }

    fn visit(&self, path: &str, order: &mut Vec<String>) {
        if order.iter().any(|p| p == path) {
            return;
        }
        // modprobe loads the listed dependencies last to first; each one's own entry lists
        // what it needs, so recursing keeps the order valid even for a partial list.
        for dep in self.deps.get(path).into_iter().flatten().rev() {
            self.visit(dep, order);
        }
        order.push(path.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/scsi/sr_mod.ko: kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko kernel/drivers/cdrom/cdrom.ko
kernel/drivers/scsi/scsi_mod.ko: kernel/drivers/scsi/scsi_common.ko
kernel/drivers/scsi/scsi_common.ko:
kernel/drivers/cdrom/cdrom.ko:
kernel/fs/isofs/isofs.ko: kernel/drivers/cdrom/cdrom.ko
kernel/lib/crc-t10dif.ko.xz:
kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/netfs/netfs.ko
kernel/net/9p/9pnet.ko:
kernel/fs/netfs/netfs.ko:
kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
";

    #[test]
    fn deps_first_each_once() {
        let deps = ModuleDeps::parse(DEP, Path::new("/m"));
        let order = deps.load_order(&["isofs", "sr_mod", "crc-t10dif"]).unwrap();
        assert_eq!(
            order,
            [
                "kernel/drivers/cdrom/cdrom.ko",
                "kernel/fs/isofs/isofs.ko",
                "kernel/drivers/scsi/scsi_common.ko",
                "kernel/drivers/scsi/scsi_mod.ko",
                "kernel/drivers/scsi/sr_mod.ko",
                "kernel/lib/crc-t10dif.ko.xz",
            ]
        );
    }

    #[test]
    fn listed_deps_load_last_to_first() {
        let deps = ModuleDeps::parse(DEP, Path::new("/m"));
        let order = deps.load_order(&["9pnet_virtio", "9p"]).unwrap();
        assert_eq!(
            order,
            [
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/net/9p/9pnet.ko",
                "kernel/net/9p/9pnet_virtio.ko",
                "kernel/fs/netfs/netfs.ko",
                "kernel/fs/9p/9p.ko",
            ]
        );
    }

    #[test]
    fn unknown_module_names_the_file() {
        let deps = ModuleDeps::parse(DEP, Path::new("/m"));
        let err = deps.load_order(&["nope"]).unwrap_err();
        assert_eq!(err.to_string(), "kernel module nope not in /m/modules.dep");
        assert_eq!(module_name("a/b/nls_cp437.ko.zst"), "nls_cp437");
    }
}
