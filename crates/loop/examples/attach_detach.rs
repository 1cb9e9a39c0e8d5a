//! Attach and detach a file N times in-process and print the elapsed time (used by
//! `cargo xtask bench loop`).
//!
//! Usage: `attach_detach FILE N` (needs root). Prints `cycles=N elapsed_s=S per_s=R`.

use diskforge_loop::{AttachOptions, LoopDevice};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let file = args.next().ok_or("usage: attach_detach FILE N")?;
    let n: u32 = args.next().ok_or("usage: attach_detach FILE N")?.parse()?;
    let opts = AttachOptions::new();
    let start = std::time::Instant::now();
    for _ in 0..n {
        let dev = LoopDevice::attach(&file, &opts)?;
        dev.detach()?;
    }
    let s = start.elapsed().as_secs_f64();
    println!("cycles={n} elapsed_s={s:.4} per_s={:.1}", f64::from(n) / s);
    Ok(())
}
