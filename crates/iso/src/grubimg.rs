//! The volume id inside a GRUB EFI binary (`BOOTX64.EFI`, `grubx64.efi`): `grub-mkimage -c`
//! builds a config into the image (module type `OBJ_TYPE_CONFIG`), `grub-mkstandalone`
//! a tar memdisk (`OBJ_TYPE_MEMDISK`) holding `/boot/grub/grub.cfg`; either may say
//! `search --label OLD`, and then UEFI boot stops at `grub>` after a volume id change.
//!
//! [`rewrite_volid`] finds the module area (`struct grub_module_info64`, magic `mimg`, in
//! GRUB's `mods` section; layout from GRUB's `include/grub/kernel.h` and
//! `util/mkimage.c`), edits those configs with [`crate::bootcfg::edit_config`] and writes
//! them back in the room they have: a config module is NUL-padded to its size; a tar member
//! may change size within the 512-byte blocks it has (its header size and checksum are
//! rewritten). The binary keeps its length. It refuses (an `Err` with the reason) a binary
//! signed for Secure Boot (a certificate table in the PE header: the signature would no
//! longer match), an edit that needs more room, and any other place that still names the
//! old id.

use crate::bootcfg::{ConfigEdit, Dialect, edit_config};

/// `grub_module_info64.magic` ("mimg" as a little-endian u32).
const MODULE_MAGIC: &[u8; 4] = b"mimg";
/// `OBJ_TYPE_MEMDISK`.
const OBJ_MEMDISK: u32 = 1;
/// `OBJ_TYPE_CONFIG`.
const OBJ_CONFIG: u32 = 2;
/// A tar block.
const TAR_BLOCK: usize = 512;

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Whether a PE image carries an Authenticode signature (data directory 4, the certificate
/// table, is not empty).
fn is_signed(bin: &[u8]) -> bool {
    let Some(pe) = u32_at(bin, 0x3c).map(|v| v as usize) else {
        return false;
    };
    if bin.get(pe..pe + 4) != Some(b"PE\0\0") {
        return false;
    }
    let opt = pe + 24;
    let dirs = match bin.get(opt..opt + 2) {
        Some([0x0b, 0x02]) => opt + 112, // PE32+
        Some([0x0b, 0x01]) => opt + 96,  // PE32
        _ => return false,
    };
    u32_at(bin, dirs + 4 * 8 + 4).is_some_and(|size| size != 0)
}

/// The offset of `struct grub_module_info64`: the magic followed by a zero padding word,
/// the offset of the first module (past the 24-byte header) and a total size that fits
/// the file. The magic also occurs in GRUB's code (a `cmp` immediate), so each candidate
/// is checked.
fn module_info(bin: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = find(&bin[from..], MODULE_MAGIC) {
        let at = from + i;
        let ok = u32_at(bin, at + 4) == Some(0)
            && u64_at(bin, at + 8).is_some_and(|first| (24..4096).contains(&first))
            && u64_at(bin, at + 16).is_some_and(|total| {
                usize::try_from(total).is_ok_and(|t| t >= 24 && at.saturating_add(t) <= bin.len())
            });
        if ok {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// Rename `old` to `new` in the GRUB configs built into the EFI binary `bin`.
/// `Ok(None)`: `old` does not occur; `Ok(Some(bytes))`: the edited binary (same length);
/// `Err(reason)`: it occurs where we cannot rewrite it safely.
pub fn rewrite_volid(bin: &[u8], old: &str, new: &str) -> Result<Option<Vec<u8>>, String> {
    if find(bin, old.as_bytes()).is_none() {
        return Ok(None);
    }
    if is_signed(bin) {
        return Err("signed for Secure Boot (rewriting would break the signature)".into());
    }
    let edit = ConfigEdit {
        append: Vec::new(),
        volid: Some((old.to_owned(), new.to_owned())),
    };
    let mut out = bin.to_vec();
    // Byte ranges of the configs we understood: an old id left there (a menu title) is
    // harmless text, anywhere else it is not.
    let mut understood: Vec<std::ops::Range<usize>> = Vec::new();
    if let Some(info) = module_info(bin) {
        let first = u64_at(bin, info + 8).ok_or("truncated module info")? as usize;
        let total = u64_at(bin, info + 16).ok_or("truncated module info")? as usize;
        let end = info.saturating_add(total).min(bin.len());
        let mut at = info.saturating_add(first);
        while at + 8 <= end {
            let kind = u32_at(bin, at).ok_or("truncated module header")?;
            let size = u32_at(bin, at + 4).ok_or("truncated module header")? as usize;
            if size < 8 || at + size > end {
                return Err(format!(
                    "module at byte {at} of size {size} overflows the image"
                ));
            }
            let body = at + 8..at + size;
            match kind {
                OBJ_CONFIG => {
                    rewrite_config(&mut out[body.clone()], &edit, at)?;
                    understood.push(body);
                }
                OBJ_MEMDISK => {
                    understood.extend(rewrite_tar(&mut out[body.clone()], &edit, body.start)?);
                }
                _ => {}
            }
            at += size;
        }
    }
    let mut from = 0;
    while let Some(i) = find(&out[from..], old.as_bytes()) {
        let pos = from + i;
        if !understood.iter().any(|r| r.contains(&pos)) {
            return Err(format!(
                "the old id is at byte {pos}, outside any GRUB config module we can rewrite"
            ));
        }
        from = pos + 1;
    }
    Ok((out != bin).then_some(out))
}

/// Edit a NUL-padded config module body in place.
fn rewrite_config(body: &mut [u8], edit: &ConfigEdit, at: usize) -> Result<(), String> {
    let len = body.iter().position(|&b| b == 0).unwrap_or(body.len());
    let text = String::from_utf8_lossy(&body[..len]).into_owned();
    let new = edit_config(Dialect::Grub, &text, edit);
    if new == text {
        return Ok(());
    }
    // Keep a terminating NUL.
    if new.len() >= body.len() {
        return Err(format!(
            "the built-in config (module at byte {at}) has room for {} bytes, the edited one \
             needs {}",
            body.len() - 1,
            new.len()
        ));
    }
    body[..new.len()].copy_from_slice(new.as_bytes());
    body[new.len()..].fill(0);
    Ok(())
}

/// Edit the `.cfg` members of a tar memdisk in place; the byte ranges (absolute, from
/// `base`) of the members looked at.
fn rewrite_tar(
    tar: &mut [u8],
    edit: &ConfigEdit,
    base: usize,
) -> Result<Vec<std::ops::Range<usize>>, String> {
    let mut seen = Vec::new();
    let mut at = 0;
    while at + TAR_BLOCK <= tar.len() {
        let h = &tar[at..at + TAR_BLOCK];
        if h.iter().all(|&b| b == 0) || &h[257..262] != b"ustar" {
            break;
        }
        let name = String::from_utf8_lossy(&h[..100])
            .trim_end_matches('\0')
            .to_owned();
        let size_txt = String::from_utf8_lossy(&h[124..136]);
        let size = usize::from_str_radix(size_txt.trim_matches(|c: char| c == '\0' || c == ' '), 8)
            .map_err(|_| format!("memdisk member {name}: bad size {size_txt:?}"))?;
        let data = at + TAR_BLOCK;
        let blocks = size.div_ceil(TAR_BLOCK);
        if data + blocks * TAR_BLOCK > tar.len() {
            return Err(format!("memdisk member {name} overflows the memdisk"));
        }
        if h[156] == b'0' || h[156] == 0 {
            seen.push(base + data..base + data + blocks * TAR_BLOCK);
            let text = String::from_utf8_lossy(&tar[data..data + size]).into_owned();
            let new = edit_config(Dialect::Grub, &text, edit);
            if new != text {
                if new.len().div_ceil(TAR_BLOCK) != blocks {
                    return Err(format!(
                        "memdisk member {name}: the edited config needs {} bytes, its blocks \
                         hold {}",
                        new.len(),
                        blocks * TAR_BLOCK
                    ));
                }
                let region = &mut tar[data..data + blocks * TAR_BLOCK];
                region[..new.len()].copy_from_slice(new.as_bytes());
                region[new.len()..].fill(0);
                let h = &mut tar[at..at + TAR_BLOCK];
                let sz = format!("{:011o}\0", new.len());
                h[124..136].copy_from_slice(sz.as_bytes());
                h[148..156].fill(b' ');
                let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
                h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
            }
        }
        at = data + blocks * TAR_BLOCK;
    }
    Ok(seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake image: a PE-less blob with a module area holding a config and a memdisk.
    fn image(config: &str, room: usize, tar: &[u8]) -> Vec<u8> {
        let mut mods = Vec::new();
        let mut cfg = config.as_bytes().to_vec();
        cfg.resize(room, 0);
        mods.extend(OBJ_CONFIG.to_le_bytes());
        mods.extend(((cfg.len() + 8) as u32).to_le_bytes());
        mods.extend(&cfg);
        mods.extend(OBJ_MEMDISK.to_le_bytes());
        mods.extend(((tar.len() + 8) as u32).to_le_bytes());
        mods.extend(tar);
        let mut bin = vec![0x90u8; 64];
        bin.extend(MODULE_MAGIC);
        bin.extend(0u32.to_le_bytes());
        bin.extend(24u64.to_le_bytes());
        bin.extend(((mods.len() + 24) as u64).to_le_bytes());
        bin.extend(mods);
        bin.extend([0x90u8; 32]);
        bin
    }

    fn tar_with(name: &str, body: &str) -> Vec<u8> {
        let mut h = vec![0u8; TAR_BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[124..136].copy_from_slice(format!("{:011o}\0", body.len()).as_bytes());
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        let mut t = h;
        let mut b = body.as_bytes().to_vec();
        b.resize(body.len().div_ceil(TAR_BLOCK) * TAR_BLOCK, 0);
        t.extend(b);
        t.extend(vec![0u8; 2 * TAR_BLOCK]);
        t
    }

    #[test]
    fn config_and_memdisk_are_rewritten_in_place() {
        let cfg = "search --no-floppy --set=root --label OLD-ID\nset prefix=($root)/EFI/BOOT\n";
        let tar = tar_with("boot/grub/grub.cfg", "search -l 'OLD-ID' --set=root\n");
        let bin = image(cfg, 128, &tar);
        let new = rewrite_volid(&bin, "OLD-ID", "A-MUCH-LONGER-NEW-ID")
            .unwrap()
            .unwrap();
        assert_eq!(new.len(), bin.len());
        let s = String::from_utf8_lossy(&new);
        assert!(s.contains("--label A-MUCH-LONGER-NEW-ID\n"), "{s}");
        assert!(s.contains("-l 'A-MUCH-LONGER-NEW-ID'"), "{s}");
        assert!(!s.contains("OLD-ID"));
        assert_eq!(rewrite_volid(&bin, "ABSENT", "X").unwrap(), None);
    }

    #[test]
    fn no_room_stray_ids_and_signatures_are_refused() {
        let cfg = "search --label OLD\n";
        let bin = image(cfg, cfg.len() + 2, &tar_with("x", "y"));
        let e = rewrite_volid(&bin, "OLD", "LONGER-NEW").unwrap_err();
        assert!(e.contains("has room for"), "{e}");
        let mut bin = image("", 16, &tar_with("x", "y"));
        bin.extend(b"search --label OLD");
        let e = rewrite_volid(&bin, "OLD", "NEW").unwrap_err();
        assert!(e.contains("outside"), "{e}");
        // A PE32+ header with a certificate table.
        let mut pe = vec![0u8; 512];
        pe[0x3c] = 0x40;
        pe[0x40..0x44].copy_from_slice(b"PE\0\0");
        pe[0x40 + 24] = 0x0b;
        pe[0x40 + 25] = 0x02;
        let cert = 0x40 + 24 + 112 + 32 + 4;
        pe[cert] = 0x10;
        pe.extend(b"search --label OLD");
        let e = rewrite_volid(&pe, "OLD", "NEW").unwrap_err();
        assert!(e.contains("signed"), "{e}");
    }
}
