//! Edit boot configs inside a FAT image (the El Torito UEFI `efiboot.img`, or an appended EFI
//! system partition), never mounting it.
//!
//! First our own minimal FAT12/16/32 code on the image in memory
//! ([`edit_configs_in_memory`], after Microsoft's FAT specification, fatgen103): read the
//! BPB, walk the directories (8.3 names and VFAT long names, lookup only), follow each
//! config's cluster chain and overwrite it when the new content fills exactly the clusters it
//! has (the FAT is not touched, only the data and the entry's size). When an edit needs a
//! cluster more or fewer, mtools does it ([`edit_configs`]: `mtype`, `mcopy -o`).
//!
//! The image keeps its size either way: mtools allocates inside the filesystem, so the
//! edited image always fits back where it came from.

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
    let c = mtools("mdir", image).args(["-/", "-b", "::/"]);
    let out = crate::exec::run("listing the EFI image with mdir", c, crate::exec::QUICK)?;
    Ok(out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("::"))
        .filter(|p| !p.ends_with('/'))
        .map(str::to_owned)
        .collect())
}

/// Read one file out of the image (copied into `scratch`, so binaries stay intact).
pub fn read_file(image: &Path, path: &str, scratch: &Path) -> Result<Vec<u8>> {
    let out = scratch.join("fat-read-file");
    if out.exists() {
        std::fs::remove_file(&out).map_err(|e| Error::io("removing", &out, e))?;
    }
    let c = mtools("mcopy", image).arg(format!("::{path}")).arg(&out);
    crate::exec::run(
        "reading from the EFI image with mcopy",
        c,
        crate::exec::QUICK,
    )?;
    let data = std::fs::read(&out).map_err(|e| Error::io("reading", &out, e))?;
    std::fs::remove_file(&out).map_err(|e| Error::io("removing", &out, e))?;
    Ok(data)
}

/// Overwrite one file in the image with `data` (staged in `scratch`).
pub fn write_file(image: &Path, path: &str, data: &[u8], scratch: &Path) -> Result<()> {
    diskforge_fault::point("iso.fat.write")?;
    let staged = scratch.join("fat-staged-file");
    std::fs::write(&staged, data).map_err(|e| Error::io("writing", &staged, e))?;
    let c = mtools("mcopy", image)
        .arg("-o")
        .arg(&staged)
        .arg(format!("::{path}"));
    crate::exec::run(
        "writing into the EFI image with mcopy",
        c,
        crate::exec::QUICK,
    )?;
    std::fs::remove_file(&staged).map_err(|e| Error::io("removing", &staged, e))
}

/// What editing the files of a FAT image did.
#[derive(Debug, Default)]
pub struct FatEdits {
    /// Paths changed (inside the image).
    pub changed: Vec<String>,
    /// `(path, reason)` of the files that name the old volume id and cannot be rewritten
    /// (left as they are).
    pub refused: Vec<(String, String)>,
}

/// The new content of one file of a FAT image under `edit`: boot configs by their dialect,
/// GRUB EFI binaries (`*.efi`) for a volume id change. `Ok(None)` when it does not change.
fn edit_file(
    path: &str,
    old: &[u8],
    edit: &ConfigEdit,
) -> std::result::Result<Option<Vec<u8>>, String> {
    if let Some(d) = dialect(path) {
        let new = edit_config(d, &String::from_utf8_lossy(old), edit);
        return Ok((new.as_bytes() != old).then(|| new.into_bytes()));
    }
    match &edit.volid {
        Some((o, n)) if path.to_ascii_lowercase().ends_with(".efi") => {
            crate::grubimg::rewrite_volid(old, o, n)
        }
        _ => Ok(None),
    }
}

