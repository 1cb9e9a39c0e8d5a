//! The kernel routes of the seed: loop-mount the ISO read-only (`diskforge-mount`'s
//! [`ImageMount`], which attaches with `diskforge-loop`) and rebuild from the mounted tree:
//!
//! - `overlay`: the mount is the lower dir of an overlayfs whose upper dir receives the edits
//!   (removals become whiteouts); the image is built from the merged view. No copy.
//! - `bind`: each replaced file (and each edited config or EFI image) is bind-mounted over
//!   its read-only original (`mount --bind new /mnt/iso/FILE`); new files are grafted in with
//!   `-graft-points`, removed ones excluded with `-m`. No copy, no overlay.
//! - `copy` (when the kernel can mount the ISO): `rsync -a` of the mount to a scratch tree,
//!   edit, rebuild — the conventional route.
//!
//! They need root and iso9660 in the kernel, so they are tested in the VM
//! (`vm-tests/src/iso.rs`). Every guard is in a [`MountStack`] that unwinds on success and on
//! error; a cancel ([`crate::Request::cancel`]) kills the running program and unwinds the
//! same way. Against SIGKILL: the mounts are made in a private mount namespace (gone with
//! the process) and the loop device autoclears (detached on its last close).

use std::path::{Path, PathBuf};

use diskforge_cmd::Cmd;
use diskforge_loop::{AttachOptions, LoopDevice};
use diskforge_mount::{Mount, MountFlags, MountStack, Overlay};

use crate::changes::{Changes, Content};
use crate::inspect::Inspection;
use crate::rebuild::{apply_to_dir, mkisofs_boot_args};
use crate::request::Mode;
use crate::{Error, Result};

/// Why the kernel routes cannot run here, or `None` when they can.
pub fn unavailable() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("needs root (loop devices and mounts)".into());
    }
    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !fs.lines().any(|l| l.trim_end().ends_with("iso9660")) {
        // The module may just not be loaded yet.
        let _ = Cmd::new("modprobe")
            .arg("iso9660")
            .timeout(std::time::Duration::from_secs(30))
            .run();
        let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
        if !fs.lines().any(|l| l.trim_end().ends_with("iso9660")) {
            return Some("the kernel has no iso9660 filesystem".into());
        }
    }
    None
}

fn mkdir(p: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(p).map_err(|e| Error::io("creating", p, e))?;
    Ok(p.to_owned())
}

fn mount_err(mode: Mode, e: diskforge_mount::Error) -> Error {
    Error::Kernel {
        mode: mode.to_string(),
        source: e,
    }
}

/// Run `mode` (overlay, bind or copy): mount, apply `changes`, rebuild into `output`,
/// unmount. Mount points live under `scratch` and are left empty.
pub fn run(
    mode: Mode,
    input: &Path,
    insp: &Inspection,
    output: &Path,
    changes: &Changes,
    scratch: &Path,
) -> Result<()> {
    diskforge_fault::point("iso.kernel-route")?;
    if let Some(why) = unavailable() {
        return Err(Error::ModeUnavailable {
            mode: mode.to_string(),
            reason: why,
        });
    }
    // Every mount lives in a private mount namespace of a thread of ours, and the loop
    // device autoclears: if we are killed (even with SIGKILL) the namespace dies with us,
    // its mounts go, and the kernel detaches the loop device on its last close.
    let flag = crate::cancel::current();
    let ns = diskforge_mount::in_private_namespace(|| {
        let _cancel = crate::cancel::install(flag);
        let mut stack = MountStack::new();
        let result = run_mounted(mode, input, insp, output, changes, scratch, &mut stack);
        let teardown = stack.teardown().map_err(|e| mount_err(mode, e));
        result.and(teardown)
    });
    ns.map_err(|e| mount_err(mode, e))?
}

fn run_mounted(
    mode: Mode,
    input: &Path,
    insp: &Inspection,
    output: &Path,
    changes: &Changes,
    scratch: &Path,
    stack: &mut MountStack,
) -> Result<()> {
    let iso_mnt = mkdir(&scratch.join("iso"))?;
    let dev = LoopDevice::attach(input, &AttachOptions::new().read_only(true).autoclear(true))
        .map_err(|e| mount_err(mode, e.into()))?;
    let dev_path = dev.path().to_owned();
    stack.push(dev);
    let image = Mount::new(&dev_path, &iso_mnt, "iso9660", MountFlags::RDONLY, None)
        .map_err(|e| mount_err(mode, e))?;
    stack.push(image);
    let mut extra: Vec<String> = Vec::new();
    let tree = match mode {
        Mode::Overlay => {
            let (upper, work) = (
                mkdir(&scratch.join("upper"))?,
                mkdir(&scratch.join("work"))?,
            );
            let merged = mkdir(&scratch.join("merged"))?;
            let ov = Overlay::new()
                .lower(&iso_mnt)
                .upper(upper, work)
                .mount(&merged)
                .map_err(|e| mount_err(mode, e))?;
            stack.push(ov);
            apply_to_dir(&merged, changes)?;
            merged
        }
        Mode::Bind => {
            let staged = mkdir(&scratch.join("bind-sources"))?;
            for (i, put) in changes.puts.iter().enumerate() {
                let src = match &put.content {
                    Content::File(f) => f.clone(),
                    Content::Bytes(b) => {
                        let f = staged.join(format!("{i}"));
                        std::fs::write(&f, b).map_err(|e| Error::io("writing", &f, e))?;
                        f
                    }
                };
                if put.existed {
                    let target = iso_mnt.join(put.dest.trim_start_matches('/'));
                    stack.push(Mount::bind(&src, &target).map_err(|e| mount_err(mode, e))?);
                } else {
                    extra.push(format!("{}={}", put.dest, src.display()));
                }
            }
            for r in &changes.removes {
                extra.extend([
                    "-m".to_owned(),
                    iso_mnt
                        .join(r.trim_start_matches('/'))
                        .display()
                        .to_string(),
                ]);
            }
            if extra.iter().any(|e| !e.starts_with('-')) {
                extra.insert(0, "-graft-points".into());
            }
            iso_mnt.clone()
        }
        _ => {
            let copy = mkdir(&scratch.join("copy"))?;
            let c = Cmd::new("rsync")
                .args(["-a", "--"])
                .arg(format!("{}/", iso_mnt.display()))
                .arg(&copy);
            crate::exec::run("copying the mounted tree with rsync", c, crate::exec::LONG)?;
            make_tree_writable(&copy)?;
            apply_to_dir(&copy, changes)?;
            copy
        }
    };
    let args = mkisofs_boot_args(input, insp, changes, scratch)?;
    let mut c = Cmd::new("xorriso")
        // A file it cannot read (EIO from the mounted view) is a SORRY: fail on it
        // rather than write an image without it.
        .args(["-return_with", "SORRY", "32", "-as", "mkisofs"])
        .args(args)
        .arg("-o")
        .arg(output);
    if mode == Mode::Bind && extra.first().is_some_and(|e| e == "-graft-points") {
        // With graft points the tree itself must be grafted at / too.
        c = c.args(&extra).arg(format!("/={}", tree.display()));
    } else {
        c = c.args(&extra).arg(&tree);
    }
    crate::exec::run("rebuilding the image with xorriso", c, crate::exec::LONG)?;
    Ok(())
}

fn make_tree_writable(dir: &Path) -> Result<()> {
    let c = Cmd::new("chmod").args(["-R", "u+w"]).arg(dir);
    crate::exec::run("making the copy writable", c, crate::exec::LONG)?;
    Ok(())
}
