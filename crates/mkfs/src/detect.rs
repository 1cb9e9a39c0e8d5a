//! Reading back which filesystem an image or device holds: `blkid -p -o export` (blkid(8),
//! low-level probing, no cache), with a superblock-magic reader for the types diskforge
//! creates when blkid is missing or finds nothing.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use diskforge_cmd::Cmd;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// `blkid` exit status when it finds nothing.
const BLKID_NOTHING_FOUND: i32 = 2;
/// Bytes read for magic detection: enough for the btrfs superblock at 64 KiB.
const PROBE_BYTES: usize = 0x10000 + 0x1000;

/// What [`detect`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Detected {
    /// blkid's `TYPE` (`ext4`, `xfs`, `vfat`, `btrfs`, `swap`, `squashfs`, `erofs`…).
    pub fs_type: String,
    /// `LABEL`, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// `UUID` (lower-case UUID, or `XXXX-XXXX` for FAT), when the type has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Which method found it.
    pub by: DetectedBy,
}

/// How a filesystem was detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DetectedBy {
    /// `blkid -p -o export`.
    Blkid,
    /// Our own superblock reader.
    Magic,
}

/// Parse `blkid -o export` output: `KEY=value` lines, values with `\`-escaped specials.
pub fn parse_blkid_export(text: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let mut val = String::with_capacity(v.len());
        let mut chars = v.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                if let Some(n) = chars.next() {
                    val.push(n);
                }
            } else {
                val.push(c);
            }
        }
        m.insert(k.trim().to_owned(), val);
    }
    m
}

/// Detect the filesystem on `path` (file or device).
pub fn detect(path: &Path) -> Result<Option<Detected>> {
    detect_at(path, 0)
}

