//! The fixture's initrd: busybox-static, a shell `/init` that prints the markers, and the
//! kernel modules needed to find the boot medium, packed as a gzip'd cpio "newc" archive
//! (the format the kernel unpacks, `Documentation/driver-api/early-userspace/buffer-format.rst`)
//! written here, so no root is needed for the `/dev/console` node.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

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

/// The `/init` script. `@MODULES@` is replaced by the module list file's path.
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
for m in $(cat @MODULES@); do insmod "/lib/modules/$m" 2>/dev/null; done
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

/// Where `/init` finds the ordered module list.
const MODULE_LIST: &str = "etc/diskforge-modules";

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
        .replace("@MODULES@", &format!("/{MODULE_LIST}"))
}

/// `modules.dep` parsed: module name (`-` folded to `_`) → (relative path, dependency paths).
#[derive(Debug, Default)]
pub struct ModuleDeps {
    by_name: BTreeMap<String, String>,
    deps: BTreeMap<String, Vec<String>>,
}

/// A module's name from its path: `kernel/lib/crc-t10dif.ko` → `crc_t10dif`.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

impl ModuleDeps {
    /// Parse the text of `modules.dep` (`path: dep dep …` per line, see depmod(8)).
    pub fn parse(text: &str) -> Self {
        let mut m = ModuleDeps::default();
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

    /// The paths to load for `names`, each after its dependencies, without repeats.
    pub fn load_order(&self, names: &[&str], modules_dir: &Path) -> Result<Vec<String>> {
        let mut order = Vec::new();
        for name in names {
            let path =
                self.by_name
                    .get(&name.replace('-', "_"))
                    .ok_or_else(|| Error::ModuleNotFound {
                        module: (*name).to_owned(),
                        dir: modules_dir.to_owned(),
                    })?;
            self.visit(path, &mut order);
        }
        Ok(order)
    }

    fn visit(&self, path: &str, order: &mut Vec<String>) {
        if order.iter().any(|p| p == path) {
            return;
        }
        for dep in self.deps.get(path).map(Vec::as_slice).unwrap_or_default() {
            self.visit(dep, order);
        }
        order.push(path.to_owned());
    }
}

/// A cpio "newc" archive being written (format: `man 5 cpio`, "New ASCII Format").
pub struct Cpio<W: Write> {
    out: W,
    ino: u32,
}

impl<W: Write> Cpio<W> {
    /// Start an archive on `out`.
    pub fn new(out: W) -> Self {
        Cpio { out, ino: 1 }
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> std::io::Result<()> {
        let name_len = name.len() + 1;
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let size = u32::try_from(data.len()).map_err(std::io::Error::other)?;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, name_len, 0
        );
        self.ino += 1;
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.pad(header.len() + name_len)?;
        self.out.write_all(data)?;
        self.pad(data.len())
    }

    fn pad(&mut self, len: usize) -> std::io::Result<()> {
        let n = (4 - len % 4) % 4;
        self.out.write_all(&[0u8; 3][..n])
    }

    /// A directory.
    pub fn dir(&mut self, name: &str) -> std::io::Result<()> {
        self.entry(name, 0o040755, (0, 0), &[])
    }

    /// A regular file with these permission bits.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> std::io::Result<()> {
        self.entry(name, 0o100000 | perm, (0, 0), data)
    }

    /// A character device node.
    pub fn char_dev(&mut self, name: &str, major: u32, minor: u32) -> std::io::Result<()> {
        self.entry(name, 0o020600, (major, minor), &[])
    }

    /// The trailer; returns the writer.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.entry("TRAILER!!!", 0, (0, 0), &[])?;
        Ok(self.out)
    }
}

/// Inputs of the initrd.
#[derive(Debug, Clone)]
pub struct InitrdInputs {
    /// The static busybox binary.
    pub busybox: PathBuf,
    /// `/lib/modules/VERSION` of the kernel that will boot.
    pub modules_dir: PathBuf,
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io {
        action: "reading",
        path: path.to_owned(),
        source,
    })
}

