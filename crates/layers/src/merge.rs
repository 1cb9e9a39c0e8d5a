//! The union of a layer stack computed from the directories (no mount), and upper-dir diffs.
//!
//! Lookup follows overlayfs: the topmost layer that has a name wins; a whiteout (char 0/0)
//! hides the name in every lower layer; a directory merges with the directories below it
//! until a layer has a non-directory there or the directory is opaque
//! (`trusted.overlay.opaque=y`).

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::fsutil::{DirSource, get_xattr, is_whiteout, read_xattrs, rel_join, sorted_entries};
use crate::{Error, OPAQUE_XATTR, Result};

/// One path of a merged view.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MergedEntry {
    /// The path relative to the root (`""` for the root itself), components joined by `/`.
    pub path: OsString,
    /// The file that provides it (in the topmost layer that has it).
    pub source: PathBuf,
    /// Index of that layer in the stack (0 = base).
    pub layer: usize,
}

pub(crate) enum Resolved {
    File(PathBuf, usize),
    Dir(PathBuf, usize, Vec<usize>),
}

fn lstat_opt(p: &Path) -> Result<Option<std::fs::Metadata>> {
    match std::fs::symlink_metadata(p) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(20) => {
            Ok(None)
        }
        Err(e) => Err(Error::io("inspecting", p, e)),
    }
}

fn is_opaque(p: &Path) -> Result<bool> {
    Ok(get_xattr(p, OPAQUE_XATTR)?.as_deref() == Some(b"y"))
}

/// Resolve `rel` among `contributors` (layer indices, top first, each having `rel`'s parent
/// as a merged directory).
fn resolve(layers: &[PathBuf], contributors: &[usize], rel: &OsStr) -> Result<Option<Resolved>> {
    for (k, &i) in contributors.iter().enumerate() {
        let p = layers[i].join(rel);
        let Some(meta) = lstat_opt(&p)? else { continue };
        if is_whiteout(&meta) {
            return Ok(None);
        }
        if !meta.is_dir() {
            return Ok(Some(Resolved::File(p, i)));
        }
        let mut cs = vec![i];
        if !is_opaque(&p)? {
            for &j in &contributors[k + 1..] {
                let q = layers[j].join(rel);
                match lstat_opt(&q)? {
                    None => continue,
                    Some(m) if m.is_dir() => {
                        cs.push(j);
                        if is_opaque(&q)? {
                            break;
                        }
                    }
                    Some(_) => break,
                }
            }
        }
        return Ok(Some(Resolved::Dir(p, i, cs)));
    }
    Ok(None)
}

/// Names in the merged directory `rel` (union over its contributors), sorted.
fn child_names(
    layers: &[PathBuf],
    contributors: &[usize],
    rel: &OsStr,
) -> Result<BTreeSet<Vec<u8>>> {
    let mut names = BTreeSet::new();
    for &i in contributors {
        for n in sorted_entries(&layers[i].join(rel))? {
            names.insert(n.into_vec());
        }
    }
    Ok(names)
}

fn walk(
    layers: &[PathBuf],
    contributors: &[usize],
    rel: &OsStr,
    out: &mut Vec<MergedEntry>,
) -> Result<()> {
    for name in child_names(layers, contributors, rel)? {
        let r = rel_join(rel, OsStr::from_bytes(&name));
        match resolve(layers, contributors, &r)? {
            None => {}
            Some(Resolved::File(source, layer)) => out.push(MergedEntry {
                path: r,
                source,
                layer,
            }),
            Some(Resolved::Dir(source, layer, cs)) => {
                out.push(MergedEntry {
                    path: r.clone(),
                    source,
                    layer,
                });
                walk(layers, &cs, &r, out)?;
            }
        }
    }
    Ok(())
}

fn all_top_first(layers: &[PathBuf]) -> Vec<usize> {
    (0..layers.len()).rev().collect()
}

/// Every path of the merged view of `layers` (base first), depth-first in name order, the
/// root first. Nothing is mounted. A repeated layer counts once (its topmost place) and a
/// layer whose root is opaque hides the layers below it, as in [`crate::mount_stack`].
pub fn merged_tree(layers: &[PathBuf]) -> Result<Vec<MergedEntry>> {
    let eff = crate::fsutil::effective_layers(layers);
    // Index in `layers` of each effective layer (its topmost place).
    let index: Vec<usize> = eff
        .iter()
        .map(|p| layers.iter().rposition(|l| l == p).unwrap_or(0))
        .collect();
    let layers = eff.as_slice();
    let Some(top) = layers.last() else {
        return Ok(Vec::new());
    };
    let mut out = vec![MergedEntry {
        path: OsString::new(),
        source: top.clone(),
        layer: layers.len() - 1,
    }];
    let mut cs = Vec::new();
    for i in all_top_first(layers) {
        cs.push(i);
        if is_opaque(&layers[i])? {
            break;
        }
    }
    walk(layers, &cs, OsStr::new(""), &mut out)?;
    for e in &mut out {
        e.layer = index.get(e.layer).copied().unwrap_or(e.layer);
    }
    Ok(out)
}

