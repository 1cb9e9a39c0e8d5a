//! `qemu-img` over its command line: `info`, `create`, `convert`, `resize`, `check`,
//! `measure` and `compare`, with JSON output parsed into typed structs and `convert -p`
//! progress turned into a callback.
//!
//! It follows the `qemu-img(1)` manual of QEMU 7.2 (the version Debian 12 ships) and asks for
//! `--output=json` wherever the subcommand has it. The structs below name the exact JSON keys
//! qemu-img prints; unknown keys are ignored so newer versions still parse.
//!
//! It deliberately does not open image files itself (no qcow2 parser), does not talk QMP or
//! NBD, and never prints: long work reports through a progress callback.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use diskforge_cmd::Cmd;
use serde::{Deserialize, Serialize};

/// The program this crate runs.
const QEMU_IMG: &str = "qemu-img";

/// Exit status of `qemu-img check` when the image has corruptions.
const CHECK_EXIT_CORRUPT: i32 = 2;
/// Exit status of `qemu-img check` when the image only leaks clusters.
const CHECK_EXIT_LEAKS: i32 = 3;
/// Exit status of `qemu-img check` when the format cannot be checked (raw, vpc…).
const CHECK_EXIT_UNSUPPORTED: i32 = 63;

/// Errors from this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// qemu-img failed (or is missing).
    #[error("qemu-img {op} {}", path.display())]
    Run {
        /// The subcommand (`info`, `convert`…).
        op: &'static str,
        /// The image the command was about.
        path: PathBuf,
        /// What the runner reported (boxed: it carries stderr and stdout).
        #[source]
        source: Box<diskforge_cmd::Error>,
    },
    /// qemu-img printed JSON we could not parse.
    #[error("parsing qemu-img {op} JSON for {}", path.display())]
    Parse {
        /// The subcommand.
        op: &'static str,
        /// The image.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The image's format has nothing `qemu-img check` can examine: raw images have no
    /// metadata at all; others (vpc…) have no checker in qemu-img (its exit status 63).
    #[error("{}", unsupported_message(path, format))]
    CheckUnsupported {
        /// The image.
        path: PathBuf,
        /// Its format, as given or as `qemu-img info` detected it.
        format: String,
    },
    /// The destination of [`convert_into_place`] exists already.
    #[error("{}: exists already (remove it first)", path.display())]
    Exists {
        /// The destination.
        path: PathBuf,
    },
    /// Renaming the finished temporary output into place failed.
    #[error("renaming {} to {}", from.display(), to.display())]
    Rename {
        /// The temporary output.
        from: PathBuf,
        /// The destination.
        to: PathBuf,
        /// The OS error.
        #[source]
        source: rustix::io::Errno,
    },
    /// An unknown image format name.
    #[error("unknown image format {0:?} (one of raw, qcow2, vmdk, vhdx, vpc)")]
    UnknownFormat(String),
    /// A size string that does not parse (the grammar is diskforge-size's).
    #[error(transparent)]
    InvalidSize(#[from] diskforge_size::SizeError),
    /// A step failed on purpose (fault-injection builds only, see `diskforge-fault`).
    #[error(transparent)]
    Injected(#[from] diskforge_fault::Injected),
}

fn unsupported_message(path: &Path, format: &str) -> String {
    if format == "raw" {
        format!(
            "{} is a raw image: raw images have no metadata to check (check the filesystems \
             inside instead)",
            path.display()
        )
    } else {
        format!(
            "{} is a {format} image: qemu-img has no check for {format}",
            path.display()
        )
    }
}

/// Formats `qemu-img check` can examine (QEMU 7.2: the drivers with a `bdrv_co_check`).
pub const CHECKABLE_FORMATS: [&str; 6] = ["qcow2", "qed", "vdi", "vhdx", "vmdk", "parallels"];

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The image formats diskforge writes. qemu-img reads more; [`ImageInfo::format`] is a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Raw bytes.
    Raw,
    /// QEMU copy-on-write v2/v3.
    Qcow2,
    /// VMware disk (monolithic sparse by default).
    Vmdk,
    /// Hyper-V VHDX.
    Vhdx,
    /// Virtual PC / Hyper-V VHD (qemu-img calls it `vpc`; `vhd` is accepted when parsing).
    Vpc,
}

impl Format {
    /// The name qemu-img uses (`-f`/`-O`).
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vmdk => "vmdk",
            Format::Vhdx => "vhdx",
            Format::Vpc => "vpc",
        }
    }

    /// Whether `convert -c` (compressed clusters) is supported for this output format.
    pub fn supports_compression(self) -> bool {
        matches!(self, Format::Qcow2 | Format::Vmdk)
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Format {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "raw" | "img" => Format::Raw,
            "qcow2" => Format::Qcow2,
            "vmdk" => Format::Vmdk,
            "vhdx" => Format::Vhdx,
            "vpc" | "vhd" => Format::Vpc,
            _ => return Err(Error::UnknownFormat(s.to_owned())),
        })
    }
}

