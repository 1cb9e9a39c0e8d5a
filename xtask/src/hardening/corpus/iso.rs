//! Corpus cases for format `iso` (see `hardening::corpus`).

use anyhow::Result;

use super::Case;
use crate::hardening::Ctx;

/// The cases of this format.
pub fn cases(ctx: &Ctx) -> Result<Vec<Case>> {
    let _ = ctx;
    anyhow::bail!("corpus format iso is not written yet")
}