/// Detect the filesystem starting `offset` bytes into `path` (a partition inside an image).
/// Uses `blkid -p -O OFFSET -o export`; falls back to [`detect_magic`] when blkid is missing,
/// fails, or finds nothing.
pub fn detect_at(path: &Path, offset: u64) -> Result<Option<Detected>> {
    let mut c = Cmd::new("blkid").args(["-p", "-o", "export"]);
    if offset > 0 {
        c = c.args(["-O", &offset.to_string()]);
    }
    match c.arg(path).read() {
        Ok(out) => {
            let mut m = parse_blkid_export(&out);
            if let Some(t) = m.remove("TYPE") {
                return Ok(Some(Detected {
                    fs_type: t,
                    label: m.remove("LABEL"),
                    uuid: m.remove("UUID"),
                    by: DetectedBy::Blkid,
                }));
            }
        }
        Err(e) if e.exit_status().and_then(|s| s.code()) == Some(BLKID_NOTHING_FOUND) => {}
        Err(e) => tracing::debug!(error = %e, "blkid failed; reading superblocks ourselves"),
    }
    let io = |action| {
        move |source| Error::Io {
            action,
            path: path.to_owned(),
            source,
        }
    };
    let mut f = File::open(path).map_err(io("opening"))?;
    detect_magic(&mut f, offset).map_err(io("reading"))
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn uuid_at(b: &[u8], at: usize) -> Option<String> {
    let u = &b[at..at + 16];
    if u.iter().all(|x| *x == 0) {
        return None;
    }
    let mut a = [0u8; 16];
    a.copy_from_slice(u);
    Some(crate::format_uuid(&a))
}

fn label_at(b: &[u8], at: usize, len: usize) -> Option<String> {
    let raw = &b[at..at + len];
    let end = raw.iter().position(|x| *x == 0).unwrap_or(len);
    let s = String::from_utf8_lossy(&raw[..end]).trim_end().to_owned();
    (!s.is_empty()).then_some(s)
}

/// Read superblock magic at `offset` for ext2/3/4, xfs, btrfs, squashfs, erofs, swap
/// (4 KiB pages) and FAT. Returns `None` when none matches.
pub fn detect_magic(r: &mut (impl Read + Seek), offset: u64) -> std::io::Result<Option<Detected>> {
    r.seek(SeekFrom::Start(offset))?;
    let mut b = vec![0u8; PROBE_BYTES];
    let mut filled = 0;
    while filled < b.len() {
        match r.read(&mut b[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(probe(&b))
}

fn found(t: &str, label: Option<String>, uuid: Option<String>) -> Option<Detected> {
    Some(Detected {
        fs_type: t.to_owned(),
        label,
        uuid,
        by: DetectedBy::Magic,
    })
}

fn probe(b: &[u8]) -> Option<Detected> {
    // btrfs: superblock at 64 KiB, magic "_BHRfS_M" at +0x40, fsid at +0x20, label at +0x12b.
    const BTRFS: usize = 0x10000;
    if &b[BTRFS + 0x40..BTRFS + 0x48] == b"_BHRfS_M" {
        return found(
            "btrfs",
            label_at(b, BTRFS + 0x12b, 256),
            uuid_at(b, BTRFS + 0x20),
        );
    }
    // xfs: "XFSB" at 0, uuid at 32, fname[12] at 108.
    if &b[..4] == b"XFSB" {
        return found("xfs", label_at(b, 108, 12), uuid_at(b, 32));
    }
    // squashfs: "hsqs" at 0; no label or UUID.
    if &b[..4] == b"hsqs" {
        return found("squashfs", None, None);
    }
    // ext2/3/4: superblock at 1024, s_magic 0xEF53 at +0x38.
    const EXT: usize = 1024;
    if le16(b, EXT + 0x38) == 0xEF53 {
        let compat = le32(b, EXT + 0x5c);
        let incompat = le32(b, EXT + 0x60);
        let ro_compat = le32(b, EXT + 0x64);
        // Features ext3 understands (filetype, recover, meta_bg / sparse_super, large_file,
        // btree_dir); anything else makes it ext4, as blkid decides.
        let t = if incompat & !0x16 != 0 || ro_compat & !0x7 != 0 {
            "ext4"
        } else if compat & 0x4 != 0 {
            "ext3"
        } else {
            "ext2"
        };
        return found(t, label_at(b, EXT + 0x78, 16), uuid_at(b, EXT + 0x68));
    }
    // erofs: superblock at 1024, magic 0xE0F5E1E2, uuid at +48, volume_name[16] at +64.
    if le32(b, EXT) == 0xE0F5_E1E2 {
        return found("erofs", label_at(b, EXT + 64, 16), uuid_at(b, EXT + 48));
    }
    // swap: "SWAPSPACE2" at the end of the first 4 KiB page; uuid at 1036, label at 1052.
    if &b[4086..4096] == b"SWAPSPACE2" {
        return found("swap", label_at(b, 1052, 16), uuid_at(b, 1036));
    }
    // FAT: boot signature 0x55AA, "FAT32   " at 0x52 or "FAT1x" at 0x36.
    if b[510] == 0x55 && b[511] == 0xAA {
        let (id_at, label_off) = if &b[0x52..0x57] == b"FAT32" {
            (0x43, 0x47)
        } else if &b[0x36..0x39] == b"FAT" {
            (0x27, 0x2b)
        } else {
            return None;
        };
        let id = le32(b, id_at);
        let label = label_at(b, label_off, 11).filter(|l| l != "NO NAME");
        return found(
            "vfat",
            label,
            Some(format!("{:04X}-{:04X}", id >> 16, id & 0xffff)),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blkid_export() {
        let m = parse_blkid_export("DEVNAME=x.img\nLABEL=my\\ disk\nUUID=1234-ABCD\nTYPE=vfat\n");
        assert_eq!(m["LABEL"], "my disk");
        assert_eq!(m["TYPE"], "vfat");
        assert_eq!(m.len(), 4);
    }

    #[test]
    fn magic_ext4_and_nothing() {
        let mut b = vec![0u8; PROBE_BYTES];
        assert_eq!(probe(&b), None);
        b[1024 + 0x38] = 0x53;
        b[1024 + 0x39] = 0xEF;
        b[1024 + 0x60] = 0x40; // extents
        b[1024 + 0x68] = 0xab;
        b[1024 + 0x78..1024 + 0x7c].copy_from_slice(b"root");
        let d = probe(&b).unwrap();
        assert_eq!(d.fs_type, "ext4");
        assert_eq!(d.label.as_deref(), Some("root"));
        assert_eq!(
            d.uuid.as_deref(),
            Some("ab000000-0000-0000-0000-000000000000")
        );
        b[1024 + 0x60] = 0;
        b[1024 + 0x5c] = 0x4;
        assert_eq!(probe(&b).unwrap().fs_type, "ext3");
    }
}
