//! Create and show GPT/MBR partition tables (work in progress).
fn main() {}
