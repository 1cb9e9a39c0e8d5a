//! El Torito boot catalog (the "El Torito" Bootable CD-ROM Format Specification 1.0: validation
//! entry, initial/default entry, section headers and section entries) and the isohybrid system
//! area: an MBR (0x55AA at byte 510) and a GPT (header "EFI PART" at byte 512).

use crate::iso9660::{SECTOR, Tree, Volume, le16, le32, le64};
use crate::{Error, Result};

/// Maximum catalog sectors read (a catalog with hundreds of entries still fits in a few).
const MAX_CATALOG_SECTORS: usize = 8;

/// Boot platform of an El Torito entry (the validation entry's or section header's id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    /// 0x00: 80x86 BIOS.
    Bios,
    /// 0x01: PowerPC.
    Ppc,
    /// 0x02: Mac.
    Mac,
    /// 0xEF: UEFI.
    Uefi,
    /// Anything else.
    Other(u8),
}

impl Platform {
    fn from_id(id: u8) -> Self {
        match id {
            0x00 => Platform::Bios,
            0x01 => Platform::Ppc,
            0x02 => Platform::Mac,
            0xef => Platform::Uefi,
            o => Platform::Other(o),
        }
    }
    /// The platform id byte.
    pub fn id(self) -> u8 {
        match self {
            Platform::Bios => 0,
            Platform::Ppc => 1,
            Platform::Mac => 2,
            Platform::Uefi => 0xef,
            Platform::Other(o) => o,
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Platform::Bios => f.write_str("BIOS"),
            Platform::Ppc => f.write_str("PPC"),
            Platform::Mac => f.write_str("Mac"),
            Platform::Uefi => f.write_str("UEFI"),
            Platform::Other(o) => write!(f, "0x{o:02x}"),
        }
    }
}

/// Boot media emulation of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Emulation {
    /// 0: no emulation.
    None,
    /// 1: 1.2 MB floppy.
    Floppy12,
    /// 2: 1.44 MB floppy.
    Floppy144,
    /// 3: 2.88 MB floppy.
    Floppy288,
    /// 4: hard disk.
    HardDisk,
    /// Anything else.
    Other(u8),
}

impl std::fmt::Display for Emulation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Emulation::None => f.write_str("none"),
            Emulation::Floppy12 => f.write_str("fd1.2"),
            Emulation::Floppy144 => f.write_str("fd1.44"),
            Emulation::Floppy288 => f.write_str("fd2.88"),
            Emulation::HardDisk => f.write_str("hd"),
            Emulation::Other(o) => write!(f, "0x{o:02x}"),
        }
    }
}

/// One bootable image of the catalog.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BootEntry {
    /// Platform from the validation entry (first entry) or the section header.
    pub platform: Platform,
    /// Boot indicator 0x88.
    pub bootable: bool,
    /// Media emulation.
    pub emulation: Emulation,
    /// Load segment (0 means the BIOS default 0x7C0).
    pub load_segment: u16,
    /// System type (partition type byte for hard disk emulation).
    pub system_type: u8,
    /// Sectors (512 bytes) to load.
    pub load_size: u16,
    /// Logical block of the image.
    pub load_rba: u32,
    /// Path of the file whose data starts at `load_rba`, or `None` for an image not in the
    /// tree ("hidden", e.g. an appended EFI partition).
    pub image: Option<String>,
    /// Size of the image in bytes: the file's size, the partition's size for a hidden image
    /// that starts a partition, else `load_size * 512`.
    pub image_size: u64,
}

/// The El Torito boot catalog.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BootCatalog {
    /// Logical block of the catalog.
    pub lba: u32,
    /// Path of the catalog file in the tree, if it is visible.
    pub path: Option<String>,
    /// Manufacturer id string of the validation entry.
    pub id_string: String,
    /// Every initial/default and section entry, in catalog order.
    pub entries: Vec<BootEntry>,
}

