//! Reading the mount table (`/proc/thread-self/mountinfo`, proc(5)).

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::{Error, Result};

/// One line of `/proc/self/mountinfo`. Field names follow `findmnt -J`
/// (`target`, `source`, `fstype`, `options`) plus the rest of the line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MountInfo {
    /// Mount ID.
    pub id: u32,
    /// Parent mount ID.
    pub parent: u32,
    /// `major:minor` of the filesystem's device.
    #[serde(rename = "maj:min")]
    pub maj_min: String,
    /// The directory of the filesystem that forms this mount's root (`/` unless a bind of a
    /// subtree).
    pub root: PathBuf,
    /// The mount point.
    pub target: PathBuf,
    /// Per-mount options (`rw,relatime`).
    pub options: String,
    /// Filesystem type.
    pub fstype: String,
    /// Mount source (device, `overlay`, `tmpfs`…).
    pub source: String,
    /// Per-superblock options (for overlay: `lowerdir=…,upperdir=…`).
    pub super_options: String,
}

/// The mounts of the calling thread's mount namespace (`/proc/thread-self/mountinfo`, which
/// differs from the process's inside [`crate::in_private_namespace`]), in mount order.
pub fn mounts() -> Result<Vec<MountInfo>> {
    let p = Path::new("/proc/thread-self/mountinfo");
    let text = std::fs::read_to_string(p).map_err(|source| Error::Stat {
        path: p.into(),
        source,
    })?;
    Ok(parse_mountinfo(&text))
}

/// The mount whose mount point is exactly `target` (the topmost one, if stacked).
pub fn find_mount(target: impl AsRef<Path>) -> Result<Option<MountInfo>> {
    let t = target.as_ref();
    Ok(mounts()?.into_iter().rev().find(|m| m.target == t))
}

/// Parse mountinfo text; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountInfo> {
    let (pre, post) = line.split_once(" - ")?;
    let f: Vec<&str> = pre.split(' ').collect();
    let g: Vec<&str> = post.splitn(3, ' ').collect();
    Some(MountInfo {
        id: f.first()?.parse().ok()?,
        parent: f.get(1)?.parse().ok()?,
        maj_min: (*f.get(2)?).to_owned(),
        root: PathBuf::from(unescape(f.get(3)?)),
        target: PathBuf::from(unescape(f.get(4)?)),
        options: (*f.get(5)?).to_owned(),
        fstype: (*g.first()?).to_owned(),
        source: unescape(g.get(1)?),
        super_options: g.get(2).map(|s| unescape(s)).unwrap_or_default(),
    })
}

/// Undo the kernel's octal escapes (`\040` for space, `\011`, `\012`, `\134`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_overlay_and_escaped_lines() {
        let text = "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                    40 1 0:50 / /merged rw,relatime - overlay overlay rw,lowerdir=/a:/b,upperdir=/u,workdir=/w\n\
                    garbage\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].target, Path::new("/mnt/with space"));
        assert_eq!(m[0].root, Path::new("/mnt1"));
        assert_eq!(
            (m[0].fstype.as_str(), m[0].source.as_str()),
            ("ext3", "/dev/root")
        );
        assert_eq!(
            m[1].super_options,
            "rw,lowerdir=/a:/b,upperdir=/u,workdir=/w"
        );
        assert_eq!(m[1].parent, 1);
    }
}
