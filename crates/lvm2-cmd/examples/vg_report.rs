//! Print the VGs and LVs lvm sees, as JSON: `cargo run -p lvm2-cmd --example vg_report [VG]`.
//! Add `--no-udev` first to use the udev-less configuration.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let lvm = if args.first().map(String::as_str) == Some("--no-udev") {
        args.remove(0);
        lvm2_cmd::Lvm::without_udev()
    } else {
        lvm2_cmd::Lvm::new()
    };
    let vg = args.first().map(String::as_str);
    let report = serde_json::json!({ "vgs": lvm.vgs(vg)?, "lvs": lvm.lvs(vg)? });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