/// Read the catalog at `lba`; `tree` resolves load RBAs to paths; `parts` sizes hidden images.
pub fn read_catalog(
    vol: &Volume,
    lba: u32,
    tree: &Tree,
    parts: &[(u64, u64)],
) -> Result<BootCatalog> {
    let base = u64::from(lba) * SECTOR;
    let avail = ((vol.src.len().saturating_sub(base)) / SECTOR).min(MAX_CATALOG_SECTORS as u64);
    if avail == 0 {
        return Err(Error::Malformed {
            path: vol.src.path().to_owned(),
            offset: base,
            what: "boot catalog beyond the end of the file".into(),
        });
    }
    let buf = vol.src.read_vec(base, (avail * SECTOR) as usize)?;
    let bad = |what: &str| Error::Malformed {
        path: vol.src.path().to_owned(),
        offset: base,
        what: format!("El Torito boot catalog: {what}"),
    };
    let v = &buf[0..32];
    if v[0] != 1 || v[30] != 0x55 || v[31] != 0xaa {
        return Err(bad("no validation entry (header 01, key 55 AA)"));
    }
    let sum = v.chunks_exact(2).fold(0u16, |s, c| {
        s.wrapping_add(u16::from_le_bytes([c[0], c[1]]))
    });
    if sum != 0 {
        return Err(bad("validation entry checksum does not add up to 0"));
    }
    let id_string = String::from_utf8_lossy(&v[4..28])
        .trim_end_matches(['\0', ' '])
        .to_owned();
    let mut entries = Vec::new();
    let image_info = |rba: u32, count: u16| -> (Option<String>, u64) {
        if let Some(n) = tree.file_at(rba) {
            return (Some(n.path.clone()), n.size);
        }
        let start512 = u64::from(rba) * 4;
        if let Some(&(_, len)) = parts.iter().find(|(s, _)| *s == start512) {
            return (None, len);
        }
        (None, u64::from(count) * 512)
    };
    let mut push = |platform: Platform, e: &[u8]| {
        let rba = le32(e, 8);
        let count = le16(e, 6);
        let (image, image_size) = image_info(rba, count);
        entries.push(BootEntry {
            platform,
            bootable: e[0] == 0x88,
            emulation: match e[1] & 0x0f {
                0 => Emulation::None,
                1 => Emulation::Floppy12,
                2 => Emulation::Floppy144,
                3 => Emulation::Floppy288,
                4 => Emulation::HardDisk,
                o => Emulation::Other(o),
            },
            load_segment: le16(e, 2),
            system_type: e[4],
            load_size: count,
            load_rba: rba,
            image,
            image_size,
        });
    };
    push(Platform::from_id(v[1]), &buf[32..64]);
    let mut at = 64;
    while at + 32 <= buf.len() {
        let h = &buf[at..at + 32];
        if h[0] != 0x90 && h[0] != 0x91 {
            break;
        }
        let last = h[0] == 0x91;
        let platform = Platform::from_id(h[1]);
        let n = usize::from(le16(h, 2));
        at += 32;
        for _ in 0..n {
            if at + 32 > buf.len() {
                return Err(bad("section runs past the catalog"));
            }
            push(platform, &buf[at..at + 32]);
            at += 32;
            // Skip extension entries (0x44) that continue this entry's selection criteria.
            while at + 32 <= buf.len() && buf[at] == 0x44 {
                at += 32;
            }
        }
        if last {
            break;
        }
    }
    Ok(BootCatalog {
        lba,
        path: tree.file_at(lba).map(|n| n.path.clone()),
        id_string,
        entries,
    })
}

/// One MBR partition entry that is in use.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MbrPartition {
    /// Slot 1..=4.
    pub number: u8,
    /// Boot flag 0x80.
    pub bootable: bool,
    /// Partition type byte.
    pub ptype: u8,
    /// First 512-byte sector.
    pub start: u32,
    /// Length in 512-byte sectors.
    pub sectors: u32,
}

/// One GPT partition entry that is in use.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GptPartition {
    /// Entry number, from 1.
    pub number: u32,
    /// Type GUID, textual.
    pub type_guid: String,
    /// Name (UTF-16LE in the entry).
    pub name: String,
    /// First 512-byte sector.
    pub first_lba: u64,
    /// Last 512-byte sector (inclusive).
    pub last_lba: u64,
}