/// One image as `qemu-img info --output=json` describes it (QEMU 7.2 keys).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ImageInfo {
    /// `filename`: the path as qemu-img opened it.
    pub filename: String,
    /// `format`: `raw`, `qcow2`, `vmdk`, `vhdx`, `vpc`, …
    pub format: String,
    /// `virtual-size`: the guest-visible size in bytes.
    pub virtual_size: u64,
    /// `actual-size`: bytes allocated on the host, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual_size: Option<u64>,
    /// `cluster-size`, for formats that have clusters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_size: Option<u64>,
    /// `dirty-flag`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirty_flag: Option<bool>,
    /// `encrypted`, when the format reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted: Option<bool>,
    /// `backing-filename`: the backing file as stored in the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backing_filename: Option<String>,
    /// `full-backing-filename`: the backing file resolved against the image's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_backing_filename: Option<String>,
    /// `backing-filename-format`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backing_filename_format: Option<String>,
    /// `format-specific`: per-format details (qcow2 compat level, vmdk extents…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format_specific: Option<FormatSpecific>,
}

/// `format-specific` in `qemu-img info` JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FormatSpecific {
    /// `type`: the format the data belongs to.
    #[serde(rename = "type")]
    pub kind: String,
    /// `data`: kept as JSON, since its keys differ per format and per QEMU version.
    pub data: serde_json::Value,
}

impl ImageInfo {
    /// The qcow2 `compat` level (`"1.1"` = v3), when this is a qcow2 image.
    pub fn qcow2_compat(&self) -> Option<&str> {
        let fs = self.format_specific.as_ref()?;
        (fs.kind == "qcow2").then(|| fs.data.get("compat")?.as_str())?
    }
}

/// Parse the output of `qemu-img info --output=json`.
pub fn parse_info(json: &str) -> serde_json::Result<ImageInfo> {
    serde_json::from_str(json)
}

/// Parse the output of `qemu-img info --output=json --backing-chain` (top image first).
pub fn parse_backing_chain(json: &str) -> serde_json::Result<Vec<ImageInfo>> {
    serde_json::from_str(json)
}

fn info_cmd(path: &Path, format: Option<Format>) -> Cmd {
    let mut c = Cmd::new(QEMU_IMG).args(["info", "--output=json"]);
    if let Some(f) = format {
        c = c.args(["-f", f.as_str()]);
    }
    c.arg(path)
}

fn run_json<T: serde::de::DeserializeOwned>(op: &'static str, path: &Path, cmd: Cmd) -> Result<T> {
    let out = cmd.run().map_err(|source| Error::Run {
        op,
        path: path.to_owned(),
        source: Box::new(source),
    })?;
    serde_json::from_slice(&out.stdout).map_err(|source| Error::Parse {
        op,
        path: path.to_owned(),
        source,
    })
}

/// `qemu-img info --output=json [-f FORMAT] PATH`.
pub fn info(path: &Path, format: Option<Format>) -> Result<ImageInfo> {
    run_json("info", path, info_cmd(path, format))
}

/// `qemu-img info --output=json --backing-chain PATH`: the image and every backing file,
/// top first.
pub fn backing_chain(path: &Path) -> Result<Vec<ImageInfo>> {
    run_json("info", path, info_cmd(path, None).arg("--backing-chain"))
}

