//! `cargo xtask bench blockdev`: `diskforge blockdev create` + `cleanup` of a disk populated
//! from an 800 MiB root tree (`--quick`: 100 MiB), three ways in one run:
//!
//! - the GPT + BIOS-boot + ESP + root example (`crates/blockdev/examples/configs/
//!   gpt-bios-esp-root.yaml`): the offline route versus the kernel route (`--kernel`: loop
//!   device, offset loops, mkfs on the loop devices);
//! - a whole-disk ext4 layout (dib's `local_loop` + `mkfs_root`), where dib's own
//!   `dib-block-device` works without device-mapper: offline, kernel, and dib (`init`,
//!   `create` = loop + mkfs + mount, `cp -a` of the tree + `sync` as disk-image-create does,
//!   `umount`, `cleanup`). dib runs from a venv (`DIB_VENV`, default
//!   `/var/tmp/blockdev-dib-venv`, made with `pip install diskimage-builder`; skipped with
//!   the reason when it is absent) with a `sudo` that just execs (we are root);
//! - dib on the partitioned layout once, to show why it is not timed there (it needs
//!   device-mapper/kpartx).
//!
//! Every timed run ends with `sync`; every image is checked afterwards (untimed) with
//! `e2fsck -fn` (its file count must cover the tree) and, for the partitioned one,
//! `sgdisk -v`. Ratios are against the offline route. Needs root for the kernel and dib
//! routes (without it only the offline route is timed).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use xshell::{Shell, cmd};

use crate::flags::BenchArgs;

const WHOLE_DISK: &str = "- local_loop:
    name: image0
- mkfs:
    name: mkfs_root
    base: image0
    type: ext4
    label: cloudimg-rootfs
    mount:
      mount_point: /
      fstab:
        options: \"defaults\"
        fsck-passno: 1
";

struct Ctx<'a> {
    sh: &'a Shell,
    bin: PathBuf,
    scratch: PathBuf,
    tree: PathBuf,
    files: u64,
    size: String,
}

