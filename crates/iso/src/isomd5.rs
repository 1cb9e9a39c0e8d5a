//! The implanted MD5 of isomd5sum (`implantisomd5`/`checkisomd5`, rhinstaller/isomd5sum),
//! reimplemented so it can be computed while an image streams out.
//!
//! The format, as the C code does it:
//! - the sum covers bytes `0 .. volume_blocks*2048 - SKIPSECTORS*2048` of the image (the
//!   volume space size is read big-endian at PVD byte 84; `SKIPSECTORS` is 15);
//! - the 512-byte application-use area of the primary volume descriptor (PVD byte 883) is
//!   hashed as spaces (where the sum itself is stored);
//! - the image is hashed in 32 KiB reads from offset 0; after the read that starts at offset
//!   `o`, fragment `o * (FRAGMENT_COUNT + 1) / total` is computed, and when it changes the
//!   running MD5 is finalised on a copy and the first hex digit (`%01x`, i.e. `%x` of the
//!   byte, first character) of its first `60 / FRAGMENT_COUNT` bytes is appended;
//! - the area then reads `ISO MD5SUM = <hex>;SKIPSECTORS = 15;RHLISOSTATUS=0;FRAGMENT SUMS =
//!   <60 digits>;FRAGMENT COUNT = 20;THIS IS NOT THE SAME AS RUNNING MD5SUM ON THIS ISO!!`,
//!   padded with spaces.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::iso9660::{SECTOR, Volume};
use crate::md5core::Md5;
use crate::{Error, Result};

/// Offset of the application-use area inside the primary volume descriptor.
pub const APPDATA_OFFSET: u64 = 883;
/// Size of the application-use area.
pub const APPDATA_SIZE: usize = 512;
/// Sectors at the end of the volume left out of the sum.
pub const SKIP_SECTORS: u64 = 15;
/// Number of fragment checkpoints.
pub const FRAGMENT_COUNT: u64 = 20;
/// Length of the fragment sums string.
pub const FRAGMENT_SUM_SIZE: u64 = 60;
/// The read size whose boundaries decide where fragment checkpoints fall.
const CHUNK: u64 = 32768;
/// Read buffer for whole-file passes.
const IO_BUF: usize = 4 << 20;

/// What `implantisomd5` stored in an image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImplantedMd5 {
    /// The MD5, 32 hex digits.
    pub md5: String,
    /// `SKIPSECTORS`.
    pub skip_sectors: u64,
    /// `RHLISOSTATUS` (the "supported ISO" flag).
    pub supported: bool,
    /// `FRAGMENT SUMS`, when present.
    pub fragment_sums: Option<String>,
    /// `FRAGMENT COUNT`, when present.
    pub fragment_count: Option<u64>,
}

/// Parse the application-use area the way checkisomd5 does (`ISO MD5SUM` and `SKIPSECTORS`
/// are required; the other fields are optional).
pub fn parse_appdata(area: &[u8]) -> Option<ImplantedMd5> {
    let text = String::from_utf8_lossy(&area[..area.len().min(APPDATA_SIZE - 1)]).into_owned();
    let mut md5 = None;
    let mut skip = None;
    let mut supported = false;
    let mut frag_sums = None;
    let mut frag_count = None;
    for field in text.split(';') {
        let field = field.trim_start();
        if let Some(v) = field.strip_prefix("ISO MD5SUM = ") {
            md5 = v.get(..32).map(str::to_owned);
        } else if let Some(v) = field.strip_prefix("SKIPSECTORS = ") {
            skip = v.trim_end().parse().ok();
        } else if let Some(v) = field.strip_prefix("RHLISOSTATUS=") {
            supported = v.starts_with('1');
        } else if let Some(v) = field.strip_prefix("FRAGMENT SUMS = ") {
            frag_sums = Some(v.trim_end().to_owned());
        } else if let Some(v) = field.strip_prefix("FRAGMENT COUNT = ") {
            frag_count = v.trim_end().parse().ok();
        }
    }
    Some(ImplantedMd5 {
        md5: md5?,
        skip_sectors: skip?,
        supported,
        fragment_sums: frag_sums,
        fragment_count: frag_count,
    })
}

