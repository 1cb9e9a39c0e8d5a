//! Disk image info, convert, create, resize, check (work in progress).
fn main() {}