/// What `create` makes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateOptions {
    /// Output format.
    pub format: Format,
    /// Virtual size in bytes. May be `None` only with a backing file (then it inherits).
    pub size: Option<u64>,
    /// A backing file (`-b`) and its format (`-F`, required by QEMU ≥ 6.1 for safety).
    pub backing: Option<(PathBuf, Format)>,
    /// Extra `-o key=value` options (`cluster_size=2M`, `subformat=streamOptimized`…).
    pub options: Vec<String>,
}

impl CreateOptions {
    /// A `format` image of `size` bytes, no backing file, no options.
    pub fn new(format: Format, size: u64) -> Self {
        CreateOptions {
            format,
            size: Some(size),
            backing: None,
            options: Vec::new(),
        }
    }

    /// The argv after `qemu-img` for creating `path`.
    pub fn args(&self, path: &Path) -> Vec<String> {
        let mut a = vec!["create".to_owned(), "-q".to_owned(), "-f".to_owned()];
        a.push(self.format.as_str().to_owned());
        if let Some((file, fmt)) = &self.backing {
            a.extend(["-b".to_owned(), file.display().to_string()]);
            a.extend(["-F".to_owned(), fmt.as_str().to_owned()]);
        }
        if !self.options.is_empty() {
            a.extend(["-o".to_owned(), self.options.join(",")]);
        }
        a.push(path.display().to_string());
        if let Some(s) = self.size {
            a.push(s.to_string());
        }
        a
    }
}

/// `qemu-img create`.
pub fn create(path: &Path, opts: &CreateOptions) -> Result<()> {
    diskforge_fault::point("qemu-img.create")?;
    Cmd::new(QEMU_IMG)
        .args(opts.args(path))
        .run()
        .map_err(|source| Error::Run {
            op: "create",
            path: path.to_owned(),
            source: Box::new(source),
        })?;
    Ok(())
}

/// How `convert` writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvertOptions {
    /// Input format (`-f`); probed when `None` (probing raw is refused by qemu-img for writes
    /// only, so reading is fine, but giving it is safer).
    pub source_format: Option<Format>,
    /// Output format (`-O`).
    pub target_format: Format,
    /// `-c`: compress the output (qcow2 and vmdk only).
    pub compress: bool,
    /// `-W`: allow out-of-order writes (faster, the output is only valid once done).
    pub out_of_order: bool,
    /// `-m N`: parallel coroutines (1–16; qemu-img's default is 8).
    pub coroutines: Option<u8>,
    /// Extra `-o key=value` options for the output (`force_size=on` for vpc keeps the exact
    /// size instead of rounding to CHS geometry).
    pub options: Vec<String>,
}

impl ConvertOptions {
    /// Convert to `target` with default settings.
    pub fn to(target: Format) -> Self {
        ConvertOptions {
            source_format: None,
            target_format: target,
            compress: false,
            out_of_order: false,
            coroutines: None,
            options: Vec::new(),
        }
    }

    /// The argv after `qemu-img`. `progress` adds `-p`.
    pub fn args(&self, src: &Path, dst: &Path, progress: bool) -> Vec<String> {
        let mut a = vec!["convert".to_owned()];
        if progress {
            a.push("-p".to_owned());
        }
        if let Some(f) = self.source_format {
            a.extend(["-f".to_owned(), f.as_str().to_owned()]);
        }
        a.extend(["-O".to_owned(), self.target_format.as_str().to_owned()]);
        if self.compress {
            a.push("-c".to_owned());
        }
        if self.out_of_order {
            a.push("-W".to_owned());
        }
        if let Some(m) = self.coroutines {
            a.extend(["-m".to_owned(), m.to_string()]);
        }
        if !self.options.is_empty() {
            a.extend(["-o".to_owned(), self.options.join(",")]);
        }
        a.push(src.display().to_string());
        a.push(dst.display().to_string());
        a
    }
}

/// Parse one `qemu-img convert -p` meter line, `    (42.17/100%)`, into a percentage.
pub fn parse_progress(line: &str) -> Option<f64> {
    let inner = line.trim().strip_prefix('(')?.strip_suffix("/100%)")?;
    let p: f64 = inner.parse().ok()?;
    (0.0..=100.0).contains(&p).then_some(p)
}