/// The isohybrid system area: an MBR and/or a GPT in the first 32 KiB.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Hybrid {
    /// MBR partitions, when bytes 510..512 are 55 AA.
    pub mbr: Option<Vec<MbrPartition>>,
    /// GPT partitions, when sector 1 starts with "EFI PART".
    pub gpt: Option<Vec<GptPartition>>,
    /// Byte location of the backup GPT header, when there is a GPT.
    #[serde(skip)]
    pub gpt_backup_lba: Option<u64>,
}

impl Hybrid {
    /// `(start, length)` in 512-byte sectors of every partition, MBR and GPT.
    pub fn partition_ranges(&self) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = Vec::new();
        for p in self.mbr.iter().flatten() {
            v.push((u64::from(p.start), u64::from(p.sectors) * 512));
        }
        for p in self.gpt.iter().flatten() {
            v.push((
                p.first_lba,
                (p.last_lba + 1).saturating_sub(p.first_lba) * 512,
            ));
        }
        v
    }

    /// Byte ranges `(offset, len)` of EFI system partitions (MBR type 0xEF, GPT type
    /// C12A7328-…) that do not start at 0 (the whole-ISO partition is not an ESP image).
    pub fn esp_ranges(&self) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = Vec::new();
        for p in self
            .mbr
            .iter()
            .flatten()
            .filter(|p| p.ptype == 0xef && p.start > 0)
        {
            v.push((u64::from(p.start) * 512, u64::from(p.sectors) * 512));
        }
        for p in self.gpt.iter().flatten() {
            if p.type_guid.eq_ignore_ascii_case(ESP_GUID) && p.first_lba > 0 {
                v.push((p.first_lba * 512, (p.last_lba + 1 - p.first_lba) * 512));
            }
        }
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// The EFI system partition type GUID.
pub const ESP_GUID: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";

fn guid_str(b: &[u8]) -> String {
    format!(
        "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{}",
        le32(b, 0),
        le16(b, 4),
        le16(b, 6),
        b[8],
        b[9],
        b[10..16]
            .iter()
            .map(|x| format!("{x:02X}"))
            .collect::<String>()
    )
}

/// Read the MBR and GPT from the system area.
pub fn read_hybrid(vol: &Volume) -> Result<Hybrid> {
    let head = vol.src.read_vec(0, 1024)?;
    let mut h = Hybrid::default();
    if head[510] == 0x55 && head[511] == 0xaa {
        let mut parts = Vec::new();
        for i in 0..4u8 {
            let e = &head[446 + 16 * usize::from(i)..446 + 16 * (usize::from(i) + 1)];
            let (ptype, start, sectors) = (e[4], le32(e, 8), le32(e, 12));
            if sectors != 0 {
                parts.push(MbrPartition {
                    number: i + 1,
                    bootable: e[0] == 0x80,
                    ptype,
                    start,
                    sectors,
                });
            }
        }
        h.mbr = Some(parts);
    }
    if &head[512..520] == b"EFI PART" {
        let g = &head[512..];
        let entries_lba = le64(g, 72);
        let count = le32(g, 80).min(1024);
        let esize = le32(g, 84);
        h.gpt_backup_lba = Some(le64(g, 32));
        let mut parts = Vec::new();
        if (128..=4096).contains(&esize) {
            let table = vol
                .src
                .read_vec(entries_lba * 512, (count * esize) as usize)?;
            for (i, e) in table.chunks_exact(esize as usize).enumerate() {
                if e[..16].iter().all(|b| *b == 0) {
                    continue;
                }
                let units: Vec<u16> = e[56..128]
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect();
                parts.push(GptPartition {
                    number: i as u32 + 1,
                    type_guid: guid_str(&e[..16]),
                    name: String::from_utf16_lossy(&units)
                        .trim_end_matches('\0')
                        .to_owned(),
                    first_lba: le64(e, 32),
                    last_lba: le64(e, 40),
                });
            }
        }
        h.gpt = Some(parts);
    }
    Ok(h)
}
