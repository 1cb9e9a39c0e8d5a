//! The `busybox` element: a tiny bootable root tree from the host's static busybox and
//! Debian kernel, with an initramfs that mounts the root filesystem named on the kernel
//! command line.
//!
//! What [`busybox_root`] writes (paths relative to the tree):
//! - `bin/busybox` and one symlink per applet at the path `busybox --list-full` gives
//!   (`bin/ls -> busybox`, `usr/sbin/x -> ../../bin/busybox`), except `sbin/init` and
//!   `linuxrc`;
//! - `sbin/init`: a shell script that mounts `/proc`, `/sys`, `/dev` (devtmpfs) and
//!   `/dev/pts`, remounts `/` read-write, runs `mount -a` (the fstab the block-device step
//!   writes), sets the hostname, prints `diskforge init: mounted / /boot/efi …` and then
//!   [`BusyboxOptions::marker`] on `/dev/console` and
//!   `/dev/ttyS0`, then powers off (`poweroff -f`) or keeps a shell on the console;
//! - `etc/passwd`, `etc/group`, `etc/hostname`, `etc/os-release` (`ID=diskforge`,
//!   `VARIANT_ID=busybox`), `etc/shells`;
//! - `boot/vmlinuz-RELEASE` (the kernel, copied) and `boot/initrd.img-RELEASE` with the
//!   `vmlinuz` and `initrd.img` symlinks at the top, as Debian makes them;
//! - the empty directories a system needs (`dev proc sys tmp run root mnt var/log …`).
//!
//! The initramfs (gzip'd cpio `newc`, [`diskforge_vm::Initramfs`]) holds busybox, the
//! modules of [`DEFAULT_MODULES`] plus [`BusyboxOptions::extra_modules`] with their
//! dependencies, and an `/init` that loads them, reads `root=UUID=…|LABEL=…|/dev/…`,
//! `rootfstype=`, `rootflags=`, `rootdelay=` and `ro`/`rw` from `/proc/cmdline`, waits for
//! the device (busybox `findfs`, at most [`BusyboxOptions::root_wait_secs`]), mounts it,
//! moves `/dev` into it and `switch_root`s to `/sbin/init`. When anything is missing it
//! prints `diskforge initramfs: PANIC: …` (which device, what it waited for, which block
//! devices exist) and exits, which panics the kernel (`panic=-1` turns that into a reboot).
//!
//! Reproducible: with [`BusyboxOptions::source_date_epoch`] every path written gets that
//! mtime, and the initramfs has none, so the same inputs give the same tree and bytes.

use std::path::{Path, PathBuf};

use diskforge_cmd::Cmd;
use diskforge_vm::modules::ModuleDeps;
use diskforge_vm::{Compression, Initramfs, Kernel};
use serde::{Deserialize, Serialize};

use crate::{Error, Result, io_err};

/// Modules the initramfs loads by default, in order: the crypto providers that `sd_mod`'s
/// CRC chains and ext4's checksums look up by name first (`modules.dep` does not list
/// them), then the disk controllers of a QEMU guest (IDE `ata_piix`, SATA `ahci`, with
/// `sd_mod`; virtio-blk), ext4 for the root filesystem, and vfat with its code pages for an
/// ESP in the fstab.
pub const DEFAULT_MODULES: &[&str] = &[
    "crct10dif_generic",
    "crc64_rocksoft_generic",
    "crc32c_generic",
    "ata_piix",
    "ahci",
    "sd_mod",
    "virtio_pci",
    "virtio_blk",
    "ext4",
    "vfat",
    "nls_cp437",
    "nls_ascii",
];

/// Applets not linked: we write our own `/sbin/init`, and `linuxrc` is for initrds.
const SKIP_APPLETS: &[&str] = &["sbin/init", "linuxrc"];

