//! The fixture's initrd: busybox-static, a shell `/init` that prints the markers, and the
//! kernel modules needed to find the boot medium (with their `modules.dep` dependencies),
//! as a gzip'd cpio "newc" archive built by `diskforge-vm`'s [`Initramfs`] (no root needed
//! for the `/dev/console` node; no timestamps, so the same inputs give the same bytes).

use std::path::{Path, PathBuf};

use diskforge_vm::initramfs::MODULE_LIST;
use diskforge_vm::{Compression, Initramfs};

use crate::{Error, Result, markers};

/// Modules loaded by `/init`, in this order (each after its dependencies from
/// `modules.dep`). The `*_generic` crypto providers come first: `crc-t10dif` and
/// `crc64-rocksoft` (pulled in by `sd_mod`) look them up by algorithm name at load time.
pub const MODULES: &[&str] = &[
    "crct10dif_generic",
    "crc64_rocksoft_generic",
    "cdrom",
    "isofs",
    "ata_piix",
    "ahci",
    "sr_mod",
    "sd_mod",
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
];

/// The `/init` script. `@MODULES@` is replaced by the module list file's path (absolute
/// module paths in load order, one a line).
const INIT: &str = r#"#!/bin/busybox sh
# diskforge ISO fixture init: print markers, find the boot medium, read the kickstart, power off.
/bin/busybox mkdir -p /proc /sys /dev /mnt /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo 1 > /proc/sys/kernel/printk
echo
echo "@BOOTED@"
echo "@CMDLINE@ $(cat /proc/cmdline)"
for m in $(cat @MODULES@); do insmod "$m" 2>/dev/null; done
medium=""
i=0
while [ -z "$medium" ] && [ $i -lt 150 ]; do
  for d in /dev/sr0 /dev/sr1 /dev/sd? /dev/vd?; do
    [ -b "$d" ] || continue
    if mount -t iso9660 -o ro "$d" /mnt 2>/dev/null; then medium="$d"; break; fi
  done
  [ -n "$medium" ] || { sleep 0.1; i=$((i+1)); }
done
if [ -z "$medium" ]; then
  echo "@NO_MEDIUM@ $(ls /dev | tr '\n' ' ')"