/// `qemu-img convert -p`, calling `on_progress` with the percentage (0–100) as qemu-img
/// redraws its meter. Repeated values are not repeated.
pub fn convert(
    src: &Path,
    dst: &Path,
    opts: &ConvertOptions,
    mut on_progress: impl FnMut(f64),
) -> Result<()> {
    diskforge_fault::point("qemu-img.convert")?;
    let mut last = None;
    Cmd::new(QEMU_IMG)
        .args(opts.args(src, dst, true))
        .stream_stdout(|line| {
            if let Some(p) = parse_progress(line)
                && last != Some(p)
            {
                last = Some(p);
                on_progress(p);
            }
        })
        .map_err(|source| Error::Run {
            op: "convert",
            path: src.to_owned(),
            source: Box::new(source),
        })
}

/// Like [`convert`], but all-or-nothing: writes `.NAME.partial` beside `dst` and renames it
/// into place only when qemu-img succeeded, never overwriting (`renameat2(RENAME_NOREPLACE)`;
/// an existing `dst` gives [`Error::Exists`]). The partial file is removed on failure.
///
/// Not for vmdk subformats that write extra extent files named after the output
/// (`monolithicFlat`, `twoGbMaxExtent*`): use [`convert`] for those.
pub fn convert_into_place(
    src: &Path,
    dst: &Path,
    opts: &ConvertOptions,
    on_progress: impl FnMut(f64),
) -> Result<()> {
    if dst.exists() {
        return Err(Error::Exists {
            path: dst.to_owned(),
        });
    }
    let name = dst
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dst.with_file_name(format!(".{name}.partial"));
    let res = convert(src, &tmp, opts, on_progress).and_then(|()| {
        diskforge_fault::point("qemu-img.rename")?;
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            &tmp,
            rustix::fs::CWD,
            dst,
            rustix::fs::RenameFlags::NOREPLACE,
        )
        .map_err(|source| Error::Rename {
            from: tmp.clone(),
            to: dst.to_owned(),
            source,
        })
    });
    if res.is_err() {
        // Best effort: qemu-img may have failed before creating it.
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// A new size for `resize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NewSize {
    /// Exactly this many bytes (shrinking passes `--shrink`).
    Absolute(u64),
    /// Grow by this many bytes (`+N`).
    Grow(u64),
    /// Shrink by this many bytes (`--shrink -N`).
    Shrink(u64),
}

impl FromStr for NewSize {
    type Err = Error;
    /// `10GiB`, `+1GiB`, `-512MiB`: a sign, then a size in the diskforge-size grammar (where
    /// bare `G` is 10^9). qemu-img gets the byte count, never a re-spelled unit.
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim();
        let bytes = |r: &str| {
            diskforge_size::parse(r)
                .map(diskforge_size::Size::bytes)
                // Name the whole argument, sign included.
                .map_err(|e| diskforge_size::SizeError {
                    input: s.to_owned(),
                    reason: e.reason,
                })
        };
        Ok(if let Some(r) = t.strip_prefix('+') {
            NewSize::Grow(bytes(r)?)
        } else if let Some(r) = t.strip_prefix('-') {
            NewSize::Shrink(bytes(r)?)
        } else {
            NewSize::Absolute(bytes(t)?)
        })
    }
}

/// The argv after `qemu-img` for `resize`. `shrink_ok` allows an absolute size below the
/// current one (`--shrink`); qemu-img refuses silently-destructive shrinks otherwise.
pub fn resize_args(
    path: &Path,
    format: Option<Format>,
    size: NewSize,
    shrink_ok: bool,
) -> Vec<String> {
    let mut a = vec!["resize".to_owned(), "-q".to_owned()];
    if let Some(f) = format {
        a.extend(["-f".to_owned(), f.as_str().to_owned()]);
    }
    if shrink_ok || matches!(size, NewSize::Shrink(_)) {
        a.push("--shrink".to_owned());
    }
    a.push(path.display().to_string());
    a.push(match size {
        NewSize::Absolute(n) => n.to_string(),
        NewSize::Grow(n) => format!("+{n}"),
        NewSize::Shrink(n) => format!("-{n}"),
    });
    a
}

/// `qemu-img resize`.
pub fn resize(path: &Path, format: Option<Format>, size: NewSize, shrink_ok: bool) -> Result<()> {
    diskforge_fault::point("qemu-img.resize")?;
    Cmd::new(QEMU_IMG)
        .args(resize_args(path, format, size, shrink_ok))
        .run()
        .map_err(|source| Error::Run {
            op: "resize",
            path: path.to_owned(),
            source: Box::new(source),
        })?;
    Ok(())
}

