//! LVM over the lvm2 CLI (work in progress: see the issue that owns this crate).