/// Directories every tree gets, with their modes.
const DIRS: &[(&str, u32)] = &[
    ("bin", 0o755),
    ("boot", 0o755),
    ("dev", 0o755),
    ("etc", 0o755),
    ("home", 0o755),
    ("lib", 0o755),
    ("mnt", 0o755),
    ("proc", 0o555),
    ("root", 0o700),
    ("run", 0o755),
    ("sbin", 0o755),
    ("sys", 0o555),
    ("tmp", 0o1777),
    ("usr", 0o755),
    ("usr/bin", 0o755),
    ("usr/sbin", 0o755),
    ("var", 0o755),
    ("var/log", 0o755),
    ("var/tmp", 0o1777),
];

/// What to build. [`BusyboxOptions::default`] gives the defaults each field names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BusyboxOptions {
    /// Printed on the serial console (a line of its own) when the system is up. Default
    /// `diskforge-booted`.
    pub marker: String,
    /// The kernel image, named `vmlinuz-RELEASE` with its modules in
    /// `/lib/modules/RELEASE`. Default: the host's newest Debian kernel
    /// ([`diskforge_vm::Kernel::host`]).
    pub kernel: Option<PathBuf>,
    /// Modules loaded by the initramfs after [`DEFAULT_MODULES`] (`xfs`, `btrfs` …), with
    /// their dependencies. Default none.
    pub extra_modules: Vec<String>,
    /// Power off (`poweroff -f`) right after printing the marker; otherwise a shell stays on
    /// the console. Default false.
    pub poweroff: bool,
    /// `/etc/hostname`. Default `diskforge`.
    pub hostname: String,
    /// The static busybox to install (package `busybox-static`). Default `/bin/busybox`.
    pub busybox: PathBuf,
    /// `SOURCE_DATE_EPOCH`: the mtime of every path written, for a reproducible tree.
    /// Default none (the current time).
    pub source_date_epoch: Option<u64>,
    /// How long the initramfs waits for the root device, in seconds. Default 30.
    pub root_wait_secs: u32,
}

impl Default for BusyboxOptions {
    fn default() -> Self {
        BusyboxOptions {
            marker: "diskforge-booted".into(),
            kernel: None,
            extra_modules: Vec::new(),
            poweroff: false,
            hostname: "diskforge".into(),
            busybox: diskforge_vm::initramfs::BUSYBOX.into(),
            source_date_epoch: None,
            root_wait_secs: 30,
        }
    }
}

/// What [`busybox_root`] wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RootReport {
    /// `uname -r` of the kernel.
    pub kernel_release: String,
    /// The kernel inside the root filesystem (`/boot/vmlinuz-RELEASE`), for
    /// [`crate::GrubConfig::kernel`].
    pub kernel: String,
    /// The initramfs inside the root filesystem (`/boot/initrd.img-RELEASE`), for
    /// [`crate::GrubConfig::initrd`].
    pub initrd: String,
    /// Bytes of the kernel image.
    pub kernel_bytes: u64,
    /// Bytes of the initramfs.
    pub initrd_bytes: u64,
    /// The busybox version (`1.35.0`).
    pub busybox_version: String,
    /// Applet symlinks made.
    pub applets: usize,
    /// Modules in the initramfs, in load order (paths under `/lib/modules/RELEASE`).
    pub modules: Vec<String>,
    /// Paths written (files, symlinks and directories).
    pub paths: usize,
    /// Bytes of the regular files written.
    pub bytes: u64,
}

/// Writes into a tree, remembering every path for the mtimes.
struct Tree<'a> {
    root: &'a Path,
    written: Vec<String>,
    bytes: u64,
}