/// Kind of change an upper dir makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// New path (`A`).
    Added,
    /// Existing path with different content or metadata (`C`).
    Changed,
    /// Path removed (`D`).
    Deleted,
}

impl ChangeKind {
    /// The one-letter code `docker diff` uses: `A`, `C`, `D`.
    pub fn letter(self) -> char {
        match self {
            ChangeKind::Added => 'A',
            ChangeKind::Changed => 'C',
            ChangeKind::Deleted => 'D',
        }
    }
}

/// One change of [`diff`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    /// Absolute path in the merged view (`/etc/hostname`).
    pub path: String,
    /// What happened to it.
    pub kind: ChangeKind,
}

/// Where a path stands in the merged lower stack.
pub(crate) struct LowerView<'a> {
    pub(crate) layers: &'a [PathBuf],
}

impl LowerView<'_> {
    /// Resolve `rel` component by component from the root.
    pub(crate) fn lookup(&self, rel: &OsStr) -> Result<Option<Resolved>> {
        let mut cs = Vec::new();
        for i in all_top_first(self.layers) {
            cs.push(i);
            if is_opaque(&self.layers[i])? {
                break;
            }
        }
        if rel.is_empty() {
            return Ok(cs
                .first()
                .map(|&i| Resolved::Dir(self.layers[i].clone(), i, cs.clone())));
        }
        let mut so_far = OsString::new();
        let comps: Vec<&[u8]> = rel.as_bytes().split(|b| *b == b'/').collect();
        for (n, c) in comps.iter().enumerate() {
            so_far = rel_join(&so_far, OsStr::from_bytes(c));
            match resolve(self.layers, &cs, &so_far)? {
                None => return Ok(None),
                Some(Resolved::File(p, i)) => {
                    return Ok((n + 1 == comps.len()).then_some(Resolved::File(p, i)));
                }
                Some(Resolved::Dir(p, i, next)) => {
                    if n + 1 == comps.len() {
                        return Ok(Some(Resolved::Dir(p, i, next)));
                    }
                    cs = next;
                }
            }
        }
        Ok(None)
    }
}

fn abs_name(rel: &OsStr) -> String {
    format!("/{}", rel.to_string_lossy())
}

/// Whether two files differ in type, mode, owner, xattrs (other than `trusted.overlay.*`),
/// device number, symlink target or content.
fn differs(a: &Path, b: &Path) -> Result<bool> {
    let (ma, mb) = (
        std::fs::symlink_metadata(a).map_err(|e| Error::io("inspecting", a, e))?,
        std::fs::symlink_metadata(b).map_err(|e| Error::io("inspecting", b, e))?,
    );
    if ma.mode() != mb.mode()
        || ma.uid() != mb.uid()
        || ma.gid() != mb.gid()
        || ma.rdev() != mb.rdev()
    {
        return Ok(true);
    }
    let x = |p: &Path| -> Result<Vec<(String, Vec<u8>)>> {
        let mut v = read_xattrs(p)?;
        v.retain(|(k, _)| !k.starts_with("trusted.overlay."));
        Ok(v)
    };
    if x(a)? != x(b)? {
        return Ok(true);
    }
    if ma.file_type().is_symlink() {
        let ta = std::fs::read_link(a).map_err(|e| Error::io("reading symlink", a, e))?;
        let tb = std::fs::read_link(b).map_err(|e| Error::io("reading symlink", b, e))?;
        return Ok(ta != tb);
    }
    if ma.is_file() {
        if ma.len() != mb.len() {
            return Ok(true);
        }
        return Ok(!same_content(a, b)?);
    }
    Ok(false)
}

fn same_content(a: &Path, b: &Path) -> Result<bool> {
    use std::io::Read;
    let mut fa = std::fs::File::open(a).map_err(|e| Error::io("reading", a, e))?;
    let mut fb = std::fs::File::open(b).map_err(|e| Error::io("reading", b, e))?;
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = fa.read(&mut ba).map_err(|e| Error::io("reading", a, e))?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])
            .map_err(|e| Error::io("reading", b, e))?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

