//! Convert an image and print its info: `cargo run -p qemu-img-cmd --example convert -- IN OUT qcow2`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1);
    let (Some(src), Some(dst)) = (
        args.next().map(PathBuf::from),
        args.next().map(PathBuf::from),
    ) else {
        return Err("usage: convert IN OUT [FORMAT]".into());
    };
    let format = args
        .next()
        .map(|f| f.to_string_lossy().parse())
        .transpose()?
        .unwrap_or(qemu_img_cmd::Format::Qcow2);
    qemu_img_cmd::convert(&src, &dst, &qemu_img_cmd::ConvertOptions::to(format), |p| {
        eprint!("\r{p:5.1}%")
    })?;
    eprintln!();
    let info = qemu_img_cmd::info(&dst, Some(format))?;
    println!("{}", serde_json::to_string_pretty(&info)?);
    Ok(())
}