/// Build the gzip'd cpio initrd at `out`; returns the module paths it loads, in order.
pub fn write_initrd(inputs: &InitrdInputs, out: &Path) -> Result<Vec<String>> {
    let dep_path = inputs.modules_dir.join("modules.dep");
    let deps = ModuleDeps::parse(&String::from_utf8_lossy(&read(&dep_path)?));
    let order = deps.load_order(MODULES, &inputs.modules_dir)?;
    let busybox = read(&inputs.busybox)?;
    let io = |source| Error::Io {
        action: "writing",
        path: out.to_owned(),
        source,
    };
    let file = std::fs::File::create(out).map_err(io)?;
    let gz = flate2::write::GzEncoder::new(
        std::io::BufWriter::new(file),
        flate2::Compression::default(),
    );
    let mut cpio = Cpio::new(gz);
    let mut dirs: Vec<String> = [
        "bin",
        "dev",
        "etc",
        "lib",
        "lib/modules",
        "mnt",
        "proc",
        "sys",
        "tmp",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    for m in &order {
        let mut parent = Path::new(m).parent();
        let mut chain = Vec::new();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            chain.push(format!("lib/modules/{}", p.display()));
            parent = p.parent();
        }
        for d in chain.into_iter().rev() {
            if !dirs.contains(&d) {
                dirs.push(d);
            }
        }
    }
    for d in &dirs {
        cpio.dir(d).map_err(io)?;
    }
    cpio.char_dev("dev/console", 5, 1).map_err(io)?;
    cpio.char_dev("dev/null", 1, 3).map_err(io)?;
    cpio.file("bin/busybox", 0o755, &busybox).map_err(io)?;
    cpio.file("init", 0o755, init_script().as_bytes())
        .map_err(io)?;
    cpio.file(
        MODULE_LIST,
        0o644,
        format!("{}\n", order.join("\n")).as_bytes(),
    )
    .map_err(io)?;
    for m in &order {
        let data = read(&inputs.modules_dir.join(m))?;
        cpio.file(&format!("lib/modules/{m}"), 0o644, &data)
            .map_err(io)?;
    }
    let gz = cpio.finish().map_err(io)?;
    let mut buf = gz.finish().map_err(io)?;
    buf.flush().map_err(io)?;
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_order_puts_deps_first_once() {
        let deps = ModuleDeps::parse(
            "kernel/drivers/scsi/sr_mod.ko: kernel/drivers/scsi/scsi_mod.ko kernel/drivers/cdrom/cdrom.ko\n\
             kernel/drivers/scsi/scsi_mod.ko: kernel/drivers/scsi/scsi_common.ko\n\
             kernel/drivers/scsi/scsi_common.ko:\n\
             kernel/drivers/cdrom/cdrom.ko:\n\
             kernel/fs/isofs/isofs.ko: kernel/drivers/cdrom/cdrom.ko\n\
             kernel/lib/crc-t10dif.ko:\n",
        );
        let order = deps
            .load_order(&["isofs", "sr_mod", "crc-t10dif"], Path::new("/m"))
            .unwrap();
        assert_eq!(
            order,
            [
                "kernel/drivers/cdrom/cdrom.ko",
                "kernel/fs/isofs/isofs.ko",
                "kernel/drivers/scsi/scsi_common.ko",
                "kernel/drivers/scsi/scsi_mod.ko",
                "kernel/drivers/scsi/sr_mod.ko",
                "kernel/lib/crc-t10dif.ko",
            ]
        );
        let err = deps.load_order(&["nope"], Path::new("/m")).unwrap_err();
        assert_eq!(err.to_string(), "kernel module nope not in /m/modules.dep");
    }

    #[test]
    fn cpio_newc_layout() {
        let mut c = Cpio::new(Vec::new());
        c.file("a", 0o644, b"xyz").unwrap();
        let out = c.finish().unwrap();
        // header 110 + "a\0" = 112 (aligned), data 3 + 1 pad.
        assert_eq!(&out[..6], b"070701");
        assert_eq!(&out[54..62], b"00000003"); // filesize
        assert_eq!(&out[110..112], b"a\0");
        assert_eq!(&out[112..116], b"xyz\0");
        assert_eq!(&out[116..122], b"070701");
        assert_eq!(out.len() % 4, 0);
    }

    #[test]
    fn init_script_has_every_marker() {
        let s = init_script();
        assert!(!s.contains('@'), "unreplaced placeholder in {s}");
        assert!(s.contains(markers::BOOTED) && s.contains(markers::DONE));
        assert!(s.contains("poweroff -f"));
    }
}
