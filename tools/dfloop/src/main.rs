//! Attach, detach and list loop devices (work in progress).
fn main() {}
