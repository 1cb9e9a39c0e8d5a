//! `inspect`: everything a remaster needs to know about an image, as one serialisable report.

use std::path::Path;

use crate::boot::{BootCatalog, Hybrid, Platform, read_catalog, read_hybrid};
use crate::iso9660::{Problem, ProblemKind, SECTOR, TreeKind, Volume, VolumeDescriptor};
use crate::isomd5::{APPDATA_OFFSET, APPDATA_SIZE, ImplantedMd5, parse_appdata};
use crate::{Error, Result};

/// The result of [`inspect`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct Inspection {
    /// The image's path.
    pub path: String,
    /// File size in bytes.
    pub file_size: u64,
    /// Primary volume descriptor fields.
    pub primary: VolumeDescriptor,
    /// Volume size in bytes (blocks × 2048).
    pub volume_size: u64,
    /// Whether the primary tree has Rock Ridge (SUSP `SP` in the root).
    pub rock_ridge: bool,
    /// The Joliet volume id, when there is a Joliet tree.
    pub joliet: Option<String>,
    /// Regular files in the primary tree.
    pub file_count: u64,
    /// Directories in the primary tree (without the root).
    pub dir_count: u64,
    /// Total bytes of regular files.
    pub file_bytes: u64,
    /// The El Torito catalog, when the image is bootable from optical media.
    pub el_torito: Option<BootCatalog>,
    /// The isohybrid MBR/GPT.
    pub hybrid: Hybrid,
    /// The implanted isomd5sum fields, when present.
    pub implanted_md5: Option<ImplantedMd5>,
    /// What is wrong with the image (both trees and the boot structures), by offset;
    /// empty for a sound image.
    pub problems: Vec<Problem>,
}

impl Inspection {
    /// Fail with [`Error::Hostile`] when a problem makes the image untrustworthy (every
    /// [`ProblemKind::is_fatal`] one), so nothing is read through another program or written.
    pub fn check(&self) -> Result<()> {
        let fatal: Vec<&Problem> = self.problems.iter().filter(|p| p.kind.is_fatal()).collect();
        match fatal.first() {
            None => Ok(()),
            Some(first) => Err(Error::Hostile {
                path: self.path.clone().into(),
                first: first.to_string(),
                more: fatal.len() - 1,
            }),
        }
    }

    /// The problems that do not stop a remaster, as warning lines.
    pub fn warnings(&self) -> Vec<String> {
        let ok = self.problems.iter().filter(|p| !p.kind.is_fatal());
        ok.map(|p| format!("{}: {p}", self.path)).collect()
    }
}

/// Read the volume descriptors, the primary tree, the boot catalog, the system area and the
/// implanted MD5 of `path`.
pub fn inspect(path: &Path) -> Result<Inspection> {
    let vol = Volume::open(path)?;
    inspect_volume(&vol)
}

/// [`inspect`] for an already opened volume.
pub fn inspect_volume(vol: &Volume) -> Result<Inspection> {
    inspect_with_tree(vol, &vol.tree(TreeKind::Primary)?)
}

/// [`inspect_volume`] with the primary tree already walked (`vol.tree(TreeKind::Primary)`).
pub fn inspect_with_tree(vol: &Volume, tree: &crate::iso9660::Tree) -> Result<Inspection> {
    let mut problems = tree.problems.clone();
    if vol.joliet.is_some() {
        let joliet = vol.tree(TreeKind::Joliet)?;
        problems.extend(joliet.problems.into_iter().map(|mut p| {
            p.detail = format!("Joliet tree: {}", p.detail);
            p
        }));
    }
    let hybrid = read_hybrid(vol)?;
    let el_torito = match vol.boot_catalog_lba {
        Some(lba) => match read_catalog(vol, lba, tree, &hybrid.partition_ranges()) {
            Ok(c) => Some(c),
            Err(e) => {
                problems.push(Problem {
                    kind: ProblemKind::Unreadable,
                    offset: u64::from(lba) * SECTOR,
                    detail: format!("El Torito boot catalog: {e}"),
                });
                None
            }
        },
        None => None,
    };
    // A boot image past the end of the file: firmware would read garbage (or fail), and a
    // remaster would carry a catalog entry pointing nowhere.
    for (i, e) in el_torito.iter().flat_map(|c| c.entries.iter()).enumerate() {
        let start = u64::from(e.load_rba) * SECTOR;
        let len = e.image_size.max(u64::from(e.load_size) * 512);
        if start.saturating_add(len) > vol.src.len() {
            problems.push(Problem {
                kind: ProblemKind::ExtentPastEnd,
                offset: vol.boot_catalog_lba.map_or(0, |l| u64::from(l) * SECTOR),
                detail: format!(
                    "El Torito entry {}: boot image at block {} ({len} bytes) ends past the \
                     end of the file ({} bytes)",
                    i + 1,
                    e.load_rba,
                    vol.src.len()
                ),
            });
        }
    }
    let area = vol.src.read_vec(
        u64::from(vol.primary.lba) * SECTOR + APPDATA_OFFSET,
        APPDATA_SIZE,
    )?;
    problems.sort_by_key(|p| p.offset);
    let (file_count, file_bytes) = tree.file_stats();
    let dir_count = tree
        .nodes
        .values()
        .filter(|n| n.kind == crate::iso9660::NodeKind::Dir)
        .count();
    Ok(Inspection {
        path: vol.src.path().display().to_string(),
        file_size: vol.src.len(),
        volume_size: u64::from(vol.primary.volume_blocks) * SECTOR,
        primary: vol.primary.clone(),
        rock_ridge: vol.rock_ridge.is_some(),
        joliet: vol.joliet.as_ref().map(|j| j.volume_id.clone()),
        file_count,
        dir_count: dir_count as u64,
        file_bytes,
        el_torito,
        hybrid,
        implanted_md5: parse_appdata(&area),
        problems,
    })
}

/// The GPT partition number of a hidden El Torito UEFI image that only the GPT describes
/// (`-appended_part_as_gpt`): xorriso 1.5.4 neither replays nor reports that entry.
pub(crate) fn gpt_only_hidden_efi(insp: &Inspection) -> Option<u32> {
    let entries = insp.el_torito.as_ref()?.entries.iter();
    let e = entries
        .filter(|e| e.platform == Platform::Uefi && e.image.is_none())
        .find(|_| true)?;
    let start = u64::from(e.load_rba) * 4;
    let in_mbr = insp
        .hybrid
        .mbr
        .iter()
        .flatten()
        .any(|p| u64::from(p.start) == start);
    let gpt = insp.hybrid.gpt.iter().flatten();
    gpt.filter(|p| p.first_lba == start && !in_mbr)
        .map(|p| p.number)
        .next()
}
