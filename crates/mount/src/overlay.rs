//! overlayfs stacks: description ([`Overlay`]), validation, mounting (mount(2) or the new
//! mount API), and the [`OverlayMount`] guard.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::io::Errno;
use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MoveMountFlags};
use serde::Serialize;

use crate::mount::{Mount, metadata, syscall_err};
use crate::{Error, Result};

/// Most lower dirs the kernel accepts in one overlay (`OVL_MAX_STACK`).
pub const MAX_LOWERS: usize = 500;

/// `redirect_dir=`: how renamed directories are recorded and followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RedirectDir {
    /// Create and follow redirects.
    On,
    /// Follow existing redirects, create none.
    Follow,
    /// Neither create nor follow.
    Nofollow,
    /// Create none; follow only in read-only stacks.
    Off,
}

/// `xino=`: inode number composition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Xino {
    /// Always.
    On,
    /// Never.
    Off,
    /// When the layers' inode numbers leave room.
    Auto,
}

impl RedirectDir {
    fn as_str(self) -> &'static str {
        match self {
            RedirectDir::On => "on",
            RedirectDir::Follow => "follow",
            RedirectDir::Nofollow => "nofollow",
            RedirectDir::Off => "off",
        }
    }
}

impl Xino {
    fn as_str(self) -> &'static str {
        match self {
            Xino::On => "on",
            Xino::Off => "off",
            Xino::Auto => "auto",
        }
    }
}

/// overlayfs options; `None`/`false` leaves the kernel's default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OverlayOptions {
    /// `redirect_dir=`. Default: kernel default.
    pub redirect_dir: Option<RedirectDir>,
    /// `index=on|off`. Default: kernel default.
    pub index: Option<bool>,
    /// `metacopy=on|off`. Default: kernel default.
    pub metacopy: Option<bool>,
    /// `xino=`. Default: kernel default.
    pub xino: Option<Xino>,
    /// `userxattr` (use `user.overlay.*` xattrs, for unprivileged mounts). Default false.
    pub userxattr: bool,
}

/// How an overlay was mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OverlayMethod {
    /// `mount(2)` with a `lowerdir=a:b:c,...` option string.
    MountData,
    /// `fsopen` + `fsconfig("lowerdir+", …)` per layer + `fsmount` + `move_mount`.
    Fsconfig,
}

/// An overlay stack to mount. Lower dirs are listed top first, as in `lowerdir=top:…:bottom`.
///
/// overlayfs reads each lower dir beneath any mounts on it: a bind mount *inside* a lower dir
/// is not visible through the overlay (bind over the merged view instead).
///
/// ```no_run
/// use diskforge_mount::Overlay;
/// let m = Overlay::new()
///     .lower("/layers/app")
///     .lower("/layers/base")
///     .upper("/scratch/upper", "/scratch/work")
///     .index(false)
///     .mount("/scratch/merged")?;
/// m.teardown()?;
/// # Ok::<(), diskforge_mount::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Overlay {
    /// Lower dirs, top first.
    pub lowers: Vec<PathBuf>,
    /// Upper dir; `None` makes a read-only stack (which needs two or more lowers).
    pub upper: Option<PathBuf>,
    /// Work dir (same filesystem as the upper dir, empty).
    pub work: Option<PathBuf>,
    /// Options.
    pub options: OverlayOptions,
    /// Use the new mount API even when the option string would fit `mount(2)`. Default false.
    pub force_fsconfig: bool,
}

impl Overlay {
    /// An empty stack.
    pub fn new() -> Self {
        Self::default()
    }
    /// Add a lower dir *below* the ones added so far.
    pub fn lower(mut self, dir: impl Into<PathBuf>) -> Self {
        self.lowers.push(dir.into());
        self
    }
    /// Add several lower dirs, top first, below the ones added so far.
    pub fn lowers<I: IntoIterator<Item = P>, P: Into<PathBuf>>(mut self, dirs: I) -> Self {
        self.lowers.extend(dirs.into_iter().map(Into::into));
        self
    }
    /// Set the upper and work dirs (a writable stack).
    pub fn upper(mut self, upper: impl Into<PathBuf>, work: impl Into<PathBuf>) -> Self {
        self.upper = Some(upper.into());
        self.work = Some(work.into());
        self
    }
    /// `redirect_dir=`.
    pub fn redirect_dir(mut self, v: RedirectDir) -> Self {
        self.options.redirect_dir = Some(v);
        self
    }
    /// `index=on|off`.
    pub fn index(mut self, on: bool) -> Self {
        self.options.index = Some(on);
        self
    }
    /// `metacopy=on|off`.
    pub fn metacopy(mut self, on: bool) -> Self {
        self.options.metacopy = Some(on);
        self
    }
    /// `xino=`.
    pub fn xino(mut self, v: Xino) -> Self {
        self.options.xino = Some(v);
        self
    }
    /// `userxattr`.
    pub fn userxattr(mut self, on: bool) -> Self {
        self.options.userxattr = on;
        self
    }
    /// Always use `fsconfig` (see [`Overlay::force_fsconfig`]).
    pub fn force_fsconfig(mut self, on: bool) -> Self {
        self.force_fsconfig = on;
        self
    }

