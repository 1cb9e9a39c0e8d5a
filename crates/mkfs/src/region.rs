//! Byte ranges of an image ([`crate::Target::Region`]) without a loop device: clearing a
//! range so nothing stale remains (holes punched with `fallocate(PUNCH_HOLE|KEEP_SIZE)` in
//! files, zeros written on devices), and copying only the data extents of a sparse build
//! (`lseek(SEEK_DATA/SEEK_HOLE)`, `copy_file_range`) so a sparse image stays sparse.
//!
//! References: [lseek(2)](https://man7.org/linux/man-pages/man2/lseek.2.html),
//! [fallocate(2)](https://man7.org/linux/man-pages/man2/fallocate.2.html),
//! [copy_file_range(2)](https://man7.org/linux/man-pages/man2/copy_file_range.2.html).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rustix::fs::{FallocateFlags, SeekFrom};
use rustix::io::Errno;

use crate::{Error, FsType, Result, io};

/// Bytes moved per `copy_file_range` / zero-write call.
const CHUNK: u64 = 8 << 20;

/// The image opened for writing, checked to hold `offset + size` bytes when it is a file.
pub(crate) struct RegionFile<'a> {
    file: File,
    path: &'a Path,
    is_file: bool,
}

impl<'a> RegionFile<'a> {
    /// Open `image` for writing and check the range lies inside it (files only: a device's
    /// size is the kernel's to enforce).
    pub(crate) fn open(fs: FsType, image: &'a Path, offset: u64, size: u64) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(image)
            .map_err(io("opening", image))?;
        let meta = file.metadata().map_err(io("reading", image))?;
        let end = offset.checked_add(size);
        if meta.is_file() && end.is_none_or(|end| meta.len() < end) {
            return Err(Error::Invalid {
                fs,
                field: "region",
                value: format!("{offset}+{size}"),
                reason: format!("{} is shorter ({} bytes)", image.display(), meta.len()),
            });
        }
        Ok(RegionFile {
            file,
            path: image,
            is_file: meta.is_file(),
        })
    }

    /// `fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, start, len)` in a file
    /// (the range reads back as zeros and frees its blocks); zeros written where the
    /// filesystem cannot punch, and on devices.
    #[doc(alias = "FALLOC_FL_PUNCH_HOLE")]
    pub(crate) fn clear(&self, start: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        if self.is_file {
            match rustix::fs::fallocate(
                &self.file,
                FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
                start,
                len,
            ) {
                Ok(()) => return Ok(()),
                Err(Errno::OPNOTSUPP | Errno::NOSYS) => {}
                Err(e) => return Err(io("punching a hole in", self.path)(e.into())),
            }
        }
        let zeros = vec![0u8; CHUNK as usize];
        let mut pos = start;
        let end = start + len;
        while pos < end {
            let n = (end - pos).min(CHUNK) as usize;
            self.file
                .write_all_at(&zeros[..n], pos)
                .map_err(io("zeroing", self.path))?;
            pos += n as u64;
        }
        Ok(())
    }

    /// Copy the data extents of `from` (at most `size` bytes long) to `offset` and clear the
    /// gaps and the tail of the `size`-byte range, then sync. Returns the bytes copied.
    pub(crate) fn copy_extents_from(
        &self,
        fs: FsType,
        from: &Path,
        offset: u64,
        size: u64,
    ) -> Result<u64> {
        let src = File::open(from).map_err(io("opening", from))?;
        let len = src.metadata().map_err(io("reading", from))?.len();
        if len > size {
            return Err(Error::TooLarge {
                fs,
                built: len,
                limit: size,
                path: self.path.to_owned(),
            });
        }
        let mut copied = 0;
        let mut pos = 0;
        while pos < len {
            let Some((data, hole)) = next_extent(&src, from, pos, len)? else {
                break;
            };
            self.clear(offset + pos, data - pos)?;
            self.copy_range(&src, from, data, offset + data, hole - data)?;
            copied += hole - data;
            pos = hole;
        }
        self.clear(offset + pos, size - pos)?;
        self.file.sync_data().map_err(io("syncing", self.path))?;
        Ok(copied)
    }

    /// `copy_file_range` of `len` bytes from `src` at `from_pos` to `to_pos`; `pread` and
    /// `pwrite` where the kernel cannot (across filesystems before Linux 5.3, devices).
    fn copy_range(
        &self,
        src: &File,
        src_path: &Path,
        from_pos: u64,
        to_pos: u64,
        len: u64,
    ) -> Result<()> {
        let (mut off_in, mut off_out) = (from_pos, to_pos);
        let end = from_pos + len;
        while off_in < end {
            let n = (end - off_in).min(CHUNK) as usize;
            match rustix::fs::copy_file_range(
                src,
                Some(&mut off_in),
                &self.file,
                Some(&mut off_out),
                n,
            ) {
                Ok(0) => {
                    return Err(io("copying from", src_path)(
                        std::io::ErrorKind::UnexpectedEof.into(),
                    ));
                }
                Ok(_) => {}
                Err(Errno::XDEV | Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
                    let mut buf = vec![0u8; n];
                    src.read_exact_at(&mut buf, off_in)
                        .map_err(io("reading", src_path))?;
                    self.file
                        .write_all_at(&buf, off_out)
                        .map_err(io("copying into", self.path))?;
                    off_in += n as u64;
                    off_out += n as u64;
                }
                Err(e) => return Err(io("copying into", self.path)(e.into())),
            }
        }
        Ok(())
    }
}

/// `lseek(SEEK_DATA)` then `lseek(SEEK_HOLE)` from `pos`: the next data extent as
/// `(start, end)` clipped to `len`, or `None` when only holes remain. Filesystems without
/// hole reporting give the whole rest as one extent.
#[doc(alias = "SEEK_DATA")]
fn next_extent(src: &File, path: &Path, pos: u64, len: u64) -> Result<Option<(u64, u64)>> {
    let data = match rustix::fs::seek(src, SeekFrom::Data(pos)) {
        Ok(d) => d,
        Err(Errno::NXIO) => return Ok(None),
        Err(e) => return Err(io("seeking data in", path)(e.into())),
    };
    if data >= len {
        return Ok(None);
    }
    let hole = rustix::fs::seek(src, SeekFrom::Hole(data))
        .map_err(|e| io("seeking a hole in", path)(e.into()))?;
    Ok(Some((data, hole.min(len))))
}
