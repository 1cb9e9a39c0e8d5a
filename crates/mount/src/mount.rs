//! Plain, bind and image mounts, the [`Mount`] guard, and unmounting.

use std::path::{Path, PathBuf};
use std::time::Duration;

use diskforge_loop::{AttachOptions, LoopDevice};
use rustix::fs::StatVfsMountFlags;
use rustix::io::Errno;
use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};

use crate::{Error, Result};

/// How many times [`unmount`] tries while the kernel says `EBUSY`.
pub const UNMOUNT_ATTEMPTS: u32 = 20;
/// Pause between two unmount attempts.
const UNMOUNT_RETRY_DELAY: Duration = Duration::from_millis(50);

/// How to unmount.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnmountOptions {
    /// After [`UNMOUNT_ATTEMPTS`] busy answers, detach lazily (`MNT_DETACH`): the mount
    /// disappears from the tree now and is freed when its last user goes. Default false.
    pub lazy: bool,
}

pub(crate) fn syscall_err(op: impl Into<String>, target: &Path) -> impl FnOnce(Errno) -> Error {
    let op = op.into();
    let target = target.to_owned();
    move |source| Error::Syscall {
        op,
        target,
        log: String::new(),
        source,
    }
}

pub(crate) fn metadata(what: &'static str, path: &Path) -> Result<std::fs::Metadata> {
    std::fs::metadata(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound {
                what,
                path: path.to_owned(),
            }
        } else {
            Error::Stat {
                path: path.to_owned(),
                source,
            }
        }
    })
}

/// One mount we made. Unmount it with [`Mount::teardown`]; Drop unmounts too, once, and logs a
/// failure. The mount point itself is never removed.
#[must_use = "dropping the guard unmounts"]
#[derive(Debug)]
pub struct Mount {
    target: Option<PathBuf>,
    lazy: bool,
    recursive: bool,
}

impl Mount {
    /// `mount(source, target, fstype, flags, data)`: mount a filesystem.
    ///
    /// # References
    ///  - [mount(2)](https://man7.org/linux/man-pages/man2/mount.2.html)
    pub fn new(
        source: impl AsRef<Path>,
        target: impl AsRef<Path>,
        fstype: &str,
        flags: MountFlags,
        data: Option<&str>,
    ) -> Result<Mount> {
        let (source, target) = (source.as_ref(), target.as_ref());
        diskforge_fault::point("mount.mount")?;
        // Sources that are paths must exist; pseudo sources ("none", "tmpfs") are names.
        if source.is_absolute() {
            metadata("mount source", source)?;
        }
        if !metadata("mount point", target)?.is_dir() {
            return Err(Error::NotADirectory {
                what: "mount point",
                path: target.to_owned(),
            });
        }
        let data_c =
            data.map(std::ffi::CString::new)
                .transpose()
                .map_err(|_| Error::InvalidOverlay {
                    target: target.to_owned(),
                    reason: "mount data contains a NUL byte".into(),
                })?;
        rustix::mount::mount(source, target, fstype, flags, data_c.as_deref()).map_err(
            syscall_err(format!("mount -t {fstype} {} on", source.display()), target),
        )?;
        tracing::debug!(source = %source.display(), target = %target.display(), fstype, "mounted");
        Ok(Mount::owned(target))
    }

    /// `mount(source, target, NULL, MS_BIND)`: bind a directory over a directory, or a single
    /// file over an existing file (the `mount --bind newfile /mnt/iso/EULA` trick).
    #[doc(alias = "MS_BIND")]
    pub fn bind(source: impl AsRef<Path>, target: impl AsRef<Path>) -> Result<Mount> {
        let (source, target) = (source.as_ref(), target.as_ref());
        diskforge_fault::point("mount.bind")?;
        check_bind(source, target)?;
        rustix::mount::mount_bind(source, target)
            .map_err(syscall_err(format!("bind {} on", source.display()), target))?;
        Ok(Mount::owned(target))
    }

    /// `mount(source, target, NULL, MS_BIND | MS_REC)`: bind a tree with its submounts.
    #[doc(alias = "MS_REC")]
    pub fn bind_recursive(source: impl AsRef<Path>, target: impl AsRef<Path>) -> Result<Mount> {
        let (source, target) = (source.as_ref(), target.as_ref());
        diskforge_fault::point("mount.rbind")?;
        check_bind(source, target)?;
        rustix::mount::mount_bind_recursive(source, target).map_err(syscall_err(
            format!("rbind {} on", source.display()),
            target,
        ))?;
        let mut m = Mount::owned(target);
        // Teardown must take the copied submounts down first (see unmount_recursive).
        m.recursive = true;
        Ok(m)
    }

