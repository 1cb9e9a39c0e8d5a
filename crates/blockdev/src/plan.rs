//! Config → [`Plan`]: every disk with its partitions placed by diskforge-part's planner, LVM
//! extents, filesystems with their byte ranges, mount order, fstab lines and the ordered
//! steps. Pure: it reads no file (the sizes of a root tree come in [`PlanOptions`]).
//!
//! Partition sizes follow dib: an absolute size is taken as written (rounded up to whole
//! sectors); a percentage is a share of the space **still free** when the partition is
//! placed (dib's `parse_rel_size_spec(size, free)`), rounded down to the alignment. The free
//! space is asked of diskforge-part itself (a probe layout ending in `rest`), so placement,
//! alignment and EBRs are never computed twice. On MBR a partition without `primary` is
//! logical, as in dib. Where it does not fit, the problems carry the numbers: requested and
//! computed size per partition, what alignment and EBRs cost, and the smallest image size
//! that fits (a search over diskforge-part's planner).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use diskforge_mkfs::FsType;
use diskforge_part::{Flag, Label, Layout, PartKind, PartSpec};
use serde::{Deserialize, Serialize};

use crate::config::{Config, LvSize, Table};
use crate::problem::Problem;
use crate::size::{SizeSpec, human};
use crate::validate::{Index, Kind, normal_type};

/// LVM physical extent size dib uses (`PHYSICAL_EXTENT_BYTES`, lvm2's default).
pub const EXTENT: u64 = 4 << 20;
/// Space lvm2 keeps at the start of a PV for its label and metadata (default `pe_start`).
pub const PV_OVERHEAD: u64 = 1 << 20;

/// What the planner is told besides the config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanOptions {
    /// Size of `local_loop` images that give none (dib's `--image-size`).
    pub image_size: Option<u64>,
    /// Directory of `local_loop` images that give none (dib's `image-dir`).
    pub image_dir: PathBuf,
    /// The tree to populate the filesystems from; default empty filesystems.
    pub root: Option<PathBuf>,
    /// Seed for partition table and filesystem UUIDs not given in the config; default random.
    pub uuid_seed: Option<String>,
    /// `SOURCE_DATE_EPOCH` for reproducible filesystems.
    pub source_date_epoch: Option<u64>,
    /// Bytes the root tree needs under each mount point (nested mount points excluded),
    /// from [`crate::measure_tree`]; checked against the filesystem sizes.
    pub content: BTreeMap<String, u64>,
    /// dib's `FS_TYPE`: the type of the node `mkfs_root` when it gives none; default ext4.
    pub root_fs_type: Option<String>,
    /// dib's `--root-label`: the label of `mkfs_root` when it gives none; default
    /// `cloudimg-rootfs` (`img-rootfs` on xfs).
    pub root_label: Option<String>,
}

/// Which route builds the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    /// No loop device, no mount: tables and filesystems written into the image files.
    Offline,
    /// Needs the kernel (device-mapper, loop devices); the reasons name the nodes.
    Kernel {
        /// Why, one line per node.
        reasons: Vec<String>,
    },
}

/// One partition as placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartPlan {
    /// Node name.
    pub name: String,
    /// Partition number (MBR logical from 5).
    pub number: u32,
    /// Primary or logical.
    pub kind: PartKind,
    /// Size as written.
    pub requested: String,
    /// First byte.
    pub start: u64,
    /// Bytes.
    pub size: u64,
    /// Bytes, for humans.
    pub size_human: String,
    /// Type (sgdisk code, MBR byte or GUID).
    pub type_code: String,
    /// Bytes between the previous partition's end (or the table) and this start: alignment,
    /// plus the EBR for a logical partition.
    pub gap_before: u64,
}

/// One disk image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskPlan {
    /// Node name.
    pub name: String,
    /// The image file.
    pub path: PathBuf,
    /// Bytes.
    pub size: u64,
    /// Bytes, for humans.
    pub size_human: String,
    /// Its partition table, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<TablePlan>,
}

/// A partition table as placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TablePlan {
    /// The `partitioning` name.
    pub name: String,
    /// mbr or gpt.
    pub label: Label,
    /// Alignment in bytes.
    pub align: u64,
    /// The partitions.
    pub partitions: Vec<PartPlan>,
    /// Bytes left unpartitioned at the end.
    pub free_at_end: u64,
}

/// One volume group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VgPlan {
    /// VG name.
    pub name: String,
    /// Its PVs: (PV node, device node, usable extents).
    pub pvs: Vec<(String, String, u64)>,
    /// Extents in the VG.
    pub extents: u64,
    /// Its LVs.
    pub lvs: Vec<LvPlan>,
    /// Extents left free.
    pub free_extents: u64,
}