impl<'a> Tree<'a> {
    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// `rel` as a directory (made if missing) with `mode`. An existing symlink to an
    /// absolute target is refused: writing through it would leave the tree.
    fn dir(&mut self, rel: &str, mode: u32) -> Result<()> {
        let p = self.path(rel);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(&p).map_err(io_err("reading the link", &p))?;
                if target.is_absolute() {
                    return Err(Error::Invalid {
                        what: format!("{} -> {}", p.display(), target.display()),
                        reason: "an absolute symlink in the tree would make us write outside \
                                 it; make it relative"
                            .into(),
                    });
                }
                return Ok(());
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Error::Invalid {
                    what: p.display().to_string(),
                    reason: "exists and is not a directory".into(),
                });
            }
            Err(_) => std::fs::create_dir_all(&p).map_err(io_err("creating", &p))?,
        }
        set_mode(&p, mode)?;
        self.written.push(rel.to_owned());
        Ok(())
    }

    /// Make the parent directories of `rel` (0755), as in [`Tree::dir`].
    fn parents(&mut self, rel: &str) -> Result<()> {
        let parts: Vec<&str> = rel.split('/').collect();
        for n in 1..parts.len() {
            let d = parts[..n].join("/");
            if !self.written.contains(&d) {
                self.dir(&d, 0o755)?;
            }
        }
        Ok(())
    }

    /// Remove whatever is at `p` that is not a directory (a file or symlink we replace).
    fn clear(p: &Path) -> Result<()> {
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => Err(Error::Invalid {
                what: p.display().to_string(),
                reason: "is a directory where a file belongs".into(),
            }),
            Ok(_) => std::fs::remove_file(p).map_err(io_err("replacing", p)),
            Err(_) => Ok(()),
        }
    }

    fn file(&mut self, rel: &str, mode: u32, data: &[u8]) -> Result<()> {
        self.parents(rel)?;
        let p = self.path(rel);
        Self::clear(&p)?;
        std::fs::write(&p, data).map_err(io_err("writing", &p))?;
        set_mode(&p, mode)?;
        self.bytes += data.len() as u64;
        self.written.push(rel.to_owned());
        Ok(())
    }

    fn copy(&mut self, rel: &str, mode: u32, from: &Path) -> Result<u64> {
        self.parents(rel)?;
        let p = self.path(rel);
        Self::clear(&p)?;
        let n = std::fs::copy(from, &p).map_err(io_err("copying to", &p))?;
        set_mode(&p, mode)?;
        self.bytes += n;
        self.written.push(rel.to_owned());
        Ok(n)
    }

    fn symlink(&mut self, rel: &str, target: &str) -> Result<()> {
        self.parents(rel)?;
        let p = self.path(rel);
        Self::clear(&p)?;
        std::os::unix::fs::symlink(target, &p).map_err(io_err("making the symlink", &p))?;
        self.written.push(rel.to_owned());
        Ok(())
    }

    /// Set every written path's mtime (and atime) to `epoch`, deepest first, then the root.
    fn stamp(&mut self, epoch: u64) -> Result<()> {
        self.written
            .sort_by_key(|r| std::cmp::Reverse(r.matches('/').count()));
        self.written.dedup();
        let paths = self.written.iter().map(|r| self.path(r));
        crate::stamp(paths.chain([self.root.to_owned()]), epoch)
    }
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .map_err(io_err("setting the mode of", p))
}

/// The target of the symlink at `applet` (`usr/bin/x`) pointing at `bin/busybox`.
fn applet_target(applet: &str) -> String {
    let depth = applet.matches('/').count();
    if applet.starts_with("bin/") && depth == 1 {
        return "busybox".into();
    }
    format!("{}bin/busybox", "../".repeat(depth))
}

/// `BusyBox v1.35.0 (Debian …) multi-call binary.` → `1.35.0`.
fn parse_version(banner: &str) -> Option<String> {
    let line = banner.lines().next()?;
    let v = line.strip_prefix("BusyBox v")?;
    Some(v.split_whitespace().next()?.to_owned())
}

/// A valid hostname (RFC 1123 labels), so `/etc/hostname` and `hostname -F` agree.
fn check_hostname(h: &str) -> Result<()> {
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid {
            what: format!("hostname {h:?}"),
            reason: "must be letters, digits and '-' in dot-separated labels of 1-63".into(),
        })
    }
}

/// The marker must survive the shell scripts unquoted-free: printable, no quote characters.
fn check_marker(m: &str) -> Result<()> {
    let ok = !m.trim().is_empty()
        && m.chars().all(|c| {
            c.is_ascii_graphic() && !matches!(c, '\'' | '"' | '\\' | '`' | '$') || c == ' '
        });
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid {
            what: format!("marker {m:?}"),
            reason: "must be printable ASCII without quotes, backslashes, '`' or '$'".into(),
        })
    }
}

