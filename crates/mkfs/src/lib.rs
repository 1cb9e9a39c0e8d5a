//! Filesystem creation and population (work in progress: see the issue that owns this crate).
