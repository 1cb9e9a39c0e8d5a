//! Attaching and detaching, and the [`LoopDevice`] guard.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use serde::Serialize;

use crate::ioctl::{self, LoopConfig, LoopInfo64};
use crate::{Error, Result};

/// How many free devices [`LoopDevice::attach`] tries before giving up when other processes
/// keep grabbing them first (`EBUSY` from `LOOP_CONFIGURE`/`LOOP_SET_FD`).
pub const ATTACH_ATTEMPTS: u32 = 32;
/// Pause between two attach attempts, to let a competing `losetup` finish.
const ATTACH_RETRY_DELAY: Duration = Duration::from_millis(2);
/// How long we wait for devtmpfs to create a new `/dev/loopN` node: attempts × interval.
const NODE_WAIT_ATTEMPTS: u32 = 200;
const NODE_WAIT_INTERVAL: Duration = Duration::from_millis(5);
/// After `LOOP_CLR_FD` and closing our descriptor, how long we watch sysfs for the device to
/// become free before reporting [`Error::StillInUse`]: attempts × interval.
const DETACH_SETTLE_ATTEMPTS: u32 = 200;
const DETACH_SETTLE_INTERVAL: Duration = Duration::from_millis(1);

const LOOP_CONTROL: &str = "/dev/loop-control";

/// What to attach and how. All fields default to "off"; see the builder methods.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AttachOptions {
    /// Start of the mapped range in the backing file, in bytes. Default 0.
    pub offset: u64,
    /// Length of the mapped range in bytes; 0 (the default) maps to the end of the file.
    pub sizelimit: u64,
    /// Attach read-only (the backing file is opened read-only too). Default false.
    pub read_only: bool,
    /// Use direct I/O on the backing file (`LO_FLAGS_DIRECT_IO`). Default false.
    pub direct_io: bool,
    /// Detach automatically on the last close (`LO_FLAGS_AUTOCLEAR`), as `mount -o loop`
    /// does. Default false.
    pub autoclear: bool,
    /// Ask the kernel to scan for partitions (`LO_FLAGS_PARTSCAN`, `loopNpK` nodes).
    /// Default false.
    pub partscan: bool,
    /// Logical block size (512, 1024, 2048 or 4096); `None` (the default) keeps 512.
    pub block_size: Option<u32>,
    /// Use the pre-5.8 `LOOP_SET_FD` + `LOOP_SET_STATUS64` path even when `LOOP_CONFIGURE`
    /// exists (for tests of the fallback). Default false.
    pub legacy_ioctls: bool,
}

impl AttachOptions {
    /// Default options: the whole file, read-write, no flags.
    pub fn new() -> Self {
        Self::default()
    }
    /// Map from `offset` bytes into the file.
    pub fn offset(mut self, offset: u64) -> Self {
        self.offset = offset;
        self
    }
    /// Map at most `sizelimit` bytes (0 = to the end).
    pub fn sizelimit(mut self, sizelimit: u64) -> Self {
        self.sizelimit = sizelimit;
        self
    }
    /// Attach read-only.
    pub fn read_only(mut self, on: bool) -> Self {
        self.read_only = on;
        self
    }
    /// Use direct I/O.
    pub fn direct_io(mut self, on: bool) -> Self {
        self.direct_io = on;
        self
    }
    /// Detach on last close.
    pub fn autoclear(mut self, on: bool) -> Self {
        self.autoclear = on;
        self
    }
    /// Scan for partitions.
    pub fn partscan(mut self, on: bool) -> Self {
        self.partscan = on;
        self
    }
    /// Set the logical block size.
    pub fn block_size(mut self, size: u32) -> Self {
        self.block_size = Some(size);
        self
    }
    /// Force the `LOOP_SET_FD` + `LOOP_SET_STATUS64` path.
    pub fn legacy_ioctls(mut self, on: bool) -> Self {
        self.legacy_ioctls = on;
        self
    }

    fn flags(&self) -> u32 {
        let mut f = 0;
        if self.read_only {
            f |= ioctl::LO_FLAGS_READ_ONLY;
        }
        if self.autoclear {
            f |= ioctl::LO_FLAGS_AUTOCLEAR;
        }
        if self.partscan {
            f |= ioctl::LO_FLAGS_PARTSCAN;
        }
        if self.direct_io {
            f |= ioctl::LO_FLAGS_DIRECT_IO;
        }
        f
    }
}