/// Render the application-use area for a sum (what implantisomd5 writes).
pub fn render_appdata(md5: &str, fragment_sums: &str) -> [u8; APPDATA_SIZE] {
    let mut a = [b' '; APPDATA_SIZE];
    let s = format!(
        "ISO MD5SUM = {md5};SKIPSECTORS = {SKIP_SECTORS};RHLISOSTATUS=0;FRAGMENT SUMS = \
         {fragment_sums};FRAGMENT COUNT = {FRAGMENT_COUNT};THIS IS NOT THE SAME AS RUNNING MD5SUM \
         ON THIS ISO!!"
    );
    let n = s.len().min(APPDATA_SIZE - 1);
    a[..n].copy_from_slice(&s.as_bytes()[..n]);
    a
}

/// The isomd5sum MD5 computed over bytes fed in order, in any chunk sizes.
#[derive(Clone)]
pub struct IsoMd5 {
    ctx: Md5,
    total: u64,
    appdata: u64,
    fed: u64,
    prev_fragment: u64,
    fragment_count: u64,
    fragment_sums: String,
}

impl std::fmt::Debug for IsoMd5 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IsoMd5")
            .field("total", &self.total)
            .field("fed", &self.fed)
            .finish()
    }
}

/// The result of hashing: the sum and the fragment checkpoints.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Md5Sums {
    /// The MD5 of the covered bytes, 32 hex digits.
    pub md5: String,
    /// The fragment digits.
    pub fragment_sums: String,
}

impl IsoMd5 {
    /// A hasher for an image whose volume is `volume_bytes` long and whose primary volume
    /// descriptor starts at byte `pvd_offset`, leaving out `skip_sectors` at the end.
    pub fn new(volume_bytes: u64, pvd_offset: u64, skip_sectors: u64, fragment_count: u64) -> Self {
        IsoMd5 {
            ctx: Md5::new(),
            total: volume_bytes.saturating_sub(skip_sectors * SECTOR),
            appdata: pvd_offset + APPDATA_OFFSET,
            fed: 0,
            prev_fragment: 0,
            fragment_count: fragment_count.max(1),
            fragment_sums: String::new(),
        }
    }

    /// The default hasher (15 skipped sectors, 20 fragments) for an opened volume.
    pub fn for_volume(vol: &Volume) -> Self {
        Self::for_blocks(u64::from(vol.primary.volume_blocks), vol.primary.lba)
    }

    /// The default hasher for a volume of `volume_blocks` blocks whose primary volume
    /// descriptor is at block `pvd_lba` (an output not written yet).
    pub fn for_blocks(volume_blocks: u64, pvd_lba: u32) -> Self {
        Self::new(
            volume_blocks * SECTOR,
            u64::from(pvd_lba) * SECTOR,
            SKIP_SECTORS,
            FRAGMENT_COUNT,
        )
    }

    /// Bytes covered by the sum.
    pub fn covered(&self) -> u64 {
        self.total
    }

    /// Bytes fed so far (capped at [`IsoMd5::covered`]).
    pub fn fed(&self) -> u64 {
        self.fed
    }

