//! Partitions of a loop device: the kernel's `loopNpK` node when partition scanning made
//! one, else the start and size from a minimal GPT/MBR reader (primary, extended and logical
//! partitions; the extended one is marked as the container it is).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::{AttachOptions, Error, LoopDevice, Result};

/// Most GPT partition entries we read (the usual table holds 128).
const GPT_MAX_ENTRIES: u32 = 1024;

/// One partition from the table, in bytes relative to the start of the device or file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PartitionEntry {
    /// Partition number as the kernel counts it (1-based; GPT slot index + 1).
    pub number: u32,
    /// First byte.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
    /// Whether this is an MBR extended partition: the container of the logical partitions
    /// (5, 6, …) and their EBRs, not a partition to use. `start`/`size` are its full span, as
    /// `sfdisk --json` lists it; the kernel's `pN` node for it covers only its first 1 KiB.
    /// [`LoopDevice::partition`] refuses it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub extended: bool,
}

/// Where a partition can be reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PartitionLocation {
    /// The kernel made a node (`/dev/loop3p1`).
    Node(PathBuf),
    /// No node: this range of the backing file holds the partition.
    Range {
        /// The loop device's backing file.
        backing_file: PathBuf,
        /// Offset in the backing file (the loop's own offset plus the partition start).
        offset: u64,
        /// Length in bytes.
        size: u64,
    },
}

/// A partition opened for use: the kernel's node, or a loop device of its own that we own.
#[derive(Debug)]
#[must_use = "dropping a PartitionDevice::Loop detaches it"]
pub enum PartitionDevice {
    /// The `loopNpK` node (owned by the parent device; nothing to tear down).
    Node(PathBuf),
    /// A second loop device mapping just the partition.
    Loop(LoopDevice),
}

impl PartitionDevice {
    /// The block device to use.
    pub fn path(&self) -> &Path {
        match self {
            PartitionDevice::Node(p) => p,
            PartitionDevice::Loop(l) => l.path(),
        }
    }
    /// Keep the partition's own loop device attached beyond this value.
    pub fn release(self) -> PathBuf {
        match self {
            PartitionDevice::Node(p) => p,
            PartitionDevice::Loop(l) => l.release(),
        }
    }

    /// Detach the partition's own loop device, if we made one.
    pub fn teardown(self) -> Result<()> {
        match self {
            PartitionDevice::Node(_) => Ok(()),
            PartitionDevice::Loop(l) => l.detach(),
        }
    }
}

impl LoopDevice {
    /// The partitions in the table on this device (GPT, else MBR primaries, the extended
    /// container and the logical partitions).
    pub fn partitions(&self) -> Result<Vec<PartitionEntry>> {
        read_partition_table(self.path())
    }

    /// Where partition `number` lives: the `pN` node when the kernel made one, else the byte
    /// range of the backing file read from the partition table. An MBR extended partition is
    /// refused: it is a container (use its logical partitions), and its node is a 1 KiB stub.
    pub fn partition(&self, number: u32) -> Result<PartitionLocation> {
        let table = self.partitions();
        if let Ok(t) = &table
            && t.iter().any(|e| e.number == number && e.extended)
        {
            return Err(Error::PartitionTable {
                device: self.path().to_owned(),
                reason: format!(
                    "partition {number} is the MBR extended partition, a container of the \
                     logical partitions (5, 6, ...): use those"
                ),
            });
        }
        let node = PathBuf::from(format!("{}p{number}", self.path().display()));
        let sys = PathBuf::from(format!(
            "/sys/block/loop{}/loop{}p{number}",
            self.number(),
            self.number()
        ));
        if node.exists() && sys.exists() {
            return Ok(PartitionLocation::Node(node));
        }
        let entry = table?
            .into_iter()
            .find(|e| e.number == number)
            .ok_or_else(|| Error::PartitionTable {
                device: self.path().to_owned(),
                reason: format!("no partition {number}"),
            })?;
        let info = self.info()?;
        Ok(PartitionLocation::Range {
            backing_file: info.back_file,
            offset: info.offset + entry.start,
            size: entry.size,
        })
    }

    /// Partition `number` as a block device: the `pN` node, or a new loop device over its
    /// byte range (read-only when `read_only`).
    pub fn open_partition(&self, number: u32, read_only: bool) -> Result<PartitionDevice> {
        match self.partition(number)? {
            PartitionLocation::Node(p) => Ok(PartitionDevice::Node(p)),
            PartitionLocation::Range {
                backing_file,
                offset,
                size,
            } => {
                let opts = AttachOptions::new()
                    .offset(offset)
                    .sizelimit(size)
                    .read_only(read_only);
                Ok(PartitionDevice::Loop(LoopDevice::attach(
                    backing_file,
                    &opts,
                )?))
            }
        }
    }
}

