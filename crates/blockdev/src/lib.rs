//! diskimage-builder's block-device YAML (`DIB_BLOCK_DEVICE_CONFIG`, an element's
//! `block-device-default.yaml`), accepted unchanged: parsed with line numbers, normalised
//! (tree and graph spellings give the same [`Config`]), validated with every problem reported
//! at once, turned into a [`Plan`] (data: serde, snapshot-tested), and built **offline** —
//! the partition table written into the image file with diskforge-part, each filesystem made
//! and populated straight into its partition's byte range with diskforge-mkfs, `etc/fstab`
//! written into the root tree first — with no loop device and no mount.
//!
//! Semantics follow dib's `diskimage_builder/block_device` (config.py, level0–4) and its
//! user guide ("Disk Image Layout"): sizes use dib's grammar (bare `G` is 10⁹, see
//! [`size`]); on MBR a partition without `primary` is logical; percentages are shares of the
//! space still free; a label defaults to the mkfs node's name (upper case on vfat); fstab
//! lines are `LABEL=… mount type options dump pass` in mount order, with dib's defaults
//! (`defaults 0 2`, swap `sw 0 0`).
//!
//! The **kernel route** ([`create`] with [`CreateOptions::kernel`] or a [`MountedHook`], and
//! always for LVM) writes the same table into the file, then attaches loop devices with
//! autoclear (partitions through the kernel's `pN` nodes, or offset loops where it makes
//! none), runs lvm2 (PVs, VGs, LVs, thin pools), makes the filesystems on those devices and,
//! for a hook, mounts them in mount order inside a private mount namespace. Loop devices and
//! mounts therefore vanish with the process even on `kill -9`; LVM activation, which does
//! not, is recorded in the state before it is made and released by [`umount`]/[`cleanup`]
//! from the state alone. On a kernel without device-mapper an LVM layout is refused with
//! [`Error::NeedsDeviceMapper`] naming the node, before anything is written.

mod config;
mod exec;
mod kernel;
mod plan;
mod problem;
pub mod size;
mod validate;
mod yaml;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use config::{
    Config, Fstab, Image, Lv, LvSize, Lvm, Mkfs, Mount, NODE_TYPES, Partition, Pv, Table, Vg,
};
pub use exec::{
    CreateOptions, Event, MountedFn, MountedHook, STATE_FILE, State, cleanup, create, delete,
    getval, getval_state, init, read_state, umount, writefstab,
};
pub use kernel::{KernelState, LoopRecord, VgRecord, has_device_mapper};
pub use plan::{
    Device, DiskPlan, EXTENT, FsPlan, LvPlan, PV_OVERHEAD, PartPlan, Plan, PlanOptions, Route,
    Step, TablePlan, VgPlan, fs_size_for, tree_bytes,
};
pub use problem::{Problem, Problems};

