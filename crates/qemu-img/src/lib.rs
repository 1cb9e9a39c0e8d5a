//! qemu-img over its CLI (work in progress: see the issue that owns this crate).