/// Read the partition table of a device or image file: GPT (512- or 4096-byte sectors), else
/// the four MBR primary entries and the logical partitions of an extended one (numbered from
/// 5, like the kernel's `pN` nodes). Empty slots are skipped.
pub fn read_partition_table(device: impl AsRef<Path>) -> Result<Vec<PartitionEntry>> {
    let device = device.as_ref();
    let f = File::open(device).map_err(|source| Error::Read {
        path: device.to_owned(),
        source,
    })?;
    let table_err = |reason: String| Error::PartitionTable {
        device: device.to_owned(),
        reason,
    };
    let read_at = |off: u64, len: usize| -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, off)
            .map_err(|source| Error::Read {
                path: device.to_owned(),
                source,
            })?;
        Ok(buf)
    };
    for ss in [512u64, 4096] {
        let Ok(hdr) = read_at(ss, 92) else { continue };
        if &hdr[0..8] != b"EFI PART" {
            continue;
        }
        let entries_lba = le_u64(&hdr[72..80]);
        let count = le_u32(&hdr[80..84]).min(GPT_MAX_ENTRIES);
        let esize = le_u32(&hdr[84..88]);
        if !(128..=4096).contains(&esize) {
            return Err(table_err(format!("GPT entry size {esize} is invalid")));
        }
        let entries_at = entries_lba.checked_mul(ss).ok_or_else(|| {
            table_err(format!(
                "GPT entry array LBA {entries_lba} is past 2^64 bytes"
            ))
        })?;
        let raw = read_at(entries_at, (count * esize) as usize)?;
        let mut out = Vec::new();
        for (i, e) in raw.chunks_exact(esize as usize).enumerate() {
            if e[0..16].iter().all(|b| *b == 0) {
                continue;
            }
            let (first, last) = (le_u64(&e[32..40]), le_u64(&e[40..48]));
            if last < first {
                return Err(table_err(format!(
                    "GPT entry {} ends before it starts",
                    i + 1
                )));
            }
            let bytes = |lba: u64| lba.checked_mul(ss);
            let (Some(start), Some(size)) =
                (bytes(first), (last - first).checked_add(1).and_then(bytes))
            else {
                return Err(table_err(format!(
                    "GPT entry {} (LBA {first}..={last}) is past 2^64 bytes",
                    i + 1
                )));
            };
            out.push(PartitionEntry {
                number: i as u32 + 1,
                start,
                size,
                extended: false,
            });
        }
        return Ok(out);
    }
    let mbr = read_at(0, 512)?;
    if mbr[510..512] != [0x55, 0xAA] {
        return Err(table_err("no GPT header and no MBR signature".into()));
    }
    let mut out = Vec::new();
    let mut extended = None;
    for i in 0..4 {
        let e = &mbr[446 + i * 16..446 + (i + 1) * 16];
        let ptype = e[4];
        if ptype == 0 {
            continue;
        }
        if ptype == 0xEE {
            return Err(table_err(
                "protective MBR but no readable GPT header".into(),
            ));
        }
        let (lba, sectors) = (u64::from(le_u32(&e[8..12])), u64::from(le_u32(&e[12..16])));
        let is_extended = EXTENDED.contains(&ptype);
        out.push(PartitionEntry {
            number: i as u32 + 1,
            start: lba * 512,
            size: sectors * 512,
            extended: is_extended,
        });
        if is_extended {
            extended = Some(lba);
        }
    }
    // Logical partitions: the EBR chain in the extended partition, numbered from 5 as the
    // kernel does. Each EBR's first entry is relative to that EBR, its link to the extended
    // partition's start.
    if let Some(ext) = extended {
        let mut ebr = ext;
        let mut number = 5;
        let mut seen = std::collections::BTreeSet::new();
        loop {
            if !seen.insert(ebr) || seen.len() > MAX_LOGICAL {
                return Err(table_err(format!(
                    "the EBR chain loops or is too long at sector {ebr}"
                )));
            }
            let b = read_at(ebr * 512, 512)?;
            if b[510..512] != [0x55, 0xAA] {
                return Err(table_err(format!("no EBR signature at sector {ebr}")));
            }
            let (l, link) = (&b[446..462], &b[462..478]);
            let sectors = u64::from(le_u32(&l[12..16]));
            if l[4] != 0 && sectors != 0 {
                out.push(PartitionEntry {
                    number,
                    start: (ebr + u64::from(le_u32(&l[8..12]))) * 512,
                    size: sectors * 512,
                    extended: false,
                });
                number += 1;
            }
            if !EXTENDED.contains(&link[4]) || le_u32(&link[12..16]) == 0 {
                break;
            }
            ebr = ext + u64::from(le_u32(&link[8..12]));
        }
    }
    Ok(out)
}