/// Errors from this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config has problems; every one is listed.
    #[error("invalid block-device config:\n{0}")]
    Invalid(Problems),
    /// The plan needs the kernel route (device-mapper, loop devices), not implemented yet.
    #[error(
        "{kind} {node:?}: needs the kernel route (device-mapper / loop devices), which is not \
         implemented yet; nothing was written"
    )]
    KernelRoute {
        /// Node type.
        kind: &'static str,
        /// Node name.
        node: String,
    },
    /// An LVM layout on a kernel without device-mapper: refused before anything is written.
    #[error(
        "{kind} {node:?} needs device-mapper, which this kernel does not have (no \
         device-mapper in /proc/misc): build LVM layouts where dm_mod is loaded (e.g. in a \
         VM); nothing was written"
    )]
    NeedsDeviceMapper {
        /// Node type (`pv`).
        kind: &'static str,
        /// Node name.
        node: String,
    },
    /// Something the kernel route cannot do here (named in `what`).
    #[error("{what}")]
    Unsupported {
        /// What and why.
        what: String,
    },
    /// A loop device operation failed.
    #[error("loop device: {what}")]
    Loop {
        /// What we were doing.
        what: String,
        /// The cause.
        #[source]
        source: Box<diskforge_loop::Error>,
    },
    /// An lvm command failed.
    #[error("lvm node {node:?}")]
    Lvm {
        /// The PV, VG or LV node.
        node: String,
        /// The cause (carries lvm's stderr).
        #[source]
        source: Box<lvm2_cmd::Error>,
    },
    /// Mounting (in the private namespace) failed.
    #[error("mounting {what}")]
    Mount {
        /// What was being mounted.
        what: String,
        /// The cause.
        #[source]
        source: Box<diskforge_mount::Error>,
    },
    /// The caller's [`MountedHook`] failed.
    #[error("the work on the mounted filesystems failed: {reason}")]
    Hook {
        /// Its message.
        reason: String,
    },
    /// Releasing kernel objects (unmount, vgchange -an, loop detach) failed; every failure
    /// is listed.
    #[error("releasing: {}", errors.join("; "))]
    Release {
        /// Each failure.
        errors: Vec<String>,
    },
    /// Writing a partition table failed.
    #[error("partitioning {node:?}")]
    Part {
        /// The `partitioning` name.
        node: String,
        /// The cause (boxed: it is large).
        #[source]
        source: Box<diskforge_part::Error>,
    },
    /// Making a filesystem failed.
    #[error("mkfs {node:?}")]
    Mkfs {
        /// The mkfs node.
        node: String,
        /// The cause (boxed: it carries stderr).
        #[source]
        source: Box<diskforge_mkfs::Error>,
    },
    /// File I/O failed.
    #[error("{action} {}", path.display())]
    Io {
        /// What we were doing.
        action: String,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The image file exists already (we never overwrite what we did not create).
    #[error("{}: exists already; remove it, or `delete` the build that made it", path.display())]
    Exists {
        /// The image file.
        path: PathBuf,
    },
    /// The state file is missing or unreadable.
    #[error("state {}: {reason}", path.display())]
    State {
        /// The state file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A `getval` symbol is unknown or has no value for this config.
    #[error("getval {symbol:?}: {reason}")]
    GetVal {
        /// The symbol.
        symbol: String,
        /// Why.
        reason: String,
    },
    /// A signal (or the caller) cancelled the build before step `step`; what was made is
    /// removed.
    #[error("interrupted before step {step} ({node}); what was made is removed")]
    Interrupted {
        /// The step index.
        step: usize,
        /// Its node.
        node: String,
    },
    /// The test hook asked step `step` to fail.
    #[error("step {step} ({node}): failed on purpose (fault injection)")]
    Injected {
        /// The step index.
        step: usize,
        /// Its node.
        node: String,
    },
    /// The shared fault hook (`DISKFORGE_FAIL_AT`, fault-injection builds only) failed a
    /// step on purpose.
    #[error(transparent)]
    Fault(#[from] diskforge_fault::Injected),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The config's bytes as text: UTF-8, or an error naming the line and byte of the first
/// invalid sequence (the bytes themselves are never echoed).
pub fn decode(bytes: &[u8]) -> Result<&str> {
    std::str::from_utf8(bytes).map_err(|e| {
        let at = e.valid_up_to();
        let line = bytes[..at].iter().filter(|b| **b == b'\n').count() + 1;
        Error::Invalid(Problems(vec![Problem::at(
            line,
            format!("not UTF-8 text: invalid byte sequence at byte {at}"),
        )]))
    })
}

/// Parse and validate a config. All problems are returned at once, in line order. The
/// root-filesystem parameters come from `opts` ([`PlanOptions::root_fs_type`],
/// [`PlanOptions::root_label`]).
pub fn load(text: &str, opts: &PlanOptions) -> Result<Config> {
    let mut probs = Vec::new();
    let cfg = read(text, opts, &mut probs);
    if probs.is_empty() {
        Ok(cfg)
    } else {
        Err(Error::Invalid(Problems(probs).sorted()))
    }
}

fn read(text: &str, opts: &PlanOptions, probs: &mut Vec<Problem>) -> Config {
    let root = config::RootParams {
        fs_type: opts.root_fs_type.clone(),
        label: opts.root_label.clone(),
    };
    let cfg = match yaml::parse(text) {
        Ok(doc) => config::read(&doc, &root, probs),
        Err(e) => {
            probs.push(Problem::at(e.line, e.message));
            Config::default()
        }
    };
    validate::validate(&cfg, probs);
    cfg.canonical()
}

/// Parse, validate and plan `text`: every problem — of the YAML, the graph and the sizes —
/// comes back at once.
pub fn plan_text(text: &str, opts: &PlanOptions) -> Result<Plan> {
    let mut probs = Vec::new();
    let cfg = read(text, opts, &mut probs);
    let idx = validate::validate(&cfg, &mut Vec::new());
    let plan = plan::plan(&cfg, &idx, opts, &mut probs);
    if probs.is_empty() {
        Ok(plan)
    } else {
        Err(Error::Invalid(Problems(probs).sorted()))
    }
}

/// Plan a loaded config.
pub fn plan(cfg: &Config, opts: &PlanOptions) -> Result<Plan> {
    let mut probs = Vec::new();
    let idx = validate::validate(cfg, &mut probs);
    let plan = plan::plan(cfg, &idx, opts, &mut probs);
    if probs.is_empty() {
        Ok(plan)
    } else {
        Err(Error::Invalid(Problems(probs).sorted()))
    }
}

/// The bytes the tree at `root` needs under each mount point of `cfg` (nested mount points
/// excluded), for [`PlanOptions::content`].
pub fn measure_tree(root: &Path, cfg: &Config) -> Result<BTreeMap<String, u64>> {
    let points: Vec<&str> = cfg
        .mounts
        .iter()
        .map(|m| m.mount_point.as_str())
        .filter(|m| *m != "none")
        .collect();
    let mut out = BTreeMap::new();
    for mp in &points {
        let dir = if *mp == "/" {
            root.to_path_buf()
        } else {
            root.join(mp.trim_start_matches('/'))
        };
        if !dir.is_dir() {
            continue;
        }
        let exclude: Vec<PathBuf> = points
            .iter()
            .filter(|o| *o != mp)
            .filter_map(|o| {
                let rel = if *mp == "/" {
                    o.strip_prefix('/')
                } else {
                    o.strip_prefix(&format!("{mp}/"))
                };
                rel.map(PathBuf::from)
            })
            .collect();
        let bytes = tree_bytes(&dir, &exclude).map_err(|source| Error::Io {
            action: "measuring".into(),
            path: dir.clone(),
            source,
        })?;
        out.insert((*mp).to_owned(), bytes);
    }
    Ok(out)
}
