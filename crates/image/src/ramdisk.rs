//! The shipped `ramdisk` element (dib's name): instead of a disk, the root tree becomes a
//! compressed initramfs (`NAME.initramfs`, newc cpio, gzip) booted with its kernel
//! (`NAME.kernel`, the tree's newest `/boot/vmlinuz-*`), with no disk at all. The tree's
//! `/init` runs first; when there is none, `/init` is made a link to `/sbin/init`.

use std::fs;
use std::path::{Path, PathBuf};

use diskforge_cmd::Cmd;
use serde::Serialize;

use crate::output::Partial;
use crate::{Error, Result, io_err, tool_err};

/// What [`write_ramdisk`] wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ramdisk {
    /// `NAME.kernel`.
    pub kernel: PathBuf,
    /// `NAME.initramfs`.
    pub initramfs: PathBuf,
}

/// `NAME.kernel` and `NAME.initramfs` beside the output base name `name`.
pub fn paths(name: &Path) -> Ramdisk {
    let with = |suffix: &str| {
        let mut s = name.as_os_str().to_owned();
        s.push(suffix);
        PathBuf::from(s)
    };
    Ramdisk {
        kernel: with(".kernel"),
        initramfs: with(".initramfs"),
    }
}

/// Write the kernel and the initramfs of `tree` for the output base name `name`. Both are
/// written under temporary names and renamed into place when complete.
pub fn write_ramdisk(tree: &Path, name: &Path) -> Result<Ramdisk> {
    let out = paths(name);
    let k = diskforge_boot::find_kernel(tree)
        .map_err(|e| Error::Boot(Box::new(e)))?
        .ok_or_else(|| Error::Usage {
            field: "ramdisk".into(),
            value: tree.join("boot").display().to_string(),
            reason: "no kernel (boot/vmlinuz-RELEASE) in the tree".into(),
        })?;
    let init = tree.join("init");
    if fs::symlink_metadata(&init).is_err() {
        std::os::unix::fs::symlink("sbin/init", &init).map_err(io_err("linking", &init))?;
    }
    let kernel_src = tree.join(k.kernel.trim_start_matches('/'));
    let kernel = Partial::new(&out.kernel)?;
    fs::copy(&kernel_src, &kernel.tmp).map_err(io_err("copying", &kernel_src))?;
    let initramfs = Partial::new(&out.initramfs)?;
    // find | sort | cpio | gzip -n: sorted names and no gzip timestamp, so the same tree
    // gives the same bytes.
    let script = "set -e -o pipefail; cd \"$1\"; find . -mindepth 1 -path ./boot -prune -o -print0 \
                  | LC_ALL=C sort -z | cpio --null --create --format=newc --reproducible --quiet \
                  | gzip -n -6 > \"$2\"";
    Cmd::new("bash")
        .args(["-c", script, "ramdisk"])
        .arg(tree)
        .arg(&initramfs.tmp)
        .run()
        .map_err(tool_err("writing the initramfs (find | cpio | gzip)"))?;
    kernel.publish()?;
    initramfs.publish()?;
    Ok(out)
}