/// MBR types of an extended partition (CHS, LBA, Linux).
const EXTENDED: [u8; 3] = [0x05, 0x0F, 0x85];

/// Logical partitions followed at most (the kernel's msdos parser stops far earlier).
const MAX_LOGICAL: usize = 256;

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mbr_image(entries: &[(u8, u32, u32)]) -> Vec<u8> {
        let mut img = vec![0u8; 1 << 20];
        for (i, (t, lba, n)) in entries.iter().enumerate() {
            let e = 446 + i * 16;
            img[e + 4] = *t;
            img[e + 8..e + 12].copy_from_slice(&lba.to_le_bytes());
            img[e + 12..e + 16].copy_from_slice(&n.to_le_bytes());
        }
        img[510] = 0x55;
        img[511] = 0xAA;
        img
    }

    #[test]
    fn reads_mbr_primaries() {
        let dir = std::env::temp_dir().join(format!("dfloop-mbr-{}", std::process::id()));
        std::fs::write(
            &dir,
            mbr_image(&[(0x83, 2048, 100), (0, 0, 0), (0x0c, 4096, 8)]),
        )
        .unwrap();
        let t = read_partition_table(&dir).unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(
            t,
            vec![
                PartitionEntry {
                    number: 1,
                    start: 2048 * 512,
                    size: 100 * 512,
                    extended: false,
                },
                PartitionEntry {
                    number: 3,
                    start: 4096 * 512,
                    size: 8 * 512,
                    extended: false,
                },
            ]
        );
    }

    #[test]
    fn reads_logical_partitions_from_the_ebr_chain() {
        // Primary 1, extended 2 at 4096; logicals at EBR 4096 (+2048) and EBR 12288 (+2048).
        let mut img = mbr_image(&[(0x83, 2048, 2048), (0x0f, 4096, 20480)]);
        img.resize(16 << 20, 0);
        let ebr = |img: &mut Vec<u8>, at: usize, l: (u32, u32), next: Option<(u32, u32)>| {
            let b = at * 512;
            img[b + 446 + 4] = 0x83;
            img[b + 446 + 8..b + 446 + 12].copy_from_slice(&l.0.to_le_bytes());
            img[b + 446 + 12..b + 446 + 16].copy_from_slice(&l.1.to_le_bytes());
            if let Some((start, size)) = next {
                img[b + 462 + 4] = 0x05;
                img[b + 462 + 8..b + 462 + 12].copy_from_slice(&start.to_le_bytes());
                img[b + 462 + 12..b + 462 + 16].copy_from_slice(&size.to_le_bytes());
            }
            img[b + 510] = 0x55;
            img[b + 511] = 0xAA;
        };
        ebr(&mut img, 4096, (2048, 4096), Some((8192, 6144)));
        ebr(&mut img, 12288, (2048, 4096), None);
        let p = std::env::temp_dir().join(format!("dfloop-ebr-{}", std::process::id()));
        std::fs::write(&p, &img).unwrap();
        let t = read_partition_table(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        let got: Vec<(u32, u64, u64, bool)> = t
            .iter()
            .map(|e| (e.number, e.start / 512, e.size / 512, e.extended))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, 2048, 2048, false),
                (2, 4096, 20480, true),
                (5, 6144, 4096, false),
                (6, 14336, 4096, false)
            ]
        );
    }

    #[test]
    fn a_looping_ebr_chain_is_an_error() {
        let mut img = mbr_image(&[(0x05, 2048, 8192)]);
        img.resize(8 << 20, 0);
        let b = 2048 * 512;
        img[b + 446 + 4] = 0x83;
        img[b + 446 + 8] = 1;
        img[b + 446 + 12] = 8;
        img[b + 462 + 4] = 0x05; // links back to itself (offset 0 from the extended start)
        img[b + 462 + 12] = 8;
        img[b + 510] = 0x55;
        img[b + 511] = 0xAA;
        let p = std::env::temp_dir().join(format!("dfloop-loop-{}", std::process::id()));
        std::fs::write(&p, &img).unwrap();
        let e = read_partition_table(&p).unwrap_err().to_string();
        std::fs::remove_file(&p).unwrap();
        assert!(e.contains("EBR chain loops"), "{e}");
    }

    #[test]
    fn no_table_is_an_error_naming_the_file() {
        let p = std::env::temp_dir().join(format!("dfloop-none-{}", std::process::id()));
        std::fs::write(&p, vec![0u8; 8192]).unwrap();
        let e = read_partition_table(&p).unwrap_err().to_string();
        std::fs::remove_file(&p).unwrap();
        assert!(e.contains(&p.display().to_string()), "{e}");
    }
}