/// Apply `edit` to every boot config (`grub.cfg`, `*linux.cfg`, …) and, for a volume id
/// change, every GRUB EFI binary in the image.
pub fn edit_configs(image: &Path, edit: &ConfigEdit, scratch: &Path) -> Result<FatEdits> {
    let mut r = FatEdits::default();
    for path in list_files(image)? {
        let is_efi = path.to_ascii_lowercase().ends_with(".efi");
        if dialect(&path).is_none() && !(is_efi && edit.volid.is_some()) {
            continue;
        }
        let old = read_file(image, &path, scratch)?;
        match edit_file(&path, &old, edit) {
            Ok(Some(new)) => {
                write_file(image, &path, &new, scratch)?;
                r.changed.push(path);
            }
            Ok(None) => {}
            Err(why) => r.refused.push((path, why)),
        }
    }
    Ok(r)
}

// ---------------------------------------------------------------------------------------
// In-memory FAT12/16/32: enough to find files and overwrite one within its own clusters.
// Layout per Microsoft's "FAT: General Overview of On-Disk Format" (fatgen103).

/// A directory entry found by [`Fat::walk`].
struct Entry {
    /// Path from the root, `/EFI/BOOT/grub.cfg` style (the long name when there is one).
    path: String,
    /// Byte offset of the 32-byte short entry in the image.
    offset: usize,
    first_cluster: u32,
    size: u32,
}

/// The parsed BIOS parameter block of a FAT image held in memory.
struct Fat {
    cluster_bytes: usize,
    fat_start: usize,
    /// Bytes in one FAT copy.
    fat_len: usize,
    bits: u8,
    /// FAT12/16: byte range of the fixed root directory. FAT32: empty.
    root: std::ops::Range<usize>,
    root_cluster: u32,
    data_start: usize,
    clusters: u32,
}

