//! Make a populated filesystem image without mounting:
//! `cargo run -p diskforge-mkfs --example populate -- ext4 out.img 256M ./tree`.
//! Honours `SOURCE_DATE_EPOCH` for reproducible output.

use diskforge_mkfs::{MkfsOptions, Target, mkfs, source_date_epoch_from_env};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let [fs, image, size, dir] = a.as_slice() else {
        return Err("usage: populate TYPE IMAGE SIZE_MIB DIR".into());
    };
    let mut o = MkfsOptions::new(fs.parse()?);
    o.populate_from = Some(dir.into());
    o.source_date_epoch = source_date_epoch_from_env();
    let mib: u64 = size.trim_end_matches(['M', 'm']).parse()?;
    let target = Target::File {
        path: image.into(),
        size: Some(mib << 20),
    };
    let report = mkfs(&o, &target)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
