//! The kernel route: loop devices (autoclear), partitions through the kernel's `pN` nodes or
//! offset loops where it makes none, LVM through lvm2-cmd, mkfs on block devices, and mounts
//! made only inside a private mount namespace.
//!
//! What can outlive the process is kept small and recorded: a loop device is autoclear, so it
//! goes with our descriptor (or, under a mount, with the namespace) even after `kill -9`; a
//! volume group's activation is the one thing that survives a crash, and it is written to
//! the state (name and PV devices) before `vgcreate`/`lvcreate` make it. [`release`] works
//! from that record alone and touches only what it names: a VG is deactivated only when its
//! PVs are exactly the recorded loop devices, a loop is detached only while it still maps the
//! recorded file range.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use diskforge_loop::{AttachOptions, LoopDevice, PartitionLocation};
use lvm2_cmd::Lvm;
use serde::{Deserialize, Serialize};

use crate::plan::{Device, Plan, Route, Step};
use crate::{Error, Result};

/// How long we wait for devtmpfs to make a `loopNpK` node the kernel announced in sysfs.
const NODE_WAIT: Duration = Duration::from_millis(1000);
const NODE_POLL: Duration = Duration::from_millis(10);

/// A loop device the kernel route attached (all are autoclear).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoopRecord {
    /// The node it serves (an image or a partition).
    pub node: String,
    /// `/dev/loopN`.
    pub device: PathBuf,
    /// The image file.
    pub backing: PathBuf,
    /// Offset in the image file.
    pub offset: u64,
    /// Bytes mapped (0: to the end).
    pub size: u64,
}

/// A volume group the kernel route creates, recorded before it is made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VgRecord {
    /// VG name.
    pub name: String,
    /// The block devices of its PVs (our loop devices or their `pN` nodes).
    pub pvs: Vec<PathBuf>,
    /// Whether it may be active (set before the first `lvcreate`, cleared after `vgchange
    /// -an`).
    pub active: bool,
}

/// What the kernel route holds, in the state file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelState {
    /// Loop devices, in attach order.
    pub loops: Vec<LoopRecord>,
    /// Volume groups, in creation order.
    pub vgs: Vec<VgRecord>,
    /// Node → block device, for `getval image-block-devices`.
    pub devices: BTreeMap<String, PathBuf>,
    /// Set once everything above is released (detached, deactivated).
    pub released: bool,
}

/// Whether this kernel has device-mapper: `/proc/misc` lists it. (A `/dev/mapper/control`
/// node proves nothing: lvm and dmsetup create it even where opening it fails with ENODEV.)
pub fn has_device_mapper() -> bool {
    std::fs::read_to_string("/proc/misc")
        .is_ok_and(|m| m.lines().any(|l| l.ends_with(" device-mapper")))
}

/// The lvm invocation for our devices: no backup or archive files under `/etc/lvm` (a build
/// leaves no files behind), no devices file, udev-less where no udev runs, and a filter that
/// accepts only `devices`, so lvm neither scans nor touches anything else.
pub(crate) fn lvm_for(devices: &[&Path]) -> Lvm {
    let no_udev = !Path::new("/run/udev/control").exists();
    let mut filter: Vec<String> = devices
        .iter()
        .map(|d| format!("\"a|^{}$|\"", d.display()))
        .collect();
    filter.push("\"r|.*|\"".to_owned());
    let mut config = String::new();
    if no_udev {
        config.push_str("activation { udev_sync=0 udev_rules=0 } ");
    }
    config.push_str(&format!(
        "backup {{ backup=0 archive=0 }} devices {{ use_devicesfile=0 filter=[ {} ] }}",
        filter.join(", ")
    ));
    Lvm {
        config: Some(config),
        disable_udev: no_udev,
    }
}

/// Checks before the kernel route touches anything: loop devices usable, device-mapper
/// present when the plan has LVM, no partition table on a logical volume.
pub(crate) fn preflight(plan: &Plan) -> Result<()> {
    if let Route::Kernel { reasons } = &plan.route
        && let Some(r) = reasons.iter().find(|r| r.starts_with("partitioning "))
    {
        return Err(Error::Unsupported {
            what: format!("{r}: partition tables on logical volumes are not built yet"),
        });
    }
    let lvm_node = plan.steps.iter().find_map(|s| match s {
        Step::PhysicalVolume { pv, .. } => Some(("pv", pv.clone())),
        _ => None,
    });
    if let Some((kind, node)) = lvm_node
        && !has_device_mapper()
    {
        return Err(Error::NeedsDeviceMapper { kind, node });
    }
    if !Path::new("/dev/loop-control").exists() {
        return Err(Error::Unsupported {
            what: "the kernel route needs loop devices (/dev/loop-control is missing)".into(),
        });
    }
    for vg in &plan.volume_groups {
        if Path::new("/dev").join(&vg.name).exists() {
            return Err(Error::Unsupported {
                what: format!(
                    "volume group {:?} exists on this host already (/dev/{}); a build never \
                     touches a VG it did not create",
                    vg.name, vg.name
                ),
            });
        }
    }
    Ok(())
}

