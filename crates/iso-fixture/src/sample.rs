//! A small installer-like hybrid ISO built with xorriso, for examples and tests: isolinux for
//! BIOS, a FAT `efiboot.img` (made with mkfs.vfat + mtools, never mounted) for UEFI, an
//! isohybrid MBR + GPT, boot configs in every place a remaster must edit, and a filler file so
//! the image is large enough for isomd5sum's fragment checkpoints (over 21 × 32 KiB).
//!
//! The kernel and initrd are placeholders: this image is for remaster tests, not for booting
//! ([`crate::build`] makes one that boots). It needs no kernel, busybox or GRUB on the host,
//! only isolinux, syslinux-common, dosfstools, mtools and xorriso; the file helpers and the
//! error type are the fixture's.

use std::path::{Path, PathBuf};

use diskforge_cmd::Cmd;

use crate::{Error, Result, mkdirs, tool};

/// The isolinux configuration of the sample.
pub const ISOLINUX_CFG: &str = "default linux\ntimeout 10\n\nlabel linux\n  menu label ^Install\n  kernel /images/vmlinuz\n  append initrd=/images/initrd.img quiet\n\nlabel rescue\n  menu label ^Rescue\n  kernel /images/vmlinuz\n  append initrd=/images/initrd.img rescue\n";

/// The GRUB configuration of the sample (tree and `efiboot.img`).
pub const GRUB_CFG: &str = "set timeout=5\n\nmenuentry 'Install' {\n\tlinux /images/vmlinuz quiet\n\tinitrd /images/initrd.img\n}\nmenuentry 'Rescue' {\n\tlinuxefi /images/vmlinuz rescue\n\tinitrdefi /images/initrd.img\n}\n";

/// What to build.
#[derive(Debug, Clone)]
pub struct SampleOptions {
    /// Volume id.
    pub volid: String,
    /// Size of `/filler.bin` in bytes.
    pub filler_bytes: u64,
    /// Also append `efiboot.img` as GPT/MBR partition 2 (like Fedora's and Debian's media).
    pub appended_esp: bool,
    /// Split the filler over this many files under `/packages` (1: a single `/filler.bin`).
    pub filler_files: u32,
}

impl Default for SampleOptions {
    fn default() -> Self {
        SampleOptions {
            volid: "DF_SAMPLE".into(),
            filler_bytes: 2 << 20,
            appended_esp: false,
            filler_files: 1,
        }
    }
}

/// Write `path`, creating its parent directories.
fn write(path: &Path, data: impl AsRef<[u8]>) -> Result<()> {
    if let Some(p) = path.parent() {
        mkdirs(p)?;
    }
    crate::write(path, data)
}

/// Pseudo-random bytes (xorshift), cheap to make in bulk.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

fn write_filler(tree: &Path, opts: &SampleOptions) -> Result<()> {
    if opts.filler_files <= 1 {
        return write(
            &tree.join("filler.bin"),
            noise(7, opts.filler_bytes as usize),
        );
    }
    let per = (opts.filler_bytes / u64::from(opts.filler_files)) as usize;
    let block = noise(11, per + 4096);
    for i in 0..opts.filler_files {
        // Each file starts at a different offset of the noise, so no two are equal.
        let start = (i as usize * 8) % 4096;
        write(
            &tree.join(format!("packages/pkg-{i:05}.bin")),
            &block[start..start + per],
        )?;
    }
    Ok(())
}

/// Build the sample under `dir` (which must exist) and return the ISO's path.
pub fn build_sample(dir: &Path, opts: &SampleOptions) -> Result<PathBuf> {
    let tree = dir.join("sample-tree");
    let isolinux = Path::new(crate::host::ISOLINUX_BIN);
    let ldlinux = Path::new(crate::host::LDLINUX_C32);
    for (src, dst) in [
        (isolinux, "isolinux/isolinux.bin"),
        (ldlinux, "isolinux/ldlinux.c32"),
    ] {
        let data = std::fs::read(src).map_err(|_| Error::MissingInput {
            what: "isolinux",
            path: src.to_owned(),
            package: "isolinux, syslinux-common",
        })?;
        write(&tree.join(dst), data)?;
    }
    write(&tree.join("isolinux/isolinux.cfg"), ISOLINUX_CFG)?;
    write(&tree.join("boot/grub/grub.cfg"), GRUB_CFG)?;
    write(&tree.join("EFI/BOOT/grub.cfg"), GRUB_CFG)?;
    write(
        &tree.join("EFI/BOOT/BOOTX64.EFI"),
        b"placeholder EFI binary\n",
    )?;
    write(&tree.join("images/vmlinuz"), vec![0x4bu8; 300_000])?;
    write(&tree.join("images/initrd.img"), vec![0x1fu8; 200_000])?;
    write(&tree.join("docs/README.txt"), "sample installer image\n")?;
    write_filler(&tree, opts)?;

    let efi = tree.join("images/efiboot.img");
    std::fs::File::create(&efi)
        .and_then(|f| f.set_len(2 << 20))
        .map_err(|source| Error::Io {
            action: "creating",
            path: efi.clone(),
            source,
        })?;
    Cmd::new("mkfs.vfat")
        .args(["-n", "EFIBOOT"])
        .arg(&efi)
        .run()
        .map_err(tool("making the sample's efiboot.img with mkfs.vfat"))?;
    Cmd::new("mmd")
        .arg("-i")
        .arg(&efi)
        .args(["::/EFI", "::/EFI/BOOT"])
        .run()
        .map_err(tool("making EFI/BOOT in the sample's efiboot.img"))?;
    let cfg = dir.join("sample-grub.cfg");
    write(&cfg, GRUB_CFG)?;
    Cmd::new("mcopy")
        .arg("-i")
        .arg(&efi)
        .arg(&cfg)
        .arg("::/EFI/BOOT/grub.cfg")
        .run()
        .map_err(tool("copying grub.cfg into the sample's efiboot.img"))?;
    Cmd::new("mcopy")
        .arg("-i")
        .arg(&efi)
        .arg(tree.join("EFI/BOOT/BOOTX64.EFI"))
        .arg("::/EFI/BOOT/BOOTX64.EFI")
        .run()
        .map_err(tool("copying BOOTX64.EFI into the sample's efiboot.img"))?;

    let out = dir.join(format!("{}.iso", opts.volid.to_lowercase()));
    let mut c = Cmd::new("xorriso")
        .args(["-as", "mkisofs", "-o"])
        .arg(&out)
        .args([
            "-V",
            &opts.volid,
            "-A",
            "DISKFORGE SAMPLE",
            "-publisher",
            "diskforge",
            "-p",
            "DISKFORGE",
        ])
        .args([
            "-R",
            "-J",
            "-joliet-long",
            "-isohybrid-mbr",
            crate::host::ISOHDPFX,
        ])
        .args(["-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat"])
        .args(["-no-emul-boot", "-boot-load-size", "4", "-boot-info-table"])
        .args(["-eltorito-alt-boot"]);
    if opts.appended_esp {
        c = c.args(["-append_partition", "2", "0xef"]).arg(&efi).args([
            "-e",
            "--interval:appended_partition_2:all::",
            "-no-emul-boot",
        ]);
    } else {
        c = c.args([
            "-e",
            "images/efiboot.img",
            "-no-emul-boot",
            "-isohybrid-gpt-basdat",
        ]);
    }
    c.env("SOURCE_DATE_EPOCH", crate::DEFAULT_EPOCH.to_string())
        .arg(&tree)
        .run()
        .map_err(tool("assembling the sample ISO with xorriso"))?;
    Ok(out)
}