else
  echo "@MEDIUM@ $medium"
  ks=""; ps=""
  for arg in $(cat /proc/cmdline); do
    case "$arg" in
      inst.ks=*|ks=*) ks="${arg#*=}" ;;
      preseed/file=*|file=/cdrom/*) ps="${arg#*=}" ;;
    esac
  done
  if [ -n "$ks" ]; then
    p="/${ks##*:/}"
    echo "@KS_ARG@ $ks"
    if [ -f "/mnt$p" ]; then echo "@KS@ $(head -n 1 "/mnt$p")"; else echo "@KS_MISSING@ $p"; fi
  fi
  if [ -n "$ps" ]; then
    p="${ps#/cdrom}"
    echo "@PRESEED_ARG@ $ps"
    if [ -f "/mnt$p" ]; then echo "@PRESEED@ $(head -n 1 "/mnt$p")"; else echo "@PRESEED_MISSING@ $p"; fi
  fi
  for f in /mnt/diskforge-*; do
    [ -f "$f" ] && echo "@FILE@ ${f#/mnt}: $(head -n 1 "$f")"
  done
  umount /mnt
fi
echo "@DONE@"
sync
poweroff -f
"#;

/// The `/init` script with the markers filled in.
pub fn init_script() -> String {
    INIT.replace("@BOOTED@", markers::BOOTED)
        .replace("@CMDLINE@", markers::CMDLINE)
        .replace("@NO_MEDIUM@", markers::NO_MEDIUM)
        .replace("@MEDIUM@", markers::MEDIUM)
        .replace("@KS_ARG@", markers::KS_ARG)
        .replace("@KS_MISSING@", markers::KS_MISSING)
        .replace("@KS@", markers::KS)
        .replace("@PRESEED_ARG@", markers::PRESEED_ARG)
        .replace("@PRESEED_MISSING@", markers::PRESEED_MISSING)
        .replace("@PRESEED@", markers::PRESEED)
        .replace("@FILE@", markers::FILE)
        .replace("@DONE@", markers::DONE)
        .replace("@MODULES@", MODULE_LIST)
}

/// Inputs of the initrd.
#[derive(Debug, Clone)]
pub struct InitrdInputs {
    /// The static busybox binary.
    pub busybox: PathBuf,
    /// `/lib/modules/VERSION` of the kernel that will boot.
    pub modules_dir: PathBuf,
}

/// Build the gzip'd cpio initrd at `out`; returns the module paths it loads, in order.
pub fn write_initrd(inputs: &InitrdInputs, out: &Path) -> Result<Vec<String>> {
    let mut initrd = Initramfs::new(init_script())
        .modules(&inputs.modules_dir, MODULES)
        .compression(Compression::Gzip);
    initrd.busybox = inputs.busybox.clone();
    Ok(initrd.write(out)?.modules)
}

/// diskforge-vm's errors as this crate's (the variants correspond one to one, except that a
/// failed QEMU becomes [`Error::Tool`] carrying QEMU's stderr).
impl From<diskforge_vm::Error> for Error {
    fn from(e: diskforge_vm::Error) -> Self {
        use diskforge_vm::Error as V;
        match e {
            V::MissingInput {
                what,
                path,
                package,
            } => Error::MissingInput {
                what,
                path,
                package,
            },
            V::ModuleNotFound {
                module,
                modules_dep,
            } => Error::ModuleNotFound {
                module,
                dir: modules_dep
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_default(),
            },
            V::Io {
                action,
                path,
                source,
            } => Error::Io {
                action,
                path,
                source,
            },
            V::Tool { step, source } => Error::Tool { step, source },
            V::Qemu { qemu, .. } => Error::Tool {
                step: "booting in qemu-system-x86_64",
                source: *qemu,
            },
            other @ (V::Invalid { .. } | V::MarkerNotSeen { .. }) => Error::Spec(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_errors_map_to_ours() {
        let e: Error = diskforge_vm::Error::ModuleNotFound {
            module: "sr_mod".into(),
            modules_dep: "/lib/modules/6.1/modules.dep".into(),
        }
        .into();
        assert_eq!(
            e.to_string(),
            "kernel module sr_mod not in /lib/modules/6.1/modules.dep"
        );
    }

    /// A fake modules tree and busybox: the initrd is gzip'd, lists the modules in load
    /// order, and its `/init` reads that list.
    #[test]
    fn initrd_from_fake_inputs() {
        let d = tempfile::tempdir().unwrap();
        let md = d.path().join("m");
        let mut dep = String::new();
        for m in MODULES {
            std::fs::create_dir_all(md.join("k")).unwrap();
            std::fs::write(md.join(format!("k/{m}.ko")), m).unwrap();
            dep.push_str(&format!(
                "k/{m}.ko:{}\n",
                if *m == "sr_mod" { " k/cdrom.ko" } else { "" }
            ));
        }
        std::fs::write(md.join("modules.dep"), dep).unwrap();
        let busybox = d.path().join("busybox");
        std::fs::write(&busybox, "bb").unwrap();
        let out = d.path().join("initrd.img");
        let order = write_initrd(
            &InitrdInputs {
                busybox,
                modules_dir: md,
            },
            &out,
        )
        .unwrap();
        assert_eq!(order.len(), MODULES.len());
        assert_eq!(order[0], "k/crct10dif_generic.ko");
        let cdrom = order.iter().position(|m| m == "k/cdrom.ko").unwrap();
        let sr = order.iter().position(|m| m == "k/sr_mod.ko").unwrap();
        assert!(cdrom < sr, "{order:?}");
        assert_eq!(&std::fs::read(&out).unwrap()[..2], b"\x1f\x8b", "gzip");
        assert!(init_script().contains("$(cat /etc/diskforge-modules)"));
    }

    #[test]
    fn init_script_has_every_marker() {
        let s = init_script();
        assert!(!s.contains('@'), "unreplaced placeholder in {s}");
        assert!(s.contains(markers::BOOTED) && s.contains(markers::DONE));
        assert!(s.contains("poweroff -f"));
    }
}