/// The live kernel objects of one `create`: loop guards (autoclear) and the devices of each
/// node. Dropping it detaches the loops (after [`Kernel::deactivate`] released the VGs).
#[derive(Debug, Default)]
pub(crate) struct Kernel {
    loops: Vec<LoopDevice>,
    devices: BTreeMap<String, PathBuf>,
}

impl Kernel {
    /// The block device of node `name` (an image, a partition or an LV), attaching loop
    /// devices on first use and recording them in `ks`.
    pub(crate) fn device(
        &mut self,
        plan: &Plan,
        name: &str,
        ks: &mut KernelState,
        save: &mut dyn FnMut(&KernelState) -> Result<()>,
    ) -> Result<PathBuf> {
        if let Some(d) = self.devices.get(name) {
            return Ok(d.clone());
        }
        if let Some(disk) = plan.disks.iter().find(|d| d.name == name) {
            let block = plan.steps.iter().find_map(|s| match s {
                Step::CreateImage { image, .. } if image == name => Some(()),
                _ => None,
            });
            if block.is_none() {
                return Err(Error::Unsupported {
                    what: format!("image {name:?} is not created by this plan"),
                });
            }
            // Direct I/O: no second copy in the page cache (mkfs through a buffered loop
            // device is ~25 % slower here); the kernel falls back where the file system
            // of the image cannot do it.
            let opts = AttachOptions::new()
                .autoclear(true)
                .direct_io(true)
                .partscan(disk.table.is_some());
            let dev = self.attach(name, &disk.path, opts, 0, 0, ks, save)?;
            return Ok(dev);
        }
        if let Some((disk, part)) = plan.disks.iter().find_map(|d| {
            d.table
                .as_ref()
                .and_then(|t| t.partitions.iter().find(|p| p.name == name))
                .map(|p| (d, p))
        }) {
            let whole = self.device(plan, &disk.name, ks, save)?;
            let idx = self
                .loops
                .iter()
                .position(|l| l.path() == whole)
                .ok_or_else(|| Error::Unsupported {
                    what: format!("no loop device for image {:?}", disk.name),
                })?;
            wait_for_node(&self.loops[idx], part.number);
            let loc = self.loops[idx]
                .partition(part.number)
                .map_err(|source| Error::Loop {
                    what: format!("partition {} of {}", part.number, whole.display()),
                    source: Box::new(source),
                })?;
            let dev = match loc {
                PartitionLocation::Node(p) => p,
                PartitionLocation::Range { .. } => {
                    // No pN node (no partition scanning): a loop of its own over the range
                    // from the plan (the same numbers diskforge-part wrote).
                    let opts = AttachOptions::new()
                        .autoclear(true)
                        .direct_io(true)
                        .offset(part.start)
                        .sizelimit(part.size);
                    self.attach(name, &disk.path, opts, part.start, part.size, ks, save)?
                }
            };
            self.devices.insert(name.to_owned(), dev.clone());
            ks.devices.insert(name.to_owned(), dev.clone());
            return Ok(dev);
        }
        if let Some(fs) = plan
            .filesystems
            .iter()
            .find(|f| f.base == name && matches!(f.device, Device::Lv { .. }))
            && let Device::Lv { vg, lv, .. } = &fs.device
        {
            return Ok(lv_path(vg, lv));
        }
        Err(Error::Unsupported {
            what: format!("no block device for node {name:?}"),
        })
    }

    #[allow(clippy::too_many_arguments)] // one call site; the pieces of one record
    fn attach(
        &mut self,
        node: &str,
        file: &Path,
        opts: AttachOptions,
        offset: u64,
        size: u64,
        ks: &mut KernelState,
        save: &mut dyn FnMut(&KernelState) -> Result<()>,
    ) -> Result<PathBuf> {
        let l = LoopDevice::attach(file, &opts).map_err(|source| Error::Loop {
            what: format!("attaching {}", file.display()),
            source: Box::new(source),
        })?;
        let dev = l.path().to_owned();
        self.loops.push(l);
        self.devices.insert(node.to_owned(), dev.clone());
        ks.loops.push(LoopRecord {
            node: node.to_owned(),
            device: dev.clone(),
            backing: file.to_owned(),
            offset,
            size,
        });
        ks.devices.insert(node.to_owned(), dev.clone());
        save(ks)?;
        Ok(dev)
    }