fn le16(b: &[u8], at: usize) -> u32 {
    u32::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl Fat {
    /// Parse the boot sector; `None` when it is not a FAT filesystem we understand.
    fn parse(img: &[u8]) -> Option<Self> {
        if img.len() < 512 || img[510..512] != [0x55, 0xaa] {
            return None;
        }
        let bps = le16(img, 11) as usize;
        let spc = usize::from(img[13]);
        let reserved = le16(img, 14) as usize;
        let nfats = usize::from(img[16]);
        let root_entries = le16(img, 17) as usize;
        let total = match le16(img, 19) {
            0 => le32(img, 32) as usize,
            n => n as usize,
        };
        let fat_sectors = match le16(img, 22) {
            0 => le32(img, 36) as usize,
            n => n as usize,
        };
        if !bps.is_power_of_two()
            || !(512..=4096).contains(&bps)
            || !spc.is_power_of_two()
            || reserved == 0
            || nfats == 0
            || fat_sectors == 0
        {
            return None;
        }
        let root_sectors = (root_entries * 32).div_ceil(bps);
        let root_start = reserved + nfats * fat_sectors;
        let data_sector = root_start + root_sectors;
        let clusters = u32::try_from(total.checked_sub(data_sector)? / spc).ok()?;
        let bits = match clusters {
            0..4085 => 12,
            4085..65525 => 16,
            _ => 32,
        };
        if total * bps > img.len() || (bits == 32) != (root_entries == 0) {
            return None;
        }
        Some(Self {
            cluster_bytes: bps * spc,
            fat_start: reserved * bps,
            fat_len: fat_sectors * bps,
            bits,
            root: root_start * bps..data_sector * bps,
            root_cluster: if bits == 32 { le32(img, 44) } else { 0 },
            data_start: data_sector * bps,
            clusters,
        })
    }

    /// The FAT entry for cluster `n` (first FAT copy); `None` past the FAT's end.
    fn next(&self, img: &[u8], n: u32) -> Option<u32> {
        let n = n as usize;
        let (at, width) = match self.bits {
            12 => (n + n / 2, 2),
            16 => (2 * n, 2),
            _ => (4 * n, 4),
        };
        if at + width > self.fat_len {
            return None;
        }
        let at = self.fat_start + at;
        Some(match self.bits {
            12 if n % 2 == 1 => le16(img, at) >> 4,
            12 => le16(img, at) & 0xfff,
            16 => le16(img, at),
            _ => le32(img, at) & 0x0fff_ffff,
        })
    }

    /// Byte ranges of the clusters of a chain; `None` on a broken or looping chain.
    fn chain(&self, img: &[u8], first: u32) -> Option<Vec<std::ops::Range<usize>>> {
        let end = match self.bits {
            12 => 0xff8,
            16 => 0xfff8,
            _ => 0x0fff_fff8,
        };
        let mut out = Vec::new();
        let mut c = first;
        while c < end {
            if c < 2 || c >= self.clusters + 2 || out.len() > self.clusters as usize {
                return None;
            }
            let start = self.data_start + (c as usize - 2) * self.cluster_bytes;
            out.push(start..start + self.cluster_bytes);
            c = self.next(img, c)?;
        }
        Some(out)
    }

    /// Every regular file below the root, depth first. `None` on a structure we do not trust.
    fn walk(&self, img: &[u8]) -> Option<Vec<Entry>> {
        let mut files = Vec::new();
        let root = if self.bits == 32 {
            self.chain(img, self.root_cluster)?
        } else {
            vec![self.root.clone()]
        };
        let mut todo = vec![(String::new(), root, 0)];
        while let Some((dir, ranges, depth)) = todo.pop() {
            if depth > 16 {
                return None;
            }
            let mut lfn: Vec<u16> = Vec::new();
            let mut lfn_sum = None;
            'dir: for r in ranges {
                for offset in r.step_by(32) {
                    let e = &img[offset..offset + 32];
                    match e[0] {
                        0 => break 'dir,
                        0xe5 => {
                            lfn.clear();
                            continue;
                        }
                        _ => {}
                    }
                    let attr = e[11];
                    if attr & 0x3f == 0x0f {
                        if e[0] & 0x40 != 0 {
                            lfn.clear();
                        }
                        // Pieces come last first: prepend each one.
                        let piece: Vec<u16> = [1..11, 14..26, 28..32]
                            .into_iter()
                            .flat_map(|r| e[r].chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]])))
                            .collect();
                        lfn.splice(0..0, piece);
                        lfn_sum = Some(e[13]);
                        continue;
                    }
                    let long = std::mem::take(&mut lfn);
                    if attr & 0x08 != 0 {
                        continue;
                    }
                    let short = short_name(e);
                    if short == "." || short == ".." {
                        continue;
                    }
                    let name = if !long.is_empty() && lfn_sum == Some(checksum(&e[..11])) {
                        let end = long.iter().position(|&c| c == 0).unwrap_or(long.len());
                        String::from_utf16_lossy(&long[..end])
                    } else {
                        short
                    };
                    let path = format!("{dir}/{name}");
                    let first = (le16(e, 20) << 16 | le16(e, 26)) & 0x0fff_ffff;
                    if attr & 0x10 != 0 {
                        todo.push((path, self.chain(img, first)?, depth + 1));
                    } else {
                        files.push(Entry {
                            path,
                            offset,
                            first_cluster: first,
                            size: le32(e, 28),
                        });
                    }
                }
            }
        }
        Some(files)
    }
}

/// The 8.3 name of a short entry, lower-cased where the NT case bits say so (as mtools shows).
fn short_name(e: &[u8]) -> String {
    let part = |r: std::ops::Range<usize>, lower: bool| {
        let s: String = e[r]
            .iter()
            .map(|&b| char::from(b))
            .collect::<String>()
            .trim_end()
            .to_owned();
        if lower { s.to_ascii_lowercase() } else { s }
    };
    let mut base = part(0..8, e[12] & 0x08 != 0);
    if e[0] == 0x05 {
        base.replace_range(0..1, "\u{e5}");
    }
    let ext = part(8..11, e[12] & 0x10 != 0);
    if ext.is_empty() {
        base
    } else {
        format!("{base}.{ext}")
    }
}

