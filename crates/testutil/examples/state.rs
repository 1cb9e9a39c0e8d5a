//! Print the loop devices and mounts diskforge tests would compare before/after.
fn main() {
    let s = diskforge_testutil::KernelState::capture();
    for l in &s.loops {
        println!("loop  {l}");
    }
    println!("{} mounts", s.mounts.len());
}