/// One logical volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LvPlan {
    /// LV name.
    pub name: String,
    /// Size as written (`1800M`, `28%VG`).
    pub requested: String,
    /// Extents.
    pub extents: u64,
    /// Bytes.
    pub size: u64,
    /// Bytes, for humans.
    pub size_human: String,
    /// `thin-pool` or `thin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lv_type: Option<String>,
    /// For a `thin` LV: its pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thin_pool: Option<String>,
    /// Extents for thin-pool metadata and its spare (an estimate of lvm2's default).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub overhead_extents: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Where a filesystem lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "on")]
pub enum Device {
    /// A byte range of an image file (a partition, or the whole image).
    Region {
        /// The image file.
        image: PathBuf,
        /// First byte.
        offset: u64,
        /// Bytes.
        size: u64,
    },
    /// A logical volume (kernel route).
    Lv {
        /// Volume group.
        vg: String,
        /// Logical volume.
        lv: String,
        /// Bytes.
        size: u64,
    },
}

impl Device {
    /// Bytes.
    pub fn size(&self) -> u64 {
        match self {
            Device::Region { size, .. } | Device::Lv { size, .. } => *size,
        }
    }
}

/// A filesystem to make.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsPlan {
    /// The mkfs node.
    pub name: String,
    /// The block device node it is made on.
    pub base: String,
    /// Type.
    pub fs_type: FsType,
    /// Label (dib: the node name by default, upper case on vfat).
    pub label: String,
    /// UUID; none means random at creation.
    pub uuid: Option<String>,
    /// Extra mkfs arguments.
    pub opts: Vec<String>,
    /// Where it is mounted, if anywhere.
    pub mount_point: Option<String>,
    /// Where it lives.
    pub device: Device,
    /// The directory it is populated from (the root tree under its mount point).
    pub source: Option<PathBuf>,
    /// Mount points below its own, whose contents go to their own filesystems (left as
    /// empty directories here), relative to `source`.
    pub exclude: Vec<String>,
    /// `SOURCE_DATE_EPOCH` for a reproducible filesystem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

/// One step, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "step")]
pub enum Step {
    /// Create the image file, sparse, of `size` bytes.
    CreateImage {
        /// The `local_loop` node.
        image: String,
        /// The file.
        path: PathBuf,
        /// Bytes.
        size: u64,
    },
    /// Write a partition table into the image file (diskforge-part).
    PartitionTable {
        /// The `partitioning` name.
        table: String,
        /// The image node.
        image: String,
        /// The file.
        path: PathBuf,
        /// What diskforge-part writes.
        layout: Layout,
    },
    /// `pvcreate` (kernel route).
    PhysicalVolume {
        /// PV node.
        pv: String,
        /// Device node.
        device: String,
        /// Extra arguments.
        options: Vec<String>,
    },
    /// `vgcreate` (kernel route).
    VolumeGroup {
        /// VG name.
        vg: String,
        /// PV nodes.
        pvs: Vec<String>,
        /// Extra arguments.
        options: Vec<String>,
    },
    /// `lvcreate` (kernel route).
    LogicalVolume {
        /// LV name.
        lv: String,
        /// VG name.
        vg: String,
        /// Extents.
        extents: u64,
        /// Extra arguments.
        options: Vec<String>,
    },
    /// Write `etc/fstab` into the root tree (before the filesystems are built from it).
    WriteFstab {
        /// The file.
        path: PathBuf,
        /// Its contents.
        contents: String,
    },
    /// Make (and populate) a filesystem (diskforge-mkfs).
    Mkfs {
        /// The filesystem.
        filesystem: FsPlan,
    },
}

impl Step {
    /// The node this step is about, for messages.
    pub fn node(&self) -> &str {
        match self {
            Step::CreateImage { image, .. } => image,
            Step::PartitionTable { table, .. } => table,
            Step::PhysicalVolume { pv, .. } => pv,
            Step::VolumeGroup { vg, .. } => vg,
            Step::LogicalVolume { lv, .. } => lv,
            Step::WriteFstab { .. } => "fstab",
            Step::Mkfs { filesystem } => &filesystem.name,
        }
    }

    /// The step's fault-injection point (`diskforge-fault`): one stable name per kind of
    /// step, whatever the node is called.
    pub fn fault_point(&self) -> &'static str {
        match self {
            Step::CreateImage { .. } => "blockdev.image",
            Step::PartitionTable { .. } => "blockdev.partition-table",
            Step::PhysicalVolume { .. } => "blockdev.pv",
            Step::VolumeGroup { .. } => "blockdev.vg",
            Step::LogicalVolume { .. } => "blockdev.lv",
            Step::WriteFstab { .. } => "blockdev.fstab",
            Step::Mkfs { .. } => "blockdev.mkfs",
        }
    }
}

/// The whole plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Offline, or why the kernel is needed.
    pub route: Route,
    /// Disk images.
    pub disks: Vec<DiskPlan>,
    /// Volume groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_groups: Vec<VgPlan>,
    /// Filesystems, in mount order (unmounted ones last).
    pub filesystems: Vec<FsPlan>,
    /// Mount points, parents first (by depth, then name).
    pub mount_order: Vec<String>,
    /// fstab lines as dib writes them (`LABEL=… /mnt type options dump pass`).
    pub fstab: Vec<String>,
    /// Steps, in order.
    pub steps: Vec<Step>,
    /// Things that work but may not be what was meant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Problem>,
}