/// The LFN checksum of an 11-byte short name.
fn checksum(name: &[u8]) -> u8 {
    name.iter().fold(0u8, |s, &b| {
        ((s & 1) << 7).wrapping_add(s >> 1).wrapping_add(b)
    })
}

/// Apply `edit` to every boot config (and, for a volume id change, every GRUB EFI binary)
/// in the FAT image `img` held in memory, without any external program. Each new content
/// must fill exactly as many clusters as the file has now; then the data is overwritten and
/// the directory entry's size updated (the FAT itself is untouched). Returns `None`, with
/// `img` unchanged, when the image is not a FAT we understand or an edit does not fit: use
/// [`edit_configs`] (mtools) then.
pub fn edit_configs_in_memory(img: &mut [u8], edit: &ConfigEdit) -> Option<FatEdits> {
    let fat = Fat::parse(img)?;
    let mut writes = Vec::new();
    let mut refused = Vec::new();
    for f in fat.walk(img)? {
        let is_efi = f.path.to_ascii_lowercase().ends_with(".efi");
        if dialect(&f.path).is_none() && !(is_efi && edit.volid.is_some()) {
            continue;
        }
        let ranges = if f.first_cluster == 0 {
            Vec::new()
        } else {
            fat.chain(img, f.first_cluster)?
        };
        let mut old = Vec::with_capacity(f.size as usize);
        for r in &ranges {
            old.extend_from_slice(&img[r.clone()]);
        }
        if old.len() < f.size as usize {
            return None;
        }
        old.truncate(f.size as usize);
        let new = match edit_file(&f.path, &old, edit) {
            Ok(Some(new)) => new,
            Ok(None) => continue,
            Err(why) => {
                refused.push((f.path.clone(), why));
                continue;
            }
        };
        if new.len().div_ceil(fat.cluster_bytes) != ranges.len() {
            tracing::debug!(path = %f.path, "edited config needs other clusters: mtools");
            return None;
        }
        let size = u32::try_from(new.len()).ok()?;
        writes.push((f, ranges, new, size));
    }
    let mut changed = Vec::new();
    for (f, ranges, new, size) in writes {
        let mut rest = new.as_slice();
        for r in ranges {
            let n = rest.len().min(r.len());
            let (head, tail) = img[r].split_at_mut(n);
            head.copy_from_slice(&rest[..n]);
            tail.fill(0);
            rest = &rest[n..];
        }
        img[f.offset + 28..f.offset + 32].copy_from_slice(&size.to_le_bytes());
        changed.push(f.path);
    }
    Some(FatEdits { changed, refused })
}

#[cfg(test)]
mod tests {
    use super::*;
    use diskforge_iso_fixture::sample::GRUB_CFG;

    fn edit() -> ConfigEdit {
        ConfigEdit {
            append: vec!["inst.ks=hd:LABEL=X:/ks.cfg".into()],
            volid: None,
        }
    }

