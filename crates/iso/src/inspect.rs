//! `inspect`: everything a remaster needs to know about an image, as one serialisable report.

use std::path::Path;

use crate::Result;
use crate::boot::{BootCatalog, Hybrid, Platform, read_catalog, read_hybrid};
use crate::iso9660::{SECTOR, TreeKind, Volume, VolumeDescriptor};
use crate::isomd5::{APPDATA_OFFSET, APPDATA_SIZE, ImplantedMd5, parse_appdata};

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
    let hybrid = read_hybrid(vol)?;
    let el_torito = match vol.boot_catalog_lba {
        Some(lba) => Some(read_catalog(vol, lba, tree, &hybrid.partition_ranges())?),
        None => None,
    };
    let area = vol.src.read_vec(
        u64::from(vol.primary.lba) * SECTOR + APPDATA_OFFSET,
        APPDATA_SIZE,
    )?;
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