/// The smallest device some filesystem types can be made on (mkfs refuses less).
fn min_fs_size(t: FsType) -> u64 {
    match t {
        FsType::Xfs => 300 << 20,
        FsType::Btrfs => 114 << 20,
        FsType::Ext2 | FsType::Ext3 | FsType::Ext4 => 1 << 20,
        FsType::Vfat => 64 << 10,
        FsType::Swap => 40 << 10,
        FsType::Squashfs | FsType::Erofs => 4 << 10,
    }
}

/// The block devices a node name refers to, as they are planned.
struct Devices {
    /// name → (image path, offset, size) for images and partitions.
    regions: BTreeMap<String, (PathBuf, u64, u64)>,
    /// name → (vg, size) for LVs.
    lvs: BTreeMap<String, (String, u64)>,
}

/// Plan `cfg`; problems found while placing (sizes that do not fit, LVM over 100%) are
/// pushed to `probs`.
pub(crate) fn plan(
    cfg: &Config,
    idx: &Index,
    opts: &PlanOptions,
    probs: &mut Vec<Problem>,
) -> Plan {
    let mut warnings = Vec::new();
    let mut steps = Vec::new();
    let mut disks = Vec::new();
    let mut devs = Devices {
        regions: BTreeMap::new(),
        lvs: BTreeMap::new(),
    };
    let mut reasons = Vec::new();

    for img in &cfg.images {
        let dir = img
            .directory
            .as_ref()
            .map_or_else(|| opts.image_dir.clone(), PathBuf::from);
        let path = dir.join(format!("{}.raw", img.name));
        let Some(size) = img.size.map(|s| s.bytes()).or(opts.image_size) else {
            // A size that did not parse was reported already.
            if probs.iter().any(|p| p.node.as_deref() == Some(&img.name)) {
                continue;
            }
            probs.push(
                Problem::at(
                    img.line,
                    "no size: give `size` here or an image size (--image-size)",
                )
                .node("local_loop", &img.name)
                .key("size"),
            );
            continue;
        };
        let ss = u64::from(img.block_size.unwrap_or(512));
        if size % ss != 0 {
            probs.push(
                Problem::at(
                    img.line,
                    format!("{size} bytes is not a multiple of the {ss}-byte block size"),
                )
                .node("local_loop", &img.name)
                .field("size", &size.to_string()),
            );
            continue;
        }
        steps.push(Step::CreateImage {
            image: img.name.clone(),
            path: path.clone(),
            size,
        });
        devs.regions
            .insert(img.name.clone(), (path.clone(), 0, size));
        let mut disk = DiskPlan {
            name: img.name.clone(),
            path: path.clone(),
            size,
            size_human: human(size),
            table: None,
        };
        // A table with problems of its own (types, flags) is not placed: its errors would
        // only repeat them.
        let flawed = |t: &Table| {
            probs.iter().any(|p| {
                p.node
                    .as_deref()
                    .is_some_and(|n| n == t.name || t.partitions.iter().any(|q| q.name == n))
            })
        };
        if let Some(t) = cfg.tables.iter().find(|t| t.base == img.name && !flawed(t)) {
            let mut layout = match place(t, img.block_size, size, &mut warnings) {
                Ok(l) => l,
                Err(i) => {
                    if let Some(p) = t.partitions.get(i) {
                        probs.push(does_not_fit_part(t, p, img.block_size, size));
                    }
                    disks.push(disk);
                    continue;
                }
            };
            if let Some(seed) = &opts.uuid_seed {
                layout.seed_uuids(&format!("{seed}\0{}", img.name));
            }
            match diskforge_part::plan(&layout, size) {
                Ok(p) => {
                    let mut parts = Vec::new();
                    let mut prev_end = 0;
                    for (i, pi) in p.table.partitions.iter().enumerate() {
                        let name = pi.name.clone().unwrap_or_default();
                        let cfg_part = t.partitions.iter().find(|c| c.name == name);
                        devs.regions
                            .insert(name.clone(), (path.clone(), pi.start_bytes, pi.size_bytes));
                        parts.push(PartPlan {
                            name,
                            number: pi.number,
                            kind: pi.kind,
                            requested: cfg_part.map_or_else(String::new, |c| c.size_text.clone()),
                            start: pi.start_bytes,
                            size: pi.size_bytes,
                            size_human: human(pi.size_bytes),
                            type_code: pi.part_type.short().to_owned(),
                            gap_before: pi.start_bytes.saturating_sub(if i == 0 {
                                0
                            } else {
                                prev_end
                            }),
                        });
                        prev_end = pi.start_bytes + pi.size_bytes;
                    }
                    let usable_end = (p.table.last_usable_lba + 1) * u64::from(p.table.sector_size);
                    disk.table = Some(TablePlan {
                        name: t.name.clone(),
                        label: t.label,
                        align: t.align.unwrap_or(1 << 20),
                        partitions: parts,
                        free_at_end: usable_end.saturating_sub(prev_end),
                    });
                    steps.push(Step::PartitionTable {
                        table: t.name.clone(),
                        image: img.name.clone(),
                        path: path.clone(),
                        layout,
                    });
                }
                Err(e) => {
                    probs.push(does_not_fit(t, img.block_size, size, &e));
                }
            }
        }
        disks.push(disk);
    }
    for t in &cfg.tables {
        if idx.kind(&t.base) == Some(Kind::Lv) {
            reasons.push(format!(
                "partitioning {:?} is on logical volume {:?}",
                t.name, t.base
            ));
        }
    }

    // LVM.
    let mut vgs = Vec::new();
    for l in &cfg.lvms {
        reasons.push(format!("lvm {:?} needs device-mapper", l.name));
        for pv in &l.pvs {
            steps.push(Step::PhysicalVolume {
                pv: pv.name.clone(),
                device: pv.base.clone(),
                options: pv.options.clone(),
            });
        }
        for vg in &l.vgs {
            steps.push(Step::VolumeGroup {
                vg: vg.name.clone(),
                pvs: vg.base.clone(),
                options: vg.options.clone(),
            });
            let mut pvs = Vec::new();
            for pvn in &vg.base {
                let Some(pv) = l.pvs.iter().find(|p| &p.name == pvn) else {
                    continue;
                };
                let Some((_, _, size)) = devs.regions.get(&pv.base) else {
                    continue;
                };
                pvs.push((
                    pv.name.clone(),
                    pv.base.clone(),
                    size.saturating_sub(PV_OVERHEAD) / EXTENT,
                ));
            }
            let total: u64 = pvs.iter().map(|p| p.2).sum();
            let mut free = total;
            let mut lvs = Vec::new();
            let mut over = false;
            for lv in l.lvs.iter().filter(|lv| lv.base == vg.name) {
                let (requested, extents) = match &lv.size {
                    LvSize::Size(s) => (lv.size_text.clone(), s.bytes() / EXTENT),
                    LvSize::Extents(n) => (n.to_string(), *n),
                    LvSize::Percent { share, of } => {
                        let basis = if of == "FREE" { free } else { total };
                        (lv.size_text.clone(), share.of(basis))
                    }
                };
                if extents == 0 {
                    probs.push(Problem::at(lv.line, format!("rounds down to 0 extents of {} (dib rounds sizes down to whole extents)", human(EXTENT))).node("lv", &lv.name).field("size", &requested));
                }
                let thin = lv.lv_type.as_deref() == Some("thin");
                let overhead = if lv.lv_type.as_deref() == Some("thin-pool") {
                    // lvm2: metadata = max(2 MiB, pool / chunk (64 KiB) × 64 B), plus a spare
                    // of the same size; both whole extents.
                    2 * (extents * EXTENT / 1024).max(2 << 20).div_ceil(EXTENT)
                } else {
                    0
                };
                let cost = if thin { 0 } else { extents + overhead };
                if cost > free && !over && pvs.len() == vg.base.len() {
                    over = true;
                    let mut advice = String::new();
                    if let Some(min) = smallest_vg(l, &vg.name, total) {
                        advice = format!("; the LVs fit in {min} extents ({} bytes)", min * EXTENT);
                        if let [(_, base, _)] = pvs.as_slice() {
                            let pv_need = min * EXTENT + PV_OVERHEAD;
                            advice.push_str(&format!(
                                ", a PV of {} ({pv_need} bytes, with {} of LVM metadata) on {base:?}",
                                human(pv_need),
                                human(PV_OVERHEAD)
                            ));
                            advice.push_str(&grow_advice(cfg, base, pv_need, &devs));
                        }
                    }
                    probs.push(
                        Problem::at(lv.line, format!(
                            "does not fit: volume group {:?} has {} extents of {} ({}) on {} PV(s), {} left when this LV asks for {} ({}{}); the LVs add up to more than 100% of the VG{advice}",
                            vg.name, total, human(EXTENT), human(total * EXTENT), pvs.len(), free, cost, human(cost * EXTENT),
                            if overhead > 0 { format!(", of which {overhead} for thin-pool metadata") } else { String::new() }))
                        .node("lv", &lv.name)
                        .field(if matches!(lv.size, LvSize::Size(_)) { "size" } else { "extents" }, &requested),
                    );
                }
                free = free.saturating_sub(cost);
                devs.lvs
                    .insert(lv.name.clone(), (vg.name.clone(), extents * EXTENT));
                steps.push(Step::LogicalVolume {
                    lv: lv.name.clone(),
                    vg: vg.name.clone(),
                    extents,
                    options: lv.options.clone(),
                });
                lvs.push(LvPlan {
                    name: lv.name.clone(),
                    requested,
                    extents,
                    size: extents * EXTENT,
                    size_human: human(extents * EXTENT),
                    lv_type: lv.lv_type.clone(),
                    thin_pool: lv.thin_pool.clone(),
                    overhead_extents: overhead,
                });
            }
            vgs.push(VgPlan {
                name: vg.name.clone(),
                pvs,
                extents: total,
                lvs,
                free_extents: free,
            });
        }
    }

    // Mounts, in order: parents first.
    let mut mounts: Vec<&crate::config::Mount> = cfg.mounts.iter().collect();
    mounts.sort_by_key(|a| mount_key(&a.mount_point));
    let mount_order: Vec<String> = mounts.iter().map(|m| m.mount_point.clone()).collect();
    let real_points: Vec<&str> = mount_order
        .iter()
        .map(String::as_str)
        .filter(|m| *m != "none")
        .collect();

    // Filesystems.
    let mut filesystems = Vec::new();
    for m in &cfg.filesystems {
        let mount = cfg.mounts.iter().find(|x| x.base == m.name);
        let mount_point = mount.map(|x| x.mount_point.clone()).filter(|p| p != "none");
        let device = if let Some((image, offset, size)) = devs.regions.get(&m.base) {
            Device::Region {
                image: image.clone(),
                offset: *offset,
                size: *size,
            }
        } else if let Some((vg, size)) = devs.lvs.get(&m.base) {
            reasons.push(format!(
                "mkfs {:?} is on logical volume {:?}",
                m.name, m.base
            ));
            Device::Lv {
                vg: vg.clone(),
                lv: m.base.clone(),
                size: *size,
            }
        } else {
            continue;
        };
        let min = min_fs_size(m.fs_type);
        if device.size() > 0 && device.size() < min {
            probs.push(
                Problem::at(
                    m.line,
                    format!(
                        "{:?} is {} ({} bytes); {} needs at least {}",
                        m.base,
                        human(device.size()),
                        device.size(),
                        m.fs_type,
                        human(min)
                    ),
                )
                .node("mkfs", &m.name)
                .field("type", m.fs_type.as_str()),
            );
        }
        if let Some(mp) = &mount_point
            && let Some(need) = opts.content.get(mp)
            && *need > device.size()
        {
            let fs_need = fs_size_for(m.fs_type, *need);
            let mut msg = format!(
                "the root tree under {mp} needs about {} ({need} bytes) but {:?} is {} ({} bytes); a {} filesystem holding it needs about {} ({fs_need} bytes: the files, plus metadata and journal)",
                human(*need),
                m.base,
                human(device.size()),
                device.size(),
                m.fs_type,
                human(fs_need)
            );
            msg.push_str(&grow_advice(cfg, &m.base, fs_need, &devs));
            probs.push(Problem::at(m.line, msg).node("mkfs", &m.name).key("base"));
        }
        let (source, exclude) = match (&opts.root, &mount_point) {
            (Some(root), Some(mp)) if m.fs_type != FsType::Swap => {
                let src = if mp == "/" {
                    root.clone()
                } else {
                    root.join(mp.trim_start_matches('/'))
                };
                let exclude = real_points
                    .iter()
                    .filter(|o| *o != mp && is_below(o, mp))
                    .map(|o| {
                        if mp == "/" {
                            o.trim_start_matches('/').to_owned()
                        } else {
                            o[mp.len() + 1..].to_owned()
                        }
                    })
                    .collect();
                (Some(src), exclude)
            }
            _ => (None, Vec::new()),
        };
        let uuid = m.uuid.clone().or_else(|| {
            opts.uuid_seed
                .as_ref()
                .filter(|_| m.fs_type != FsType::Squashfs)
                .map(|seed| {
                    let u = diskforge_mkfs::derived_uuid(
                        m.fs_type,
                        Some(&format!("{seed}\0{}", m.name)),
                        0,
                    );
                    if m.fs_type == FsType::Vfat {
                        format!("{}-{}", &u[..4], &u[4..8]).to_ascii_uppercase()
                    } else {
                        u
                    }
                })
        });
        filesystems.push(FsPlan {
            name: m.name.clone(),
            base: m.base.clone(),
            fs_type: m.fs_type,
            label: m.label.clone(),
            uuid,
            opts: m.opts.clone(),
            mount_point,
            device,
            source,
            exclude,
            epoch: opts.source_date_epoch,
        });
    }
    filesystems.sort_by(|a, b| {
        let ka = a.mount_point.as_deref().map(mount_key);
        let kb = b.mount_point.as_deref().map(mount_key);
        (ka.is_none(), ka, &a.name).cmp(&(kb.is_none(), kb, &b.name))
    });

    // fstab, as dib's writefstab: mount order, LABEL=, swap as `none swap sw 0 0`.
    let mut fstab = Vec::new();
    for m in &mounts {
        let Some(entry) = cfg.fstabs.iter().find(|f| f.base == m.name) else {
            continue;
        };
        let Some(fs) = cfg.filesystems.iter().find(|f| f.name == m.base) else {
            continue;
        };
        let swap = fs.fs_type == FsType::Swap;
        fstab.push(format!(
            "LABEL={} {} {} {} {} {}",
            fs.label,
            m.mount_point,
            fs.fs_type,
            if swap { "sw" } else { &entry.options },
            if swap { 0 } else { entry.dump_freq },
            if swap { 0 } else { entry.fsck_passno },
        ));
        if m.mount_point == "/" && entry.fsck_passno != 1 {
            warnings.push(Problem::at(entry.line, "fsck-passno of / is 2 (dib's default for every entry); fstab(5) wants 1 for the root filesystem").node("fstab", &entry.name).field("fsck-passno", &entry.fsck_passno.to_string()));
        }
    }
    if let Some(root) = &opts.root
        && !fstab.is_empty()
    {
        let contents: String = fstab.iter().map(|l| format!("{l}\n")).collect();
        steps.push(Step::WriteFstab {
            path: root.join("etc/fstab"),
            contents,
        });
    }
    for fs in &filesystems {
        steps.push(Step::Mkfs {
            filesystem: fs.clone(),
        });
    }
    let route = if reasons.is_empty() {
        Route::Offline
    } else {
        reasons.sort();
        reasons.dedup();
        Route::Kernel { reasons }
    };
    Plan {
        route,
        disks,
        volume_groups: vgs,
        filesystems,
        mount_order,
        fstab,
        steps,
        warnings,
    }
}

