//! GRUB for BIOS, written as bytes into a disk image: what `grub-install --target=i386-pc
//! --no-rs-codes` and `grub-bios-setup` do, without a device node.
//!
//! [`install_bios`]:
//! 1. picks where `core.img` goes ([`EmbedArea`]): on GPT the BIOS boot partition (type
//!    `EF02`, from the plan), refused with [`Error::NoBiosBootPartition`] when there is
//!    none; on MBR the gap between sector 0 and the first partition (read from the image's
//!    own partition entries, so an extended partition counts), refused with
//!    [`Error::NoRoomForCore`] when `core.img` does not fit;
//! 2. builds `core.img` with `grub-mkimage -O i386-pc` ([`crate::BIOS_MODULES`] plus the
//!    root filesystem's driver, `lvm` when it is on a logical volume) and the embedded
//!    config of [`crate::embedded_config`]; its first sector is `diskboot.img`;
//! 3. patches `diskboot.img`'s blocklist at the end of `core.img`'s first sector
//!    ([`patch_core_blocklist`], GRUB's `save_blocklists`): cleared, then one entry
//!    `{start: first sector + 1, len: sectors - 1, segment: 0x820}` for the rest of
//!    `core.img` (it is contiguous), the entry below it zero as the terminator;
//! 4. patches `boot.img` ([`patch_boot_sector`], GRUB's `write_rootdev` and `setup`):
//!    `KERNEL_SECTOR` (0x5c, u64 LE) = `core.img`'s first sector, `BOOT_DRIVE` (0x64) =
//!    0xff (use the drive the BIOS passes in DL), the boot-drive check at 0x66 turned into
//!    two `nop`s (a hard disk), the BPB bytes 0x3..0x5a and everything from 0x1b8 (disk
//!    signature, partition table, `55 aa`) kept from the sector already there;
//! 5. writes `core.img` and then sector 0, and syncs the file.
//!
//! Offsets: GRUB 2.06 `include/grub/i386/pc/boot.h`, `util/setup.c`. No Reed-Solomon codes
//! are added (`grub-install --no-rs-codes`): the redundancy field `grub-mkimage` leaves at 0
//! tells the start-up code there are none.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use diskforge_blockdev::{Device, DiskPlan, FsPlan};
use diskforge_mkfs::FsType;
use diskforge_part::Label;
use serde::Serialize;

use crate::grub::{BIOS_MODULES, GrubConfig, embedded_config, mkimage, platform_dir};
use crate::{Error, Result, io_err};

/// Bytes per sector (GRUB's `GRUB_DISK_SECTOR_SIZE`; BIOS disks are 512-byte).
pub const SECTOR: u64 = 512;
/// `GRUB_BOOT_MACHINE_BPB_START`: the BIOS parameter block starts here in sector 0.
pub const BPB_START: usize = 0x3;
/// `GRUB_BOOT_MACHINE_BPB_END`.
pub const BPB_END: usize = 0x5a;
/// `GRUB_BOOT_MACHINE_KERNEL_SECTOR`: u64 LE, the sector `boot.img` loads (`core.img`'s
/// first).
pub const KERNEL_SECTOR: usize = 0x5c;
/// `GRUB_BOOT_MACHINE_BOOT_DRIVE`: 0xff means "the drive the BIOS booted from (DL)".
pub const BOOT_DRIVE: usize = 0x64;
/// `GRUB_BOOT_MACHINE_DRIVE_CHECK`: a 2-byte `jmp` that `grub-bios-setup` turns into two
/// `nop`s for hard disks (buggy BIOSes pass 0x00 in DL).
pub const DRIVE_CHECK: usize = 0x66;
/// `GRUB_BOOT_MACHINE_WINDOWS_NT_MAGIC`: from here on (disk signature, partition table,
/// boot signature) sector 0 keeps what the disk has.
pub const WINDOWS_NT_MAGIC: usize = 0x1b8;
/// `GRUB_BOOT_MACHINE_LIST_SIZE`: one `grub_boot_blocklist` (u64 start, u16 len, u16
/// segment).
pub const LIST_SIZE: usize = 12;
/// `GRUB_BOOT_I386_PC_KERNEL_SEG`: `diskboot.img` is loaded at 0x800:0.
pub const KERNEL_SEG: u16 = 0x800;
/// GPT type GUID of a BIOS boot partition (sgdisk code `EF02`).
pub const BIOS_BOOT_GUID: &str = "21686148-6449-6E6F-744E-656564454649";

