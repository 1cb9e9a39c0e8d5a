//! The kernel routes of the seed: loop-mount the ISO read-only and rebuild from the mounted
//! tree, with the edits in an overlay upper dir (`overlay`) or bind-mounted over the
//! read-only mount one file at a time (`bind`). They need root and iso9660 in the kernel, so
//! they are tested in the VM (`vm-tests/src/iso.rs`).

use std::path::Path;

use crate::inspect::Inspection;
use crate::remaster::{Changes, Mode};
use crate::{Error, Result};

/// Run `mode` (overlay or bind): mount, apply `changes`, rebuild into `output`, unmount.
pub fn run(
    mode: Mode,
    input: &Path,
    insp: &Inspection,
    output: &Path,
    changes: &Changes,
    scratch: &Path,
) -> Result<()> {
    let _ = (input, insp, output, changes, scratch);
    Err(Error::ModeUnavailable {
        mode: mode.to_string(),
        reason: "not implemented yet".into(),
    })
}