/// Whether the LVs of `vg` fit in a VG of `total` extents (the same arithmetic as the
/// planner: sizes round down to extents, percentages of the VG or of what is free,
/// thin-pool metadata and spare, thin LVs cost nothing).
fn vg_fits(l: &crate::config::Lvm, vg: &str, total: u64) -> bool {
    let mut free = total;
    for lv in l.lvs.iter().filter(|lv| lv.base == vg) {
        let extents = match &lv.size {
            LvSize::Size(s) => s.bytes() / EXTENT,
            LvSize::Extents(n) => *n,
            LvSize::Percent { share, of } => share.of(if of == "FREE" { free } else { total }),
        };
        let cost = match lv.lv_type.as_deref() {
            Some("thin") => 0,
            Some("thin-pool") => {
                extents + 2 * (extents * EXTENT / 1024).max(2 << 20).div_ceil(EXTENT)
            }
            _ => extents,
        };
        if cost > free {
            return false;
        }
        free -= cost;
    }
    true
}

/// The fewest extents in which the LVs of `vg` fit (searched from `from`), if any up to 2^40.
fn smallest_vg(l: &crate::config::Lvm, vg: &str, from: u64) -> Option<u64> {
    let mut hi = from.max(1);
    while !vg_fits(l, vg, hi) {
        hi = hi.checked_mul(2).filter(|h| *h < 1 << 40)?;
    }
    let mut lo = 0;
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if vg_fits(l, vg, mid) {
            hi = mid
        } else {
            lo = mid
        }
    }
    Some(hi)
}

