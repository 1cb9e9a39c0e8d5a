//! `DIB_LOCAL_IMAGE`: start the root tree from an existing disk image (qcow2, raw, or any
//! format qemu-img reads) instead of debootstrap — without mounting: the image is converted to
//! a sparse raw file if needed, its partition table read (diskforge-part), the root
//! filesystem found (the largest ext2/3/4 partition, or the whole disk), and its tree copied
//! out with `debugfs rdump` (owners, modes and times kept; run as root for owners).

use std::path::Path;

use diskforge_cmd::Cmd;
use serde::Serialize;

use crate::{Error, Result, io_err, tool_err};

/// What [`unpack_local_image`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LocalImage {
    /// The format qemu-img saw.
    pub format: String,
    /// The partition the tree came from (none: the whole disk).
    pub partition: Option<u32>,
    /// Its byte offset in the disk.
    pub offset: u64,
}

fn usage(value: &Path, reason: impl Into<String>) -> Error {
    Error::Usage {
        field: "DIB_LOCAL_IMAGE".into(),
        value: value.display().to_string(),
        reason: reason.into(),
    }
}

/// Copy the root filesystem of `image` into `tree` (empty), using `scratch` for a raw copy.
pub fn unpack_local_image(image: &Path, tree: &Path, scratch: &Path) -> Result<LocalImage> {
    if !image.is_file() {
        return Err(usage(image, "no such file"));
    }
    let info = qemu_img_cmd::info(image, None).map_err(|source| Error::Output {
        format: crate::OutputFormat::Raw,
        source: Box::new(source),
    })?;
    let raw = if info.format == "raw" {
        image.to_owned()
    } else {
        let raw = scratch.join("local-image.raw");
        let mut c = qemu_img_cmd::ConvertOptions::to(qemu_img_cmd::Format::Raw);
        c.out_of_order = true;
        qemu_img_cmd::convert(image, &raw, &c, |_| {}).map_err(|source| Error::Output {
            format: crate::OutputFormat::Raw,
            source: Box::new(source),
        })?;
        raw
    };
    let ext = |offset: u64| {
        diskforge_mkfs::detect_at(&raw, offset)
            .ok()
            .flatten()
            .is_some_and(|d| matches!(d.fs_type.as_str(), "ext2" | "ext3" | "ext4"))
    };
    let (partition, offset) = match diskforge_part::partitions(&raw) {
        Ok(parts) if !parts.is_empty() => {
            let root = parts
                .iter()
                .filter(|p| ext(p.start_bytes))
                .max_by_key(|p| p.size_bytes)
                .ok_or_else(|| usage(image, "no ext2/3/4 partition to take the root tree from"))?;
            (Some(root.number), root.start_bytes)
        }
        _ if ext(0) => (None, 0),
        _ => {
            return Err(usage(
                image,
                "neither a partition table nor an ext2/3/4 filesystem",
            ));
        }
    };
    std::fs::create_dir_all(tree).map_err(io_err("creating", tree))?;
    let mut target = raw.as_os_str().to_owned();
    target.push(format!("?offset={offset}"));
    let out = Cmd::new("debugfs")
        .arg("-R")
        .arg(format!("rdump / {}", tree.display()))
        .arg(target)
        .run()
        .map_err(tool_err(
            "copying the tree out of DIB_LOCAL_IMAGE (debugfs rdump)",
        ))?;
    // debugfs reports per-file problems on stderr but exits 0.
    let stderr = String::from_utf8_lossy(&out.stderr);
    if let Some(line) = stderr
        .lines()
        .find(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
    {
        return Err(usage(image, format!("debugfs rdump: {line}")));
    }
    let lost = tree.join("lost+found");
    if lost.is_dir() {
        let _ = std::fs::remove_dir_all(&lost);
    }
    Ok(LocalImage {
        format: info.format,
        partition,
        offset,
    })
}
