//! Reading GPT and MBR tables back into [`Table`]s.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use crate::layout::{Flag, Label};
use crate::mbr::{self, BOOT_SIGNATURE, ENTRIES_OFFSET};
use crate::plan::{ATTR_LEGACY_BOOT, ATTR_REQUIRED, mbr_partuuid, usable};
use crate::types::PartType;
use crate::{Error, Extended, PartKind, PartitionInfo, Result, Table};

/// Largest GPT entry count we accept when reading (the spec allows more; nobody uses them, and
/// the `gpt` crate allocates the whole array).
const MAX_GPT_ENTRIES: u32 = 16384;
/// Most logical partitions we follow in an EBR chain before calling it a loop.
const MAX_LOGICAL: usize = 256;

pub(crate) fn io_err(
    path: &Path,
    action: impl Into<String>,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    let action = action.into();
    move |source| Error::Io {
        path,
        action,
        source,
    }
}

/// Size in bytes of an image file or block device.
pub fn disk_size(path: &Path) -> Result<u64> {
    let mut f = File::open(path).map_err(io_err(path, "opening"))?;
    f.seek(SeekFrom::End(0))
        .map_err(io_err(path, "finding the size"))
}

/// Logical sector size of a block device (`ioctl(BLKSSZGET)`); `None` for files, whose sector
/// size is whatever the table says.
pub(crate) fn device_sector_size(f: &File, path: &Path) -> Result<Option<u32>> {
    let meta = f.metadata().map_err(io_err(path, "reading metadata"))?;
    if !meta.file_type().is_block_device() {
        return Ok(None);
    }
    rustix::fs::ioctl_blksszget(f)
        .map(Some)
        .map_err(|e| Error::Io {
            path: path.to_owned(),
            action: "ioctl(BLKSSZGET)".into(),
            source: e.into(),
        })
}

/// Read the partition table of an image file or block device (sector size 512 for files, the
/// device's logical sector size for block devices).
pub fn read(path: &Path) -> Result<Table> {
    let f = File::open(path).map_err(io_err(path, "opening"))?;
    let ss = device_sector_size(&f, path)?.unwrap_or(512);
    read_file(f, path, ss)
}

/// Read the partition table assuming `sector_size`-byte sectors (512 or 4096).
pub fn read_with_sector_size(path: &Path, sector_size: u32) -> Result<Table> {
    let f = File::open(path).map_err(io_err(path, "opening"))?;
    read_file(f, path, sector_size)
}

/// Byte offsets and sizes of every partition (GPT, MBR primary and logical), in disk order —
/// what `losetup --offset --sizelimit` needs.
pub fn partitions(path: &Path) -> Result<Vec<PartitionInfo>> {
    Ok(read(path)?.partitions)
}