/// `qemu-img check --output=json` (QEMU 7.2 keys; counters it omits are 0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CheckReport {
    /// `filename`.
    pub filename: String,
    /// `format`.
    pub format: String,
    /// `check-errors`: errors that kept the check from completing.
    #[serde(default)]
    pub check_errors: u64,
    /// `corruptions`.
    #[serde(default)]
    pub corruptions: u64,
    /// `leaks`: clusters allocated but unused (harmless, wastes space).
    #[serde(default)]
    pub leaks: u64,
    /// `corruptions-fixed` (with `-r`).
    #[serde(default)]
    pub corruptions_fixed: u64,
    /// `leaks-fixed` (with `-r`).
    #[serde(default)]
    pub leaks_fixed: u64,
    /// `image-end-offset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_end_offset: Option<u64>,
    /// `total-clusters`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_clusters: Option<u64>,
    /// `allocated-clusters`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated_clusters: Option<u64>,
    /// `fragmented-clusters`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fragmented_clusters: Option<u64>,
    /// `compressed-clusters`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compressed_clusters: Option<u64>,
}

impl CheckReport {
    /// No corruptions, no leaks, no check errors.
    pub fn is_clean(&self) -> bool {
        self.check_errors == 0 && self.corruptions == 0 && self.leaks == 0
    }
}

/// Parse the output of `qemu-img check --output=json`.
pub fn parse_check(json: &str) -> serde_json::Result<CheckReport> {
    serde_json::from_str(json)
}

/// `qemu-img check --output=json`. The format is detected first with `qemu-img info` when
/// not given, and passed on with `-f`. A corrupt or leaking image is not an error: it returns
/// the report (qemu-img exits 2 or 3 and still prints it). A format with nothing to check
/// (raw, which has no metadata; vpc…; see [`CHECKABLE_FORMATS`]) gives
/// [`Error::CheckUnsupported`] naming the detected format.
pub fn check(path: &Path, format: Option<Format>) -> Result<CheckReport> {
    let format = match format {
        Some(f) => f.as_str().to_owned(),
        None => info(path, None)?.format,
    };
    let unsupported = || Error::CheckUnsupported {
        path: path.to_owned(),
        format: format.clone(),
    };
    if !CHECKABLE_FORMATS.contains(&format.as_str()) {
        return Err(unsupported());
    }
    let c = Cmd::new(QEMU_IMG).args(["check", "--output=json", "-f", &format]);
    let stdout = match c.arg(path).run() {
        Ok(out) => out.stdout,
        Err(e) => match (e.exit_status().and_then(|s| s.code()), &e) {
            (
                Some(CHECK_EXIT_CORRUPT | CHECK_EXIT_LEAKS),
                diskforge_cmd::Error::Failed { stdout, .. },
            ) => stdout.clone().into_bytes(),
            (Some(CHECK_EXIT_UNSUPPORTED), _) => return Err(unsupported()),
            _ => {
                return Err(Error::Run {
                    op: "check",
                    path: path.to_owned(),
                    source: Box::new(e),
                });
            }
        },
    };
    serde_json::from_slice(&stdout).map_err(|source| Error::Parse {
        op: "check",
        path: path.to_owned(),
        source,
    })
}

/// `qemu-img measure --output=json`: bytes a new image needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Measurement {
    /// `required`: bytes for the data in use (what a sparse convert writes).
    pub required: u64,
    /// `fully-allocated`: bytes if every cluster were allocated (preallocation=full).
    pub fully_allocated: u64,
    /// `bitmaps`: bytes for persistent dirty bitmaps (qcow2 only, when present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitmaps: Option<u64>,
}

/// What `measure` measures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MeasureInput<'a> {
    /// An existing image (converted to the target format).
    Image(&'a Path),
    /// A new empty image of this virtual size.
    Size(u64),
}