/// One blocklist entry of `diskboot.img`: `len` sectors from `start`, loaded at
/// `segment:0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Blocklist {
    /// First sector on the disk.
    pub start: u64,
    /// Sectors.
    pub len: u16,
    /// Real-mode segment it is loaded at.
    pub segment: u16,
}

/// Where `core.img` went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum EmbedArea {
    /// The MBR gap: sectors 1 up to the first partition.
    MbrGap {
        /// The first partition's first sector (the gap's end).
        first_partition_sector: u64,
    },
    /// The GPT BIOS boot partition.
    BiosBootPartition {
        /// Its number.
        number: u32,
    },
}

/// What [`install_bios`] wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BiosReport {
    /// Where `core.img` went.
    pub area: EmbedArea,
    /// Sectors in that area.
    pub area_sectors: u64,
    /// `core.img`'s first sector (the `KERNEL_SECTOR` patched into `boot.img`).
    pub core_sector: u64,
    /// `core.img`'s size in bytes.
    pub core_bytes: u64,
    /// ... and in sectors.
    pub core_sectors: u64,
    /// The blocklists patched into `diskboot.img`, terminator excluded.
    pub blocklists: Vec<Blocklist>,
    /// Modules built into `core.img`.
    pub modules: Vec<String>,
    /// The GRUB platform directory `core.img` and `boot.img` came from (the target's or the
    /// host's).
    pub modules_dir: PathBuf,
    /// Its embedded config.
    pub embedded_config: String,
}

/// The blocklist entry at `at` in `core`.
fn entry(core: &[u8], at: usize) -> Blocklist {
    let mut start = [0u8; 8];
    start.copy_from_slice(&core[at..at + 8]);
    Blocklist {
        start: u64::from_le_bytes(start),
        len: u16::from_le_bytes([core[at + 8], core[at + 9]]),
        segment: u16::from_le_bytes([core[at + 10], core[at + 11]]),
    }
}

/// The blocklists at the end of `core`'s first sector, from the last entry down, up to the
/// terminator (an entry with `len` 0).
pub fn read_blocklists(core: &[u8]) -> Vec<Blocklist> {
    let mut out = Vec::new();
    if core.len() < SECTOR as usize {
        return out;
    }
    let mut at = SECTOR as usize - LIST_SIZE;
    loop {
        let e = entry(core, at);
        if e.len == 0 {
            break;
        }
        out.push(e);
        if at < LIST_SIZE {
            break;
        }
        at -= LIST_SIZE;
    }
    out
}

