//! Mount, bind, overlay and unmount (work in progress).
fn main() {}
