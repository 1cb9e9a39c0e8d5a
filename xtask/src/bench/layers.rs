//! `cargo xtask bench layers`: making a 100-layer stack usable — `dflayers mount` (one
//! overlay, `fsconfig(lowerdir+)` past the one-page option limit) versus the conventional
//! flattening of the same layers into one directory (`cp -a` and `rsync -a` of each layer in
//! order). Also times `dflayers squash` (the mount-free flatten into one tarball), and
//! reading the same layers as an OCI image (built with `umoci raw add-layer`): `dflayers
//! unpack` into a fresh store versus `umoci unpack` into a fresh bundle, each result checked
//! (`diff -r` of umoci's rootfs against the mounted stack).
//! Needs root (overlay mounts). `--quick`: 20 layers of 40 small files.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use xshell::{Shell, cmd};

use crate::flags::BenchArgs;

/// Rounds per method; the median is reported.
const ROUNDS: usize = 3;

struct Size {
    layers: usize,
    files: usize,
    bytes: usize,
}

fn make_layers(root: &Path, size: &Size) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    let payload = vec![b'x'; size.bytes];
    for i in 0..size.layers {
        let d = root.join(format!("layer-{i:03}"));
        let own = d.join(format!("usr/share/layer-{i:03}"));
        std::fs::create_dir_all(&own)?;
        std::fs::create_dir_all(d.join("etc"))?;
        std::fs::write(d.join("etc/version"), format!("{i}\n"))?;
        for f in 0..size.files {
            std::fs::write(own.join(format!("f{f:04}")), &payload)?;
        }
        out.push(d);
    }
    Ok(out)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time(mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Duration> {
    let mut v = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed());
    }
    Ok(median(v))
}