/// Point `diskboot.img`'s blocklist (the end of `core`'s first sector) at the rest of
/// `core`, written contiguously from `first_sector`: GRUB's `save_blocklists` for a
/// contiguous embedding. Returns the entries written.
pub fn patch_core_blocklist(core: &mut [u8], first_sector: u64) -> Result<Vec<Blocklist>> {
    let sectors = (core.len() as u64).div_ceil(SECTOR);
    if sectors < 2 {
        return Err(Error::Invalid {
            what: format!("core.img of {} bytes", core.len()),
            reason: "too small to be GRUB's i386-pc core image".into(),
        });
    }
    let rest = u16::try_from(sectors - 1).map_err(|_| Error::Invalid {
        what: format!("core.img of {sectors} sectors"),
        reason: "does not fit one blocklist entry (at most 65535 sectors)".into(),
    })?;
    // Clear the old lists, as setup.c does, from the last entry down to the first empty one.
    let mut at = SECTOR as usize - LIST_SIZE;
    loop {
        if entry(core, at).len == 0 {
            break;
        }
        core[at..at + LIST_SIZE].fill(0);
        if at < LIST_SIZE {
            break;
        }
        at -= LIST_SIZE;
    }
    let e = Blocklist {
        start: first_sector + 1,
        len: rest,
        // The first sector (diskboot.img itself) is at KERNEL_SEG:0; the rest follows it.
        segment: KERNEL_SEG + (SECTOR as u16 >> 4),
    };
    let at = SECTOR as usize - LIST_SIZE;
    core[at..at + 8].copy_from_slice(&e.start.to_le_bytes());
    core[at + 8..at + 10].copy_from_slice(&e.len.to_le_bytes());
    core[at + 10..at + 12].copy_from_slice(&e.segment.to_le_bytes());
    // The terminator below it was cleared above.
    Ok(vec![e])
}

/// Sector 0 with GRUB's `boot.img`: see the module docs, step 4.
pub fn patch_boot_sector(
    boot_img: &[u8; 512],
    existing: &[u8; 512],
    core_sector: u64,
) -> [u8; 512] {
    let mut s = *boot_img;
    s[BPB_START..BPB_END].copy_from_slice(&existing[BPB_START..BPB_END]);
    s[KERNEL_SECTOR..KERNEL_SECTOR + 8].copy_from_slice(&core_sector.to_le_bytes());
    s[BOOT_DRIVE] = 0xff;
    s[DRIVE_CHECK] = 0x90;
    s[DRIVE_CHECK + 1] = 0x90;
    s[WINDOWS_NT_MAGIC..].copy_from_slice(&existing[WINDOWS_NT_MAGIC..]);
    s
}

/// GRUB's driver for the filesystem GRUB reads `/boot/grub` from.
fn fs_modules(fs: &FsPlan) -> Result<Vec<&'static str>> {
    let driver = match fs.fs_type {
        FsType::Ext2 | FsType::Ext3 | FsType::Ext4 => "ext2",
        FsType::Vfat => "fat",
        FsType::Xfs => "xfs",
        FsType::Btrfs => "btrfs",
        FsType::Squashfs => "squash4",
        FsType::Erofs | FsType::Swap => {
            return Err(Error::Invalid {
                what: format!("filesystem {:?} ({})", fs.name, fs.fs_type.as_str()),
                reason: "GRUB 2.06 cannot read /boot/grub from it".into(),
            });
        }
    };
    let mut m = vec![driver];
    if matches!(fs.device, Device::Lv { .. }) {
        m.push("lvm");
    }
    Ok(m)
}

/// The BIOS boot type GUID as stored on disk (mixed-endian): "Hah!IdontNeedEFI".
const BIOS_BOOT_GUID_BYTES: &[u8; 16] = b"Hah!IdontNeedEFI";

/// From a GPT header (LBA 1) and its entry array, the (first, last) LBA of the BIOS boot
/// partition entry starting at `start`, if there is one.
fn gpt_bios_boot_at(f: &mut std::fs::File, start: u64) -> std::io::Result<Option<(u64, u64)>> {
    let mut hdr = [0u8; 92];
    f.seek(SeekFrom::Start(SECTOR))?;
    f.read_exact(&mut hdr)?;
    let u64_at = |b: &[u8], o: usize| {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(x)
    };
    let entries_lba = u64_at(&hdr, 72);
    let count = u32::from_le_bytes([hdr[80], hdr[81], hdr[82], hdr[83]]).min(1024) as usize;
    let size = u32::from_le_bytes([hdr[84], hdr[85], hdr[86], hdr[87]]) as usize;
    if !(128..=4096).contains(&size) {
        return Ok(None);
    }
    let mut table = vec![0u8; count * size];
    f.seek(SeekFrom::Start(entries_lba * SECTOR))?;
    f.read_exact(&mut table)?;
    Ok(table.chunks(size).find_map(|e| {
        let (first, last) = (u64_at(e, 32), u64_at(e, 40));
        (&e[..16] == BIOS_BOOT_GUID_BYTES && first == start).then_some((first, last))
    }))
}

