//! Mount an overlay of the given lower dirs (top first) on a mount point, list the merged
//! top level, and unmount.
//!
//! Usage: `overlay MOUNTPOINT LOWER LOWER [LOWER…]` (needs root).

use diskforge_mount::Overlay;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (target, lowers) = args
        .split_first()
        .ok_or("usage: overlay MOUNTPOINT LOWER LOWER…")?;
    let m = Overlay::new().lowers(lowers).mount(target)?;
    for e in std::fs::read_dir(m.target())? {
        println!("{}", e?.file_name().to_string_lossy());
    }
    m.teardown()?;
    Ok(())
}
