//! GPT and MBR partition tables (work in progress: see the issue that owns this crate).