    /// Feed the next bytes of the image (bytes past the covered range are ignored).
    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() && self.fed < self.total {
            let room = CHUNK - self.fed % CHUNK;
            let n = (data.len() as u64).min(room).min(self.total - self.fed) as usize;
            let (now, rest) = data.split_at(n);
            self.hash_masked(now);
            self.fed += n as u64;
            if self.fed.is_multiple_of(CHUNK) || self.fed == self.total {
                self.checkpoint((self.fed - 1) / CHUNK * CHUNK);
            }
            data = rest;
        }
    }

    fn hash_masked(&mut self, buf: &[u8]) {
        let start = self.fed;
        let end = start + buf.len() as u64;
        let (a0, a1) = (self.appdata, self.appdata + APPDATA_SIZE as u64);
        if end <= a0 || start >= a1 {
            self.ctx.update(buf);
            return;
        }
        let lo = a0.saturating_sub(start) as usize;
        let hi = (a1.min(end) - start) as usize;
        self.ctx.update(&buf[..lo]);
        self.ctx.update(&[b' '; APPDATA_SIZE][..hi - lo]);
        self.ctx.update(&buf[hi..]);
    }

    fn checkpoint(&mut self, chunk_start: u64) {
        let current = chunk_start * (self.fragment_count + 1) / self.total;
        if current != self.prev_fragment {
            let digest = self.ctx.clone().finalize();
            let per = (FRAGMENT_SUM_SIZE / self.fragment_count) as usize;
            for b in digest.iter().take(per) {
                let hex = format!("{b:x}");
                self.fragment_sums.push_str(&hex[..1]);
            }
            self.prev_fragment = current;
        }
    }

    /// Finish: the sum and fragment digits.
    pub fn finish(self) -> Md5Sums {
        let digest = self.ctx.finalize();
        Md5Sums {
            md5: digest.iter().map(|b| format!("{b:02x}")).collect(),
            fragment_sums: self.fragment_sums,
        }
    }
}

/// Progress callback: `(bytes done, bytes total)`.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// Hash an existing file in one pass with `hasher`.
pub fn hash_file(path: &Path, mut hasher: IsoMd5, progress: Progress<'_>) -> Result<Md5Sums> {
    let f = std::fs::File::open(path).map_err(|e| Error::io("opening", path, e))?;
    hash_reads(
        path,
        &|off, buf| f.read_exact_at(buf, off),
        &mut hasher,
        progress,
    )?;
    Ok(hasher.finish())
}

/// Feed `hasher` the first [`IsoMd5::covered`] bytes that `fill(offset, block)` produces
/// (`path` names the source in errors). A second thread fills a few recycled buffers ahead,
/// so the reads overlap the hashing: MD5 is one serial chain, the reads need not wait for it.
pub(crate) fn hash_reads(
    path: &Path,
    fill: &(dyn Fn(u64, &mut [u8]) -> std::io::Result<()> + Sync),
    hasher: &mut IsoMd5,
    progress: Progress<'_>,
) -> Result<()> {
    use std::sync::mpsc::{channel, sync_channel};
    let total = hasher.covered();
    let (full_tx, full_rx) = sync_channel::<(u64, usize, Vec<u8>)>(2);
    let (free_tx, free_rx) = channel::<Vec<u8>>();
    for _ in 0..3 {
        // The receiver lives until the reader ends: cannot fail here.
        let _ = free_tx.send(vec![0u8; IO_BUF]);
    }
    std::thread::scope(|s| {
        let reader = s.spawn(move || -> Result<()> {
            let mut off = 0u64;
            while off < total {
                // Both ends are gone only when the hashing side stopped: nothing to do.
                let Ok(mut buf) = free_rx.recv() else {
                    return Ok(());
                };
                let n = (total - off).min(IO_BUF as u64) as usize;
                fill(off, &mut buf[..n]).map_err(|e| Error::io("reading", path, e))?;
                if full_tx.send((off, n, buf)).is_err() {
                    return Ok(());
                }
                off += n as u64;
            }
            Ok(())
        });
        // Owned here, so an early return (a cancel) drops it and the reader, waiting for a
        // free buffer, sees the channel closed.
        let free_tx = free_tx;
        for (off, n, buf) in full_rx {
            // Returning drops the receiver: the reader stops at its next send.
            crate::cancel::check()?;
            hasher.update(&buf[..n]);
            progress(off + n as u64, total);
            let _ = free_tx.send(buf);
        }
        reader.join().unwrap_or_else(|_| {
            Err(Error::io(
                "reading",
                path,
                std::io::Error::other("reader thread panicked"),
            ))
        })
    })
}

