//! Squash layer directories or tarballs (base first) into one layer tarball, without mounting.
//!
//! `cargo run -p diskforge-layers --example squash -- STORE OUT.tar LAYER...`

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(store), Some(out)) = (args.next(), args.next()) else {
        return Err("usage: squash STORE OUT.tar LAYER...".into());
    };
    let store = diskforge_layers::Store::open(store)?;
    let mut layers = Vec::new();
    for spec in args {
        layers.extend(store.resolve(&spec)?.into_iter().map(|l| l.path));
    }
    let out = std::path::PathBuf::from(out);
    let opts = diskforge_layers::TarOptions {
        compression: diskforge_layers::Compression::from_path(&out),
        clamp_mtime: diskforge_layers::source_date_epoch(),
        overwrite: true,
    };
    let stats = diskforge_layers::squash(&layers, &out, opts)?;
    println!(
        "{}: {} entries, diff_id {}",
        out.display(),
        stats.entries,
        stats.diff_id
    );
    Ok(())
}
