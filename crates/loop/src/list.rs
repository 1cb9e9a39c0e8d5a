//! Listing attached devices from sysfs (`/sys/block/loopN/loop/*`), as `losetup -J -l` does.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// One attached loop device. Field names in JSON follow `losetup -J -l`
/// (`name`, `sizelimit`, `offset`, `autoclear`, `ro`, `back-file`, `dio`, `log-sec`), plus
/// `partscan` and `maj:min`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoopInfo {
    /// The device node, `/dev/loopN`.
    pub name: PathBuf,
    /// Mapped length in bytes; 0 = to the end of the file.
    pub sizelimit: u64,
    /// Start of the mapping in the backing file, bytes.
    pub offset: u64,
    /// Detaches on last close.
    pub autoclear: bool,
    /// Read-only.
    pub ro: bool,
    /// The backing file as the kernel reports it (may end in ` (deleted)`).
    #[serde(rename = "back-file")]
    pub back_file: PathBuf,
    /// Direct I/O.
    pub dio: bool,
    /// Logical sector size in bytes.
    #[serde(rename = "log-sec")]
    pub log_sec: u32,
    /// Partition scanning enabled.
    pub partscan: bool,
    /// `major:minor` of the device.
    #[serde(rename = "maj:min")]
    pub maj_min: String,
}

/// Every attached loop device, sorted by number.
pub fn list() -> Result<Vec<LoopInfo>> {
    let dir = Path::new("/sys/block");
    let rd = std::fs::read_dir(dir).map_err(|source| Error::Read {
        path: dir.into(),
        source,
    })?;
    let mut numbers: Vec<u32> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("loop")?.parse().ok())
        .collect();
    numbers.sort_unstable();
    let mut out = Vec::new();
    for n in numbers {
        match info_by_number(n) {
            Ok(i) => out.push(i),
            // Detached (or detaching) between read_dir and now.
            Err(Error::NotAttached { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// The state of one loop device, e.g. `/dev/loop3`. [`Error::NotAttached`] when it has no
/// backing file.
pub fn info(device: impl AsRef<Path>) -> Result<LoopInfo> {
    info_by_number(loop_number(device.as_ref())?)
}

/// Attached devices whose backing file is `file` (compared after resolving symlinks).
pub fn find_by_backing_file(file: impl AsRef<Path>) -> Result<Vec<LoopInfo>> {
    let file = file.as_ref();
    let canon = std::fs::canonicalize(file).map_err(|source| Error::OpenBacking {
        path: file.to_owned(),
        source,
    })?;
    Ok(list()?
        .into_iter()
        .filter(|i| i.back_file == canon)
        .collect())
}

/// N from `/dev/loopN` (symlinks resolved); [`Error::NotALoopDevice`] otherwise.
pub(crate) fn loop_number(device: &Path) -> Result<u32> {
    let not_loop = || Error::NotALoopDevice {
        path: device.to_owned(),
    };
    let real = std::fs::canonicalize(device).map_err(|source| Error::OpenBacking {
        path: device.to_owned(),
        source,
    })?;
    let name = real
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(not_loop)?;
    let n: u32 = name
        .strip_prefix("loop")
        .and_then(|n| n.parse().ok())
        .ok_or_else(not_loop)?;
    if !Path::new(&format!("/sys/block/loop{n}")).exists() {
        return Err(not_loop());
    }
    Ok(n)
}

pub(crate) fn info_by_number(n: u32) -> Result<LoopInfo> {
    let base = PathBuf::from(format!("/sys/block/loop{n}"));
    let name = PathBuf::from(format!("/dev/loop{n}"));
    let read = |rel: &str| -> Result<String> {
        let p = base.join(rel);
        match std::fs::read_to_string(&p) {
            Ok(s) => Ok(s.trim_end_matches('\n').to_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && rel.starts_with("loop/") => {
                Err(Error::NotAttached {
                    device: name.clone(),
                })
            }
            Err(source) => Err(Error::Read { path: p, source }),
        }
    };
    let num = |rel: &str| -> Result<u64> {
        let s = read(rel)?;
        s.trim().parse().map_err(|_| Error::Read {
            path: base.join(rel),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not a number: {s:?}"),
            ),
        })
    };
    let back_file = PathBuf::from(read("loop/backing_file")?);
    Ok(LoopInfo {
        sizelimit: num("loop/sizelimit")?,
        offset: num("loop/offset")?,
        autoclear: num("loop/autoclear")? != 0,
        ro: num("ro")? != 0,
        back_file,
        dio: num("loop/dio")? != 0,
        log_sec: u32::try_from(num("queue/logical_block_size")?).unwrap_or(u32::MAX),
        partscan: num("loop/partscan")? != 0,
        maj_min: read("dev")?,
        name,
    })
}
