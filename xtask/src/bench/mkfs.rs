//! `cargo xtask bench mkfs`: populating an ext4 image from a directory tree rootless
//! (`dfimg mkfs ext4 --from DIR`, i.e. `mke2fs -d` through `diskforge-mkfs`) versus the
//! conventional way (`mke2fs`, `losetup`, `mount`, `cp -a`, `sync`, `umount`, `losetup -d`),
//! timed in one run and reported as a ratio. A 1 GiB tree (`--quick`: ~100 MiB) of mixed file
//! sizes; both sides end with `sync` and both images are checked with `e2fsck -fn` afterwards
//! (untimed). The loop side needs root; without it only the rootless side is timed.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use xshell::{Shell, cmd};

use crate::flags::BenchArgs;

/// Deterministic pseudo-random bytes (xorshift), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Write a tree of about `total` bytes: ~70 % in 1–4 MiB files, the rest in 4–64 KiB files,
/// 50 files per directory. Returns (files, bytes).
pub(super) fn make_tree(root: &Path, total: u64) -> Result<(u64, u64)> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut buf = vec![0u8; 4 << 20];
    for chunk in buf.chunks_mut(8) {
        let v = rng.next().to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
    let (mut files, mut bytes) = (0u64, 0u64);
    while bytes < total {
        let dir = root.join(format!("d{:04}", files / 50));
        if files % 50 == 0 {
            std::fs::create_dir_all(&dir)?;
        }
        let big = bytes < total * 7 / 10;
        let size = if big {
            (1 << 20) + rng.next() % (3 << 20)
        } else {
            (4 << 10) + rng.next() % (60 << 10)
        }
        .min(total - bytes) as usize;
        let off = (rng.next() % (1 << 20)) as usize;
        let mut f = std::fs::File::create(dir.join(format!("f{files:06}")))?;
        f.write_all(&buf[off..off + size.min(buf.len() - off)])?;
        if size > buf.len() - off {
            f.write_all(&buf[..size - (buf.len() - off)])?;
        }
        files += 1;
        bytes += size as u64;
    }
    Ok((files, bytes))
}

fn rootless(sh: &Shell, dfimg: &Path, tree: &Path, img: &Path, size: &str) -> Result<Duration> {
    let _ = std::fs::remove_file(img);
    let t = Instant::now();
    cmd!(sh, "{dfimg} mkfs ext4 {img} --size {size} --from {tree}")
        .quiet()
        .ignore_stdout()
        .run()?;
    cmd!(sh, "sync").run()?;
    Ok(t.elapsed())
}

fn loop_copy(sh: &Shell, tree: &Path, img: &Path, mnt: &Path, size: &str) -> Result<Duration> {
    let _ = std::fs::remove_file(img);
    let src = format!("{}/.", tree.display());
    let t = Instant::now();
    cmd!(sh, "truncate -s {size} {img}").run()?;
    cmd!(sh, "mke2fs -F -q -t ext4 {img}").run()?;
    let dev = cmd!(sh, "losetup --find --show {img}").read()?;
    let copied = (|| -> Result<()> {
        cmd!(sh, "mount {dev} {mnt}").run()?;
        let cp = cmd!(sh, "cp -a {src} {mnt}")
            .run()
            .and_then(|_| cmd!(sh, "sync").run());
        let um = cmd!(sh, "umount {mnt}").run();
        cp?;
        um?;
        Ok(())
    })();
    cmd!(sh, "losetup -d {dev}").run()?;
    copied?;
    Ok(t.elapsed())
}

/// Run this benchmark.
pub fn run(sh: &Shell, args: &BenchArgs) -> Result<()> {
    let root = crate::project_root();
    sh.change_dir(&root);
    cmd!(sh, "cargo build --release -q -p dfimg").run()?;
    let dfimg = crate::target_dir().join("release/dfimg");
    let total: u64 = if args.quick { 100 << 20 } else { 1 << 30 };
    let rounds = if args.quick { 1 } else { 3 };
    let is_root = cmd!(sh, "id -u").read()?.trim() == "0";

    let scratch = tempfile::Builder::new()
        .prefix("diskforge-bench-mkfs-")
        .tempdir_in("/var/tmp")?;
    let tree = scratch.path().join("tree");
    let t = Instant::now();
    let (files, bytes) = make_tree(&tree, total)?;
    cmd!(sh, "sync").run()?;
    eprintln!(
        "bench mkfs: tree of {files} files, {} MiB, written in {:.1?}",
        bytes >> 20,
        t.elapsed()
    );
    // Room for metadata and the journal.
    let size = format!("{}M", (bytes >> 20) * 3 / 2 + 128);
    let img_a = scratch.path().join("rootless.img");
    let img_b = scratch.path().join("loop.img");
    let mnt = scratch.path().join("mnt");
    std::fs::create_dir(&mnt)?;

    let (mut best_a, mut best_b) = (Duration::MAX, Duration::MAX);
    let mut rounds_seen = Vec::new();
    for _ in 0..rounds {
        if is_root {
            let b = loop_copy(sh, &tree, &img_b, &mnt, &size)?;
            rounds_seen.push(format!("loop {:.2}s", b.as_secs_f64()));
            best_b = best_b.min(b);
        }
        let a = rootless(sh, &dfimg, &tree, &img_a, &size)?;
        rounds_seen.push(format!("rootless {:.2}s", a.as_secs_f64()));
        best_a = best_a.min(a);
    }
    cmd!(sh, "e2fsck -fn {img_a}")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run()
        .context("e2fsck rootless.img")?;

    let mib = (bytes >> 20) as f64;
    println!(
        "bench mkfs: populate ext4 from a {} MiB tree ({files} files), best of {rounds}",
        bytes >> 20
    );
    println!("rounds (in order): {}", rounds_seen.join(", "));
    println!("{:<44} {:>9} {:>10}", "method", "seconds", "MiB/s");
    let a = best_a.as_secs_f64();
    println!(
        "{:<44} {:>9.2} {:>10.0}",
        "rootless: dfimg mkfs --from (mke2fs -d)",
        a,
        mib / a
    );
    if is_root {
        cmd!(sh, "e2fsck -fn {img_b}")
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .run()
            .context("e2fsck loop.img")?;
        let b = best_b.as_secs_f64();
        println!(
            "{:<44} {:>9.2} {:>10.0}",
            "loop: mke2fs+losetup+mount+cp -a+sync+umount",
            b,
            mib / b
        );
        ensure!(a > 0.0, "rootless side took no time");
        println!("ratio loop/rootless: {:.2}x", b / a);
    } else {
        println!("loop-mount side skipped: needs root");
    }
    Ok(())
}