impl Ctx<'_> {
    /// `create` + `cleanup` (+ `sync`), timed; then the image is checked and removed.
    fn ours(&self, config: &Path, kernel: bool, gpt: bool) -> Result<Duration> {
        let sh = self.sh;
        let (bin, tree, size) = (&self.bin, &self.tree, &self.size);
        let images = self.scratch.join("images");
        let state = self.scratch.join("state");
        let route: &[&str] = if kernel { &["--kernel"] } else { &[] };
        let t = Instant::now();
        cmd!(sh, "{bin} blockdev create --config {config} --image-size {size} --image-dir {images} --root {tree} --uuid-seed bench --state {state} {route...}")
            .quiet()
            .ignore_stdout()
            .run()?;
        cmd!(sh, "{bin} blockdev cleanup --state {state}").run()?;
        cmd!(sh, "sync").run()?;
        let took = t.elapsed();
        let image = images.join("image0.raw");
        let offset = if gpt {
            let out = cmd!(sh, "{bin} blockdev getval image-block-partition --config {config} --image-size {size} --image-dir {images} --root {tree}")
                .quiet()
                .read()?;
            // IMAGE@OFFSET+SIZE
            let at = out.rsplit_once('@').context("image-block-partition")?.1;
            let off = at.split_once('+').context("offset")?.0.to_owned();
            cmd!(sh, "sgdisk -v {image}")
                .quiet()
                .ignore_stdout()
                .run()?;
            off
        } else {
            "0".to_owned()
        };
        self.check_ext4(&format!("{}?offset={offset}", image.display()))?;
        // The tree got its etc/fstab from the build; the next run writes it again.
        let _ = std::fs::remove_file(tree.join("etc/fstab"));
        std::fs::remove_file(&image)?;
        Ok(took)
    }

    /// `e2fsck -fn` passes and counts at least the tree's files.
    fn check_ext4(&self, dev: &str) -> Result<()> {
        let out = cmd!(self.sh, "e2fsck -fn {dev}")
            .quiet()
            .ignore_stderr()
            .read()
            .with_context(|| format!("e2fsck -fn {dev}"))?;
        let used: u64 = out
            .split_whitespace()
            .find_map(|w| w.split_once('/').and_then(|(a, _)| a.parse().ok()))
            .context("e2fsck summary")?;
        ensure!(
            used >= self.files,
            "{dev}: {used} inodes for {} files",
            self.files
        );
        Ok(())
    }

    /// dib-block-device: init, create (loop + mkfs + mount), cp -a + sync, umount, cleanup.
    fn dib(&self, venv: &Path, config: &Path) -> Result<Duration> {
        let sh = self.sh;
        let d = self.scratch.join("dib");
        let build = d.join("build");
        let images = d.join("images");
        let mnt = build.join("mnt");
        std::fs::create_dir_all(&mnt)?;
        std::fs::create_dir_all(&images)?;
        let params = d.join("params.yaml");
        std::fs::write(
            &params,
            format!(
                "config: {}\nimage-dir: {}\nbuild-dir: {}\nimage-size: {}\nroot-label: \
                 cloudimg-rootfs\nroot-fs-type: ext4\nmount-base: {}\n",
                config.display(),
                images.display(),
                build.display(),
                self.size,
                mnt.display()
            ),
        )?;
        let py = venv.join("bin/python");
        let main =
            "import sys; from diskimage_builder.block_device.cmd import main; sys.exit(main())";
        let src = format!("{}/.", self.tree.display());
        let path = format!(
            "{}:{}",
            d.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let _env = sh.push_env("PATH", path);
        let t = Instant::now();
        let run = |sub: &str| {
            cmd!(sh, "{py} -c {main} --params {params} {sub}")
                .quiet()
                .ignore_stderr()
                .ignore_stdout()
                .run()
        };
        run("init")?;
        run("create")?;
        let copied = cmd!(sh, "cp -a {src} {mnt}")
            .run()
            .and_then(|_| cmd!(sh, "sync").run());
        run("umount")?;
        run("cleanup")?;
        copied?;
        let took = t.elapsed();
        let image = images.join("image0.raw");
        self.check_ext4(&image.display().to_string())?;
        std::fs::remove_file(&image)?;
        Ok(took)
    }

    /// dib on a partitioned layout: its last error line (it needs kpartx/device-mapper).
    fn dib_partitioned(&self, venv: &Path, config: &Path) -> Result<Option<String>> {
        let sh = self.sh;
        let d = self.scratch.join("dib-gpt");
        let build = d.join("build");
        let images = d.join("images");
        let mnt = build.join("mnt");
        std::fs::create_dir_all(&mnt)?;
        std::fs::create_dir_all(&images)?;
        let params = d.join("params.yaml");
        std::fs::write(
            &params,
            format!(
                "config: {}\nimage-dir: {}\nbuild-dir: {}\nimage-size: {}\nroot-label: \
                 cloudimg-rootfs\nroot-fs-type: ext4\nmount-base: {}\n",
                config.display(),
                images.display(),
                build.display(),
                self.size,
                mnt.display()
            ),
        )?;
        let py = venv.join("bin/python");
        let main =
            "import sys; from diskimage_builder.block_device.cmd import main; sys.exit(main())";
        let path = format!(
            "{}:{}",
            self.scratch.join("dib/bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let _env = sh.push_env("PATH", path);
        cmd!(sh, "{py} -c {main} --params {params} init")
            .quiet()
            .ignore_stderr()
            .run()?;
        let out = cmd!(sh, "{py} -c {main} --params {params} create")
            .quiet()
            .ignore_status()
            .output()?;
        if out.status.success() {
            return Ok(None);
        }
        let err = String::from_utf8_lossy(&out.stderr);
        let why = err
            .lines()
            .rev()
            .find(|l| l.contains("rror") || l.contains("not found") || l.contains("No such"))
            .unwrap_or("(no message)")
            .trim()
            .to_owned();
        let image = images.join("image0.raw");
        let loops = cmd!(sh, "losetup -j {image}").read().unwrap_or_default();
        ensure!(loops.trim().is_empty(), "dib left loop devices: {loops}");
        Ok(Some(why))
    }
}

fn sudo_shim(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("dib/bin");
    std::fs::create_dir_all(&bin)?;
    let sudo = bin.join("sudo");
    std::fs::write(&sudo, "#!/bin/sh\nexec \"$@\"\n")?;
    std::fs::set_permissions(&sudo, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn best(rounds: usize, mut f: impl FnMut() -> Result<Duration>) -> Result<Duration> {
    let mut b = Duration::MAX;
    for _ in 0..rounds {
        b = b.min(f()?);
    }
    Ok(b)
}

/// Run this benchmark.
pub fn run(sh: &Shell, args: &BenchArgs) -> Result<()> {
    let root = crate::project_root();
    sh.change_dir(&root);
    cmd!(sh, "cargo build --release -q -p diskforge").run()?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let bin = target.join("release/diskforge");
    let total: u64 = if args.quick { 100 << 20 } else { 800 << 20 };
    let rounds = if args.quick { 1 } else { 3 };
    let is_root = cmd!(sh, "id -u").read()?.trim() == "0";

    let scratch = tempfile::Builder::new()
        .prefix("diskforge-bench-blockdev-")
        .tempdir_in("/var/tmp")?;
    let tree = scratch.path().join("tree");
    let (files, bytes) = super::mkfs::make_tree(&tree, total)?;
    cmd!(sh, "sync").run()?;
    // Room for the ESP, ext4 metadata and the journal.
    let size = format!("{}MiB", (bytes >> 20) * 3 / 2 + 256);
    let gpt = root.join("crates/blockdev/examples/configs/gpt-bios-esp-root.yaml");
    let whole = scratch.path().join("whole-disk.yaml");
    std::fs::write(&whole, WHOLE_DISK)?;
    let ctx = Ctx {
        sh,
        bin,
        scratch: scratch.path().to_owned(),
        tree,
        files,
        size: size.clone(),
    };
    println!(
        "bench blockdev: create + cleanup of a {size} image from a {} MiB tree ({files} files), \
         best of {rounds}",
        bytes >> 20
    );
    let row = |what: &str, d: Duration, base: Duration| {
        println!(
            "{what:<58} {:>7.2}s {:>7.2}x",
            d.as_secs_f64(),
            d.as_secs_f64() / base.as_secs_f64()
        );
    };
    println!("{:<58} {:>8} {:>8}", "layout / route", "seconds", "ratio");
    let off = best(rounds, || ctx.ours(&gpt, false, true))?;
    row("GPT+BIOS+ESP+root: offline (no loop, no mount)", off, off);
    if is_root {
        let ker = best(rounds, || ctx.ours(&gpt, true, true))?;
        row(
            "GPT+BIOS+ESP+root: kernel route (loop + offset loops)",
            ker,
            off,
        );
    } else {
        println!("kernel route skipped: needs root");
    }
    let w_off = best(rounds, || ctx.ours(&whole, false, false))?;
    row("whole-disk ext4: offline", w_off, w_off);
    if is_root {
        let w_ker = best(rounds, || ctx.ours(&whole, true, false))?;
        row("whole-disk ext4: kernel route", w_ker, w_off);
    }
    let venv = std::env::var_os("DIB_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/blockdev-dib-venv"));
    if !is_root {
        println!("dib-block-device skipped: needs root");
    } else if !venv.join("bin/python").exists()
        || cmd!(sh, "{venv}/bin/python -c 'import diskimage_builder'")
            .quiet()
            .ignore_stderr()
            .run()
            .is_err()
    {
        println!(
            "dib-block-device skipped: no diskimage-builder in {} (python3 -m venv {0} && \
             {0}/bin/pip install diskimage-builder)",
            venv.display()
        );
    } else {
        sudo_shim(scratch.path())?;
        let dib = best(rounds, || ctx.dib(&venv, &whole))?;
        row(
            "whole-disk ext4: dib-block-device + cp -a + sync",
            dib,
            w_off,
        );
        match ctx.dib_partitioned(&venv, &gpt)? {
            None => bail!("dib-block-device partitioned the GPT layout here: time it too"),
            Some(why) => println!("GPT+BIOS+ESP+root: dib-block-device fails here: {why}"),
        }
    }
    Ok(())
}
