//! Inspect and remaster bootable ISO images (work in progress).
fn main() {}