    /// A bind mount that is read-only from the start (bind, then remount the bind read-only;
    /// undone if the remount fails).
    pub fn bind_read_only(source: impl AsRef<Path>, target: impl AsRef<Path>) -> Result<Mount> {
        let m = Mount::bind(source, target)?;
        if let Err(e) = m.remount_read_only() {
            if let Err(u) = m.teardown() {
                tracing::warn!("undoing bind after failed read-only remount: {u}");
            }
            return Err(e);
        }
        Ok(m)
    }

    /// Mount an image file through a new loop device (like `mount -o loop`); see
    /// [`ImageMount`].
    pub fn image(
        file: impl AsRef<Path>,
        target: impl AsRef<Path>,
        fstype: &str,
        read_only: bool,
    ) -> Result<ImageMount> {
        ImageMount::mount(file, target, fstype, read_only)
    }

    /// Take ownership of a mount somebody else made (a CLI that unmounts, say).
    pub fn adopt(target: impl Into<PathBuf>) -> Mount {
        Mount::owned(target)
    }

    fn owned(target: impl Into<PathBuf>) -> Mount {
        let target = target.into();
        // mount(2) follows symlinks in the target but we unmount with UMOUNT_NOFOLLOW, so
        // keep the resolved path.
        let target = std::fs::canonicalize(&target).unwrap_or(target);
        Mount {
            target: Some(target),
            lazy: false,
            recursive: false,
        }
    }

    /// Detach lazily if the mount is still busy after every retry at teardown.
    pub fn lazy(mut self, on: bool) -> Mount {
        self.lazy = on;
        self
    }

    /// The mount point.
    pub fn target(&self) -> &Path {
        self.target.as_deref().unwrap_or(Path::new(""))
    }

    /// Make this mount read-only (this mount point only; see [`remount_read_only`]).
    pub fn remount_read_only(&self) -> Result<()> {
        remount_read_only(self.target())
    }

    /// Stop mount events propagating to and from this mount (`MS_PRIVATE`).
    pub fn make_private(&self) -> Result<()> {
        make_private(self.target(), false)
    }

    /// Unmount, returning any error.
    pub fn teardown(mut self) -> Result<()> {
        self.release_inner()
    }

    /// Leave the mount in place and return its mount point.
    pub fn release(mut self) -> PathBuf {
        self.target.take().unwrap_or_default()
    }

