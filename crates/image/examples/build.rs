//! Build the embedded default image (`busybox vm block-device-efi` → qcow2) and boot it.
//!
//! `cargo run -p diskforge-image --example build -- OUT_NAME`

use diskforge_image::{BootCheck, BuildRequest, OutputFormat, build};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let name = std::env::args().nth(1).unwrap_or_else(|| "image".into());
    let mut req = BuildRequest::new(["busybox", "vm", "block-device-efi"], name);
    req.formats = vec![OutputFormat::Qcow2];
    req.boot_check = Some(BootCheck::default());
    let report = build(&req, &mut |ev| eprintln!("{ev:?}"))?;
    for o in &report.outputs {
        println!("{} {} bytes", o.path.display(), o.bytes);
    }
    for b in &report.boots {
        println!("{} booted in {:.1} s", b.firmware, b.seconds);
    }
    Ok(())
}
