//! Output formats (`-t`): disk formats converted from the raw image with qemu-img, tree formats
//! written from the root tree. Every output is written under a temporary name in its
//! directory and renamed into place only when complete, so a failed or interrupted build
//! never leaves a half-written `NAME.qcow2` (an existing output of the same name is replaced,
//! as dib does).

use std::fmt;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use diskforge_cmd::Cmd;
use serde::{Deserialize, Serialize};

use crate::{Error, Result, io_err, tool_err};

/// One `-t` output type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// The raw disk image (`NAME.raw`).
    Raw,
    /// qcow2, compressed with zstd clusters unless `-u` (`NAME.qcow2`).
    Qcow2,
    /// VHD (qemu-img's `vpc`, fixed size kept exactly with `force_size`) (`NAME.vhd`).
    Vhd,
    /// VHDX (`NAME.vhdx`).
    Vhdx,
    /// VMDK, `streamOptimized` as vSphere imports it (`NAME.vmdk`).
    Vmdk,
    /// The root tree as a tar archive (`NAME.tar`).
    Tar,
    /// The root tree as a gzip-compressed tar (`NAME.tgz`).
    Tgz,
    /// The root tree as a squashfs image (`NAME.squash`).
    Squashfs,
    /// A root tree tar that `docker import` / `podman import` accept (`NAME.docker.tar`).
    Docker,
    /// An OCI image layout holding the root tree as one layer, tagged `latest`
    /// (`NAME.oci/`, a directory).
    Oci,
    /// The kernel of a `ramdisk` build (`NAME.kernel`; comes from the `ramdisk` element, not
    /// from `-t`).
    #[serde(rename = "ramdisk-kernel")]
    RamdiskKernel,
    /// The initramfs of a `ramdisk` build (`NAME.initramfs`; from the `ramdisk` element).
    #[serde(rename = "ramdisk-initramfs")]
    RamdiskInitramfs,
}

/// Every format, in the order outputs are written.
pub const ALL_FORMATS: [OutputFormat; 10] = [
    OutputFormat::Raw,
    OutputFormat::Qcow2,
    OutputFormat::Vhd,
    OutputFormat::Vhdx,
    OutputFormat::Vmdk,
    OutputFormat::Tar,
    OutputFormat::Tgz,
    OutputFormat::Squashfs,
    OutputFormat::Docker,
    OutputFormat::Oci,
];

impl OutputFormat {
    /// The name `-t` takes.
    pub fn name(self) -> &'static str {
        match self {
            OutputFormat::Raw => "raw",
            OutputFormat::Qcow2 => "qcow2",
            OutputFormat::Vhd => "vhd",
            OutputFormat::Vhdx => "vhdx",
            OutputFormat::Vmdk => "vmdk",
            OutputFormat::Tar => "tar",
            OutputFormat::Tgz => "tgz",
            OutputFormat::Squashfs => "squashfs",
            OutputFormat::Docker => "docker",
            OutputFormat::Oci => "oci",
            OutputFormat::RamdiskKernel => "ramdisk-kernel",
            OutputFormat::RamdiskInitramfs => "ramdisk-initramfs",
        }
    }

    /// Whether the output is a disk image (needs the block device); otherwise it is made
    /// from the root tree alone.
    pub fn is_disk(self) -> bool {
        matches!(
            self,
            OutputFormat::Raw
                | OutputFormat::Qcow2
                | OutputFormat::Vhd
                | OutputFormat::Vhdx
                | OutputFormat::Vmdk
        )
    }

    /// The file (or, for `oci`, directory) name suffix after `NAME.`.
    pub fn suffix(self) -> &'static str {
        match self {
            OutputFormat::Raw => "raw",
            OutputFormat::Qcow2 => "qcow2",
            OutputFormat::Vhd => "vhd",
            OutputFormat::Vhdx => "vhdx",
            OutputFormat::Vmdk => "vmdk",
            OutputFormat::Tar => "tar",
            OutputFormat::Tgz => "tgz",
            OutputFormat::Squashfs => "squash",
            OutputFormat::Docker => "docker.tar",
            OutputFormat::Oci => "oci",
            OutputFormat::RamdiskKernel => "kernel",
            OutputFormat::RamdiskInitramfs => "initramfs",
        }
    }

    /// `NAME.SUFFIX` for the output base name `name` (dib's `-o`).
    pub fn path_for(self, name: &Path) -> PathBuf {
        let mut s = name.as_os_str().to_owned();
        s.push(".");
        s.push(self.suffix());
        PathBuf::from(s)
    }

    fn qemu_format(self) -> Option<qemu_img_cmd::Format> {
        use qemu_img_cmd::Format as F;
        match self {
            OutputFormat::Raw => Some(F::Raw),
            OutputFormat::Qcow2 => Some(F::Qcow2),
            OutputFormat::Vhd => Some(F::Vpc),
            OutputFormat::Vhdx => Some(F::Vhdx),
            OutputFormat::Vmdk => Some(F::Vmdk),
            _ => None,
        }
    }
}