/// Run this benchmark.
pub fn run(sh: &Shell, args: &BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        rustix::process::geteuid().is_root(),
        "bench layers needs root (it mounts overlays)"
    );
    let size = if args.quick {
        Size {
            layers: 20,
            files: 40,
            bytes: 4096,
        }
    } else {
        Size {
            layers: 100,
            files: 200,
            bytes: 16384,
        }
    };
    sh.change_dir(crate::project_root());
    cmd!(sh, "cargo build --release -q -p dflayers").run()?;
    let bin = crate::target_dir().join("release/dflayers");

    let scratch = tempfile::Builder::new()
        .prefix("bench-layers-")
        .tempdir_in("/var/tmp")?;
    let s = scratch.path();
    let layers = make_layers(
        &s.join("layers-with-a-longish-directory-name-for-realism"),
        &size,
    )?;
    let store = s.join("store");
    let (upper, merged, flat) = (s.join("upper"), s.join("merged"), s.join("flat"));
    std::fs::create_dir_all(&merged)?;
    let mut layer_args = Vec::new();
    for l in &layers {
        layer_args.push("-l".to_owned());
        layer_args.push(l.display().to_string());
    }

    let la = &layer_args;
    let mut method = String::new();
    let mut mounts = Vec::new();
    for _ in 0..ROUNDS {
        // A fresh, empty upper/work per round, as a new container would get.
        let _ = std::fs::remove_dir_all(&upper);
        let _ = std::fs::remove_dir_all(s.join(".upper.work"));
        std::fs::create_dir_all(&upper)?;
        let t = Instant::now();
        let out = cmd!(
            sh,
            "{bin} --store {store} --json mount {la...} --upper {upper} {merged}"
        )
        .quiet()
        .read()?;
        mounts.push(t.elapsed());
        let v: serde_json::Value = serde_json::from_str(&out).context("dflayers --json mount")?;
        method = v["method"].as_str().unwrap_or("?").to_owned();
        // Sanity: the top layer wins.
        let version = std::fs::read_to_string(merged.join("etc/version"))?;
        cmd!(sh, "{bin} umount {merged}").quiet().run()?;
        anyhow::ensure!(
            version.trim() == (size.layers - 1).to_string(),
            "wrong precedence: {version}"
        );
    }
    let mount_only = median(mounts);

    let flatten = |tool: &str| {
        time(|| {
            let _ = std::fs::remove_dir_all(&flat);
            std::fs::create_dir_all(&flat)?;
            for l in &layers {
                match tool {
                    "cp" => cmd!(sh, "cp -a {l}/. {flat}/").quiet().run()?,
                    _ => cmd!(sh, "rsync -a {l}/ {flat}/").quiet().run()?,
                }
            }
            Ok(())
        })
    };
    let cp = flatten("cp")?;
    let rsync = flatten("rsync")?;
    let tarball = s.join("flat.tar");
    let squash = time(|| {
        cmd!(
            sh,
            "{bin} --store {store} squash {la...} -o {tarball} --force"
        )
        .quiet()
        .ignore_stdout()
        .run()?;
        Ok(())
    })?;
    let _ = std::fs::remove_dir_all(&flat);

    // The same layers as an OCI image: unpack by dflayers (fresh store) vs umoci.
    let image = s.join("oci");
    let img = format!("{}:bench", image.display());
    cmd!(sh, "umoci init --layout {image}").quiet().run()?;
    cmd!(sh, "umoci new --image {img}").quiet().run()?;
    for l in &layers {
        let t = s.join("layer.tar");
        cmd!(sh, "tar --numeric-owner -C {l} -cf {t} .")
            .quiet()
            .run()?;
        cmd!(sh, "umoci raw add-layer --image {img} {t}")
            .quiet()
            .run()?;
        std::fs::remove_file(&t)?;
    }
    let (fresh_store, bundle) = (s.join("fresh-store"), s.join("bundle"));
    // Rounds alternate between the two; each starts from an empty target with the previous
    // round's writes flushed (`sync`, not timed), so neither pays for the other's writeback.
    let (mut unpacks, mut umocis) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        for (dest, times) in [(&fresh_store, &mut unpacks), (&bundle, &mut umocis)] {
            let _ = std::fs::remove_dir_all(dest);
            cmd!(sh, "sync").quiet().run()?;
            let t = Instant::now();
            if dest == &fresh_store {
                cmd!(sh, "{bin} --store {fresh_store} unpack {img}")
                    .quiet()
                    .ignore_stdout()
                    .run()?;
            } else {
                cmd!(sh, "umoci unpack --image {img} {bundle}")
                    .quiet()
                    .ignore_stdout()
                    .run()?;
            }
            times.push(t.elapsed());
        }
    }
    let (unpack, umoci) = (median(unpacks), median(umocis));
    // Both results hold the same tree.
    cmd!(sh, "{bin} --store {fresh_store} mount -l {img} {merged}")
        .quiet()
        .ignore_stdout()
        .run()?;
    let rootfs = bundle.join("rootfs");
    let same = cmd!(sh, "diff -r --no-dereference {rootfs} {merged}")
        .quiet()
        .ignore_stdout()
        .run();
    cmd!(sh, "{bin} umount {merged}").quiet().run()?;
    same.context("dflayers unpack and umoci unpack differ")?;

    let total_mib = (size.layers * size.files * size.bytes) as f64 / (1 << 20) as f64;
    println!(
        "bench layers: {} layers x {} files x {} KiB = {total_mib:.0} MiB (median of {ROUNDS})",
        size.layers,
        size.files,
        size.bytes / 1024
    );
    println!("{:<44} {:>10}", "method", "seconds");
    let row = |name: &str, d: Duration| println!("{name:<44} {:>10.4}", d.as_secs_f64());
    row(&format!("dflayers mount ({method})"), mount_only);
    row("flatten: cp -a of each layer in order", cp);
    row("flatten: rsync -a of each layer in order", rsync);
    row("dflayers squash (mount-free, to one tar)", squash);
    row("OCI image: dflayers unpack (fresh store)", unpack);
    row("OCI image: umoci unpack (fresh bundle)", umoci);
    let ratio = |d: Duration| d.as_secs_f64() / mount_only.as_secs_f64().max(1e-9);
    println!(
        "ratio cp -a / mount: {:.0}x, rsync -a / mount: {:.0}x",
        ratio(cp),
        ratio(rsync)
    );
    println!(
        "ratio umoci unpack / dflayers unpack: {:.1}x",
        umoci.as_secs_f64() / unpack.as_secs_f64().max(1e-9)
    );
    Ok(())
}