/// `EF02` or the BIOS boot GUID, any case.
fn is_bios_boot(type_code: &str) -> bool {
    type_code.eq_ignore_ascii_case("ef02") || type_code.eq_ignore_ascii_case(BIOS_BOOT_GUID)
}

/// The non-empty primary entries of an MBR: (type, first sector, sectors).
fn mbr_entries(sector0: &[u8; 512]) -> Vec<(u8, u64, u64)> {
    (0..4)
        .map(|i| 0x1be + 16 * i)
        .map(|at| {
            let le32 = |o: usize| {
                u64::from(u32::from_le_bytes([
                    sector0[at + o],
                    sector0[at + o + 1],
                    sector0[at + o + 2],
                    sector0[at + o + 3],
                ]))
            };
            (sector0[at + 4], le32(8), le32(12))
        })
        .filter(|(t, _, n)| *t != 0 && *n != 0)
        .collect()
}

/// Where `core.img` can go on `disk` (start sector, sectors, area), before its size is
/// known: GPT from the plan, MBR from the image's own entries.
fn embed_area(disk: &DiskPlan, sector0: &[u8; 512]) -> Result<(u64, u64, EmbedArea)> {
    let Some(table) = &disk.table else {
        return Err(Error::NoPartitionTable {
            disk: disk.path.clone(),
        });
    };
    match table.label {
        Label::Gpt => {
            let p = table
                .partitions
                .iter()
                .find(|p| is_bios_boot(&p.type_code))
                .ok_or_else(|| Error::NoBiosBootPartition {
                    disk: disk.path.clone(),
                })?;
            if p.start % SECTOR != 0 || p.start + p.size > disk.size || p.start == 0 {
                return Err(Error::Invalid {
                    what: format!("{}: BIOS boot partition {}", disk.path.display(), p.number),
                    reason: format!(
                        "start {} size {} does not lie in whole sectors inside the {}-byte disk",
                        p.start, p.size, disk.size
                    ),
                });
            }
            Ok((
                p.start / SECTOR,
                p.size / SECTOR,
                EmbedArea::BiosBootPartition { number: p.number },
            ))
        }
        Label::Mbr => {
            let entries = mbr_entries(sector0);
            if entries.iter().any(|(t, _, _)| *t == 0xee) {
                return Err(Error::Invalid {
                    what: disk.path.display().to_string(),
                    reason: "the plan says MBR but sector 0 is a GPT protective MBR".into(),
                });
            }
            let first = entries
                .iter()
                .map(|(_, s, _)| *s)
                .min()
                .ok_or_else(|| Error::Invalid {
                    what: disk.path.display().to_string(),
                    reason: "the MBR has no partitions (was the image created?)".into(),
                })?;
            Ok((
                1,
                first.saturating_sub(1),
                EmbedArea::MbrGap {
                    first_partition_sector: first,
                },
            ))
        }
    }
}

/// Where `core.img` goes in `image`: the plan checked against the image itself.
struct Target {
    file: std::fs::File,
    sector0: [u8; 512],
    start: u64,
    sectors: u64,
    area: EmbedArea,
}