/// The size a filesystem of type `t` needs to hold `content` bytes of files: an estimate
/// for the advice (ext*/xfs/btrfs: +10 % for inodes and metadata and 64 MiB for the journal
/// or log; vfat: +5 % and 1 MiB for the FATs), never below the type's minimum.
pub fn fs_size_for(t: FsType, content: u64) -> u64 {
    let est = match t {
        FsType::Vfat => content + content / 20 + (1 << 20),
        FsType::Swap | FsType::Squashfs | FsType::Erofs => content,
        _ => content + content / 10 + (64 << 20),
    };
    est.max(min_fs_size(t))
}

/// What to grow so that block device `base` holds `need` bytes: the smallest image when it
/// is the whole image or a share of a table's free space, the size to write for a fixed
/// partition, the extents for an LV.
fn grow_advice(cfg: &Config, base: &str, need: u64, devs: &Devices) -> String {
    if devs.lvs.contains_key(base) {
        let ext = need.div_ceil(EXTENT);
        return format!(
            "; give LV {base:?} at least {ext} extents of {} ({} bytes)",
            human(EXTENT),
            ext * EXTENT
        );
    }
    if let Some(img) = cfg.images.iter().find(|i| i.name == base) {
        let ss = u64::from(img.block_size.unwrap_or(512)).max(1 << 20);
        let min = need.div_ceil(ss) * ss;
        return format!(
            "; the smallest image that fits is {} ({min} bytes)",
            human(min)
        );
    }
    let Some(t) = cfg
        .tables
        .iter()
        .find(|t| t.partitions.iter().any(|p| p.name == base))
    else {
        return String::new();
    };
    let Some(p) = t.partitions.iter().find(|p| p.name == base) else {
        return String::new();
    };
    let block_size = cfg
        .images
        .iter()
        .find(|i| i.name == t.base)
        .and_then(|i| i.block_size);
    if p.size.absolute().is_some() {
        return format!(
            "; partition {base:?} is a fixed {}: make it at least {} ({need} bytes)",
            p.size_text,
            human(need)
        );
    }
    let align = t.align.unwrap_or(1 << 20);
    let fits = |d: u64| {
        let mut w = Vec::new();
        place(t, block_size, d, &mut w)
            .ok()
            .and_then(|l| diskforge_part::plan(&l, d).ok())
            .is_some_and(|pl| {
                pl.table
                    .partitions
                    .iter()
                    .any(|q| q.name.as_deref() == Some(base) && q.size_bytes >= need)
            })
    };
    let mut hi = need.max(align * 4);
    let mut tries = 0;
    while !fits(hi) {
        let Some(next) = hi.checked_mul(2) else {
            return String::new();
        };
        hi = next;
        tries += 1;
        if tries > 40 {
            return String::new();
        }
    }
    let mut lo = 0u64;
    while hi - lo > align {
        let mid = (lo + (hi - lo) / 2) / align * align;
        if mid <= lo {
            break;
        }
        if fits(mid) { hi = mid } else { lo = mid }
    }
    format!(
        "; partition {base:?} asks for {} of the free space: the smallest image where that is enough is {} ({hi} bytes)",
        p.size_text,
        human(hi)
    )
}