    /// Check the stack before mounting on `target`: at least one lower (two without an
    /// upper), at most [`MAX_LOWERS`]; every lower exists and is a directory; upper and work
    /// are given together, exist, are directories on one filesystem; work is empty (or holds
    /// only overlayfs's own `work`/`index` from an earlier mount of the same stack).
    pub fn validate(&self, target: &Path) -> Result<()> {
        let invalid = |reason: String| Error::InvalidOverlay {
            target: target.to_owned(),
            reason,
        };
        if self.lowers.is_empty() {
            return Err(invalid("no lower dirs".into()));
        }
        if self.lowers.len() > MAX_LOWERS {
            return Err(invalid(format!(
                "{} lower dirs; the kernel takes at most {MAX_LOWERS}",
                self.lowers.len()
            )));
        }
        for l in &self.lowers {
            dir("lower dir", l)?;
        }
        match (&self.upper, &self.work) {
            (None, None) if self.lowers.len() < 2 => {
                return Err(invalid(
                    "a read-only overlay (no upper dir) needs at least two lower dirs".into(),
                ));
            }
            (None, None) => {}
            (Some(upper), Some(work)) => {
                let u = dir("upper dir", upper)?;
                let w = dir("work dir", work)?;
                if u.dev() != w.dev() {
                    return Err(Error::DifferentFilesystems {
                        upper: upper.clone(),
                        work: work.clone(),
                    });
                }
                let rd = std::fs::read_dir(work).map_err(|source| Error::Stat {
                    path: work.clone(),
                    source,
                })?;
                for e in rd {
                    let e = e.map_err(|source| Error::Stat {
                        path: work.clone(),
                        source,
                    })?;
                    if !matches!(e.file_name().to_str(), Some("work" | "index")) {
                        return Err(Error::WorkNotEmpty { work: work.clone() });
                    }
                }
            }
            _ => return Err(invalid("upper and work dirs go together".into())),
        }
        dir("mount point", target)?;
        Ok(())
    }

    /// The `mount(2)` option string: `lowerdir=a:b,upperdir=…,workdir=…,…`, with `\`, `:` and
    /// `,` in paths escaped by a backslash.
    pub fn option_string(&self) -> String {
        let lowers: Vec<String> = self.lowers.iter().map(|p| escape(p)).collect();
        let mut opts = vec![format!("lowerdir={}", lowers.join(":"))];
        if let (Some(u), Some(w)) = (&self.upper, &self.work) {
            opts.push(format!("upperdir={}", escape(u)));
            opts.push(format!("workdir={}", escape(w)));
        }
        for (k, v) in self.option_pairs() {
            opts.push(match v {
                Some(v) => format!("{k}={v}"),
                None => k.to_owned(),
            });
        }
        opts.join(",")
    }

    fn option_pairs(&self) -> Vec<(&'static str, Option<&'static str>)> {
        let on_off = |b: bool| if b { "on" } else { "off" };
        let o = &self.options;
        let mut v = Vec::new();
        if let Some(r) = o.redirect_dir {
            v.push(("redirect_dir", Some(r.as_str())));
        }
        if let Some(i) = o.index {
            v.push(("index", Some(on_off(i))));
        }
        if let Some(m) = o.metacopy {
            v.push(("metacopy", Some(on_off(m))));
        }
        if let Some(x) = o.xino {
            v.push(("xino", Some(x.as_str())));
        }
        if o.userxattr {
            v.push(("userxattr", None));
        }
        v
    }

    /// Validate, then mount the stack on `target`: `mount(2)` when the option string fits a
    /// page, else the new mount API with one `lowerdir+` per layer.
    pub fn mount(&self, target: impl AsRef<Path>) -> Result<OverlayMount> {
        let target = target.as_ref();
        diskforge_fault::point("mount.overlay")?;
        self.validate(target)?;
        let data = self.option_string();
        let limit = rustix::param::page_size();
        let (mount, method) = if self.force_fsconfig || data.len() >= limit {
            self.mount_fsconfig(target, data.len(), limit)?;
            (Mount::adopt(target), OverlayMethod::Fsconfig)
        } else {
            let m = Mount::new(
                "overlay",
                target,
                "overlay",
                MountFlags::empty(),
                Some(&data),
            )?;
            (m, OverlayMethod::MountData)
        };
        tracing::debug!(target = %target.display(), lowers = self.lowers.len(), ?method, "overlay mounted");
        Ok(OverlayMount {
            mount,
            method,
            upper: self.upper.clone(),
            lowers: self.lowers.len(),
        })
    }

