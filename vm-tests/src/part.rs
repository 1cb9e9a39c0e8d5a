//! The kernel's partition parser agrees with `diskforge-part`: an MBR image with logical
//! partitions and a GPT image are attached with `losetup -P` (the VM kernel scans loop
//! partitions; the host's does not), and each `/sys/block/loopN/loopNpK/{start,size}` is
//! compared with `diskforge_part::partitions`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use diskforge_cmd::Cmd;
use diskforge_part::{Flag, Label, Layout, PartSpec, WriteOptions};
use libtest_mimic::Trial;

use crate::trial;

/// This module's tests.
pub fn tests() -> Vec<Trial> {
    vec![trial(
        "part::kernel_sees_what_we_wrote_mbr_logical_and_gpt",
        kernel_agrees,
    )]
}

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
fn sysfs(dev: &str, n: u32, what: &str) -> Result<u64> {
    let name = dev.trim_start_matches("/dev/");
    let path = PathBuf::from(format!("/sys/block/{name}/{name}p{n}/{what}"));
    for _ in 0..100 {
        if let Ok(s) = std::fs::read_to_string(&path) {
            return Ok(s.trim().parse()?);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{}: the kernel made no partition {n}", path.display())
}

fn check(img: &Path) -> Result<usize> {
    let parts = diskforge_part::partitions(img)?;
    // The loop crate's own minimal reader (used where no pN nodes exist) must agree too, for
    // every partition both list (the extended container's node is the kernel's 1 KiB stub).
    let ours = diskforge_loop::read_partition_table(img)?;
    let dev = Cmd::new("losetup")
        .args(["-P", "-f", "--show"])
        .arg(img)
        .read()?;
    let res = (|| -> Result<()> {
        for p in &parts {
            let kernel = (
                sysfs(&dev, p.number, "start")? * 512,
                sysfs(&dev, p.number, "size")? * 512,
            );
            if kernel != (p.start_bytes, p.size_bytes) {
                bail!(
                    "{dev}p{}: kernel says {} + {} bytes, we wrote {} + {}",
                    p.number,
                    kernel.0,
                    kernel.1,
                    p.start_bytes,
                    p.size_bytes
                );
            }
            let Some(e) = ours.iter().find(|e| e.number == p.number) else {
                bail!(
                    "{}: diskforge-loop's reader has no partition {}",
                    img.display(),
                    p.number
                );
            };
            if (e.start, e.size) != kernel {
                bail!(
                    "{dev}p{}: kernel {kernel:?}, diskforge-loop ({}, {})",
                    p.number,
                    e.start,
                    e.size
                );
            }
        }
        Ok(())
    })();
    Cmd::new("losetup").arg("-d").arg(&dev).run()?;
    res?;
    Ok(parts.len())
}

fn kernel_agrees() -> Result<()> {
    let dir = tempfile::tempdir()?;
    for (name, layout) in layouts() {
        let img = dir.path().join(format!("{name}.img"));
        diskforge_part::create(
            &img,
            &layout,
            &WriteOptions {
                size: Some(64 << 20),
            },
        )
        .with_context(|| format!("writing the {name} layout"))?;
        let n = check(&img)?;
        anyhow::ensure!(
            n == layout.partitions.len(),
            "{name}: {n} partitions read back"
        );
    }
    Ok(())
}
