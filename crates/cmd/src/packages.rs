//! The one program → Debian package table.
//!
//! [`PACKAGES`] lists every Debian package diskforge's tools and tests need, with the
//! programs each provides and what needs it. Two users read it: [`debian_package`] names the
//! package of a missing program in [`crate::Error::NotFound`] (`install dosfstools`), and
//! `cargo xtask deps` installs exactly these packages. Packages that ship files rather than
//! programs (the kernel, firmware, boot loaders) have no programs listed.

use std::path::Path;

/// A Debian package diskforge needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Package {
    /// The package name, as `apt-get install` takes it.
    pub name: &'static str,
    /// Programs it provides that diskforge runs (file names, looked up on `PATH`).
    pub programs: &'static [&'static str],
    /// What in diskforge needs it (for `cargo xtask deps --check`).
    pub why: &'static str,
}

/// Shorthand for the table below.
const fn pkg(name: &'static str, programs: &'static [&'static str], why: &'static str) -> Package {
    Package {
        name,
        programs,
        why,
    }
}

/// Every package diskforge needs (what `cargo xtask deps` installs), each program once.
pub const PACKAGES: &[Package] = &[
    pkg(
        "qemu-system-x86",
        &["qemu-system-x86_64"],
        "vm-test runner, ISO boot checks (diskforge-vm)",
    ),
    pkg(
        "qemu-utils",
        &["qemu-img", "qemu-nbd"],
        "qemu-img (dfimg, qemu-img-cmd)",
    ),
    pkg(
        "linux-image-amd64",
        &[],
        "kernel + modules for the test VM and fixture ISO",
    ),
    pkg("busybox-static", &["busybox"], "VM and fixture initramfs"),
    pkg("cpio", &["cpio"], "inspecting initramfs archives"),
    pkg(
        "xz-utils",
        &["xz"],
        "extracting vmlinux from the kernel image",
    ),
    pkg(
        "kmod",
        &["modprobe", "insmod", "depmod"],
        "modprobe inside the VM",
    ),
    pkg(
        "util-linux",
        &[
            "losetup", "blkid", "findmnt", "wipefs", "lsblk", "partx", "blockdev", "mkswap",
            "setpriv",
        ],
        "losetup, blkid, partx, setpriv",
    ),
    pkg("mount", &["mount", "umount"], "mount(8) in tests"),
    pkg("fdisk", &["sfdisk", "fdisk"], "sfdisk verification"),
    pkg("gdisk", &["sgdisk", "gdisk"], "sgdisk verification"),
    pkg("parted", &["parted", "partprobe"], "partition checks"),
    pkg(
        "e2fsprogs",
        &[
            "mke2fs",
            "mkfs.ext2",
            "mkfs.ext3",
            "mkfs.ext4",
            "e2fsck",
            "debugfs",
            "tune2fs",
            "resize2fs",
            "dumpe2fs",
        ],
        "mke2fs, e2fsck, debugfs",
    ),
    pkg(
        "xfsprogs",
        &["mkfs.xfs", "xfs_repair", "xfs_admin", "xfs_db"],
        "mkfs.xfs, xfs_repair",
    ),
    pkg(
        "btrfs-progs",
        &["mkfs.btrfs", "btrfs", "btrfstune"],
        "mkfs.btrfs",
    ),
    pkg(
        "dosfstools",
        &["mkfs.vfat", "mkfs.fat", "fsck.vfat", "fsck.fat", "mkdosfs"],
        "mkfs.vfat, fsck.vfat",
    ),
    pkg(
        "mtools",
        &["mcopy", "mdir", "mtype", "mmd", "mdel", "mattrib", "minfo"],
        "FAT edits without mounting",
    ),
    pkg(
        "squashfs-tools",
        &["mksquashfs", "unsquashfs"],
        "mksquashfs",
    ),
    pkg(
        "erofs-utils",
        &["mkfs.erofs", "fsck.erofs", "dump.erofs"],
        "mkfs.erofs",
    ),
    pkg(
        "lvm2",
        &[
            "pvcreate", "vgcreate", "lvcreate", "lvextend", "lvremove", "vgremove", "pvremove",
            "vgchange", "lvchange", "pvs", "vgs", "lvs", "lvm", "dmsetup",
        ],
        "LVM (VM tests)",
    ),
    pkg("xorriso", &["xorriso", "osirrox"], "ISO read/write"),
    pkg(
        "genisoimage",
        &["genisoimage", "isoinfo"],
        "conventional remaster route, isoinfo",
    ),
    pkg(
        "isomd5sum",
        &["implantisomd5", "checkisomd5"],
        "implantisomd5/checkisomd5 verification",
    ),
    pkg("isolinux", &[], "BIOS boot for the fixture ISO"),
    pkg("syslinux-common", &[], "ldlinux.c32 and friends"),
    pkg("syslinux-utils", &["isohybrid"], "isohybrid"),
    pkg("grub-efi-amd64-bin", &[], "UEFI GRUB for the fixture ISO"),
    pkg("grub-pc-bin", &[], "BIOS GRUB modules"),
    pkg(
        "grub-common",
        &["grub-mkstandalone", "grub-mkimage"],
        "grub-mkimage",
    ),
    pkg("ovmf", &[], "UEFI firmware for boot checks (diskforge-vm)"),
    pkg("rsync", &["rsync"], "conventional remaster route"),
    pkg(
        "debootstrap",
        &["debootstrap"],
        "debian-minimal element (disk-image-create), when mmdebstrap is missing",
    ),
    pkg(
        "mmdebstrap",
        &["mmdebstrap"],
        "debian-minimal element (disk-image-create): the Debian base, as dib prefers it",
    ),
    pkg(
        "man-db",
        &["man"],
        "man -l renders the generated man pages (tools/*/tests/help.rs)",
    ),
    pkg("umoci", &["umoci"], "OCI interop tests"),
    pkg("skopeo", &["skopeo"], "OCI interop tests"),
];

/// The Debian package that provides `program` (a name or a path), for the "install X" hint.
///
/// Looked up in [`PACKAGES`], which `cargo xtask deps` installs.
pub fn debian_package(program: &str) -> Option<&'static str> {
    let name = Path::new(program).file_name()?.to_str()?;
    PACKAGES
        .iter()
        .find(|p| p.programs.contains(&name))
        .map(|p| p.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups() {
        assert_eq!(debian_package("/usr/sbin/mkfs.xfs"), Some("xfsprogs"));
        assert_eq!(debian_package("sgdisk"), Some("gdisk"));
        assert_eq!(debian_package("sfdisk"), Some("fdisk"));
        assert_eq!(debian_package("lvcreate"), Some("lvm2"));
        assert_eq!(debian_package("umount"), Some("mount"));
        assert_eq!(
            debian_package("qemu-system-x86_64"),
            Some("qemu-system-x86")
        );
        assert_eq!(debian_package("xz"), Some("xz-utils"));
        assert_eq!(debian_package("no-such"), None);
        assert_eq!(debian_package("/"), None);
    }

    #[test]
    fn each_package_and_program_once() {
        let mut names: Vec<&str> = PACKAGES.iter().map(|p| p.name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(names.len(), before, "a package is listed twice");
        let mut programs: Vec<&str> = PACKAGES.iter().flat_map(|p| p.programs).copied().collect();
        programs.sort_unstable();
        let before = programs.len();
        programs.dedup();
        assert_eq!(programs.len(), before, "a program maps to two packages");
        assert!(PACKAGES.iter().all(|p| !p.why.is_empty()));
    }

    /// The qemu pair `cargo xtask deps` installs together must both be here.
    #[test]
    fn qemu_pair_present() {
        for q in ["qemu-system-x86", "qemu-utils"] {
            assert!(PACKAGES.iter().any(|p| p.name == q), "{q}");
        }
    }
}