/// Sort key for mount points: depth, then the path; `none` last.
fn mount_key(mp: &str) -> (usize, String) {
    if mp == "none" {
        return (usize::MAX, String::new());
    }
    (
        mp.split('/').filter(|c| !c.is_empty()).count(),
        mp.to_owned(),
    )
}

fn is_below(child: &str, parent: &str) -> bool {
    parent == "/"
        || child
            .strip_prefix(parent)
            .is_some_and(|r| r.starts_with('/'))
}

/// The layout for diskforge-part with every size in bytes (dib's percentages resolved
/// against the free space diskforge-part reports).
/// `Err(i)`: partition `i` (a percentage) would get no space.
fn place(
    t: &Table,
    block_size: Option<u32>,
    disk: u64,
    warnings: &mut Vec<Problem>,
) -> Result<Layout, usize> {
    let mut layout = Layout::new(t.label);
    layout.align = Some(t.align.unwrap_or(1 << 20).to_string());
    layout.sector_size = block_size;
    for (i, p) in t.partitions.iter().enumerate() {
        let mut spec = PartSpec::new(p.name.clone(), "1");
        spec.type_code = p.type_code.as_ref().map(|c| normal_type(c, t.label));
        match t.label {
            Label::Mbr => {
                spec.flags.push(if p.primary {
                    Flag::Primary
                } else {
                    Flag::Logical
                });
                if p.boot {
                    spec.flags.push(Flag::Boot);
                }
            }
            Label::Gpt => {
                if p.boot {
                    warnings.push(Problem::at(p.line, "the boot flag has no effect on GPT (dib ignores it too); use type EF02/EF00 for boot partitions").node("partition", &p.name).field("flags", "boot"));
                }
            }
        }
        let share = match p.size {
            SizeSpec::Absolute(b) => Err(b),
            SizeSpec::Percent(pct) => Ok(pct),
            SizeSpec::Rest => Ok(crate::size::Percent::FULL),
        };
        spec.size = match share {
            Err(b) => b.bytes().to_string(),
            Ok(pct) => {
                let mut probe = layout.clone();
                let mut rest = spec.clone();
                rest.size = "rest".into();
                probe.partitions.push(rest);
                let free = match diskforge_part::plan(&probe, disk) {
                    Ok(pl) => pl
                        .table
                        .partitions
                        .iter()
                        .find(|q| q.name.as_deref() == Some(&p.name))
                        .map_or(0, |q| q.size_bytes),
                    Err(_) => 0,
                };
                let align = t.align.unwrap_or(1 << 20);
                let sz = if pct == crate::size::Percent::FULL {
                    free
                } else {
                    pct.of(free) / align * align
                };
                if sz == 0 {
                    // Left to diskforge-part's plan to report with numbers.
                    "0".into()
                } else {
                    sz.to_string()
                }
            }
        };
        if spec.size == "0" {
            return Err(i);
        }
        layout.partitions.push(spec);
    }
    Ok(layout)
}