/// Write the application-use area of an image whose sums are `sums`.
pub fn write_appdata(path: &Path, pvd_lba: u32, sums: &Md5Sums) -> Result<()> {
    diskforge_fault::point("iso.md5.implant")?;
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| Error::io("opening for writing", path, e))?;
    let area = render_appdata(&sums.md5, &sums.fragment_sums);
    f.write_all_at(&area, u64::from(pvd_lba) * SECTOR + APPDATA_OFFSET)
        .map_err(|e| Error::io("writing the implanted MD5 to", path, e))
}

/// Implant an MD5 into `path` in place (like `implantisomd5 --force`): one read pass, then
/// one 512-byte write.
pub fn implant(path: &Path, progress: Progress<'_>) -> Result<Md5Sums> {
    let vol = Volume::open(path)?;
    let need = u64::from(vol.primary.volume_blocks) * SECTOR;
    if vol.src.len() < need.saturating_sub(SKIP_SECTORS * SECTOR) {
        return Err(Error::NotIso {
            path: path.to_owned(),
            reason: format!(
                "file is {} bytes but the volume claims {need}",
                vol.src.len()
            ),
        });
    }
    let sums = hash_file(path, IsoMd5::for_volume(&vol), progress)?;
    write_appdata(path, vol.primary.lba, &sums)?;
    Ok(sums)
}

/// The outcome of [`check`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct Md5Check {
    /// What the image stores.
    pub stored: ImplantedMd5,
    /// What we computed.
    pub computed: Md5Sums,
    /// Whether the sums (and the fragment sums, when stored) match.
    pub ok: bool,
}

/// Verify the implanted MD5 of `path` (like `checkisomd5`).
pub fn check(path: &Path, progress: Progress<'_>) -> Result<Md5Check> {
    let vol = Volume::open(path)?;
    let area = vol.src.read_vec(
        u64::from(vol.primary.lba) * SECTOR + APPDATA_OFFSET,
        APPDATA_SIZE,
    )?;
    let stored = parse_appdata(&area).ok_or_else(|| Error::NoMd5 {
        path: path.to_owned(),
    })?;
    let hasher = IsoMd5::new(
        u64::from(vol.primary.volume_blocks) * SECTOR,
        u64::from(vol.primary.lba) * SECTOR,
        stored.skip_sectors,
        stored.fragment_count.unwrap_or(FRAGMENT_COUNT),
    );
    let computed = hash_file(path, hasher, progress)?;
    let frag_ok = match &stored.fragment_sums {
        Some(s) if !computed.fragment_sums.is_empty() => s.starts_with(&computed.fragment_sums),
        _ => true,
    };
    let ok = computed.md5 == stored.md5 && frag_ok;
    Ok(Md5Check {
        stored,
        computed,
        ok,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appdata_round_trip() {
        let a = render_appdata("0123456789abcdef0123456789abcdef", &"abc".repeat(20));
        let p = parse_appdata(&a).unwrap();
        assert_eq!(p.md5, "0123456789abcdef0123456789abcdef");
        assert_eq!(p.skip_sectors, 15);
        assert_eq!(p.fragment_count, Some(20));
        assert_eq!(p.fragment_sums.as_deref(), Some("abc".repeat(20).as_str()));
        assert!(parse_appdata(&[b' '; 512]).is_none());
    }

    #[test]
    fn chunking_does_not_change_the_sum() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let total = (data.len() as u64 / SECTOR + SKIP_SECTORS) * SECTOR;
        let mut a = IsoMd5::new(total, 16 * SECTOR, SKIP_SECTORS, FRAGMENT_COUNT);
        a.update(&data);
        let mut b = IsoMd5::new(total, 16 * SECTOR, SKIP_SECTORS, FRAGMENT_COUNT);
        for c in data.chunks(7777) {
            b.update(c);
        }
        let (a, b) = (a.finish(), b.finish());
        assert_eq!(a, b);
        assert_eq!(a.fragment_sums.len(), 60);
    }
}