impl fmt::Display for OutputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for OutputFormat {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        let alias = match s {
            "squash" => Some(OutputFormat::Squashfs),
            "vpc" => Some(OutputFormat::Vhd),
            "tar.gz" => Some(OutputFormat::Tgz),
            _ => None,
        };
        alias
            .or_else(|| ALL_FORMATS.into_iter().find(|f| f.name() == s))
            .ok_or_else(|| Error::Usage {
                field: "-t".into(),
                value: s.to_owned(),
                reason: format!(
                    "unknown image type; known: {}",
                    ALL_FORMATS.map(|f| f.name()).join(", ")
                ),
            })
    }
}

/// Parse dib's `-t` list (`qcow2,tar`; repeated `-t` flags are joined by the caller). Duplicates
/// collapse; an empty entry or unknown type is an error naming it.
pub fn parse_formats(list: &str) -> Result<Vec<OutputFormat>> {
    let mut out = Vec::new();
    for item in list.split(',') {
        if item.trim().is_empty() {
            return Err(Error::Usage {
                field: "-t".into(),
                value: list.to_owned(),
                reason: "empty image type in the list".into(),
            });
        }
        let f: OutputFormat = item.parse()?;
        if !out.contains(&f) {
            out.push(f);
        }
    }
    Ok(out)
}

/// How outputs are written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputOptions {
    /// Compress qcow2 output (dib's default; `-u` turns it off). We use zstd clusters
    /// (`compression_type=zstd`), several times faster than dib's zlib at a similar size, and
    /// 256 KiB clusters (`COMPRESSED_QCOW2_CLUSTER`) rather than qcow2's 64 KiB default:
    /// fewer, larger compression jobs, and on 2 cores qemu-img 7.2 converts a Debian image in
    /// ~3.6 s instead of 4–6 s (measured inside builds); the file is ~5 % smaller. The cost is a
    /// coarser copy-on-write unit for a VM that boots straight from the compressed file
    /// (a write into a compressed cluster allocates 256 KiB); `--qemu-img-options
    /// cluster_size=64k` restores the default (later `-o` keys win).
    pub compress: bool,
    /// Extra `-o` options for qemu-img (dib's `--qemu-img-options`), appended to ours.
    pub qemu_img_options: Vec<String>,
    /// `SOURCE_DATE_EPOCH`: clamp tree outputs' mtimes (tar, squashfs, oci) for byte-identical
    /// results.
    pub epoch: Option<u64>,
    /// Write `OUTPUT.md5` and `OUTPUT.sha256` beside each file output (dib's `--checksum`).
    pub checksum: bool,
}

/// What one output is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputReport {
    /// The format.
    pub format: OutputFormat,
    /// Where it is.
    pub path: PathBuf,
    /// Its size in bytes (apparent size; for `oci`, the sum of the layout's files).
    pub bytes: u64,
    /// Bytes allocated on disk (sparse files and compression show here).
    pub allocated: u64,
    /// Milliseconds spent writing it.
    pub millis: u64,
    /// `--checksum`: the md5 and sha256 files written beside it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checksums: Vec<PathBuf>,
}

/// The end of every partial output's name.
pub(crate) const PARTIAL_SUFFIX: &str = ".partial";

