//! Stack, run, commit, diff and squash overlay layers (work in progress).
fn main() {}
