//! Check that the kernel's partition parser sees what `diskforge-part` wrote: an MBR image
//! with logical partitions and a GPT image are attached with `losetup -P`, and each
//! `/sys/block/loopN/loopNpK/{start,size}` is compared with `diskforge_part::partitions`.
//!
//! Needs root and a kernel that scans loop partitions (the `cargo xtask vm-test` VM; this
//! host's kernel makes no `loopNpK`). Exits non-zero with the first difference.
//!
//! `cargo run -p diskforge-part --example kernel_view [SCRATCH_DIR]`

use std::path::{Path, PathBuf};
use std::time::Duration;

use diskforge_cmd::Cmd;
use diskforge_part::{Flag, Label, Layout, PartSpec, WriteOptions};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn layouts() -> Vec<(&'static str, Layout)> {
    let mut mbr = Layout::new(Label::Mbr);
    mbr.partitions = vec![
        PartSpec::new("boot", "8MiB").with_flag(Flag::Boot),
        PartSpec::new("swap", "8MiB").with_type("8200"),
        PartSpec::new("l1", "8MiB").with_flag(Flag::Logical),
        PartSpec::new("l2", "8MiB"),
        PartSpec::new("l3", "rest"),
    ];
    let mut gpt = Layout::new(Label::Gpt);
    gpt.partitions = vec![
        PartSpec::new("ESP", "8MiB").with_type("EF00"),
        PartSpec::new("a", "30%"),
        PartSpec::new("b", "rest").with_type("8E00"),
    ];
    vec![("mbr", mbr), ("gpt", gpt)]
}

/// One sysfs value of a partition, in 512-byte units as the kernel reports them.
fn sysfs(dev: &str, n: u32, what: &str) -> Res<u64> {
    let name = dev.trim_start_matches("/dev/");
    let path = PathBuf::from(format!("/sys/block/{name}/{name}p{n}/{what}"));
    for _ in 0..100 {
        if let Ok(s) = std::fs::read_to_string(&path) {
            return Ok(s.trim().parse()?);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("{}: the kernel made no partition {n}", path.display()).into())
}

fn check(img: &Path) -> Res<()> {
    let parts = diskforge_part::partitions(img)?;
    let dev = Cmd::new("losetup")
        .args(["-P", "-f", "--show"])
        .arg(img)
        .read()?;
    let res = (|| -> Res<()> {
        for p in &parts {
            let (start, size) = (
                sysfs(&dev, p.number, "start")?,
                sysfs(&dev, p.number, "size")?,
            );
            if (start * 512, size * 512) != (p.start_bytes, p.size_bytes) {
                return Err(format!(
                    "{dev}p{}: kernel says {} + {} bytes, we wrote {} + {}",
                    p.number,
                    start * 512,
                    size * 512,
                    p.start_bytes,
                    p.size_bytes
                )
                .into());
            }
        }
        Ok(())
    })();
    Cmd::new("losetup").arg("-d").arg(&dev).run()?;
    res?;
    println!(
        "{}: kernel agrees on {} partitions",
        img.display(),
        parts.len()
    );
    Ok(())
}

fn main() -> Res<()> {
    let base = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new()
        .prefix("kernel-view-")
        .tempdir_in(base)?;
    for (name, layout) in layouts() {
        let img = dir.path().join(format!("{name}.img"));
        diskforge_part::create(
            &img,
            &layout,
            &WriteOptions {
                size: Some(64 << 20),
            },
        )?;
        check(&img)?;
    }
    Ok(())
}