/// A temporary output path in `dst`'s directory: `.NAME.partial`.
pub(crate) fn partial_path(dst: &Path) -> PathBuf {
    let name = dst
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    dst.with_file_name(format!(".{name}{PARTIAL_SUFFIX}"))
}

/// Removes a partial output (`.NAME.partial`, [`Partial::tmp`]) unless [`Partial::publish`]
/// moved it into place.
pub(crate) struct Partial {
    pub(crate) tmp: PathBuf,
    dst: PathBuf,
    done: bool,
}

impl Partial {
    pub(crate) fn new(dst: &Path) -> Result<Partial> {
        let tmp = partial_path(dst);
        remove_any(&tmp)?;
        Ok(Partial {
            tmp,
            dst: dst.to_owned(),
            done: false,
        })
    }

    pub(crate) fn publish(mut self) -> Result<()> {
        if self.dst.is_dir() && !self.dst.is_symlink() {
            // A previous `oci` output: rename cannot replace a non-empty directory.
            fs::remove_dir_all(&self.dst).map_err(io_err("removing the old", &self.dst))?;
        }
        fs::rename(&self.tmp, &self.dst).map_err(io_err("renaming into place", &self.dst))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.done {
            let _ = remove_any(&self.tmp);
        }
    }
}

pub(crate) fn remove_any(p: &Path) -> Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p).map_err(io_err("removing", p)),
        Ok(_) => fs::remove_file(p).map_err(io_err("removing", p)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("inspecting", p)(e)),
    }
}

/// The built disk image a disk format is made from.
#[derive(Debug, Clone, Copy)]
pub enum DiskSource<'a> {
    /// The build made no disk (tree formats only).
    None,
    /// The image, to read (convert or copy).
    Read(&'a Path),
    /// The image, which the build needs no more: a raw output takes it by renaming it (no
    /// copy) when it is on the same filesystem, and copies it otherwise.
    Take(&'a Path),
}

/// Write `format` to `dst`: disk formats from `raw` (the built disk image), tree formats from
/// `tree` (the root tree).
pub fn write_output(
    format: OutputFormat,
    raw: DiskSource<'_>,
    tree: &Path,
    dst: &Path,
    opts: &OutputOptions,
) -> Result<OutputReport> {
    let started = Instant::now();
    let partial = Partial::new(dst)?;
    diskforge_fault::point(&format!("image.output.{}", format.name()))?;
    let tmp = partial.tmp.clone();
    if format.is_disk() {
        match raw {
            DiskSource::None => {
                return Err(Error::Usage {
                    field: "-t".into(),
                    value: format.name().into(),
                    reason: "a disk format needs a block device, but this build made none".into(),
                });
            }
            DiskSource::Take(image) if format == OutputFormat::Raw => {
                match fs::rename(image, &tmp) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) => {
                        copy_sparse(image, &tmp)?
                    }
                    Err(e) => return Err(io_err("moving the disk image to", &tmp)(e)),
                }
            }
            DiskSource::Read(image) | DiskSource::Take(image) => {
                write_disk(format, image, &tmp, opts)?
            }
        }
    } else {
        write_tree(format, tree, &tmp, opts)?;
    }
    diskforge_fault::point("image.output.rename")?;
    partial.publish()?;
    let (bytes, allocated) = sizes(dst)?;
    let mut checksums = Vec::new();
    if opts.checksum && dst.is_file() {
        checksums = write_checksums(dst)?;
    }
    Ok(OutputReport {
        format,
        path: dst.to_owned(),
        bytes,
        allocated,
        millis: started.elapsed().as_millis() as u64,
        checksums,
    })
}

/// The cluster size of a compressed qcow2 output (see [`OutputOptions::compress`]).
pub const COMPRESSED_QCOW2_CLUSTER: &str = "256k";