    /// A fresh FAT image of `bits` with the grub.cfg (long name, lower case) in a long-named
    /// directory, an 8.3 `LOOPBACK.CFG`, and `extra` as `/EFI/BOOT/syslinux.cfg`.
    fn image(dir: &Path, bits: &str, mib: u64, extra: &[u8]) -> std::path::PathBuf {
        let img = dir.join(format!("fat{bits}.img"));
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(mib << 20))
            .unwrap();
        Cmd::new("mkfs.vfat")
            .args(["-F", bits, "-n", "EFIBOOT"])
            .arg(&img)
            .run()
            .unwrap();
        mtools("mmd", &img)
            .args(["::/EFI", "::/EFI/BOOT", "::/EFI/Boot Loader Files"])
            .run()
            .unwrap();
        for (name, data) in [
            ("EFI/Boot Loader Files/grub.cfg", GRUB_CFG.as_bytes()),
            ("LOOPBACK.CFG", GRUB_CFG.as_bytes()),
            ("EFI/BOOT/syslinux.cfg", extra),
            ("EFI/BOOT/BOOTX64.EFI", &[0x90; 5000]),
        ] {
            write_file(&img, &format!("/{name}"), data, dir).unwrap();
        }
        img
    }

    fn fsck(img: &Path) {
        Cmd::new("fsck.vfat").arg("-n").arg(img).run().unwrap();
    }

    #[test]
    fn edits_in_place_on_fat12_16_32() {
        let dir = tempfile::tempdir().unwrap();
        let syslinux = b"label linux\n  kernel vmlinuz\n  append initrd=initrd.img quiet\n";
        for (bits, mib) in [("12", 2), ("16", 20), ("32", 40)] {
            let img = image(dir.path(), bits, mib, syslinux);
            let mut data = std::fs::read(&img).unwrap();
            let mut changed = edit_configs_in_memory(&mut data, &edit()).unwrap().changed;
            changed.sort();
            assert_eq!(
                changed,
                [
                    "/EFI/BOOT/syslinux.cfg",
                    "/EFI/Boot Loader Files/grub.cfg",
                    "/LOOPBACK.CFG"
                ],
                "FAT{bits}"
            );
            std::fs::write(&img, &data).unwrap();
            fsck(&img);
            for path in &changed {
                let want = edit_config(
                    dialect(path).unwrap(),
                    &String::from_utf8_lossy(if path.ends_with("syslinux.cfg") {
                        syslinux
                    } else {
                        GRUB_CFG.as_bytes()
                    }),
                    &edit(),
                );
                assert!(want.contains("inst.ks="));
                assert_eq!(
                    read_file(&img, path, dir.path()).unwrap(),
                    want.as_bytes(),
                    "FAT{bits}"
                );
            }
            assert_eq!(
                read_file(&img, "/EFI/BOOT/BOOTX64.EFI", dir.path()).unwrap(),
                [0x90; 5000]
            );
            // Same edit again: nothing left to change.
            let mut again = data.clone();
            let again_edits = edit_configs_in_memory(&mut again, &edit()).unwrap();
            assert!(again_edits.changed.is_empty() && again_edits.refused.is_empty());
            assert_eq!(again, data);
        }
    }

    #[test]
    fn edit_needing_another_cluster_is_left_to_mtools() {
        let dir = tempfile::tempdir().unwrap();
        let img0 = image(dir.path(), "12", 2, b"");
        let cluster = Fat::parse(&std::fs::read(&img0).unwrap())
            .unwrap()
            .cluster_bytes;
        // A syslinux.cfg filling its last cluster exactly: the appended argument spills over.
        let mut cfg = b"append initrd=initrd.img\n".to_vec();
        cfg.resize(cluster * 2, b'#');
        *cfg.last_mut().unwrap() = b'\n';
        let img = image(dir.path(), "12", 2, &cfg);
        let orig = std::fs::read(&img).unwrap();
        let mut data = orig.clone();
        assert!(edit_configs_in_memory(&mut data, &edit()).is_none());
        assert!(data == orig, "image changed although the edit did not fit");
        // mtools does it, and the in-memory reader sees the result.
        let changed = edit_configs(&img, &edit(), dir.path()).unwrap().changed;
        assert!(changed.contains(&"/EFI/BOOT/syslinux.cfg".to_owned()));
        fsck(&img);
        let fat = Fat::parse(&std::fs::read(&img).unwrap()).unwrap();
        let files = fat.walk(&std::fs::read(&img).unwrap()).unwrap();
        let f = files.iter().find(|f| f.path == "/EFI/BOOT/syslinux.cfg");
        assert!(f.is_some_and(|f| f.size as usize > cluster * 2));
    }

    #[test]
    fn not_fat_is_none() {
        assert!(edit_configs_in_memory(&mut [0u8; 4096], &edit()).is_none());
        let mut zeros_with_sig = vec![0u8; 4096];
        zeros_with_sig[510] = 0x55;
        zeros_with_sig[511] = 0xaa;
        assert!(edit_configs_in_memory(&mut zeros_with_sig, &edit()).is_none());
    }
}
