//! Mounting a layer stack with `diskforge-mount`.

use std::path::{Path, PathBuf};

use diskforge_mount::{Mount, Overlay, OverlayMount, RedirectDir};

use crate::{Error, Result};

fn mount_err(action: String) -> impl FnOnce(diskforge_mount::Error) -> Error {
    move |e| Error::Mount {
        action,
        source: Box::new(e),
    }
}

enum Inner {
    Overlay(OverlayMount),
    Bind(Mount),
}

/// A mounted layer stack (an overlay, or a read-only bind for a single layer without an
/// upper dir). [`StackMount::teardown`] unmounts; Drop unmounts once and logs;
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

    /// How it was mounted: `mount-data` (one option string), `fsconfig` (`lowerdir+` per
    /// layer, past the one-page limit) or `bind` (one read-only layer).
    pub fn method(&self) -> &'static str {
        self.method
    }

    /// Unmount.
    pub fn teardown(mut self) -> Result<()> {
        let action = format!("unmounting {}", self.target.display());
        match self.inner.take() {
            Some(Inner::Overlay(m)) => m.teardown().map_err(mount_err(action)),
            Some(Inner::Bind(m)) => m.teardown().map_err(mount_err(action)),
            None => Ok(()),
        }
    }

    /// Leave it mounted (for `dflayers mount`); returns the mount point.
    pub fn release(mut self) -> PathBuf {
        match self.inner.take() {
            Some(Inner::Overlay(m)) => m.release(),
            Some(Inner::Bind(m)) => m.release(),
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

/// Mount `layers` (base first, top last) on `target`, with `upper`/`work` when given (the work
/// dir is created if missing). Any number of layers up to overlayfs's 500: stacks whose
/// option string exceeds a page go through `fsconfig(lowerdir+)`. `redirect_dir` is off,
/// so the upper dir stays expressible as an OCI layer.
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
    let action = format!("mounting {} layer(s) on {}", layers.len(), target.display());
    if layers.len() == 1 && upper.is_none() {
        let m = Mount::bind_read_only(&layers[0], target).map_err(mount_err(action))?;
        return Ok(StackMount {
            inner: Some(Inner::Bind(m)),
            target: target.to_owned(),
            method: "bind",
        });
    }
    let mut o = Overlay::new()
        .lowers(layers.iter().rev())
        .redirect_dir(RedirectDir::Off)
        .index(false);
    if let Some((u, w)) = upper {
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