/// The qemu-img `convert` options for `format`.
pub fn convert_options(format: OutputFormat, opts: &OutputOptions) -> qemu_img_cmd::ConvertOptions {
    let target = format.qemu_format().unwrap_or(qemu_img_cmd::Format::Raw);
    let mut c = qemu_img_cmd::ConvertOptions::to(target);
    c.source_format = Some(qemu_img_cmd::Format::Raw);
    c.out_of_order = true;
    match format {
        OutputFormat::Qcow2 if opts.compress => {
            c.compress = true;
            c.options.push("compression_type=zstd".into());
            c.options
                .push(format!("cluster_size={COMPRESSED_QCOW2_CLUSTER}"));
        }
        OutputFormat::Vhd => c.options.push("force_size=on".into()),
        OutputFormat::Vmdk => c.options.push("subformat=streamOptimized".into()),
        _ => {}
    }
    c.options.extend(opts.qemu_img_options.iter().cloned());
    c
}

fn write_disk(format: OutputFormat, raw: &Path, tmp: &Path, opts: &OutputOptions) -> Result<()> {
    if format == OutputFormat::Raw {
        return copy_sparse(raw, tmp);
    }
    let c = convert_options(format, opts);
    qemu_img_cmd::convert(raw, tmp, &c, |_| {}).map_err(|source| Error::Output {
        format,
        source: Box::new(source),
    })
}

/// Copy `src` to `dst` keeping holes (SEEK_DATA/SEEK_HOLE through `cp --sparse=always`, which
/// also reflinks where the filesystem can).
fn copy_sparse(src: &Path, dst: &Path) -> Result<()> {
    Cmd::new("cp")
        .args(["--sparse=always", "--reflink=auto", "--"])
        .arg(src)
        .arg(dst)
        .run()
        .map(|_| ())
        .map_err(tool_err("copying the raw image"))
}

/// GNU tar arguments for a reproducible root tar: sorted names, numeric owners, xattrs and
/// ACLs kept, `./proc` and `./sys` left out (as dib's `tar --xattrs --exclude ./sys
/// --exclude ./proc`), mtimes clamped to `epoch` when given.
pub fn tar_args(tree: &Path, out: &Path, gzip: bool, epoch: Option<u64>) -> Vec<String> {
    let mut a = vec![
        "--create".to_owned(),
        format!("--file={}", out.display()),
        format!("--directory={}", tree.display()),
        "--sort=name".into(),
        "--numeric-owner".into(),
        "--xattrs".into(),
        "--xattrs-include=*".into(),
        "--acls".into(),
        "--format=posix".into(),
        "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime".into(),
        "--exclude=./proc".into(),
        "--exclude=./sys".into(),
    ];
    if let Some(e) = epoch {
        a.push(format!("--mtime=@{e}"));
        a.push("--clamp-mtime".into());
    }
    if gzip {
        a.push("--use-compress-program=gzip -n".into());
    }
    a.push(".".into());
    a
}

fn write_tree(format: OutputFormat, tree: &Path, tmp: &Path, opts: &OutputOptions) -> Result<()> {
    match format {
        OutputFormat::Tar | OutputFormat::Docker => Cmd::new("tar")
            .args(tar_args(tree, tmp, false, opts.epoch))
            .run()
            .map(|_| ())
            .map_err(tool_err("writing the tar output")),
        OutputFormat::Tgz => Cmd::new("tar")
            .args(tar_args(tree, tmp, true, opts.epoch))
            .run()
            .map(|_| ())
            .map_err(tool_err("writing the tgz output")),
        OutputFormat::Squashfs => {
            let mut a = vec![
                tree.display().to_string(),
                tmp.display().to_string(),
                "-noappend".into(),
                "-no-progress".into(),
                "-comp".into(),
                "xz".into(),
                "-xattrs".into(),
                "-wildcards".into(),
                "-e".into(),
                "proc/*".into(),
                "-e".into(),
                "sys/*".into(),
            ];
            if let Some(e) = opts.epoch {
                a.extend([
                    "-mkfs-time".into(),
                    e.to_string(),
                    "-all-time".into(),
                    e.to_string(),
                ]);
            }
            Cmd::new("mksquashfs")
                .args(a)
                .run()
                .map(|_| ())
                .map_err(tool_err("writing the squashfs output"))
        }
        OutputFormat::Oci => {
            let o = diskforge_layers::TarOptions {
                compression: diskforge_layers::Compression::Gzip,
                clamp_mtime: opts.epoch,
                overwrite: false,
            };
            diskforge_layers::oci::commit_to_layout(tree, tmp, "latest", None, o, opts.epoch)
                .map(|_| ())
                .map_err(|source| Error::Oci {
                    source: Box::new(source),
                })
        }
        _ => Ok(()),
    }
}