/// `qemu-img measure --output=json -O FORMAT (IMAGE | --size N)`.
pub fn measure(input: MeasureInput<'_>, target: Format) -> Result<Measurement> {
    let c = Cmd::new(QEMU_IMG).args(["measure", "--output=json", "-O", target.as_str()]);
    match input {
        MeasureInput::Image(p) => run_json("measure", p, c.arg(p)),
        MeasureInput::Size(n) => {
            run_json("measure", Path::new(""), c.args(["--size", &n.to_string()]))
        }
    }
}

/// `qemu-img compare A B`: whether the two images have the same guest-visible content
/// (formats may differ; with `strict` (`-s`) a size difference or a different allocation
/// status of a sector, e.g. zeroes stored vs. a hole, also counts).
pub fn compare(a: &Path, b: &Path, strict: bool) -> Result<bool> {
    let mut c = Cmd::new(QEMU_IMG).args(["compare", "-q"]);
    if strict {
        c = c.arg("-s");
    }
    match c.arg(a).arg(b).run() {
        Ok(_) => Ok(true),
        Err(e) if e.exit_status().and_then(|s| s.code()) == Some(1) => Ok(false),
        Err(source) => Err(Error::Run {
            op: "compare",
            path: a.to_owned(),
            source: Box::new(source),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_sizes_use_the_one_grammar() {
        let table = [
            ("512", NewSize::Absolute(512)),
            ("1KiB", NewSize::Absolute(1024)),
            ("2G", NewSize::Absolute(2_000_000_000)),
            ("2GiB", NewSize::Absolute(2 << 30)),
            ("+1.5GiB", NewSize::Grow(3 << 29)),
            ("-3MB", NewSize::Shrink(3_000_000)),
        ];
        for (s, want) in table {
            assert_eq!(s.parse::<NewSize>().ok(), Some(want), "{s}");
        }
        for bad in ["", "M", "1X", "+-1", "--1", "99999999PiB", "+"] {
            let e = bad.parse::<NewSize>().expect_err(bad).to_string();
            assert!(e.starts_with(&format!("invalid size {bad:?}")), "{e}");
        }
    }

    #[test]
    fn formats() {
        assert_eq!("vhd".parse::<Format>().ok(), Some(Format::Vpc));
        assert_eq!("QCOW2".parse::<Format>().ok(), Some(Format::Qcow2));
        assert!("qcow".parse::<Format>().is_err());
        assert!(Format::Qcow2.supports_compression() && !Format::Vhdx.supports_compression());
    }

    #[test]
    fn progress_lines() {
        assert_eq!(parse_progress("    (42.17/100%)"), Some(42.17));
        assert_eq!(parse_progress("(100.00/100%)"), Some(100.0));
        assert_eq!(parse_progress("qemu-img: warning"), None);
        assert_eq!(parse_progress("(142.00/100%)"), None);
    }

    #[test]
    fn argv() {
        let src = Path::new("a.raw");
        let dst = Path::new("b.qcow2");
        let mut o = ConvertOptions::to(Format::Qcow2);
        assert_eq!(
            o.args(src, dst, false).join(" "),
            "convert -O qcow2 a.raw b.qcow2"
        );
        o.source_format = Some(Format::Raw);
        o.compress = true;
        o.out_of_order = true;
        o.coroutines = Some(4);
        o.options = vec!["cluster_size=2M".into(), "compat=1.1".into()];
        assert_eq!(
            o.args(src, dst, true).join(" "),
            "convert -p -f raw -O qcow2 -c -W -m 4 -o cluster_size=2M,compat=1.1 a.raw b.qcow2"
        );
        let mut c = CreateOptions::new(Format::Qcow2, 1 << 30);
        c.backing = Some(("base.qcow2".into(), Format::Qcow2));
        assert_eq!(
            c.args(dst).join(" "),
            "create -q -f qcow2 -b base.qcow2 -F qcow2 b.qcow2 1073741824"
        );
        assert_eq!(
            resize_args(dst, None, "+1GiB".parse().unwrap(), false).join(" "),
            "resize -q b.qcow2 +1073741824"
        );
        assert_eq!(
            resize_args(dst, Some(Format::Raw), "-1MiB".parse().unwrap(), false).join(" "),
            "resize -q -f raw --shrink b.qcow2 -1048576"
        );
        assert_eq!(
            resize_args(dst, None, NewSize::Absolute(10), true).join(" "),
            "resize -q --shrink b.qcow2 10"
        );
    }
}