fn read_at(f: &mut File, path: &Path, offset: u64, buf: &mut [u8]) -> Result<()> {
    f.seek(SeekFrom::Start(offset))
        .and_then(|_| f.read_exact(buf))
        .map_err(io_err(
            path,
            format!("reading {} bytes at offset {offset}", buf.len()),
        ))
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn read_file(mut f: File, path: &Path, ss: u32) -> Result<Table> {
    if ss != 512 && ss != 4096 {
        return Err(Error::Corrupt {
            path: path.to_owned(),
            reason: format!("unsupported sector size {ss}"),
        });
    }
    let ss64 = u64::from(ss);
    let size = f
        .seek(SeekFrom::End(0))
        .map_err(io_err(path, "finding the size"))?;
    let total = size / ss64;
    if total < 3 {
        return Err(Error::NoTable {
            path: path.to_owned(),
        });
    }
    let mut lba0 = [0u8; 512];
    read_at(&mut f, path, 0, &mut lba0)?;
    let mut hdr = [0u8; 92];
    read_at(&mut f, path, ss64, &mut hdr)?;
    if &hdr[..8] == b"EFI PART" {
        return read_gpt(f, path, ss, total, &lba0);
    }
    if lba0[510..512] == BOOT_SIGNATURE {
        return read_mbr(f, path, ss, total, &lba0);
    }
    Err(Error::NoTable {
        path: path.to_owned(),
    })
}

/// Refuse headers the `gpt` crate would panic or over-allocate on.
fn check_gpt_header(path: &Path, hdr: &[u8; 92], which: &str) -> Result<()> {
    if &hdr[..8] != b"EFI PART" {
        return Ok(());
    }
    let entries = le_u32(hdr, 80);
    let entry_size = le_u32(hdr, 84);
    if entry_size != 128 || entries > MAX_GPT_ENTRIES {
        return Err(Error::Corrupt {
            path: path.to_owned(),
            reason: format!(
                "{which} GPT header has {entries} entries of {entry_size} bytes \
                 (supported: 128-byte entries, at most {MAX_GPT_ENTRIES})"
            ),
        });
    }
    Ok(())
}

fn read_gpt(mut f: File, path: &Path, ss: u32, total: u64, lba0: &[u8; 512]) -> Result<Table> {
    let ss64 = u64::from(ss);
    let mut hdr = [0u8; 92];
    read_at(&mut f, path, ss64, &mut hdr)?;
    check_gpt_header(path, &hdr, "primary")?;
    read_at(&mut f, path, (total - 1) * ss64, &mut hdr)?;
    check_gpt_header(path, &hdr, "backup")?;
    let lb = if ss == 4096 {
        gpt::disk::LogicalBlockSize::Lb4096
    } else {
        gpt::disk::LogicalBlockSize::Lb512
    };
    let disk = gpt::GptConfig::new()
        .writable(false)
        .logical_block_size(lb)
        .open_from_device(&mut f)
        .map_err(|source| Error::Gpt {
            path: path.to_owned(),
            action: "reading the GPT",
            source,
        })?;
    let header = disk
        .primary_header()
        .or_else(|_| disk.backup_header())
        .map_err(|e| Error::Corrupt {
            path: path.to_owned(),
            reason: format!("no valid GPT header: {e}"),
        })?;
    let mut partitions = Vec::new();
    for (number, p) in disk.partitions().iter().filter(|(_, p)| p.is_used()) {
        let size_lba = (p.last_lba + 1)
            .checked_sub(p.first_lba)
            .filter(|s| *s > 0)
            .ok_or_else(|| Error::Corrupt {
                path: path.to_owned(),
                reason: format!(
                    "GPT entry {number} ends (LBA {}) before it starts (LBA {})",
                    p.last_lba, p.first_lba
                ),
            })?;
        let mut flags = Vec::new();
        if p.flags & ATTR_REQUIRED != 0 {
            flags.push(Flag::Required);
        }
        if p.flags & ATTR_LEGACY_BOOT != 0 {
            flags.push(Flag::LegacyBoot);
        }
        partitions.push(PartitionInfo {
            number: *number,
            name: (!p.name.is_empty()).then(|| p.name.clone()),
            kind: PartKind::Primary,
            start_lba: p.first_lba,
            end_lba: p.last_lba,
            size_lba,
            start_bytes: p.first_lba.saturating_mul(ss64),
            size_bytes: size_lba.saturating_mul(ss64),
            part_type: PartType::from_guid(p.part_type_guid.guid),
            uuid: Some(p.part_guid.hyphenated().to_string()),
            flags,
            attributes: p.flags,
            ebr_lba: None,
        });
    }
    partitions.sort_by_key(|p| p.start_lba);
    Ok(Table {
        label: Label::Gpt,
        sector_size: ss,
        disk_size_bytes: total * ss64,
        disk_uuid: Some(header.disk_guid.hyphenated().to_string()),
        first_usable_lba: header.first_usable,
        last_usable_lba: header.last_usable,
        align_bytes: None,
        pmbr_boot: lba0[ENTRIES_OFFSET] == 0x80 && lba0[ENTRIES_OFFSET + 4] == 0xee,
        extended: None,
        partitions,
    })
}

fn is_extended(sys: u8) -> bool {
    matches!(sys, 0x05 | 0x0f | 0x85)
}

fn read_mbr(mut f: File, path: &Path, ss: u32, total: u64, lba0: &[u8; 512]) -> Result<Table> {
    let ss64 = u64::from(ss);
    let corrupt = |reason: String| Error::Corrupt {
        path: path.to_owned(),
        reason,
    };
    // Checks the boot signature and the boot flags of the four entries.
    let header = mbr::decode(lba0).map_err(corrupt)?;
    let sig = format!("0x{:08x}", header.signature);
    let mut partitions = Vec::new();
    let mut extended = None;
    for (i, e) in header.entries.iter().enumerate() {
        let slot = i + 1;
        if e.sys == 0 {
            continue;
        }
        if e.sys == 0xee {
            return Err(corrupt(
                "protective MBR (type 0xee) but no GPT header at LBA 1".into(),
            ));
        }
        let number = slot as u32;
        if is_extended(e.sys) {
            if extended.is_some() {
                return Err(corrupt("more than one extended partition".into()));
            }
            extended = Some(Extended {
                number,
                start_lba: u64::from(e.start),
                size_lba: u64::from(e.sectors),
                type_byte: format!("0x{:02x}", e.sys),
            });
            continue;
        }
        partitions.push(info(
            number,
            PartKind::Primary,
            u64::from(e.start),
            u64::from(e.sectors),
            e.sys,
            e.boot,
            ss64,
            &sig,
            None,
        ));
    }
    if let Some(ext) = &extended {
        let mut ebr = ext.start_lba;
        let ext_end = ext.start_lba + ext.size_lba;
        let mut buf = [0u8; 512];
        for i in 0..=MAX_LOGICAL {
            if i == MAX_LOGICAL {
                return Err(corrupt(format!(
                    "more than {MAX_LOGICAL} logical partitions: EBR chain loops?"
                )));
            }
            read_at(&mut f, path, ebr * ss64, &mut buf)?;
            if buf[510..512] != BOOT_SIGNATURE {
                if i == 0 {
                    break; // an empty extended partition need not have an EBR
                }
                return Err(corrupt(format!("EBR at LBA {ebr} has no boot signature")));
            }
            let mbr::Entry {
                boot,
                sys,
                start: rel,
                sectors,
            } = mbr::Entry::decode(&buf, 0);
            if sys != 0 && sectors > 0 {
                let start = ebr + u64::from(rel);
                if start + u64::from(sectors) > ext_end {
                    return Err(corrupt(format!(
                        "logical partition {} ends past the extended partition",
                        5 + i
                    )));
                }
                partitions.push(info(
                    5 + i as u32,
                    PartKind::Logical,
                    start,
                    u64::from(sectors),
                    sys,
                    boot,
                    ss64,
                    &sig,
                    Some(ebr),
                ));
            }
            let link = mbr::Entry::decode(&buf, 1);
            let (next_sys, next_rel) = (link.sys, link.start);
            if next_sys == 0 || next_rel == 0 {
                break;
            }
            let next = ext.start_lba + u64::from(next_rel);
            if next <= ebr || next >= ext_end {
                return Err(corrupt(format!(
                    "EBR at LBA {ebr} links to LBA {next}, outside the chain"
                )));
            }
            ebr = next;
        }
    }
    partitions.sort_by_key(|p| p.start_lba);
    let (first, last) = usable(Label::Mbr, total, ss64).unwrap_or((1, total.saturating_sub(1)));
    Ok(Table {
        label: Label::Mbr,
        sector_size: ss,
        disk_size_bytes: total * ss64,
        disk_uuid: Some(sig),
        first_usable_lba: first,
        last_usable_lba: last,
        align_bytes: None,
        pmbr_boot: false,
        extended,
        partitions,
    })
}

#[allow(clippy::too_many_arguments)] // one call site per kind; a struct would only rename them
fn info(
    number: u32,
    kind: PartKind,
    start: u64,
    size: u64,
    sys: u8,
    boot: u8,
    ss: u64,
    sig: &str,
    ebr_lba: Option<u64>,
) -> PartitionInfo {
    PartitionInfo {
        number,
        name: None,
        kind,
        start_lba: start,
        end_lba: (start + size).saturating_sub(1),
        size_lba: size,
        start_bytes: start * ss,
        size_bytes: size * ss,
        part_type: PartType::from_mbr(sys),
        uuid: Some(mbr_partuuid(sig, number)),
        flags: if boot == 0x80 {
            vec![Flag::Boot]
        } else {
            Vec::new()
        },
        attributes: 0,
        ebr_lba,
    }
}