    /// Detach every loop device, last attached first; every failure is reported.
    pub(crate) fn detach(&mut self) -> Vec<String> {
        let mut errs = Vec::new();
        while let Some(l) = self.loops.pop() {
            let p = l.path().to_owned();
            if let Err(e) = l.detach() {
                errs.push(format!("detaching {}: {e}", p.display()));
            }
        }
        self.devices.clear();
        errs
    }
}

/// `/dev/mapper/VG-LV` (dashes doubled, as device-mapper names them).
pub(crate) fn lv_path(vg: &str, lv: &str) -> PathBuf {
    let esc = |s: &str| s.replace('-', "--");
    Path::new("/dev/mapper").join(format!("{}-{}", esc(vg), esc(lv)))
}

/// With partition scanning the kernel announces `loopNpK` in sysfs at once, devtmpfs makes the
/// node a moment later; wait (bounded) for that node.
fn wait_for_node(l: &LoopDevice, number: u32) {
    let n = l.number();
    let sys = PathBuf::from(format!("/sys/block/loop{n}/loop{n}p{number}"));
    if !sys.exists() {
        return;
    }
    let node = PathBuf::from(format!("{}p{number}", l.path().display()));
    let start = std::time::Instant::now();
    while !node.exists() && start.elapsed() < NODE_WAIT {
        std::thread::sleep(NODE_POLL);
    }
}

/// Deactivate the recorded VGs that may be active and are still ours, newest first;
/// updates `ks`. Returns every failure.
pub(crate) fn deactivate(ks: &mut KernelState) -> Vec<String> {
    let mut errs = Vec::new();
    for vg in ks.vgs.iter_mut().rev() {
        if !vg.active {
            continue;
        }
        let pvs: Vec<&Path> = vg.pvs.iter().map(PathBuf::as_path).collect();
        let lvm = lvm_for(&pvs);
        if ours(&lvm, vg) {
            match lvm.vgchange_activate(&vg.name, false) {
                Ok(()) => vg.active = false,
                Err(e) => errs.push(format!("deactivating volume group {}: {e:#}", vg.name)),
            }
        } else {
            // Gone (its devices are detached, or it never got made): nothing to do.
            vg.active = false;
        }
    }
    errs
}

/// Deactivate the recorded VGs and detach the recorded loop devices that are still ours,
/// newest first, from the record alone; updates `ks` (save it after). Idempotent. Returns
/// every failure.
pub(crate) fn release(ks: &mut KernelState) -> Vec<String> {
    let mut errs = deactivate(ks);
    for l in ks.loops.iter().rev() {
        let Ok(info) = diskforge_loop::info(&l.device) else {
            continue; // not attached any more (autoclear)
        };
        if info.back_file != l.backing || info.offset != l.offset || !info.autoclear {
            // Reused by somebody else, or attached by hand (ours are all autoclear): not ours.
            continue;
        }
        match diskforge_loop::detach(&l.device) {
            Ok(()) | Err(diskforge_loop::Error::NotAttached { .. }) => {}
            Err(e) => errs.push(format!("detaching {}: {e}", l.device.display())),
        }
    }
    if errs.is_empty() {
        ks.released = true;
    }
    errs
}

/// Whether the VG `vg.name` exists on exactly the recorded PVs (then it is ours).
fn ours(lvm: &Lvm, vg: &VgRecord) -> bool {
    if vg.pvs.iter().any(|p| !p.exists()) {
        return false;
    }
    let pvs: Vec<&Path> = vg.pvs.iter().map(PathBuf::as_path).collect();
    let rows = match lvm.pvs(&pvs) {
        Ok(r) => r,
        Err(e) => {
            // Devices that carry no PV label any more (the image was rewritten): not ours.
            tracing::warn!(vg = %vg.name, error = %e, "reading the recorded PVs");
            return false;
        }
    };
    let mine = rows
        .iter()
        .filter(|r| r.vg_name.as_deref() == Some(vg.name.as_str()))
        .count();
    mine > 0 && mine == vg.pvs.len()
}
