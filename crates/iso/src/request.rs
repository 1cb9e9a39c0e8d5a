//! What a caller asks for: the file [`Edit`]s, the [`Request`] around them and the output
//! [`Mode`]; and the progress [`Event`]s it hears. Plain data, checked against the image
//! later (`resolve`).

use std::path::PathBuf;

use crate::iso9660::normalize;
use crate::{Error, Result};

/// How the output is produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Patch if it fits, else direct.
    Auto,
    /// Rewrite bytes in place (or in a copy, with `-o`).
    Patch,
    /// xorriso `-boot_image any replay`, no mount.
    Direct,
    /// Loop mount + overlay + rebuild (root, kernel iso9660).
    Overlay,
    /// Loop mount + bind mount of each new file + rebuild (root, kernel iso9660).
    Bind,
    /// Extract everything, edit, rebuild (the conventional route).
    Copy,
}

impl Mode {
    /// Every mode's name.
    pub const NAMES: &[&str] = &["auto", "patch", "direct", "overlay", "bind", "copy"];
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Auto => "auto",
            Mode::Patch => "patch",
            Mode::Direct => "direct",
            Mode::Overlay => "overlay",
            Mode::Bind => "bind",
            Mode::Copy => "copy",
        })
    }
}

impl std::str::FromStr for Mode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "auto" => Mode::Auto,
            "patch" => Mode::Patch,
            "direct" => Mode::Direct,
            "overlay" => Mode::Overlay,
            "bind" => Mode::Bind,
            "copy" => Mode::Copy,
            _ => {
                return Err(Error::BadValue {
                    what: "mode",
                    value: s.into(),
                    reason: format!("one of {}", Mode::NAMES.join(", ")),
                });
            }
        })
    }
}

/// One file edit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Add a new file (`--add SRC:DEST`).
    Add {
        /// Local file.
        src: PathBuf,
        /// Path in the ISO.
        dest: String,
    },
    /// Replace an existing file (`--replace SRC:DEST`).
    Replace {
        /// Local file.
        src: PathBuf,
        /// Path in the ISO.
        dest: String,
    },
    /// Remove a file or directory (`--remove DEST`).
    Remove {
        /// Path in the ISO.
        dest: String,
    },
}

impl Edit {
    /// Parse `SRC:DEST` (split at the last `:`) for `--add`/`--replace`.
    pub fn parse_pair(flag: &'static str, value: &str) -> Result<(PathBuf, String)> {
        let bad = |reason: &str| Error::BadValue {
            what: flag,
            value: value.into(),
            reason: reason.into(),
        };
        let (src, dest) = value
            .rsplit_once(':')
            .ok_or_else(|| bad("expected SRC:DEST"))?;
        if src.is_empty() {
            return Err(bad("SRC is empty"));
        }
        if dest.trim_matches('/').is_empty() {
            return Err(bad("DEST is empty"));
        }
        Ok((PathBuf::from(src), normalize(dest)))
    }
}

/// What to do.
#[derive(Debug, Clone)]
pub struct Request {
    /// The input image.
    pub input: PathBuf,
    /// The output image; `None` edits the input in place (patch mode only).
    pub output: Option<PathBuf>,
    /// File edits, in order.
    pub edits: Vec<Edit>,
    /// New volume id (ids in boot configs follow).
    pub volid: Option<String>,
    /// Kickstart file to add at the root and reference from every boot entry.
    pub kickstart: Option<PathBuf>,
    /// Preseed file to add at the root and reference from every boot entry.
    pub preseed: Option<PathBuf>,
    /// Extra kernel arguments for every boot entry.
    pub kernel_args: Vec<String>,
    /// How to produce the output.
    pub mode: Mode,
    /// Implant an isomd5sum MD5 into the output.
    pub implant_md5: bool,
    /// Resolve the edits and choose the mode, then stop: nothing is written (`--dry-run`).
    pub dry_run: bool,
    /// Flush the output to disk before publishing it: `fsync` of the file before the rename
    /// that publishes it, then of its directory (in place: of the edited file). Default true;
    /// `false` (`--no-sync`) leaves the bytes to the page cache, as `cp` does.
    pub sync: bool,
    /// Write the image even where a boot file keeps naming the old volume id after
    /// `--volid` (a signed GRUB binary, a built-in config without room), with a warning.
    /// Default false: refuse, naming the file.
    pub force: bool,
    /// Set to a non-zero value (a signal number) to stop the run: it stops within a second,
    /// removes its temporary files and fails with [`crate::Error::Interrupted`]. Default
    /// none.
    pub cancel: Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>,
}

impl Request {
    /// A request that changes nothing yet.
    pub fn new(input: impl Into<PathBuf>) -> Self {
        Request {
            input: input.into(),
            output: None,
            edits: Vec::new(),
            volid: None,
            kickstart: None,
            preseed: None,
            kernel_args: Vec::new(),
            mode: Mode::Auto,
            implant_md5: false,
            dry_run: false,
            sync: true,
            force: false,
            cancel: None,
        }
    }
}

/// Progress events for long steps.
#[derive(Debug, Clone)]
pub enum Event<'a> {
    /// A step starts.
    Step(&'a str),
    /// Bytes done of a total in the current step.
    Bytes(u64, u64),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_and_modes() {
        assert_eq!(
            Edit::parse_pair("--add", "a/b.cfg:/x/y.cfg").unwrap(),
            (PathBuf::from("a/b.cfg"), "/x/y.cfg".to_owned())
        );
        let e = Edit::parse_pair("--add", "nocolon")
            .unwrap_err()
            .to_string();
        assert!(e.contains("nocolon"), "{e}");
        assert!(Edit::parse_pair("--add", "x:/").is_err());
        assert!(Edit::parse_pair("--add", ":/y").is_err());
        assert_eq!("direct".parse::<Mode>().unwrap(), Mode::Direct);
        assert!(
            "fast"
                .parse::<Mode>()
                .unwrap_err()
                .to_string()
                .contains("fast")
        );
    }
}
