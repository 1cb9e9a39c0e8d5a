//! Loop devices: attach, detach, list, partitions; guard (work in progress: see the issue that owns this crate).
