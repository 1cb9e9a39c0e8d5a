//! VM tests for `diskforge-loop` and `diskforge-mount`: what the host kernel cannot do.
//!
//! - `loop_mount::partscan_gives_p1_p2_on_gpt`: a GPT image made by `sgdisk`, attached with
//!   partscan, shows `loopNp1`/`loopNp2` of the right sizes (`blockdev`), and
//!   `LoopDevice::partition` resolves to those nodes; the nodes go with the device.
//! - `loop_mount::bind_and_overlay_over_iso`: an ISO made by `xorriso -as mkisofs`, mounted
//!   through a loop device (`ImageMount`), gets a single-file bind over one of its files, then
//!   a writable overlay (upper/work on tmpfs; overlayfs does not see the bind inside its
//!   lower, so the file is bound over the merged view too) and a read-only two-lower
//!   overlay on top; the
//!   ISO view stays unchanged, copy-up/whiteouts land in the upper dir, and the whole
//!   `MountStack` unwinds leaving no mount or loop device behind.
//! - `loop_mount::long_overlay_on_this_kernel`: 100 lowers (over one page of options) mount
//!   through `fsconfig(lowerdir+)` on Linux 6.8+, and on older kernels (Debian 12's 6.1 in
//!   this VM) fail with `Error::OptionsTooLong` naming the mount point, leaving nothing.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use diskforge_cmd::Cmd;
use diskforge_loop::{AttachOptions, LoopDevice, PartitionLocation};
use diskforge_mount::{Mount, MountStack, Overlay};
use diskforge_testutil::KernelState;
use libtest_mimic::Trial;

use crate::trial;

/// This module's tests.
pub fn tests() -> Vec<Trial> {
    vec![
        trial(
            "loop_mount::partscan_gives_p1_p2_on_gpt",
            partscan_gives_p1_p2_on_gpt,
        ),
        trial(
            "loop_mount::bind_and_overlay_over_iso",
            bind_and_overlay_over_iso,
        ),
        trial(
            "loop_mount::long_overlay_on_this_kernel",
            long_overlay_on_this_kernel,
        ),
    ]
}

