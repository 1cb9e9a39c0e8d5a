//! Mounting a layer stack with `diskforge-mount`.

use std::path::{Path, PathBuf};

use diskforge_mount::{Overlay, OverlayMount, RedirectDir};

use crate::{Error, Result};

fn mount_err(action: String) -> impl FnOnce(diskforge_mount::Error) -> Error {
    move |e| Error::Mount {
        action,
        source: Box::new(e),
    }
}

enum Inner {
    Overlay(OverlayMount),
}

/// A mounted layer stack (always an overlay, so whiteouts never show). [`StackMount::teardown`] unmounts; Drop unmounts once and logs;
/// [`StackMount::release`] leaves it mounted.
#[must_use = "dropping the guard unmounts"]
pub struct StackMount {
    inner: Option<Inner>,
    target: PathBuf,
    method: &'static str,
}

impl std::fmt::Debug for StackMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StackMount")
            .field("target", &self.target)
            .field("method", &self.method)
            .finish()
    }
}

impl StackMount {
    /// The merged view.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// How it was mounted: `mount-data` (one option string) or `fsconfig` (`lowerdir+` per
    /// layer, past the one-page limit).
    pub fn method(&self) -> &'static str {
        self.method
    }

    /// Unmount.
    pub fn teardown(mut self) -> Result<()> {
        let action = format!("unmounting {}", self.target.display());
        match self.inner.take() {
            Some(Inner::Overlay(m)) => m.teardown().map_err(mount_err(action)),
            None => Ok(()),
        }
    }

    /// Leave it mounted (for `dflayers mount`); returns the mount point.
    pub fn release(mut self) -> PathBuf {
        match self.inner.take() {
            Some(Inner::Overlay(m)) => m.release(),
            None => self.target.clone(),
        }
    }
}

impl Drop for StackMount {
    fn drop(&mut self) {
        // The inner guards unmount (once, logging failures) when dropped.
        if self.inner.take().is_some() {
            tracing::debug!(target = %self.target.display(), "stack guard dropped without teardown");
        }
    }
}

/// The work dir used for `upper` when none is given: `.NAME.work` next to it (overlayfs needs
/// it on the same filesystem).
pub fn default_work_dir(upper: &Path) -> PathBuf {
    let name = upper
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "upper".into());
    upper.with_file_name(format!(".{name}.work"))
}

/// Give a new, empty upper dir the owner, mode, mtime and xattrs of the merged lower root
/// (the merged view's root is the upper dir's root), as applying the layers would leave it.
fn seed_upper_root(upper: &Path, top_lower: &Path) -> Result<()> {
    let empty = std::fs::read_dir(upper)
        .map_err(|e| Error::io("reading upper dir", upper, e))?
        .next()
        .is_none();
    if !empty {
        return Ok(());
    }
    let mut dirs = std::collections::BTreeMap::new();
    dirs.insert(
        std::ffi::OsString::new(),
        crate::fsutil::DirSource::Path(top_lower.to_owned()),
    );
    crate::fsutil::write_dir_tree(upper, &dirs, 0)
}

/// Mount `layers` (base first, top last) on `target`, with `upper`/`work` when given (the work
/// dir is created if missing). Any number of layers up to overlayfs's 500: stacks whose
/// option string exceeds a page go through `fsconfig(lowerdir+)`. `redirect_dir` is off,
/// so the upper dir stays expressible as an OCI layer.
///
/// The view is the one applying the layers in order gives: a repeated layer is used once
/// (its topmost place), a layer whose root is opaque hides everything below it, an empty
/// upper dir first gets the metadata of the merged root. A single layer without an upper
/// dir is an overlay too (whiteouts hidden): the empty `target` serves as the second,
/// empty lower layer, so `target` must be empty then.
pub fn mount_stack(
    layers: &[PathBuf],
    upper: Option<(&Path, &Path)>,
    target: &Path,
) -> Result<StackMount> {
    if layers.is_empty() {
        return Err(Error::BadSource {
            spec: String::new(),
            reason: "a stack needs at least one layer".into(),
        });
    }
    let mut layers = crate::fsutil::effective_layers(layers);
    let action = format!("mounting {} layer(s) on {}", layers.len(), target.display());
    if layers.len() == 1 && upper.is_none() {
        let empty = std::fs::read_dir(target)
            .map_err(|e| Error::io("reading mount point", target, e))?
            .next()
            .is_none();
        if !empty {
            return Err(Error::BadSource {
                spec: target.display().to_string(),
                reason: "a one-layer read-only stack needs an empty mount point (it is the \
                         empty lower layer below the layer)"
                    .into(),
            });
        }
        layers.insert(0, target.to_owned());
    }
    let mut o = Overlay::new()
        .lowers(layers.iter().rev())
        .redirect_dir(RedirectDir::Off)
        .index(false);
    if let Some((u, w)) = upper {
        std::fs::create_dir_all(u).map_err(|e| Error::io("creating upper dir", u, e))?;
        if let Some(top) = layers.last() {
            seed_upper_root(u, top)?;
        }
        std::fs::create_dir_all(w).map_err(|e| Error::io("creating work dir", w, e))?;
        o = o.upper(u, w).metacopy(false);
    }
    let m = o.mount(target).map_err(mount_err(action))?;
    let method = match m.method() {
        diskforge_mount::OverlayMethod::MountData => "mount-data",
        diskforge_mount::OverlayMethod::Fsconfig => "fsconfig",
    };
    Ok(StackMount {
        inner: Some(Inner::Overlay(m)),
        target: target.to_owned(),
        method,
    })
}
