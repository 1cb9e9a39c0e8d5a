//! A cpio "newc" archive writer: the format the kernel unpacks as an initramfs.
//!
//! Format: `man 5 cpio`, "New ASCII Format" (magic `070701`, thirteen 8-digit hex fields,
//! the NUL-terminated name, data; header+name and data each padded to 4 bytes), and the
//! kernel's `Documentation/driver-api/early-userspace/buffer-format.rst`. Every entry gets
//! owner root, mtime 0 and a sequential inode number, so the same entries give the same
//! bytes. Device nodes are written as entries (no `mknod`, no root needed). It does not read
//! archives and does not write hard links.

use std::io::{self, Write};

/// The newc magic.
pub const MAGIC: &[u8; 6] = b"070701";
/// File type bits of `mode` (`S_IFMT`).
const S_IFMT: u32 = 0o170000;
/// Directory type bits.
const S_IFDIR: u32 = 0o040000;
/// Regular-file type bits.
const S_IFREG: u32 = 0o100000;
/// Symlink type bits.
const S_IFLNK: u32 = 0o120000;
/// Character-device type bits.
const S_IFCHR: u32 = 0o020000;
/// The name of the last entry.
pub const TRAILER: &str = "TRAILER!!!";

/// A newc archive being written to `W`.
#[derive(Debug)]
pub struct Cpio<W: Write> {
    out: W,
    ino: u32,
}

impl<W: Write> Cpio<W> {
    /// Start an archive on `out`.
    pub fn new(out: W) -> Self {
        Cpio { out, ino: 1 }
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) -> io::Result<()> {
        let name_len = name.len() + 1;
        let nlink = if mode & S_IFMT == S_IFDIR { 2 } else { 1 };
        let too_big = |what| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cpio entry {name}: {what} does not fit newc's 32-bit field"),
            )
        };
        let size = u32::try_from(data.len()).map_err(|_| too_big("size"))?;
        let namesize = u32::try_from(name_len).map_err(|_| too_big("name"))?;
        // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor
        // namesize check
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0
        );
        self.ino += 1;
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.pad(header.len() + name_len)?;
        self.out.write_all(data)?;
        self.pad(data.len())
    }

    fn pad(&mut self, len: usize) -> io::Result<()> {
        let n = (4 - len % 4) % 4;
        self.out.write_all(&[0u8; 3][..n])
    }

    /// A directory (mode 0755).
    pub fn dir(&mut self, name: &str) -> io::Result<()> {
        self.entry(name, S_IFDIR | 0o755, (0, 0), &[])
    }

    /// A regular file with these permission bits.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(name, S_IFREG | (perm & 0o7777), (0, 0), data)
    }

    /// A symbolic link to `target`.
    pub fn symlink(&mut self, name: &str, target: &str) -> io::Result<()> {
        self.entry(name, S_IFLNK | 0o777, (0, 0), target.as_bytes())
    }

    /// A character device node (mode 0600), such as `dev/console` (5, 1).
    pub fn char_dev(&mut self, name: &str, major: u32, minor: u32) -> io::Result<()> {
        self.entry(name, S_IFCHR | 0o600, (major, minor), &[])
    }

    /// Write the trailer and return the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.entry(TRAILER, 0, (0, 0), &[])?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One header field (0-based index after the magic) of the entry starting at `at`.
    fn field(out: &[u8], at: usize, i: usize) -> u32 {
        let s = std::str::from_utf8(&out[at + 6 + 8 * i..at + 14 + 8 * i]).unwrap();
        u32::from_str_radix(s, 16).unwrap()
    }

    #[test]
    fn newc_layout_and_padding() {
        let mut c = Cpio::new(Vec::new());
        c.file("a", 0o644, b"xyz").unwrap();
        c.dir("bin").unwrap();
        let out = c.finish().unwrap();
        // header 110 + "a\0" = 112 (aligned), data 3 + 1 pad.
        assert_eq!(&out[..6], MAGIC);
        assert_eq!(field(&out, 0, 0), 1); // ino
        assert_eq!(field(&out, 0, 1), 0o100644); // mode
        assert_eq!(field(&out, 0, 6), 3); // filesize
        assert_eq!(field(&out, 0, 11), 2); // namesize incl. NUL
        assert_eq!(&out[110..112], b"a\0");
        assert_eq!(&out[112..116], b"xyz\0");
        // "bin\0" = 114 → padded to 116; no data.
        assert_eq!(&out[116..122], MAGIC);
        assert_eq!(field(&out, 116, 1), 0o040755);
        assert_eq!(field(&out, 116, 4), 2); // nlink of a directory
        assert_eq!(&out[226..230], b"bin\0");
        assert_eq!(&out[232..238], MAGIC);
        assert_eq!(&out[232 + 110..232 + 110 + 11], b"TRAILER!!!\0");
        assert_eq!(out.len() % 4, 0);
    }

    #[test]
    fn symlink_and_device_fields() {
        let mut c = Cpio::new(Vec::new());
        c.symlink("bin/sh", "busybox").unwrap();
        let len = c.out.len();
        c.char_dev("dev/console", 5, 1).unwrap();
        let out = c.finish().unwrap();
        assert_eq!(field(&out, 0, 1), 0o120777);
        assert_eq!(field(&out, 0, 6), 7);
        assert!(out[..len].windows(7).any(|w| w == b"busybox"));
        assert_eq!(field(&out, len, 1), 0o020600);
        assert_eq!(field(&out, len, 9), 5); // rdevmajor
        assert_eq!(field(&out, len, 10), 1); // rdevminor
        assert_eq!(field(&out, len, 0), 2); // sequential inodes
    }

    /// GNU cpio, an independent reader, lists what we wrote (`cargo xtask deps` installs it).
    #[test]
    fn gnu_cpio_reads_it() {
        let mut c = Cpio::new(Vec::new());
        c.dir("etc").unwrap();
        c.file("etc/x", 0o600, b"hello\n").unwrap();
        c.symlink("l", "etc/x").unwrap();
        let out = c.finish().unwrap();
        let listing = diskforge_cmd::Cmd::new("cpio")
            .args(["-t", "-v", "--quiet"])
            .stdin_bytes(out)
            .read()
            .unwrap();
        let lines: Vec<&str> = listing.lines().collect();
        assert_eq!(lines.len(), 3, "{listing}");
        assert!(lines[0].starts_with("drwxr-xr-x") && lines[0].ends_with(" etc"));
        assert!(lines[1].starts_with("-rw-------") && lines[1].contains(" 6 "));
        assert!(lines[2].starts_with("lrwxrwxrwx") && lines[2].ends_with("l -> etc/x"));
    }
}
