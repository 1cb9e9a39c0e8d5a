//! Plan a GPT layout, write it to an image file and print each partition's byte range.
//!
//! `cargo run -p diskforge-part --example layout -- /var/tmp/disk.img`

use diskforge_part::{Label, Layout, PartSpec, WriteOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args_os().nth(1).ok_or("usage: layout IMAGE")?;
    let path = std::path::Path::new(&path);
    let mut layout = Layout::new(Label::Gpt);
    layout
        .partitions
        .push(PartSpec::new("ESP", "512MiB").with_type("EF00"));
    layout
        .partitions
        .push(PartSpec::new("root", "rest").with_type("8304"));
    // Fixed UUIDs make the image reproducible.
    layout.seed_uuids("example");

    let plan = diskforge_part::plan(&layout, 1 << 30)?;
    println!("{}", serde_json::to_string_pretty(&plan)?);

    let table = diskforge_part::create(
        path,
        &layout,
        &WriteOptions {
            size: Some(1 << 30),
        },
    )?;
    for p in &table.partitions {
        println!(
            "{} {:?}: offset {} size {}",
            p.number, p.name, p.start_bytes, p.size_bytes
        );
    }
    Ok(())
}