fn does_not_fit_part(
    t: &Table,
    p: &crate::config::Partition,
    block_size: Option<u32>,
    disk: u64,
) -> Problem {
    let mut msg = format!(
        "{} of the free space is nothing on the {} ({disk} bytes) image: the partitions before it leave no space",
        p.size_text,
        human(disk)
    );
    if let Some(min) = smallest_fit(t, block_size, disk) {
        msg.push_str(&format!(
            "; the smallest image that fits this table is {} ({min} bytes)",
            human(min)
        ));
    }
    Problem::at(p.size_line, msg)
        .node("partition", &p.name)
        .field("size", &p.size_text)
}

/// The problem for a table diskforge-part could not place on `disk` bytes.
fn does_not_fit(
    t: &Table,
    block_size: Option<u32>,
    disk: u64,
    e: &diskforge_part::Error,
) -> Problem {
    let align = t.align.unwrap_or(1 << 20);
    let fixed: u64 = t
        .partitions
        .iter()
        .filter_map(|p| p.size.absolute())
        .map(|b| b.bytes())
        .sum();
    let logical = if t.label == Label::Mbr {
        t.partitions.iter().filter(|p| !p.primary).count() as u64
    } else {
        0
    };
    let table_cost = match t.label {
        Label::Gpt => 2 * align,
        Label::Mbr => align,
    };
    let mut msg = format!(
        "the partitions do not fit on the {} ({disk} bytes) image: {e}. Requested: {} ({fixed} bytes) of fixed sizes; overhead: {} for the {} table and alignment to {}{}",
        human(disk),
        human(fixed),
        human(table_cost),
        t.label,
        human(align),
        if logical > 0 {
            format!(", {} for {logical} EBR(s)", human(logical * align))
        } else {
            String::new()
        },
    );
    if let Some(min) = smallest_fit(t, block_size, disk) {
        msg.push_str(&format!(
            "; the smallest image that fits is {} ({min} bytes), where the partitions are:",
            human(min)
        ));
        msg.push_str(&breakdown(t, block_size, min));
    }
    let (line, node, field, value) = match e {
        diskforge_part::Error::Oversize { part, .. }
        | diskforge_part::Error::NoSpace { part, .. } => {
            let p = t.partitions.get(part.index.saturating_sub(1));
            (
                p.map_or(t.line, |p| p.size_line),
                p.map_or(t.name.clone(), |p| p.name.clone()),
                "size",
                p.map_or(String::new(), |p| p.size_text.clone()),
            )
        }
        _ => (t.line, t.name.clone(), "partitions", String::new()),
    };
    let kind = if node == t.name {
        "partitioning"
    } else {
        "partition"
    };
    Problem::at(line, msg)
        .node(kind, &node)
        .field(field, &value)
}