impl Target {
    /// Open `image` (planned as `disk`) and find the embedding area; refuse a plan the
    /// image does not match.
    fn locate(image: &Path, disk: &DiskPlan) -> Result<Target> {
        let invalid = |reason: String| Error::Invalid {
            what: image.display().to_string(),
            reason,
        };
        let Some(table) = &disk.table else {
            return Err(Error::NoPartitionTable {
                disk: image.to_owned(),
            });
        };
        let gpt = table.label == Label::Gpt;
        if gpt && !table.partitions.iter().any(|p| is_bios_boot(&p.type_code)) {
            return Err(Error::NoBiosBootPartition {
                disk: image.to_owned(),
            });
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(image)
            .map_err(io_err("opening", image))?;
        let len = file
            .metadata()
            .map_err(io_err("reading the size of", image))?
            .len();
        if len < disk.size {
            return Err(invalid(format!("{len} bytes, the plan says {}", disk.size)));
        }
        let mut sector0 = [0u8; 512];
        file.read_exact(&mut sector0)
            .map_err(io_err("reading sector 0 of", image))?;
        if sector0[510..] != [0x55, 0xaa] {
            return Err(invalid(
                "sector 0 has no 55 aa boot signature: no partition table written yet".into(),
            ));
        }
        let mut with_image = disk.clone();
        with_image.path = image.to_owned();
        let (start, sectors, area) = embed_area(&with_image, &sector0)?;
        if gpt {
            // Never trust the plan alone with a write: the image's own GPT must agree.
            let mut hdr = [0u8; 8];
            file.seek(SeekFrom::Start(SECTOR))
                .and_then(|_| file.read_exact(&mut hdr))
                .map_err(io_err("reading the GPT header of", image))?;
            if &hdr != b"EFI PART" {
                return Err(invalid(
                    "the plan says GPT but sector 1 has no GPT header".into(),
                ));
            }
            let on_disk = gpt_bios_boot_at(&mut file, start)
                .map_err(io_err("reading the GPT entries of", image))?;
            let fits =
                |(first, last): (u64, u64)| last.saturating_add(1).saturating_sub(first) >= sectors;
            if !on_disk.is_some_and(fits) {
                return Err(invalid(format!(
                    "the plan's BIOS boot partition ({sectors} sectors at {start}) is not in \
                     the image's GPT: was the image made from this plan?"
                )));
            }
        }
        Ok(Target {
            file,
            sector0,
            start,
            sectors,
            area,
        })
    }

    /// Refuse a core image of `needed` sectors that does not fit.
    fn check_room(&self, image: &Path, needed: u64) -> Result<()> {
        if needed <= self.sectors {
            return Ok(());
        }
        let (area, advice) = match &self.area {
            EmbedArea::MbrGap {
                first_partition_sector,
            } => (
                format!(
                    "the MBR gap (sectors 1..{first_partition_sector}, before the first partition)"
                ),
                "start the first partition at 1 MiB (align: 1MiB), as dib and parted do",
            ),
            EmbedArea::BiosBootPartition { number } => (
                format!("BIOS boot partition {number}"),
                "make the BIOS boot partition at least 1 MiB",
            ),
        };
        Err(Error::NoRoomForCore {
            disk: image.to_owned(),
            area,
            available: self.sectors,
            needed,
            advice,
        })
    }
}

/// `core.img` from `grub-mkimage -O i386-pc`, built in a temp dir next to `image`.
fn build_core(image: &Path, dir: &Path, modules: &[&str], embedded: &str) -> Result<Vec<u8>> {
    let scratch = tempfile::Builder::new()
        .prefix(".grub-core-")
        .tempdir_in(image.parent().unwrap_or(Path::new(".")))
        .map_err(io_err("creating a temp dir next to", image))?;
    let core_path = scratch.path().join("core.img");
    mkimage(
        "i386-pc",
        dir,
        modules,
        embedded,
        &core_path,
        "building core.img with grub-mkimage",
    )?;
    std::fs::read(&core_path).map_err(io_err("reading", &core_path))
}

/// GRUB's `boot.img` (package `grub-pc-bin`) from the platform directory `dir`.
fn boot_img(dir: &Path) -> Result<[u8; 512]> {
    let path = dir.join("boot.img");
    let boot = std::fs::read(&path).map_err(io_err("reading", &path))?;
    boot.try_into().map_err(|b: Vec<u8>| Error::Invalid {
        what: path.display().to_string(),
        reason: format!("{} bytes, GRUB's boot.img is 512", b.len()),
    })
}

/// Install GRUB for BIOS into the disk image `image` planned as `disk`, reading
/// `/boot/grub/grub.cfg` from `root_fs` (the filesystem holding `/boot/grub`). Everything
/// is checked before the first byte is written: `core.img` first, then sector 0. See the
/// module docs.
pub fn install_bios(
    image: &Path,
    disk: &DiskPlan,
    root_fs: &FsPlan,
    cfg: &GrubConfig,
) -> Result<BiosReport> {
    let embedded = embedded_config(cfg)?;
    let mut modules: Vec<&str> = BIOS_MODULES.to_vec();
    modules.extend(fs_modules(root_fs)?);
    let mut target = Target::locate(image, disk)?;
    let dir = platform_dir(cfg, "i386-pc");
    let mut core = build_core(image, &dir, &modules, &embedded)?;
    let core_bytes = core.len() as u64;
    let core_sectors = core_bytes.div_ceil(SECTOR);
    target.check_room(image, core_sectors)?;
    let blocklists = patch_core_blocklist(&mut core, target.start)?;
    core.resize((core_sectors * SECTOR) as usize, 0);
    let sector0 = patch_boot_sector(&boot_img(&dir)?, &target.sector0, target.start);
    diskforge_fault::point("boot.bios.write")?;

    let f = &mut target.file;
    f.seek(SeekFrom::Start(target.start * SECTOR))
        .and_then(|_| f.write_all(&core))
        .map_err(io_err("writing core.img into", image))?;
    f.seek(SeekFrom::Start(0))
        .and_then(|_| f.write_all(&sector0))
        .map_err(io_err("writing boot.img into sector 0 of", image))?;
    f.sync_all().map_err(io_err("syncing", image))?;
    tracing::debug!(
        image = %image.display(),
        area = ?target.area,
        core_sector = target.start,
        core_sectors,
        "GRUB for BIOS written"
    );
    Ok(BiosReport {
        area: target.area,
        area_sectors: target.sectors,
        core_sector: target.start,
        core_bytes,
        core_sectors,
        blocklists,
        modules: modules.iter().map(|m| (*m).to_owned()).collect(),
        modules_dir: dir,
        embedded_config: embedded,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake core.img: diskboot's default list (start 2, len 286, seg 0x820) and a stale
    /// second entry, as a previous install might leave.
    fn fake_core(sectors: usize) -> Vec<u8> {
        let mut c = vec![0xccu8; sectors * 512 - 100];
        c[..512].fill(0);
        let at = 512 - LIST_SIZE;
        c[at..at + 8].copy_from_slice(&2u64.to_le_bytes());
        c[at + 8..at + 10].copy_from_slice(&286u16.to_le_bytes());
        c[at + 10..at + 12].copy_from_slice(&0x820u16.to_le_bytes());
        let at2 = at - LIST_SIZE;
        c[at2..at2 + 8].copy_from_slice(&9999u64.to_le_bytes());
        c[at2 + 8..at2 + 10].copy_from_slice(&7u16.to_le_bytes());
        c[at2 + 10..at2 + 12].copy_from_slice(&0x1000u16.to_le_bytes());
        c
    }

    #[derive(Serialize)]
    struct Patched {
        blocklists: Vec<String>,
        list_bytes: String,
    }

    fn show(lists: &[Blocklist]) -> Vec<String> {
        lists
            .iter()
            .map(|b| format!("start={} len={} segment={:#06x}", b.start, b.len, b.segment))
            .collect()
    }

    fn hex(b: &[u8]) -> String {
        b.iter()
            .map(|x| format!("{x:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn blocklist_patch_snapshot() {
        let mut core = fake_core(287);
        let before = core.clone();
        let written = patch_core_blocklist(&mut core, 2048).unwrap();
        let p = Patched {
            blocklists: show(&read_blocklists(&core)),
            list_bytes: hex(&core[512 - 3 * LIST_SIZE..512]),
        };
        assert_eq!(written, read_blocklists(&core));
        insta::assert_yaml_snapshot!("blocklist_gpt_bios_boot_at_2048", p);
        // Nothing but the two lists changed.
        let diff: Vec<usize> = (0..core.len()).filter(|i| core[*i] != before[*i]).collect();
        assert!(
            diff.iter().all(|i| (512 - 2 * LIST_SIZE..512).contains(i)),
            "{diff:?}"
        );
        // MBR gap: core at sector 1.
        let mut core = fake_core(287);
        patch_core_blocklist(&mut core, 1).unwrap();
        insta::assert_yaml_snapshot!("blocklist_mbr_gap_at_1", show(&read_blocklists(&core)));
    }

    #[test]
    fn boot_sector_patch_snapshot() {
        let mut boot = [0u8; 512];
        for (i, b) in boot.iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        boot[510] = 0x55;
        boot[511] = 0xaa;
        let mut existing = [0u8; 512];
        existing[0x1b8..0x1bc].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        existing[0x1be..0x1ce].copy_from_slice(&[
            0x80, 0, 0, 0, 0x83, 0, 0, 0, 0x00, 0x08, 0, 0, 0x00, 0xf8, 0x01, 0,
        ]);
        existing[510] = 0x55;
        existing[511] = 0xaa;
        existing[0x10] = 0x42; // "BPB" byte: kept
        let s = patch_boot_sector(&boot, &existing, 0x1_0000_0800);
        insta::assert_snapshot!(
            "boot_sector_fields",
            format!(
                "bpb[0x0b..0x12]: {}\nkernel_sector@0x5c: {}\nboot_drive@0x64: {}\ndrive_check@0x66: {}\nnt_magic..end@0x1b8: {}\n",
                hex(&s[0x0b..0x12]),
                hex(&s[KERNEL_SECTOR..KERNEL_SECTOR + 8]),
                hex(&s[BOOT_DRIVE..BOOT_DRIVE + 1]),
                hex(&s[DRIVE_CHECK..DRIVE_CHECK + 2]),
                hex(&s[WINDOWS_NT_MAGIC..WINDOWS_NT_MAGIC + 22]),
            )
        );
        assert_eq!(s[0x10], 0x42);
        assert_eq!(s[..BPB_START], boot[..BPB_START]);
        assert_eq!(s[0x68..0x1b8], boot[0x68..0x1b8]);
        assert_eq!(s[0x1b8..], existing[0x1b8..]);
    }

    #[test]
    fn mbr_entries_and_bios_boot_codes() {
        let mut s = [0u8; 512];
        // Partition 2 (extended) starts first at 63; partition 1 at 2048.
        s[0x1be + 4] = 0x83;
        s[0x1be + 8..0x1be + 12].copy_from_slice(&2048u32.to_le_bytes());
        s[0x1be + 12..0x1be + 16].copy_from_slice(&100u32.to_le_bytes());
        s[0x1ce + 4] = 0x05;
        s[0x1ce + 8..0x1ce + 12].copy_from_slice(&63u32.to_le_bytes());
        s[0x1ce + 12..0x1ce + 16].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(mbr_entries(&s), [(0x83, 2048, 100), (0x05, 63, 1000)]);
        assert!(is_bios_boot("EF02"));
        assert!(is_bios_boot("ef02"));
        assert!(is_bios_boot("21686148-6449-6e6f-744e-656564454649"));
        assert!(!is_bios_boot("EF00"));
    }

    #[test]
    fn short_core_is_refused() {
        let mut c = vec![0u8; 512];
        assert!(patch_core_blocklist(&mut c, 1).is_err());
    }
}