/// Without udev the kernel creates partition nodes in devtmpfs itself; allow it a moment.
fn wait_for(path: &Path) -> bool {
    for _ in 0..100 {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn ensure_clean(dir: &Path) -> Result<()> {
    let st = KernelState::capture();
    ensure!(
        st.loops_under(dir).is_empty(),
        "leaked loops: {:?}",
        st.loops_under(dir)
    );
    ensure!(
        st.mounts_under(dir).is_empty(),
        "leaked mounts: {:?}",
        st.mounts_under(dir)
    );
    Ok(())
}

fn partscan_gives_p1_p2_on_gpt() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let img = dir.path().join("gpt.img");
    std::fs::File::create(&img)?.set_len(48 << 20)?;
    Cmd::new("sgdisk")
        .args([
            "-n", "1:0:+16M", "-t", "1:8300", "-n", "2:0:+8M", "-t", "2:ef00",
        ])
        .arg(&img)
        .run()?;
    let dev = LoopDevice::attach(&img, &AttachOptions::new().partscan(true))?;
    let res = (|| -> Result<()> {
        ensure!(dev.info()?.partscan, "partscan flag not set");
        for (n, size) in [(1u32, 16u64 << 20), (2, 8 << 20)] {
            let node = PathBuf::from(format!("{}p{n}", dev.path().display()));
            ensure!(wait_for(&node), "{} did not appear", node.display());
            let got = Cmd::new("blockdev").arg("--getsize64").arg(&node).read()?;
            ensure!(
                got.trim() == size.to_string(),
                "{}: size {got}",
                node.display()
            );
            match dev.partition(n)? {
                PartitionLocation::Node(p) => ensure!(p == node, "resolved to {}", p.display()),
                other => anyhow::bail!("partition {n} resolved to {other:?}, not the node"),
            }
        }
        Ok(())
    })();
    let p1 = PathBuf::from(format!("{}p1", dev.path().display()));
    dev.detach().context("detaching")?;
    res?;
    // The partition nodes go with the device.
    for _ in 0..100 {
        if !p1.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ensure!(!p1.exists(), "{} still exists after detach", p1.display());
    ensure_clean(dir.path())
}

fn bind_and_overlay_over_iso() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = |n: &str| -> Result<PathBuf> {
        let p = dir.path().join(n);
        std::fs::create_dir_all(&p)?;
        Ok(p)
    };
    let tree = d("tree")?;
    std::fs::create_dir_all(tree.join("isolinux"))?;
    std::fs::write(tree.join("EULA"), "old terms\n")?;
    std::fs::write(tree.join("isolinux/isolinux.cfg"), "default linux\n")?;
    std::fs::write(tree.join("remove-me"), "bye\n")?;
    let iso = dir.path().join("t.iso");
    Cmd::new("xorriso")
        .args(["-as", "mkisofs", "-R", "-J", "-V", "DFLOOPMNT", "-o"])
        .arg(&iso)
        .arg(&tree)
        .run()?;
    let new_eula = dir.path().join("new-EULA");
    std::fs::write(&new_eula, "new terms\n")?;
    let (iso_mnt, upper, work, merged, extra, view) = (
        d("iso")?,
        d("upper")?,
        d("work")?,
        d("merged")?,
        d("extra")?,
        d("view")?,
    );
    std::fs::write(extra.join("ks.cfg"), "text\n")?;

    let mut stack = MountStack::new();
    let res = (|| -> Result<()> {
        let image = Mount::image(&iso, &iso_mnt, "iso9660", true)?;
        ensure!(
            image.device().to_string_lossy().starts_with("/dev/loop"),
            "no loop device"
        );
        stack.push(image);
        ensure!(std::fs::read_to_string(iso_mnt.join("EULA"))? == "old terms\n");
        ensure!(
            std::fs::write(iso_mnt.join("EULA"), "x").is_err(),
            "the ISO mount is writable"
        );
        // Single-file bind over the read-only ISO.
        stack.push(Mount::bind(&new_eula, iso_mnt.join("EULA"))?);
        ensure!(std::fs::read_to_string(iso_mnt.join("EULA"))? == "new terms\n");
        // Writable overlay with the ISO as lower.
        let ov = Overlay::new()
            .lower(&iso_mnt)
            .upper(&upper, &work)
            .mount(&merged)?;
        stack.push(ov);
        // overlayfs reads its lower layer beneath any mounts on it: the file bind on the
        // ISO mount is not seen through the overlay. Bind on the merged view instead.
        ensure!(
            std::fs::read_to_string(merged.join("EULA"))? == "old terms\n",
            "overlay saw a bind mount inside its lower dir"
        );
        stack.push(Mount::bind(&new_eula, merged.join("EULA"))?);
        ensure!(std::fs::read_to_string(merged.join("EULA"))? == "new terms\n");
        std::fs::write(merged.join("isolinux/isolinux.cfg"), "default rescue\n")?;
        std::fs::write(merged.join("ks.cfg"), "text\n")?;
        std::fs::remove_file(merged.join("remove-me"))?;
        ensure!(
            std::fs::read_to_string(upper.join("isolinux/isolinux.cfg"))? == "default rescue\n"
        );
        ensure!(
            std::fs::read_to_string(iso_mnt.join("isolinux/isolinux.cfg"))? == "default linux\n"
        );
        let wh = std::fs::symlink_metadata(upper.join("remove-me"))?;
        ensure!(
            wh.file_type().is_char_device() && wh.rdev() == 0,
            "no 0/0 whiteout in upper"
        );
        ensure!(iso_mnt.join("remove-me").exists(), "the ISO lost a file");
        // Read-only two-lower view: extra dir over the ISO.
        let ro = Overlay::new().lower(&extra).lower(&iso_mnt).mount(&view)?;
        stack.push(ro);
        ensure!(std::fs::read_to_string(view.join("ks.cfg"))? == "text\n");
        ensure!(view.join("isolinux/isolinux.cfg").exists());
        ensure!(
            std::fs::write(view.join("new"), "x").is_err(),
            "read-only overlay is writable"
        );
        Ok(())
    })();
    let torn = stack.teardown();
    res?;
    torn?;
    ensure_clean(dir.path())
}

fn long_overlay_on_this_kernel() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let lowers: Vec<PathBuf> = (0..100)
        .map(|i| {
            let p = dir
                .path()
                .join(format!("a-fairly-long-layer-directory-name-{i:03}"));
            std::fs::create_dir(&p)?;
            std::fs::write(p.join(format!("f{i}")), "x")?;
            Ok(p)
        })
        .collect::<Result<_>>()?;
    let merged = dir.path().join("merged");
    std::fs::create_dir(&merged)?;
    let ov = Overlay::new().lowers(&lowers);
    ensure!(
        ov.option_string().len() > 4096,
        "options fit one page; test is moot"
    );
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    let mut v = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
    match ov.mount(&merged) {
        Ok(m) => {
            ensure!((major, minor) >= (6, 8), "mounted on {release}?");
            ensure!(m.method() == diskforge_mount::OverlayMethod::Fsconfig);
            ensure!(merged.join("f99").exists());
            m.teardown()?;
        }
        Err(e @ diskforge_mount::Error::OptionsTooLong { .. }) => {
            ensure!(
                (major, minor) < (6, 8),
                "{release} should take lowerdir+: {e}"
            );
            ensure!(e.to_string().contains(&merged.display().to_string()), "{e}");
        }
        Err(e) => return Err(e.into()),
    }
    ensure_clean(dir.path())
}