/// One line per partition of `t` placed on a `disk`-byte image: requested, computed, and
/// the gap (alignment, EBR) before it.
fn breakdown(t: &Table, block_size: Option<u32>, disk: u64) -> String {
    let mut w = Vec::new();
    let Ok(layout) = place(t, block_size, disk, &mut w) else {
        return String::new();
    };
    let Ok(p) = diskforge_part::plan(&layout, disk) else {
        return String::new();
    };
    let mut out = String::new();
    let mut prev_end = 0;
    for q in &p.table.partitions {
        let name = q.name.clone().unwrap_or_default();
        let asked = t
            .partitions
            .iter()
            .find(|c| c.name == name)
            .map_or("?", |c| c.size_text.as_str());
        out.push_str(&format!(
            "\n  {name}: requested {asked}, computed {} ({} bytes) at byte {}, after {} of alignment{}",
            human(q.size_bytes),
            q.size_bytes,
            q.start_bytes,
            human(q.start_bytes - prev_end.min(q.start_bytes)),
            if q.ebr_lba.is_some() { " and EBR" } else { "" },
        ));
        prev_end = q.start_bytes + q.size_bytes;
    }
    out
}

/// The smallest disk size (a multiple of the alignment) on which the table places, found by
/// asking diskforge-part; `None` when even 1 PiB is not enough.
fn smallest_fit(t: &Table, block_size: Option<u32>, disk: u64) -> Option<u64> {
    let align = t.align.unwrap_or(1 << 20);
    let fits = |d: u64| {
        let mut w = Vec::new();
        place(t, block_size, d, &mut w).is_ok_and(|l| diskforge_part::plan(&l, d).is_ok())
    };
    let mut hi = disk.max(align * 4);
    let mut tries = 0;
    while !fits(hi) {
        hi = hi.checked_mul(2)?;
        tries += 1;
        if tries > 40 || hi > 1 << 50 {
            return None;
        }
    }
    let mut lo = 0u64;
    while hi - lo > align {
        let mid = (lo + (hi - lo) / 2) / align * align;
        if mid <= lo {
            break;
        }
        if fits(mid) { hi = mid } else { lo = mid }
    }
    Some(hi)
}

/// Bytes a tree needs on a filesystem: file sizes rounded up to 4 KiB blocks, plus one block
/// per directory, symlink or special file; `exclude` paths (relative) are skipped.
pub fn tree_bytes(dir: &Path, exclude: &[PathBuf]) -> std::io::Result<u64> {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        total += 4096;
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let p = e.path();
            if exclude.iter().any(|x| dir.join(x) == p) {
                total += 4096;
                continue;
            }
            let m = e.file_type()?;
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() {
                total += e.metadata()?.len().div_ceil(4096) * 4096;
            } else {
                total += 4096;
            }
        }
    }
    Ok(total)
}