    fn release_inner(&mut self) -> Result<()> {
        match self.target.take() {
            // Teardown carries no fault point: an injected failure here would only prove that
            // a refused unmount leaves the mount, not how the step before it unwinds.
            Some(t) if self.recursive => {
                unmount_recursive_now(&t, UnmountOptions { lazy: self.lazy })
            }
            Some(t) => unmount_now(&t, UnmountOptions { lazy: self.lazy }),
            None => Ok(()),
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(t) = self.target.clone()
            && let Err(e) = self.release_inner()
        {
            tracing::warn!("unmounting {} on drop: {e}", t.display());
        }
    }
}

fn check_bind(source: &Path, target: &Path) -> Result<()> {
    let s = metadata("bind source", source)?;
    let t = metadata("mount point", target)?;
    if s.is_dir() != t.is_dir() {
        return Err(Error::BindTypeMismatch {
            source_path: source.to_owned(),
            target: target.to_owned(),
        });
    }
    Ok(())
}

/// `umount2(target, 0)`, retrying `EBUSY` up to [`UNMOUNT_ATTEMPTS`] times, then
/// `MNT_DETACH` when `opts.lazy`, else [`Error::Busy`]. [`Error::NotMounted`] when nothing is
/// mounted there.
///
/// # References
///  - [umount(2)](https://man7.org/linux/man-pages/man2/umount.2.html)
#[doc(alias = "umount2")]
pub fn unmount(target: impl AsRef<Path>, opts: UnmountOptions) -> Result<()> {
    diskforge_fault::point("mount.umount")?;
    unmount_now(target.as_ref(), opts)
}

/// [`unmount`] without the fault point (guards' teardown).
fn unmount_now(target: &Path, opts: UnmountOptions) -> Result<()> {
    // Like umount(8), act on the resolved path (the final component is never followed below).
    let resolved = std::fs::canonicalize(target);
    let target = resolved.as_deref().unwrap_or(target);
    for attempt in 1..=UNMOUNT_ATTEMPTS {
        match rustix::io::retry_on_intr(|| rustix::mount::unmount(target, UnmountFlags::NOFOLLOW)) {
            Ok(()) => {
                tracing::debug!(target = %target.display(), "unmounted");
                return Ok(());
            }
            Err(Errno::BUSY) if attempt < UNMOUNT_ATTEMPTS => {
                tracing::debug!(target = %target.display(), attempt, "busy; retrying unmount");
                std::thread::sleep(UNMOUNT_RETRY_DELAY);
            }
            Err(Errno::BUSY) => break,
            Err(Errno::INVAL) => {
                return Err(Error::NotMounted {
                    target: target.to_owned(),
                });
            }
            Err(e) => return Err(syscall_err("umount", target)(e)),
        }
    }
    if opts.lazy {
        rustix::mount::unmount(target, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW)
            .map_err(syscall_err("umount --lazy", target))?;
        tracing::debug!(target = %target.display(), "detached lazily");
        return Ok(());
    }
    Err(Error::Busy {
        target: target.to_owned(),
        attempts: UNMOUNT_ATTEMPTS,
    })
}

/// `umount2(target, MNT_DETACH | UMOUNT_NOFOLLOW)` at once, without retries: the mount (and
/// every mount below it) leaves the tree now and the kernel frees it when its last user lets
/// go ([`crate::mount_users`] names them). [`Error::NotMounted`] when nothing is mounted there.
///
/// # References
///  - [umount(2)](https://man7.org/linux/man-pages/man2/umount.2.html)
#[doc(alias = "MNT_DETACH")]
pub fn detach_lazily(target: impl AsRef<Path>) -> Result<()> {
    let resolved = std::fs::canonicalize(target.as_ref());
    let target = resolved.as_deref().unwrap_or(target.as_ref());
    match rustix::mount::unmount(target, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW) {
        Ok(()) => Ok(()),
        Err(Errno::INVAL) => Err(Error::NotMounted {
            target: target.to_owned(),
        }),
        Err(e) => Err(syscall_err("umount --lazy", target)(e)),
    }
}

/// Unmount `target` and every mount below it, deepest (most recent) first, like
/// `umount -R`; each step as in [`unmount`]. Mounts that vanish meanwhile are skipped.
pub fn unmount_recursive(target: impl AsRef<Path>, opts: UnmountOptions) -> Result<()> {
    diskforge_fault::point("mount.umount")?;
    unmount_recursive_now(target.as_ref(), opts)
}

/// [`unmount_recursive`] without the fault point (guards' teardown).
fn unmount_recursive_now(target: &Path, opts: UnmountOptions) -> Result<()> {
    let resolved = std::fs::canonicalize(target);
    let target = resolved.as_deref().unwrap_or(target);
    let below: Vec<PathBuf> = crate::mounts()?
        .into_iter()
        .filter(|m| m.target != target && m.target.starts_with(target))
        .map(|m| m.target)
        .collect();
    for sub in below.iter().rev() {
        match unmount_now(sub, opts) {
            Ok(()) | Err(Error::NotMounted { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    unmount_now(target, opts)
}

/// `mount(NULL, target, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY)`: make one mount point
/// read-only, keeping its other per-mount flags (nosuid, nodev, noexec, atime). Other mounts
/// of the same filesystem are unaffected.
#[doc(alias = "MS_REMOUNT")]
pub fn remount_read_only(target: impl AsRef<Path>) -> Result<()> {
    let target = target.as_ref();
    diskforge_fault::point("mount.remount-ro")?;
    let cur = rustix::fs::statvfs(target)
        .map_err(syscall_err("statvfs", target))?
        .f_flag;
    let mut flags = MountFlags::BIND | MountFlags::RDONLY;
    for (st, ms) in [
        (StatVfsMountFlags::NOSUID, MountFlags::NOSUID),
        (StatVfsMountFlags::NODEV, MountFlags::NODEV),
        (StatVfsMountFlags::NOEXEC, MountFlags::NOEXEC),
        (StatVfsMountFlags::NOATIME, MountFlags::NOATIME),
        (StatVfsMountFlags::NODIRATIME, MountFlags::NODIRATIME),
        (StatVfsMountFlags::RELATIME, MountFlags::RELATIME),
    ] {
        if cur.contains(st) {
            flags |= ms;
        }
    }
    rustix::mount::mount_remount(target, flags, "")
        .map_err(syscall_err("remount read-only", target))
}

/// `mount(NULL, target, NULL, MS_PRIVATE [| MS_REC])`: stop propagation of mount events.
#[doc(alias = "MS_PRIVATE")]
pub fn make_private(target: impl AsRef<Path>, recursive: bool) -> Result<()> {
    let target = target.as_ref();
    diskforge_fault::point("mount.make-private")?;
    let mut flags = MountPropagationFlags::PRIVATE;
    if recursive {
        flags |= MountPropagationFlags::REC;
    }
    rustix::mount::mount_change(target, flags).map_err(syscall_err("make-private", target))
}

/// A filesystem image mounted through a loop device we attached (`mount -o loop`): unmounts,
/// then detaches, in that order.
#[must_use = "dropping the guard unmounts and detaches"]
#[derive(Debug)]
pub struct ImageMount {
    mount: Option<Mount>,
    device: Option<LoopDevice>,
}

impl ImageMount {
    /// Attach `file` (read-only when `read_only`) and mount it on `target` as `fstype`.
    /// The loop device is detached again if the mount fails.
    pub fn mount(
        file: impl AsRef<Path>,
        target: impl AsRef<Path>,
        fstype: &str,
        read_only: bool,
    ) -> Result<ImageMount> {
        let target = target.as_ref();
        metadata("mount point", target)?;
        let dev = LoopDevice::attach(file, &AttachOptions::new().read_only(read_only))?;
        let flags = if read_only {
            MountFlags::RDONLY
        } else {
            MountFlags::empty()
        };
        match Mount::new(dev.path(), target, fstype, flags, None) {
            Ok(m) => Ok(ImageMount {
                mount: Some(m),
                device: Some(dev),
            }),
            Err(e) => {
                if let Err(d) = dev.detach() {
                    tracing::warn!("detaching after failed mount: {d}");
                }
                Err(e)
            }
        }
    }

    /// The mount point.
    pub fn target(&self) -> &Path {
        self.mount
            .as_ref()
            .map(Mount::target)
            .unwrap_or(Path::new(""))
    }

    /// The loop device.
    pub fn device(&self) -> &Path {
        self.device
            .as_ref()
            .map(LoopDevice::path)
            .unwrap_or(Path::new(""))
    }

    /// Leave the mount and the loop device in place; returns the mount point.
    pub fn release(mut self) -> PathBuf {
        if let Some(d) = self.device.take() {
            drop(d.release());
        }
        self.mount.take().map(Mount::release).unwrap_or_default()
    }

    /// Unmount, then detach; reports both failures if both fail.
    pub fn teardown(mut self) -> Result<()> {
        self.release_inner()
    }

    fn release_inner(&mut self) -> Result<()> {
        let mut stack = crate::MountStack::new();
        if let Some(d) = self.device.take() {
            stack.push(d);
        }
        if let Some(m) = self.mount.take() {
            stack.push(m);
        }
        stack.teardown()
    }
}

impl Drop for ImageMount {
    fn drop(&mut self) {
        if (self.mount.is_some() || self.device.is_some())
            && let Err(e) = self.release_inner()
        {
            tracing::warn!("tearing down image mount on drop: {e}");
        }
    }
}

/// Split a `mount -o` style option list into the flags `mount(2)` takes and the
/// filesystem-specific rest (returned in order, to be joined with `,` as mount data).
/// `defaults` and `rw` are no-ops; `ro`, `nosuid`, `nodev`, `noexec`, `noatime`,
/// `nodiratime`, `relatime`, `strictatime`, `lazytime`, `sync`, `dirsync`, `silent`,
/// `nosymfollow` become flags.
pub fn parse_mount_options(opts: &str) -> (MountFlags, Vec<String>) {
    let mut flags = MountFlags::empty();
    let mut rest = Vec::new();
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o {
            "defaults" | "rw" => {}
            "ro" => flags |= MountFlags::RDONLY,
            "nosuid" => flags |= MountFlags::NOSUID,
            "nodev" => flags |= MountFlags::NODEV,
            "noexec" => flags |= MountFlags::NOEXEC,
            "noatime" => flags |= MountFlags::NOATIME,
            "nodiratime" => flags |= MountFlags::NODIRATIME,
            "relatime" => flags |= MountFlags::RELATIME,
            "strictatime" => flags |= MountFlags::STRICTATIME,
            "lazytime" => flags |= MountFlags::LAZYTIME,
            "sync" => flags |= MountFlags::SYNCHRONOUS,
            "dirsync" => flags |= MountFlags::DIRSYNC,
            "silent" => flags |= MountFlags::SILENT,
            "nosymfollow" => flags |= MountFlags::NOSYMFOLLOW,
            other => rest.push(other.to_owned()),
        }
    }
    (flags, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let (f, rest) = parse_mount_options("ro,noatime,size=1m,defaults,mode=755,nosuid");
        assert_eq!(
            f,
            MountFlags::RDONLY | MountFlags::NOATIME | MountFlags::NOSUID
        );
        assert_eq!(rest, ["size=1m", "mode=755"]);
    }
}
