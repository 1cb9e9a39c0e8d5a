//! VM tests for the iso area. Filled in by the issue that owns it.

use libtest_mimic::Trial;

/// This module's tests.
pub fn tests() -> Vec<Trial> {
    Vec::new()
}
