//! The resolved edit list ([`Changes`]): files to write ([`Put`] with their [`Content`]),
//! paths to remove, a new volume id, raw rewrites outside the tree. A leaf: every route (our
//! writer in `patch`, xorriso in `replay` and `rebuild`, the kernel routes) reads it; none of
//! them is imported here.

use std::path::{Path, PathBuf};

use crate::iso9660::normalize;
use crate::{Error, Result};

/// File content for a change.
#[derive(Debug, Clone)]
pub enum Content {
    /// A local file.
    File(PathBuf),
    /// Bytes we made (an edited config or FAT image).
    Bytes(Vec<u8>),
}

impl Content {
    /// The content as bytes.
    pub fn bytes(&self) -> Result<std::borrow::Cow<'_, [u8]>> {
        match self {
            Content::File(p) => Ok(std::fs::read(p)
                .map_err(|e| Error::io("reading", p, e))?
                .into()),
            Content::Bytes(b) => Ok(b.as_slice().into()),
        }
    }
}

/// A file to write into the tree.
#[derive(Debug, Clone)]
pub struct Put {
    /// Path in the ISO.
    pub dest: String,
    /// Its new content.
    pub content: Content,
    /// Whether the path exists in the input.
    pub existed: bool,
    /// Why (for reports).
    pub why: String,
}

/// Bytes outside the tree to rewrite (a hidden EFI image: an appended partition).
#[derive(Debug, Clone)]
pub struct RawWrite {
    /// Byte offset in the input.
    pub offset: u64,
    /// New bytes (same length as the old).
    pub data: Vec<u8>,
    /// What it is.
    pub what: String,
    /// The MBR (or GPT) partition number it fills, when it is an appended partition.
    pub partition: Option<u8>,
}

/// Every change to make, resolved against the input.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// Files to write.
    pub puts: Vec<Put>,
    /// Paths to remove.
    pub removes: Vec<String>,
    /// New volume id.
    pub volid: Option<String>,
    /// Raw rewrites outside the tree.
    pub raw: Vec<RawWrite>,
    /// Boot configs edited (ISO paths, and `IMAGE::/path` inside FAT images).
    pub configs: Vec<String>,
    /// What the caller should hear (a boot file left naming the old volume id under
    /// `--force`).
    pub warnings: Vec<String>,
}

impl Changes {
    /// One line per put and removal, saying why.
    pub(crate) fn notes(&self) -> impl Iterator<Item = String> + '_ {
        let puts = self.puts.iter().map(|p| format!("{}: {}", p.dest, p.why));
        puts.chain(self.removes.iter().map(|r| format!("{r}: removed")))
    }
}

/// Split `/a/b/c` into (`/a/b`, `c`).
pub fn parent_and_name(path: &str) -> (String, String) {
    let p = normalize(path);
    match p.rsplit_once('/') {
        Some(("", n)) => ("/".into(), n.into()),
        Some((d, n)) => (d.into(), n.into()),
        None => ("/".into(), p),
    }
}

/// Stage every content that is not a local file under `scratch`, returning `(src, dest)`.
pub(crate) fn staged_sources(changes: &Changes, scratch: &Path) -> Result<Vec<(PathBuf, String)>> {
    let mut v = Vec::new();
    for (i, p) in changes.puts.iter().enumerate() {
        let src = match &p.content {
            Content::File(f) => f.clone(),
            Content::Bytes(b) => {
                let f = scratch.join(format!("put-{i}"));
                std::fs::write(&f, b).map_err(|e| Error::io("writing", &f, e))?;
                f
            }
        };
        v.push((src, p.dest.clone()));
    }
    Ok(v)
}

pub(crate) fn raw_images(changes: &Changes, scratch: &Path) -> Result<Vec<(u8, PathBuf)>> {
    let mut v = Vec::new();
    for (i, r) in changes.raw.iter().enumerate() {
        let Some(n) = r.partition else {
            return Err(Error::ModeUnavailable {
                mode: "direct/copy".into(),
                reason: format!(
                    "{} is not an appended partition xorriso can replace",
                    r.what
                ),
            });
        };
        let f = scratch.join(format!("appended-{i}.img"));
        std::fs::write(&f, &r.data).map_err(|e| Error::io("writing", &f, e))?;
        v.push((n, f));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_and_name_splits() {
        assert_eq!(parent_and_name("/ks.cfg"), ("/".into(), "ks.cfg".into()));
        assert_eq!(parent_and_name("a/b/c"), ("/a/b".into(), "c".into()));
    }
}