/// The root tree's `/sbin/init`.
pub(crate) fn sbin_init(opts: &BusyboxOptions) -> String {
    let end = if opts.poweroff {
        "sync\npoweroff -f\n"
    } else {
        "while :; do setsid cttyhack /bin/sh -l; sleep 1; done\n"
    };
    format!(
        r#"#!/bin/sh
# diskforge busybox /sbin/init: mount the API filesystems and the fstab, print the marker.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
mounted() {{ grep -q "^[^ ]* $1 " /proc/mounts 2>/dev/null; }}
mounted /proc || mount -t proc proc /proc
mounted /sys || mount -t sysfs sysfs /sys
mounted /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts
mounted /dev/pts || mount -t devpts devpts /dev/pts
mount -o remount,rw / 2>/dev/null || echo "diskforge init: / stays read-only" > /dev/console
if [ -f /etc/fstab ]; then
  mount -a 2>/dev/null || echo "diskforge init: mount -a failed" > /dev/console
fi
hostname -F /etc/hostname 2>/dev/null
echo "diskforge init: mounted $(grep -v -E ' (proc|sysfs|devtmpfs|devpts) ' /proc/mounts | cut -d' ' -f2 | tr '\n' ' ')" > /dev/console
echo '{marker}' > /dev/console
[ -c /dev/ttyS0 ] && echo '{marker}' > /dev/ttyS0 2>/dev/null
{end}"#,
        marker = opts.marker,
    )
}

/// The initramfs's `/init`.
pub(crate) fn initramfs_init(opts: &BusyboxOptions) -> String {
    format!(
        r#"#!/bin/sh
# diskforge busybox initramfs: load modules, find root= from the kernel command line,
# mount it and switch_root to its /sbin/init.
/bin/busybox mkdir -p /proc /sys /dev /mnt /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
panic() {{
  echo "diskforge initramfs: PANIC: $*" > /dev/console
  echo "diskforge initramfs: PANIC: $*" > /dev/kmsg 2>/dev/null
  exit 1
}}
for m in $(cat {modules}); do insmod "$m" 2>/dev/null; done
root=""; fstype=""; flags=""; mode=ro; wait={wait}
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    root=*) root="${{arg#root=}}" ;;
    rootfstype=*) fstype="${{arg#rootfstype=}}" ;;
    rootflags=*) flags="${{arg#rootflags=}}" ;;
    rootdelay=*) wait="${{arg#rootdelay=}}" ;;
    ro) mode=ro ;;
    rw) mode=rw ;;
  esac
