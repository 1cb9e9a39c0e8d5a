//! sha256 digests computed while streaming, and compression sniffing/wrapping.

use std::io::{Read, Write};

use sha2::{Digest as _, Sha256};

/// A reader that hashes everything read through it.
pub(crate) struct HashReader<R> {
    inner: R,
    hasher: Sha256,
    /// Bytes read so far.
    pub(crate) count: u64,
}

impl<R: Read> HashReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        HashReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// `sha256:HEX` of everything read so far.
    pub(crate) fn digest(&self) -> String {
        format!("sha256:{}", hex(&self.hasher.clone().finalize()))
    }
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// A writer that hashes everything written through it.
pub(crate) struct HashWriter<W> {
    pub(crate) inner: W,
    hasher: Sha256,
    /// Bytes written so far.
    pub(crate) count: u64,
}

impl<W: Write> HashWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// `sha256:HEX` of everything written so far.
    pub(crate) fn digest(&self) -> String {
        format!("sha256:{}", hex(&self.hasher.clone().finalize()))
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// sha256 of a whole file, as `sha256:HEX`.
pub(crate) fn file_digest(path: &std::path::Path) -> crate::Result<String> {
    let f = std::fs::File::open(path).map_err(|e| crate::Error::io("opening", path, e))?;
    let mut r = HashReader::new(std::io::BufReader::new(f));
    std::io::copy(&mut r, &mut std::io::sink())
        .map_err(|e| crate::Error::io("reading", path, e))?;
    Ok(r.digest())
}

/// The hex part of a `sha256:HEX` digest, refusing anything else (digests become file names).
pub(crate) fn sha256_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then_some(hex)
}

/// Wrap `r` in the decompressor its first bytes call for (gzip, zstd, or none).
pub(crate) fn decompress<'a, R: std::io::BufRead + 'a>(
    mut r: R,
) -> std::io::Result<Box<dyn Read + 'a>> {
    let head = r.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(r)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Box::new(zstd::stream::read::Decoder::with_buffer(r)?))
    } else {
        Ok(Box::new(r))
    }
}