fn diff_walk(
    lower: &LowerView<'_>,
    upper: &Path,
    rel: &OsStr,
    out: &mut Vec<Change>,
) -> Result<()> {
    let dir = upper.join(rel);
    let names = sorted_entries(&dir)?;
    if !rel.is_empty() && is_opaque(&dir)? {
        // Everything the lowers had here and the upper does not re-add is gone.
        if let Some(Resolved::Dir(_, _, cs)) = lower.lookup(rel)? {
            let upper_names: BTreeSet<Vec<u8>> =
                names.iter().map(|n| n.as_bytes().to_vec()).collect();
            for n in child_names(lower.layers, &cs, rel)? {
                let r = rel_join(rel, OsStr::from_bytes(&n));
                let in_upper = upper_names.contains(&n);
                if !in_upper && resolve(lower.layers, &cs, &r)?.is_some() {
                    out.push(Change {
                        path: abs_name(&r),
                        kind: ChangeKind::Deleted,
                    });
                }
            }
        }
    }
    for name in names {
        let r = rel_join(rel, &name);
        let abs = upper.join(&r);
        let meta = std::fs::symlink_metadata(&abs).map_err(|e| Error::io("inspecting", &abs, e))?;
        let below = lower.lookup(&r)?;
        if is_whiteout(&meta) {
            if below.is_some() {
                out.push(Change {
                    path: abs_name(&r),
                    kind: ChangeKind::Deleted,
                });
            }
            continue;
        }
        match below {
            None => out.push(Change {
                path: abs_name(&r),
                kind: ChangeKind::Added,
            }),
            Some(Resolved::File(p, _)) | Some(Resolved::Dir(p, _, _)) => {
                let lower_is_dir = std::fs::symlink_metadata(&p)
                    .map(|m| m.is_dir())
                    .unwrap_or(false);
                if lower_is_dir != meta.is_dir() || differs(&p, &abs)? {
                    out.push(Change {
                        path: abs_name(&r),
                        kind: ChangeKind::Changed,
                    });
                }
            }
        }
        if meta.is_dir() {
            diff_walk(lower, upper, &r, out)?;
        }
    }
    Ok(())
}

/// What the overlay upper dir `upper` changes relative to the merged `lowers` (base first):
/// added, changed and deleted paths in walk order (like `docker diff`). A directory is
/// reported as changed only when its own metadata differ; a copied-up file whose content and
/// metadata are unchanged is not reported.
pub fn diff(lowers: &[PathBuf], upper: &Path) -> Result<Vec<Change>> {
    let view = LowerView { layers: lowers };
    let mut out = Vec::new();
    diff_walk(&view, upper, OsStr::new(""), &mut out)?;
    Ok(out)
}

/// For a stack (base first) whose layer `i` created the directories `implicit[i]` without
/// listing them: every directory of the merged view whose visible copy is such an implicit
/// one, with its ancestors, mapped to where its real metadata is (the same directory in the
/// merged view of the layers below, recursively, else [`DirSource::Default`]).
pub(crate) fn implicit_fixups(
    layers: &[PathBuf],
    implicit: &[BTreeSet<OsString>],
) -> Result<std::collections::BTreeMap<OsString, DirSource>> {
    fn source(
        layers: &[PathBuf],
        implicit: &[BTreeSet<OsString>],
        limit: usize,
        rel: &OsStr,
    ) -> Result<DirSource> {
        let view = LowerView {
            layers: &layers[..limit],
        };
        match view.lookup(rel)? {
            Some(Resolved::Dir(p, i, _)) => {
                if implicit.get(i).is_some_and(|s| s.contains(rel)) {
                    source(layers, implicit, i, rel)
                } else {
                    Ok(DirSource::Path(p))
                }
            }
            _ => Ok(DirSource::Default),
        }
    }
    let full = LowerView { layers };
    let mut out = std::collections::BTreeMap::new();
    for (k, set) in implicit.iter().enumerate() {
        for rel in set {
            if out.contains_key(rel) {
                continue;
            }
            match full.lookup(rel)? {
                Some(Resolved::Dir(_, i, _)) if i == k => {}
                _ => continue,
            }
            let mut cur = Some(rel.clone());
            while let Some(r) = cur {
                if out.contains_key(&r) {
                    break;
                }
                let src = source(layers, implicit, layers.len(), &r)?;
                let parent = (!r.is_empty()).then(|| {
                    let b = r.as_bytes();
                    let cut = b.iter().rposition(|c| *c == b'/').unwrap_or(0);
                    OsStr::from_bytes(&b[..cut]).to_owned()
                });
                out.insert(r, src);
                cur = parent;
            }
        }
    }
    Ok(out)
}