    fn mount_fsconfig(&self, target: &Path, len: usize, limit: usize) -> Result<()> {
        let fs = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)
            .map_err(syscall_err("fsopen overlay for", target))?;
        let fail = |op: String, source: Errno| Error::Syscall {
            op,
            target: target.to_owned(),
            log: drain_log(&fs),
            source,
        };
        for (i, l) in self.lowers.iter().enumerate() {
            if let Err(e) = rustix::mount::fsconfig_set_string(&fs, "lowerdir+", l) {
                let log = drain_log(&fs);
                // Before 6.8 overlayfs has no fsconfig parser: the VFS's legacy shim either
                // rejects the key or collects it into one page ("Legacy: Cumulative options
                // too large").
                if e == Errno::INVAL && (i == 0 || log.contains("Legacy")) {
                    return Err(Error::OptionsTooLong {
                        target: target.to_owned(),
                        lowers: self.lowers.len(),
                        len,
                        limit,
                    });
                }
                return Err(Error::Syscall {
                    op: format!("fsconfig lowerdir+={} for", l.display()),
                    target: target.to_owned(),
                    log,
                    source: e,
                });
            }
        }
        if let (Some(u), Some(w)) = (&self.upper, &self.work) {
            rustix::mount::fsconfig_set_string(&fs, "upperdir", u)
                .map_err(|e| fail(format!("fsconfig upperdir={} for", u.display()), e))?;
            rustix::mount::fsconfig_set_string(&fs, "workdir", w)
                .map_err(|e| fail(format!("fsconfig workdir={} for", w.display()), e))?;
        }
        for (k, v) in self.option_pairs() {
            match v {
                Some(v) => rustix::mount::fsconfig_set_string(&fs, k, v),
                None => rustix::mount::fsconfig_set_flag(&fs, k),
            }
            .map_err(|e| fail(format!("fsconfig {k} for"), e))?;
        }
        rustix::mount::fsconfig_set_string(&fs, "source", "overlay")
            .map_err(|e| fail("fsconfig source for".into(), e))?;
        rustix::mount::fsconfig_create(&fs).map_err(|e| fail("fsconfig create for".into(), e))?;
        let mnt: OwnedFd =
            rustix::mount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty())
                .map_err(|e| fail("fsmount for".into(), e))?;
        rustix::mount::move_mount(
            mnt.as_fd(),
            "",
            rustix::fs::CWD,
            target,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )
        .map_err(|e| fail("move_mount onto".into(), e))?;
        Ok(())
    }
}

/// Read what the kernel logged into an fs context (`e overlayfs: …` lines).
fn drain_log(fs: &OwnedFd) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    // Each read returns one message; ENODATA ends the log. Bounded in case of surprises.
    for _ in 0..32 {
        match rustix::io::read(fs, &mut buf) {
            Ok(n) if n > 0 => out.push(String::from_utf8_lossy(&buf[..n]).trim_end().to_owned()),
            _ => break,
        }
    }
    out.join("; ")
}

fn dir(what: &'static str, path: &Path) -> Result<std::fs::Metadata> {
    let m = metadata(what, path)?;
    if !m.is_dir() {
        return Err(Error::NotADirectory {
            what,
            path: path.to_owned(),
        });
    }
    Ok(m)
}

fn escape(p: &Path) -> String {
    let s = p.to_string_lossy();
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | ':' | ',') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A mounted overlay stack we made. [`OverlayMount::teardown`] unmounts; Drop unmounts once
/// and logs. The upper dir keeps the changes.
#[must_use = "dropping the guard unmounts"]
#[derive(Debug)]
pub struct OverlayMount {
    mount: Mount,
    method: OverlayMethod,
    upper: Option<PathBuf>,
    lowers: usize,
}

impl OverlayMount {
    /// The merged view.
    pub fn target(&self) -> &Path {
        self.mount.target()
    }
    /// The upper dir, if the stack is writable.
    pub fn upper(&self) -> Option<&Path> {
        self.upper.as_deref()
    }
    /// Number of lower dirs.
    pub fn lower_count(&self) -> usize {
        self.lowers
    }
    /// How it was mounted.
    pub fn method(&self) -> OverlayMethod {
        self.method
    }
    /// Detach lazily if still busy after every retry at teardown.
    pub fn lazy(mut self, on: bool) -> Self {
        self.mount = self.mount.lazy(on);
        self
    }
    /// Unmount, returning any error.
    pub fn teardown(self) -> Result<()> {
        self.mount.teardown()
    }
    /// Leave it mounted; returns the mount point.
    pub fn release(self) -> PathBuf {
        self.mount.release()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_string_escapes_and_orders() {
        let o = Overlay::new()
            .lower("/a:b")
            .lower("/c,d")
            .upper("/u", "/w")
            .redirect_dir(RedirectDir::On)
            .index(false)
            .metacopy(true)
            .xino(Xino::Auto)
            .userxattr(true);
        assert_eq!(
            o.option_string(),
            r"lowerdir=/a\:b:/c\,d,upperdir=/u,workdir=/w,redirect_dir=on,index=off,metacopy=on,xino=auto,userxattr"
        );
    }

    #[test]
    fn validation_names_the_missing_lower() {
        let e = Overlay::new()
            .lower("/")
            .lower("/nonexistent-lower-xyz")
            .validate(Path::new("/"))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "lower dir /nonexistent-lower-xyz does not exist"
        );
    }

    #[test]
    fn read_only_needs_two_lowers() {
        let e = Overlay::new()
            .lower("/")
            .validate(Path::new("/"))
            .unwrap_err();
        assert!(e.to_string().contains("at least two lower dirs"), "{e}");
    }
}
