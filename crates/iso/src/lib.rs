//! ISO 9660 inspect and remaster (work in progress: see the issue that owns this crate).