/// Which ioctls set the device up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttachMethod {
    /// `LOOP_CONFIGURE` (Linux 5.8+), atomic.
    Configure,
    /// `LOOP_SET_FD` then `LOOP_SET_STATUS64`.
    SetFd,
}

/// A loop device we attached. Detach it with [`LoopDevice::detach`]; Drop detaches too, once,
/// and logs a failure. [`LoopDevice::release`] keeps it attached beyond the guard.
///
/// The guard keeps the device open, so with [`AttachOptions::autoclear`] the device goes away
/// once the guard and every other user (a mount) are gone.
#[must_use = "dropping the guard detaches the loop device"]
#[derive(Debug)]
pub struct LoopDevice {
    fd: Option<OwnedFd>,
    path: PathBuf,
    number: u32,
    method: AttachMethod,
}

impl LoopDevice {
    /// `ioctl(LOOP_CTL_GET_FREE)` + `ioctl(LOOP_CONFIGURE)`: attach `file` to a free loop
    /// device with `opts`. Retries on the free-device race up to [`ATTACH_ATTEMPTS`] times.
    ///
    /// Errors name the file: missing ([`Error::OpenBacking`]), a directory
    /// ([`Error::NotAFile`]), an offset past the end ([`Error::OffsetBeyondEnd`]).
    ///
    /// # References
    ///  - [loop(4)](https://man7.org/linux/man-pages/man4/loop.4.html)
    #[doc(alias = "LOOP_CONFIGURE")]
    #[doc(alias = "losetup")]
    pub fn attach(file: impl AsRef<Path>, opts: &AttachOptions) -> Result<LoopDevice> {
        let file = file.as_ref();
        diskforge_fault::point("loop.attach")?;
        let backing = open_backing(file, opts)?;
        let control = open_node(Path::new(LOOP_CONTROL), OFlags::RDWR)?;
        let mut name = [0u8; ioctl::LO_NAME_SIZE];
        let bytes = file.as_os_str().as_encoded_bytes();
        let n = bytes.len().min(ioctl::LO_NAME_SIZE - 1);
        name[..n].copy_from_slice(&bytes[..n]);
        let info = LoopInfo64 {
            lo_offset: opts.offset,
            lo_sizelimit: opts.sizelimit,
            lo_flags: opts.flags(),
            lo_file_name: name,
            ..LoopInfo64::default()
        };
        let raw_fd = u32::try_from(backing.as_raw_fd()).map_err(|_| Error::OpenBacking {
            path: file.to_owned(),
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        })?;
        let config = LoopConfig {
            fd: raw_fd,
            block_size: opts.block_size.unwrap_or(0),
            info,
            reserved: [0; 8],
        };
        let mut legacy = opts.legacy_ioctls;
        let mut last = PathBuf::from(LOOP_CONTROL);
        for attempt in 1..=ATTACH_ATTEMPTS {
            let number = ioctl::ctl_get_free(&control).map_err(|source| Error::Ioctl {
                op: "LOOP_CTL_GET_FREE",
                device: LOOP_CONTROL.into(),
                source,
            })?;
            let path = PathBuf::from(format!("/dev/loop{number}"));
            let mode = if opts.read_only {
                OFlags::RDONLY
            } else {
                OFlags::RDWR
            };
            let fd = match open_node(&path, mode) {
                Ok(fd) => fd,
                // Being removed (LOOP_CTL_REMOVE) or torn down by someone else: next one.
                Err(Error::OpenDevice {
                    source: Errno::NXIO,
                    ..
                }) => {
                    tracing::debug!(device = %path.display(), attempt, "free loop device vanished; retrying");
                    last = path;
                    std::thread::sleep(ATTACH_RETRY_DELAY);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let res = if legacy {
                attach_legacy(&fd, &path, &backing, &info, opts)
            } else {
                match ioctl::configure(&fd, &config) {
                    // Kernels before 5.8 do not know LOOP_CONFIGURE.
                    Err(Errno::INVAL | Errno::NOTTY) if attempt == 1 => {
                        tracing::debug!(
                            "LOOP_CONFIGURE unsupported on {}; using LOOP_SET_FD",
                            path.display()
                        );
                        legacy = true;
                        attach_legacy(&fd, &path, &backing, &info, opts)
                    }
                    r => r.map_err(|source| Error::Ioctl {
                        op: "LOOP_CONFIGURE",
                        device: path.clone(),
                        source,
                    }),
                }
            };
            match res {
                Ok(()) => {
                    let method = if legacy {
                        AttachMethod::SetFd
                    } else {
                        AttachMethod::Configure
                    };
                    tracing::debug!(device = %path.display(), file = %file.display(), ?method, "attached");
                    return Ok(LoopDevice {
                        fd: Some(fd),
                        path,
                        number,
                        method,
                    });
                }
                Err(Error::Ioctl {
                    source: Errno::BUSY,
                    ..
                }) => {
                    tracing::debug!(device = %path.display(), attempt, "loop device taken by someone else; retrying");
                    last = path;
                    std::thread::sleep(ATTACH_RETRY_DELAY);
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::NoFreeDevice {
            attempts: ATTACH_ATTEMPTS,
            device: last,
        })
    }

    /// Attach `file` read-only, whole.
    pub fn attach_read_only(file: impl AsRef<Path>) -> Result<LoopDevice> {
        Self::attach(file, &AttachOptions::new().read_only(true))
    }

    /// The device node, e.g. `/dev/loop3`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The device number N of `/dev/loopN`.
    pub fn number(&self) -> u32 {
        self.number
    }

    /// Which ioctls attached it.
    pub fn method(&self) -> AttachMethod {
        self.method
    }

    /// What the kernel reports for this device now (sysfs).
    pub fn info(&self) -> Result<crate::LoopInfo> {
        crate::list::info_by_number(self.number)
    }

    /// `ioctl(LOOP_CLR_FD)`: detach now, returning any error. Reports
    /// [`Error::StillInUse`] when a mount or another opener keeps the device busy (the kernel
    /// then detaches it on the last close).
    #[doc(alias = "LOOP_CLR_FD")]
    pub fn detach(mut self) -> Result<()> {
        self.release_inner()
    }

    /// Same as [`LoopDevice::detach`]: the name every diskforge guard shares.
    pub fn teardown(self) -> Result<()> {
        self.detach()
    }

    /// Give up ownership: the device stays attached after the guard is gone and the path is
    /// returned. (With [`AttachOptions::autoclear`] the kernel still detaches it once nothing
    /// holds it open.) This is what `dfloop attach` does.
    pub fn release(mut self) -> PathBuf {
        self.fd = None;
        std::mem::take(&mut self.path)
    }

    fn release_inner(&mut self) -> Result<()> {
        let Some(fd) = self.fd.take() else {
            return Ok(());
        };
        let res = ioctl::clr_fd(&fd);
        drop(fd);
        match res {
            Ok(()) => wait_detached(&self.path, self.number),
            // Autoclear already detached it when the last other user closed.
            Err(Errno::NXIO) => Ok(()),
            Err(source) => Err(Error::Ioctl {
                op: "LOOP_CLR_FD",
                device: self.path.clone(),
                source,
            }),
        }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if self.fd.is_some()
            && let Err(e) = self.release_inner()
        {
            tracing::warn!("detaching {} on drop: {e}", self.path.display());
        }
    }
}

/// `ioctl(LOOP_CLR_FD)` on any loop device, ours or not (what `losetup -d` does).
///
/// Returns [`Error::StillInUse`] when it stays busy (the kernel detaches it on the last close),
/// [`Error::NotAttached`] when nothing was attached.
#[doc(alias = "LOOP_CLR_FD")]
pub fn detach(device: impl AsRef<Path>) -> Result<()> {
    let device = device.as_ref();
    let number = crate::list::loop_number(device)?;
    let fd = match open_node(device, OFlags::RDONLY) {
        Ok(fd) => fd,
        // The kernel refuses opens while a device is being torn down.
        Err(Error::OpenDevice {
            source: Errno::NXIO,
            ..
        }) => {
            return Err(Error::NotAttached {
                device: device.to_owned(),
            });
        }
        Err(e) => return Err(e),
    };
    let res = ioctl::clr_fd(&fd);
    drop(fd);
    match res {
        Ok(()) => wait_detached(device, number),
        Err(Errno::NXIO) => Err(Error::NotAttached {
            device: device.to_owned(),
        }),
        Err(source) => Err(Error::Ioctl {
            op: "LOOP_CLR_FD",
            device: device.to_owned(),
            source,
        }),
    }
}

fn wait_detached(device: &Path, number: u32) -> Result<()> {
    let marker = PathBuf::from(format!("/sys/block/loop{number}/loop"));
    for _ in 0..DETACH_SETTLE_ATTEMPTS {
        if !marker.exists() {
            return Ok(());
        }
        std::thread::sleep(DETACH_SETTLE_INTERVAL);
    }
    Err(Error::StillInUse {
        device: device.to_owned(),
    })
}

fn attach_legacy(
    fd: &OwnedFd,
    path: &Path,
    backing: &File,
    info: &LoopInfo64,
    opts: &AttachOptions,
) -> Result<()> {
    let err = |op: &'static str| {
        move |source| Error::Ioctl {
            op,
            device: path.to_owned(),
            source,
        }
    };
    ioctl::set_fd(fd, backing.as_raw_fd()).map_err(err("LOOP_SET_FD"))?;
    let rest = (|| {
        diskforge_fault::point("loop.set-status")?;
        let mut info = *info;
        // LOOP_SET_STATUS64 takes read-only from the fd and direct I/O separately.
        info.lo_flags &= !(ioctl::LO_FLAGS_READ_ONLY | ioctl::LO_FLAGS_DIRECT_IO);
        if let Some(bs) = opts.block_size {
            ioctl::set_block_size(fd, bs).map_err(err("LOOP_SET_BLOCK_SIZE"))?;
        }
        ioctl::set_status64(fd, &info).map_err(err("LOOP_SET_STATUS64"))?;
        if opts.direct_io {
            ioctl::set_direct_io(fd, true).map_err(err("LOOP_SET_DIRECT_IO"))?;
        }
        Ok(())
    })();
    if let Err(e) = rest {
        if let Err(clr) = ioctl::clr_fd(fd) {
            tracing::warn!("undoing LOOP_SET_FD on {}: {clr}", path.display());
        }
        return Err(e);
    }
    Ok(())
}

fn open_backing(file: &Path, opts: &AttachOptions) -> Result<File> {
    let err = |source| Error::OpenBacking {
        path: file.to_owned(),
        source,
    };
    let meta = std::fs::metadata(file).map_err(err)?;
    let ft = meta.file_type();
    if !(ft.is_file() || ft.is_block_device()) {
        return Err(Error::NotAFile {
            path: file.to_owned(),
        });
    }
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(!opts.read_only)
        .open(file)
        .map_err(|source| match source.raw_os_error() {
            // EROFS, EACCES, EPERM on a read-write open: say how to get what was probably meant.
            Some(30 | 13 | 1) if !opts.read_only => Error::BackingNotWritable {
                path: file.to_owned(),
                source,
            },
            _ => Error::OpenBacking {
                path: file.to_owned(),
                source,
            },
        })?;
    let size = if ft.is_file() {
        meta.len()
    } else {
        f.seek(SeekFrom::End(0)).map_err(err)?
    };
    if opts.offset > 0 && opts.offset >= size {
        return Err(Error::OffsetBeyondEnd {
            path: file.to_owned(),
            offset: opts.offset,
            size,
        });
    }
    Ok(f)
}

/// Open a device node, waiting a bounded time for devtmpfs to create it.
pub(crate) fn open_node(path: &Path, mode: OFlags) -> Result<OwnedFd> {
    let mut tries = 0;
    loop {
        match rustix::io::retry_on_intr(|| {
            rustix::fs::open(path, mode | OFlags::CLOEXEC, Mode::empty())
        }) {
            Ok(fd) => return Ok(fd),
            Err(Errno::NOENT) if tries < NODE_WAIT_ATTEMPTS => {
                tries += 1;
                std::thread::sleep(NODE_WAIT_INTERVAL);
            }
            Err(source) => {
                return Err(Error::OpenDevice {
                    path: path.to_owned(),
                    source,
                });
            }
        }
    }
}
