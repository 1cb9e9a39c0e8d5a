//! `cargo xtask deps`: make sure every system tool the tools and tests use is installed.
//!
//! One `dpkg-query` call checks all packages (well under a second when nothing is missing).
//! When something is missing it runs `apt-get update` once, then one `apt-get install`.
//!
//! The qemu trap: the machine image may ship a backported `qemu-utils` (10.x) while apt offers
//! `qemu-system-x86` 7.2, which conflicts with it; installing `qemu-system-x86` alone silently
//! removes `qemu-img`. So whenever a qemu package is missing, both are installed in the same
//! command with `qemu-utils` pinned to the version apt offers for `qemu-system-x86`
//! (`--allow-downgrades`).

use anyhow::{Context, Result, bail};
use xshell::{Shell, cmd};

use crate::flags::DepsArgs;

/// Debian packages the project needs, each with what needs it.
pub const PACKAGES: &[(&str, &str)] = &[
    ("qemu-system-x86", "vm-test runner, ISO boot checks"),
    ("qemu-utils", "qemu-img (dfimg, qemu-img-cmd)"),
    (
        "linux-image-amd64",
        "kernel + modules for the test VM and fixture ISO",
    ),
    ("busybox-static", "VM and fixture initramfs"),
    ("cpio", "initramfs archives"),
    ("kmod", "modprobe inside the VM"),
    ("util-linux", "losetup, blkid, sfdisk, setpriv"),
    ("fdisk", "sfdisk verification"),
    ("gdisk", "sgdisk verification"),
    ("parted", "partition checks"),
    ("e2fsprogs", "mke2fs, e2fsck, debugfs"),
    ("xfsprogs", "mkfs.xfs, xfs_repair"),
    ("btrfs-progs", "mkfs.btrfs"),
    ("dosfstools", "mkfs.vfat, fsck.vfat"),
    ("mtools", "FAT edits without mounting"),
    ("squashfs-tools", "mksquashfs"),
    ("erofs-utils", "mkfs.erofs"),
    ("lvm2", "LVM (VM tests)"),
    ("xorriso", "ISO read/write"),
    ("genisoimage", "conventional remaster route, isoinfo"),
    ("isomd5sum", "implantisomd5/checkisomd5 verification"),
    ("isolinux", "BIOS boot for the fixture ISO"),
    ("syslinux-common", "ldlinux.c32 and friends"),
    ("syslinux-utils", "isohybrid"),
    ("grub-efi-amd64-bin", "UEFI GRUB for the fixture ISO"),
    ("grub-pc-bin", "BIOS GRUB modules"),
    ("grub-common", "grub-mkstandalone"),
    ("ovmf", "UEFI firmware for boot checks"),
    ("rsync", "conventional remaster route"),
    (
        "man-db",
        "man -l renders the generated man pages (tools/*/tests/help.rs)",
    ),
    ("umoci", "OCI interop tests"),
    ("skopeo", "OCI interop tests"),
];

/// Package names from [`PACKAGES`] that dpkg does not report as installed.
pub fn missing(sh: &Shell) -> Result<Vec<&'static str>> {
    let names: Vec<&str> = PACKAGES.iter().map(|(p, _)| *p).collect();
    // dpkg-query exits 1 when some package is unknown; its stdout still lists the known ones.
    let query = names.clone();
    let format = "-f=${Package}\t${Status}\n";
    let out = cmd!(sh, "dpkg-query -W {format} {query...}")
        .quiet()
        .ignore_status()
        .ignore_stderr()
        .read()
        .context("running dpkg-query")?;
    let installed: Vec<&str> = out
        .lines()
        .filter(|l| l.ends_with("install ok installed"))
        .filter_map(|l| l.split('\t').next())
        .map(|p| p.split(':').next().unwrap_or(p))
        .collect();
    Ok(names
        .into_iter()
        .filter(|n| !installed.contains(n))
        .collect())
}

/// Install whatever is missing (apt-get update once first). Used by `deps`, `ci` and `demo`.
pub fn ensure_installed(sh: &Shell) -> Result<()> {
    let missing = missing(sh)?;
    if missing.is_empty() {
        eprintln!("deps: all {} packages present", PACKAGES.len());
        return Ok(());
    }
    eprintln!("deps: missing {}", missing.join(" "));
    if !rustix::process::geteuid().is_root() {
        bail!("deps: need root to apt-get install: {}", missing.join(" "));
    }
    let _env = sh.push_env("DEBIAN_FRONTEND", "noninteractive");
    cmd!(sh, "apt-get update -q")
        .run()
        .context("apt-get update")?;
    let mut args: Vec<String> = missing.iter().map(|s| s.to_string()).collect();
    if missing.iter().any(|p| p.starts_with("qemu-")) {
        let policy = cmd!(sh, "apt-cache policy qemu-system-x86")
            .quiet()
            .read()?;
        let candidate = policy
            .lines()
            .find_map(|l| l.trim().strip_prefix("Candidate:"))
            .map(str::trim)
            .filter(|v| *v != "(none)")
            .context("apt offers no qemu-system-x86 candidate")?
            .to_owned();
        args.retain(|p| !p.starts_with("qemu-"));
        args.push("qemu-system-x86".into());
        args.push(format!("qemu-utils={candidate}"));
    }
    cmd!(
        sh,
        "apt-get install -y -q --no-install-recommends --allow-downgrades {args...}"
    )
    .run()
    .context("apt-get install")?;
    let still = self::missing(sh)?;
    if !still.is_empty() {
        bail!(
            "deps: still missing after apt-get install: {}",
            still.join(" ")
        );
    }
    for tool in ["qemu-img", "qemu-system-x86_64"] {
        cmd!(sh, "{tool} --version")
            .quiet()
            .ignore_stdout()
            .run()
            .with_context(|| format!("{tool} missing after install"))?;
    }
    Ok(())
}

/// Whether `cargo deny` runs (CI's `deny` step needs it).
fn has_cargo_deny(sh: &Shell) -> bool {
    cmd!(sh, "cargo deny --version")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run()
        .is_ok()
}

/// Install cargo-deny (`cargo install --locked cargo-deny`, a release build of a few hundred
/// crates) when `cargo deny` is missing.
pub fn ensure_cargo_deny(sh: &Shell) -> Result<()> {
    if has_cargo_deny(sh) {
        return Ok(());
    }
    eprintln!("deps: installing cargo-deny (cargo install --locked cargo-deny)");
    cmd!(sh, "cargo install --locked cargo-deny")
        .run()
        .context("cargo install --locked cargo-deny")?;
    Ok(())
}

/// `cargo xtask deps [--check]`
pub fn run(sh: &Shell, args: &DepsArgs) -> Result<()> {
    if args.check {
        let m = missing(sh)?;
        let no_deny = !has_cargo_deny(sh);
        if m.is_empty() && !no_deny {
            println!("all {} packages present, and cargo-deny", PACKAGES.len());
            return Ok(());
        }
        for p in &m {
            let why = PACKAGES
                .iter()
                .find(|(n, _)| n == p)
                .map(|(_, w)| *w)
                .unwrap_or("");
            println!("missing {p:<20} {why}");
        }
        if no_deny {
            println!(
                "missing {:<20} ci step `deny` (cargo install)",
                "cargo-deny"
            );
        }
        bail!(
            "{} packages missing (run `cargo xtask deps`)",
            m.len() + usize::from(no_deny)
        );
    }
    ensure_installed(sh)?;
    ensure_cargo_deny(sh)
}