done
[ -n "$root" ] || panic "no root= on the kernel command line: $(cat /proc/cmdline)"
case "$root" in
  UUID=*|LABEL=*|/dev/*) ;;
  *) panic "root=$root: expected root=UUID=..., root=LABEL=... or root=/dev/..." ;;
esac
dev=""
i=0
while :; do
  case "$root" in
    /dev/*) [ -b "$root" ] && dev="$root" ;;
    *) dev="$(findfs "$root" 2>/dev/null)" ;;
  esac
  [ -n "$dev" ] && break
  [ "$i" -ge $((wait * 10)) ] && panic "root device $root not found within ${{wait}}s; block devices: $(ls /sys/class/block | tr '\n' ' ')"
  sleep 0.1
  i=$((i + 1))
done
opts="$mode"
[ -n "$flags" ] && opts="$mode,$flags"
if [ -n "$fstype" ]; then
  mount -t "$fstype" -o "$opts" "$dev" /mnt || panic "mounting $dev ($root, $fstype) failed"
else
  mount -o "$opts" "$dev" /mnt || panic "mounting $dev ($root) failed"
fi
[ -x /mnt/sbin/init ] || panic "$root ($dev) has no executable /sbin/init"
[ -d /mnt/dev ] && mount --move /dev /mnt/dev
umount /sys /proc
exec switch_root /mnt /sbin/init
panic "switch_root to $root failed"
"#,
        modules = diskforge_vm::initramfs::MODULE_LIST,
        wait = opts.root_wait_secs,
    )
}

fn os_release(busybox_version: &str) -> String {
    format!(
        "PRETTY_NAME=\"diskforge busybox {busybox_version}\"\n\
         NAME=\"diskforge busybox\"\n\
         ID=diskforge\n\
         VARIANT=\"busybox\"\n\
         VARIANT_ID=busybox\n\
         VERSION_ID=\"{busybox_version}\"\n"
    )
}

/// Everything [`busybox_root`] needs from the host, checked before anything is written.
struct Inputs {
    kernel: Kernel,
    busybox_version: String,
    /// Applet paths, sorted.
    applets: Vec<String>,
    /// Module names for the initramfs (they all resolve in `modules.dep`).
    modules: Vec<String>,
}

impl Inputs {
    fn gather(opts: &BusyboxOptions) -> Result<Inputs> {
        check_marker(&opts.marker)?;
        check_hostname(&opts.hostname)?;
        let vm_err = |step| {
            move |source| Error::Vm {
                step,
                source: Box::new(source),
            }
        };
        let kernel = match &opts.kernel {
            Some(k) => Kernel::from_image(k),
            None => Kernel::host(),
        }
        .map_err(vm_err("finding the kernel"))?;
        std::fs::File::open(&kernel.image).map_err(io_err("opening the kernel", &kernel.image))?;
        let mut modules: Vec<String> = DEFAULT_MODULES.iter().map(|m| (*m).to_owned()).collect();
        modules.extend(opts.extra_modules.iter().cloned());
        let names: Vec<&str> = modules.iter().map(String::as_str).collect();
        ModuleDeps::read(&kernel.modules_dir)
            .and_then(|d| d.load_order(&names))
            .map_err(vm_err("resolving the initramfs modules"))?;

        let busybox_cmd = |args: &[&str], step| {
            Cmd::new(&opts.busybox)
                .args(args)
                .read()
                .map_err(|source| Error::Tool {
                    step,
                    source: Box::new(source),
                })
        };
        let banner = busybox_cmd(&["--help"], "asking busybox for its version")?;
        let busybox_version = parse_version(&banner).ok_or_else(|| Error::Invalid {
            what: opts.busybox.display().to_string(),
            reason: format!(
                "not busybox: `--help` printed {:?}",
                banner.lines().next().unwrap_or("")
            ),
        })?;
        let list = busybox_cmd(&["--list-full"], "listing busybox applets")?;
        let mut applets: Vec<String> = list
            .lines()
            .map(str::trim)
            .filter(|a| !a.is_empty() && !SKIP_APPLETS.contains(a) && *a != "bin/busybox")
            .map(str::to_owned)
            .collect();
        applets.sort_unstable();
        applets.dedup();
        if let Some(a) = applets.iter().find(|a| {
            a.starts_with('/') || a.split('/').any(|c| c.is_empty() || c == "." || c == "..")
        }) {
            return Err(Error::Invalid {
                what: format!("busybox applet path {a:?}"),
                reason: "not a plain relative path".into(),
            });
        }
        Ok(Inputs {
            kernel,
            busybox_version,
            applets,
            modules,
        })
    }
}

/// Build the busybox root tree in `tree` (made if missing). See the module docs. The inputs
/// (options, kernel, modules, busybox) are all checked before anything is written.
pub fn busybox_root(tree: &Path, opts: &BusyboxOptions) -> Result<RootReport> {
    let inputs = Inputs::gather(opts)?;
    diskforge_fault::point("boot.busybox-root")?;
    std::fs::create_dir_all(tree).map_err(io_err("creating", tree))?;
    let mut t = Tree {
        root: tree,
        written: Vec::new(),
        bytes: 0,
    };
    for (d, mode) in DIRS {
        t.dir(d, *mode)?;
    }
    t.copy("bin/busybox", 0o755, &opts.busybox)?;
    for a in &inputs.applets {
        t.symlink(a, &applet_target(a))?;
    }
    t.file("sbin/init", 0o755, sbin_init(opts).as_bytes())?;
    t.file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n")?;
    t.file("etc/group", 0o644, b"root:x:0:\n")?;
    t.file("etc/shells", 0o644, b"/bin/sh\n/bin/ash\n")?;
    let hostname = format!("{}\n", opts.hostname);
    t.file("etc/hostname", 0o644, hostname.as_bytes())?;
    let os = os_release(&inputs.busybox_version);
    t.file("etc/os-release", 0o644, os.as_bytes())?;

    let kernel = &inputs.kernel;
    let release = &kernel.release;
    let kernel_rel = format!("boot/vmlinuz-{release}");
    let initrd_rel = format!("boot/initrd.img-{release}");
    let kernel_bytes = t.copy(&kernel_rel, 0o644, &kernel.image)?;
    t.symlink("vmlinuz", &kernel_rel)?;
    t.symlink("initrd.img", &initrd_rel)?;

    let names: Vec<&str> = inputs.modules.iter().map(String::as_str).collect();
    let mut initramfs = Initramfs::new(initramfs_init(opts))
        .modules(&kernel.modules_dir, &names)
        .compression(Compression::Gzip);
    initramfs.busybox = opts.busybox.clone();
    let initrd_path = t.path(&initrd_rel);
    let written = initramfs.write(&initrd_path).map_err(|source| Error::Vm {
        step: "writing the initramfs",
        source: Box::new(source),
    })?;
    set_mode(&initrd_path, 0o644)?;
    let initrd_bytes = std::fs::metadata(&initrd_path)
        .map_err(io_err("reading the size of", &initrd_path))?
        .len();
    t.bytes += initrd_bytes;
    t.written.push(initrd_rel.clone());

    if let Some(epoch) = opts.source_date_epoch {
        t.stamp(epoch)?;
    }
    let mut paths = t.written.clone();
    paths.sort_unstable();
    paths.dedup();
    Ok(RootReport {
        kernel_release: release.clone(),
        kernel: format!("/{kernel_rel}"),
        initrd: format!("/{initrd_rel}"),
        kernel_bytes,
        initrd_bytes,
        busybox_version: inputs.busybox_version,
        applets: inputs.applets.len(),
        modules: written.modules,
        paths: paths.len(),
        bytes: t.bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applet_targets_are_relative() {
        assert_eq!(applet_target("bin/ls"), "busybox");
        assert_eq!(applet_target("sbin/ifconfig"), "../bin/busybox");
        assert_eq!(applet_target("usr/bin/["), "../../bin/busybox");
        assert_eq!(applet_target("linuxrc"), "bin/busybox");
    }

    #[test]
    fn version_from_banner() {
        let b = "BusyBox v1.35.0 (Debian 1:1.35.0-4+deb12u1+b1) multi-call binary.\nmore";
        assert_eq!(parse_version(b).as_deref(), Some("1.35.0"));
        assert_eq!(parse_version("GNU coreutils"), None);
    }

    #[test]
    fn bad_hostname_and_marker_refused() {
        assert!(check_hostname("diskforge").is_ok());
        assert!(check_hostname("a.b-c").is_ok());
        let e = check_hostname("bad host").unwrap_err().to_string();
        assert!(e.starts_with("hostname \"bad host\": must be"), "{e}");
        assert!(check_hostname("-x").is_err());
        assert!(check_marker("diskforge-booted ok").is_ok());
        let e = check_marker("it's").unwrap_err().to_string();
        assert!(e.contains("without quotes"), "{e}");
        assert!(check_marker("$(reboot)").is_err());
        assert!(check_marker("   ").is_err());
    }

    #[test]
    fn scripts_snapshot() {
        let opts = BusyboxOptions {
            marker: "M-UP".into(),
            poweroff: true,
            ..BusyboxOptions::default()
        };
        insta::assert_snapshot!("sbin_init", sbin_init(&opts));
        insta::assert_snapshot!("initramfs_init", initramfs_init(&opts));
        let shell = BusyboxOptions {
            poweroff: false,
            ..opts
        };
        let init = sbin_init(&shell);
        assert!(init.ends_with("while :; do setsid cttyhack /bin/sh -l; sleep 1; done\n"));
        assert!(!init.contains("poweroff"));
    }
}