/// (apparent size, allocated bytes) of a file, or summed over a directory.
fn sizes(p: &Path) -> Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::symlink_metadata(p).map_err(io_err("inspecting", p))?;
    if !m.is_dir() {
        return Ok((m.len(), m.blocks() * 512));
    }
    let mut total = (0, 0);
    for e in fs::read_dir(p).map_err(io_err("reading", p))? {
        let e = e.map_err(io_err("reading", p))?;
        let (a, b) = sizes(&e.path())?;
        total.0 += a;
        total.1 += b;
    }
    Ok(total)
}

/// Write `FILE.md5` and `FILE.sha256` in the format `md5sum -c` / `sha256sum -c` read.
fn write_checksums(file: &Path) -> Result<Vec<PathBuf>> {
    diskforge_fault::point("image.output.checksums")?;
    use md5::Digest as _;
    let mut f = fs::File::open(file).map_err(io_err("opening", file))?;
    let mut md5 = md5::Md5::new();
    let mut sha = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err("reading", file))?;
        if n == 0 {
            break;
        }
        md5.update(&buf[..n]);
        sha.update(&buf[..n]);
    }
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut out = Vec::new();
    for (ext, digest) in [
        ("md5", hex(&md5.finalize())),
        ("sha256", hex(&sha.finalize())),
    ] {
        let mut p = file.as_os_str().to_owned();
        p.push(format!(".{ext}"));
        let p = PathBuf::from(p);
        fs::write(&p, format!("{digest}  {name}\n")).map_err(io_err("writing", &p))?;
        out.push(p);
    }
    Ok(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_as_dib_spells_them() {
        let f = parse_formats("qcow2,tar,qcow2,squash,vhd").unwrap();
        assert_eq!(
            f,
            [
                OutputFormat::Qcow2,
                OutputFormat::Tar,
                OutputFormat::Squashfs,
                OutputFormat::Vhd
            ]
        );
        let e = parse_formats("qcow2,,raw").unwrap_err().to_string();
        assert!(e.contains("empty image type"), "{e}");
        let e = parse_formats("qcow3").unwrap_err().to_string();
        assert!(
            e.contains("\"qcow3\"") && e.contains("known: raw, qcow2"),
            "{e}"
        );
    }

    #[test]
    fn output_names() {
        let n = Path::new("out/image");
        let names: Vec<_> = ALL_FORMATS
            .iter()
            .map(|f| f.path_for(n).display().to_string())
            .collect();
        insta::assert_debug_snapshot!(names);
    }

    #[test]
    fn qcow2_is_zstd_compressed_unless_uncompressed() {
        let mut o = OutputOptions {
            compress: true,
            ..Default::default()
        };
        let a =
            convert_options(OutputFormat::Qcow2, &o).args(Path::new("a"), Path::new("b"), false);
        assert_eq!(
            a.join(" "),
            "convert -f raw -O qcow2 -c -W -o compression_type=zstd,cluster_size=256k a b"
        );
        o.compress = false;
        o.qemu_img_options = vec!["cluster_size=2M".into()];
        let a =
            convert_options(OutputFormat::Qcow2, &o).args(Path::new("a"), Path::new("b"), false);
        assert_eq!(
            a.join(" "),
            "convert -f raw -O qcow2 -W -o cluster_size=2M a b"
        );
        let a = convert_options(OutputFormat::Vmdk, &o).args(Path::new("a"), Path::new("b"), false);
        assert!(
            a.join(" ")
                .contains("subformat=streamOptimized,cluster_size=2M")
        );
    }

    #[test]
    fn tar_args_are_reproducible() {
        let a = tar_args(Path::new("/t"), Path::new("/o.tar"), true, Some(5)).join(" ");
        assert!(
            a.contains("--sort=name") && a.contains("--mtime=@5 --clamp-mtime"),
            "{a}"
        );
        assert!(a.contains("gzip -n"), "{a}");
    }
}
